//! `calendar-sync status`: what an on-call engineer (or a script) asks first.
//!
//! Everything is read from the databases, so it works while `run` is down,
//! from any machine with the same configuration. The verdict is an exit code:
//! 0 healthy, 1 degraded (an operator should look soon), 2 broken (nothing
//! syncs until an operator acts). The JSON field names are stable (README,
//! "status fields").
//!
//! # Lag in seconds
//! While a consumer holds the slot, it is the server's own measure,
//! `pg_stat_replication.flush_lag` (we report a transaction as flushed once
//! its events are committed): the server times each WAL position as written
//! and again when the consumer confirms it, so an idle but caught-up
//! consumer is 0 (the column turns NULL), which "now - last applied commit
//! time" would not be. With no consumer attached the server measures
//! nothing: then it is the age of the last applied commit
//! (`calendar_sync_progress.commit_time`) when WAL is waiting to be
//! confirmed, which is at least how long the calendar has been behind.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::db;
use crate::error::SyncError;

/// The verdict, most severe last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Broken,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Broken => "broken",
        }
    }

    /// The exit code of `status`: 0, 1, 2.
    pub fn exit_code(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Degraded => 1,
            Health::Broken => 2,
        }
    }
}

/// The oldest unresolved row of `calendar_sync_failures`.
#[derive(Debug, Clone, Serialize)]
pub struct OldestFailure {
    pub failure_id: String,
    pub interaction_id: String,
    pub action: String,
    /// RFC 3339.
    pub created_at: Option<String>,
    pub retry_count: Option<i32>,
    pub error_message: String,
}

/// Field names are part of the interface (`--json`, README): add, never rename.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub health: Health,
    /// Why not healthy, one sentence each; empty when healthy.
    pub problems: Vec<String>,
    pub slot: String,
    pub slot_exists: bool,
    pub slot_active: bool,
    /// Backend pid of the walsender holding the slot.
    pub slot_active_pid: Option<i32>,
    /// Client address of that walsender's connection (`None` over a Unix socket).
    pub slot_client_addr: Option<String>,
    pub slot_application_name: Option<String>,
    /// `reserved`, `extended`, `unreserved` or `lost` (pg_replication_slots).
    pub wal_status: Option<String>,
    /// `pg_current_wal_lsn() - restart_lsn`: WAL the server keeps for the slot.
    pub retained_wal_bytes: Option<i64>,
    /// Bytes of WAL that may still be written before the slot is at risk of
    /// invalidation; `None` when `max_slot_wal_keep_size` is unlimited, and
    /// when the slot is missing or lost (`slot_exists`, `wal_status`).
    pub safe_wal_size_bytes: Option<i64>,
    pub confirmed_flush_lsn: Option<String>,
    pub progress_lsn: Option<String>,
    /// Commit time of the last applied source transaction.
    pub last_commit_time: Option<String>,
    /// Server WAL position minus the slot's confirmed flush position.
    pub lag_bytes: Option<i64>,
    /// See the module docs.
    pub lag_seconds: Option<f64>,
    /// The threshold of `--max-lag-seconds`.
    pub max_lag_seconds: u64,
    /// The slot exists but its initial snapshot has not committed.
    pub snapshot_in_progress: bool,
    /// `pg_class.reltuples` of interaction: rows a snapshot copies, roughly.
    pub snapshot_rows_estimate: Option<i64>,
    pub publication: String,
    pub publication_exists: bool,
    pub wal_level: String,
    pub pending_failures: i64,
    pub oldest_failure: Option<OldestFailure>,
    /// PostgreSQL 17+: the slot is a failover slot (`None` before 17 or
    /// without a slot).
    pub slot_failover: Option<bool>,
    /// The primary's `synchronized_standby_slots` (`None`: empty or before 17).
    pub synchronized_standby_slots: Option<String>,
    /// A `run --resync` has begun and not finished: the next `run` completes it.
    pub resync_pending: bool,
    /// The target of the deployment that claimed the slot
    /// (`calendar_sync_slot_owner`), `database@host:port`.
    pub slot_owner: Option<String>,
    /// The claim is this target's.
    pub slot_owned_here: Option<bool>,
    /// Names in `synchronized_standby_slots` that are not physical slots of
    /// the source server (`None`: none).
    pub missing_standby_slots: Option<String>,
}

