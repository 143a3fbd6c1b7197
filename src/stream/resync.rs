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
    target
        .execute(
            "delete from calendar_sync_progress where slot_name = $1",
            &[&cfg.slot],
        )
        .await
        .map_err(|e| SyncError::db("deleting calendar_sync_progress (--resync)", e))?;
    Ok((None, None))
}
