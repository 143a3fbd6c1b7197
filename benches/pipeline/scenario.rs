//! The five scenarios, each on a fresh database of the same cluster.

use std::cell::Cell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use calendar_sync::metrics::TRANSACTIONS_TOTAL;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::cpu::{Sampler, ServerCpu};
use crate::process::{metric_sum, CalendarSync, Outcome, Peaks};
use crate::report::{self, Report};
use crate::setup::{self, connect, Bench, Db};
use crate::workload::{self, Backlog, Spill};
use crate::writer;
use crate::Args;

/// Not yet exported by `calendar_sync::metrics`; read when present.
const SAVEPOINTS_TOTAL: &str = "calendar_sync_savepoints_total";

/// Scenarios 1 and 2.
pub struct CatchUp {
    pub shape: Backlog,
    /// Writing the backlog (the CRM's own time, for scale).
    pub written: Duration,
    pub recv: Outcome,
    /// `pg_replslot/` peak while pg_recvlogical drained: the source
    /// transactions' own spill.
    pub recv_replslot: u64,
    pub recv_spill: Spill,
    /// pg_recvlogical's walsender.
    pub recv_cpu: Option<ServerCpu>,
    pub set_based: Outcome,
    /// The set-based statement's backend.
    pub set_based_cpu: Option<Duration>,
    /// The set-based stamp (stamping runs only): time and backend CPU.
    pub stamp_ref: Option<(Duration, Option<Duration>)>,
    /// Until the slot's confirmed_flush_lsn passed the last backlog commit.
    pub sync: Outcome,
    /// Until calendar_sync_progress passed it (committed, not yet confirmed).
    pub sync_applied: Option<Duration>,
    pub sync_peaks: Peaks,
    pub sync_hwm_kib: Option<u64>,
    pub sync_spill: Spill,
    pub sync_cpu: Option<ServerCpu>,
    /// calendar-sync's own process, until the end of the measurement.
    pub sync_own_cpu: Option<Duration>,
    /// Transaction ids assigned while calendar-sync caught up.
    pub xids: i64,
    pub savepoints: Option<f64>,
    pub txns_applied: Option<f64>,
    pub events: i64,
}

/// Scenario 3.
pub struct Snapshot {
    pub rows: u64,
    pub set_based: Outcome,
    pub set_based_cpu: Option<Duration>,
    pub stamp_ref: Option<(Duration, Option<Duration>)>,
    pub sync: Outcome,
    pub sync_cpu: Option<ServerCpu>,
    pub sync_own_cpu: Option<Duration>,
    pub sync_hwm_kib: Option<u64>,
    pub events: i64,
}

/// Scenario 4.
pub struct Steady {
    pub rate: f64,
    pub secs: f64,
    pub written: u64,
    pub achieved_rate: f64,
    /// Sorted.
    pub latencies: Vec<Duration>,
    pub unseen: usize,
}

pub async fn run_all(args: Args) -> anyhow::Result<()> {
    eprintln!("pipeline bench: {args:?}");
    let bench = Bench::start(args.statements, args.fsync).await?;
    let machine = bench.machine().await;
    let mut rep = Report::new(&args, machine);
    // A backstop only: every consumer wait has its own deadline.
    let backstop = args.timeout * 3 + Duration::from_secs(600);
    for s in args.only.clone() {
        let started = Instant::now();
        eprintln!("\n== scenario {s} ==");
        macro_rules! bounded {
            ($f:expr) => {
                match tokio::time::timeout(backstop, $f).await {
                    Ok(r) => r.map_err(|e| format!("{e:#}")),
                    Err(_) => Err(format!("timed out after {}", report::secs(backstop))),
                }
            };
        }
        match s {
            1 => {
                let shape = Backlog::Txns {
                    txns: (args.size / 10).max(1),
                    per: 10,
                };
                rep.backlog = Some(bounded!(catch_up(&bench, &args, shape, "backlog")));
            }
            2 => {
                let shape = Backlog::One { rows: args.size };
                rep.large = Some(bounded!(catch_up(&bench, &args, shape, "large")));
            }
            6 => {
                // The "10,000 updates carrying 100 kB descriptions"
                // (1 GB of row data), fewer for a small --size.
                let shape = Backlog::Wide {
                    rows: (args.size / 10).clamp(1, 10_000),
                };
                rep.wide = Some(bounded!(catch_up(&bench, &args, shape, "wide")));
            }
            3 => rep.snapshot = Some(bounded!(snapshot(&bench, &args))),
            4 => rep.steady = Some(bounded!(steady(&bench, &args))),
            5 => rep.writer = Some(bounded!(writer::writer(&bench, &args))),
            _ => {}
        }
        eprintln!(
            "== scenario {s} done in {}",
            report::secs(started.elapsed())
        );
    }
    print!("{}", rep.render());
    if let Err(e) = std::fs::remove_dir_all(&bench.log_dir) {
        eprintln!("could not remove {}: {e}", bench.log_dir.display());
    }
    Ok(())
}

