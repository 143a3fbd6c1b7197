//! Issue 14, "survive a failover without an operator": the real binary with
//! `CALENDAR_SYNC_SLOT_FAILOVER=true` streams through an endpoint (a TCP
//! proxy) from a PostgreSQL 17+ primary whose physical standby synchronizes
//! the slot; the primary is killed (`pg_ctl stop -m immediate`), the standby
//! promoted and the endpoint switched to it. The consumer must go on by
//! itself (same process, no operator step), and the calendar, in the same
//! database (so it fails over too: the RDS shape), must end exactly as the
//! promoted database's interactions call for.
//!
//! Skipped before PostgreSQL 17 (no failover slots): CI runs them on 17 and 18.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crash::random_transaction;
use crate::recovery::connect_retrying;
use crate::support::*;

const DB: &str = "t_failover";

/// The PostgreSQL major of the suite, or `None` (with a note) before 17.
fn major_with_failover_slots() -> Option<u32> {
    let major = binaries_major();
    if major < 17 {
        eprintln!("failover test skipped: PostgreSQL {major} has no failover slots (17+); run it with CALENDAR_SYNC_PG_BINDIR=$(.ci/pg-binaries 17) or 18");
        return None;
    }
    Some(major)
}

/// A primary and its standby, the endpoint on the primary, a CRM database
/// [`DB`] with `pre_rows` interactions, and the real binary streaming it
/// through the endpoint with a failover slot that the standby holds
/// synchronized.
struct Rig {
    pair: Pair,
    proxy: Proxy,
    /// Through the endpoint.
    db: TestDb,
    consumer: Child,
    log_path: PathBuf,
}

