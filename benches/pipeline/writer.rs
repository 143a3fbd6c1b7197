//! Scenario 5: the CRM writer's throughput beside each consumer.
//!
//! Two connections commit single-row inserts as fast as they can, on a fresh
//! database per variant: with nothing consuming, with `pg_recvlogical`
//! draining a pgoutput slot (decoding alone: the reference), and with
//! calendar-sync streaming, stamping `calendar_synced_at` on (the default)
//! and off. With `fsync = on` a single-row commit waits for its WAL flush, so
//! the rate follows the disk, which the machine's other work shares: the
//! variants run in [`ROUNDS`] interleaved rounds and the report takes each
//! variant's median.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::scenario::start_streaming;
use crate::setup::{connect, Bench, Db};
use crate::workload;
use crate::Args;

/// Rounds of the four variants, one after the other in each round.
pub const ROUNDS: usize = 3;

/// txn/s of the writer (medians over the rounds), and calendar-sync's lag
/// (bytes) at the end of the last round.
pub struct Writer {
    pub secs: f64,
    pub none: f64,
    /// While pg_recvlogical drains a pgoutput slot (decoding alone).
    pub recv: f64,
    pub stamping_on: (f64, i64),
    pub stamping_off: (f64, i64),
    /// Every round: nothing, pg_recvlogical, stamping on, stamping off.
    pub rounds: Vec<[f64; 4]>,
}

#[derive(Debug, Clone, Copy)]
enum Consumer {
    Nothing,
    Recvlogical,
    CalendarSync { stamp: bool },
}

pub async fn writer(bench: &Bench, args: &Args) -> anyhow::Result<Writer> {
    let mut rounds = Vec::new();
    let mut lags = (0, 0);
    for round in 1..=ROUNDS {
        let mut rates = [0.0; 4];
        for (i, c) in [
            Consumer::Nothing,
            Consumer::Recvlogical,
            Consumer::CalendarSync { stamp: true },
            Consumer::CalendarSync { stamp: false },
        ]
        .into_iter()
        .enumerate()
        {
            eprintln!("round {round}: writer with {c:?}");
            let db = bench.fresh_db(&format!("writer_{i}")).await?;
            let run = variant(bench, args, &db, c).await;
            bench.drop_db(db).await?;
            let (rate, lag) = run?;
            eprintln!("  {rate:.0} txn/s");
            rates[i] = rate;
            match i {
                2 => lags.0 = lag,
                3 => lags.1 = lag,
                _ => {}
            }
        }
        rounds.push(rates);
    }
    let median = |i: usize| {
        let mut v: Vec<f64> = rounds.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(Writer {
        secs: args.writer.as_secs_f64(),
        none: median(0),
        recv: median(1),
        stamping_on: (median(2), lags.0),
        stamping_off: (median(3), lags.1),
        rounds,
    })
}

/// One variant: its consumer started, the writer's txn/s and the consumer's
/// lag (bytes) when the writer stops.
async fn variant(
    bench: &Bench,
    args: &Args,
    db: &Db,
    consumer: Consumer,
) -> anyhow::Result<(f64, i64)> {
    match consumer {
        Consumer::Nothing => Ok((write_flat_out(db, args.writer).await?, 0)),
        Consumer::Recvlogical => {
            let slot = workload::create_recv_slot(db).await?;
            let mut child = workload::recv_command(bench, db, &slot)
                .spawn()
                .context("starting pg_recvlogical")?;
            wait_active(db, &slot).await?;
            let rate = write_flat_out(db, args.writer).await;
            let lag = lag(db, &slot).await;
            let _ = child.kill().await;
            Ok((rate?, lag?))
        }
        Consumer::CalendarSync { stamp } => {
            let sync = start_streaming(bench, db, stamp, "writer").await?;
            let rate = write_flat_out(db, args.writer).await?;
            let lag = lag(db, &db.name).await?;
            sync.stop().await?;
            Ok((rate, lag))
        }
    }
}

/// Until a walsender holds `slot` (at most 10 s).
async fn wait_active(db: &Db, slot: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        let active: bool = db
            .client
            .query_one(
                "select coalesce((select active from pg_replication_slots
                                   where slot_name = $1), false)",
                &[&slot],
            )
            .await?
            .get(0);
        if active {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("pg_recvlogical did not take slot {slot} within 10 s")
}

async fn lag(db: &Db, slot: &str) -> anyhow::Result<i64> {
    Ok(db
        .client
        .query_one(
            "select coalesce(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn), 0)::bigint
               from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await?
        .get(0))
}

/// Two connections committing single-row inserts for `secs`: txn/s.
async fn write_flat_out(db: &Db, secs: Duration) -> anyhow::Result<f64> {
    let mut clients = Vec::new();
    for _ in 0..2 {
        let c = connect(&db.url).await?;
        let insert = c.prepare("select bench_insert($1, 1)").await?;
        clients.push((c, insert));
    }
    let mut tasks = Vec::new();
    let started = Instant::now();
    for (conn, (c, insert)) in (0i64..).zip(clients) {
        tasks.push(tokio::spawn(async move {
            let mut n: i64 = 0;
            while started.elapsed() < secs {
                c.query_one(&insert, &[&(conn * 1_000_000_000 + n)]).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.context("a writer task")??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