/// `application_name` of calendar-sync's sessions: `calendar-sync` (SQL) and
/// `calendar-sync-<slot>` (replication).
const SYNC_APPS: &str = "calendar-sync%";

/// The slot exists, is held by calendar-sync, and its snapshot committed.
async fn streaming(c: &Client, slot: &str) -> anyhow::Result<bool> {
    let n: i64 = c
        .query_one(
            "select count(*) from calendar_sync_progress p
               join pg_replication_slots s on s.slot_name = p.slot_name
              where p.slot_name = $1 and s.active",
            &[&slot],
        )
        .await?
        .get(0);
    Ok(n == 1)
}

async fn count(c: &Client, sql: &str) -> anyhow::Result<i64> {
    Ok(c.query_one(sql, &[]).await.context(sql.to_string())?.get(0))
}

/// Starts calendar-sync and waits until it streams.
pub async fn start_streaming(
    bench: &Bench,
    db: &Db,
    stamp: bool,
    label: &str,
) -> anyhow::Result<CalendarSync> {
    let mut sync = CalendarSync::spawn(bench, db, stamp, label)?;
    let mut peaks = Peaks::default();
    let replslot = bench.replslot_dir();
    match sync
        .wait(Duration::from_secs(120), &replslot, &mut peaks, || {
            streaming(&db.client, &db.name)
        })
        .await?
    {
        Outcome::Done(_) => Ok(sync),
        other => anyhow::bail!("calendar-sync did not start streaming: {other:?}"),
    }
}

async fn catch_up(
    bench: &Bench,
    args: &Args,
    shape: Backlog,
    tag: &str,
) -> anyhow::Result<CatchUp> {
    let db = bench.fresh_db(tag).await?;
    let result = catch_up_in(bench, args, shape, &db).await;
    bench.drop_db(db).await?;
    result
}

