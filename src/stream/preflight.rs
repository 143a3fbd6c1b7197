//! What the server must offer before a slot can stream, each missing piece
//! one clear error with its fix; which tables are ours (by OID); and the
//! publication check that runs before every acknowledgement (decision 24).

use crate::changes::{TableId, TrackedTables};
use crate::config::Config;
use crate::db::quote_ident;
use crate::error::{FatalKind, SyncError};
use crate::mapping::interaction::MAPPED_COLUMNS;
use tokio_postgres::Client;

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
            FatalKind::Config,
            format!("PostgreSQL {} is too old: pgoutput accepts logical messages (echo suppression) from 14 on", version / 10000),
            "upgrade the source to PostgreSQL 14 or newer (15+ for publication column lists)",
        ));
    }
    if cfg.slot_failover && version < 170000 {
        return Err(SyncError::fatal(
            FatalKind::Config,
            format!(
                "CALENDAR_SYNC_SLOT_FAILOVER=true, but the source runs PostgreSQL {}: failover slots need 17 or newer",
                version / 10000
            ),
            "set CALENDAR_SYNC_SLOT_FAILOVER=false (on a Multi-AZ DB instance the slot survives a failover anyway; see deploy/README.md, 'Failover'), or upgrade the source to PostgreSQL 17+",
        ));
    }
    let wal_level: String = source
        .query_one("select current_setting('wal_level')", &[])
        .await
        .map_err(err("reading wal_level"))?
        .get(0);
    if wal_level != "logical" {
        return Err(SyncError::fatal(
            FatalKind::Config,
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
            FatalKind::Permission,
            "the database role has no replication rights",
            "ALTER ROLE <role> REPLICATION (on RDS: GRANT rds_replication TO <role>)",
        ));
    }
    let tracked = resolve_tables(source, cfg).await?;
    check_publication(source, cfg, &tracked).await?;
    check_identity_keys(source, cfg).await?;
    Ok(tracked)
}

/// Each tracked table with the column that identifies its rows: what a
/// DELETE's old key must carry for calendar-sync to know the deleted row.
fn id_columns(cfg: &Config) -> [(&str, &str); 3] {
    let p = &cfg.participants;
    [
        ("interaction", MAPPED_COLUMNS[0]),
        (p.customer_table.as_str(), p.customer_id.as_str()),
        (p.contact_table.as_str(), p.contact_id.as_str()),
    ]
}

/// The replica identity of each tracked table holds its id column (issue 13).
/// A DELETE, and an UPDATE that changes an identity column, is logged with an
/// old key of the identity's key columns only (`REPLICA IDENTITY DEFAULT`: the
/// primary key; `USING INDEX`: that index's key columns, not its INCLUDE
/// ones). Without the id column that key cannot say which row it was, and the
/// stream would stop at the first such change. Run by `migrate` and at start,
/// before any slot work.
///
/// Only that is judged here: FULL holds every column; NOTHING, or no primary
/// key, sends no old key at all (PostgreSQL then refuses the CRM's UPDATEs and
/// DELETEs of a published table, which `migrate` refuses up front). A missing
/// table or id column is reported by the checks that look for them.
pub async fn check_identity_keys(source: &Client, cfg: &Config) -> Result<(), SyncError> {
    for (table, id) in id_columns(cfg) {
        check_identity_key(source, table, id).await?;
    }
    Ok(())
}

async fn check_identity_key(source: &Client, table: &str, id: &str) -> Result<(), SyncError> {
    let row = source
        .query_opt(
            "select c.relreplident::text, ci.relname::text,
                    array(select a.attname::text
                            from unnest(i.indkey::int2[]) with ordinality k(attnum, n)
                            join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum
                           where k.n <= i.indnkeyatts
                           order by k.n),
                    exists (select 1 from pg_attribute a
                             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                               and a.attname::text = $2)
               from pg_class c
               left join pg_index i
                      on i.indrelid = c.oid
                     and ((c.relreplident = 'd' and i.indisprimary)
                          or (c.relreplident = 'i' and i.indisreplident))
               left join pg_class ci on ci.oid = i.indexrelid
              where c.oid = to_regclass($1)",
            &[&quote_ident(table), &id],
        )
        .await
        .map_err(|e| SyncError::db(format!("reading the replica identity of {table}"), e))?;
    let Some(row) = row else {
        return Ok(());
    };
    let (kind, index, key, has_id): (String, Option<String>, Vec<String>, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let Some(index) = index.filter(|_| has_id && !key.iter().any(|c| c == id)) else {
        return Ok(());
    };
    let (identity, way_out) = if kind == "d" {
        (
            format!("its primary key {index}"),
            format!("make {id} the primary key of {table}, or ALTER TABLE {table} REPLICA IDENTITY USING INDEX <a unique index whose key columns include {id}>"),
        )
    } else {
        (
            format!("index {index}"),
            format!("ALTER TABLE {table} REPLICA IDENTITY DEFAULT (the primary key on {id}), or REPLICA IDENTITY USING INDEX <a unique index whose key columns include {id}>"),
        )
    };
    Err(SyncError::fatal(
        FatalKind::SchemaChanged,
        format!(
            "the replica identity of {table} is {identity} ({}), which does not hold {id}: PostgreSQL logs a DELETE of {table} (and an UPDATE of those columns) with only these columns as its old key, from which calendar-sync cannot tell which row it was",
            key.join(", ")
        ),
        way_out,
    ))
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
            FatalKind::PublicationMissing,
            format!("publication {} does not exist", cfg.publication),
            "run `calendar-sync migrate` (it creates the publication), or set CALENDAR_SYNC_PUBLICATION",
        ));
    }
    let published: Vec<u32> = row.get(1);
    for (i, (ours, (table, consequence))) in tracked.iter().zip(names).enumerate() {
        if !published.contains(&ours.oid) {
            return Err(SyncError::fatal(
                FatalKind::PublicationMissing,
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
                FatalKind::SchemaChanged,
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
