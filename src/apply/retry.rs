//! The failure queue's retry worker: re-syncs the *current* state of each
//! interaction whose failure is due (contract §5). It runs between source
//! transactions on the applier's own connections, so there is still one
//! writer. A retry is decided at the clock's time (it is not a replay), and its
//! writes carry the current progress LSN for the regression guard.

use chrono::Utc;
use uuid::Uuid;

use super::{db, Applier, TxnState};
use crate::error::SyncError;
use crate::lsn::Lsn;
use crate::mapping::InteractionRow;

impl Applier {
    /// Retries the due failures in one target transaction. Returns how many.
    pub async fn retry_due(&mut self, progress: Lsn) -> Result<usize, SyncError> {
        debug_assert!(!self.is_open(), "retries run between source transactions");
        let due: Vec<Uuid> = self
            .target
            .query(&self.t.due_failures, &[])
            .await
            .map_err(db("reading due failures"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        self.begin(progress, Utc::now());
        if let TxnState::Open { retry, .. } = &mut self.state {
            *retry = true;
        }
        let result = async {
            for id in &due {
                let current = self
                    .source
                    .query_opt(&self.s.current_state, &[id])
                    .await
                    .map_err(db("reading the interaction's current state"))?;
                match current {
                    Some(row) => {
                        let names = super::sql::participants_of(&row);
                        self.upsert(*id, InteractionRow::from_sql(&row), Some(names))
                            .await?;
                    }
                    None => self.delete(*id).await?,
                }
            }
            self.commit_batch(None).await
        }
        .await;
        if let Err(e) = result {
            self.rollback().await;
            return Err(e);
        }
        tracing::info!(retried = due.len(), "retried due failures");
        Ok(due.len())
    }

    /// Open failures, for the metrics.
    pub async fn pending_failures(&self) -> Result<i64, SyncError> {
        Ok(self
            .target
            .query_one(&self.t.pending_failures, &[])
            .await
            .map_err(db("counting open failures"))?
            .get(0))
    }
}
