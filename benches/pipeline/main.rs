//! End-to-end benchmark of calendar-sync against PostgreSQL's own limits,
//! measured in the same run on the same machine (issue 7).
//!
//! `cargo bench --bench pipeline` starts a throw-away PostgreSQL
//! ([`calendar_sync::pgcluster::LocalCluster`], `wal_level=logical`), loads
//! the seed CRM into a fresh database per scenario, and drives the real
//! release binary (`calendar-sync run`) as a deployment would. Every
//! calendar-sync number stands next to a PostgreSQL reference for the same
//! work, so a ratio says how far the consumer is from what the server itself
//! can do, whatever the machine:
//!
//! 1. **Backlog catch-up**: `size / 10` source transactions of 10 in-window
//!    inserts, written while calendar-sync is stopped (its slot exists).
//!    References: `pg_recvlogical` draining a second pgoutput slot to the
//!    backlog's end (decoding alone), and one set-based `INSERT .. SELECT`
//!    writing the same events and log rows into scratch copies of the tables
//!    (the writes alone). calendar-sync: from process start until its slot's
//!    `confirmed_flush_lsn` passes the last backlog commit.
//! 2. **One large transaction** of `size` inserts, the same three, plus
//!    calendar-sync's peak RSS, the peak size of `pg_replslot/` (spill files)
//!    while each consumer runs, and the subtransactions it caused.
//! 3. **Initial snapshot** of `size` existing interactions: from process start
//!    until the snapshot's progress row commits, against the set-based statement.
//! 4. **Steady state**: single-row transactions at 300/s; latency from the
//!    writer's commit returning to the event row being visible.
//! 5. **The CRM writer's throughput**: two connections committing single-row
//!    transactions as fast as they can, with nothing consuming, with
//!    `pg_recvlogical` draining a pgoutput slot (decoding alone: the
//!    reference), and with calendar-sync streaming (stamping
//!    `calendar_synced_at` on and off); three interleaved rounds, medians.
//!
//! Scenarios 1-3 also report **CPU**: the server processes serving
//! calendar-sync's sessions (backends and walsender, found in
//! `pg_stat_activity` by `application_name`, `/proc/<pid>/stat` utime +
//! stime sampled every 50 ms) against the set-based statement's backend and
//! pg_recvlogical's walsender, and calendar-sync's own process CPU per row.
//!
//! `--fsync on|off` (default on, as on RDS): on adds `fsync = on`,
//! `full_page_writes = on` and `shared_buffers = 256MB` to the cluster
//! (issue 16's measurements: PostgreSQL 15, fsync on, 256 MB); off keeps
//! `LocalCluster`'s `fsync = off`, `full_page_writes = off`, 64 MB.
//!
//! The goals are printed next to the numbers; nothing asserts a time.
//!
//! ```text
//! cargo bench --bench pipeline                      # 1,000,000 row changes
//! cargo bench --bench pipeline -- --quick           # 100,000
//! cargo bench --bench pipeline -- --size 20000 --only 1,4 --timeout 300
//! cargo bench --bench pipeline -- --size 200k --only 1,2,3,5   # issue 16's table
//! cargo bench --bench pipeline -- --quick --fsync off   # LocalCluster's settings
//! cargo bench --bench pipeline -- --quick --only 1,2,3 --no-stamp   # the stamp's share
//! cargo bench --bench pipeline -- --quick --only 1 --statements     # server time per statement
//! ```
//!
//! `--timeout SECS` (default 900) bounds each consumer measurement: a run
//! that does not finish prints "timed out after X" with how far it got.

mod cpu;
mod process;
mod report;
mod rows;
mod scenario;
mod setup;
mod table;
mod workload;
mod writer;

use std::time::Duration;

/// Command-line options. Unknown arguments (cargo passes `--bench`) are ignored.
#[derive(Debug, Clone)]
pub struct Args {
    /// Row changes per size-driven scenario (1, 2, 3).
    pub size: u64,
    /// Bound of each consumer measurement.
    pub timeout: Duration,
    /// Scenarios to run, 1..=6.
    pub only: Vec<u8>,
    /// Scenario 4's writing time.
    pub steady: Duration,
    /// Scenario 5's writing time per variant.
    pub writer: Duration,
    /// Scenarios 1-4: calendar-sync stamps `calendar_synced_at` (`--no-stamp`
    /// measures the stamp's share).
    pub stamp: bool,
    /// Print the statements that took the most server time in each
    /// calendar-sync run (`pg_stat_statements`).
    pub statements: bool,
    /// `--fsync on|off`: the cluster flushes (on, the default, as on RDS:
    /// with `full_page_writes = on` and `shared_buffers = 256MB`) or not
    /// (`LocalCluster`'s own settings).
    pub fsync: bool,
}

const DEFAULT_SIZE: u64 = 1_000_000;
const QUICK_SIZE: u64 = 100_000;

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut quick = false;
        let mut size = None;
        let mut timeout = Duration::from_secs(900);
        let mut only = vec![1, 2, 3, 4, 5, 6];
        let mut stamp = true;
        let mut statements = false;
        let mut fsync = true;
        let mut args = args.peekable();
        let number = |flag: &str, v: Option<String>| -> Result<u64, String> {
            let v = v.ok_or_else(|| format!("{flag} needs a number"))?;
            let digits = v.replace(['_', ','], "").to_ascii_lowercase();
            let (digits, times) = match digits.strip_suffix('k') {
                Some(d) => (d.to_string(), 1_000),
                None => match digits.strip_suffix('m') {
                    Some(d) => (d.to_string(), 1_000_000),
                    None => (digits, 1),
                },
            };
            digits.parse::<u64>().map(|n| n * times).map_err(|_| {
                format!("{flag} expects a whole number such as 200000 or 200k, got {v:?}")
            })
        };
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--no-stamp" => stamp = false,
                "--statements" => statements = true,
                "--fsync" => {
                    fsync = match args.next().as_deref() {
                        Some("on") => true,
                        Some("off") => false,
                        other => return Err(format!("--fsync expects on or off, got {other:?}")),
                    }
                }
                "--size" => size = Some(number("--size", args.next())?.max(10)),
                "--timeout" => timeout = Duration::from_secs(number("--timeout", args.next())?),
                "--only" => {
                    let v = args.next().ok_or("--only needs a list such as 1,3")?;
                    only = v
                        .split(',')
                        .map(|s| match s.trim().parse::<u8>() {
                            Ok(n @ 1..=6) => Ok(n),
                            _ => Err(format!("--only expects scenarios 1..6, got {s:?}")),
                        })
                        .collect::<Result<_, _>>()?;
                }
                _ => {} // `--bench` and whatever else cargo passes
            }
        }
        Ok(Args {
            size: size.unwrap_or(if quick { QUICK_SIZE } else { DEFAULT_SIZE }),
            timeout,
            only,
            steady: Duration::from_secs(if quick { 10 } else { 20 }),
            writer: Duration::from_secs(if quick { 5 } else { 10 }),
            stamp,
            statements,
            fsync,
        })
    }
}

fn main() -> std::process::ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot build the tokio runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(scenario::run_all(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
