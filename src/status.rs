//! `calendar-sync status`: what an on-call engineer asks first.

use serde::Serialize;

use crate::config::Config;
use crate::db;
use crate::error::SyncError;
use crate::stream::client;

#[derive(Debug, Serialize)]
pub struct Status {
    pub slot: String,
    pub slot_exists: bool,
    pub slot_active: bool,
    pub wal_status: Option<String>,
    pub confirmed_flush_lsn: Option<String>,
    pub progress_lsn: Option<String>,
    pub last_commit_time: Option<String>,
    /// Server WAL position minus the slot's confirmed flush position.
    pub lag_bytes: Option<i64>,
    pub pending_failures: i64,
}

pub async fn status(cfg: &Config) -> Result<Status, SyncError> {
    let source = db::connect(&cfg.source_url, "source").await?;
    let target = db::connect(cfg.target_url(), "target").await?;
    let slot = client::slot_info(&source, &cfg.slot).await?;
    let lag: Option<i64> = source
        .query_opt(
            "select (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint from pg_replication_slots where slot_name = $1",
            &[&cfg.slot],
        )
        .await
        .map_err(|e| SyncError::db("reading the slot lag", e))?
        .and_then(|r| r.get(0));
    let progress = target
        .query_opt(
            "select lsn::text, commit_time::text from calendar_sync_progress where slot_name = $1",
            &[&cfg.slot],
        )
        .await
        .map_err(|e| SyncError::db("reading calendar_sync_progress", e))?;
    let pending: i64 = target
        .query_one(
            "select count(*) from calendar_sync_failures where not resolved",
            &[],
        )
        .await
        .map_err(|e| SyncError::db("counting calendar_sync_failures", e))?
        .get(0);
    Ok(Status {
        slot: cfg.slot.clone(),
        slot_exists: slot.is_some(),
        slot_active: slot.as_ref().is_some_and(|s| s.active_pid.is_some()),
        wal_status: slot.as_ref().and_then(|s| s.wal_status.clone()),
        confirmed_flush_lsn: slot
            .as_ref()
            .and_then(|s| s.confirmed_flush.map(|l| l.to_string())),
        progress_lsn: progress.as_ref().map(|r| r.get(0)),
        last_commit_time: progress.as_ref().and_then(|r| r.get(1)),
        lag_bytes: lag,
        pending_failures: pending,
    })
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(
            f,
            "slot             {} ({})",
            self.slot,
            if !self.slot_exists {
                "missing"
            } else if self.slot_active {
                "active"
            } else {
                "inactive"
            }
        )?;
        writeln!(f, "wal_status       {}", o(&self.wal_status))?;
        writeln!(f, "confirmed flush  {}", o(&self.confirmed_flush_lsn))?;
        writeln!(
            f,
            "progress         {} (commit time {})",
            o(&self.progress_lsn),
            o(&self.last_commit_time)
        )?;
        writeln!(
            f,
            "lag              {}",
            self.lag_bytes
                .map(|b| format!("{b} bytes"))
                .unwrap_or_else(|| "-".into())
        )?;
        write!(f, "pending failures {}", self.pending_failures)
    }
}
