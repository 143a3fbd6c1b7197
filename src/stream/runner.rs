//! The streaming loop: Begin .. changes .. Commit, applied in commit-LSN order
//! (the session around it, and its reconnects, are in [`super::session`]).
//!
//! # What is reported as flushed
//!
//! - After a source transaction's target commit: its `end_lsn`.
//! - A transaction already applied (`final_lsn < progress`, a replay after a
//!   lost ack), one of our own (echo), or one with nothing for us: its
//!   `end_lsn` at once; nothing of it needs to be durable.
//! - A keepalive's `wal_end` while no transaction is open: every transaction
//!   committed below it has been sent and applied already, so confirming it
//!   only lets the server recycle WAL that has nothing for us (an idle or
//!   filtered slot otherwise pins WAL: Materialize #14694, readyset #263). The
//!   same reasoning is in Materialize's `replication.rs` and pg_walstream's
//!   `stream.rs`.
//!
//! None of these passes a delivered transaction that other sessions cannot
//! see yet (`visibility::Pending::ack_bound`): the slot's confirmed position
//! names only transactions applied *and* visible, which `reconcile` relies
//! on (issue 13). With a failover slot and the calendar in the source
//! database, none passes a source transaction whose calendar commit the
//! standbys of `synchronized_standby_slots` have not flushed
//! (`standby::StandbyGate::bound`, issue 14): a promoted standby then
//! resumes before anything it lacks.
//!
//! Each of these is reported only after a publication check that began after
//! the LSN was received has passed (`release_acks`, at every tick between
//! transactions and at a clean stop). A table leaving the publication
//! (`ALTER PUBLICATION .. DROP TABLE`, `DROP COLUMN .. CASCADE`) or another
//! table taking a tracked name leaves no trace in the stream; checked this
//! way, it stops the session before anything written after it is
//! acknowledged. Holding an acknowledgement back for a tick costs nothing: the
//! status update is sent every `status_interval` anyway.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio::sync::watch;

use crate::apply::{BatchKind, Committed, Writer};
use crate::changes::{RelationCache, StreamError};
use crate::config::Config;
use crate::echo::{self, EchoKey};
use crate::error::{FatalKind, SyncError};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::pgoutput::{self, Message};
use crate::stream::acks::Acks;
use crate::stream::client;
use crate::stream::standby::{self, StandbyGate};
use crate::txn::{Framer, Marker};

/// Set to `true` to stop: the loop rolls back an open batch, sends a final
/// status update and returns `Ok`.
pub type Shutdown = watch::Receiver<bool>;

fn pg_time(micros_since_2000: i64) -> DateTime<Utc> {
    const PG_EPOCH: i64 = 946_684_800;
    Utc.timestamp_opt(PG_EPOCH, 0)
        .single()
        .and_then(|e| e.checked_add_signed(chrono::Duration::microseconds(micros_since_2000)))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// After a batch commit, acknowledgements are released (one publication
/// check) at most this often; the tick releases the rest.
const RELEASE_EVERY: Duration = Duration::from_millis(500);

/// A batch holding complete source transactions commits once the stream has
/// sent no data for this long (keepalives do not count), or at its age
/// bound, whichever comes first (or at its size bound). Not at the first
/// empty read: while catching up, the replication worker refills its buffer
/// within microseconds, and under a busy CRM the next commit is a fraction
/// of a millisecond away, so committing at every gap paid a flush (and a
/// round of stamps) per source transaction (issue 16). Keepalives do not
/// count: with synchronous replication configured, PostgreSQL 15+ sends one
/// for every transaction that touches no published table, which under a
/// busy CRM would hold a lone transaction until the next tick.
const COMMIT_WHEN_QUIET: Duration = Duration::from_millis(2);

/// How often, between transactions, due failures are retried and the lag
/// metrics refreshed.
const TICK: Duration = Duration::from_secs(2);
/// Every this many ticks the publication is checked even when there is
/// nothing to acknowledge (otherwise it is checked at every acknowledgement).
const PUBLICATION_CHECK_TICKS: u32 = 15;

/// One streaming session's state.
pub(super) struct Streamer<'a> {
    pub(super) cfg: &'a Config,
    pub(super) repl: ReplicationClient,
    pub(super) writer: Writer,
    /// For periodic checks of the publication and of visibility.
    pub(super) source: tokio_postgres::Client,
    pub(super) echo: EchoKey,
    pub(super) metrics: Metrics,
    /// Progress, what may be reported, what was (`super::acks`).
    pub(super) acks: Acks,
    /// When `release_acks` last ran its publication check.
    pub(super) released_at: std::time::Instant,
    pub(super) framer: Framer,
    pub(super) relations: RelationCache,
    pub(super) last_commit_ts: Option<DateTime<Utc>>,
    /// A failover slot with the calendar in the source database: the target
    /// commits the failover standbys may still lack (`super::standby`).
    pub(super) standby: Option<StandbyGate>,
}

