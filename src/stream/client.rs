//! The replication connection (pgwire-replication), the slot, and the initial
//! snapshot.
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

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgwire_replication::{ReplicationClient, ReplicationConfig};
use tokio_postgres::Client;

use crate::apply::{BatchKind, RowChange, Writer};
use crate::changes::{Party, TableId, TrackedTables};
use crate::config::Config;
use crate::db::{self, quote_ident, quote_literal};
use crate::error::SyncError;
use crate::lsn::Lsn;
use crate::mapping::fields::contact_name;
use crate::mapping::InteractionRow;
use crate::stream::Shutdown;
use crate::tls::TlsSettings;

/// Rows fetched per round trip while copying the snapshot.
const SNAPSHOT_BATCH: i32 = 5000;
/// At most one snapshot progress line per this interval.
const SNAPSHOT_LOG_EVERY: Duration = Duration::from_secs(5);

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
}

pub async fn slot_info(source: &Client, slot: &str) -> Result<Option<SlotInfo>, SyncError> {
    let row = source
        .query_opt(
            "select active_pid, wal_status, plugin::text, database::text, confirmed_flush_lsn,
                    database = current_database()
               from pg_replication_slots where slot_name = $1",
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
    .with_wakeup_interval(Duration::from_secs(5))
    // Values arrive as text: pin the formats the decoder reads.
    .with_options("-c datestyle=ISO,YMD -c timezone=UTC -c intervalstyle=postgres");
    rc.application_name = Some(format!("{}-{}", db::APPLICATION_NAME, cfg.slot));
    Ok(rc)
}

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
/// `lock` is the session holding the slot's advisory lock ([`lock_slot`]).
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
    // The pre-15 spelling: also accepted by newer servers (and RDS on 13/14).
    let rows = repl
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
            cfg.slot
        ))
        .await
        .map_err(|e| SyncError::stream("creating the replication slot", e))?;
    let text = |i: usize| -> Result<String, SyncError> {
        rows.first()
            .and_then(|r| r.get(i))
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| {
                SyncError::fatal(
                    "CREATE_REPLICATION_SLOT returned no consistent point or snapshot",
                    "see the server log",
                )
            })
    };
    let consistent_point: Lsn = text(1)?.parse().map_err(|e| {
        SyncError::fatal(
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
    writer.begin(BatchKind::Snapshot { consistent_point });
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
    let p = &cfg.participants;
    let q = quote_ident;
    let parties = [
        (
            Party::Customer,
            format!(
                "select {}, {}::text from {}",
                q(&p.customer_id),
                q(&p.customer_name),
                q(&p.customer_table)
            ),
        ),
        (
            Party::Contact,
            format!(
                "select {}, {}::text, {}::text, {}::text from {}",
                q(&p.contact_id),
                q(&p.contact_first_name),
                q(&p.contact_last_name),
                q(&p.contact_email),
                q(&p.contact_table)
            ),
        ),
    ];
    for (party, select) in parties {
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
                        format!("{} ids must be uuids: {e}", party.as_str()),
                        "check CALENDAR_SYNC_CUSTOMER_ID_COLUMN / CALENDAR_SYNC_CONTACT_ID_COLUMN",
                    )
                })?;
                let text = |i: usize| r.try_get::<_, Option<String>>(i).ok().flatten();
                let name = match party {
                    Party::Customer => text(1),
                    Party::Contact => {
                        contact_name(text(1).as_deref(), text(2).as_deref(), text(3).as_deref())
                    }
                };
                ids.push(id);
                names.push(name);
            }
            writer.copy_party_names(party, &ids, &names).await?;
        }
    }
    Ok(())
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

/// Checks what the server must offer before a slot can stream, so that each
/// missing piece is one clear error with its fix. Returns the tables the
/// session follows.
pub async fn preflight(source: &Client, cfg: &Config) -> Result<TrackedTables, SyncError> {
    let err = |what: &'static str| move |e| SyncError::db(what, e);
    let version: i32 = source
        .query_one("select current_setting('server_version_num')::int", &[])
        .await
        .map_err(err("reading server_version_num"))?
        .get(0);
    if version < 140000 {
        return Err(SyncError::fatal(
            format!("PostgreSQL {} is too old: pgoutput accepts logical messages (echo suppression) from 14 on", version / 10000),
            "upgrade the source to PostgreSQL 14 or newer (15+ for publication column lists)",
        ));
    }
    let wal_level: String = source
        .query_one("select current_setting('wal_level')", &[])
        .await
        .map_err(err("reading wal_level"))?
        .get(0);
    if wal_level != "logical" {
        return Err(SyncError::fatal(
            format!("wal_level is {wal_level}, logical replication needs logical"),
            "set wal_level = logical and restart PostgreSQL (on RDS: parameter rds.logical_replication = 1, then reboot)",
        ));
    }
    let may_replicate: bool = source
        .query_one(
            "select r.rolsuper or r.rolreplication
                    or (exists (select 1 from pg_roles where rolname = 'rds_replication')
                        and pg_has_role(current_user, 'rds_replication', 'member'))
               from pg_roles r where r.rolname = current_user",
            &[],
        )
        .await
        .map_err(err("reading the role's attributes"))?
        .get(0);
    if !may_replicate {
        return Err(SyncError::fatal(
            "the database role has no replication rights",
            "ALTER ROLE <role> REPLICATION (on RDS: GRANT rds_replication TO <role>)",
        ));
    }
    let tracked = resolve_tables(source, cfg).await?;
    check_publication(source, cfg, &tracked).await?;
    Ok(tracked)
}

