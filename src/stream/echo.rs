//! IO: is a transaction that carries the echo marker really calendar-sync's?
//!
//! Any role may call `pg_logical_emit_message`, so the marker alone would let
//! any CRM session hide its changes from the calendar. calendar-sync's own
//! transactions also insert their id into `calendar_sync_echo`
//! ([`crate::apply::sql::ECHO_MARKER`]), a table only calendar-sync's role may
//! write (migrations/source/0002). A marked transaction is ours only if its
//! Begin xid is there. Whichever consumer wrote the row, every consumer honours
//! it, so two consumers on one database never echo each other.
//!
//! # xid
//!
//! pgoutput's Begin carries the 32-bit xid; the table holds the 64-bit
//! `xid8`. The transaction being decoded has committed, so its full id is the
//! most recent one below the current snapshot's `xmax` with those low 32
//! bits (live ids span less than 2^31, PostgreSQL's wraparound limit): an
//! exact primary-key lookup, never confused by wraparound.
//!
//! # Pruning
//!
//! A row is needed while some slot may still stream its transaction. The
//! row's `lsn` is that of the transaction's marker message, its first WAL
//! record; a slot's `restart_lsn` is "the oldest WAL which still might be
//! required by the consumer of this slot" (PostgreSQL docs,
//! `pg_replication_slots`), so while a slot may still stream the transaction,
//! its `restart_lsn` is at or below the row's `lsn`. Rows below the lowest
//! `restart_lsn` of the database's logical slots are therefore deleted now and
//! then. (`confirmed_flush_lsn` would not do: a slot confirms transactions that
//! committed earlier but began after a longer one of ours that it has yet to
//! stream.)

use tokio_postgres::{Client, Statement};

use crate::error::SyncError;

/// Rows deleted per pruning round at most, so one round stays short.
const PRUNE_LIMIT: i64 = 10_000;

/// The two statements, prepared on the runner's source session.
pub struct EchoCheck {
    is_ours: Statement,
    prune: Statement,
}

impl EchoCheck {
    pub async fn prepare(source: &Client) -> Result<EchoCheck, SyncError> {
        let prepare = |sql: &'static str| async move {
            source.prepare(sql).await.map_err(|e| {
                SyncError::db(
                    "preparing the echo check on calendar_sync_echo (has `calendar-sync migrate` run? calendar-sync's role needs select, insert and delete on it)",
                    e,
                )
            })
        };
        Ok(EchoCheck {
            is_ours: prepare(
                "select exists (
                     select 1
                       from calendar_sync_echo e,
                            (select pg_snapshot_xmax(pg_current_snapshot())::text::bigint as xmax) s
                      where e.xid = greatest(s.xmax - ((s.xmax - $1::bigint) % 4294967296 + 4294967296) % 4294967296, 0)::text::xid8)",
            )
            .await?,
            prune: prepare(
                "delete from calendar_sync_echo where xid in (
                     select xid from calendar_sync_echo
                      where lsn < (select min(restart_lsn) from pg_replication_slots
                                    where slot_type = 'logical' and database = current_database())
                      limit $1)",
            )
            .await?,
        })
    }

    /// Whether the committed transaction with Begin xid `xid` is calendar-sync's.
    pub async fn is_ours(&self, source: &Client, xid: u32) -> Result<bool, SyncError> {
        let row = source
            .query_one(&self.is_ours, &[&i64::from(xid)])
            .await
            .map_err(|e| {
                SyncError::db("looking up a marked transaction in calendar_sync_echo", e)
            })?;
        row.try_get(0).map_err(|e| {
            SyncError::db(
                "reading the calendar_sync_echo lookup (expected one boolean)",
                e,
            )
        })
    }

    /// Deletes rows no slot of the database can need any more (see the module
    /// docs); returns how many.
    pub async fn prune(&self, source: &Client) -> Result<u64, SyncError> {
        source
            .execute(&self.prune, &[&PRUNE_LIMIT])
            .await
            .map_err(|e| SyncError::db("pruning calendar_sync_echo", e))
    }
}
