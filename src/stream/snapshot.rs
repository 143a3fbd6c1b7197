//! The initial snapshot, consistent with the slot.
//!
//! # A snapshot consistent with the slot
//!
//! `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT` on a gated replication session
//! returns the slot's consistent point and the name of a snapshot that sees
//! exactly the transactions committed before it. A `REPEATABLE READ` transaction
//! imports it (`SET TRANSACTION SNAPSHOT`) and copies the interactions; the
//! stream then delivers every transaction committed after the consistent point.
//! Nothing is missed and nothing doubles. The snapshot lives only until the
//! replication session runs another command, so it is imported *before*
//! `START_REPLICATION` (verified in shared/research/replication-crates.md).
//!
//! The snapshot's events and the progress row (lsn = consistent point) commit in
//! one target transaction. A slot with no progress row therefore means the
//! snapshot never finished (e.g. kill -9): the slot is dropped and created anew.

use super::client::{replication_config, slot_lock_held};
use crate::apply::{BatchKind, RowChange, Writer};
use crate::config::Config;
use crate::db::{self, quote_literal};
use crate::error::{FatalKind, SyncError};
use crate::lsn::Lsn;
use crate::mapping::InteractionRow;
use crate::participants::Party;
use crate::stream::Shutdown;
use chrono::{DateTime, Utc};
use pgwire_replication::ReplicationClient;
use std::time::Duration;
use tokio_postgres::Client;

/// Rows fetched per round trip while copying the snapshot.
const SNAPSHOT_BATCH: i32 = 5000;
/// At most one snapshot progress line per this interval.
const SNAPSHOT_LOG_EVERY: Duration = Duration::from_secs(5);

/// How often the slot lock is checked while the initial snapshot is taken.
/// Each check is also traffic on the lock's session, so that an
/// `idle_session_timeout` on the server does not end it.
const LOCK_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How long an abandoned batch's rollback may take. A statement still in
/// flight on the connection (one waiting for a lock) would hold the rollback
/// back until it ends; the connection is dropped instead, and the server
/// rolls the transaction back.
const ROLLBACK_WAIT: Duration = Duration::from_secs(1);

/// Rolls back an abandoned batch, waiting at most [`ROLLBACK_WAIT`].
pub async fn rollback_bounded(writer: &mut Writer) {
    if tokio::time::timeout(ROLLBACK_WAIT, writer.rollback())
        .await
        .is_err()
    {
        tracing::debug!("rollback queued behind an abandoned statement; the dropped connection rolls back instead");
    }
}

/// Creates the slot, copies the interactions of its exported snapshot into the
/// target with the progress row, and returns the session ready to `start()`;
/// `None` when `shutdown` came first (nothing committed: the next start drops
/// the slot and takes a new snapshot).
///
/// `lock` is the session holding the slot's advisory lock ([`super::client::lock_slot`]).
/// While the snapshot is taken it is checked every [`LOCK_CHECK_INTERVAL`]
/// and once more right before the commit: once it is lost, a second process
/// may drop this slot and create its own, and committing this snapshot's
/// consistent point would then skip the transactions between the two
/// consistent points. A lost lock abandons the snapshot as a transient error.
/// (Left open: a loss during the commit's own round trip.)
pub async fn create_slot_and_snapshot(
    cfg: &Config,
    writer: &mut Writer,
    lock: &Client,
    shutdown: &mut Shutdown,
) -> Result<Option<(ReplicationClient, Lsn)>, SyncError> {
    enum Outcome {
        Done(Result<(ReplicationClient, Lsn), SyncError>),
        Stopped,
        LockLost(SyncError),
    }
    let outcome = {
        let work = slot_and_snapshot(cfg, writer, lock);
        tokio::pin!(work);
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => Outcome::Stopped,
            e = watch_slot_lock(lock, &cfg.slot) => Outcome::LockLost(e),
            r = &mut work => Outcome::Done(r),
        }
    };
    match outcome {
        Outcome::Done(Ok(done)) => Ok(Some(done)),
        Outcome::Done(Err(e)) => Err(e),
        Outcome::Stopped => {
            rollback_bounded(writer).await;
            tracing::info!(slot = %cfg.slot, "stop requested: initial snapshot abandoned, not committed; the next start takes it again");
            Ok(None)
        }
        Outcome::LockLost(e) => {
            rollback_bounded(writer).await;
            Err(e)
        }
    }
}

