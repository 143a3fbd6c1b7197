//! The real `calendar-sync run`, started and stopped as a deployment would,
//! and what is sampled while it runs.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::setup::{dir_size, Bench, Db};

/// How one timed measurement ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Done(Duration),
    TimedOut { after: Duration, progress: String },
    Failed(String),
}

impl Outcome {
    pub fn time(&self) -> Option<Duration> {
        match self {
            Outcome::Done(d) => Some(*d),
            _ => None,
        }
    }
}

/// Highest values seen while sampling.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peaks {
    /// VmRSS of calendar-sync, KiB.
    pub rss_kib: u64,
    /// Bytes under `pg_replslot/`.
    pub replslot_bytes: u64,
}

impl Peaks {
    pub fn sample_dir(&mut self, replslot: &Path) {
        self.replslot_bytes = self.replslot_bytes.max(dir_size(replslot));
    }
}

/// A running `calendar-sync run`; killed if dropped without [`CalendarSync::stop`].
pub struct CalendarSync {
    child: tokio::process::Child,
    pid: u32,
    http: SocketAddr,
    log: PathBuf,
    pub started: Instant,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port for /metrics")?;
    Ok(l.local_addr()?)
}

impl CalendarSync {
    /// Starts the release binary against `db` (slot and publication named
    /// after it), `/metrics` on a free port, stderr to a log file.
    pub fn spawn(bench: &Bench, db: &Db, stamp: bool, label: &str) -> anyhow::Result<Self> {
        let http = free_addr()?;
        let log = bench.log_dir.join(format!("{}-{label}.log", db.name));
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_calendar-sync"));
        cmd.arg("run")
            .env_remove("TARGET_DATABASE_URL")
            .env("DATABASE_URL", &db.url)
            .env("CALENDAR_SYNC_SLOT", &db.name)
            .env("CALENDAR_SYNC_PUBLICATION", &db.name)
            .env("CALENDAR_SYNC_HTTP_ADDR", http.to_string())
            .env("CALENDAR_SYNC_WRITE_SYNCED_AT", stamp.to_string())
            .env(
                "RUST_LOG",
                std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        let started = Instant::now();
        let child = cmd.spawn().context("starting calendar-sync run")?;
        let pid = child.id().context("calendar-sync exited at once")?;
        Ok(CalendarSync {
            child,
            pid,
            http,
            log,
            started,
        })
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        s.lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// utime + stime of the process so far.
    pub fn cpu(&self) -> Option<Duration> {
        crate::cpu::proc_cpu(self.pid)
    }

    /// Peak resident set size so far (VmHWM), KiB.
    pub fn hwm_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM:")
    }

    pub fn sample(&self, peaks: &mut Peaks, replslot: &Path) {
        if let Some(rss) = self.status_kib("VmRSS:") {
            peaks.rss_kib = peaks.rss_kib.max(rss);
        }
        peaks.sample_dir(replslot);
    }

    /// `Some(why)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "calendar-sync exited ({status}); last lines of {}:\n{}",
                self.log.display(),
                self.log_tail()
            )),
            Ok(None) => None,
            Err(e) => Some(format!("cannot check calendar-sync: {e}")),
        }
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// The `/metrics` text, if the endpoint answers.
    pub async fn metrics(&self) -> Option<String> {
        let fetch = async {
            let mut s = tokio::net::TcpStream::connect(self.http).await.ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).await.ok()?;
            Some(body)
        };
        tokio::time::timeout(Duration::from_secs(5), fetch)
            .await
            .ok()
            .flatten()
    }

    /// SIGTERM, then up to 60 s for a clean exit (kill -9 after that).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // kill(1) sends SIGTERM; the crate has no libc dependency.
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                anyhow::ensure!(
                    status.success(),
                    "calendar-sync exited with {status} after SIGTERM; last lines of {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                );
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                anyhow::bail!("calendar-sync did not exit within 60 s of SIGTERM; killed it")
            }
        }
    }

    /// Polls `done` every 100 ms (sampling RSS and `pg_replslot/`) until it
    /// holds, the process exits, or `timeout` since the start passes. The time
    /// is counted from the process start.
    pub async fn wait<F, Fut>(
        &mut self,
        timeout: Duration,
        replslot: &Path,
        peaks: &mut Peaks,
        mut done: F,
    ) -> anyhow::Result<Outcome>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<bool>>,
    {
        loop {
            self.sample(peaks, replslot);
            if done().await? {
                return Ok(Outcome::Done(self.started.elapsed()));
            }
            if let Some(why) = self.exited() {
                return Ok(Outcome::Failed(why));
            }
            if self.started.elapsed() > timeout {
                return Ok(Outcome::TimedOut {
                    after: self.started.elapsed(),
                    progress: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sum of every sample of metric `name` in Prometheus text (all label sets).
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}
