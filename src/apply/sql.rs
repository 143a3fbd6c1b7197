//! Every statement of the apply path, prepared once per connection.

use tokio_postgres::{Client, Statement};

use crate::config::ParticipantSchema;
use crate::db::quote_ident;

/// Columns of `calendar_events` read back as [`crate::mapping::EventFields`].
pub const EVENT_COLUMNS: &str = "event_id, title, description, event_date, start_time, end_time, all_day, \
     event_type, event_status, location, participants, created_by, updated_by, created_at, updated_at, \
     customer_id, contact_id";

/// Statements on the target connection.
pub struct TargetStatements {
    pub select_event: Statement,
    pub insert_event: Statement,
    pub update_event: Statement,
    pub delete_event: Statement,
    pub upsert_party_name: Statement,
    pub delete_party_name: Statement,
    /// `(customer name, contact name)` for `($1, $2)` from the names table.
    pub party_names: Statement,
    /// `($1 party, $2 ids, $3 names)`: snapshot copy.
    pub copy_party_names: Statement,
    pub refresh_by_customer: Statement,
    pub refresh_by_contact: Statement,
    pub truncate_events: Statement,
    pub insert_log: Statement,
    pub resolve_failures: Statement,
    pub record_failure: Statement,
    pub due_failures: Statement,
    pub pending_failures: Statement,
    pub write_progress: Statement,
    pub forget_event_lsns: Statement,
    /// Same-database mode only: `interaction.calendar_synced_at` of `any($1)`
    /// inside the target transaction, at its end.
    pub mark_synced: Option<Statement>,
    /// Same-database mode only (with `mark_synced`): see [`ECHO_MARKER`].
    pub emit_echo_marker: Option<Statement>,
}

/// Statements on the source (lookup) connection.
pub struct SourceStatements {
    pub description: Statement,
    pub mark_synced_many: Statement,
    /// The current state of one interaction (retries).
    pub current_state: Statement,
    pub emit_echo_marker: Statement,
}

pub async fn prepare_target(
    c: &Client,
    same_db: bool,
) -> Result<TargetStatements, tokio_postgres::Error> {
    Ok(TargetStatements {
        select_event: c
            .prepare(&format!(
                "select {EVENT_COLUMNS} from calendar_events
                  where related_table = 'interaction' and related_id = $1 for update"
            ))
            .await?,
        insert_event: c
            .prepare(
                "insert into calendar_events (title, description, event_date, start_time, end_time, all_day,
                     event_type, event_status, location, participants, created_by, updated_by, created_at,
                     updated_at, customer_id, contact_id, related_table, related_id, synced_from,
                     last_synced_at, source_lsn)
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                     'interaction', $17, 'interaction', now(), $18)
                 returning event_id",
            )
            .await?,
        // Same parameters as insert_event ($1-$16 the fields, $17 the key, $18
        // the LSN). The source_lsn guard refuses a write from an older source
        // transaction.
        update_event: c
            .prepare(
                "update calendar_events set title = $1, description = $2, event_date = $3, start_time = $4,
                     end_time = $5, all_day = $6, event_type = $7, event_status = $8, location = $9,
                     participants = $10, created_by = $11, updated_by = $12, created_at = $13,
                     updated_at = $14, customer_id = $15, contact_id = $16, last_synced_at = now(),
                     source_lsn = $18
                  where event_id = $17 and (source_lsn is null or source_lsn <= $18)",
            )
            .await?,
        delete_event: c.prepare("delete from calendar_events where event_id = $1").await?,
        upsert_party_name: c
            .prepare(
                "insert into calendar_sync_party_names (party, id, name) values ($1, $2, $3)
                 on conflict (party, id) do update set name = excluded.name",
            )
            .await?,
        delete_party_name: c
            .prepare("delete from calendar_sync_party_names where party = $1 and id = $2")
            .await?,
        party_names: c
            .prepare(
                "select (select name from calendar_sync_party_names where party = 'customer' and id = $1),
                        (select name from calendar_sync_party_names where party = 'contact' and id = $2)",
            )
            .await?,
        copy_party_names: c
            .prepare(
                "insert into calendar_sync_party_names (party, id, name)
                 select $1, * from unnest($2::uuid[], $3::text[])
                 on conflict (party, id) do update set name = excluded.name",
            )
            .await?,
        // Set-based participant refresh of every event showing customer
        // (contact) $1, one `update` log row each, only where the array changes.
        refresh_by_customer: c.prepare(&refresh_participants("customer_id")).await?,
        refresh_by_contact: c.prepare(&refresh_participants("contact_id")).await?,
        // One log row per deleted event (contract §2, TRUNCATE), set-based.
        truncate_events: c
            .prepare(
                "with gone as (
                     delete from calendar_events where related_table = 'interaction'
                     returning event_id, related_id, coalesce(updated_by, created_by) as by)
                 insert into calendar_sync_log (interaction_id, event_id, action, status, created_by, source_lsn)
                 select related_id, event_id, 'delete', 'success', by, $1 from gone",
            )
            .await?,
        insert_log: c
            .prepare(
                "insert into calendar_sync_log (interaction_id, event_id, action, status, error_message,
                     created_by, source_lsn)
                 values ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await?,
        resolve_failures: c
            .prepare("update calendar_sync_failures set resolved = true where interaction_id = $1 and not resolved")
            .await?,
        // One open failure per interaction: a new failure updates it (contract §7).
        // One open failure per interaction: a new failure updates it (contract
        // §7). $5: this failure is a retry's, so it counts and backs off
        // exponentially: 30 s * 2^retry_count, at most an hour.
        record_failure: c
            .prepare(
                "insert into calendar_sync_failures (interaction_id, action, error_message, error_stack, next_retry_at)
                 values ($1, $2, $3, $4, now() + interval '30 seconds')
                 on conflict (interaction_id) where not resolved do update
                    set action = excluded.action, error_message = excluded.error_message,
                        error_stack = excluded.error_stack,
                        retry_count = calendar_sync_failures.retry_count + case when $5 then 1 else 0 end,
                        last_retry_at = case when $5 then now() else calendar_sync_failures.last_retry_at end,
                        next_retry_at = now() + least(interval '30 seconds'
                            * power(2, least(calendar_sync_failures.retry_count + case when $5 then 1 else 0 end, 10)),
                            interval '1 hour')",
            )
            .await?,
        due_failures: c
            .prepare(
                "select interaction_id from calendar_sync_failures
                  where not resolved and next_retry_at <= now() order by next_retry_at limit 50",
            )
            .await?,
        pending_failures: c
            .prepare("select count(*) from calendar_sync_failures where not resolved")
            .await?,
        write_progress: c
            .prepare(
                "insert into calendar_sync_progress (slot_name, lsn, commit_time, snapshot_lsn, snapshot_at)
                 values ($1, $2, $3, $2, now())
                 on conflict (slot_name) do update
                    set lsn = excluded.lsn, commit_time = excluded.commit_time, updated_at = now()
                  where calendar_sync_progress.lsn <= excluded.lsn",
            )
            .await?,
        // Best effort, never waits: rows a CRM session has locked are skipped
        // (their own change will be synced and stamped), so the consumer
        // neither stalls behind an idle transaction nor deadlocks with one.
        forget_event_lsns: c
            .prepare(
                "update calendar_events set source_lsn = null
                  where related_table = 'interaction' and source_lsn is not null",
            )
            .await?,
        mark_synced: if same_db {
            Some(c.prepare("update interaction set calendar_synced_at = now()
                  where interaction_id in (select interaction_id from interaction
                                            where interaction_id = any($1)
                                            order by interaction_id for update skip locked)").await?)
        } else {
            None
        },
        emit_echo_marker: if same_db {
            Some(c.prepare(ECHO_MARKER).await?)
        } else {
            None
        },
    })
}