/// Reads the source: slot, its holder, WAL figures, publication, wal_level.
fn source_sql() -> String {
    format!(
        "
select s.slot_name is not null,
       s.active_pid,
       host(r.client_addr),
       r.application_name::text,
       s.wal_status,
       (pg_current_wal_lsn() - s.restart_lsn)::bigint,
       s.safe_wal_size::bigint,
       s.confirmed_flush_lsn::text,
       (pg_current_wal_lsn() - s.confirmed_flush_lsn)::bigint,
       extract(epoch from r.flush_lag)::float8,
       exists (select 1 from pg_publication where pubname = $2),
       current_setting('wal_level'),
       (select greatest(reltuples, 0)::bigint from pg_class where oid = to_regclass('interaction')),
       (to_jsonb(s) ->> 'failover')::boolean,
       nullif(current_setting('synchronized_standby_slots', true), ''),
       {}
  from (select 1) one
  left join pg_replication_slots s on s.slot_name = $1
  left join pg_stat_replication r on r.pid = s.active_pid",
        crate::stream::client::MISSING_STANDBY_SLOTS_SQL
    )
}

/// Reads the target: progress, its age, failures.
const PROGRESS_SQL: &str = "
select lsn::text, commit_time::text,
       extract(epoch from now() - coalesce(commit_time, snapshot_at))::float8
  from calendar_sync_progress where slot_name = $1";

const FAILURES_SQL: &str = "
select count(*) over (), failure_id::text, interaction_id::text, action::text,
       created_at, retry_count, error_message
  from calendar_sync_failures where not resolved
 order by created_at nulls first, failure_id
 limit 1";

