//! IO: applies source changes to the target in batches, written set-based.
//!
//! # Batches, chunks and progress
//!
//! A [`Batch`] is one target transaction. Its [`BatchKind`] says what it is:
//! source transactions from the stream, the initial snapshot, or failure
//! retries. Changes are pushed in LSN order and held in a *chunk*, bounded by
//! count and bytes; a full chunk is written at once, inside the still-open
//! target transaction, so a source transaction of a million rows never sits in
//! memory. Each chunk is decided in memory ([`plan`], pure) against its
//! interactions' events, read in one query, and written with a handful of
//! set-based statements (`unnest` arrays): deletes, updates, inserts, log rows,
//! failures, resolutions. The statements are in [`sql`]; the mapped columns
//! of `calendar_events` they list, and the parameters they bind, come from one
//! table in [`columns`]. A chunk's `calendar_synced_at` stamps are held by the
//! [`stamper`], which writes them on a session of its own once the batch has
//! committed.
//!
//! [`Writer::commit`] ends the batch at a source-transaction boundary: the
//! pending chunk is written, then the progress row (the end LSN of the last
//! source transaction in the batch, for a stream batch; the consistent point
//! for the snapshot; nothing for retries) in the same transaction, then the
//! commit. Only after it returns may that LSN be reported as flushed.
//!
//! Customer/contact changes and TRUNCATE are *barriers*: the pending chunk is
//! written first, then their own set-based statement runs, so every change
//! still sees the state the changes before it left.
//!
//! # One bad row
//!
//! Each chunk's statements run under one savepoint. A row-permanent error
//! (constraint, invalid data) rolls back to it and the chunk is bisected, each
//! half under its own savepoint, until the bad change stands alone: it goes to
//! the failure queue (`calendar_sync_failures` + a `failed` log row), its
//! neighbours commit. Row errors found while deciding (negative duration) need
//! no statement to fail. A batch therefore takes one savepoint per chunk on
//! the happy path (stamps take none), never one per
//! change: the walsender decodes our own transactions without a
//! subtransaction storm.
//!
//! # Echo and stamps
//!
//! Writing `interaction.calendar_synced_at` feeds the stream back to itself.
//! The [`stamper`] writes it after each batch's target commit, in short
//! transactions that start with the echo marker (`crate::echo`), which the
//! stream recognises from the stream alone.
//!
//! # Reads of the source
//!
//! The writer reads the source for TOAST-unchanged descriptions and retries;
//! both first wait until what the stream delivered is visible
//! ([`crate::visibility`], whose [`Pending`] the writer owns).

pub mod columns;
pub(crate) mod event;
pub(crate) mod live;
mod party;
pub mod plan;
mod retry;
pub mod sql;
mod stamper;
mod write;

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::changes::SourceChange;
use crate::config::{BatchLimits, Config};
use crate::error::{FatalKind, SyncError};
use crate::lsn::Lsn;
use crate::mapping::Action;
use crate::mapping::Outcome;
use crate::metrics::Metrics;
use crate::participants::Party;
use crate::visibility::Pending;
pub use live::{LiveChange, LiveInteraction};
pub use plan::RowChange;
pub use retry::retry_due_once;

/// How long a one-shot command or a clean stop waits for the stamps of
/// committed batches ([`Writer::settle_stamps`]).
pub const STAMPS_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// Source transactions from the stream; progress = the end LSN of the last.
    Stream,
    /// The initial snapshot, applied like a stream of INSERTs at the
    /// snapshot's time `taken_at`, ending at the slot's consistent point.
    Snapshot {
        consistent_point: Lsn,
        taken_at: DateTime<Utc>,
    },
    /// Failure retries from the interactions' live state; no progress.
    Retry,
    /// `reconcile` (and `run --resync`) repairs: interactions' live state
    /// and deletes of events whose interaction is gone; no progress.
    Reconcile,
}

/// What each kind of batch carries besides its changes.
enum BatchData {
    /// The end LSN and commit time of the last source transaction that ended
    /// in it (`None` until one has).
    Stream { end: Option<(Lsn, DateTime<Utc>)> },
    /// Its progress row: the consistent point, committed at the snapshot's time.
    Snapshot {
        consistent_point: Lsn,
        taken_at: DateTime<Utc>,
    },
    /// Participant names read with the rows, overriding the names table
    /// (which is as of the stream's progress, not of now).
    Live {
        retry: bool,
        names: HashMap<(Party, Uuid), Option<String>>,
    },
}

