//! Idle slots follow the server's WAL, SIGTERM mid-transaction, and the HTTP
//! surface of the real binary.

use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_databases_traffic_never_makes_the_idle_slot_hold_wal() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let other = TestDb::empty().await;
    other
        .client
        .batch_execute("create table noise (id serial primary key, v text)")
        .await
        .expect("noise table");
    for _ in 0..20 {
        other
            .client
            .batch_execute(
                "insert into noise (v) select md5(g::text) from generate_series(1, 200) g",
            )
            .await
            .expect("noise");
    }
    let wal = pg_current_lsn(&other.client).await;
    let follows = db.wait_slot_passes(&wal).await;
    assert!(
        follows,
        "the idle slot's confirmed_flush_lsn did not pass {wal}"
    );
    assert_eq!(db.count("select count(*) from calendar_sync_log").await, 0);
    run.stop().await.expect("clean stop");
}

/// `calendar_sync_replication_lag_bytes` of `m` (0 before the first tick).
fn lag_bytes(m: &calendar_sync::metrics::Metrics) -> u64 {
    metric(m, calendar_sync::metrics::REPLICATION_LAG_BYTES) as u64
}

/// The highest lag in bytes `m` shows while the consumer starts, streams and
/// passes two ticks (the gauge is refreshed every 2 s).
async fn peak_lag_while_starting(db: &TestDb, m: &calendar_sync::metrics::Metrics) -> u64 {
    let mut peak = 0;
    let mut streaming_since = None;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        peak = peak.max(lag_bytes(m));
        if streaming_since.is_none()
            && db
                .count(&format!(
                    "select count(*) from pg_replication_slots where slot_name = '{}' and active",
                    db.name
                ))
                .await
                == 1
        {
            streaming_since = Some(std::time::Instant::now());
        }
        if streaming_since.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            return peak;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the consumer was not streaming within 60 s");
}

/// The lag gauge counts from the position the server already has: before the
/// first acknowledgement it counted from 0/0 and showed the server's whole WAL
/// position (tens of MB on a test cluster, hundreds of GB on a long-lived
/// RDS instance) for the first seconds after every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gauge_never_counts_from_zero_after_a_start() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let wal: i64 = db
        .client
        .query_one("select (pg_current_wal_lsn() - '0/0')::bigint", &[])
        .await
        .expect("wal position")
        .get(0);
    // Other tests write WAL into the shared cluster meanwhile, which an idle
    // slot rightly lags behind for a moment; counting from 0/0 shows the
    // whole position.
    let bound = wal as u64 / 2;
    assert!(
        wal as u64 > 16 << 20,
        "the test needs a WAL position over 16 MiB, got {wal}"
    );
    let run = Running::start(db.config());
    let first = peak_lag_while_starting(&db, &run.metrics).await;
    run.stop().await.expect("clean stop");
    let run = Running::start(db.config());
    let again = peak_lag_while_starting(&db, &run.metrics).await;
    run.stop().await.expect("clean stop");
    assert!(
        first < bound && again < bound,
        "lag bytes peaked at {first} (new slot) and {again} (restart) on an idle CRM; the WAL position is {wal}"
    );
}

fn spawn(db: &TestDb, extra: &[(&str, String)]) -> std::process::Child {
    spawn_run(db, extra, Stdio::null())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_a_large_transaction_exits_zero_and_loses_nothing() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let mut child = spawn(&db, &[]);
    wait_streaming(&db).await;
    // The batch's commit (its progress row) waits for this lock, so the
    // SIGTERM lands while the target transaction is open, whatever the speed
    // of the machine (the apply of 4,000 rows can take less than a poll).
    let locker = connect(&db.url).await;
    locker
        .batch_execute("begin; lock table calendar_sync_progress in access exclusive mode")
        .await
        .expect("lock");
    db.client
        .batch_execute(&format!(
            "insert into interaction (interaction_type, subject, interaction_date, created_by)
             select 'phone', 'bulk ' || g, now(), '{USER}' from generate_series(1, 4000) g"
        ))
        .await
        .expect("large transaction");
    // calendar-sync's target session has an open write transaction.
    let applying = wait_until(Duration::from_secs(30), || async {
        db.count(&format!(
            "select count(*) from pg_stat_activity where datname = '{}' and application_name = 'calendar-sync' and backend_xid is not null",
            db.name
        ))
        .await
            >= 1
    })
    .await;
    assert!(applying, "never saw the large transaction being applied");
    let (code, took) = sigterm_and_wait(&mut child).await;
    locker.batch_execute("rollback").await.expect("unlock");
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let after_stop = db.count("select count(*) from calendar_sync_log").await;
    assert!(
        after_stop == 0 || after_stop == 4000,
        "a partial transaction is visible: {after_stop} log rows"
    );
    let mut child = spawn(&db, &[]);
    db.wait_count("select count(*) from calendar_events", 4000)
        .await;
    db.barrier().await;
    assert_eq!(
        db.count("select count(*) from calendar_sync_log").await,
        4000
    );
    let (code, _) = sigterm_and_wait(&mut child).await;
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_healthz_readyz_and_metrics() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let port = free_port();
    let mut child = spawn(
        &db,
        &[("CALENDAR_SYNC_HTTP_ADDR", format!("127.0.0.1:{port}"))],
    );
    wait_ready(port).await;
    assert_eq!(http_get(port, "/healthz").map(|(c, _)| c), Some(200));
    db.insert("Scraped", "now()", "").await;
    db.wait_count("select count(*) from calendar_events", 1)
        .await;
    let (scraped, _) = wait_metrics(port, Duration::from_secs(10), |body| {
        body.contains("calendar_sync_actions_total{action=\"create\",status=\"success\"} 1")
    })
    .await;
    assert!(scraped, "create not counted in /metrics");
    let (_, body) = http_get(port, "/metrics").expect("metrics");
    for name in [
        "calendar_sync_transactions_applied_total",
        "calendar_sync_last_applied_lsn",
        "calendar_sync_replication_lag_bytes",
        "calendar_sync_replication_lag_seconds",
        "calendar_sync_pending_failures",
        "calendar_sync_reconnects_total",
        "calendar_sync_backoff_active",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(http_get(port, "/nope").map(|(c, _)| c), Some(404));
    let (code, _) = sigterm_and_wait(&mut child).await;
    assert_eq!(code, Some(0));
}
