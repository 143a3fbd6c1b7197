//! One batch of interactions' *current* state, for the writers that do not
//! come from the stream: the retry worker ([`BatchKind::Retry`]) and
//! `reconcile` / `run --resync` ([`BatchKind::Reconcile`]). They share one
//! owner of "push the changes into a batch, commit, roll back on error":
//! [`Writer::apply_batch`].
//!
//! Each change is a row read now ([`CurrentState::Read`], pushed as the
//! stream would push it, names and all) or an interaction gone from the
//! source ([`CurrentState::Gone`], its event deleted). Every change carries
//! the caller's position (see `current` and [`crate::visibility`]), so it is
//! refused by the regression guard only where the event already shows a
//! later state.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::current::Current;
use super::plan::RowChange;
use super::{BatchKind, Writer};
use crate::error::SyncError;
use crate::lsn::Lsn;

/// One change of a current-state batch.
// Nearly every change of a batch is a `Read`: boxing it would cost an
// allocation per row to save space on the few `Gone`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum CurrentState {
    /// The interaction as read now from the source.
    Read(Current),
    /// The interaction is gone from the source: its event is deleted.
    Gone(Uuid),
}

impl CurrentState {
    /// The changes for interactions `ids` of which `read` are the rows found
    /// in the source: every row of `read` in its order, then every id of
    /// `ids` without a row, in the order of `ids`, as gone.
    pub fn of(ids: &[Uuid], read: Vec<Current>) -> Vec<CurrentState> {
        let found: HashSet<Uuid> = read.iter().map(|c| c.id).collect();
        let gone = ids
            .iter()
            .filter(|id| !found.contains(id))
            .map(|id| CurrentState::Gone(*id));
        read.into_iter()
            .map(CurrentState::Read)
            .chain(gone)
            .collect::<Vec<_>>()
    }
}

impl Writer {
    /// Writes `changes` as one batch of `kind` (one target transaction) and
    /// commits it; on an error the batch is rolled back and the error
    /// returned. A [`CurrentState::Gone`] is deleted at `at`, the position
    /// the caller read at.
    pub(crate) async fn apply_batch(
        &mut self,
        kind: BatchKind,
        changes: Vec<CurrentState>,
        at: Lsn,
        now: DateTime<Utc>,
    ) -> Result<(), SyncError> {
        self.begin(kind);
        let result = async {
            for change in changes {
                match change {
                    CurrentState::Read(c) => self.push_current(c, now).await?,
                    CurrentState::Gone(id) => {
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
