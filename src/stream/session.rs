//! A streaming session's life, from start to stop, and the reconnect loop
//! around it ([`run`]): connect, preflight, ownership and the slot lock, a
//! pending start-over, the start plan (resume, or a new slot and snapshot),
//! then the streaming loop ([`super::runner`]), then the stop (roll back what
//! is open, wait for stamps, report the last position, end the stream).

use std::time::Duration;

use pgwire_replication::ReplicationClient;

use super::acks::Acks;
use super::runner::{Shutdown, Streamer};
use super::standby::StandbyGate;
use super::{client, ownership};
use crate::apply::Writer;
use crate::changes::RelationCache;
use crate::config::Config;
use crate::db;
use crate::echo::EchoKey;
use crate::error::SyncError;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::txn::Framer;

/// Runs until `shutdown`, reconnecting after transient failures with
/// exponential backoff (capped, with jitter). Returns a fatal error as is.
pub async fn run(cfg: &Config, mut shutdown: Shutdown, metrics: Metrics) -> Result<(), SyncError> {
    let mut attempt: u32 = 0;
    loop {
        let mut progressed = false;
        // The streaming loop and the initial snapshot answer a stop at once;
        // any other wait (connecting, a preflight statement) is abandoned
        // after STOP_GRACE, like a kill -9: nothing uncommitted was acked.
        let mut stop = shutdown.clone();
        let stop_overdue = async {
            let _ = stop.wait_for(|stop| *stop).await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        let result = tokio::select! {
            r = session(cfg, &mut shutdown, &metrics, &mut progressed) => r,
            _ = stop_overdue => {
                tracing::warn!(grace_secs = STOP_GRACE.as_secs(), "stop requested, but the session did not end in time: abandoned (uncommitted work is rolled back by the server and replayed on the next start)");
                return Ok(());
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                if progressed {
                    attempt = 0;
                }
                let delay = backoff(attempt);
                attempt = attempt.saturating_add(1);
                metrics.reconnect();
                metrics.set_backoff(Some(delay));
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, attempt, "transient failure; rolled back, will reconnect and replay from the stored progress");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                metrics.set_backoff(None);
                if *shutdown.borrow() {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// After a stop request, how long a session may take to end before it is
/// abandoned (see [`run`]).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// 0.5 s doubling to 30 s, with up to 25% jitter so restarted tasks spread out.
fn backoff(attempt: u32) -> Duration {
    let base = 500u64.saturating_mul(1u64 << attempt.min(6)).min(30_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(base + (u64::from(nanos) % (base / 4 + 1)))
}

/// One session: [`start`], the streaming loop ([`Streamer::run`]), [`stop`].
async fn session(
    cfg: &Config,
    shutdown: &mut Shutdown,
    metrics: &Metrics,
    progressed: &mut bool,
) -> Result<(), SyncError> {
    let Some(mut s) = start(cfg, shutdown, metrics).await? else {
        return Ok(());
    };
    let result = s.run(shutdown, progressed).await;
    stop(s, result).await
}

/// The source sessions a start uses besides the writer's.
struct Sessions {
    target: tokio_postgres::Client,
    source: tokio_postgres::Client,
    lookups: tokio_postgres::Client,
}

/// Starts a session: connects, checks the source, takes the slot (ownership,
/// lock, a start-over asked for), then resumes or takes a new slot and
/// snapshot. `None`: the stop came during the snapshot (nothing committed).
async fn start<'a>(
    cfg: &'a Config,
    shutdown: &mut Shutdown,
    metrics: &Metrics,
) -> Result<Option<Streamer<'a>>, SyncError> {
    let db = Sessions {
        target: db::connect_limited(cfg.target_url(), "target", cfg.limits()).await?,
        source: db::connect_limited(&cfg.source_url, "source", cfg.limits()).await?,
        lookups: db::connect_limited(&cfg.source_url, "source", cfg.limits()).await?,
    };
    let tracked = client::preflight(&db.source, cfg).await?;
    let (stored, slot, me) = take_slot(cfg, &db).await?;
    let resync_pending = super::resync::pending(&db.target, &cfg.slot).await?;
    let plan = client::StartPlan::decide(&cfg.slot, stored, slot.as_ref())?;
    let server_has = slot.as_ref().and_then(|s| s.confirmed_flush);
    let Sessions {
        target,
        source,
        lookups,
    } = db;
    let mut writer = Writer::new(cfg, target, lookups, metrics.clone()).await?;
    let echo = EchoKey::load(&source).await?;

    let (mut repl, progress) = match plan {
        client::StartPlan::Resume { progress } => {
            tracing::info!(slot = %cfg.slot, %progress, confirmed_flush = ?server_has.map(|l| l.to_string()), "resuming");
            let mut repl = ReplicationClient::connect_gated(client::replication_config(cfg)?)
                .await
                .map_err(|e| SyncError::stream("opening the replication session", e))?;
            if resync_pending {
                // Its snapshot committed, its removal pass did not finish.
                super::resync::complete(cfg, &mut writer).await?;
            }
            if cfg.slot_failover && slot.as_ref().and_then(|s| s.failover) == Some(false) {
                client::make_failover_slot(&mut repl, &cfg.slot).await?;
            }
            repl.start()
                .await
                .map_err(|e| SyncError::stream("starting replication", e))?;
            (repl, progress)
        }
        client::StartPlan::Snapshot { drop_unfinished } => {
            if drop_unfinished {
                client::drop_unfinished_slot(&source, &cfg.slot).await?;
            }
            let Some((mut repl, consistent_point)) =
                client::create_slot_and_snapshot(cfg, &mut writer, &source, shutdown).await?
            else {
                return Ok(None);
            };
            ownership::record_consistent_point(&source, &cfg.slot, &me, consistent_point).await?;
            if resync_pending {
                super::resync::complete(cfg, &mut writer).await?;
            }
            repl.start()
                .await
                .map_err(|e| SyncError::stream("starting replication", e))?;
            (repl, consistent_point)
        }
    };
    repl.wait_started()
        .await
        .map_err(|e| SyncError::stream("starting replication", e))?;
    client::report_failover(&source, cfg).await;
    tracing::info!(slot = %cfg.slot, publication = %cfg.publication, "streaming");
    metrics.set_streaming(true);
    Ok(Some(Streamer {
        cfg,
        repl,
        writer,
        source,
        echo,
        metrics: metrics.clone(),
        // The lag counts from what the server already has (resume) or from
        // the snapshot's consistent point, not from 0/0 until the first ack.
        acks: Acks::new(progress, server_has),
        released_at: std::time::Instant::now(),
        framer: Framer::new(),
        relations: RelationCache::new(cfg.participants.clone(), tracked),
        last_commit_ts: None,
        standby: (cfg.slot_failover && cfg.target_url.is_none()).then(StandbyGate::default),
    }))
}

/// Takes the slot for this deployment: another deployment's claim stops it,
/// the slot's advisory lock is taken, the slot is claimed if unclaimed, and a
/// start-over asked for (`--resync`) is prepared. Returns the stored progress
/// and the slot as they are under the lock.
async fn take_slot(
    cfg: &Config,
    db: &Sessions,
) -> Result<(Option<Lsn>, Option<client::SlotInfo>, ownership::Me), SyncError> {
    let me = ownership::me(&db.target).await?;
    // Another deployment's claim stops this one at once, also while that one
    // holds the slot's lock (it would otherwise wait for it as for a rolling
    // deploy's predecessor).
    if let Some(c) = ownership::claim_of(&db.source, &cfg.slot).await? {
        if c.target_id != me.target_id {
            let slot = client::slot_info(&db.source, &cfg.slot).await?;
            ownership::Ownership::decide(&cfg.slot, &me, Some(&c), None, slot.as_ref())?;
        }
    }
    client::lock_slot(&db.source, &cfg.slot).await?;
    // Read under the lock: until it was ours, another process may have been
    // committing its snapshot.
    let stored = client::stored_progress(&db.target, &cfg.slot).await?;
    let slot = client::slot_info(&db.source, &cfg.slot).await?;
    client::check_owned(&cfg.slot, slot.as_ref())?;
    // Only a slot this deployment's target claimed is used, dropped or
    // recreated (decision 53); the claim comes before the slot.
    let claim = ownership::claim_of(&db.source, &cfg.slot).await?;
    if ownership::Ownership::decide(&cfg.slot, &me, claim.as_ref(), stored, slot.as_ref())?
        == ownership::Ownership::Claim
    {
        ownership::claim(&db.source, &cfg.slot, &me).await?;
    }
    let (stored, slot) = if cfg.resync {
        super::resync::prepare(cfg, &db.source, &db.target, stored, slot).await?
    } else {
        (stored, slot)
    };
    Ok((stored, slot, me))
}

/// How long each step of a stop may take: SIGTERM is answered within seconds
/// whatever the source or target do (the whole stop is also bounded by
/// [`STOP_GRACE`]). Each step that runs out leaves nothing wrong behind: what
/// was not reported is replayed (and skipped) on the next start.
mod stop_within {
    use std::time::Duration;
    /// The stamps of the last committed batch (best effort).
    pub const STAMPS: Duration = Duration::from_secs(1);
    /// The last acknowledgements' publication check.
    pub const RELEASE: Duration = Duration::from_secs(3);
    /// The server to see the last acknowledged position in a status update.
    pub const REPORTED: Duration = Duration::from_millis(1500);
    /// The replication stream's CopyDone.
    pub const END_STREAM: Duration = Duration::from_secs(2);
    /// Moving the released slot to the acknowledged position.
    pub const ADVANCE: Duration = Duration::from_secs(2);
}

/// Stops a session after its loop ended with `result`: the open batch is
/// rolled back (replayed on the next start, from the stored progress), the
/// stamps of the last committed batch get a moment, the acknowledgements
/// still allowed are reported, and the stream ends. Every step is bounded
/// ([`stop_within`]).
async fn stop(mut s: Streamer<'_>, result: Result<(), SyncError>) -> Result<(), SyncError> {
    s.metrics.set_streaming(false);
    client::rollback_bounded(&mut s.writer).await;
    if result.is_err() {
        s.repl.abort();
        return result;
    }
    s.writer.settle_stamps(stop_within::STAMPS).await;
    match tokio::time::timeout(stop_within::RELEASE, s.release_acks()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "stopping without reporting the last applied transactions: the publication check failed; they are replayed (and skipped) on the next start"),
        Err(_) => tracing::warn!(within_ms = stop_within::RELEASE.as_millis() as u64, "stopping without reporting the last applied transactions: the publication check did not answer in time; they are replayed (and skipped) on the next start"),
    }
    finish(&mut s.repl, s.cfg, s.acks.acked()).await;
    let _ = tokio::time::timeout(
        stop_within::ADVANCE,
        client::advance_released_slot(&s.source, &s.cfg.slot, s.acks.acked()),
    )
    .await;
    result
}

/// Waits (bounded) until the last acknowledged LSN reached the server in a
/// standby status update, then ends the session with CopyDone.
/// The wait is short (SIGTERM is answered within seconds): a position the
/// worker did not report in time is moved onto the released slot afterwards
/// (`client::advance_released_slot`).
async fn finish(repl: &mut ReplicationClient, cfg: &Config, acked: Lsn) {
    let metrics = repl.metrics();
    let wanted = acked.0;
    let wait = (cfg.status_interval * 3).min(stop_within::REPORTED);
    let deadline = tokio::time::Instant::now() + wait;
    while metrics.last_applied_lsn().as_u64() < wanted && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(flushed = %Lsn(metrics.last_applied_lsn().as_u64()), "stopping the replication stream");
    let _ = tokio::time::timeout(stop_within::END_STREAM, repl.shutdown()).await;
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
}