/// Returns once the slot lock is no longer held by `lock` (or its session
/// is gone).
async fn watch_slot_lock(lock: &Client, slot: &str) -> SyncError {
    loop {
        tokio::time::sleep(LOCK_CHECK_INTERVAL).await;
        if let Err(e) = slot_lock_held(lock, slot).await {
            return e;
        }
    }
}

async fn slot_and_snapshot(
    cfg: &Config,
    writer: &mut Writer,
    lock: &Client,
) -> Result<(ReplicationClient, Lsn), SyncError> {
    let mut repl = ReplicationClient::connect_gated(replication_config(cfg)?)
        .await
        .map_err(|e| SyncError::stream("opening the replication session", e))?;
    // The pre-15 spelling, also accepted by newer servers (and RDS on 14),
    // unless a failover slot is asked for (17+, checked in preflight).
    let create = if cfg.slot_failover {
        format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)",
            cfg.slot
        )
    } else {
        format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
            cfg.slot
        )
    };
    let rows = repl
        .simple_query(&create)
        .await
        .map_err(|e| SyncError::stream("creating the replication slot", e))?;
    let text = |i: usize| -> Result<String, SyncError> {
        rows.first()
            .and_then(|r| r.get(i))
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| {
                SyncError::fatal(
                    FatalKind::MalformedStream,
                    "CREATE_REPLICATION_SLOT returned no consistent point or snapshot",
                    "see the server log",
                )
            })
    };
    let consistent_point: Lsn = text(1)?.parse().map_err(|e| {
        SyncError::fatal(
            FatalKind::MalformedStream,
            format!("CREATE_REPLICATION_SLOT: {e}"),
            "see the server log",
        )
    })?;
    let snapshot = text(2)?;
    tracing::info!(slot = %cfg.slot, %consistent_point, "created replication slot; copying existing interactions");

    let reader = db::connect_limited(&cfg.source_url, "source (snapshot)", cfg.limits()).await?;
    let copied = copy_snapshot(cfg, &reader, &snapshot, consistent_point, writer, lock).await;
    if copied.is_err() {
        rollback_bounded(writer).await;
    }
    let copied = copied?;
    tracing::info!(rows = copied, %consistent_point, "initial snapshot applied");
    Ok((repl, consistent_point))
}

