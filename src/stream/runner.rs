//! The streaming loop: Begin .. changes .. Commit, applied in commit-LSN order,
//! with reconnects after transient failures.
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

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio::sync::watch;

use crate::apply::{Applier, ECHO_PREFIX};
use crate::changes::{RelationCache, SourceChange};
use crate::config::Config;
use crate::db;
use crate::error::SyncError;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::pgoutput::{self, Message};
use crate::stream::client;

/// Set to `true` to stop: the loop rolls back an open batch, sends a final
/// status update and returns `Ok`.
pub type Shutdown = watch::Receiver<bool>;

/// The source transaction being received.
struct OpenTxn {
    final_lsn: Lsn,
    /// Already applied before (replay): ignore its changes.
    replay: bool,
    /// Carries our echo marker: ignore its changes.
    own: bool,
}

/// Runs until `shutdown`, reconnecting after transient failures with
/// exponential backoff (capped, with jitter). Returns a fatal error as is.
pub async fn run(cfg: &Config, mut shutdown: Shutdown, metrics: Metrics) -> Result<(), SyncError> {
    let mut attempt: u32 = 0;
    loop {
        let mut progressed = false;
        match session(cfg, &mut shutdown, &metrics, &mut progressed).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                if progressed {
                    attempt = 0;
                }
                let delay = backoff(attempt);
                attempt = attempt.saturating_add(1);
                metrics.reconnect();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, attempt, "transient failure; rolled back, will reconnect and replay from the stored progress");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                if *shutdown.borrow() {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// 0.5 s doubling to 30 s, with up to 25% jitter so restarted tasks spread out.
fn backoff(attempt: u32) -> Duration {
    let base = 500u64.saturating_mul(1u64 << attempt.min(6)).min(30_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(base + (u64::from(nanos) % (base / 4 + 1)))
}

fn pg_time(micros_since_2000: i64) -> DateTime<Utc> {
    const PG_EPOCH: i64 = 946_684_800;
    Utc.timestamp_opt(PG_EPOCH, 0)
        .single()
        .and_then(|e| e.checked_add_signed(chrono::Duration::microseconds(micros_since_2000)))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

async fn session(
    cfg: &Config,
    shutdown: &mut Shutdown,
    metrics: &Metrics,
    progressed: &mut bool,
) -> Result<(), SyncError> {
    let target = db::connect(cfg.target_url(), "target").await?;
    let source = db::connect(&cfg.source_url, "source").await?;
    let lookups = db::connect(&cfg.source_url, "source").await?;
    let stored = client::stored_progress(&target, &cfg.slot).await?;
    let slot = client::slot_info(&source, &cfg.slot).await?;
    let mut applier = Applier::new(cfg, target, lookups, metrics.clone()).await?;

    let (mut repl, progress) = match (stored, slot) {
        (Some(progress), Some(slot)) => {
            if slot.wal_status.as_deref() == Some("lost") {
                return Err(SyncError::fatal(
                    format!("replication slot {} was invalidated (wal_status = lost): the WAL it needed is gone", cfg.slot),
                    format!("raise max_slot_wal_keep_size; then `delete from calendar_sync_progress where slot_name = '{}'`, drop the slot, and start again to take a new snapshot", cfg.slot),
                ));
            }
            if slot.plugin.as_deref() != Some("pgoutput") {
                return Err(SyncError::fatal(
                    format!(
                        "replication slot {} uses plugin {:?}, not pgoutput",
                        cfg.slot, slot.plugin
                    ),
                    "choose another CALENDAR_SYNC_SLOT or drop that slot",
                ));
            }
            tracing::info!(slot = %cfg.slot, %progress, confirmed_flush = ?slot.confirmed_flush.map(|l| l.to_string()), "resuming");
            let repl = ReplicationClient::connect(client::replication_config(cfg)?)
                .await
                .map_err(|e| SyncError::stream("opening the replication session", e))?;
            (repl, progress)
        }
        (Some(_), None) => {
            return Err(SyncError::fatal(
                format!("replication slot {} does not exist, but calendar_sync_progress says it was streaming: changes made while it was gone cannot be replayed", cfg.slot),
                format!("to start over with a new snapshot: `delete from calendar_sync_progress where slot_name = '{}'` in the target, run again, then run `calendar-sync reconcile` to remove events of interactions deleted meanwhile", cfg.slot),
            ));
        }
        (None, slot) => {
            if let Some(s) = slot {
                if s.active_pid.is_some() {
                    return Err(SyncError::transient(
                        "taking the initial snapshot",
                        format!(
                            "slot {} is held by pid {:?} (another calendar-sync starting?)",
                            cfg.slot, s.active_pid
                        ),
                    ));
                }
                client::drop_unfinished_slot(&source, &cfg.slot).await?;
            }
            let (mut repl, consistent_point) =
                client::create_slot_and_snapshot(cfg, &mut applier).await?;
            repl.start()
                .await
                .map_err(|e| SyncError::stream("starting replication", e))?;
            (repl, consistent_point)
        }
    };
    drop(source);
    repl.wait_started()
        .await
        .map_err(|e| SyncError::stream("starting replication", e))?;
    tracing::info!(slot = %cfg.slot, publication = %cfg.publication, "streaming");
    let mut acked = Lsn::ZERO;
    let result = stream(
        cfg,
        &mut repl,
        &mut applier,
        progress,
        shutdown,
        progressed,
        &mut acked,
    )
    .await;
    // On SIGTERM mid-transaction the open batch is rolled back: it is replayed
    // on the next start, from the stored progress.
    applier.rollback().await;
    if result.is_err() {
        repl.abort();
        return result;
    }
    finish(&mut repl, cfg, acked).await;
    result
}

/// Waits (bounded) until the last acknowledged LSN reached the server in a
/// standby status update, then ends the session with CopyDone.
async fn finish(repl: &mut ReplicationClient, cfg: &Config, acked: Lsn) {
    let metrics = repl.metrics();
    let wanted = acked.0;
    let deadline = tokio::time::Instant::now() + cfg.status_interval * 3 + Duration::from_secs(1);
    while metrics.last_applied_lsn().as_u64() < wanted && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(flushed = %Lsn(metrics.last_applied_lsn().as_u64()), "final status update sent; stopping");
    let _ = tokio::time::timeout(Duration::from_secs(3), repl.shutdown()).await;
}

async fn stream(
    cfg: &Config,
    repl: &mut ReplicationClient,
    applier: &mut Applier,
    mut progress: Lsn,
    shutdown: &mut Shutdown,
    progressed: &mut bool,
    acked: &mut Lsn,
) -> Result<(), SyncError> {
    let mut relations = RelationCache::new(cfg.participants.clone());
    let mut txn: Option<OpenTxn> = None;
    let fatal_stream = |e: crate::changes::StreamError| {
        SyncError::fatal(
            format!("replication stream: {e}"),
            "nothing was applied from this transaction; if a table changed shape, restore the column or adapt the mapping, then restart",
        )
    };
    loop {
        let event = tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            ev = repl.recv() => ev.map_err(|e| SyncError::stream("receiving from the replication stream", e))?,
        };
        let Some(event) = event else {
            return Err(SyncError::transient(
                "replication stream",
                "the server ended the stream",
            ));
        };
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => {
                if txn.is_some() {
                    return Err(fatal_stream_msg("Begin inside an open transaction"));
                }
                let final_lsn = Lsn::from(final_lsn);
                let replay = final_lsn.already_applied(progress);
                if !replay {
                    applier.begin(final_lsn, pg_time(commit_time_micros));
                }
                txn = Some(OpenTxn {
                    final_lsn,
                    replay,
                    own: false,
                });
            }
            ReplicationEvent::Message {
                transactional: true,
                prefix,
                content,
                ..
            } => {
                if let Some(t) = txn.as_mut() {
                    if prefix == ECHO_PREFIX && content.as_ref() == cfg.slot.as_bytes() {
                        t.own = true;
                    }
                }
            }
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::XLogData { data, .. } => {
                let msg = pgoutput::parse(&data).map_err(|e| fatal_stream(e.into()))?;
                match &msg {
                    Message::Relation(r) => relations.on_relation(r).map_err(fatal_stream)?,
                    Message::Insert(_)
                    | Message::Update(_)
                    | Message::Delete(_)
                    | Message::Truncate(_) => {
                        let Some(t) = txn.as_ref() else {
                            return Err(fatal_stream_msg("a change arrived outside Begin/Commit"));
                        };
                        if t.replay || t.own {
                            continue;
                        }
                        for change in relations.changes(&msg).map_err(fatal_stream)? {
                            apply(applier, change).await?;
                        }
                    }
                    _ => {}
                }
            }
            ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                let Some(t) = txn.take() else {
                    return Err(fatal_stream_msg("Commit without Begin"));
                };
                let (lsn, end_lsn) = (Lsn::from(lsn), Lsn::from(end_lsn));
                if lsn != t.final_lsn {
                    return Err(fatal_stream_msg(&format!(
                        "Commit LSN {lsn} does not match Begin final LSN {}",
                        t.final_lsn
                    )));
                }
                if !t.replay {
                    if t.own {
                        applier.rollback().await;
                    } else if applier.commit(end_lsn).await? {
                        *progressed = true;
                        tracing::debug!(lsn = %end_lsn, "applied source transaction");
                    }
                }
                progress = progress.max(end_lsn);
                ack(repl, acked, end_lsn);
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if txn.is_none() && !applier.is_open() {
                    ack(repl, acked, Lsn::from(wal_end));
                }
            }
            ReplicationEvent::StoppedAt { .. } => return Ok(()),
        }
    }
}

/// Reports `lsn` as flushed (monotonic; see the module docs for when).
fn ack(repl: &ReplicationClient, acked: &mut Lsn, lsn: Lsn) {
    *acked = (*acked).max(lsn);
    repl.update_applied_lsn(lsn.into());
}

fn fatal_stream_msg(what: &str) -> SyncError {
    SyncError::fatal(
        format!("replication stream out of order: {what}"),
        "the stream is restarted from the stored progress on the next start; report this with the log",
    )
}

async fn apply(applier: &mut Applier, change: SourceChange) -> Result<(), SyncError> {
    match change {
        SourceChange::InteractionUpsert { id, row } => applier.upsert(id, row, None).await,
        SourceChange::InteractionDelete { id } => applier.delete(id).await,
        SourceChange::InteractionTruncate => applier.truncate().await,
        SourceChange::PartyChanged { party, id, name } => {
            applier.party_changed(party, id, name).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(
            backoff(0) >= Duration::from_millis(500) && backoff(0) < Duration::from_millis(700)
        );
        assert!(backoff(3) >= Duration::from_millis(4000));
        assert!(backoff(40) <= Duration::from_millis(37_500));
    }

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