impl BatchData {
    fn new(kind: BatchKind) -> BatchData {
        match kind {
            BatchKind::Stream => BatchData::Stream { end: None },
            BatchKind::Snapshot {
                consistent_point,
                taken_at,
            } => BatchData::Snapshot {
                consistent_point,
                taken_at,
            },
            BatchKind::Retry | BatchKind::Reconcile => BatchData::Live {
                retry: kind == BatchKind::Retry,
                names: HashMap::new(),
            },
        }
    }

    /// The progress row this batch commits with, if any: the position every
    /// change of it is applied through, and that position's commit time.
    fn progress(&self) -> Option<(Lsn, DateTime<Utc>)> {
        match self {
            BatchData::Stream { end } => *end,
            BatchData::Snapshot {
                consistent_point,
                taken_at,
            } => Some((*consistent_point, *taken_at)),
            BatchData::Live { .. } => None,
        }
    }
}

/// What a committed batch means for the stream's acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// No batch was open, or a stream batch in which no source transaction
    /// ended: nothing moved.
    Nothing,
    /// Every source change through this LSN is in the target (a stream
    /// batch: the end of its last source transaction; the snapshot: the
    /// consistent point), with the progress row: it may be acknowledged.
    Through(Lsn),
    /// A live-state batch (retries, reconcile): written, no source position.
    Live,
}

/// The open batch (one target transaction).
struct Batch {
    kind: BatchKind,
    data: BatchData,
    /// The target transaction has begun (lazily, at the first write).
    open: bool,
    /// Interaction changes not written yet (the chunk).
    chunk: Vec<RowChange>,
    chunk_bytes: usize,
    /// Changes pushed since the batch began (the commit bound).
    changes: usize,
    started: Instant,
    /// Actions written, counted into the metrics once committed.
    counts: [[u64; 2]; 4],
}

impl Batch {
    fn new(kind: BatchKind) -> Batch {
        Batch {
            kind,
            data: BatchData::new(kind),
            open: false,
            chunk: Vec::new(),
            chunk_bytes: 0,
            changes: 0,
            started: Instant::now(),
            counts: [[0; 2]; 4],
        }
    }

    /// A retry batch (its failures count and back off).
    fn is_retry(&self) -> bool {
        matches!(self.data, BatchData::Live { retry: true, .. })
    }

    /// A live-state batch's names read with its rows.
    fn live_names(&self) -> Option<&HashMap<(Party, Uuid), Option<String>>> {
        match &self.data {
            BatchData::Live { names, .. } => Some(names),
            _ => None,
        }
    }

    fn count(&mut self, action: Action, status: Outcome, n: u64) {
        let a = Action::ALL.iter().position(|x| *x == action).unwrap_or(0);
        let s = usize::from(status == Outcome::Failed);
        self.counts[a][s] += n;
    }
}

/// Writes batches to the target. See the module docs.
pub struct Writer {
    target: Client,
    source: Client,
    t: sql::TargetStatements,
    s: sql::SourceStatements,
    slot: String,
    window: chrono::Duration,
    tz: chrono_tz::Tz,
    limits: BatchLimits,
    batch: Option<Batch>,
    metrics: Metrics,
    /// `calendar_synced_at` (when configured): see [`stamper`].
    stamper: Option<stamper::Stamper>,
    /// Delivered source transactions not yet known visible (stream only).
    pending: Pending,
    /// End of the last stream batch committed: every source transaction up
    /// to it is applied (the position a retry's writes carry).
    applied_through: Lsn,
}

fn db(context: &'static str) -> impl Fn(tokio_postgres::Error) -> SyncError {
    move |e| SyncError::db(context, e)
}

impl Writer {
    /// `target` and `source` are distinct sessions (also when they are the same
    /// database): `source` is used for lookups. Stamps have a session of
    /// their own ([`stamper`]).
    pub async fn new(
        cfg: &Config,
        target: Client,
        source: Client,
        metrics: Metrics,
    ) -> Result<Writer, SyncError> {
        let t = sql::prepare_target(&target).await.map_err(db(
            "preparing target statements (has `calendar-sync migrate` run?)",
        ))?;
        let s = sql::prepare_source(&source).await.map_err(db(
            "preparing source statements (has `calendar-sync migrate` run? are customer and contact as configured?)",
        ))?;
        Ok(Writer {
            target,
            source,
            t,
            s,
            slot: cfg.slot.clone(),
            window: cfg.window,
            tz: cfg.timezone,
            limits: cfg.batch,
            batch: None,
            stamper: stamper::Stamper::start(
                cfg.source_url.clone(),
                cfg.limits(),
                cfg.write_synced_at,
            )
            .await?,
            metrics,
            pending: Pending::new(),
            applied_through: Lsn::ZERO,
        })
    }

