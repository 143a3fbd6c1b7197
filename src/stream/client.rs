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
use pgwire_replication::{ReplicationClient, ReplicationConfig, TlsConfig};
use tokio_postgres::{Client, Row};

use crate::apply::Applier;
use crate::config::Config;
use crate::db::{self, quote_ident, quote_literal};
use crate::error::SyncError;
use crate::lsn::Lsn;
use crate::mapping::fields::{contact_name, participants};
use crate::mapping::InteractionRow;

/// Rows fetched per round trip while copying the snapshot.
const SNAPSHOT_BATCH: i32 = 1000;

/// The slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub active_pid: Option<i32>,
    pub wal_status: Option<String>,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub confirmed_flush: Option<Lsn>,
}

pub async fn slot_info(source: &Client, slot: &str) -> Result<Option<SlotInfo>, SyncError> {
    let row = source
        .query_opt(
            "select active_pid, wal_status, plugin::text, database::text, confirmed_flush_lsn
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
    }))
}

/// The progress row of `slot`: `(lsn, snapshot_lsn)`.
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
    let pg = tokio_postgres::Config::from_str(cfg.source_url.expose()).map_err(|e| {
        SyncError::fatal(
            format!("DATABASE_URL: {e}"),
            "expected postgres://user:password@host:port/dbname",
        )
    })?;
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
    let tls = match pg.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable | tokio_postgres::config::SslMode::Prefer => {
            TlsConfig::disabled()
        }
        _ => TlsConfig::require(),
    };
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

/// Creates the slot, copies the interactions of its exported snapshot into the
/// target with the progress row, and returns the session ready to `start()`.
pub async fn create_slot_and_snapshot(
    cfg: &Config,
    applier: &mut Applier,
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

    let reader = db::connect(&cfg.source_url, "source (snapshot)").await?;
    let copied = copy_snapshot(cfg, &reader, &snapshot, consistent_point, applier).await;
    if copied.is_err() {
        applier.rollback().await;
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
    applier: &mut Applier,
) -> Result<u64, SyncError> {
    let err = |what: &'static str| move |e| SyncError::db(what, e);
    reader
        .batch_execute(&format!(
            "begin isolation level repeatable read read only; set transaction snapshot {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(err("importing the slot's snapshot"))?;
    let snapshot_ts: DateTime<Utc> = reader
        .query_one("select now()", &[])
        .await
        .map_err(err("reading the snapshot time"))?
        .get(0);
    let p = &cfg.participants;
    let q = quote_ident;
    reader
        .batch_execute(&format!(
            "declare calendar_sync_snapshot no scroll cursor for
             select {cols}, cu.{cname}::text as p_customer, co.{first}::text as p_first,
                    co.{last}::text as p_last, co.{email}::text as p_email
               from interaction i
               left join {customer} cu on cu.{cid} = i.customer_id
               left join {contact} co on co.{tid} = i.contact_id",
            cols = InteractionRow::select_list("i"),
            cname = q(&p.customer_name),
            first = q(&p.contact_first_name),
            last = q(&p.contact_last_name),
            email = q(&p.contact_email),
            customer = q(&p.customer_table),
            cid = q(&p.customer_id),
            contact = q(&p.contact_table),
            tid = q(&p.contact_id),
        ))
        .await
        .map_err(err("opening the snapshot cursor"))?;
    // The snapshot is applied like a stream of INSERTs at the snapshot time
    // (contract §7), as one "source transaction" ending at the consistent point.
    applier.begin(consistent_point, snapshot_ts);
    applier.open().await?;
    let fetch = format!("fetch {SNAPSHOT_BATCH} from calendar_sync_snapshot");
    let mut copied = 0u64;
    loop {
        let rows = reader
            .query(fetch.as_str(), &[])
            .await
            .map_err(err("reading the snapshot"))?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let id = row.try_get("interaction_id").map_err(|e| {
                SyncError::fatal(
                    format!("snapshot: interaction_id: {e}"),
                    "interaction_id must be a uuid",
                )
            })?;
            applier
                .upsert(
                    id,
                    InteractionRow::from_sql(row),
                    Some(snapshot_participants(row)),
                )
                .await?;
            copied += 1;
        }
    }
    reader
        .batch_execute("commit")
        .await
        .map_err(err("closing the snapshot"))?;
    applier.commit(consistent_point).await?;
    Ok(copied)
}

fn snapshot_participants(row: &Row) -> Vec<String> {
    let get = |c: &str| row.try_get::<_, Option<String>>(c).ok().flatten();
    let has_contact = row
        .try_get::<_, Option<uuid::Uuid>>("contact_id")
        .ok()
        .flatten()
        .is_some();
    let contact = if has_contact {
        contact_name(
            get("p_first").as_deref(),
            get("p_last").as_deref(),
            get("p_email").as_deref(),
        )
    } else {
        None
    };
    participants(get("p_customer"), contact)
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
