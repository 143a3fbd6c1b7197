//! The failure queue's retry worker: re-syncs the *current* state of each
//! interaction whose failure is due (contract §5), through the same planner
//! and set-based writer as the stream. It runs between batches on the
//! writer's own connections, so there is still one writer.
//!
//! A retry is decided at the clock's time (it is not a replay). Its participant
//! names are read with the row, in the same statement, so the event is field
//! for field what the stream writes for that state (issue 9, point 1).
//!
//! The read follows the visibility rule ([`crate::visibility`]): it waits
//! until every transaction the stream delivered is visible, so it never sees
//! a state older than one the stream applied. Its writes carry the stream's
//! position `at` (everything up to it is applied and visible) as their LSN:
//! the stream's later changes (above it) win, however they were ordered
//! against the read. (It carried the WAL insert position before: an edit
//! committed, streamed later, but not yet visible at the read had a lower
//! position and was refused as older, issue 13.)

use chrono::Utc;
use uuid::Uuid;

use super::live::LiveChange;
use super::{db, BatchKind, Writer};
use crate::config::Config;
use crate::error::SyncError;
use crate::lsn::Lsn;

/// How long a retry pass waits for what the stream delivered to become
/// visible; it is skipped until the next tick otherwise.
const RETRY_VISIBLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Writer {
    /// Retries the due failures in one target transaction, between stream
    /// batches: `at` is the stream's progress (every transaction up to it is
    /// applied). Returns how many.
    pub async fn retry_due(
        &mut self,
        participants: &crate::config::ParticipantSchema,
        at: Lsn,
    ) -> Result<usize, SyncError> {
        debug_assert!(!self.is_open(), "retries run between batches");
        let due = self.due_failures().await?;
        if due.is_empty() {
            return Ok(0);
        }
        if !self
            .pending
            .wait_through(&self.source, Lsn(u64::MAX), RETRY_VISIBLE_WITHIN)
            .await?
        {
            tracing::debug!("retries wait: a streamed transaction is not visible yet");
            return Ok(0);
        }
        self.retry_at(&due, participants, at).await
    }

    async fn due_failures(&self) -> Result<Vec<Uuid>, SyncError> {
        self.target
            .query(&self.t.due_failures, &[])
            .await
            .map_err(db("reading due failures"))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(db("reading due failures"))
    }

    /// Re-syncs `due` from a read that sees every transaction up to `at`.
    async fn retry_at(
        &mut self,
        due: &[Uuid],
        participants: &crate::config::ParticipantSchema,
        at: Lsn,
    ) -> Result<usize, SyncError> {
        let rows = self.read_live(due, participants, false, at).await?;
        let now = Utc::now();
        // Gone from the source: handled as a delete.
        let changes = LiveChange::of(due, rows);
        self.write_live(BatchKind::Retry, changes, at, now).await?;
        tracing::info!(retried = due.len(), "retried due failures");
        Ok(due.len())
    }
}

/// Runs the retry worker once, outside `run` (tests, and a one-shot repair):
/// retries every due failure and returns how many. Its position is a settled
/// one ([`crate::visibility::settled_position`]).
pub async fn retry_due_once(cfg: &Config) -> Result<usize, SyncError> {
    let target = crate::db::connect(cfg.target_url(), "target").await?;
    let source = crate::db::connect(&cfg.source_url, "source").await?;
    let mut writer = Writer::new(cfg, target, source, crate::metrics::Metrics::new()).await?;
    let due = writer.due_failures().await?;
    if due.is_empty() {
        return Ok(0);
    }
    let at = crate::visibility::settled_position(
        &writer.source,
        Some(&cfg.slot),
        crate::visibility::SETTLE_TIMEOUT,
    )
    .await?;
    let retried = writer.retry_at(&due, &cfg.participants, at).await;
    writer.settle_stamps(super::STAMPS_AT_EXIT).await;
    retried
}