/// A schema the mapping cannot take, or an old key without the id (a replica
/// identity that lacked it, issue 13). Logical decoding reads every change
/// with the table definition it was written under, and an old key is written
/// with the identity of that moment, so restoring the column or the identity
/// does not make the already-written transactions readable: the way out is a
/// new slot and snapshot.
fn fatal_schema(e: &StreamError, slot: &str) -> SyncError {
    match e {
        StreamError::Replaced { name, .. } => SyncError::fatal(
            FatalKind::SchemaChanged,
            format!("replication stream: {e}"),
            format!(
                "nothing of this transaction was applied; calendar-sync follows a table by identity and will not guess which of the two holds the data: make sure the table now named {name} is in the publication, then drop the slot (select pg_drop_replication_slot('{slot}')) and `delete from calendar_sync_progress where slot_name = '{slot}'` in the target, and start again to take a new snapshot"
            ),
        ),
        StreamError::Schema(_) => SyncError::fatal(
            FatalKind::SchemaChanged,
            format!("replication stream: {e}"),
            format!(
                "nothing of this transaction was applied and progress did not move, but it will arrive in this shape on every replay: restore the column, then drop the slot (select pg_drop_replication_slot('{slot}')) and `delete from calendar_sync_progress where slot_name = '{slot}'` in the target, and start again to take a new snapshot"
            ),
        ),
        StreamError::NoKey { table, column } => SyncError::fatal(
            FatalKind::SchemaChanged,
            format!("replication stream: {e}"),
            format!(
                "nothing of this transaction was applied, but the change stays in the WAL without {column} and arrives so on every replay: make the replica identity of {table} hold {column} again (ALTER TABLE {table} REPLICA IDENTITY DEFAULT, with the primary key on {column}), then drop the slot (select pg_drop_replication_slot('{slot}')) and run `calendar-sync run --resync` once: it takes a new snapshot, then removes the events of interactions deleted meanwhile"
            ),
        ),
        other => fatal_stream(other),
    }
}

fn fatal_stream(e: &dyn std::fmt::Display) -> SyncError {
    SyncError::fatal(
        FatalKind::MalformedStream,
        format!("replication stream: {e}"),
        "nothing of this transaction was applied and progress did not move; if a table changed shape, restore the column (or adapt the mapping) and start again: the transaction is replayed",
    )
}

/// What the streaming loop does next.
enum Next {
    Tick,
    Event(Option<ReplicationEvent>),
    Commit,
}

/// Runs `work` unless a stop comes first (`None`: abandoned).
async fn unless_stopped<T>(
    shutdown: &mut Shutdown,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = shutdown.changed() => None,
        r = work => Some(r),
    }
}

