//! Test harness: one throw-away PostgreSQL per test binary (`wal_level=logical`,
//! started on first use, removed when the binary exits), one fresh database and
//! slot per test, the consumer run in-process or as the real binary, and
//! condition waits with timeouts (never bare sleeps).
//!
//! - this module: the test cluster, [`TestDb`], waits, the in-process
//!   consumer ([`Running`]) and what it reports;
//! - `binary`: the real binary (spawned with env, signals, bounded exits);
//! - `http`: its HTTP surface (free port, GET, readiness, `/metrics`);
//! - `failover`: a primary with a slot-synchronizing standby, and a TCP
//!   proxy that plays the RDS endpoint.

#![allow(dead_code)]

mod binary;
mod failover;
mod held;
mod http;

pub use binary::*;
pub use failover::*;
pub use held::*;
pub use http::*;

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use calendar_sync::config::{Config, SecretUrl};
use calendar_sync::demo::CRM_SCHEMA;
pub use calendar_sync::error::FatalKind;
use calendar_sync::error::SyncError;
use calendar_sync::metrics::{Metrics, RECONNECTS_TOTAL};
use calendar_sync::pgcluster::LocalCluster;
use calendar_sync::{db, migrate, stream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use uuid::Uuid;

pub const USER: &str = "00000000-0000-4000-8000-000000000001";
pub const CUSTOMER: &str = "00000000-0000-4000-8000-0000000000c1";
pub const CONTACT: &str = "00000000-0000-4000-8000-0000000000d1";

/// The cluster of this test binary. `TEST_DATABASE_URL` is not supported: the
/// tests restart and kill servers, which needs one of their own.
pub fn cluster() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        LocalCluster::start(
            "test",
            "wal_sender_timeout = 10s\nlog_min_messages = warning\n",
        )
        .unwrap_or_else(|e| panic!("cannot start the test PostgreSQL: {e}"))
    })
}

/// A second cluster for the tests that hold commits ([`HeldCommit`]): a
/// synchronous standby that never answers. The cluster commits with
/// `synchronous_commit = off` (pgcluster), so nothing waits for it except a
/// session that sets `synchronous_commit = on`: its commit is streamed but
/// stays invisible until it is cancelled (issue 13). Apart from the shared
/// one because a held transaction delays every slot creation of its cluster
/// (a new slot waits for the transactions running when it is created).
pub fn held_cluster() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        LocalCluster::start(
            "held",
            "wal_sender_timeout = 10s\nlog_min_messages = warning\nsynchronous_standby_names = 'ghost'\n",
        )
        .unwrap_or_else(|e| panic!("cannot start the held-commit PostgreSQL: {e}"))
    })
}

/// The seed CRM schema with one user, one customer and one contact.
pub async fn load_crm(client: &Client) {
    client.batch_execute(CRM_SCHEMA).await.expect("crm schema");
    client
        .batch_execute(&format!(
            "insert into users (user_id, email) values ('{USER}', 'sam@example.com');
             insert into customer (customer_id, name) values ('{CUSTOMER}', 'Acme Corp');
             insert into contact (contact_id, customer_id, first_name, last_name, email)
               values ('{CONTACT}', '{CUSTOMER}', 'Ada', 'Lovelace', 'ada@acme.test');"
        ))
        .await
        .expect("crm rows");
}

pub async fn connect(url: &str) -> Client {
    db::connect(&SecretUrl::new(url), "test")
        .await
        .expect("connect")
}

/// A fresh database named after a UUID; its name is also the slot name.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: Client,
}

impl TestDb {
    /// An empty database.
    pub async fn empty() -> TestDb {
        TestDb::empty_in(cluster()).await
    }

    /// An empty database on cluster `c` (e.g. a private one).
    pub async fn empty_in(c: &LocalCluster) -> TestDb {
        let name = format!("t_{}", Uuid::new_v4().simple());
        let admin = connect(&c.url("postgres")).await;
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create database");
        let url = c.url(&name);
        let client = connect(&url).await;
        TestDb { name, url, client }
    }

    /// A database holding the seed CRM (users, customer, contact, interaction
    /// with an updated_at trigger), one user, one customer and one contact.
    pub async fn crm() -> TestDb {
        TestDb::crm_in(cluster()).await
    }