impl Rig {
    async fn start(name: &'static str, pre_rows: u32) -> Rig {
        // synchronous_commit = on: a commit the workload or the consumer saw
        // is on the primary's disk (the standby may still lack it: the
        // promotion decides what counts).
        let pair = Pair::start(name, "synchronous_commit = on\nwal_sender_timeout = 10s\n").await;
        let proxy = Proxy::start(pair.primary.port()).await;
        connect(&pair.primary.url("postgres"))
            .await
            .batch_execute(&format!("create database {DB}"))
            .await
            .expect("create database");
        let url = proxy.url(DB);
        let db = TestDb {
            name: DB.to_string(),
            url: url.clone(),
            client: connect_retrying(&url, "failover-test").await,
        };
        load_crm(&db.client).await;
        db.client
            .batch_execute(&format!(
                "insert into interaction (interaction_type, subject, interaction_date, created_by, customer_id, contact_id)
                 select 'visit', 'pre ' || g, now() + g * interval '1 minute', '{USER}', '{CUSTOMER}', '{CONTACT}'
                   from generate_series(1, {pre_rows}) g"
            ))
            .await
            .expect("existing rows");
        db.migrate().await;
        let log_path =
            std::env::temp_dir().join(format!("calendar-sync-{name}-{}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).expect("consumer log");
        let consumer = binary_for(&db)
            .args(["run"])
            .env("CALENDAR_SYNC_SLOT_FAILOVER", "true")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn calendar-sync run");
        let rig = Rig {
            pair,
            proxy,
            db,
            consumer,
            log_path,
        };
        wait_streaming(&rig.db).await;
        rig.pair.sync_slots().await;
        rig.db.barrier().await;
        let lsn = pg_current_lsn(&rig.db.client).await;
        rig.db.barrier().await;
        if let Err(seen) = wait_synced(&rig.pair, DB, DB, &lsn).await {
            panic!("the standby did not synchronize slot {DB} past {lsn} within 30 s: {seen}");
        }
        rig
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the primary, promotes the standby, switches the endpoint.
    async fn fail_over(&self) {
        let primary = self.pair.primary.clone();
        tokio::task::spawn_blocking(move || primary.stop("immediate"))
            .await
            .expect("stop task")
            .expect("pg_ctl stop -m immediate");
        let standby = self.pair.standby.clone();
        tokio::task::spawn_blocking(move || standby.promote())
            .await
            .expect("promote task")
            .expect("pg_ctl promote");
        self.proxy.switch(self.pair.standby.port());
    }

    /// Waits until the consumer holds the slot on the promoted standby.
    async fn wait_resumed(&self) {
        let new_primary = connect(&self.pair.standby.url(DB)).await;
        let resumed = wait_until(Duration::from_secs(40), || async {
            new_primary
                .query_one(
                    "select count(*) from pg_replication_slots where slot_name = $1 and active",
                    &[&DB],
                )
                .await
                .expect("slots")
                .get::<_, i64>(0)
                == 1
        })
        .await;
        assert!(
            resumed,
            "the consumer did not take slot {DB} on the promoted standby within 40 s; its log:\n{}",
            self.log()
        );
    }

    /// The consumer still runs (it never exited); it stops cleanly on
    /// SIGTERM. Returns its log.
    async fn stop_consumer(&mut self) -> String {
        assert!(
            self.consumer.try_wait().expect("try_wait").is_none(),
            "the consumer exited; its log:\n{}",
            self.log()
        );
        let (code, took) = sigterm_and_wait(&mut self.consumer).await;
        assert_eq!(code, Some(0), "clean stop after {took:?}");
        self.log()
    }

    async fn remove(self) {
        let _ = std::fs::remove_file(&self.log_path);
        drop(self.proxy);
        self.pair.remove().await;
    }
}

/// Runs `n` random CRM transactions through `url`, `done` counting the ones
/// that committed. A transaction cut off by the failover is not retried (it
/// may or may not have reached the standby: the promoted database says
/// which); the workload reconnects and goes on. Returns how many failed.
async fn workload(url: String, seed: u64, n: u64, done: Arc<AtomicU64>) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut c = connect_retrying(&url, "failover-workload").await;
    let mut failed = 0;
    for i in 0..n {
        match c.batch_execute(&random_transaction(&mut rng, i)).await {
            Ok(()) => {
                done.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                failed += 1;
                if c.is_closed() {
                    c = connect_retrying(&url, "failover-workload").await;
                } else {
                    let _ = c.batch_execute("rollback").await;
                }
            }
        }
        // Spread over a few seconds, so the kill falls mid-stream.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    failed
}

/// `calendar-sync status` through the endpoint: exit code and output.
async fn status_of(db: &TestDb) -> (Option<i32>, String) {
    let child = binary_for(db)
        .args(["status"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn calendar-sync status");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("status task")
        .expect("status output");
    code_and_text(&out)
}

/// A random workload; midway the primary dies, the standby is promoted and
/// the workload goes on against it. At the end `reconcile --dry-run` finds
/// nothing missing, extra or drifted, no interaction has two events, and no
/// source transaction was applied twice (log rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_takes_the_stream_over_without_an_operator() {
    let Some(major) = major_with_failover_slots() else {
        return;
    };
    let seed = seed("FAILOVER_SEED");
    eprintln!("failover test on PostgreSQL {major}");
    let t0 = Instant::now();
    let mut rng = Rng(seed);
    let mut rig = Rig::start("failover", 200).await;
    let synced = t0.elapsed();
    let (code, before) = status_of(&rig.db).await;
    eprintln!("status before the failover (exit {code:?}):\n{before}");
    assert!(
        before.contains(&format!(
            "failover slot    yes (synchronized_standby_slots {STANDBY_SLOT})"
        )),
        "{before}"
    );

    // The workload; midway the primary dies and the standby takes over.
    let done = Arc::new(AtomicU64::new(0));
    let work = tokio::spawn(workload(rig.db.url.clone(), rng.next(), 300, done.clone()));
    let midway = 80 + rng.below(120);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            done.load(Ordering::SeqCst) >= midway
        })
        .await,
        "the workload did not commit {midway} transactions within 30 s"
    );
    let applied_before: i64 = connect(&rig.pair.primary.url(DB))
        .await
        .query_one("select count(*) from calendar_sync_log", &[])
        .await
        .expect("log rows")
        .get(0);
    let killed_at = Instant::now();
    rig.fail_over().await;
    let committed_at_kill = done.load(Ordering::SeqCst);
    let switched = killed_at.elapsed();
    rig.wait_resumed().await;
    let resumed_after = killed_at.elapsed();
    let failed = tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .expect("the workload ends within 60 s")
        .expect("the workload did not panic");
    rig.db.client = connect_retrying(&rig.db.url, "failover-test").await;
    rig.db
        .barrier_within(&rig.db.client, DB, Duration::from_secs(30))
        .await;
    let caught_up = t0.elapsed();
    let (code, after) = status_of(&rig.db).await;
    eprintln!("status after the failover (exit {code:?}):\n{after}");
    assert!(
        after.contains("failover slot    yes (synchronized_standby_slots empty!)"),
        "{after}"
    );
    let log = rig.stop_consumer().await;
    for line in log.lines().filter(|l| {
        (l.contains("WARN") && !l.contains("sslmode"))
            || l.contains("ERROR")
            || l.contains("resuming")
            || l.contains("streaming")
    }) {
        eprintln!("consumer: {line}");
    }
    assert!(
        log.contains("transient failure"),
        "the consumer never noticed the failover?\n{log}"
    );
    assert!(!log.contains("fatal"), "{log}");

    // The calendar is what the promoted database calls for.
    let db = &rig.db;
    let report = calendar_sync::reconcile::reconcile(&db.config(), true)
        .await
        .expect("reconcile --dry-run");
    eprintln!("reconcile --dry-run: {report}");
    assert_eq!(
        (report.missing, report.extra, report.drifted, report.invalid),
        (0, 0, 0, 0),
        "missing, extra, drifted, invalid (seed {seed}): {report}"
    );
    assert!(report.interactions > 200, "{report}");
    assert_eq!(
        db.count(
            "select count(*) from (select related_id from calendar_events
              group by related_id having count(*) > 1) d"
        )
        .await,
        0,
        "an interaction with two events"
    );
    // Nothing applied twice: a source transaction is applied in one target
    // transaction (its log rows share that transaction's now()), so one
    // applied again after the failover would show a second created_at; one
    // create per interaction (archiving cancels, it does not delete); and
    // every event is one create not undone by a delete.
    assert_eq!(
        db.count(
            "select count(*) from (select 1 from calendar_sync_log where status = 'success'
              group by source_lsn having count(distinct created_at) > 1) d"
        )
        .await,
        0,
        "a source transaction applied in two target transactions (seed {seed})"
    );
    assert_eq!(
        db.count(
            "select count(*) from (select 1 from calendar_sync_log where status = 'success' and action = 'create'
              group by interaction_id having count(*) > 1) d"
        )
        .await,
        0,
        "an interaction created twice (seed {seed})"
    );
    assert_eq!(
        db.count(
            "select count(*) from (
               select l.interaction_id,
                      count(*) filter (where action = 'create') - count(*) filter (where action = 'delete') as balance,
                      bool_or(e.related_id is not null) as has_event
                 from calendar_sync_log l left join calendar_events e on e.related_id = l.interaction_id
                where l.status = 'success'
                group by l.interaction_id) b
              where balance <> has_event::int"
        )
        .await,
        0,
        "creates minus deletes per interaction is not whether it has an event (seed {seed})"
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_failures")
            .await,
        0
    );
    let applied_after = db.count("select count(*) from calendar_sync_log").await;
    assert!(
        applied_after > applied_before,
        "nothing applied after the failover"
    );
    eprintln!(
        "failover test on PostgreSQL {major}: slot synchronized {synced:?} after the start; killed after {committed_at_kill} committed transactions ({applied_before} log rows applied), endpoint switched {switched:?} after the kill, slot taken on the new primary {resumed_after:?} after it; {failed} workload transactions cut off; caught up at {caught_up:?}, total {:?}; {} interactions, {} events, {applied_after} log rows",
        t0.elapsed(),
        report.interactions,
        report.events
    );
    rig.remove().await;
}

