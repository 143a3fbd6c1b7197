//! The writes of a repair: interactions' current state, and deletes of
//! events whose interaction is gone, each page one [`BatchKind::Reconcile`]
//! batch through the stream's own [`Writer`] (see the parent module's docs
//! for why that is safe while `run` streams).

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use uuid::Uuid;

use super::stamp_bump_only;
use crate::apply::plan::StoredEvent;
use crate::apply::{BatchKind, RowChange, Writer};
use crate::config::Config;
use crate::error::SyncError;

/// Repairs interactions `ids` of one page from their current state, read
/// again `for share` (see the module docs), in one target transaction.
pub(super) async fn repair_page(
    w: &mut Writer,
    cfg: &Config,
    ids: &[Uuid],
    events: &HashMap<Uuid, StoredEvent>,
) -> Result<(), SyncError> {
    let fresh = w.read_current(ids, &cfg.participants, true).await?;
    let now = Utc::now();
    w.begin(BatchKind::Reconcile);
    let result = async {
        let mut seen = HashSet::new();
        for mut c in fresh {
            seen.insert(c.id);
            let synced_at = c.synced_at;
            if let (Ok(row), Some(e)) = (c.row.as_mut(), events.get(&c.id)) {
                if stamp_bump_only(row, synced_at) {
                    row.updated_at = e.fields.updated_at;
                }
            }
            w.push_current(c, now).await?;
        }
        // Deleted since the page was read: its event goes too.
        let gone: Vec<Uuid> = ids
            .iter()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        if !gone.is_empty() {
            let lsn = w.source_wal_position().await?;
            for id in gone {
                w.push_row(RowChange {
                    lsn,
                    ts: now,
                    id,
                    row: None,
                })
                .await?;
            }
        }
        w.commit().await
    }
    .await;
    if let Err(e) = result {
        w.rollback().await;
        return Err(e);
    }
    Ok(())
}

/// Deletes the events of interactions `gone` through the writer (delete log
/// rows), in one target transaction.
pub(super) async fn delete_events_of(w: &mut Writer, gone: &[Uuid]) -> Result<(), SyncError> {
    let lsn = w.source_wal_position().await?;
    let now = Utc::now();
    w.begin(BatchKind::Reconcile);
    let result = async {
        for id in gone {
            w.push_row(RowChange {
                lsn,
                ts: now,
                id: *id,
                row: None,
            })
            .await?;
        }
        w.commit().await
    }
    .await;
    if let Err(e) = result {
        w.rollback().await;
        return Err(e);
    }
    Ok(())
}
