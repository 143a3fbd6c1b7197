//! Every statement of the apply path: a named const (or a string built from
//! [`super::columns`]) with its comment, prepared once per connection.
//! Batches are written set-based: arrays bound as parameters and expanded
//! with `unnest`, a few statements per chunk whatever its size.
//!
//! # Plans that cannot go wrong
//!
//! A prepared statement keeps the generic plan it was given after its first
//! executions until the next `ANALYZE` of its tables. Ours are prepared when
//! `calendar_events` (or `calendar_sync_failures`, `calendar_sync_party_names`)
//! may be empty, and then run against millions of rows. So every statement
//! that finds rows by an array of keys is written as one index probe per key,
//! a plan that is right at any table size: `unnest($1) cross join lateral
//! (select .. where key = k.id limit 1)` (a lateral subquery with `limit` is
//! never flattened into a join, and an equality on a unique index is always
//! planned as an index scan); writes go by the `ctid`s such a probe returns
//! (a TID scan). The obvious `key = any($1)` and `update .. from unnest(..)`
//! were planned, on empty tables, as a scan of every row (filtered by the
//! array, or hash-joined), and stayed so (decision 45). Every `ctid` used is
//! of a row this transaction has locked (the chunk's events, `for update`),
//! so it cannot move before the write.
//!
//! # Columns
//!
//! The mapped columns of `calendar_events` are listed once, in
//! [`super::columns`]: the select lists, the `unnest` parameters and the
//! insert and `SET` lists of the event statements are made from it (so those
//! statements are strings built at run time, not `const`).

use std::sync::LazyLock;

use tokio_postgres::{Client, Statement};

use super::columns;
use crate::config::ParticipantSchema;
use crate::db::quote_ident;

/// Columns of `calendar_events` read back as [`crate::mapping::EventFields`],
/// with the event id and the regression guard: `event_id, title, ..,
/// contact_id, source_lsn` ([`columns::stored_columns`]).
pub static EVENT_COLUMNS: LazyLock<String> = LazyLock::new(columns::stored_columns);

/// The existing events of a chunk's interactions (`$1 uuid[]`), locked for the
/// target transaction: nothing else changes them until it commits.
///
/// One unique-index probe per id, whatever the planner knows: the `lateral`
/// subquery with `limit 1` is never flattened into a join, so it is always a
/// nested loop over the ids with an index scan on `(related_table,
/// related_id)`. The obvious `related_id = any($1)` was planned, on a
/// `calendar_events` without statistics yet (a first catch-up, a fresh
/// snapshot), as a scan of every interaction event filtered by the array:
/// O(events x chunk), 64 % of a 100,000-row catch-up (decision 45).
static SELECT_EVENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select e.* from unnest($1::uuid[]) as k(id) cross join lateral (
     select related_id, {columns}
       from calendar_events
      where related_table = 'interaction' and related_id = k.id
      limit 1
        for update) as e",
        columns = EVENT_COLUMNS.as_str()
    )
});

/// Which of `$1 uuid[]` have an open failure (one probe of the open-failure
/// index per id).
const SELECT_FAILING: &str =
    "select f.interaction_id from unnest($1::uuid[]) as k(id) cross join lateral (
     select interaction_id from calendar_sync_failures
      where not resolved and interaction_id = k.id limit 1) as f";

/// Display names of customers `$1 uuid[]` and contacts `$2 uuid[]`, as of the
/// source transaction being applied (see `apply::party`): one primary-key
/// probe per id.
const SELECT_NAMES: &str =
    "select n.party, n.id, n.name from unnest($1::uuid[]) as k(id) cross join lateral (
     select party, id, name from calendar_sync_party_names
      where party = 'customer' and id = k.id limit 1) as n
 union all
 select n.party, n.id, n.name from unnest($2::uuid[]) as k(id) cross join lateral (
     select party, id, name from calendar_sync_party_names
      where party = 'contact' and id = k.id limit 1) as n";

/// Hard delete of events `$1 uuid[]` (locked by `SELECT_EVENTS`), by the
/// `ctid`s of primary-key probes.
const DELETE_EVENTS: &str = "delete from calendar_events e using (
     select x.tid from unnest($1::uuid[]) as k(id) cross join lateral (
         select ctid as tid from calendar_events where event_id = k.id limit 1) as x) as x
  where e.ctid = x.tid";

/// New events, one row per array element: the stored columns from
/// [`columns::unnest_params`] (`unnest($1::uuid[], ..) as v(event_id, ..)`,
/// bound by `columns::EventArrays`; participants travel as array literals,
/// `text` cast to `text[]`), `related_id` the interaction ids.
fn insert_events() -> String {
    format!(
        "insert into calendar_events
             ({columns}, related_table, related_id, synced_from, last_synced_at)
         select {values}, 'interaction', v.related_id, 'interaction', now()
           from {arrays}",
        columns = EVENT_COLUMNS.as_str(),
        values = columns::stored_values(),
        arrays = columns::unnest_params(),
    )
}

