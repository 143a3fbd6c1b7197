//! `calendar-sync failures list | retry | resolve`: the failure queue.
//!
//! `retry` does not apply anything itself: it makes the failure due, and the
//! running service's retry worker re-syncs it between source transactions.
//! That keeps one writer to `calendar_events`.

use serde::Serialize;

use crate::cli::FailuresAction;
use crate::config::Config;
use crate::db;
use crate::error::{FatalKind, SyncError};

#[derive(Debug, Serialize)]
pub struct Failure {
    pub failure_id: uuid::Uuid,
    pub interaction_id: uuid::Uuid,
    pub action: String,
    pub error_message: String,
    pub retry_count: i32,
    pub next_retry_at: Option<String>,
    pub created_at: Option<String>,
}

pub async fn list(cfg: &Config) -> Result<Vec<Failure>, SyncError> {
    let target = db::connect(cfg.target_url(), "target").await?;
    let rows = target
        .query(
            "select failure_id, interaction_id, action, error_message, coalesce(retry_count, 0),
                    next_retry_at::text, created_at::text
               from calendar_sync_failures where not resolved order by created_at",
            &[],
        )
        .await
        .map_err(|e| SyncError::db("reading calendar_sync_failures", e))?;
    Ok(rows
        .iter()
        .map(|r| Failure {
            failure_id: r.get(0),
            interaction_id: r.get(1),
            action: r.get(2),
            error_message: r.get(3),
            retry_count: r.get(4),
            next_retry_at: r.get(5),
            created_at: r.get(6),
        })
        .collect())
}

/// Makes one (`Some(id)`) or every open failure due now. Returns how many.
pub async fn retry(cfg: &Config, id: Option<uuid::Uuid>) -> Result<u64, SyncError> {
    let target = db::connect(cfg.target_url(), "target").await?;
    target
        .execute(
            "update calendar_sync_failures set next_retry_at = now()
              where not resolved and ($1::uuid is null or failure_id = $1)",
            &[&id],
        )
        .await
        .map_err(|e| SyncError::db("scheduling retries", e))
}

/// Marks one open failure resolved. Returns whether it was open.
pub async fn resolve(cfg: &Config, id: uuid::Uuid) -> Result<bool, SyncError> {
    let target = db::connect(cfg.target_url(), "target").await?;
    let n = target
        .execute("update calendar_sync_failures set resolved = true where failure_id = $1 and not resolved", &[&id])
        .await
        .map_err(|e| SyncError::db("resolving a failure", e))?;
    Ok(n == 1)
}

/// The command: prints for an operator.
pub async fn run(cfg: &Config, action: FailuresAction) -> Result<(), SyncError> {
    match action {
        FailuresAction::List { json } => {
            let failures = list(cfg).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&failures).unwrap_or_else(|_| "[]".into())
                );
            } else if failures.is_empty() {
                println!("no open failures");
            } else {
                for f in failures {
                    println!(
                        "{}  interaction {}  {:<6}  retries {}  next {}  {}",
                        f.failure_id,
                        f.interaction_id,
                        f.action,
                        f.retry_count,
                        f.next_retry_at.as_deref().unwrap_or("-"),
                        f.error_message
                    );
                }
            }
        }
        FailuresAction::Retry { id, .. } => {
            let n = retry(cfg, id).await?;
            println!("{n} failure(s) due now; the running service retries them within seconds");
        }
        FailuresAction::Resolve { id } => {
            if resolve(cfg, id).await? {
                println!("failure {id} resolved");
            } else {
                return Err(SyncError::fatal(
                    FatalKind::Usage,
                    format!("no open failure with id {id}"),
                    "see `calendar-sync failures list`",
                ));
            }
        }
    }
    Ok(())
}