async fn catch_up_in(
    bench: &Bench,
    args: &Args,
    shape: Backlog,
    db: &Db,
) -> anyhow::Result<CatchUp> {
    let replslot = bench.replslot_dir();
    eprintln!("calendar-sync creates its slot (empty snapshot), then stops");
    start_streaming(bench, db, args.stamp, "first")
        .await?
        .stop()
        .await?;

    let recv_slot = workload::create_recv_slot(db).await?;
    eprintln!("writing the backlog: {shape:?}");
    let written = workload::write_backlog(&db.client, shape).await?;
    eprintln!(
        "  written in {}; pg_recvlogical drains to {}",
        report::secs(written.took),
        written.end
    );
    let mut recv_peaks = Peaks::default();
    let recv_sampler = Sampler::start(db, "pg_recvlogical").await?;
    let recv = workload::drain(
        bench,
        db,
        &recv_slot,
        &written.end,
        args.timeout,
        &mut recv_peaks,
    )
    .await?;
    let recv_cpu = recv_sampler.finish().await.ok();
    eprintln!("  pg_recvlogical: {recv:?}, walsender CPU {recv_cpu:?}");
    let recv_spill = workload::spill(&db.client, &recv_slot).await;
    drop_slot(&db.client, &recv_slot).await?;

    eprintln!("calendar-sync catches up");
    setup::reset_statements(bench, db).await?;
    let xid_before = workload::next_xid(&db.client).await?;
    let mut sync_peaks = Peaks::default();
    let sampler = Sampler::start(db, SYNC_APPS).await?;
    let mut sync = CalendarSync::spawn(bench, db, args.stamp, "catch-up")?;
    let started = sync.started;
    let applied_at: Cell<Option<Duration>> = Cell::new(None);
    let (client, slot, lsn) = (&db.client, db.name.as_str(), &written.before_last_commit);
    let applied = &applied_at;
    let mut outcome = sync
        .wait(args.timeout, &replslot, &mut sync_peaks, || async move {
            let r = client
                .query_one(
                    "select coalesce((select confirmed_flush_lsn > $1::text::pg_lsn
                                        from pg_replication_slots where slot_name = $2), false),
                            coalesce((select lsn > $1::text::pg_lsn
                                        from calendar_sync_progress where slot_name = $2), false)",
                    &[lsn, &slot],
                )
                .await?;
            if applied.get().is_none() && r.get::<_, bool>(1) {
                applied.set(Some(started.elapsed()));
            }
            Ok(r.get::<_, bool>(0))
        })
        .await?;
    let sync_own_cpu = sync.cpu();
    let sync_cpu = sampler.finish().await.ok();
    eprintln!("  server CPU {sync_cpu:?}, own CPU {sync_own_cpu:?}");
    let sync_hwm_kib = sync.hwm_kib();
    let metrics = sync.metrics().await.unwrap_or_default();
    let xids = workload::next_xid(&db.client).await? - xid_before;
    let log_rows = count(&db.client, "select count(*) from calendar_sync_log").await?;
    if let Outcome::TimedOut { after, progress } = &mut outcome {
        *progress = format!(
            "{log_rows} of {} log rows written ({:.0} rows/s)",
            shape.rows(),
            log_rows as f64 / after.as_secs_f64()
        );
    }
    eprintln!("  calendar-sync: {outcome:?}");
    setup::print_statements(bench, db, "the catch-up").await?;
    sync.stop().await?;
    let sync_spill = workload::spill(&db.client, &db.name).await;
    let events = count(&db.client, "select count(*) from calendar_events").await?;

    eprintln!("the set-based reference");
    db.client.batch_execute("vacuum interaction").await?;
    let (set_based, set_based_cpu) = match workload::set_based(db).await {
        Ok((took, rows, cpu)) => {
            check_rows("set-based reference", rows, shape.rows());
            (Outcome::Done(took), cpu)
        }
        Err(e) => (Outcome::Failed(format!("{e:#}")), None),
    };
    eprintln!("  set-based: {set_based:?}");
    let stamp_ref = stamp_reference(db, args.stamp).await;
    Ok(CatchUp {
        shape,
        written: written.took,
        recv,
        recv_replslot: recv_peaks.replslot_bytes,
        recv_spill,
        recv_cpu,
        set_based,
        set_based_cpu,
        stamp_ref,
        sync: outcome,
        sync_applied: applied_at.get(),
        sync_peaks,
        sync_hwm_kib,
        sync_spill,
        sync_cpu,
        sync_own_cpu,
        xids,
        savepoints: metric_sum(&metrics, SAVEPOINTS_TOTAL),
        txns_applied: metric_sum(&metrics, TRANSACTIONS_TOTAL),
        events,
    })
}

fn check_rows(what: &str, got: u64, want: u64) {
    if got != want {
        eprintln!("  warning: {what} wrote {got} rows, expected {want}");
    }
}

/// Drops a slot once its walsender has let go of it.
async fn drop_slot(c: &Client, slot: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        let dropped = c
            .query_one(
                "select count(pg_drop_replication_slot(slot_name)) from pg_replication_slots
                  where slot_name = $1 and not active",
                &[&slot],
            )
            .await?
            .get::<_, i64>(0);
        if dropped == 1 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("slot {slot} stayed active for 10 s")
}

/// The set-based stamp when calendar-sync stamps (`None` with `--no-stamp`,
/// or when it failed: said on stderr).
async fn stamp_reference(db: &Db, stamp: bool) -> Option<(Duration, Option<Duration>)> {
    if !stamp {
        return None;
    }
    match workload::stamp_reference(db).await {
        Ok(r) => {
            eprintln!("  set-based stamp: {:?}, backend CPU {:?}", r.0, r.1);
            Some(r)
        }
        Err(e) => {
            eprintln!("  set-based stamp failed: {e:#}");
            None
        }
    }
}

async fn snapshot(bench: &Bench, args: &Args) -> anyhow::Result<Snapshot> {
    let db = bench.fresh_db("snapshot").await?;
    let result = snapshot_in(bench, args, &db).await;
    bench.drop_db(db).await?;
    result
}