/// Reads everything and judges it (`max_lag_seconds`: the degraded threshold).
pub async fn status(cfg: &Config, max_lag_seconds: u64) -> Result<Status, SyncError> {
    let source = db::connect(&cfg.source_url, "source").await?;
    let target = db::connect(cfg.target_url(), "target").await?;
    let s = source
        .query_one(&source_sql(), &[&cfg.slot, &cfg.publication])
        .await
        .map_err(|e| SyncError::db("reading the slot and the publication", e))?;
    let progress = target
        .query_opt(PROGRESS_SQL, &[&cfg.slot])
        .await
        .map_err(|e| SyncError::db("reading calendar_sync_progress", e))?;
    let failure = target
        .query_opt(FAILURES_SQL, &[])
        .await
        .map_err(|e| SyncError::db("reading calendar_sync_failures", e))?;
    let resync_pending = crate::stream::resync::pending(&target, &cfg.slot).await?;
    let claim = crate::stream::ownership::claim_of(&source, &cfg.slot).await?;
    let me = crate::stream::ownership::me(&target).await?;
    let db_err = |what: &'static str| move |e| SyncError::db(what, e);
    let slot_exists: bool = s.try_get(0).map_err(db_err("reading the slot"))?;
    let active_pid: Option<i32> = s.try_get(1).map_err(db_err("reading the slot"))?;
    let lag_bytes: Option<i64> = s.try_get(8).map_err(db_err("reading the slot"))?;
    let flush_lag: Option<f64> = s.try_get(9).map_err(db_err("reading the slot"))?;
    let commit_age: Option<f64> = match &progress {
        Some(r) => r
            .try_get(2)
            .map_err(db_err("reading calendar_sync_progress"))?,
        None => None,
    };
    let lag_seconds = if !slot_exists || progress.is_none() {
        None
    } else if active_pid.is_some() {
        Some(flush_lag.unwrap_or(0.0).max(0.0))
    } else if lag_bytes.unwrap_or(0) > 0 {
        Some(commit_age.unwrap_or(0.0).max(0.0))
    } else {
        Some(0.0)
    };
    let oldest_failure = match &failure {
        None => None,
        Some(r) => Some(OldestFailure {
            failure_id: r
                .try_get(1)
                .map_err(db_err("reading calendar_sync_failures"))?,
            interaction_id: r
                .try_get(2)
                .map_err(db_err("reading calendar_sync_failures"))?,
            action: r
                .try_get(3)
                .map_err(db_err("reading calendar_sync_failures"))?,
            created_at: r
                .try_get::<_, Option<DateTime<Utc>>>(4)
                .map_err(db_err("reading calendar_sync_failures"))?
                .map(|t| t.to_rfc3339()),
            retry_count: r
                .try_get(5)
                .map_err(db_err("reading calendar_sync_failures"))?,
            error_message: r
                .try_get(6)
                .map_err(db_err("reading calendar_sync_failures"))?,
        }),
    };
    let mut st = Status {
        health: Health::Healthy,
        problems: Vec::new(),
        slot: cfg.slot.clone(),
        slot_exists,
        slot_active: active_pid.is_some(),
        slot_active_pid: active_pid,
        slot_client_addr: s.try_get(2).map_err(db_err("reading the slot"))?,
        slot_application_name: s.try_get(3).map_err(db_err("reading the slot"))?,
        wal_status: s.try_get(4).map_err(db_err("reading the slot"))?,
        retained_wal_bytes: s.try_get(5).map_err(db_err("reading the slot"))?,
        safe_wal_size_bytes: s.try_get(6).map_err(db_err("reading the slot"))?,
        confirmed_flush_lsn: s.try_get(7).map_err(db_err("reading the slot"))?,
        progress_lsn: match &progress {
            Some(r) => r
                .try_get(0)
                .map_err(db_err("reading calendar_sync_progress"))?,
            None => None,
        },
        last_commit_time: match &progress {
            Some(r) => r
                .try_get(1)
                .map_err(db_err("reading calendar_sync_progress"))?,
            None => None,
        },
        lag_bytes,
        lag_seconds,
        max_lag_seconds,
        snapshot_in_progress: slot_exists && progress.is_none(),
        snapshot_rows_estimate: s
            .try_get(12)
            .map_err(db_err("reading interaction's size"))?,
        publication: cfg.publication.clone(),
        publication_exists: s.try_get(10).map_err(db_err("reading the publication"))?,
        wal_level: s.try_get(11).map_err(db_err("reading wal_level"))?,
        pending_failures: match &failure {
            Some(r) => r
                .try_get(0)
                .map_err(db_err("counting calendar_sync_failures"))?,
            None => 0,
        },
        oldest_failure,
        slot_failover: s.try_get(13).map_err(db_err("reading the slot"))?,
        synchronized_standby_slots: s
            .try_get(14)
            .map_err(db_err("reading synchronized_standby_slots"))?,
        resync_pending,
        slot_owned_here: claim.as_ref().map(|c| c.target_id == me.target_id),
        slot_owner: claim.map(|c| c.target),
        missing_standby_slots: s
            .try_get(15)
            .map_err(db_err("reading synchronized_standby_slots"))?,
    };
    let (health, problems) = Health::of(&st);
    st.health = health;
    st.problems = problems;
    Ok(st)
}