/// Changed events in their last state (the arrays of `insert_events`;
/// `related_id` unused), found by the `ctid` of a primary-key probe each. The
/// rows are locked by `SELECT_EVENTS`, and the regression guard was checked
/// in memory (`apply::plan`).
fn update_events() -> String {
    format!(
        "update calendar_events e
            set {set},
                last_synced_at = now()
           from (select v.*, x.tid from {arrays} cross join lateral (
                     select ctid as tid from calendar_events c where c.event_id = v.event_id limit 1
                 ) as x) as v
          where e.ctid = v.tid",
        set = columns::update_assignments(),
        arrays = columns::unnest_params(),
    )
}

/// One `calendar_sync_log` row per action, in LSN order.
const INSERT_LOG: &str = "insert into calendar_sync_log (interaction_id, event_id, action, status, error_message,
        created_by, source_lsn)
 select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::pg_lsn[])";

/// Opens a failure per interaction of `$1`, or updates its open one (contract
/// §7: one open failure per interaction). `$4`: these failures are a retry's,
/// so they count and back off exponentially: 30 s * 2^retry_count, at most an hour.
const RECORD_FAILURES: &str = "insert into calendar_sync_failures (interaction_id, action, error_message, next_retry_at)
 select id, action, message, now() + interval '30 seconds'
   from unnest($1::uuid[], $2::text[], $3::text[]) as f(id, action, message)
 on conflict (interaction_id) where not resolved do update
    set action = excluded.action, error_message = excluded.error_message,
        retry_count = calendar_sync_failures.retry_count + case when $4 then 1 else 0 end,
        last_retry_at = case when $4 then now() else calendar_sync_failures.last_retry_at end,
        next_retry_at = now() + least(interval '30 seconds'
            * power(2, least(calendar_sync_failures.retry_count + case when $4 then 1 else 0 end, 10)),
            interval '1 hour')";

/// A successful sync resolves the interaction's open failure (contract §5).
const RESOLVE_FAILURES: &str = "update calendar_sync_failures set resolved = true
  where not resolved and interaction_id = any($1)";

/// TRUNCATE interaction: every interaction event goes, one log row each
/// (contract §2), set-based. `$1` the LSN.
const TRUNCATE_EVENTS: &str = "with gone as (
     delete from calendar_events where related_table = 'interaction'
     returning event_id, related_id, coalesce(updated_by, created_by) as by)
 insert into calendar_sync_log (interaction_id, event_id, action, status, created_by, source_lsn)
 select related_id, event_id, 'delete', 'success', by, $1 from gone";

/// A customer or contact name (`$1` party, `$2` id, `$3` name), recorded in LSN
/// order; `$4`: the party was deleted.
const RECORD_PARTY_NAME: &str = "with deleted as (
     delete from calendar_sync_party_names where $4 and party = $1 and id = $2)
 insert into calendar_sync_party_names (party, id, name)
 select $1, $2, $3 where not $4
 on conflict (party, id) do update set name = excluded.name";

/// The initial snapshot's names (`$1` party, `$2 uuid[]`, `$3 text[]`).
const COPY_PARTY_NAMES: &str = "insert into calendar_sync_party_names (party, id, name)
 select $1, * from unnest($2::uuid[], $3::text[])
 on conflict (party, id) do update set name = excluded.name";

/// Due failures, oldest first, a bounded number per pass.
const DUE_FAILURES: &str = "select interaction_id from calendar_sync_failures
  where not resolved and next_retry_at <= now() order by next_retry_at limit 500";

const PENDING_FAILURES: &str = "select count(*) from calendar_sync_failures where not resolved";

/// The progress row: `$2` the end LSN of the batch's last source transaction.
/// Invariant: never decreases (the `where` refuses; the caller makes it fatal).
const WRITE_PROGRESS: &str =
    "insert into calendar_sync_progress (slot_name, lsn, commit_time, snapshot_lsn, snapshot_at)
 values ($1, $2, $3, $2, now())
 on conflict (slot_name) do update
    set lsn = excluded.lsn, commit_time = excluded.commit_time, updated_at = now()
  where calendar_sync_progress.lsn <= excluded.lsn";

/// A new snapshot starts a new LSN history: old regression guards go.
const FORGET_EVENT_LSNS: &str = "update calendar_events set source_lsn = null
  where related_table = 'interaction' and source_lsn is not null";

