//! The replication connection (pgwire-replication), the slot and its lock,
//! the stored progress, and what to do with them at start ([`StartPlan::decide`], pure).
//! The initial snapshot is in [`super::snapshot`], the preflight checks in
//! [`super::preflight`].

use crate::config::Config;
use crate::db::{self};
use crate::error::{FatalKind, SyncError};
use crate::lsn::Lsn;
use crate::tls::TlsSettings;
use pgwire_replication::ReplicationConfig;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::Client;

pub use super::preflight::{check_publication, preflight, resolve_tables};
pub use super::snapshot::{create_slot_and_snapshot, rollback_bounded};

/// Events buffered between the replication worker and the writer.
const REPLICATION_BUFFER_EVENTS: usize = 64;

/// The slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// The slot belongs to the database we are connected to.
    pub this_database: bool,
    pub active_pid: Option<i32>,
    pub wal_status: Option<String>,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub confirmed_flush: Option<Lsn>,
    /// PostgreSQL 17+: a failover slot (`None` before 17).
    pub failover: Option<bool>,
}

#[cfg(test)]
impl SlotInfo {
    /// Tests: a healthy, inactive pgoutput slot of this database, confirmed
    /// up to `confirmed_flush`.
    pub(crate) fn sample(confirmed_flush: Lsn) -> SlotInfo {
        SlotInfo {
            this_database: true,
            active_pid: None,
            wal_status: Some("reserved".into()),
            plugin: Some("pgoutput".into()),
            database: Some("crm".into()),
            confirmed_flush: Some(confirmed_flush),
            failover: None,
        }
    }
}

pub async fn slot_info(source: &Client, slot: &str) -> Result<Option<SlotInfo>, SyncError> {
    let row = source
        .query_opt(
            "select active_pid, wal_status, plugin::text, database::text, confirmed_flush_lsn,
                    database = current_database(), (to_jsonb(s) ->> 'failover')::boolean
               from pg_replication_slots s where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| SyncError::db("reading pg_replication_slots", e))?;
    Ok(row.map(|r| SlotInfo {
        active_pid: r.get(0),
        wal_status: r.get(1),
        plugin: r.get(2),
        database: r.get(3),
        confirmed_flush: r
            .get::<_, Option<tokio_postgres::types::PgLsn>>(4)
            .map(Lsn::from),
        this_database: r.get::<_, Option<bool>>(5).unwrap_or(false),
        failover: r.get(6),
    }))
}