impl Health {
    /// The verdict and its reasons. Pure: a function of the fields.
    pub fn of(s: &Status) -> (Health, Vec<String>) {
        let mut broken = Vec::new();
        let mut degraded = Vec::new();
        if s.wal_level != "logical" {
            broken.push(format!(
            "wal_level is {}, not logical: set it (on RDS: rds.logical_replication = 1) and restart the server",
            s.wal_level
        ));
        }
        if !s.publication_exists {
            broken.push(format!(
                "publication {} is missing: run `calendar-sync migrate`",
                s.publication
            ));
        }
        if !s.slot_exists {
            broken.push(format!(
            "replication slot {} is missing{}",
            s.slot,
            if s.progress_lsn.is_some() {
                ": changes made since it was dropped are lost to the stream; start over with `calendar-sync run --resync` once (a new snapshot, then the events of interactions deleted meanwhile are removed), then `calendar-sync reconcile --dry-run`"
            } else {
                ": `run` creates it"
            }
        ));
        } else if s.wal_status.as_deref() == Some("lost") {
            broken.push(format!(
            "replication slot {} was invalidated (wal_status = lost): the WAL it needed is gone; raise max_slot_wal_keep_size, then start over with `calendar-sync run --resync` once",
            s.slot
        ));
        }
        if s.slot_exists && !s.slot_active {
            degraded.push(format!(
            "replication slot {} is inactive: no calendar-sync is streaming (the server keeps WAL for it meanwhile)",
            s.slot
        ));
        }
        if s.slot_owned_here == Some(false) {
            broken.push(format!(
            "replication slot {} is claimed by another deployment (target {}): this one's `run` refuses it; give it its own CALENDAR_SYNC_SLOT",
            s.slot,
            s.slot_owner.as_deref().unwrap_or("?")
        ));
        }
        if s.resync_pending {
            degraded.push(
            "a start-over (`run --resync`) has not finished: the next `run` completes it (a new snapshot, then the events of interactions deleted meanwhile are removed)".into(),
        );
        }
        let failover = crate::stream::client::FailoverState {
            failover: s.slot_failover,
            synchronized_standby_slots: s.synchronized_standby_slots.clone(),
            missing_standby_slots: s.missing_standby_slots.clone(),
        };
        if let Some(w) = failover.stall() {
            broken.push(w);
        } else if let Some(w) = failover.warning() {
            degraded.push(w);
        }
        if s.wal_status.as_deref() == Some("unreserved") {
            degraded.push("the slot's WAL is past max_slot_wal_keep_size (wal_status = unreserved): it is invalidated at the next checkpoint unless the consumer catches up".into());
        }
        if let Some(lag) = s.lag_seconds.filter(|l| *l > s.max_lag_seconds as f64) {
            degraded.push(format!(
                "lag {lag:.0} s is over --max-lag-seconds {}",
                s.max_lag_seconds
            ));
        }
        if s.pending_failures > 0 {
            degraded.push(format!(
                "{} failure(s) pending: `calendar-sync failures list`",
                s.pending_failures
            ));
        }
        let health = if !broken.is_empty() {
            Health::Broken
        } else if !degraded.is_empty() {
            Health::Degraded
        } else {
            Health::Healthy
        };
        broken.extend(degraded);
        (health, broken)
    }
}

/// `status --json` when the databases cannot be read at all.
pub fn unreachable(error: &str) -> serde_json::Value {
    serde_json::json!({
        "health": Health::Broken,
        "problems": [format!("cannot read the status: {error}")],
    })
}

