//! Writes from the source's *live* state, for the writers that do not come
//! from the stream: the retry worker ([`BatchKind::Retry`]) and `reconcile`
//! / `run --resync` ([`BatchKind::Reconcile`]). An interaction is read as it
//! is now, with its participants' names ([`LiveInteraction`]), and a batch
//! of such changes is written by one owner of "push, commit, roll back on
//! error" ([`Writer::write_live`]). Each change is a row read now
//! ([`LiveChange::Read`], pushed as the stream would push it, names and
//! all) or an interaction gone from the source ([`LiveChange::Gone`], its
//! event deleted).
//!
//! The names read with the row override the names table for the batch, so an
//! event is built field for field as the stream builds it (issue 9, point 1).
//! The writes carry the position the caller read at ([`crate::visibility`]):
//! every source transaction up to it was visible to the read, so the
//! stream's changes at or below it are already in the state read, and those
//! above it win over it.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::plan::RowChange;
use super::{db, sql, BatchKind, Writer};
use crate::config::ParticipantSchema;
use crate::error::SyncError;
use crate::lsn::Lsn;
use crate::mapping::{InteractionRow, RowError};
use crate::participants::{participants, Party};

/// One interaction as it is now in the source.
#[derive(Debug, Clone)]
pub struct LiveInteraction {
    pub id: Uuid,
    /// `Err`: a row that cannot be mapped (recorded as a failure when pushed).
    pub row: Result<InteractionRow, RowError>,
    /// `interaction.calendar_synced_at`: our stamp's last write.
    pub synced_at: Option<DateTime<Utc>>,
    /// Display names of its customer and contact (contract §3).
    pub customer_name: Option<String>,
    pub contact_name: Option<String>,
    /// The position its writes carry: every source transaction committed at
    /// or before it was visible to the read (see [`crate::visibility`]).
    pub read_at: Lsn,
}

impl LiveInteraction {
    /// From a row selected with [`sql::live_with_names`], read where
    /// every source transaction up to `at` was visible.
    pub fn from_row(r: &Row, at: Lsn) -> Result<LiveInteraction, SyncError> {
        let id: Uuid = r
            .try_get("interaction_id")
            .map_err(db("reading interaction_id"))?;
        let synced_at = r
            .try_get("synced_at")
            .map_err(db("reading interaction.calendar_synced_at"))?;
        let name = |party: Party| -> Result<Option<String>, SyncError> {
            let parts = (0..party.name_count())
                .map(|i| r.try_get::<_, Option<String>>(party.name_alias(i).as_str()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("reading a customer/contact name"))?;
            let parts: Vec<Option<&str>> = parts.iter().map(Option::as_deref).collect();
            Ok(party.display_name(&parts))
        };
        Ok(LiveInteraction {
            id,
            row: InteractionRow::from_sql(r),
            synced_at,
            customer_name: name(Party::Customer)?,
            contact_name: name(Party::Contact)?,
            read_at: at,
        })
    }

    /// The event's participants for this state.
    pub fn participants(&self) -> Vec<String> {
        participants(self.customer_name.clone(), self.contact_name.clone())
    }
}

impl Writer {
    /// Reads the current state of `ids` from the source (ids that are gone
    /// are simply absent); the caller has made sure every transaction up to
    /// `at` is visible ([`crate::visibility`]). With `lock`, the rows are
    /// read `for share`: a transaction still writing one of them is waited
    /// for and its state read instead.
    pub(crate) async fn read_live(
        &self,
        ids: &[Uuid],
        participants: &ParticipantSchema,
        lock: bool,
        at: Lsn,
    ) -> Result<Vec<LiveInteraction>, SyncError> {
        let which = if lock {
            sql::LiveRead::IdsLocked
        } else {
            sql::LiveRead::Ids
        };
        let rows = self
            .source
            .query(sql::live_with_names(participants, which).as_str(), &[&ids])
            .await
            .map_err(db("reading the interactions' current state"))?;
        rows.iter()
            .map(|r| LiveInteraction::from_row(r, at))
            .collect()
    }

    /// Pushes `c` into the open batch as a change at its read position,
    /// decided at `ts`; its names override the names table for this batch.
    pub(crate) async fn push_live(
        &mut self,
        c: LiveInteraction,
        ts: DateTime<Utc>,
    ) -> Result<(), SyncError> {
        if let Ok(row) = &c.row {
            self.remember_name(Party::Customer, row.customer_id, c.customer_name);
            self.remember_name(Party::Contact, row.contact_id, c.contact_name);
        }
        self.push_row(RowChange {
            lsn: c.read_at,
            ts,
            id: c.id,
            row: Some(c.row),
        })
        .await
    }
}

/// One change of a live-state batch.
// Nearly every change of a batch is a `Read`: boxing it would cost an
// allocation per row to save space on the few `Gone`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum LiveChange {
    /// The interaction as read now from the source.
    Read(LiveInteraction),
    /// The interaction is gone from the source: its event is deleted.
    Gone(Uuid),
}

impl LiveChange {
    /// The changes for interactions `ids` of which `read` are the rows found
    /// in the source: every row of `read` in its order, then every id of
    /// `ids` without a row, in the order of `ids`, as gone.
    pub fn of(ids: &[Uuid], read: Vec<LiveInteraction>) -> Vec<LiveChange> {
        let found: HashSet<Uuid> = read.iter().map(|c| c.id).collect();
        let gone = ids
            .iter()
            .filter(|id| !found.contains(id))
            .map(|id| LiveChange::Gone(*id));
        read.into_iter()
            .map(LiveChange::Read)
            .chain(gone)
            .collect::<Vec<_>>()
    }
}

impl Writer {
    /// Writes `changes` as one batch of `kind` (one target transaction) and
    /// commits it; on an error the batch is rolled back and the error
    /// returned. A [`LiveChange::Gone`] is deleted at `at`, the position
    /// the caller read at.
    pub(crate) async fn write_live(
        &mut self,
        kind: BatchKind,
        changes: Vec<LiveChange>,
        at: Lsn,
        now: DateTime<Utc>,
    ) -> Result<(), SyncError> {
        self.begin(kind);
        let result = async {
            for change in changes {
                match change {
                    LiveChange::Read(c) => self.push_live(c, now).await?,
                    LiveChange::Gone(id) => {
                        self.push_row(RowChange {
                            lsn: at,
                            ts: now,
                            id,
                            row: None,
                        })
                        .await?;
                    }
                }
            }
            self.commit().await
        }
        .await;
        if let Err(e) = result {
            self.rollback().await;
            return Err(e);
        }
        Ok(())
    }
}
