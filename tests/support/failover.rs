//! A primary with a physical standby that synchronizes logical failover slots
//! (PostgreSQL 17+), and a TCP proxy that plays the RDS endpoint: the
//! consumer connects to the proxy, and a failover switches the proxy's
//! backend from the old primary to the promoted standby.
//!
//! The standby is made without pg_basebackup (the npm server binaries the CI
//! uses for 17 and 18 have none): a physical slot on the primary keeps the
//! WAL, the data directory is copied between `pg_backup_start` and
//! `pg_backup_stop` ([`LocalCluster::copy_data`]), and the `labelfile` of
//! `pg_backup_stop` becomes the copy's `backup_label`.

use std::sync::Arc;
use std::time::Duration;

use calendar_sync::pgcluster::LocalCluster;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{connect, wait_until};

/// The standby's physical slot on the primary; also its application_name.
pub const STANDBY_SLOT: &str = "standby1";

/// The major version of the server binaries the tests run on (e.g. 17), from
/// `postgres --version`, without starting a server.
pub fn binaries_major() -> u32 {
    let bindir = calendar_sync::pgcluster::find_bindir()
        .unwrap_or_else(|e| panic!("no PostgreSQL server binaries: {e}"));
    let out = std::process::Command::new(bindir.join("postgres"))
        .arg("--version")
        .output()
        .expect("postgres --version");
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 17.10"
    text.rsplit(' ')
        .next()
        .and_then(|v| v.trim().split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the major version from {text:?}"))
}

/// A primary and its hot standby, streaming through the physical slot
/// [`STANDBY_SLOT`]. The primary waits for that slot before it sends logical
/// changes (`synchronized_standby_slots`); the standby synchronizes failover
/// slots (`sync_replication_slots`) once [`Pair::sync_slots`] turned it on.
pub struct Pair {
    pub primary: Arc<LocalCluster>,
    pub standby: Arc<LocalCluster>,
}

impl Pair {
    /// Starts both. `conf` is added to the primary's postgresql.conf (and so
    /// to the standby's copy of it).
    pub async fn start(name: &'static str, conf: &'static str) -> Pair {
        let primary = tokio::task::spawn_blocking(move || LocalCluster::start(name, conf))
            .await
            .expect("primary start task")
            .unwrap_or_else(|e| panic!("cannot start the primary: {e}"));
        let primary = Arc::new(primary);
        let admin = connect(&primary.url("postgres")).await;
        admin
            .execute(
                "select pg_create_physical_replication_slot($1, true)",
                &[&STANDBY_SLOT],
            )
            .await
            .expect("the standby's physical slot");

        // The base backup: this session stays open from start to stop.
        admin
            .execute(
                "select pg_backup_start('calendar-sync failover test', true)",
                &[],
            )
            .await
            .expect("pg_backup_start");
        let p = primary.clone();
        let standby = tokio::task::spawn_blocking(move || p.copy_data(&format!("{name}-standby")))
            .await
            .expect("copy task")
            .unwrap_or_else(|e| panic!("cannot copy the primary's data directory: {e}"));
        let stop = admin
            .query_one(
                "select labelfile, spcmapfile from pg_backup_stop(true)",
                &[],
            )
            .await
            .expect("pg_backup_stop");
        let (label, spcmap): (String, String) = (stop.get(0), stop.get(1));
        standby
            .write_data_file("backup_label", &label)
            .expect("backup_label");
        if !spcmap.is_empty() {
            standby
                .write_data_file("tablespace_map", &spcmap)
                .expect("tablespace_map");
        }
        standby
            .write_data_file("standby.signal", "")
            .expect("standby.signal");
        // dbname in primary_conninfo: the slot sync worker connects to a
        // database. synchronized_standby_slots is emptied: once promoted,
        // the standby has no standby of its own, and a slot named there that
        // does not exist would hold its logical walsenders back for good.
        standby
            .append_conf(&format!(
                "primary_conninfo = 'host=127.0.0.1 port={port} user=postgres dbname=postgres application_name={STANDBY_SLOT}'
primary_slot_name = '{STANDBY_SLOT}'
hot_standby = on
hot_standby_feedback = on
sync_replication_slots = off
synchronized_standby_slots = ''
",
                port = primary.port()
            ))
            .expect("standby settings");
        let standby = tokio::task::spawn_blocking(move || {
            let mut s = standby;
            s.start_copy().map(|()| s)
        })
        .await
        .expect("standby start task")
        .unwrap_or_else(|e| panic!("cannot start the standby: {e}"));

        primary
            .append_conf(&format!("synchronized_standby_slots = '{STANDBY_SLOT}'"))
            .expect("synchronized_standby_slots");
        admin
            .execute("select pg_reload_conf()", &[])
            .await
            .expect("reload");
        let ready = wait_until(Duration::from_secs(30), || async {
            let row = admin
                .query_one(
                    "select current_setting('synchronized_standby_slots'),
                            (select count(*) from pg_stat_replication where application_name = $1 and state = 'streaming')",
                    &[&STANDBY_SLOT],
                )
                .await
                .expect("replication state");
            row.get::<_, String>(0) == STANDBY_SLOT && row.get::<_, i64>(1) == 1
        })
        .await;
        assert!(
            ready,
            "the standby did not stream within 30 s (or synchronized_standby_slots was not reloaded)"
        );
        Pair {
            primary,
            standby: Arc::new(standby),
        }
    }

    /// Turns the standby's slot synchronization on (`sync_replication_slots`,
    /// a reload). Call it once the slot exists: the slot sync worker naps
    /// twice as long after each round that found nothing to do, up to 30 s,
    /// so one started with the standby would see a slot created a few
    /// seconds later only after a nap of up to half a minute.
    pub async fn sync_slots(&self) {
        self.standby
            .append_conf("sync_replication_slots = on")
            .expect("sync_replication_slots");
        connect(&self.standby.url("postgres"))
            .await
            .execute("select pg_reload_conf()", &[])
            .await
            .expect("reload the standby");
    }

    /// Stops and removes both, off the async worker threads.
    pub async fn remove(self) {
        tokio::task::spawn_blocking(move || drop(self))
            .await
            .expect("cluster removal task");
    }
}

/// Waits until the standby holds `slot` of database `db` as a synchronized,
/// persistent slot whose confirmed position has reached `lsn`. The standby
/// keeps a new synchronized slot temporary (and a promotion drops it) until
/// the primary's slot has moved past what the standby reserved for it, and a
/// logical slot's restart position moves only at a running-transactions
/// record (the primary logs one every 15 s): this asks the primary for one
/// every half second meanwhile (`pg_log_standby_snapshot()`, as
/// PostgreSQL's own failover-slot tests do). On timeout, returns what the
/// standby shows.
pub async fn wait_synced(pair: &Pair, db: &str, slot: &str, lsn: &str) -> Result<(), String> {
    let primary = connect(&pair.primary.url(db)).await;
    let standby = connect(&pair.standby.url(db)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = standby
            .query_opt(
                "select synced, temporary, confirmed_flush_lsn >= $2::text::pg_lsn,
                        format('synced %s, temporary %s, confirmed_flush_lsn %s, restart_lsn %s', synced, temporary, confirmed_flush_lsn, restart_lsn)
                   from pg_replication_slots where slot_name = $1",
                &[&slot, &lsn],
            )
            .await
            .expect("the standby's slots");
        if row.as_ref().is_some_and(|r| {
            r.get::<_, bool>(0) && !r.get::<_, bool>(1) && r.get::<_, Option<bool>>(2) == Some(true)
        }) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(row.map_or_else(|| "no such slot".into(), |r| r.get(3)));
        }
        primary
            .execute("select pg_log_standby_snapshot()", &[])
            .await
            .expect("pg_log_standby_snapshot");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The RDS endpoint: accepts on a local port and forwards each connection to
/// the current backend port. [`Proxy::switch`] changes the backend and drops
/// every forwarded connection (as a DNS flip plus the old primary's death
/// do).
pub struct Proxy {
    port: u16,
    backend: watch::Sender<u16>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(backend: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let (tx, rx) = watch::channel(backend);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let port = *rx.borrow_and_update();
                    // A backend that is down: the client sees its connection
                    // closed, as with an endpoint whose server is gone.
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            backend: tx,
            task,
        }
    }

    /// `postgres://postgres@127.0.0.1:PROXY/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Points the endpoint at `backend`; every open connection is dropped.
    pub fn switch(&self, backend: u16) {
        self.backend.send_replace(backend);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