/// The consumer's own target commit (calendar in the source database) must be
/// on the standby before the slot's confirmed position passes the source
/// transaction it applied: the standby copies that position from the primary
/// as soon as it has received the *source* transaction, and a promotion then
/// resumes after it, so a target commit the standby lacked would be lost for
/// good. Here the standby's walsender is frozen (SIGSTOP) between the source
/// transaction reaching the standby and the consumer's target commit, while
/// the standby's slot sync worker (a connection of its own) keeps copying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_commit_the_standby_lacks_is_not_acknowledged_past() {
    if major_with_failover_slots().is_none() {
        return;
    }
    let mut rig = Rig::start("failover-lag", 0).await;
    let primary = connect(&rig.pair.primary.url(DB)).await;
    let standby = connect(&rig.pair.standby.url(DB)).await;

    // The consumer applies the insert but waits before its target commit.
    let locker = connect(&rig.pair.primary.url(DB)).await;
    locker
        .batch_execute("begin; lock table calendar_sync_progress in access exclusive mode")
        .await
        .expect("lock");
    let before = pg_current_lsn(&primary).await;
    let id = rig
        .db
        .insert(
            "Applied before the failover",
            "now() + interval '1 day'",
            "",
        )
        .await;
    let waiting = wait_until(Duration::from_secs(20), || async {
        primary
            .query_one(
                "select count(*) from pg_stat_activity where application_name = 'calendar-sync' and wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get::<_, i64>(0)
            >= 1
    })
    .await;
    assert!(
        waiting,
        "the consumer never waited on the progress lock; its log:\n{}",
        rig.log()
    );
    // The standby has the insert (the consumer only receives what it has);
    // from now on it receives nothing.
    let walsender: i32 = primary
        .query_one(
            "select pid from pg_stat_replication where application_name = $1",
            &[&STANDBY_SLOT],
        )
        .await
        .expect("the standby's walsender")
        .get(0);
    signal("STOP", walsender as u32);
    locker.batch_execute("rollback").await.expect("unlock");
    let applied = wait_until(Duration::from_secs(20), || async {
        primary
            .query_one(
                "select count(*) from calendar_events where related_id = $1",
                &[&id],
            )
            .await
            .expect("events")
            .get::<_, i64>(0)
            == 1
    })
    .await;
    assert!(applied, "the consumer did not apply the insert");
    // Several status intervals and slot sync rounds pass: the slot
    // synchronized on the standby must stay below the insert.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let synced_past: bool = standby
        .query_one(
            "select confirmed_flush_lsn > $2::text::pg_lsn from pg_replication_slots where slot_name = $1",
            &[&DB, &before],
        )
        .await
        .expect("the standby's slot")
        .get(0);
    eprintln!("the standby's copy of the slot passed the insert: {synced_past}");

    // The frozen walsender dies with its server: what it did not send is lost.
    signal("KILL", walsender as u32);
    drop((primary, locker));
    rig.fail_over().await;
    rig.wait_resumed().await;
    rig.db.client = connect_retrying(&rig.db.url, "failover-test").await;
    rig.db
        .barrier_within(&rig.db.client, DB, Duration::from_secs(30))
        .await;
    let log = rig.stop_consumer().await;
    let report = calendar_sync::reconcile::reconcile(&rig.db.config(), true)
        .await
        .expect("reconcile --dry-run");
    assert_eq!(
        rig.db
            .count(&format!(
                "select count(*) from interaction where interaction_id = '{id}'"
            ))
            .await,
        1,
        "the insert is on the promoted standby"
    );
    assert_eq!(
        (report.missing, report.extra, report.drifted),
        (0, 0, 0),
        "the insert's event was lost with the target commit: {report}\nconsumer log:\n{log}"
    );
    assert!(
        !synced_past,
        "the slot passed a target commit the standby lacked"
    );
    rig.remove().await;
}