    /// [`TestDb::crm`] on cluster `c`.
    pub async fn crm_in(c: &LocalCluster) -> TestDb {
        let db = TestDb::empty_in(c).await;
        load_crm(&db.client).await;
        db
    }

    pub fn config(&self) -> Config {
        let mut cfg = Config::new(self.url.clone(), &self.name).expect("config");
        cfg.publication = self.name.clone();
        cfg
    }

    pub async fn migrate(&self) {
        migrate::migrate(&self.config()).await.expect("migrate");
    }

    /// Inserts an interaction; returns its id.
    pub async fn insert(&self, subject: &str, date_sql: &str, extra: &str) -> Uuid {
        let sql = format!(
            "insert into interaction (interaction_type, subject, interaction_date, created_by {cols})
             values ('meeting', $1, {date_sql}, '{USER}' {vals}) returning interaction_id",
            cols = extra_cols(extra),
            vals = extra_vals(extra),
        );
        self.client
            .query_one(sql.as_str(), &[&subject])
            .await
            .expect("insert interaction")
            .get(0)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// Waits until `sql` (a single bigint) equals `want`.
    pub async fn wait_count(&self, sql: &str, want: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let last = self.count(sql).await;
            if last == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out: `{sql}` is {last}, wanted {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn event(&self, id: Uuid) -> Option<tokio_postgres::Row> {
        self.client
            .query_opt("select * from calendar_events where related_table = 'interaction' and related_id = $1", &[&id])
            .await
            .expect("select event")
    }

    /// Waits until every source transaction committed so far is applied: a
    /// no-op customer update (which always commits a target transaction with
    /// the progress row, and writes no event or log row) must show up in
    /// `calendar_sync_progress`. Transactions apply in commit order, so all
    /// earlier ones are applied too. Works in the source or a separate target.
    pub async fn barrier_in(&self, target: &Client) {
        self.barrier_for(target, &self.name).await;
    }

    /// [`TestDb::barrier_in`] for the consumer of `slot`.
    pub async fn barrier_for(&self, target: &Client, slot: &str) {
        self.barrier_within(target, slot, Duration::from_secs(30))
            .await;
    }

    /// [`TestDb::barrier_for`], waiting at most `timeout` (a consumer that
    /// has a large backlog to catch up on, e.g. after many kills).
    pub async fn barrier_within(&self, target: &Client, slot: &str, timeout: Duration) {
        let before = pg_current_lsn(&self.client).await;
        self.client
            .execute(
                &format!("update customer set name = name where customer_id = '{CUSTOMER}'"),
                &[],
            )
            .await
            .expect("barrier update");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = target
                .query_opt(
                    "select lsn::text, lsn > $1::text::pg_lsn from calendar_sync_progress where slot_name = $2",
                    &[&before, &slot],
                )
                .await
                .expect("progress");
            let seen: Option<String> = row.as_ref().map(|r| r.get(0));
            if row.is_some_and(|r| r.get::<_, bool>(1)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "progress did not pass {before} within {timeout:?} (it is {seen:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this test's slot has confirmed `lsn` (an idle slot follows
    /// the server's WAL through keepalive acknowledgements).
    pub async fn wait_slot_passes(&self, lsn: &str) -> bool {
        wait_until(Duration::from_secs(20), || async {
            self.count(&format!(
                "select count(*) from pg_replication_slots where slot_name = '{}' and confirmed_flush_lsn >= '{lsn}'::pg_lsn",
                self.name
            ))
            .await
                == 1
        })
        .await
    }

    pub async fn barrier(&self) {
        self.barrier_in(&self.client).await;
    }

    /// Drops this test's slot once the walsender has let go of it (shortly
    /// after the consumer left).
    pub async fn drop_slot_once_released(&self) {
        self.wait_count(
            &format!(
                "select count(*) from pg_replication_slots where slot_name = '{}' and not active",
                self.name
            ),
            1,
        )
        .await;
        self.client
            .execute("select pg_drop_replication_slot($1)", &[&self.name])
            .await
            .expect("drop slot");
    }
}

fn extra_cols(extra: &str) -> String {
    extra
        .split(';')
        .filter(|p| !p.is_empty())
        .map(|p| format!(", {}", p.split_once('=').expect("col=val").0))
        .collect()
}

fn extra_vals(extra: &str) -> String {
    extra
        .split(';')
        .filter(|p| !p.is_empty())
        .map(|p| format!(", {}", p.split_once('=').expect("col=val").1))
        .collect()
}

/// The WAL insert position: at or after every commit this session has seen
/// succeed (`pg_current_wal_lsn()`, the write position, can lag behind it with
/// `synchronous_commit = off`, which the test cluster uses).
pub async fn pg_current_lsn(c: &Client) -> String {
    c.query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await
        .expect("wal lsn")
        .get(0)
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The consumer running in-process.
pub struct Running {
    stop: watch::Sender<bool>,
    pub handle: JoinHandle<Result<(), calendar_sync::error::SyncError>>,
    pub metrics: Metrics,
}

impl Running {
    pub fn start(cfg: Config) -> Running {
        let (stop, rx) = watch::channel(false);
        let metrics = Metrics::new();
        let m = metrics.clone();
        let handle = tokio::spawn(async move { stream::run(&cfg, rx, m).await });
        Running {
            stop,
            handle,
            metrics,
        }
    }

    /// Graceful stop: returns the run's result.
    pub async fn stop(self) -> Result<(), calendar_sync::error::SyncError> {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("the consumer stops within 15 s")
            .expect("the consumer task did not panic")
    }

    /// Like kill -9 for the in-process consumer: no rollback, no final status.
    pub fn kill(self) {
        self.handle.abort();
    }
}

/// The value of the unlabelled metric `name` on `m` (0 before it is set).
pub fn metric(m: &Metrics, name: &str) -> f64 {
    m.render()
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// `calendar_sync_reconnects_total` of `m`.
pub fn reconnects(m: &Metrics) -> u64 {
    metric(m, RECONNECTS_TOTAL) as u64
}

/// Waits (bounded) for the in-process consumer to end with a fatal error of
/// `kind` and returns its message and hint.
pub async fn fatal_of(run: &mut Running, kind: FatalKind, within: Duration) -> (String, String) {
    let result = match tokio::time::timeout(within, &mut run.handle).await {
        Ok(joined) => joined.expect("the consumer task did not panic"),
        Err(_) => {
            run.handle.abort();
            panic!(
                "the consumer still runs after {within:?}: the error was taken for transient (reconnects: {})",
                reconnects(&run.metrics)
            );
        }
    };
    match result {
        Err(SyncError::Fatal {
            kind: k,
            message,
            hint,
        }) => {
            assert_eq!(k, kind, "{message}\n  hint: {hint}");
            (message, hint)
        }
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

/// A migrated seed CRM with the consumer streaming in-process.
pub async fn started() -> (TestDb, Running) {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    (db, run)
}

/// Counts `calendar_sync_log` rows of interaction `id` with `action` and `status`.
pub fn log_rows(id: Uuid, action: &str, status: &str) -> String {
    format!(
        "select count(*) from calendar_sync_log
          where interaction_id = '{id}' and action = '{action}' and status = '{status}'"
    )
}

/// [`log_rows`] with status `success`.
pub fn success_rows(id: Uuid, action: &str) -> String {
    log_rows(id, action, "success")
}

/// Waits until the slot exists and its initial snapshot committed (the
/// database is its own target, the slot named after it).
pub async fn wait_streaming(db: &TestDb) {
    wait_streaming_into(db, db, &db.name).await;
}

/// Waits until `slot` in `source`'s database has its initial snapshot
/// committed into `target` and a consumer streams from it.
pub async fn wait_streaming_into(source: &TestDb, target: &TestDb, slot: &str) {
    target
        .wait_count(
            &format!("select count(*) from calendar_sync_progress where slot_name = '{slot}'"),
            1,
        )
        .await;
    source
        .wait_count(
            &format!(
                "select count(*) from pg_replication_slots where slot_name = '{slot}' and active"
            ),
            1,
        )
        .await;
}

/// xorshift64*: a seeded, dependency-free generator for the random tests
/// (the seed is printed so a failing run can be repeated, see [`seed`]).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random test's seed: `$var` when set (to repeat a run), else from the
/// clock; printed either way.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(7)
        });
    eprintln!("seed: {var}={seed}");
    seed
}