/// The stored progress of `slot`.
pub async fn stored_progress(target: &Client, slot: &str) -> Result<Option<Lsn>, SyncError> {
    let row = target
        .query_opt(
            "select lsn from calendar_sync_progress where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| SyncError::db("reading calendar_sync_progress", e))?;
    Ok(row.map(|r| Lsn::from(r.get::<_, tokio_postgres::types::PgLsn>(0))))
}

/// The replication session's configuration, from `DATABASE_URL`.
pub fn replication_config(cfg: &Config) -> Result<ReplicationConfig, SyncError> {
    let bad = |e: &dyn std::fmt::Display| {
        SyncError::fatal(
            FatalKind::Config,
            format!("DATABASE_URL: {e}"),
            "expected postgres://user:password@host:port/dbname",
        )
    };
    let (rest, tls) = TlsSettings::split(cfg.source_url.expose()).map_err(|e| bad(&e))?;
    let pg = tokio_postgres::Config::from_str(&rest).map_err(|e| bad(&e))?;
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.to_string_lossy().into_owned(),
        None => "localhost".to_string(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg.get_user().unwrap_or("postgres").to_string();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = pg.get_dbname().unwrap_or(&user).to_string();
    let tls = tls.replication();
    let mut rc = ReplicationConfig::new(
        host,
        user,
        password,
        database,
        cfg.slot.clone(),
        cfg.publication.clone(),
    )
    .with_port(port)
    .with_tls(tls)
    // Resume at the slot's confirmed_flush_lsn; until the first ack the
    // client reports 0/0, which the server ignores.
    .with_start_lsn(pgwire_replication::Lsn::ZERO)
    .with_status_interval(cfg.status_interval)
    // With no message for this long the worker sends a standby status of
    // its own: the last applied LSN reaches the server within about a second
    // when idle, also right before a SIGTERM stop (pgwire-replication sends
    // no status with its CopyDone).
    .with_wakeup_interval(Duration::from_secs(1))
    // The replication buffer is bounded by count (the crate has no byte
    // bound): 64 events of at most one row each. With 100 kB descriptions
    // that is ~6.4 MB; the default (8,192) would be ~800 MB. The writer keeps
    // up with far fewer: it reads in chunks while the worker refills.
    .with_buffer_size(REPLICATION_BUFFER_EVENTS)
    // Values arrive as text: pin the formats the decoder reads.
    .with_options("-c datestyle=ISO,YMD -c timezone=UTC -c intervalstyle=postgres");
    rc.application_name = Some(format!("{}-{}", db::APPLICATION_NAME, cfg.slot));
    Ok(rc)
}

/// Takes the session-level advisory lock that makes this process the only
/// calendar-sync working on `slot` (in this source database) until its
/// connection closes. The slot itself is not held while the initial snapshot is
/// copied (PostgreSQL releases it after CREATE_REPLICATION_SLOT), so without
/// this a second instance could drop and recreate it under the first.
pub async fn lock_slot(source: &Client, slot: &str) -> Result<(), SyncError> {
    let granted: bool = source
        .query_one(
            "select pg_try_advisory_lock(hashtextextended('calendar_sync.slot:' || $1, 0))",
            &[&slot],
        )
        .await
        .map_err(|e| SyncError::db("taking the slot's advisory lock", e))?
        .get(0);
    if granted {
        Ok(())
    } else {
        Err(SyncError::transient(
            "waiting for the slot",
            format!("another calendar-sync process works on slot {slot} (a rolling deploy?); waiting for it to stop"),
        ))
    }
}

/// The slot lock of [`lock_slot`] is still held by `lock`'s session. A
/// transient error otherwise, also when that session is gone.
pub async fn slot_lock_held(lock: &Client, slot: &str) -> Result<(), SyncError> {
    let lost = |why: String| {
        SyncError::transient(
            "checking the slot's advisory lock",
            format!("{why}: another calendar-sync may have taken slot {slot} over, so this one stops what it did under the lock (an initial snapshot is not committed) and starts again"),
        )
    };
    // A bigint advisory key shows in pg_locks as classid = high 32 bits,
    // objid = low 32 bits, objsubid = 1 (PostgreSQL docs, "pg_locks").
    let held: bool = lock
        .query_one(
            "with k as (select hashtextextended('calendar_sync.slot:' || $1, 0) as key)
             select exists (
               select 1 from pg_locks, k
                where locktype = 'advisory' and pid = pg_backend_pid() and granted
                  and database = (select oid from pg_database where datname = current_database())
                  and objsubid = 1
                  and classid = ((key >> 32) & 4294967295)::oid
                  and objid = (key & 4294967295)::oid)",
            &[&slot],
        )
        .await
        .map_err(|e| {
            lost(format!(
                "the lock's session failed ({})",
                crate::error::describe_pg(&e)
            ))
        })?
        .get(0);
    if held {
        Ok(())
    } else {
        Err(lost("the lock's session no longer holds it".into()))
    }
}

/// After a clean stop: moves the slot's `confirmed_flush_lsn` to `acked` if
/// the last standby status did not get there (pgwire-replication sends none
/// with its CopyDone, so the final position otherwise waits for a keepalive
/// reply that may not come before the process exits). Only once the
/// walsender has let go of the slot, only forward, best effort: `acked` is
/// committed and publication-checked, exactly what a status update would
/// have reported.
pub async fn advance_released_slot(source: &Client, slot: &str, acked: Lsn) {
    if acked == Lsn::ZERO {
        return;
    }
    let lsn = tokio_postgres::types::PgLsn::from(acked);
    for _ in 0..40 {
        let advanced = source
            .query(
                "select pg_replication_slot_advance(slot_name, $2)::text
                   from pg_replication_slots
                  where slot_name = $1 and not active and confirmed_flush_lsn < $2",
                &[&slot, &lsn],
            )
            .await;
        match advanced {
            Ok(rows) if !rows.is_empty() => {
                tracing::debug!(%acked, "moved the slot to the last applied position after the stream closed");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "could not move the slot after the stream closed; the next start replays and skips");
                return;
            }
        }
        let done = source
            .query_opt(
                "select 1 from pg_replication_slots where slot_name = $1 and confirmed_flush_lsn >= $2",
                &[&slot, &lsn],
            )
            .await;
        if !matches!(done, Ok(None)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `CALENDAR_SYNC_SLOT_FAILOVER=true` and the slot is not a failover slot
/// yet: alters it (PostgreSQL 17+, on the gated replication session, before
/// it streams: the slot must not be held by a walsender).
pub async fn make_failover_slot(
    repl: &mut pgwire_replication::ReplicationClient,
    slot: &str,
) -> Result<(), SyncError> {
    repl.simple_query(&format!("ALTER_REPLICATION_SLOT {slot} (FAILOVER true)"))
        .await
        .map_err(|e| {
            SyncError::stream(
                "making the slot a failover slot (ALTER_REPLICATION_SLOT)",
                e,
            )
        })?;
    tracing::info!(
        slot,
        "the slot is now a failover slot (CALENDAR_SYNC_SLOT_FAILOVER=true)"
    );
    Ok(())
}

/// Failover as the source sees it: whether the slot is a failover slot, the
/// primary's `synchronized_standby_slots` (PostgreSQL 17+; empty or missing:
/// `None`), and which of the slots named there this server does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverState {
    pub failover: Option<bool>,
    pub synchronized_standby_slots: Option<String>,
    /// Names in `synchronized_standby_slots` that are not physical slots of
    /// this server (`None`: none).
    pub missing_standby_slots: Option<String>,
}

/// SQL: the names of `synchronized_standby_slots` that are not physical
/// slots of this server, comma-separated, or NULL.
pub const MISSING_STANDBY_SLOTS_SQL: &str = "(select string_agg(u.name, ', ')
   from unnest(string_to_array(replace(coalesce(current_setting('synchronized_standby_slots', true), ''), ' ', ''), ',')) as u(name)
  where u.name <> '' and not exists (select 1 from pg_replication_slots p where p.slot_name = u.name and p.slot_type = 'physical'))";

impl FailoverState {
    /// A warning when the slot is a failover slot but no standby slot is
    /// waited for: the consumer may then apply what a promoted standby never
    /// received.
    pub fn warning(&self) -> Option<String> {
        (self.failover == Some(true) && self.synchronized_standby_slots.is_none()).then(|| {
            "the slot is a failover slot, but synchronized_standby_slots is empty on the primary: calendar-sync may apply transactions a standby has not received, and after that standby's promotion the calendar would show changes the new primary never had; set synchronized_standby_slots to the standby's physical slot (deploy/README.md, 'Failover')".to_string()
        })
    }

    /// The failover slot gets nothing at all: PostgreSQL holds a failover
    /// slot's changes back until every slot named in
    /// `synchronized_standby_slots` has them, and a slot that does not exist
    /// never will (typically a promoted standby that kept its old primary's
    /// setting).
    pub fn stall(&self) -> Option<String> {
        let missing = self.missing_standby_slots.as_ref()?;
        (self.failover == Some(true)).then(|| {
            format!(
                "synchronized_standby_slots names {missing}, which is not a physical replication slot of this server: PostgreSQL sends a failover slot nothing until it exists, so calendar-sync receives no changes (after a promotion: the old primary's setting? empty it, or name the new standby's physical slot; deploy/README.md, 'Failover')"
            )
        })
    }
}

pub async fn failover_state(source: &Client, slot: &str) -> Result<FailoverState, SyncError> {
    let row = source
        .query_one(
            &format!(
                "select (select (to_jsonb(s) ->> 'failover')::boolean from pg_replication_slots s where slot_name = $1),
                        nullif(current_setting('synchronized_standby_slots', true), ''),
                        {MISSING_STANDBY_SLOTS_SQL}"
            ),
            &[&slot],
        )
        .await
        .map_err(|e| SyncError::db("reading the slot's failover state", e))?;
    Ok(FailoverState {
        failover: row.get(0),
        synchronized_standby_slots: row.get(1),
        missing_standby_slots: row.get(2),
    })
}

/// Logs at start whether the slot survives a promotion (and the warning).
pub async fn report_failover(source: &Client, cfg: &Config) {
    match failover_state(source, &cfg.slot).await {
        Ok(state) => {
            if let Some(w) = state.stall() {
                tracing::warn!(slot = %cfg.slot, "{w}");
            } else if let Some(w) = state.warning() {
                tracing::warn!(slot = %cfg.slot, "{w}");
            } else {
                tracing::info!(slot = %cfg.slot, failover = ?state.failover, synchronized_standby_slots = ?state.synchronized_standby_slots, "slot failover state");
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not read the slot's failover state"),
    }
}

/// Drops a slot whose snapshot never finished. Refuses when a session holds it.
pub async fn drop_unfinished_slot(source: &Client, slot: &str) -> Result<(), SyncError> {
    tracing::warn!(slot, "slot exists but its initial snapshot never committed (interrupted start): dropping it to take a new one");
    source
        .execute("select pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(|e| SyncError::db("dropping the unfinished slot", e))?;
    Ok(())
}

/// PURE: a slot of another database or plugin is never ours to use or drop.
pub fn check_owned(slot_name: &str, slot: Option<&SlotInfo>) -> Result<(), SyncError> {
    if let Some(s) = slot.filter(|s| !s.this_database) {
        return Err(SyncError::fatal(
            FatalKind::OwnershipConflict,
            format!(
                "replication slot {slot_name} belongs to database {:?}, not to the one in DATABASE_URL",
                s.database
            ),
            "slots are per database: give each source database its own CALENDAR_SYNC_SLOT",
        ));
    }
    if let Some(s) = slot.filter(|s| s.plugin.as_deref() != Some("pgoutput")) {
        return Err(SyncError::fatal(
            FatalKind::OwnershipConflict,
            format!(
                "replication slot {slot_name} uses plugin {:?}, not pgoutput",
                s.plugin
            ),
            "choose another CALENDAR_SYNC_SLOT; calendar-sync never drops a slot it did not create",
        ));
    }
    Ok(())
}

/// What a starting session does with its slot (see [`StartPlan::decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPlan {
    /// Stream from the stored progress.
    Resume { progress: Lsn },
    /// Take a new slot and snapshot, dropping an unfinished one first.
    Snapshot { drop_unfinished: bool },
}

impl StartPlan {
    /// PURE: decides from the stored progress and the slot as
    /// `pg_replication_slots` shows it what a starting session does. Every case
    /// that cannot go on is an error that says why and what to do.
    pub fn decide(
        slot_name: &str,
        stored: Option<Lsn>,
        slot: Option<&SlotInfo>,
    ) -> Result<StartPlan, SyncError> {
        check_owned(slot_name, slot)?;
        match (stored, slot) {
        (Some(_), Some(s)) if s.wal_status.as_deref() == Some("lost") => Err(SyncError::fatal(
            FatalKind::SlotGone,
            format!("replication slot {slot_name} was invalidated (wal_status = lost): the WAL it needed is gone"),
            format!("raise max_slot_wal_keep_size; then run `calendar-sync run --resync` once: it drops the slot, takes a new snapshot and removes events of interactions deleted meanwhile (by hand: `delete from calendar_sync_progress where slot_name = '{slot_name}'`, drop the slot, and start again)"),
        )),
        (Some(progress), Some(_)) => Ok(StartPlan::Resume { progress }),
        (Some(_), None) => Err(SyncError::fatal(
            FatalKind::SlotGone,
            format!("replication slot {slot_name} does not exist, but calendar_sync_progress says it was streaming: changes made while it was gone cannot be replayed"),
            format!("to start over, run `calendar-sync run --resync` once: it takes a new snapshot (re-syncing every interaction) and then removes events of interactions deleted meanwhile (by hand: `delete from calendar_sync_progress where slot_name = '{slot_name}'` in the target, run again, then `calendar-sync reconcile`)"),
        )),
        (None, Some(s)) if s.active_pid.is_some() => Err(SyncError::transient(
            "taking the initial snapshot",
            format!(
                "slot {slot_name} is held by pid {:?} (another calendar-sync starting?)",
                s.active_pid
            ),
        )),
        (None, Some(_)) => Ok(StartPlan::Snapshot {
            drop_unfinished: true,
        }),
        (None, None) => Ok(StartPlan::Snapshot {
            drop_unfinished: false,
        }),
    }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> SlotInfo {
        SlotInfo::sample(Lsn(100))
    }

    #[test]
    fn a_slot_with_progress_resumes_from_the_progress() {
        assert_eq!(
            StartPlan::decide("s", Some(Lsn(42)), Some(&slot())).ok(),
            Some(StartPlan::Resume { progress: Lsn(42) })
        );
    }

    #[test]
    fn no_progress_takes_a_snapshot_dropping_an_unfinished_slot() {
        assert_eq!(
            StartPlan::decide("s", None, None).ok(),
            Some(StartPlan::Snapshot {
                drop_unfinished: false
            })
        );
        assert_eq!(
            StartPlan::decide("s", None, Some(&slot())).ok(),
            Some(StartPlan::Snapshot {
                drop_unfinished: true
            })
        );
    }

    #[test]
    fn a_standby_slot_the_server_lacks_stalls_only_a_failover_slot() {
        let state = |failover, missing: Option<&str>| FailoverState {
            failover,
            synchronized_standby_slots: Some("standby1".into()),
            missing_standby_slots: missing.map(String::from),
        };
        assert!(state(Some(true), Some("standby1"))
            .stall()
            .is_some_and(|w| w.contains("names standby1")));
        assert_eq!(state(Some(false), Some("standby1")).stall(), None);
        assert_eq!(state(Some(true), None).stall(), None);
        assert_eq!(state(Some(true), None).warning(), None);
    }

    #[test]
    fn cases_that_cannot_go_on_are_errors_of_the_right_kind() {
        let lost = SlotInfo {
            wal_status: Some("lost".into()),
            ..slot()
        };
        let active = SlotInfo {
            active_pid: Some(7),
            ..slot()
        };
        let other_db = SlotInfo {
            this_database: false,
            ..slot()
        };
        let other_plugin = SlotInfo {
            plugin: Some("wal2json".into()),
            ..slot()
        };
        let kind = |r: Result<StartPlan, SyncError>| r.err().and_then(|e| e.kind());
        let gone = Some(FatalKind::SlotGone);
        let not_ours = Some(FatalKind::OwnershipConflict);
        let decide = StartPlan::decide;
        assert_eq!(kind(decide("s", Some(Lsn(1)), Some(&lost))), gone);
        assert_eq!(kind(decide("s", Some(Lsn(1)), None)), gone);
        assert_eq!(kind(decide("s", None, Some(&other_db))), not_ours);
        assert_eq!(
            kind(decide("s", Some(Lsn(1)), Some(&other_plugin))),
            not_ours
        );
        assert!(decide("s", None, Some(&active)).is_err_and(|e| e.is_transient()));
    }
}
