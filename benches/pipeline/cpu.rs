//! CPU time of processes, from `/proc/<pid>/stat` (utime + stime): the
//! server processes serving a client (found in `pg_stat_activity` by
//! `application_name`, sampled every 50 ms so a process that exits still
//! counts up to its last sample), one backend around one statement, and
//! calendar-sync's own process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::Client;

use crate::setup::{connect, Db};

/// Clock ticks per second of utime/stime (`getconf CLK_TCK`, 100 if unknown).
fn ticks_per_sec() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime of `pid` so far; `None` once it has exited.
pub fn proc_cpu(pid: u32) -> Option<Duration> {
    stat(pid).map(|(cpu, _)| cpu)
}

/// utime + stime, and the start time (tells a reused pid apart).
fn stat(pid: u32) -> Option<(Duration, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from
    // the last ')'. utime, stime and starttime are fields 14, 15 and 22.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let start: u64 = f.get(19)?.parse().ok()?;
    Some((
        Duration::from_secs_f64((utime + stime) as f64 / ticks_per_sec()),
        start,
    ))
}

/// CPU of the server processes of one client.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerCpu {
    /// Regular backends (SQL sessions).
    pub backends: Duration,
    /// Walsenders (decoding).
    pub walsenders: Duration,
    /// Distinct server processes seen.
    pub processes: usize,
}

impl ServerCpu {
    pub fn total(&self) -> Duration {
        self.backends + self.walsenders
    }
}

/// Samples, until [`Sampler::finish`], the server processes of database `db`
/// whose `application_name` is LIKE `app`.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<ServerCpu>>,
}

const EVERY: Duration = Duration::from_millis(50);

impl Sampler {
    pub async fn start(db: &Db, app: &str) -> anyhow::Result<Sampler> {
        let c = connect(&db.url).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, name, app) = (stop.clone(), db.name.clone(), app.to_string());
        let task = tokio::spawn(async move {
            let mut seen: HashMap<u32, Seen> = HashMap::new();
            loop {
                let last = flag.load(Ordering::Acquire);
                sample(&c, &name, &app, &mut seen).await?;
                if last {
                    break;
                }
                tokio::time::sleep(EVERY).await;
            }
            let mut cpu = ServerCpu {
                processes: seen.len(),
                ..ServerCpu::default()
            };
            for p in seen.into_values() {
                if p.walsender {
                    cpu.walsenders += p.cpu;
                } else {
                    cpu.backends += p.cpu;
                }
            }
            Ok(cpu)
        });
        Ok(Sampler { stop, task })
    }

    /// One last sample, then the totals.
    pub async fn finish(self) -> anyhow::Result<ServerCpu> {
        self.stop.store(true, Ordering::Release);
        self.task.await.context("the CPU sampler")?
    }
}

/// A server process seen by the sampler.
struct Seen {
    walsender: bool,
    start: u64,
    /// Its CPU at the last sample.
    cpu: Duration,
}

async fn sample(
    c: &Client,
    db: &str,
    app: &str,
    seen: &mut HashMap<u32, Seen>,
) -> anyhow::Result<()> {
    let rows = c
        .query(
            "select pid, backend_type = 'walsender' from pg_stat_activity
              where datname = $1 and application_name like $2",
            &[&db, &app],
        )
        .await
        .context("listing the server processes")?;
    for r in rows {
        let pid = r.get::<_, i32>(0) as u32;
        if let Some((cpu, start)) = stat(pid) {
            seen.entry(pid).or_insert(Seen {
                walsender: r.get(1),
                start,
                cpu,
            });
        }
    }
    // Every process seen so far that still runs (not a reused pid).
    for (pid, p) in seen.iter_mut() {
        if let Some((cpu, start)) = stat(*pid) {
            if start == p.start {
                p.cpu = p.cpu.max(cpu);
            }
        }
    }
    Ok(())
}

/// The server process of a session.
pub async fn backend_pid(c: &Client) -> anyhow::Result<u32> {
    Ok(c.query_one("select pg_backend_pid()", &[])
        .await?
        .get::<_, i32>(0) as u32)
}