pub async fn prepare_source(c: &Client) -> Result<SourceStatements, tokio_postgres::Error> {
    Ok(SourceStatements {
        description: c
            .prepare("select description from interaction where interaction_id = $1")
            .await?,
        current_state: c
            .prepare(&format!(
                "select {} from interaction i where i.interaction_id = $1",
                crate::mapping::InteractionRow::select_list("i")
            ))
            .await?,
        // As `mark_synced` of the target statements.
        mark_synced_many: c
            .prepare(
                "update interaction set calendar_synced_at = now()
                  where interaction_id in (select interaction_id from interaction
                                            where interaction_id = any($1)
                                            order by interaction_id for update skip locked)",
            )
            .await?,
        emit_echo_marker: c.prepare(ECHO_MARKER).await?,
    })
}

/// Marks the current transaction as calendar-sync's own (`$1` the prefix, `$2`
/// the slot), in one statement: the transactional logical message the stream
/// sees, and this transaction's id in `calendar_sync_echo`, which only
/// calendar-sync's role may write (migrations/source/0002). The stream ignores
/// a transaction only when both are there (`stream::echo`).
///
/// Must be the transaction's first statement: the stream takes a marker that
/// follows a change for a forgery (calendar-sync's never do), and the row's
/// `lsn` (the message's, so at the start of the transaction) is what pruning
/// compares with the slots' `restart_lsn`. Returns the xid (text).
pub const ECHO_MARKER: &str = "insert into calendar_sync_echo (xid, slot, lsn)
     values (pg_current_xact_id(), $2::text, pg_logical_emit_message(true, $1::text, $2::text))
     returning xid::text";

/// `interaction` rows (mapped columns only) with the participant names of
/// their customer and contact (`p_customer`, `p_first`, `p_last`, `p_email`).
/// Used by the snapshot and by retries.
pub fn interaction_with_names(p: &ParticipantSchema, filter: &str) -> String {
    let q = quote_ident;
    format!(
        "select {cols}, cu.{cname}::text as p_customer, co.{first}::text as p_first,
                co.{last}::text as p_last, co.{email}::text as p_email
           from interaction i
           left join {customer} cu on cu.{cid} = i.customer_id
           left join {contact} co on co.{tid} = i.contact_id
         {filter}",
        cols = crate::mapping::InteractionRow::select_list("i"),
        cname = q(&p.customer_name),
        first = q(&p.contact_first_name),
        last = q(&p.contact_last_name),
        email = q(&p.contact_email),
        customer = q(&p.customer_table),
        cid = q(&p.customer_id),
        contact = q(&p.contact_table),
        tid = q(&p.contact_id),
    )
}

/// Participants from a row selected with [`interaction_with_names`].
pub fn participants_of(row: &tokio_postgres::Row) -> Vec<String> {
    use crate::mapping::fields::{contact_name, participants};
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

fn refresh_participants(key: &str) -> String {
    format!(
        "with wanted as (
             select e.event_id, e.related_id, coalesce(e.updated_by, e.created_by) as by,
                    array_remove(array[cu.name, ct.name], null) as p
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
         select related_id, event_id, 'update', 'success', by, $2 from changed"
    )
}