/// A promoted standby that kept its old primary's `synchronized_standby_slots`
/// names a slot it does not have: PostgreSQL then sends the failover slot
/// nothing, without an error anywhere calendar-sync would see. `status` says
/// so (broken); emptying the setting (a reload) lets the stream go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_slot_the_server_lacks_is_reported_by_status() {
    if major_with_failover_slots().is_none() {
        return;
    }
    let cluster = crate::recovery::private_cluster(
        "failover-ghost",
        "synchronized_standby_slots = 'ghost_standby'\n",
    )
    .await;
    let db = TestDb::crm_in(&cluster).await;
    db.migrate().await;
    let mut cfg = db.config();
    cfg.slot_failover = true;
    let run = Running::start(cfg.clone());
    wait_streaming(&db).await;
    let id = db.insert("Held back", "now()", "").await;
    let waits = wait_until(Duration::from_secs(20), || async {
        db.count(
            "select count(*) from pg_stat_activity
              where backend_type = 'walsender' and wait_event = 'WaitForStandbyConfirmation'",
        )
        .await
            == 1
    })
    .await;
    assert!(waits, "the walsender does not wait for the missing standby");
    let st = calendar_sync::status::status(&cfg, 60)
        .await
        .expect("status");
    assert_eq!(st.health, calendar_sync::status::Health::Broken, "{st}");
    assert!(
        st.problems
            .iter()
            .any(|p| p.contains("names ghost_standby")),
        "{st}"
    );
    assert!(
        st.to_string().contains(
            "failover slot    yes (synchronized_standby_slots ghost_standby; not here: ghost_standby!)"
        ),
        "{st}"
    );
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_events where related_id = '{id}'"
        ))
        .await,
        0,
        "nothing is sent while the setting names a missing slot"
    );
    cluster
        .append_conf("synchronized_standby_slots = ''")
        .expect("conf");
    db.client
        .execute("select pg_reload_conf()", &[])
        .await
        .expect("reload");
    db.wait_count(
        &format!("select count(*) from calendar_events where related_id = '{id}'"),
        1,
    )
    .await;
    run.stop().await.expect("clean stop");
    crate::recovery::remove_cluster(cluster).await;
}