    /// Starts a batch (a no-op when one of the same kind is open).
    pub fn begin(&mut self, kind: BatchKind) {
        if self.batch.is_none() {
            self.batch = Some(Batch::new(kind));
        }
        debug_assert_eq!(self.batch.as_ref().map(|b| b.kind), Some(kind));
    }

    /// The target session, between batches (bookkeeping outside a batch).
    pub fn target(&self) -> &Client {
        debug_assert!(!self.is_open(), "no batch is open");
        &self.target
    }

    /// The process's metrics (the snapshot copy counts its rows there).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A batch is open: its source transactions are not committed yet.
    pub fn is_open(&self) -> bool {
        self.batch.is_some()
    }

    /// The open batch holds at least one ended source transaction.
    pub fn has_uncommitted(&self) -> bool {
        self.batch
            .as_ref()
            .is_some_and(|b| matches!(b.data, BatchData::Stream { end: Some(_) }))
    }

    /// The open batch reached its size or age bound (commit at the next
    /// source-transaction boundary).
    pub fn is_full(&self) -> bool {
        self.batch.as_ref().is_some_and(|b| {
            b.changes >= self.limits.max_changes || b.started.elapsed() >= self.limits.max_delay
        })
    }

    /// When the open batch reaches its age bound (`CALENDAR_SYNC_BATCH_DELAY_MS`).
    pub fn age_bound(&self) -> Option<Instant> {
        self.batch
            .as_ref()
            .map(|b| b.started + self.limits.max_delay)
    }

    /// A source transaction ended at `end_lsn` (committed at `ts`) inside the
    /// open batch; also one with nothing for us, so that its end is confirmed
    /// with the batch and never before the transactions ahead of it.
    pub fn end_source_txn(&mut self, end_lsn: Lsn, ts: DateTime<Utc>) {
        if let Some(Batch {
            data: BatchData::Stream { end },
            ..
        }) = self.batch.as_mut()
        {
            *end = Some((end_lsn, ts));
        }
    }

    /// Adds one change of the source transaction at `lsn` / `ts` to the open batch.
    pub async fn push(
        &mut self,
        lsn: Lsn,
        ts: DateTime<Utc>,
        change: SourceChange,
    ) -> Result<(), SyncError> {
        let row = match change {
            SourceChange::InteractionUpsert { id, row } => RowChange {
                lsn,
                ts,
                id,
                row: Some(row),
            },
            SourceChange::InteractionDelete { id } => RowChange {
                lsn,
                ts,
                id,
                row: None,
            },
            SourceChange::InteractionTruncate => {
                self.flush().await?;
                return self.truncate(lsn).await;
            }
            SourceChange::PartyChanged {
                party,
                id,
                name,
                deleted,
            } => {
                self.flush().await?;
                return self.party_changed(lsn, party, id, name, deleted).await;
            }
        };
        self.push_row(row).await
    }

