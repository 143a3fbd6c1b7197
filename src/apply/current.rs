//! An interaction's *current* state, read from the source together with its
//! participants' names, for the writers that do not come from the stream:
//! the retry worker and `reconcile`.
//!
//! The names read with the row override the names table for the batch, so an
//! event is built field for field as the stream builds it (issue 9, point 1).
//! The writes carry the position the caller read at ([`crate::visibility`]):
//! every source transaction up to it was visible to the read, so the
//! stream's changes at or below it are already in the state read, and those
//! above it win over it.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::plan::RowChange;
use super::{db, sql, Writer};
use crate::changes::Party;
use crate::config::ParticipantSchema;
use crate::error::SyncError;
use crate::lsn::Lsn;
use crate::mapping::fields::{contact_name, participants};
use crate::mapping::{InteractionRow, RowError};

/// One interaction as it is now in the source.
#[derive(Debug, Clone)]
pub struct Current {
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

impl Current {
    /// From a row selected with [`sql::current_with_names`], read where
    /// every source transaction up to `at` was visible.
    pub fn from_row(r: &Row, at: Lsn) -> Result<Current, SyncError> {
        let id: Uuid = r
            .try_get("interaction_id")
            .map_err(db("reading interaction_id"))?;
        let synced_at = r
            .try_get("synced_at")
            .map_err(db("reading interaction.calendar_synced_at"))?;
        let text = |c: &str| r.try_get::<_, Option<String>>(c).ok().flatten();
        Ok(Current {
            id,
            row: InteractionRow::from_sql(r),
            synced_at,
            customer_name: text("p_customer"),
            contact_name: contact_name(
                text("p_first").as_deref(),
                text("p_last").as_deref(),
                text("p_email").as_deref(),
            ),
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
    pub(crate) async fn read_current(
        &self,
        ids: &[Uuid],
        participants: &ParticipantSchema,
        lock: bool,
        at: Lsn,
    ) -> Result<Vec<Current>, SyncError> {
        let which = if lock {
            sql::CurrentOf::IdsLocked
        } else {
            sql::CurrentOf::Ids
        };
        let rows = self
            .source
            .query(
                sql::current_with_names(participants, which).as_str(),
                &[&ids],
            )
            .await
            .map_err(db("reading the interactions' current state"))?;
        rows.iter().map(|r| Current::from_row(r, at)).collect()
    }

    /// Pushes `c` into the open batch as a change at its read position,
    /// decided at `ts`; its names override the names table for this batch.
    pub(crate) async fn push_current(
        &mut self,
        c: Current,
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