/// `interaction.calendar_synced_at` of `$1 uuid[]`. Best effort, never waits:
/// rows a CRM session has locked are skipped (their own change will be synced
/// and stamped), so the consumer neither stalls behind an idle transaction nor
/// deadlocks with one.
///
/// By `ctid`s of primary-key probes that took the row lock (see the module
/// docs): the CRM may have created `interaction` empty and imported later.
/// Runs right after [`crate::echo::MARKER`] in its transaction; writes
/// nothing when the echo key is missing (the marker then emitted nothing, and
/// an unmarked stamp would come back as a CRM change).
pub const MARK_SYNCED: &str = "update interaction i set calendar_synced_at = now()
   from (select x.tid from unnest($1::uuid[]) as k(id) cross join lateral (
             select ctid as tid from interaction where interaction_id = k.id
              limit 1 for update skip locked) as x) as x
  where i.ctid = x.tid and exists (select from calendar_sync_echo_key)";

/// Live descriptions of `$1 uuid[]` (TOAST, see `apply::plan`).
const SELECT_DESCRIPTIONS: &str =
    "select interaction_id, description from interaction where interaction_id = any($1)";

/// The statements that find rows by an array of keys, by name, for the test
/// that checks their generic plans on empty tables (`tests/plans.rs`, see the
/// module docs).
pub fn keyed_statements() -> Vec<(&'static str, String)> {
    vec![
        ("select_events", SELECT_EVENTS.to_string()),
        ("select_failing", SELECT_FAILING.to_string()),
        ("select_names", SELECT_NAMES.to_string()),
        ("delete_events", DELETE_EVENTS.to_string()),
        ("update_events", update_events()),
        ("mark_synced", MARK_SYNCED.to_string()),
        ("peek_events", PEEK_EVENTS.to_string()),
    ]
}

/// Statements on the target connection.
pub struct TargetStatements {
    pub select_events: Statement,
    pub select_failing: Statement,
    pub select_names: Statement,
    pub delete_events: Statement,
    pub insert_events: Statement,
    pub update_events: Statement,
    pub insert_log: Statement,
    pub record_failures: Statement,
    pub resolve_failures: Statement,
    pub truncate_events: Statement,
    pub record_party_name: Statement,
    pub refresh_by_customer: Statement,
    pub refresh_by_contact: Statement,
    pub copy_party_names: Statement,
    pub due_failures: Statement,
    pub pending_failures: Statement,
    pub write_progress: Statement,
    pub forget_event_lsns: Statement,
}

/// Statements on the source (lookup) connection.
pub struct SourceStatements {
    pub select_descriptions: Statement,
}

pub async fn prepare_target(c: &Client) -> Result<TargetStatements, tokio_postgres::Error> {
    Ok(TargetStatements {
        select_events: c.prepare(&SELECT_EVENTS).await?,
        select_failing: c.prepare(SELECT_FAILING).await?,
        select_names: c.prepare(SELECT_NAMES).await?,
        delete_events: c.prepare(DELETE_EVENTS).await?,
        insert_events: c.prepare(&insert_events()).await?,
        update_events: c.prepare(&update_events()).await?,
        insert_log: c.prepare(INSERT_LOG).await?,
        record_failures: c.prepare(RECORD_FAILURES).await?,
        resolve_failures: c.prepare(RESOLVE_FAILURES).await?,
        truncate_events: c.prepare(TRUNCATE_EVENTS).await?,
        record_party_name: c.prepare(RECORD_PARTY_NAME).await?,
        refresh_by_customer: c.prepare(&refresh_participants("customer_id")).await?,
        refresh_by_contact: c.prepare(&refresh_participants("contact_id")).await?,
        copy_party_names: c.prepare(COPY_PARTY_NAMES).await?,
        due_failures: c.prepare(DUE_FAILURES).await?,
        pending_failures: c.prepare(PENDING_FAILURES).await?,
        write_progress: c.prepare(WRITE_PROGRESS).await?,
        forget_event_lsns: c.prepare(FORGET_EVENT_LSNS).await?,
    })
}

pub async fn prepare_source(c: &Client) -> Result<SourceStatements, tokio_postgres::Error> {
    Ok(SourceStatements {
        select_descriptions: c.prepare(SELECT_DESCRIPTIONS).await?,
    })
}

/// Which interactions [`live_with_names`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveRead {
    /// `$1 uuid[]`.
    Ids,
    /// `$1 uuid[]`, `for share`: waits for a transaction still writing one of
    /// them, then reads its result (READ COMMITTED re-reads the locked row).
    IdsLocked,
    /// A keyset page: ids after `$1` (`inclusive`: from `$1`), in id order, at
    /// most `$2 bigint` of them.
    Page { inclusive: bool },
}

