//! `calendar-sync migrate`: idempotent schema setup, safe on every deploy.
//!
//! Migrations are embedded SQL files (`migrations/source`, `migrations/target`),
//! each applied once per database and recorded in
//! `calendar_sync_schema_migrations`, under an advisory lock so two tasks
//! deploying at once do not race. Then the publication is created. The slot is
//! never created here: `run` creates it together with its snapshot (contract §7).

use tokio_postgres::Client;

use crate::config::Config;
use crate::db::{self, quote_ident};
use crate::error::{FatalKind, SyncError};
use crate::mapping::interaction::MAPPED_COLUMNS;
use crate::stream::preflight::check_identity_keys;

struct Migration {
    name: &'static str,
    sql: &'static str,
}

const SOURCE_MIGRATIONS: &[Migration] = &[
    Migration {
        name: "source/0001_interaction_synced_at",
        sql: include_str!("../migrations/source/0001_interaction_synced_at.sql"),
    },
    Migration {
        name: "source/0002_echo_transactions",
        sql: include_str!("../migrations/source/0002_echo_transactions.sql"),
    },
    Migration {
        name: "source/0003_echo_key",
        sql: include_str!("../migrations/source/0003_echo_key.sql"),
    },
    Migration {
        name: "source/0004_slot_owner",
        sql: include_str!("../migrations/source/0004_slot_owner.sql"),
    },
];

const TARGET_MIGRATIONS: &[Migration] = &[
    Migration {
        name: "target/0001_calendar_tables",
        sql: include_str!("../migrations/target/0001_calendar_tables.sql"),
    },
    Migration {
        name: "target/0002_party_names",
        sql: include_str!("../migrations/target/0002_party_names.sql"),
    },
    Migration {
        name: "target/0003_drop_duplicate_related_index",
        sql: include_str!("../migrations/target/0003_drop_duplicate_related_index.sql"),
    },
    Migration {
        name: "target/0004_target_id_and_resync",
        sql: include_str!("../migrations/target/0004_target_id_and_resync.sql"),
    },
];

/// Any constant: the advisory lock that serialises concurrent `migrate`s.
const MIGRATION_LOCK: i64 = 0x6361_6c73_796e_6301;

/// What `migrate` did, for the operator.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    pub applied: Vec<&'static str>,
    pub publication_created: bool,
}

pub async fn migrate(cfg: &Config) -> Result<MigrateReport, SyncError> {
    let source = db::connect(&cfg.source_url, "source").await?;
    let mut report = MigrateReport::default();
    if source
        .query_opt("select to_regclass('interaction')::text", &[])
        .await
        .map_err(|e| SyncError::db("looking for the interaction table", e))?
        .and_then(|r| r.get::<_, Option<String>>(0))
        .is_none()
    {
        return Err(SyncError::fatal(
            FatalKind::Config,
            "the source database has no interaction table in its search_path",
            "point DATABASE_URL at the CRM database (and its schema via options=-csearch_path=...)",
        ));
    }
    report
        .applied
        .extend(apply(&source, SOURCE_MIGRATIONS).await?);
    match &cfg.target_url {
        None => report
            .applied
            .extend(apply(&source, TARGET_MIGRATIONS).await?),
        Some(url) => {
            let target = db::connect(url, "target").await?;
            report
                .applied
                .extend(apply(&target, TARGET_MIGRATIONS).await?);
        }
    }
    report.publication_created = locked(&source, "creating the publication", |c| async move {
        Ok(ensure_publication(c, cfg).await?)
    })
    .await?;
    Ok(report)
}