/// The configured table names, each with what stops working without it.
fn configured_tables(cfg: &Config) -> [(&str, &'static str); 3] {
    let p = &cfg.participants;
    [
        ("interaction", "no change of an interaction would arrive"),
        (
            p.customer_table.as_str(),
            "customer renames would no longer refresh participants",
        ),
        (
            p.contact_table.as_str(),
            "contact renames would no longer refresh participants",
        ),
    ]
}

/// Resolves interaction, customer and contact to the tables they name in
/// this connection's search_path (the ones `migrate` put in the publication):
/// relation OID and schema-qualified name. The session then follows these
/// tables by OID (see `changes`' module docs).
///
/// A name that resolves to nothing is transient: the likely cause is a CRM
/// migration that renamed the table for a moment (a running session follows
/// such a rename; a starting one cannot know which table it should follow).
pub async fn resolve_tables(source: &Client, cfg: &Config) -> Result<TrackedTables, SyncError> {
    let [interaction, customer, contact] = configured_tables(cfg).map(|(table, _)| table);
    Ok(TrackedTables {
        interaction: resolve_table(source, interaction).await?,
        customer: resolve_table(source, customer).await?,
        contact: resolve_table(source, contact).await?,
    })
}

async fn resolve_table(source: &Client, table: &str) -> Result<TableId, SyncError> {
    let row = source
        .query_opt(
            "select c.oid, n.nspname::text, c.relname::text
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where c.oid = to_regclass($1)",
            &[&quote_ident(table)],
        )
        .await
        .map_err(|e| SyncError::db(format!("looking up table {table}"), e))?;
    let Some(row) = row else {
        return Err(SyncError::transient(
            format!("looking up table {table}"),
            format!("no table {table} in the search_path of DATABASE_URL (renamed by a running migration? calendar-sync retries); if it lives in another schema, set options=-csearch_path=<schema> in DATABASE_URL"),
        ));
    };
    Ok(TableId {
        oid: row.get(0),
        schema: row.get(1),
        name: row.get(2),
    })
}

/// The publication exists and holds the tracked tables, by OID (a renamed one
/// still counts), and no configured name now names another table than the
/// tracked one. Run at start and before every acknowledgement (see the
/// runner's module docs): `ALTER PUBLICATION .. DROP TABLE`, or `ALTER TABLE ..
/// DROP COLUMN .. CASCADE` of a listed column, takes a table out of the
/// publication without a trace in the stream, after which its changes would
/// silently stop arriving.
pub async fn check_publication(
    source: &Client,
    cfg: &Config,
    tracked: &TrackedTables,
) -> Result<(), SyncError> {
    let names = configured_tables(cfg);
    // pg_publication_tables covers FOR TABLE, FOR TABLES IN SCHEMA and FOR ALL
    // TABLES; (schemaname, tablename) is unique in pg_class.
    let row = source
        .query_one(
            "select exists (select 1 from pg_publication where pubname = $1),
                    array(select c.oid
                            from pg_publication_tables t
                            join pg_namespace n on n.nspname = t.schemaname
                            join pg_class c on c.relnamespace = n.oid and c.relname = t.tablename
                           where t.pubname = $1),
                    to_regclass($2)::oid, to_regclass($3)::oid, to_regclass($4)::oid",
            &[
                &cfg.publication,
                &quote_ident(names[0].0),
                &quote_ident(names[1].0),
                &quote_ident(names[2].0),
            ],
        )
        .await
        .map_err(|e| SyncError::db("reading the publication's tables", e))?;
    let exists: bool = row.get(0);
    if !exists {
        return Err(SyncError::fatal(
            format!("publication {} does not exist", cfg.publication),
            "run `calendar-sync migrate` (it creates the publication), or set CALENDAR_SYNC_PUBLICATION",
        ));
    }
    let published: Vec<u32> = row.get(1);
    for (i, (ours, (table, consequence))) in tracked.iter().zip(names).enumerate() {
        if !published.contains(&ours.oid) {
            return Err(SyncError::fatal(
                format!(
                    "publication {} does not publish {table} ({ours}): {consequence}",
                    cfg.publication
                ),
                format!(
                    "a DROP COLUMN ... CASCADE of a published column removes the table from the publication; restore the column, then ALTER PUBLICATION {} ADD TABLE {table} (<its mapped columns>), or drop the publication and run `calendar-sync migrate`",
                    cfg.publication
                ),
            ));
        }
        let now: Option<u32> = row.get(i + 2);
        if let Some(now) = now.filter(|now| *now != ours.oid) {
            return Err(SyncError::fatal(
                format!(
                    "{table} now names another table (relation id {now}) than the one calendar-sync follows ({ours}): it was dropped and re-created, or swapped for another"
                ),
                format!(
                    "calendar-sync follows a table by identity and will not guess which of the two holds the data; to follow the new {table}: make sure it is in publication {} (ALTER PUBLICATION {} ADD TABLE ..., or drop the publication and run `calendar-sync migrate`), then drop the slot (select pg_drop_replication_slot('{slot}')) and `delete from calendar_sync_progress where slot_name = '{slot}'` in the target, and start again to take a new snapshot",
                    cfg.publication,
                    cfg.publication,
                    slot = cfg.slot
                ),
            ));
        }
    }
    Ok(())
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