/// The current state of interactions (mapped columns only, see [`LiveRead`])
/// with `calendar_synced_at` (`synced_at`), the raw name columns of their
/// customer and contact ([`crate::participants::name_select`]) and
/// the source WAL insert position (`read_at`), which is at or after the commit
/// of every state the query sees. Used by the retry worker and `reconcile`.
pub fn live_with_names(p: &ParticipantSchema, which: LiveRead) -> String {
    let q = quote_ident;
    let filter = match which {
        LiveRead::Ids => "where i.interaction_id = any($1)",
        LiveRead::IdsLocked => "where i.interaction_id = any($1) for share of i",
        LiveRead::Page { inclusive: true } => {
            "where i.interaction_id >= $1 order by i.interaction_id limit $2"
        }
        LiveRead::Page { inclusive: false } => {
            "where i.interaction_id > $1 order by i.interaction_id limit $2"
        }
    };
    format!(
        "select {cols}, i.calendar_synced_at as synced_at, {names}
           from interaction i
           left join {customer} cu on cu.{cid} = i.customer_id
           left join {contact} co on co.{tid} = i.contact_id
          {filter}",
        cols = crate::mapping::InteractionRow::select_list("i"),
        names = crate::participants::name_select(p, "cu", "co"),
        customer = q(&p.customer_table),
        cid = q(&p.customer_id),
        contact = q(&p.contact_table),
        tid = q(&p.contact_id),
    )
}

/// Events of interactions `$1 uuid[]` (`related_id` and [`EVENT_COLUMNS`]),
/// not locked (`reconcile` compares; the writer locks when it writes). One
/// index probe per id, as in `SELECT_EVENTS`.
pub static PEEK_EVENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "select e.* from unnest($1::uuid[]) as k(id) cross join lateral (
     select related_id, {columns}
       from calendar_events
      where related_table = 'interaction' and related_id = k.id
      limit 1) as e",
        columns = EVENT_COLUMNS.as_str()
    )
});

/// A keyset page of interaction events' `related_id`s: after `$1` (from it
/// when `inclusive`), in order, at most `$2 bigint`.
pub fn event_ids_page(inclusive: bool) -> &'static str {
    if inclusive {
        "select related_id from calendar_events
          where related_table = 'interaction' and related_id >= $1 order by related_id limit $2"
    } else {
        "select related_id from calendar_events
          where related_table = 'interaction' and related_id > $1 order by related_id limit $2"
    }
}

/// Which of `$1 uuid[]` still exist in the source.
pub const EXISTING_INTERACTIONS: &str =
    "select interaction_id from interaction where interaction_id = any($1)";

/// Set-based participant refresh of every event showing customer (contact)
/// `$1`, one `update` log row each, only where the array changes, never over
/// a write from a later LSN (`$2`).
fn refresh_participants(key: &str) -> String {
    format!(
        "with wanted as (
             select e.event_id, e.related_id, coalesce(e.updated_by, e.created_by) as by,
                    {p} as p
               from calendar_events e
               left join calendar_sync_party_names cu on cu.party = 'customer' and cu.id = e.customer_id
               left join calendar_sync_party_names ct on ct.party = 'contact' and ct.id = e.contact_id
              where e.related_table = 'interaction' and e.{key} = $1),
         changed as (
             update calendar_events e set participants = w.p, last_synced_at = now(), source_lsn = $2
               from wanted w
              where e.event_id = w.event_id and e.participants is distinct from w.p
                and (e.source_lsn is null or e.source_lsn <= $2)
             returning e.event_id, w.related_id, w.by)
         insert into calendar_sync_log (interaction_id, event_id, action, status, created_by, source_lsn)
         select related_id, event_id, 'update', 'success', by, $2 from changed",
        p = crate::participants::participants_sql("cu.name", "ct.name")
    )
}

/// A `text[]` literal (`{"a","b"}`) for one participants array, bound as one
/// element of a `text[]` parameter and cast back in SQL.
pub fn array_literal(items: &[String]) -> String {
    let mut s = String::with_capacity(2 + items.iter().map(|i| i.len() + 3).sum::<usize>());
    s.push('{');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            s.push(',');
        }
        s.push('"');
        for ch in item.chars() {
            if ch == '"' || ch == '\\' {
                s.push('\\');
            }
            s.push(ch);
        }
        s.push('"');
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_quote_and_escape() {
        assert_eq!(array_literal(&[]), "{}");
        assert_eq!(
            array_literal(&["Acme Corp".into(), "Ada \"A\" L\\x".into()]),
            r#"{"Acme Corp","Ada \"A\" L\\x"}"#
        );
        assert_eq!(array_literal(&["NULL".into()]), r#"{"NULL"}"#);
    }
}
