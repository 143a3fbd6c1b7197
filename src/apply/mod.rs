//! IO: applies decided sync actions to the target, one target transaction per
//! batch of source transactions.
//!
//! # Transactions and progress
//!
//! [`Applier::begin`] opens a target transaction lazily, at the first change
//! that needs a write. [`Applier::commit`] writes the progress row (the end LSN
//! of the last source transaction in the batch) in that same transaction and
//! commits; only after it returns may the caller report the LSN as flushed.
//! Today every source transaction is its own batch; the seam allows several
//! (`commit` takes the last end LSN, state carries no per-source-txn data).
//!
//! Changes stream through: nothing of a source transaction is held in memory
//! except, with a separate target, the ids whose `calendar_synced_at` must be
//! written after the target commit (16 bytes each).
//!
//! # One bad row
//!
//! Each change runs under a savepoint. A row-permanent failure (invalid data,
//! constraint violation) rolls back to it, records the failure
//! (`calendar_sync_failures` + a `failed` log row) and the stream goes on. Any
//! other error is returned and the caller rolls the whole batch back.
//!
//! # Echo
//!
//! Writing `interaction.calendar_synced_at` feeds the stream back to itself. Every
//! transaction of ours that writes to the source starts with [`sql::ECHO_MARKER`]:
//! a transactional logical message (`pg_logical_emit_message(true, ECHO_PREFIX,
//! slot)`) and our transaction id in `calendar_sync_echo`, in one statement.
//! The stream ignores a transaction only when it carries the message first and
//! its id is in that table (`stream::echo`): any role may emit the message, but
//! only calendar-sync's may write the table.

mod event;
mod log;
mod party;
mod retry;
pub mod sql;

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::config::Config;
use crate::error::{classify_pg, describe_pg, ErrorClass, SyncError};
use crate::lsn::Lsn;
use crate::mapping::fields::participants;
use crate::mapping::rules::{decide, Change};
use crate::mapping::{Action, EventFields, InteractionRow, RowError, Toast};
use crate::metrics::{Metrics, Status};
use event::event_from_row;

/// Prefix of the transactional logical message that marks our own transactions.
pub const ECHO_PREFIX: &str = "calendar_sync.echo";

/// What the applier knows of the batch it is in.
enum TxnState {
    Idle,
    Open {
        /// Commit LSN (Begin `final_lsn`) of the source transaction being applied.
        source_lsn: Lsn,
        commit_ts: DateTime<Utc>,
        /// Target transaction started (lazily, at the first write).
        target_open: bool,
        /// Separate target only: ids to stamp after the target commit.
        synced: Vec<Uuid>,
        /// Counted into the metrics only once committed.
        counts: Vec<(Action, Status)>,
        /// A batch of failure retries, not a source transaction.
        retry: bool,
    },
}

/// Applies changes to the target. See the module docs.
pub struct Applier {
    target: Client,
    source: Client,
    t: sql::TargetStatements,
    s: sql::SourceStatements,
    slot: String,
    window: chrono::Duration,
    tz: chrono_tz::Tz,
    write_synced_at: bool,
    state: TxnState,
    metrics: Metrics,
}

fn db(context: &'static str) -> impl Fn(tokio_postgres::Error) -> SyncError {
    move |e| SyncError::db(context, e)
}

/// Failure of one change: permanent for the row, or for the whole batch.
enum ChangeError {
    Row(String),
    Batch(SyncError),
}

impl From<RowError> for ChangeError {
    fn from(e: RowError) -> Self {
        ChangeError::Row(e.to_string())
    }
}

impl From<tokio_postgres::Error> for ChangeError {
    fn from(e: tokio_postgres::Error) -> Self {
        match classify_pg(&e) {
            ErrorClass::RowPermanent => ChangeError::Row(describe_pg(&e)),
            _ => ChangeError::Batch(SyncError::db("applying a change", e)),
        }
    }
}

impl Applier {
    /// `target` and `source` are distinct sessions (also when they are the same
    /// database): `source` is used for lookups and, with a separate target, for
    /// stamping `calendar_synced_at`.
    pub async fn new(
        cfg: &Config,
        target: Client,
        source: Client,
        metrics: Metrics,
    ) -> Result<Applier, SyncError> {
        let same_db = cfg.same_database();
        let t = sql::prepare_target(&target, same_db && cfg.write_synced_at)
            .await
            .map_err(db(
                "preparing target statements (has `calendar-sync migrate` run?)",
            ))?;
        let s = sql::prepare_source(&source).await.map_err(db(
            "preparing source statements (has `calendar-sync migrate` run? are customer and contact as configured?)",
        ))?;
        Ok(Applier {
            target,
            source,
            t,
            s,
            slot: cfg.slot.clone(),
            window: cfg.window,
            tz: cfg.timezone,
            write_synced_at: cfg.write_synced_at,
            state: TxnState::Idle,
            metrics,
        })
    }

