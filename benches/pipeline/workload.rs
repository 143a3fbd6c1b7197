//! The SQL of the bench: the CRM rows and row generator every database gets,
//! the backlog shapes, the set-based reference, and `pg_recvlogical`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::cpu;
use crate::process::{Outcome, Peaks};
use crate::setup::{Bench, Db};

/// Customers and contacts the interactions point at (participants are looked
/// up for every event), and the generator of interaction rows.
///
/// `bench_insert(first, n)` inserts rows `first .. first + n - 1`: every one is
/// in the window (dated within the next ~28 days), so every insert creates an
/// event and a log row; a fifth are all-day, a third have no contact, half
/// have a location. Customer and contact ids are computed, not looked up, so
/// generating a row costs the same whatever the batch size.
pub const SETUP: &str = "
insert into users (user_id, email) values ('00000000-0000-4000-8000-000000000001', 'bench@example.com');
insert into customer (customer_id, name)
select ('00000000-0000-4000-8001-' || lpad(to_hex(k), 12, '0'))::uuid, 'Customer ' || k
  from generate_series(1, 1000) k;
insert into contact (contact_id, customer_id, first_name, last_name, email)
select ('00000000-0000-4000-8002-' || lpad(to_hex(k), 12, '0'))::uuid,
       ('00000000-0000-4000-8001-' || lpad(to_hex(k), 12, '0'))::uuid,
       'First' || k, 'Last' || k, 'contact' || k || '@example.com'
  from generate_series(1, 1000) k;

create function bench_insert(first bigint, n bigint) returns setof uuid language sql as $$
  insert into interaction (interaction_type, subject, interaction_date, customer_id, contact_id,
                           location, description, duration_minutes, created_by)
  select (array['meeting', 'phone', 'visit', 'email'])[1 + g % 4],
         'Bench interaction ' || g,
         date_trunc('minute', now()) + interval '1 hour' + (g % 40000) * interval '1 minute',
         ('00000000-0000-4000-8001-' || lpad(to_hex(1 + g % 1000), 12, '0'))::uuid,
         case when g % 3 <> 0
              then ('00000000-0000-4000-8002-' || lpad(to_hex(1 + g % 1000), 12, '0'))::uuid end,
         case when g % 2 = 0 then 'Room ' || g % 50 end,
         'Agenda of interaction ' || g || ': status, next steps, open questions.',
         (g % 5)::int * 15,
         '00000000-0000-4000-8000-000000000001'
    from generate_series(first, first + n - 1) g
  returning interaction_id
$$;

-- txns transactions of per rows each. last_lsn: the WAL insert position inside
-- the last one, before its commit: its commit ends after it, every earlier
-- commit ends at or before it.
create procedure bench_backlog(txns bigint, per bigint, inout last_lsn pg_lsn default null)
language plpgsql as $$
begin
  for i in 0 .. txns - 1 loop
    perform count(*) from bench_insert(i * per, per);
    last_lsn := pg_current_wal_insert_lsn();
    commit;
  end loop;
end
$$;
";

/// The shape of a backlog.
#[derive(Debug, Clone, Copy)]
pub enum Backlog {
    /// `txns` transactions of `per` inserts.
    Txns { txns: u64, per: u64 },
    /// One transaction of `rows` inserts.
    One { rows: u64 },
    /// One transaction of `rows` inserts with an incompressible 100 kB
    /// description each (memory: the byte bounds).
    Wide { rows: u64 },
}

impl Backlog {
    pub fn rows(self) -> u64 {
        match self {
            Backlog::Txns { txns, per } => txns * per,
            Backlog::One { rows } | Backlog::Wide { rows } => rows,
        }
    }
}

/// Where a written backlog ends.
pub struct Written {
    pub took: Duration,
    /// Inside the last transaction, before its commit: a consumer has applied
    /// the whole backlog once its progress passes this.
    pub before_last_commit: String,
    /// The WAL insert position after the backlog (pg_recvlogical's `--endpos`).
    pub end: String,
}

