//! An interaction's *current* state, read from the source together with its
//! participants' names and the source WAL insert position, for the writers
//! that do not come from the stream: the retry worker and `reconcile`.
//!
//! The names read with the row override the names table for the batch, so an
//! event is built field for field as the stream builds it (issue 9, point 1).
//! The writes carry the WAL insert position read with the row as their LSN: it
//! is at or after the commit of every state the statement saw, so an older
//! change still in the stream is refused by the regression guard instead of
//! walking the event back (issue 9, point 7), and a newer one wins.

use chrono::{DateTime, Utc};
use tokio_postgres::types::PgLsn;
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
    /// Source WAL insert position when the row was read.
    pub read_at: Lsn,
}

impl Current {
    /// From a row selected with [`sql::current_with_names`].
    pub fn from_row(r: &Row) -> Result<Current, SyncError> {
        let id: Uuid = r
            .try_get("interaction_id")
            .map_err(db("reading interaction_id"))?;
        let at: PgLsn = r
            .try_get("read_at")
            .map_err(db("reading the WAL position"))?;
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
            read_at: Lsn::from(at),
        })
    }

    /// The event's participants for this state.
    pub fn participants(&self) -> Vec<String> {
        participants(self.customer_name.clone(), self.contact_name.clone())
    }
}

impl Writer {
    /// Reads the current state of `ids` from the source (ids that are gone
    /// are simply absent). With `lock`, the rows are read `for share`: a
    /// transaction still writing one of them (its commit record may already
    /// be below the position read) is waited for and its state read instead.
    pub(crate) async fn read_current(
        &self,
        ids: &[Uuid],
        participants: &ParticipantSchema,
        lock: bool,
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
        rows.iter().map(Current::from_row).collect()
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
