//! The bench's PostgreSQL, its databases, and what the report says about the
//! machine.

use std::path::{Path, PathBuf};

use anyhow::Context;
use calendar_sync::config::{Config, SecretUrl};
use calendar_sync::demo::CRM_SCHEMA;
use calendar_sync::pgcluster::{find_bindir, LocalCluster};
use calendar_sync::{db, migrate};
use tokio_postgres::Client;

use crate::workload;

/// Settings added to the cluster's own (`LocalCluster` sets `fsync = off`,
/// `synchronous_commit = off`, `full_page_writes = off`, `shared_buffers =
/// 64MB`; a later line of postgresql.conf wins): fewer checkpoints
/// during the large scenarios, a quiet log, and `synchronous_commit = on` as
/// on RDS. With it off, a commit reaches the walsender only when the WAL
/// writer flushes (every `wal_writer_delay`, 200 ms): commit-to-calendar
/// latency would measure that timer, not calendar-sync (p50 ~150 ms
/// whatever the consumer did). With `fsync = off` a flush costs no disk wait.
const EXTRA_CONF: &str =
    "max_wal_size = 4GB\nlog_min_messages = warning\nsynchronous_commit = on\n";

/// `--fsync on` (the default): durable as on RDS, which runs with fsync on,
/// and as the issue 16 measurements (PostgreSQL 15, fsync on, 256 MB of
/// shared buffers). Full-page writes go with fsync: off only where a torn
/// page cannot matter.
const FSYNC_CONF: &str = "fsync = on\nfull_page_writes = on\nshared_buffers = 256MB\n";

/// With `--statements`: per-statement totals of every database
/// (`pg_stat_statements`, nested statements included).
const STATEMENTS_CONF: &str =
    "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\npg_stat_statements.track_planning = on\n";

/// The cluster and what every scenario needs from it.
pub struct Bench {
    pub cluster: LocalCluster,
    /// `pg_recvlogical` of the same installation as the server.
    pub recvlogical: PathBuf,
    /// The server's data directory (`pg_replslot/` is inside).
    pub data_dir: PathBuf,
    /// Where calendar-sync's stderr goes, one file per start.
    pub log_dir: PathBuf,
    admin: Client,
    next_db: std::sync::atomic::AtomicU32,
    /// `pg_stat_statements` is loaded (`--statements`).
    pub statements: bool,
}

/// One scenario's database; its name is also the slot and publication name.
pub struct Db {
    pub name: String,
    pub url: String,
    pub client: Client,
}

/// A session of the bench itself. calendar-sync's `db::connect` names every
/// session `calendar-sync`; the bench's are renamed `bench` so that the CPU
/// sampler ([`crate::cpu`]) counts calendar-sync's server processes only.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let c = db::connect(&SecretUrl::new(url), "bench")
        .await
        .with_context(|| "connecting to the bench cluster")?;
    c.batch_execute("set application_name = 'bench'").await?;
    Ok(c)
}