/// Runs `step` in a transaction that holds the migration lock first, so that
/// concurrent `migrate`s (two tasks of a first deploy) take turns: even
/// `create ... if not exists` fails when another session creates the same
/// object at the same moment (a unique violation in the catalog).
async fn locked<'a, T, F, Fut>(client: &'a Client, what: &str, step: F) -> Result<T, SyncError>
where
    F: FnOnce(&'a Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, LockedError>>,
{
    // `create .. if not exists` of an object that exists sends a NOTICE
    // ("already exists, skipping"), which the driver logs at INFO: on every
    // `migrate` of an up-to-date database, and on the first of a same-database
    // setup (the migrations table is created for both roles). Not news.
    client
        .batch_execute("begin; set local client_min_messages = warning")
        .await
        .map_err(|e| SyncError::db(format!("beginning: {what}"), e))?;
    let result = async {
        client
            .execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        step(client).await
    }
    .await;
    match result {
        Ok(v) => {
            client
                .batch_execute("commit")
                .await
                .map_err(|e| SyncError::db(format!("committing: {what}"), e))?;
            Ok(v)
        }
        Err(e) => {
            let _ = client.batch_execute("rollback").await;
            Err(match e {
                LockedError::Db(e) => SyncError::db(what.to_string(), e),
                LockedError::Sync(e) => e,
            })
        }
    }
}

/// An error inside [`locked`]: from the driver, or already classified.
enum LockedError {
    Db(tokio_postgres::Error),
    Sync(SyncError),
}

impl From<tokio_postgres::Error> for LockedError {
    fn from(e: tokio_postgres::Error) -> Self {
        LockedError::Db(e)
    }
}

impl From<SyncError> for LockedError {
    fn from(e: SyncError) -> Self {
        LockedError::Sync(e)
    }
}

async fn apply(client: &Client, migrations: &[Migration]) -> Result<Vec<&'static str>, SyncError> {
    locked(
        client,
        "creating calendar_sync_schema_migrations",
        |c| async move {
            c.batch_execute(
                "create table if not exists calendar_sync_schema_migrations (
                 name text primary key,
                 applied_at timestamptz not null default now())",
            )
            .await?;
            Ok(())
        },
    )
    .await?;
    let mut applied = Vec::new();
    for m in migrations {
        let what = format!("applying migration {}", m.name);
        let ran = locked(client, &what, |client| async move {
            let done = client
                .query_opt(
                    "select 1 from calendar_sync_schema_migrations where name = $1",
                    &[&m.name],
                )
                .await?
                .is_some();
            if !done {
                client.batch_execute(m.sql).await?;
                client
                    .execute(
                        "insert into calendar_sync_schema_migrations (name) values ($1)",
                        &[&m.name],
                    )
                    .await?;
            }
            Ok(!done)
        })
        .await?;
        if ran {
            tracing::info!(migration = m.name, "applied migration");
            applied.push(m.name);
        }
    }
    Ok(applied)
}