impl Streamer<'_> {
    pub(super) async fn run(
        &mut self,
        shutdown: &mut Shutdown,
        progressed: &mut bool,
    ) -> Result<(), SyncError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u32 = 0;
        // When the stream last sent data (not a keepalive).
        let mut last_data = std::time::Instant::now();
        loop {
            let idle = self.framer.is_idle();
            // Complete source transactions wait in the batch: commit them
            // once the stream has been quiet for COMMIT_WHEN_QUIET, or the
            // batch reached its age bound (low latency when idle, few
            // flushes when busy). Due before the next message is read.
            let pending = idle && self.writer.has_uncommitted();
            let quiet = last_data + COMMIT_WHEN_QUIET;
            let due = self
                .writer
                .age_bound()
                .map_or(quiet, |aged| aged.min(quiet));
            let next = tokio::select! {
                biased;
                // An uncommitted batch is rolled back and replayed on the
                // next start: committing it could wait on a CRM lock.
                _ = shutdown.changed() => return Ok(()),
                _ = tick.tick(), if idle => Next::Tick,
                _ = tokio::time::sleep_until(due.into()), if pending => Next::Commit,
                ev = self.repl.recv() => Next::Event(ev.map_err(|e| SyncError::stream("receiving from the replication stream", e))?),
            };
            // Each piece of work is abandoned when a stop comes (e.g. a
            // statement waiting for a CRM lock): its connections are dropped
            // and the server rolls it back; only committed LSNs were
            // acknowledged.
            let work = match next {
                Next::Tick => {
                    ticks = ticks.wrapping_add(1);
                    let check = ticks % PUBLICATION_CHECK_TICKS == 0;
                    unless_stopped(shutdown, async {
                        if pending {
                            self.commit_batch().await?;
                        }
                        self.tick(check).await?;
                        Ok(false)
                    })
                    .await
                }
                Next::Commit => unless_stopped(shutdown, self.commit_batch()).await,
                Next::Event(None) => {
                    return Err(SyncError::transient(
                        "replication stream",
                        "the server ended the stream",
                    ))
                }
                Next::Event(Some(event)) => {
                    self.metrics.server_message();
                    if !matches!(event, ReplicationEvent::KeepAlive { .. }) {
                        last_data = std::time::Instant::now();
                    }
                    unless_stopped(shutdown, self.handle(event)).await
                }
            };
            let Some(committed) = work else {
                return Ok(());
            };
            let committed = committed?;
            if committed {
                *progressed = true;
            }
        }
    }

    /// Commits the open batch and reports its end as flushed. Returns whether
    /// a target transaction committed.
    async fn commit_batch(&mut self) -> Result<bool, SyncError> {
        let committed = self.writer.commit().await?;
        if let Committed::Through(lsn) = committed {
            tracing::debug!(%lsn, "applied a batch of source transactions");
            if self.standby.is_some() {
                let wal = standby::wal_now(&self.source).await?;
                if let Some(gate) = self.standby.as_mut() {
                    gate.committed(self.acks.ackable(), wal);
                }
            }
            self.ack(lsn);
            // Under a steady flow the tick (between transactions) may come
            // late: release at most every RELEASE_EVERY from here too.
            if self.released_at.elapsed() >= RELEASE_EVERY {
                self.release_acks().await?;
            }
        }
        Ok(committed != Committed::Nothing)
    }

    /// Between transactions: retry due failures, refresh gauges, and report
    /// what may be reported after a publication check (also run now and then
    /// when there is nothing to report).
    async fn tick(&mut self, check_publication: bool) -> Result<(), SyncError> {
        self.writer
            .retry_due(&self.cfg.participants, self.acks.progress())
            .await?;
        self.metrics
            .set_pending_failures(self.writer.pending_failures().await?);
        let wal_end = Lsn::from(self.repl.metrics().last_wal_end());
        let behind = wal_end.0.saturating_sub(self.acks.lag_from().0);
        let seconds = match (behind, self.last_commit_ts) {
            (0, _) | (_, None) => 0.0,
            (_, Some(ts)) => (Utc::now() - ts).num_milliseconds().max(0) as f64 / 1000.0,
        };
        self.metrics.set_lag(behind, seconds);
        if self.acks.wants_release() {
            self.release_acks().await?;
        } else if check_publication {
            client::check_publication(&self.source, self.cfg, self.relations.tracked()).await?;
        }
        Ok(())
    }

    /// Handles one event; returns whether a target transaction committed.
    async fn handle(&mut self, event: ReplicationEvent) -> Result<bool, SyncError> {
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                let t = self
                    .framer
                    .begin(
                        Lsn::from(final_lsn),
                        xid,
                        pg_time(commit_time_micros),
                        self.acks.progress(),
                    )
                    .map_err(|e| fatal_stream(&e))?;
                let replay = t.replay;
                // Every delivered transaction, ours and replays included:
                // acknowledgements and reads of the source wait until it is
                // visible (crate::visibility).
                self.writer
                    .pending()
                    .delivered(xid, Lsn::from(final_lsn), self.acks.progress());
                if !replay {
                    self.writer.begin(BatchKind::Stream);
                }
            }
            ReplicationEvent::Message {
                transactional: true,
                prefix,
                content,
                ..
            } if prefix == echo::PREFIX => self.echo_marker(&content),
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::XLogData { data, .. } => {
                let msg = pgoutput::parse(&data).map_err(|e| fatal_stream(&e))?;
                match &msg {
                    Message::Relation(r) => self
                        .relations
                        .on_relation(r)
                        .map_err(|e| fatal_schema(&e, &self.cfg.slot))?,
                    Message::Insert(_)
                    | Message::Update(_)
                    | Message::Delete(_)
                    | Message::Truncate(_) => self.data_change(&msg).await?,
                    _ => {}
                }
            }
            ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                let t = self
                    .framer
                    .commit(Lsn::from(lsn))
                    .map_err(|e| fatal_stream(&e))?;
                let end_lsn = Lsn::from(end_lsn);
                self.acks.transaction_ended(end_lsn);
                if t.applies() {
                    self.last_commit_ts = Some(t.commit_ts);
                }
                if self.writer.is_open() {
                    // Also a transaction with nothing for us: its end is
                    // confirmed with the batch, never before the ones ahead.
                    self.writer.end_source_txn(end_lsn, t.commit_ts);
                    if self.writer.is_full() {
                        return self.commit_batch().await;
                    }
                } else {
                    // Nothing of it needs to be durable.
                    self.ack(end_lsn);
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if self.framer.is_idle() && !self.writer.is_open() {
                    self.ack(Lsn::from(wal_end));
                }
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(false)
    }

    /// An Insert/Update/Delete/Truncate: applied unless its transaction is a
    /// replay or our own.
    async fn data_change(&mut self, msg: &Message) -> Result<(), SyncError> {
        let t = self.framer.change().map_err(|e| fatal_stream(&e))?;
        if !t.applies() {
            return Ok(());
        }
        let (lsn, ts) = (t.final_lsn, t.commit_ts);
        for change in self
            .relations
            .changes(msg)
            .map_err(|e| fatal_schema(&e, &self.cfg.slot))?
        {
            self.writer.push(lsn, ts, change).await?;
        }
        Ok(())
    }

    /// The echo marker: the transaction is ignored only if its content proves
    /// it calendar-sync's (see `txn` and `echo`).
    fn echo_marker(&mut self, content: &[u8]) {
        let commit_lsn = self.framer.current().map_or(Lsn::ZERO, |t| t.final_lsn);
        match self.framer.marker() {
            Marker::Verify { xid } => {
                let own = self.echo.proves(xid, content);
                self.framer.verified(own);
                if !own {
                    self.metrics.echo_rejected();
                    tracing::warn!(xid, %commit_lsn, "a transaction carried calendar-sync's echo marker but is not calendar-sync's (its content does not prove it: wrong key or xid): applied like any other; some session calls pg_logical_emit_message with the prefix calendar_sync.echo");
                }
            }
            Marker::Late { xid } => {
                self.metrics.echo_rejected();
                tracing::warn!(xid, %commit_lsn, "a transaction carried calendar-sync's echo marker but is not calendar-sync's (the marker followed its changes; ours is always first): applied like any other; some session calls pg_logical_emit_message with the prefix calendar_sync.echo");
            }
            Marker::Ignore => {}
        }
    }

    /// Marks `lsn` as safe to report as flushed; `release_acks` reports it
    /// (monotonic; see the module docs for when).
    fn ack(&mut self, lsn: Lsn) {
        self.acks.mark(lsn);
    }

    /// Reports what `ack` marked, once the publication check, begun after all
    /// of it was received, has passed.
    pub(super) async fn release_acks(&mut self) -> Result<(), SyncError> {
        if !self.acks.wants_release() {
            return Ok(());
        }
        self.released_at = std::time::Instant::now();
        // The gates' bounds (see `super::acks`).
        let mut bounds = Vec::with_capacity(2);
        let pending = self.writer.pending();
        pending.refresh(&self.source).await?;
        bounds.push(pending.ack_bound(self.acks.ackable()));
        if let Some((xid, lsn, held)) = pending.overdue() {
            tracing::warn!(xid, commit_lsn = %lsn, held_s = held.as_secs(), "a streamed transaction is applied but still not visible to other sessions (its commit waits for a synchronous standby? see pg_stat_activity wait_event SyncRep): the slot's confirmed position waits for it");
        }
        if let Some(gate) = self.standby.as_mut().filter(|g| g.is_waiting()) {
            let flushed = standby::standby_flushed(&self.source).await?;
            bounds.push(gate.bound(self.acks.ackable(), flushed));
            if let Some((wal, held)) = gate.overdue() {
                tracing::warn!(calendar_commit_wal = %wal, standby_flushed = ?flushed.map(|l| l.to_string()), held_s = held.as_secs(), "the calendar's commit has not reached the standbys of synchronized_standby_slots: the slot's confirmed position waits for it, so that a promoted standby resumes before what it lacks (is the standby down or lagging? see pg_stat_replication and pg_replication_slots on the primary)");
            }
        }
        let Some(upto) = self.acks.releasable(&bounds) else {
            return Ok(());
        };
        client::check_publication(&self.source, self.cfg, self.relations.tracked()).await?;
        self.acks.released(upto);
        self.repl.update_applied_lsn(upto.into());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_timestamps_count_from_2000() {
        assert_eq!(
            pg_time(0),
            Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
                .single()
                .expect("valid")
        );
    }
}
