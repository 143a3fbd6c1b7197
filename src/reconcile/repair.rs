//! The writes of a repair: interactions' current state, and deletes of
//! events whose interaction is gone, each page one [`BatchKind::Reconcile`]
//! batch through the stream's own [`Writer`] (see the parent module's docs
//! for why that is safe while `run` streams).

use std::collections::HashMap;

use chrono::Utc;
use uuid::Uuid;

use super::stamp_bump_only;
use crate::apply::plan::StoredEvent;
use crate::apply::LiveChange;
use crate::apply::{BatchKind, Writer};
use crate::config::Config;
use crate::error::SyncError;
use crate::lsn::Lsn;

/// Repairs interactions `ids` of one page from their current state, read
/// again `for share` (see the module docs), in one target transaction.
pub(super) async fn repair_page(
    w: &mut Writer,
    cfg: &Config,
    ids: &[Uuid],
    events: &HashMap<Uuid, StoredEvent>,
    at: Lsn,
) -> Result<(), SyncError> {
    let mut fresh = w.read_live(ids, &cfg.participants, true, at).await?;
    let now = Utc::now();
    for c in &mut fresh {
        let synced_at = c.synced_at;
        if let (Ok(row), Some(e)) = (c.row.as_mut(), events.get(&c.id)) {
            if stamp_bump_only(row, synced_at) {
                row.updated_at = e.fields.updated_at;
            }
        }
    }
    // Deleted since the page was read: its event goes too (at `at`: not an
    // event the stream wrote from a later position).
    let changes = LiveChange::of(ids, fresh);
    w.write_live(BatchKind::Reconcile, changes, at, now).await
}

/// Deletes the events of interactions `gone` through the writer (delete log
/// rows), in one target transaction, at `at`: an event the stream wrote from
/// a later position stays (the regression guard).
pub(super) async fn delete_events_of(
    w: &mut Writer,
    gone: &[Uuid],
    at: Lsn,
) -> Result<(), SyncError> {
    let now = Utc::now();
    let changes = gone.iter().map(|id| LiveChange::Gone(*id)).collect();
    w.write_live(BatchKind::Reconcile, changes, at, now).await
}
