//! The failure queue's retry worker: re-syncs the *current* state of each
//! interaction whose failure is due (contract §5), through the same planner
//! and set-based writer as the stream. It runs between batches on the
//! writer's own connections, so there is still one writer.
//!
//! A retry is decided at the clock's time (it is not a replay). Its participant
//! names are read with the row, in the same statement, so the event is field
//! for field what the stream writes for that state (issue 9, point 1). Its
//! writes carry the source's WAL insert position at the read as their LSN: at
//! or after the commit of the state read, so an older change still in the
//! stream is refused by the regression guard instead of walking the event back
//! (issue 9, point 7).

use chrono::Utc;
use tokio_postgres::types::PgLsn;
use uuid::Uuid;

use super::apply_batch::CurrentState;
use super::current::Current;
use super::{db, BatchKind, Writer};
use crate::config::Config;
use crate::error::SyncError;
use crate::lsn::Lsn;

impl Writer {
    /// Retries the due failures in one target transaction. Returns how many.
    pub async fn retry_due(
        &mut self,
        participants: &crate::config::ParticipantSchema,
    ) -> Result<usize, SyncError> {
        debug_assert!(!self.is_open(), "retries run between batches");
        let due: Vec<Uuid> = self
            .target
            .query(&self.t.due_failures, &[])
            .await
            .map_err(db("reading due failures"))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(db("reading due failures"))?;
        if due.is_empty() {
            return Ok(0);
        }
        let rows = self.read_current(&due, participants, false).await?;
        let now = Utc::now();
        let mut read_at = rows.iter().map(|c| c.read_at).max().unwrap_or(Lsn::ZERO);
        if read_at == Lsn::ZERO {
            read_at = self.source_wal_position().await?;
        }
        let rows = rows.into_iter().map(|c| Current { read_at, ..c }).collect();
        // Gone from the source: handled as a delete.
        let changes = CurrentState::of(&due, rows);
        self.apply_batch(BatchKind::Retry, changes, Some(read_at), now)
            .await?;
        tracing::info!(retried = due.len(), "retried due failures");
        Ok(due.len())
    }

    pub(crate) async fn source_wal_position(&self) -> Result<Lsn, SyncError> {
        let r = self
            .source
            .query_one("select pg_current_wal_insert_lsn()", &[])
            .await
            .map_err(db("reading the source WAL position"))?;
        Ok(Lsn::from(
            r.try_get::<_, PgLsn>(0)
                .map_err(db("reading the source WAL position"))?,
        ))
    }
}

/// Runs the retry worker once, outside `run` (tests, and a one-shot repair):
/// retries every due failure and returns how many.
pub async fn retry_due_once(cfg: &Config) -> Result<usize, SyncError> {
    let target = crate::db::connect(cfg.target_url(), "target").await?;
    let source = crate::db::connect(&cfg.source_url, "source").await?;
    let mut writer = Writer::new(cfg, target, source, crate::metrics::Metrics::new()).await?;
    let retried = writer.retry_due(&cfg.participants).await;
    writer.settle_stamps(super::STAMPS_AT_EXIT).await;
    retried
}