    /// Starts applying the source transaction committed at `source_lsn` / `commit_ts`.
    pub fn begin(&mut self, source_lsn: Lsn, commit_ts: DateTime<Utc>) {
        debug_assert!(
            matches!(self.state, TxnState::Idle),
            "begin inside an open batch"
        );
        self.state = TxnState::Open {
            source_lsn,
            commit_ts,
            target_open: false,
            synced: Vec::new(),
            counts: Vec::new(),
            retry: false,
        };
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, TxnState::Open { .. })
    }

    /// Opens the target transaction now, so that `commit` writes the progress
    /// row even if no change follows (the initial snapshot of an empty table).
    pub async fn open(&mut self) -> Result<(), SyncError> {
        self.ensure_target_txn().await.map(|_| ())
    }

    /// Clears the regression guard of every interaction event (initial
    /// snapshot only: a new slot starts a new LSN history).
    pub async fn forget_event_lsns(&mut self) -> Result<(), SyncError> {
        self.ensure_target_txn().await?;
        self.target
            .execute(&self.t.forget_event_lsns, &[])
            .await
            .map_err(db("resetting calendar_events.source_lsn"))?;
        Ok(())
    }

    /// Opens the target transaction if it is not open yet.
    async fn ensure_target_txn(&mut self) -> Result<(Lsn, DateTime<Utc>), SyncError> {
        let TxnState::Open {
            source_lsn,
            commit_ts,
            target_open,
            ..
        } = &mut self.state
        else {
            return Err(SyncError::fatal(
                "a change arrived outside a transaction",
                "this is a bug: report it with the log",
            ));
        };
        let at = (*source_lsn, *commit_ts);
        if !*target_open {
            self.target
                .batch_execute("begin")
                .await
                .map_err(db("beginning the target transaction"))?;
            *target_open = true;
            if let Some(marker) = &self.t.emit_echo_marker {
                self.target
                    .query_one(marker, &[&ECHO_PREFIX, &self.slot])
                    .await
                    .map_err(db("marking the target transaction as calendar-sync's own (calendar_sync_echo; has `calendar-sync migrate` run, and may this role insert into calendar_sync_echo?)"))?;
            }
        }
        Ok(at)
    }

    /// INSERT or UPDATE of an interaction. `participants`: precomputed (snapshot)
    /// or `None` to look them up now. `row` may be a decode failure of the row
    /// with its id, recorded as a failure.
    pub async fn upsert(
        &mut self,
        id: Uuid,
        row: Result<InteractionRow, RowError>,
        participants: Option<Vec<String>>,
    ) -> Result<(), SyncError> {
        let (lsn, ts) = self.ensure_target_txn().await?;
        self.savepoint().await?;
        let result = self.try_upsert(id, &row, participants, lsn, ts).await;
        let fallback_by = row
            .as_ref()
            .map(|r| r.updated_by.unwrap_or(r.created_by))
            .ok();
        self.finish_change(id, result, fallback_by, None, lsn).await
    }

    /// DELETE of an interaction: a true hard delete of its event.
    pub async fn delete(&mut self, id: Uuid) -> Result<(), SyncError> {
        let (lsn, ts) = self.ensure_target_txn().await?;
        self.savepoint().await?;
        let result = async {
            let existing = self.existing_event(id).await?;
            self.decide_and_write(id, &Change::Delete, existing, ts, lsn)
                .await
        }
        .await;
        self.finish_change(id, result, None, Some(Action::Delete), lsn)
            .await
    }

    /// TRUNCATE of interaction: every interaction event goes, one log row each.
    pub async fn truncate(&mut self) -> Result<(), SyncError> {
        let (lsn, _) = self.ensure_target_txn().await?;
        let n = self
            .target
            .execute(&self.t.truncate_events, &[&PgLsn::from(lsn)])
            .await
            .map_err(db("deleting events after TRUNCATE interaction"))?;
        tracing::info!(events = n, lsn = %lsn, "interaction truncated: deleted its events");
        if let TxnState::Open { counts, .. } = &mut self.state {
            counts.extend(std::iter::repeat_n(
                (Action::Delete, Status::Success),
                n as usize,
            ));
        }
        Ok(())
    }

    /// Ends the batch: writes the progress row (`end_lsn`, the end of the last
    /// source transaction) and commits. Returns whether anything was written.
    /// Only after this returns may `end_lsn` be reported as flushed.
    pub async fn commit(&mut self, end_lsn: Lsn) -> Result<bool, SyncError> {
        self.commit_batch(Some(end_lsn)).await
    }

    /// Commits; writes the progress row only with `Some(end_lsn)` (a batch of
    /// retries is not a source transaction and moves no progress).
    async fn commit_batch(&mut self, end_lsn: Option<Lsn>) -> Result<bool, SyncError> {
        let state = std::mem::replace(&mut self.state, TxnState::Idle);
        let TxnState::Open {
            target_open,
            synced,
            counts,
            commit_ts,
            ..
        } = state
        else {
            return Ok(false);
        };
        if !target_open {
            return Ok(false);
        }
        if !synced.is_empty() && self.t.mark_synced.is_some() {
            self.stamp_in_target(&synced).await?;
        }
        if let Some(end_lsn) = end_lsn {
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
                    format!("calendar_sync_progress for slot {} is already past {end_lsn}: refusing to move it backwards", self.slot),
                    "another consumer writes progress under the same slot name into this target (two source databases sharing a target and a slot name?): give each its own CALENDAR_SYNC_SLOT",
                ));
            }
        }
        self.target
            .batch_execute("commit")
            .await
            .map_err(db("committing the target transaction"))?;
        for (action, status) in counts {
            self.metrics.action(action, status);
        }
        if let Some(end_lsn) = end_lsn {
            self.metrics.transaction_applied(end_lsn, commit_ts);
        }
        if !synced.is_empty() && self.t.mark_synced.is_none() {
            self.stamp_source(&synced).await;
        }
        Ok(true)
    }

    /// Abandons the batch (after an error): nothing of it stays in the target.
    pub async fn rollback(&mut self) {
        let state = std::mem::replace(&mut self.state, TxnState::Idle);
        if let TxnState::Open {
            target_open: true, ..
        } = state
        {
            if let Err(e) = self.target.batch_execute("rollback").await {
                tracing::debug!(error = %e, "rollback failed; the connection is gone and so is the transaction");
            }
        }
    }

    /// Separate target: `calendar_synced_at` in the source, after the target
    /// commit, in our own marked transaction. Best effort: the calendar is
    /// already right; a failure here only leaves the stamp old.
    /// Same database: stamps `calendar_synced_at` at the end of the target
    /// transaction (whose first statement was the echo marker), under its own
    /// savepoint. Best effort: a failure only leaves stamps old and never
    /// rolls back the events; locked rows are skipped, never waited for.
    async fn stamp_in_target(&self, ids: &[Uuid]) -> Result<(), SyncError> {
        let Some(stmt) = &self.t.mark_synced else {
            return Ok(());
        };
        self.target
            .batch_execute("savepoint stamp")
            .await
            .map_err(db("setting a savepoint"))?;
        match self.target.execute(stmt, &[&ids]).await {
            Ok(_) => self
                .target
                .batch_execute("release savepoint stamp")
                .await
                .map_err(db("releasing a savepoint")),
            Err(e) if classify_pg(&e) == ErrorClass::Transient => {
                Err(SyncError::db("stamping calendar_synced_at", e))
            }
            Err(e) => {
                tracing::warn!(error = %describe_pg(&e), rows = ids.len(), "could not write interaction.calendar_synced_at; the events are synced");
                self.target
                    .batch_execute("rollback to savepoint stamp")
                    .await
                    .map_err(db("rolling back to a savepoint"))
            }
        }
    }

    async fn stamp_source(&self, ids: &[Uuid]) {
        let result = async {
            self.source.batch_execute("begin").await?;
            self.source
                .query_one(&self.s.emit_echo_marker, &[&ECHO_PREFIX, &self.slot])
                .await?;
            self.source
                .execute(&self.s.mark_synced_many, &[&ids])
                .await?;
            self.source.batch_execute("commit").await
        }
        .await;
        if let Err(e) = result {
            let _ = self.source.batch_execute("rollback").await;
            tracing::warn!(error = %describe_pg(&e), rows = ids.len(), "could not write interaction.calendar_synced_at in the source; the events are synced");
        }
    }

    async fn savepoint(&self) -> Result<(), SyncError> {
        self.target
            .batch_execute("savepoint change")
            .await
            .map_err(db("setting a savepoint"))
    }

    async fn try_upsert(
        &mut self,
        id: Uuid,
        row: &Result<InteractionRow, RowError>,
        participants_given: Option<Vec<String>>,
        lsn: Lsn,
        ts: DateTime<Utc>,
    ) -> Result<Option<Action>, ChangeError> {
        let existing = self.existing_event(id).await?;
        let row = match row {
            Ok(r) => r,
            Err(e) => return Err(ChangeError::Row(e.to_string())),
        };
        let mut row = Cow::Borrowed(row);
        if row.description == Toast::Unchanged && existing.is_none() {
            // An event may be created from an UPDATE that did not carry the
            // (TOASTed) description: read the real one from the source.
            let d = self.source.query_opt(&self.s.description, &[&id]).await?;
            row.to_mut().description = Toast::Value(d.and_then(|r| r.get::<_, Option<String>>(0)));
        }
        let participants = match participants_given {
            Some(p) => p,
            None => {
                let (c, t) = self.lookup_names(row.customer_id, row.contact_id).await?;
                participants(c, t)
            }
        };
        let change = Change::Upsert {
            row: &row,
            participants,
        };
        self.decide_and_write(id, &change, existing, ts, lsn).await
    }

    /// The event of interaction `id`, locked for this transaction.
    async fn existing_event(&self, id: Uuid) -> Result<Option<(Uuid, EventFields)>, ChangeError> {
        let row = self.target.query_opt(&self.t.select_event, &[&id]).await?;
        Ok(row.as_ref().map(event_from_row).transpose()?)
    }

    /// `mapping::decide` at commit time `ts`, then the write it asks for.
    async fn decide_and_write(
        &mut self,
        id: Uuid,
        change: &Change<'_>,
        existing: Option<(Uuid, EventFields)>,
        ts: DateTime<Utc>,
        lsn: Lsn,
    ) -> Result<Option<Action>, ChangeError> {
        let decision = decide(
            change,
            existing.as_ref().map(|e| &e.1),
            ts,
            self.window,
            self.tz,
        )?;
        self.write(id, decision, existing, lsn).await
    }

    /// Releases the savepoint, or on a row failure rolls back to it and records
    /// the failure.
    async fn finish_change(
        &mut self,
        id: Uuid,
        result: Result<Option<Action>, ChangeError>,
        fallback_by: Option<Uuid>,
        intended: Option<Action>,
        lsn: Lsn,
    ) -> Result<(), SyncError> {
        match result {
            Ok(action) => {
                if let (Some(action), TxnState::Open { counts, .. }) = (action, &mut self.state) {
                    counts.push((action, Status::Success));
                }
                // Any successful sync of the interaction, also one that had
                // nothing to write, resolves its open failure (contract §5).
                self.target
                    .execute(&self.t.resolve_failures, &[&id])
                    .await
                    .map_err(db("resolving calendar_sync_failures"))?;
                self.target
                    .batch_execute("release savepoint change")
                    .await
                    .map_err(db("releasing a savepoint"))
            }
            Err(ChangeError::Batch(e)) => Err(e),
            Err(ChangeError::Row(message)) => {
                self.target
                    .batch_execute("rollback to savepoint change")
                    .await
                    .map_err(db("rolling back to a savepoint"))?;
                let existing = self
                    .target
                    .query_opt(&self.t.select_event, &[&id])
                    .await
                    .map_err(db("re-reading an event"))?;
                let existing = existing
                    .as_ref()
                    .map(event_from_row)
                    .transpose()
                    .ok()
                    .flatten();
                // A failed upsert is an update of an existing event, else a
                // create; a failed delete stays a delete.
                let action = intended.unwrap_or(if existing.is_some() {
                    Action::Update
                } else {
                    Action::Create
                });
                let by = fallback_by
                    .or(existing
                        .as_ref()
                        .map(|(_, f)| f.updated_by.unwrap_or(f.created_by)))
                    .unwrap_or(Uuid::nil());
                tracing::warn!(interaction = %id, lsn = %lsn, error = %message, "change failed; recorded in calendar_sync_failures, stream goes on");
                let retry = matches!(self.state, TxnState::Open { retry: true, .. });
                log::record_failure(&self.target, &self.t, id, action, &message, retry)
                    .await
                    .map_err(db("writing calendar_sync_failures"))?;
                self.log(
                    id,
                    existing.map(|(e, _)| e),
                    action,
                    Status::Failed,
                    Some(&message),
                    by,
                    lsn,
                )
                .await
                .map_err(db("writing calendar_sync_log"))?;
                if let TxnState::Open { counts, .. } = &mut self.state {
                    counts.push((action, Status::Failed));
                }
                self.target
                    .batch_execute("release savepoint change")
                    .await
                    .map_err(db("releasing a savepoint"))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn log(
        &self,
        interaction: Uuid,
        event: Option<Uuid>,
        action: Action,
        status: Status,
        error: Option<&str>,
        by: Uuid,
        lsn: Lsn,
    ) -> Result<(), tokio_postgres::Error> {
        log::insert_log(
            &self.target,
            &self.t,
            interaction,
            event,
            action,
            status,
            error,
            by,
            lsn,
        )
        .await
    }
}
