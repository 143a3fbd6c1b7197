//! `run --resync` (issue 8): the explicit way back from a slot that was
//! dropped or invalidated while `calendar_sync_progress` says it was
//! streaming. Changes made while the slot was gone cannot be replayed, so
//! the progress row is forgotten, a lost slot is dropped, and `run` takes a
//! new snapshot (its usual first-start path, which re-syncs every existing
//! interaction and clears the old regression guards). What a snapshot cannot
//! see is an interaction deleted meanwhile: after the snapshot commits, the
//! events whose interaction no longer exists are deleted, with `delete` log
//! rows ([`crate::reconcile::remove_extra_events`]).
//!
//! Never automatic: a slot that vanished may also mean a second deployment
//! or a misconfigured slot name, which an operator should look at first.
//!
//! A start-over that finishes (issue 14): forgetting the progress and
//! recording the start-over as pending (`calendar_sync_resync`) happen in one
//! target transaction; every later start, with or without `--resync`,
//! completes a pending one (snapshot, then the removal pass) and only then
//! clears it. Killed during the snapshot or the removal pass, the next plain
//! `run` does the rest; `status` shows it pending.

use tokio_postgres::Client;

use super::client::SlotInfo;
use crate::config::Config;
use crate::error::SyncError;
use crate::lsn::Lsn;

/// Runs under the slot lock, before the slot decision. When the slot is
/// missing or lost and a progress row exists, forgets both and returns
/// `(None, None)`: the caller takes a new snapshot. Otherwise returns its
/// inputs unchanged (`--resync` with a healthy slot does nothing).
pub async fn prepare(
    cfg: &Config,
    source: &Client,
    target: &Client,
    stored: Option<Lsn>,
    slot: Option<SlotInfo>,
) -> Result<(Option<Lsn>, Option<SlotInfo>), SyncError> {
    let lost = slot
        .as_ref()
        .is_some_and(|s| s.wal_status.as_deref() == Some("lost"));
    let Some(progress) = stored.filter(|_| slot.is_none() || lost) else {
        tracing::info!(slot = %cfg.slot, "--resync: the slot is there and usable; nothing to resync");
        return Ok((stored, slot));
    };
    tracing::warn!(slot = %cfg.slot, %progress, lost, "--resync: forgetting the progress of a missing or lost slot; a new snapshot follows, then events of deleted interactions are removed");
    if lost {
        source
            .execute("select pg_drop_replication_slot($1)", &[&cfg.slot])
            .await
            .map_err(|e| SyncError::db("dropping the lost slot (--resync)", e))?;
    }
    // One transaction: the progress is never forgotten without the start-over
    // being recorded as pending.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&cfg.slot];
    let (begun, recorded, forgotten, committed) = tokio::join!(
        target.batch_execute("begin"),
        target.execute(
            "insert into calendar_sync_resync (slot_name) values ($1) on conflict (slot_name) do nothing",
            &params,
        ),
        target.execute(
            "delete from calendar_sync_progress where slot_name = $1",
            &params,
        ),
        target.batch_execute("commit"),
    );
    let ctx = "forgetting calendar_sync_progress and recording the start-over (--resync)";
    if let Err(e) = begun
        .and(recorded.map(|_| ()))
        .and(forgotten.map(|_| ()))
        .and(committed)
    {
        let _ = target.batch_execute("rollback").await;
        return Err(SyncError::db(ctx, e));
    }
    Ok((None, None))
}

/// Whether a start-over of `slot` is pending (see the module docs).
pub async fn pending(target: &Client, slot: &str) -> Result<bool, SyncError> {
    let n: i64 = target
        .query_one(
            "select count(*) from calendar_sync_resync where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| {
            SyncError::db(
                "reading calendar_sync_resync (has `calendar-sync migrate` run?)",
                e,
            )
        })?
        .try_get(0)
        .map_err(|e| SyncError::db("reading calendar_sync_resync", e))?;
    Ok(n > 0)
}

/// Completes a pending start-over whose snapshot has committed: removes the
/// events of interactions deleted while the slot was gone, then clears it.
pub async fn complete(cfg: &Config, writer: &mut crate::apply::Writer) -> Result<(), SyncError> {
    let removed = crate::reconcile::remove_extra_events(cfg, writer).await?;
    writer
        .target()
        .execute(
            "delete from calendar_sync_resync where slot_name = $1",
            &[&cfg.slot],
        )
        .await
        .map_err(|e| SyncError::db("clearing calendar_sync_resync", e))?;
    tracing::info!(
        slot = %cfg.slot,
        removed,
        "start-over complete: removed the events of interactions deleted while the slot was gone"
    );
    Ok(())
}