/// Creates the publication if it is missing; returns whether it did. Runs
/// under the migration lock (see [`locked`]): two first deploys would
/// otherwise both see it missing and one would fail creating it.
///
/// `interaction` is published with a column list of the mapped columns only
/// (PostgreSQL 15+), so `private_notes` and the other unmapped columns never
/// enter the stream. customer and contact publish only their id and name
/// columns.
async fn ensure_publication(source: &Client, cfg: &Config) -> Result<bool, SyncError> {
    // Also when the publication exists: an identity that does not hold a
    // table's id column stops `run` at the first DELETE (issue 13), whenever
    // it was set, so every deploy's `migrate` looks again.
    check_identity_keys(source, cfg).await?;
    let exists = source
        .query_opt(
            "select 1 from pg_publication where pubname = $1",
            &[&cfg.publication],
        )
        .await
        .map_err(|e| SyncError::db("looking up the publication", e))?
        .is_some();
    if exists {
        tracing::info!(publication = %cfg.publication, "publication exists; left as it is");
        return Ok(false);
    }
    let version: i32 = source
        .query_one("select current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| SyncError::db("reading server_version_num", e))?
        .get(0);
    let p = &cfg.participants;
    let tables: [(&str, Vec<&str>); 3] = [
        ("interaction", MAPPED_COLUMNS.to_vec()),
        (&p.customer_table, vec![&p.customer_id, &p.customer_name]),
        (
            &p.contact_table,
            vec![
                &p.contact_id,
                &p.contact_first_name,
                &p.contact_last_name,
                &p.contact_email,
            ],
        ),
    ];
    let mut parts = Vec::new();
    for (table, columns) in &tables {
        let present: Vec<String> = source
            .query(
                "select attname::text from pg_attribute
                  where attrelid = to_regclass($1) and attnum > 0 and not attisdropped",
                &[&quote_ident(table)],
            )
            .await
            .map_err(|e| SyncError::db(format!("reading the columns of {table}"), e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if present.is_empty() {
            return Err(SyncError::fatal(
                FatalKind::SchemaChanged,
                format!("table {table} not found in the source database"),
                "calendar-sync needs interaction, customer and contact (names configurable, see README)",
            ));
        }
        if let Some(missing) = columns.iter().find(|c| !present.iter().any(|p| p == *c)) {
            return Err(SyncError::fatal(
                FatalKind::SchemaChanged,
                format!("column {table}.{missing} not found"),
                "calendar-sync maps this column; check the table or the CALENDAR_SYNC_* column settings",
            ));
        }
        if version >= 150000 {
            check_replica_identity(source, table, columns).await?;
        }
        let list = columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        parts.push(if version >= 150000 {
            format!("{} ({list})", quote_ident(table))
        } else {
            quote_ident(table)
        });
    }
    if version < 150000 {
        tracing::warn!("PostgreSQL before 15 has no publication column lists: interaction is published whole; calendar-sync still reads only mapped columns");
    }
    let sql = format!(
        "create publication {} for table {}",
        quote_ident(&cfg.publication),
        parts.join(", ")
    );
    source
        .batch_execute(&sql)
        .await
        .map_err(|e| SyncError::db("creating the publication", e))?;
    tracing::info!(publication = %cfg.publication, "created publication");
    Ok(true)
}

/// A publication's column list must cover the table's replica identity, or
/// PostgreSQL refuses every UPDATE and DELETE of the table: creating it would
/// break the CRM. Checked before `create publication`, with the way out.
async fn check_replica_identity(
    source: &Client,
    table: &str,
    columns: &[&str],
) -> Result<(), SyncError> {
    let row = source
        .query_one(
            "select c.relreplident::text,
                    coalesce((select array_agg(a.attname::text order by a.attnum)
                                from pg_index i
                                join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
                               where i.indrelid = c.oid
                                 and ((c.relreplident = 'd' and i.indisprimary)
                                      or (c.relreplident = 'i' and i.indisreplident))), '{}')
               from pg_class c where c.oid = to_regclass($1)",
            &[&quote_ident(table)],
        )
        .await
        .map_err(|e| SyncError::db(format!("reading the replica identity of {table}"), e))?;
    let (kind, identity): (String, Vec<String>) = (row.get(0), row.get(1));
    let refuse = |why: String| {
        Err(SyncError::fatal(
            FatalKind::SchemaChanged,
            format!("cannot publish {table} for calendar-sync: {why}"),
            format!(
                "PostgreSQL requires the publication's column list ({}) to cover the replica identity, else UPDATE and DELETE of {table} fail; use ALTER TABLE {table} REPLICA IDENTITY DEFAULT with a primary key on the mapped id column",
                columns.join(", ")
            ),
        ))
    };
    match kind.as_str() {
        "f" => refuse("its REPLICA IDENTITY is FULL (every column, private ones included)".into()),
        "n" => refuse(
            "its REPLICA IDENTITY is NOTHING, so its UPDATEs and DELETEs cannot be published"
                .into(),
        ),
        _ if identity.is_empty() => {
            refuse("it has no primary key (or replica identity index)".into())
        }
        _ => match identity.iter().find(|c| !columns.contains(&c.as_str())) {
            Some(c) => refuse(format!(
                "its replica identity includes {c}, which calendar-sync does not publish"
            )),
            None => Ok(()),
        },
    }
}