async fn copy_snapshot(
    cfg: &Config,
    reader: &Client,
    snapshot: &str,
    consistent_point: Lsn,
    writer: &mut Writer,
    lock: &Client,
) -> Result<u64, SyncError> {
    writer.metrics().set_snapshot();
    let err = |what: &'static str| move |e| SyncError::db(what, e);
    reader
        .batch_execute(&format!(
            "begin isolation level repeatable read read only; set transaction snapshot {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(err("importing the slot's snapshot"))?;
    let row = reader
        .query_one(
            "select now(), greatest(reltuples, 0)::bigint from pg_class where oid = 'interaction'::regclass",
            &[],
        )
        .await
        .map_err(err("reading the snapshot time"))?;
    let snapshot_ts: DateTime<Utc> = row.try_get(0).map_err(err("reading the snapshot time"))?;
    let estimate: i64 = row
        .try_get(1)
        .map_err(err("reading the table size estimate"))?;
    reader
        .batch_execute(&format!(
            "declare calendar_sync_snapshot no scroll cursor for select {} from interaction i",
            InteractionRow::select_list("i")
        ))
        .await
        .map_err(err("opening the snapshot cursor"))?;
    // The snapshot is applied like a stream of INSERTs at the snapshot time
    // (contract §7), as one batch ending at the consistent point.
    writer.begin(BatchKind::Snapshot {
        consistent_point,
        taken_at: snapshot_ts,
    });
    // Events left from an earlier slot (a new snapshot after a lost slot, or a
    // source moved to a cluster whose LSNs are lower) must not refuse the new
    // history's writes as regressions.
    writer.forget_event_lsns().await?;
    copy_party_names(cfg, reader, writer).await?;
    let fetch = format!("fetch {SNAPSHOT_BATCH} from calendar_sync_snapshot");
    let started = std::time::Instant::now();
    let mut logged = started;
    let mut copied = 0u64;
    loop {
        let rows = reader
            .query(fetch.as_str(), &[])
            .await
            .map_err(err("reading the snapshot"))?;
        if rows.is_empty() {
            break;
        }
        writer.metrics().snapshot_rows(rows.len() as u64);
        for row in &rows {
            let id = row.try_get("interaction_id").map_err(|e| {
                SyncError::fatal(
                    FatalKind::SchemaChanged,
                    format!("snapshot: interaction_id: {e}"),
                    "interaction_id must be a uuid",
                )
            })?;
            writer
                .push_row(RowChange {
                    lsn: consistent_point,
                    ts: snapshot_ts,
                    id,
                    row: Some(InteractionRow::from_sql(row)),
                })
                .await?;
            copied += 1;
        }
        if logged.elapsed() >= SNAPSHOT_LOG_EVERY {
            logged = std::time::Instant::now();
            log_snapshot_progress(copied, estimate, started.elapsed());
        }
    }
    reader
        .batch_execute("commit")
        .await
        .map_err(err("closing the snapshot"))?;
    slot_lock_held(lock, &cfg.slot).await?;
    writer.commit().await?;
    Ok(copied)
}

/// One progress line: rows done of the `reltuples` estimate, rate, ETA.
fn log_snapshot_progress(done: u64, estimate: i64, elapsed: Duration) {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    let left = (estimate.max(0) as u64).saturating_sub(done);
    let eta_s = if rate > 0.0 { left as f64 / rate } else { 0.0 };
    tracing::info!(
        rows = done,
        estimated_total = estimate,
        rows_per_second = rate.round() as u64,
        eta_seconds = eta_s.round() as u64,
        "initial snapshot in progress"
    );
}

/// Copies every customer's and contact's display name from the snapshot into
/// `calendar_sync_party_names`, in batches.
async fn copy_party_names(
    cfg: &Config,
    reader: &Client,
    writer: &mut Writer,
) -> Result<(), SyncError> {
    for party in Party::ALL {
        let select = party.snapshot_select(&cfg.participants);
        let cursor = format!("calendar_sync_{}", party.as_str());
        reader
            .batch_execute(&format!("declare {cursor} no scroll cursor for {select}"))
            .await
            .map_err(|e| SyncError::db("opening the customer/contact snapshot cursor", e))?;
        let fetch = format!("fetch {SNAPSHOT_BATCH} from {cursor}");
        loop {
            let rows = reader
                .query(fetch.as_str(), &[])
                .await
                .map_err(|e| SyncError::db("reading customer/contact names", e))?;
            if rows.is_empty() {
                break;
            }
            let mut ids = Vec::with_capacity(rows.len());
            let mut names = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: uuid::Uuid = r.try_get(0).map_err(|e| {
                    SyncError::fatal(
                        FatalKind::SchemaChanged,
                        format!("{} ids must be uuids: {e}", party.as_str()),
                        "check CALENDAR_SYNC_CUSTOMER_ID_COLUMN / CALENDAR_SYNC_CONTACT_ID_COLUMN",
                    )
                })?;
                let parts = (1..=party.name_count())
                    .map(|i| r.try_get::<_, Option<String>>(i))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| SyncError::db("reading customer/contact names", e))?;
                let parts: Vec<Option<&str>> = parts.iter().map(Option::as_deref).collect();
                let name = party.display_name(&parts);
                ids.push(id);
                names.push(name);
            }
            writer.copy_party_names(party, &ids, &names).await?;
        }
    }
    Ok(())
}