async fn snapshot_in(bench: &Bench, args: &Args, db: &Db) -> anyhow::Result<Snapshot> {
    eprintln!("filling interaction with {} rows", args.size);
    let filled = workload::fill(&db.client, args.size).await?;
    eprintln!("  filled in {}", report::secs(filled));
    // First, while no slot exists: its writes are never decoded.
    eprintln!("the set-based reference");
    let (set_based, set_based_cpu) = match workload::set_based(db).await {
        Ok((took, rows, cpu)) => {
            check_rows("set-based reference", rows, args.size);
            (Outcome::Done(took), cpu)
        }
        Err(e) => (Outcome::Failed(format!("{e:#}")), None),
    };
    eprintln!("  set-based: {set_based:?}");
    let stamp_ref = stamp_reference(db, args.stamp).await;
    eprintln!("calendar-sync takes the initial snapshot");
    let mut peaks = Peaks::default();
    setup::reset_statements(bench, db).await?;
    let sampler = Sampler::start(db, SYNC_APPS).await?;
    let mut sync = CalendarSync::spawn(bench, db, args.stamp, "snapshot")?;
    let (client, slot) = (&db.client, db.name.as_str());
    let mut outcome = sync
        .wait(
            args.timeout,
            &bench.replslot_dir(),
            &mut peaks,
            || async move { Ok(count_slot(client, slot).await? == 1) },
        )
        .await?;
    let sync_own_cpu = sync.cpu();
    let sync_cpu = sampler.finish().await.ok();
    eprintln!("  server CPU {sync_cpu:?}, own CPU {sync_own_cpu:?}");
    let sync_hwm_kib = sync.hwm_kib();
    if let Outcome::TimedOut { progress, .. } = &mut outcome {
        *progress = "the snapshot had not committed (it is one transaction)".into();
    }
    eprintln!("  calendar-sync: {outcome:?}");
    setup::print_statements(bench, db, "the snapshot").await?;
    sync.stop().await?;
    let events = count(&db.client, "select count(*) from calendar_events").await?;
    Ok(Snapshot {
        rows: args.size,
        set_based,
        set_based_cpu,
        stamp_ref,
        sync: outcome,
        sync_cpu,
        sync_own_cpu,
        sync_hwm_kib,
        events,
    })
}

async fn count_slot(c: &Client, slot: &str) -> anyhow::Result<i64> {
    Ok(c.query_one(
        "select count(*) from calendar_sync_progress where slot_name = $1",
        &[&slot],
    )
    .await?
    .get(0))
}

const STEADY_RATE: f64 = 300.0;

async fn steady(bench: &Bench, args: &Args) -> anyhow::Result<Steady> {
    let db = bench.fresh_db("steady").await?;
    let result = steady_in(bench, args, &db).await;
    bench.drop_db(db).await?;
    result
}

/// Commit-to-calendar latency: a writer commits single-row inserts at a fixed
/// rate; a poller asks every 2 ms which of the pending interactions have an
/// event. An event counts as visible at the start of the first query that
/// returns it, so the figure errs high by at most one poll (2 ms + a query).
async fn steady_in(bench: &Bench, args: &Args, db: &Db) -> anyhow::Result<Steady> {
    let sync = start_streaming(bench, db, args.stamp, "steady").await?;
    let writer = connect(&db.url).await?;
    let poller = connect(&db.url).await?;
    let insert = writer.prepare("select bench_insert($1, 1)").await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Uuid, Instant)>();
    let secs = args.steady;
    eprintln!(
        "writing {STEADY_RATE} txn/s for {}",
        report::secs(args.steady)
    );
    let write = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / STEADY_RATE));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut g: i64 = 0;
        while started.elapsed() < secs {
            tick.tick().await;
            let id: Uuid = writer.query_one(&insert, &[&g]).await?.get(0);
            let _ = tx.send((id, Instant::now()));
            g += 1;
        }
        anyhow::Ok((g as u64, started.elapsed()))
    });
    let query = poller
        .prepare(
            "select related_id from calendar_events
              where related_table = 'interaction' and related_id = any($1)",
        )
        .await?;
    let mut pending: HashMap<Uuid, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let mut writer_done_at: Option<Instant> = None;
    let grace = Duration::from_secs(60).min(args.timeout);
    loop {
        while let Ok((id, at)) = rx.try_recv() {
            pending.insert(id, at);
        }
        if writer_done_at.is_none() && write.is_finished() {
            writer_done_at = Some(Instant::now());
            while let Ok((id, at)) = rx.try_recv() {
                pending.insert(id, at);
            }
        }
        if !pending.is_empty() {
            let ids: Vec<Uuid> = pending.keys().copied().collect();
            let asked = Instant::now();
            for r in poller.query(&query, &[&ids]).await? {
                let id: Uuid = r.get(0);
                if let Some(at) = pending.remove(&id) {
                    latencies.push(asked.saturating_duration_since(at));
                }
            }
        }
        match writer_done_at {
            Some(_) if pending.is_empty() => break,
            Some(t) if t.elapsed() > grace => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (written, took) = write.await.context("the writer task")??;
    sync.stop().await?;
    latencies.sort();
    Ok(Steady {
        rate: STEADY_RATE,
        secs: took.as_secs_f64(),
        written,
        achieved_rate: written as f64 / took.as_secs_f64(),
        latencies,
        unseen: pending.len(),
    })
}