    /// Adds one interaction change; writes the chunk when it is full.
    pub async fn push_row(&mut self, change: RowChange) -> Result<(), SyncError> {
        let limits = self.limits;
        let Some(b) = self.batch.as_mut() else {
            return Err(SyncError::fatal(
                FatalKind::Bug,
                "a change arrived outside a batch",
                "this is a bug: report it with the log",
            ));
        };
        b.chunk_bytes += change.bytes();
        b.chunk.push(change);
        b.changes += 1;
        if b.chunk.len() >= limits.max_changes || b.chunk_bytes >= limits.max_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    /// Opens the target transaction if it is not open yet.
    async fn ensure_open(&mut self) -> Result<(), SyncError> {
        let Some(b) = self.batch.as_mut() else {
            return Err(SyncError::fatal(
                FatalKind::Bug,
                "a write outside a batch",
                "this is a bug: report it with the log",
            ));
        };
        if b.open {
            return Ok(());
        }
        self.target
            .batch_execute("begin")
            .await
            .map_err(db("beginning the target transaction"))?;
        b.open = true;
        Ok(())
    }

    /// Clears the regression guard of every interaction event (initial
    /// snapshot only: a new slot starts a new LSN history).
    pub async fn forget_event_lsns(&mut self) -> Result<(), SyncError> {
        self.ensure_open().await?;
        self.target
            .execute(&self.t.forget_event_lsns, &[])
            .await
            .map_err(db("resetting calendar_events.source_lsn"))?;
        Ok(())
    }

    /// Ends the batch: writes the pending chunk, the progress row (stream and
    /// snapshot batches) and commits. Says what the commit means for the
    /// acknowledgements ([`Committed`]).
    pub async fn commit(&mut self) -> Result<Committed, SyncError> {
        self.flush().await?;
        let Some(b) = self.batch.take() else {
            return Ok(Committed::Nothing);
        };
        let end = b.data.progress();
        let committed = match (&b.data, end) {
            (BatchData::Live { .. }, _) => Committed::Live,
            (_, Some((lsn, _))) => Committed::Through(lsn),
            (_, None) => Committed::Nothing,
        };
        if !b.open {
            // Nothing was written: nothing needs to be durable.
            if let (
                BatchData::Stream {
                    end: Some((end_lsn, _)),
                },
                _,
            ) = (&b.data, end)
            {
                self.applied_through = self.applied_through.max(*end_lsn);
            }
            return Ok(committed);
        }
        if let Err(e) = self.write_progress_and_commit(end).await {
            if let Some(s) = self.stamper.as_mut() {
                s.rollback();
            }
            return Err(e);
        }
        if let Some(s) = self.stamper.as_mut() {
            s.commit().await;
        }
        if let BatchData::Stream {
            end: Some((end_lsn, _)),
        } = b.data
        {
            self.applied_through = self.applied_through.max(end_lsn);
        }
        for (a, action) in Action::ALL.iter().enumerate() {
            for (s, status) in [Outcome::Success, Outcome::Failed].iter().enumerate() {
                if b.counts[a][s] > 0 {
                    self.metrics.actions(*action, *status, b.counts[a][s]);
                }
            }
        }
        if let Some((end_lsn, commit_ts)) = end {
            self.metrics.transaction_applied(end_lsn, commit_ts);
        }
        Ok(committed)
    }

    /// The progress row (stream and snapshot batches) and the commit.
    async fn write_progress_and_commit(
        &mut self,
        end: Option<(Lsn, DateTime<Utc>)>,
    ) -> Result<(), SyncError> {
        if let Some((end_lsn, commit_ts)) = end {
            let n = self
                .target
                .execute(
                    &self.t.write_progress,
                    &[&self.slot, &PgLsn::from(end_lsn), &commit_ts],
                )
                .await
                .map_err(db("writing calendar_sync_progress"))?;
            // Invariant: progress never decreases. A lower end LSN here means a
            // transaction at or below the stored progress reached apply, or a
            // second consumer writes this slot's progress row.
            if n != 1 {
                return Err(SyncError::fatal(
                    FatalKind::ProgressConflict,
                    format!("calendar_sync_progress for slot {} is already past {end_lsn}: refusing to move it backwards", self.slot),
                    "another consumer writes progress under the same slot name into this target (two source databases sharing a target and a slot name?): give each its own CALENDAR_SYNC_SLOT",
                ));
            }
        }
        self.target
            .batch_execute("commit")
            .await
            .map_err(db("committing the target transaction"))?;
        Ok(())
    }

    /// Abandons the batch (after an error): nothing of it stays in the target.
    pub async fn rollback(&mut self) {
        if let Some(Batch { open: true, .. }) = self.batch.take() {
            if let Err(e) = self.target.batch_execute("rollback").await {
                tracing::debug!(error = %e, "rollback failed; the connection is gone and so is the transaction");
            }
        }
        if let Some(s) = self.stamper.as_mut() {
            s.rollback();
        }
    }

    /// The stream's delivered transactions not yet known visible (see
    /// [`crate::visibility`]): the runner records Begins and bounds its
    /// acknowledgements with it.
    pub fn pending(&mut self) -> &mut Pending {
        &mut self.pending
    }

    /// Waits (at most `within`) until the stamps of committed batches are
    /// committed too: before a one-shot command (`reconcile`, a retry pass)
    /// or a clean stop ends the process, which would drop them.
    pub async fn settle_stamps(&self, within: std::time::Duration) {
        if let Some(s) = self.stamper.as_ref() {
            if tokio::time::timeout(within, s.settle()).await.is_err() {
                tracing::warn!(
                    "calendar_synced_at stamps still being written at exit; the events are synced"
                );
            }
        }
    }

    /// A participant name read together with a retried row.
    pub(crate) fn remember_name(&mut self, party: Party, id: Option<Uuid>, name: Option<String>) {
        if let (
            Some(Batch {
                data: BatchData::Live { names, .. },
                ..
            }),
            Some(id),
        ) = (self.batch.as_mut(), id)
        {
            names.insert((party, id), name);
        }
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