impl Bench {
    pub async fn start(statements: bool, fsync: bool) -> anyhow::Result<Bench> {
        let mut conf = EXTRA_CONF.to_string();
        if fsync {
            conf.push_str(FSYNC_CONF);
        }
        if statements {
            conf.push_str(STATEMENTS_CONF);
        }
        let cluster = tokio::task::spawn_blocking(move || LocalCluster::start("bench", &conf))
            .await
            .context("starting the cluster")??;
        let recvlogical = find_recvlogical(&find_bindir()?);
        let admin = connect(&cluster.url("postgres")).await?;
        let data_dir: String = admin.query_one("show data_directory", &[]).await?.get(0);
        let log_dir =
            std::env::temp_dir().join(format!("calendar-sync-bench-logs-{}", std::process::id()));
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Bench {
            cluster,
            recvlogical,
            data_dir: PathBuf::from(data_dir),
            log_dir,
            admin,
            next_db: std::sync::atomic::AtomicU32::new(1),
            statements,
        })
    }

    /// A fresh database with the seed CRM, the bench's customers, contacts
    /// and row generator, and calendar-sync's migrations (publication included).
    pub async fn fresh_db(&self, tag: &str) -> anyhow::Result<Db> {
        let n = self
            .next_db
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("bench_{n}_{tag}");
        self.admin
            .batch_execute(&format!("create database {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        let url = self.cluster.url(&name);
        let client = connect(&url).await?;
        client
            .batch_execute(CRM_SCHEMA)
            .await
            .context("loading the CRM schema")?;
        client
            .batch_execute(workload::SETUP)
            .await
            .context("loading the bench's CRM rows and row generator")?;
        migrate::migrate(&self.config(&name, &url)?)
            .await
            .context("calendar-sync migrate")?;
        if self.statements {
            client
                .batch_execute("create extension if not exists pg_stat_statements")
                .await
                .context("creating pg_stat_statements")?;
        }
        Ok(Db { name, url, client })
    }

    pub fn config(&self, name: &str, url: &str) -> anyhow::Result<Config> {
        let mut cfg = Config::new(url, name)?;
        cfg.publication = name.to_string();
        Ok(cfg)
    }

    /// Ends the database's sessions, drops its slots, then the database.
    pub async fn drop_db(&self, db: Db) -> anyhow::Result<()> {
        drop(db.client);
        // Walsenders are among the sessions; a slot can be dropped once inactive.
        for _ in 0..100 {
            self.admin
                .execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity
                      where datname = $1 and pid <> pg_backend_pid()",
                    &[&db.name],
                )
                .await?;
            let slots: i64 = self
                .admin
                .query_one(
                    "select count(*) from pg_replication_slots where database = $1",
                    &[&db.name],
                )
                .await?
                .get(0);
            if slots == 0 {
                break;
            }
            // Fails harmlessly when a slot became active again in between.
            let _ = self
                .admin
                .execute(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots
                      where database = $1 and not active",
                    &[&db.name],
                )
                .await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.admin
            .batch_execute(&format!("drop database if exists {} with (force)", db.name))
            .await
            .with_context(|| format!("dropping database {}", db.name))?;
        Ok(())
    }

    pub fn replslot_dir(&self) -> PathBuf {
        self.data_dir.join("pg_replslot")
    }

    /// What the report says about where it ran.
    pub async fn machine(&self) -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| kb / 1024.0 / 1024.0)
            .unwrap_or(0.0);
        let pg = self
            .admin
            .query_one("select current_setting('server_version')", &[])
            .await
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_else(|e| format!("unknown ({e})"));
        let settings = self
            .admin
            .query_one(
                "select string_agg(name || '=' || current_setting(name), ', ' order by name)
                   from pg_settings where name in ('fsync', 'synchronous_commit', 'shared_buffers',
                     'logical_decoding_work_mem', 'max_wal_size', 'wal_level', 'full_page_writes')",
                &[],
            )
            .await
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu,
            mem_gib,
            pg,
            settings,
            commit: git_commit(Path::new(env!("CARGO_MANIFEST_DIR"))),
            load_at_start: load_average(),
        }
    }
}

pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub mem_gib: f64,
    pub pg: String,
    pub settings: String,
    pub commit: String,
    /// /proc/loadavg's 1, 5, 15 minute averages: other work on the machine.
    pub load_at_start: String,
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Next to the server's `initdb` (following a symlink such as
/// /usr/local/bin/initdb), else from PATH.
fn find_recvlogical(bindir: &Path) -> PathBuf {
    let beside = |d: &Path| Some(d.join("pg_recvlogical")).filter(|p| p.is_file());
    beside(bindir)
        .or_else(|| {
            std::fs::canonicalize(bindir.join("initdb"))
                .ok()
                .and_then(|real| real.parent().and_then(beside))
        })
        .unwrap_or_else(|| PathBuf::from("pg_recvlogical"))
}

fn git_commit(dir: &Path) -> String {
    let out = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=10"])
        .current_dir(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "unknown".into(),
    }
}

/// Bytes of all files under `dir` (0 when it cannot be read).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// With `--statements`: forgets the totals so far.
pub async fn reset_statements(bench: &Bench, db: &Db) -> anyhow::Result<()> {
    if bench.statements {
        db.client
            .batch_execute("select pg_stat_statements_reset()")
            .await
            .context("resetting pg_stat_statements")?;
    }
    Ok(())
}

/// With `--statements`: the statements of this database that took the most
/// time since [`reset_statements`], on stderr.
pub async fn print_statements(bench: &Bench, db: &Db, what: &str) -> anyhow::Result<()> {
    if !bench.statements {
        return Ok(());
    }
    let rows = db
        .client
        .query(
            "select round(total_exec_time)::bigint, round(total_plan_time)::bigint, calls, rows,
                    shared_blks_hit + shared_blks_read,
                    wal_bytes::bigint, left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
               from pg_stat_statements s join pg_database d on d.oid = s.dbid
              where d.datname = current_database()
              order by total_exec_time + total_plan_time desc limit 15",
            &[],
        )
        .await
        .context("reading pg_stat_statements")?;
    eprintln!(
        "  statements during {what} (exec ms, plan ms, calls, rows, blocks, WAL bytes, query):"
    );
    for r in rows {
        eprintln!(
            "  {:>8} {:>7} {:>8} {:>9} {:>10} {:>11}  {}",
            r.get::<_, i64>(0),
            r.get::<_, i64>(1),
            r.get::<_, i64>(2),
            r.get::<_, i64>(3),
            r.get::<_, i64>(4),
            r.get::<_, i64>(5),
            r.get::<_, String>(6)
        );
    }
    Ok(())
}