/// The first column of the last row of a simple query.
fn last_value(msgs: &[SimpleQueryMessage]) -> Option<String> {
    msgs.iter().rev().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

/// Writes the backlog.
pub async fn write_backlog(c: &Client, shape: Backlog) -> anyhow::Result<Written> {
    let started = Instant::now();
    // Simple protocol: a procedure may commit only when called outside a
    // transaction block and not through the extended protocol.
    let msgs = match shape {
        Backlog::Txns { txns, per } => c
            .simple_query(&format!("call bench_backlog({txns}, {per}, null)"))
            .await
            .context("writing the backlog (bench_backlog)")?,
        Backlog::One { rows } => c
            .simple_query(&format!(
                "begin; select count(*) from bench_insert(0, {rows}); \
                 select pg_current_wal_insert_lsn()::text; commit"
            ))
            .await
            .context("writing the large transaction")?,
        Backlog::Wide { rows } => c
            .simple_query(&format!(
                "begin; select count(*) from bench_insert(0, {rows}); \
                 update interaction set description = \
                   (select string_agg(md5(interaction_id::text || s::text), '') \
                      from generate_series(1, 3200) s); \
                 select pg_current_wal_insert_lsn()::text; commit"
            ))
            .await
            .context("writing the wide transaction")?,
    };
    let took = started.elapsed();
    let before_last_commit =
        last_value(&msgs).context("the backlog returned no LSN of its last transaction")?;
    let end: String = c
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    Ok(Written {
        took,
        before_last_commit,
        end,
    })
}

/// Inserts `rows` interactions in transactions of 100,000 (scenario 3's table).
pub async fn fill(c: &Client, rows: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut first = 0;
    while first < rows {
        let n = (rows - first).min(100_000);
        c.execute(
            "select count(*) from bench_insert($1, $2)",
            &[&(first as i64), &(n as i64)],
        )
        .await
        .context("filling interaction")?;
        first += n;
    }
    c.batch_execute("vacuum analyze interaction").await?;
    Ok(started.elapsed())
}

/// Scratch copies of the target tables: same columns, defaults, indexes and
/// unique constraints (`like .. including all`), and the foreign keys to
/// `users` that calendar_events has.
const REFERENCE_TABLES: &str = "
drop table if exists bench_events, bench_log;
create table bench_events (like calendar_events including all);
alter table bench_events
  add foreign key (created_by) references users (user_id),
  add foreign key (updated_by) references users (user_id);
create table bench_log (like calendar_sync_log including all);
";

/// What calendar-sync writes for in-window inserts, as one statement: the
/// mapped fields (contract §3, zone UTC, window 30 days) computed in SQL with
/// the participants joined from customer and contact, and one `create` log
/// row per event.
const REFERENCE: &str = "
with ev as (
  insert into bench_events (title, description, event_date, start_time, end_time, all_day,
      event_type, event_status, location, participants, created_by, updated_by, created_at,
      updated_at, customer_id, contact_id, related_table, related_id, synced_from,
      last_synced_at, source_lsn)
  select i.subject, i.description, i.interaction_date,
         (i.interaction_date at time zone 'UTC')::time,
         case when coalesce(i.duration_minutes, 0) = 0 then null
              else ((i.interaction_date + i.duration_minutes * interval '1 minute')
                    at time zone 'UTC')::time end,
         coalesce(i.duration_minutes, 0) = 0,
         i.interaction_type,
         case when coalesce(i.archived, false) then 'cancelled' else 'scheduled' end,
         i.location,
         array_remove(array[cu.name::text,
             coalesce(nullif(trim(concat_ws(' ', co.first_name, co.last_name)), ''), co.email)],
             null),
         i.created_by, i.updated_by, i.created_at, i.updated_at, i.customer_id, i.contact_id,
         'interaction', i.interaction_id, 'interaction', now(), pg_current_wal_insert_lsn()
    from interaction i
    left join customer cu on cu.customer_id = i.customer_id
    left join contact co on co.contact_id = i.contact_id
   where not coalesce(i.archived, false) and i.subject is not null
     and i.interaction_date >= now() - interval '30 days'
  returning event_id, related_id, coalesce(updated_by, created_by) as by)
insert into bench_log (interaction_id, event_id, action, status, created_by, source_lsn)
select related_id, event_id, 'create', 'success', by, pg_current_wal_insert_lsn() from ev
";

/// Times the set-based reference over the database's interactions. Returns
/// the time, the number of events (= log rows) it wrote, and its backend's
/// CPU time.
pub async fn set_based(db: &Db) -> anyhow::Result<(Duration, u64, Option<Duration>)> {
    db.client
        .batch_execute(REFERENCE_TABLES)
        .await
        .context("creating the reference's scratch tables")?;
    let (rows, took, cpu) = on_backend(db, async {
        db.client
            .execute(REFERENCE, &[])
            .await
            .context("the set-based reference statement")
    })
    .await?;
    db.client
        .batch_execute("drop table bench_events, bench_log")
        .await?;
    Ok((took, rows, cpu))
}

/// The stamp as PostgreSQL itself would write it: one set-based `update` of
/// `calendar_synced_at` on the interactions the reference made events of,
/// with triggers off as calendar-sync's stamp runs them
/// (`session_replication_role = replica`). The stamp is work the contract
/// asks for (§4, with its index: every stamp is a non-HOT update), which the
/// events-and-log reference does not do. Returns its time and its backend's
/// CPU.
pub async fn stamp_reference(db: &Db) -> anyhow::Result<(Duration, Option<Duration>)> {
    let ((), took, cpu) = on_backend(db, async {
        db.client
            .batch_execute(
                "begin;
                 set local session_replication_role = replica;
                 update interaction set calendar_synced_at = now()
                  where not coalesce(archived, false) and subject is not null
                    and interaction_date >= now() - interval '30 days';
                 commit;",
            )
            .await
            .context("the set-based stamp reference")
    })
    .await?;
    Ok((took, cpu))
}

/// Runs `work` on `db.client` and returns its result, its time and the CPU
/// its server backend used meanwhile.
async fn on_backend<T>(
    db: &Db,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Duration, Option<Duration>)> {
    let pid = cpu::backend_pid(&db.client).await?;
    let cpu_before = cpu::proc_cpu(pid);
    let started = Instant::now();
    let out = work.await?;
    let took = started.elapsed();
    let cpu = cpu::proc_cpu(pid)
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    Ok((out, took, cpu))
}

/// Creates the pgoutput slot `pg_recvlogical` drains (before the backlog).
pub async fn create_recv_slot(db: &Db) -> anyhow::Result<String> {
    let slot = format!("{}_recv", db.name);
    db.client
        .execute(
            "select pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .context("creating the pg_recvlogical slot")?;
    Ok(slot)
}

/// `pg_recvlogical` draining `slot` into /dev/null with pgoutput's own
/// options (proto 1, the publication), until killed. Its sessions are named
/// `pg_recvlogical`.
pub fn recv_command(bench: &Bench, db: &Db, slot: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&bench.recvlogical);
    cmd.args(["-h", "127.0.0.1", "-U", "postgres", "--no-loop", "--start"])
        .args(["-p", &bench.cluster.port().to_string()])
        .args(["-d", &db.name, "--slot", slot])
        .args(["-f", "/dev/null", "-o", "proto_version=1"])
        .arg("-o")
        .arg(format!("publication_names={}", db.name))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Times `pg_recvlogical` draining `slot` to `endpos` ([`recv_command`]).
/// Samples `pg_replslot/`.
pub async fn drain(
    bench: &Bench,
    db: &Db,
    slot: &str,
    endpos: &str,
    timeout: Duration,
    peaks: &mut Peaks,
) -> anyhow::Result<Outcome> {
    let mut cmd = recv_command(bench, db, slot);
    cmd.arg(format!("--endpos={endpos}"));
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting pg_recvlogical")?;
    let replslot = bench.replslot_dir();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            status = child.wait() => {
                let took = started.elapsed();
                let status = status?;
                peaks.sample_dir(&replslot);
                if status.success() {
                    return Ok(Outcome::Done(took));
                }
                let out = child.wait_with_output().await?;
                return Ok(Outcome::Failed(format!(
                    "pg_recvlogical {status}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            _ = tick.tick() => {
                peaks.sample_dir(&replslot);
                if started.elapsed() > timeout {
                    let _ = child.kill().await;
                    return Ok(Outcome::TimedOut {
                        after: started.elapsed(),
                        progress: "pg_recvlogical had not reached the end".into(),
                    });
                }
            }
        }
    }
}

/// Spill counters of a slot (`pg_stat_replication_slots`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Spill {
    pub txns: i64,
    pub count: i64,
    pub bytes: i64,
    pub total_txns: i64,
}

pub async fn spill(c: &Client, slot: &str) -> Spill {
    c.query_opt(
        "select spill_txns, spill_count, spill_bytes, total_txns
           from pg_stat_replication_slots where slot_name = $1",
        &[&slot],
    )
    .await
    .ok()
    .flatten()
    .map(|r| Spill {
        txns: r.get(0),
        count: r.get(1),
        bytes: r.get(2),
        total_txns: r.get(3),
    })
    .unwrap_or_default()
}

/// The next transaction id to be assigned: the difference over a run is the
/// number of transaction ids handed out, top-level and subtransactions that
/// wrote (a subtransaction gets its own id at its first write).
pub async fn next_xid(c: &Client) -> anyhow::Result<i64> {
    Ok(c.query_one(
        "select pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
        &[],
    )
    .await?
    .get(0))
}