fn bytes(n: i64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n.abs() >= 1024 * 1024 {
        format!("{n} bytes ({:.1} MiB)", n as f64 / MIB)
    } else {
        format!("{n} bytes")
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let b = |v: Option<i64>| v.map(bytes).unwrap_or_else(|| "-".into());
        writeln!(f, "health           {}", self.health.as_str())?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        let holder = match self.slot_active_pid {
            None => String::new(),
            Some(pid) => format!(
                ", held by pid {pid} from {} ({})",
                o(&self.slot_client_addr),
                o(&self.slot_application_name)
            ),
        };
        writeln!(
            f,
            "slot             {} ({}{holder})",
            self.slot,
            if !self.slot_exists {
                "missing"
            } else if self.slot_active {
                "active"
            } else {
                "inactive"
            }
        )?;
        if self.snapshot_in_progress {
            writeln!(
                f,
                "snapshot         snapshot in progress (about {} interaction rows to copy; rows so far are not visible from outside)",
                self.snapshot_rows_estimate
                    .map_or_else(|| "?".into(), |n| n.to_string())
            )?;
        }
        writeln!(
            f,
            "slot owner       {}{}",
            self.slot_owner.as_deref().unwrap_or("-"),
            match self.slot_owned_here {
                Some(true) => " (this target)",
                Some(false) => " (ANOTHER deployment)",
                None => "",
            }
        )?;
        if self.resync_pending {
            writeln!(f, "resync           pending (the next `run` completes it)")?;
        }
        writeln!(
            f,
            "failover slot    {}",
            match (self.slot_failover, &self.synchronized_standby_slots) {
                (None, _) => "- (PostgreSQL 17+)".to_string(),
                (Some(false), _) => "no (CALENDAR_SYNC_SLOT_FAILOVER=false)".to_string(),
                (Some(true), Some(slots)) => match &self.missing_standby_slots {
                    None => format!("yes (synchronized_standby_slots {slots})"),
                    Some(missing) =>
                        format!("yes (synchronized_standby_slots {slots}; not here: {missing}!)"),
                },
                (Some(true), None) => "yes (synchronized_standby_slots empty!)".to_string(),
            }
        )?;
        writeln!(f, "wal_status       {}", o(&self.wal_status))?;
        writeln!(f, "retained WAL     {}", b(self.retained_wal_bytes))?;
        writeln!(
            f,
            "safe WAL size    {}",
            match self.safe_wal_size_bytes {
                Some(n) => bytes(n),
                // NULL also for a missing or lost slot: nothing is safe then.
                None if self.slot_exists && self.wal_status.as_deref() != Some("lost") => {
                    "unlimited".into()
                }
                None => "-".into(),
            }
        )?;
        writeln!(f, "confirmed flush  {}", o(&self.confirmed_flush_lsn))?;
        writeln!(
            f,
            "progress         {} (commit time {})",
            o(&self.progress_lsn),
            o(&self.last_commit_time)
        )?;
        writeln!(
            f,
            "lag              {}, {}",
            self.lag_seconds
                .map_or_else(|| "-".into(), |s| format!("{s:.1} s")),
            b(self.lag_bytes)
        )?;
        writeln!(
            f,
            "publication      {} ({})",
            self.publication,
            if self.publication_exists {
                "exists"
            } else {
                "missing"
            }
        )?;
        writeln!(f, "wal_level        {}", self.wal_level)?;
        write!(f, "pending failures {}", self.pending_failures)?;
        if let Some(o) = &self.oldest_failure {
            write!(
                f,
                "\n  oldest         {} interaction {} ({}, since {}, {} retries): {}",
                o.failure_id,
                o.interaction_id,
                o.action,
                o.created_at.as_deref().unwrap_or("-"),
                o.retry_count.unwrap_or(0),
                o.error_message
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost_slot() -> Status {
        Status {
            health: Health::Healthy,
            problems: Vec::new(),
            slot: "calendar_sync".into(),
            slot_exists: true,
            slot_active: false,
            slot_active_pid: None,
            slot_client_addr: None,
            slot_application_name: None,
            wal_status: Some("lost".into()),
            retained_wal_bytes: None,
            safe_wal_size_bytes: None,
            confirmed_flush_lsn: Some("0/1970880".into()),
            progress_lsn: Some("0/1970880".into()),
            last_commit_time: None,
            lag_bytes: None,
            lag_seconds: None,
            max_lag_seconds: 300,
            snapshot_in_progress: false,
            snapshot_rows_estimate: None,
            publication: "calendar_sync".into(),
            publication_exists: true,
            wal_level: "logical".into(),
            pending_failures: 0,
            oldest_failure: None,
            slot_failover: None,
            synchronized_standby_slots: None,
            resync_pending: false,
            slot_owner: None,
            slot_owned_here: None,
            missing_standby_slots: None,
        }
    }

    #[test]
    fn a_lost_slot_is_broken_and_names_the_way_back() {
        let mut s = lost_slot();
        let (health, problems) = Health::of(&s);
        assert_eq!(health, Health::Broken);
        assert!(
            problems[0].contains("wal_status = lost")
                && problems[0].contains("`calendar-sync run --resync`"),
            "{problems:?}"
        );
        (s.health, s.problems) = (health, problems);
        let text = s.to_string();
        assert!(
            text.lines().any(|l| l == "safe WAL size    -"),
            "a lost slot has no safe WAL size, it is not unlimited: {text}"
        );
    }

    #[test]
    fn a_failover_slot_waiting_for_a_standby_slot_the_server_lacks_is_broken() {
        let mut s = Status {
            slot_active: true,
            wal_status: Some("reserved".into()),
            slot_failover: Some(true),
            synchronized_standby_slots: Some("standby1".into()),
            missing_standby_slots: Some("standby1".into()),
            ..lost_slot()
        };
        let (health, problems) = Health::of(&s);
        assert_eq!(health, Health::Broken);
        assert!(
            problems.len() == 1 && problems[0].contains("names standby1"),
            "{problems:?}"
        );
        (s.health, s.problems) = (health, problems);
        assert!(
            s.to_string().lines().any(|l| {
                l
                == "failover slot    yes (synchronized_standby_slots standby1; not here: standby1!)"
            }),
            "{s}"
        );
        s.missing_standby_slots = None;
        assert_eq!(Health::of(&s), (Health::Healthy, Vec::new()));
    }
}
