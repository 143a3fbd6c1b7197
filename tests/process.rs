//! The real binary: migrate is idempotent, run stops cleanly on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent() {
    let db = TestDb::crm().await;
    for round in 0..2 {
        let out = binary()
            .args(["migrate"])
            .env("DATABASE_URL", &db.url)
            .env("CALENDAR_SYNC_PUBLICATION", &db.name)
            .output()
            .expect("run migrate");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "round {round}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if round == 1 {
            assert!(
                stdout.contains("none (up to date)") && stdout.contains("exists"),
                "{stdout}"
            );
        }
        // `if not exists` notices are no news to an operator (they were
        // logged at INFO on the first migrate of a same-database setup).
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("NOTICE"),
            "round {round} logged server notices: {stderr}"
        );
    }
    // Four source and four target migrations, each recorded once.
    assert_eq!(
        db.count("select count(*) from calendar_sync_schema_migrations")
            .await,
        8
    );
    // No slot: `migrate` never creates it.
    assert_eq!(
        db.count(&format!(
            "select count(*) from pg_replication_slots where slot_name = '{}'",
            db.name
        ))
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_and_exits_zero_on_sigterm_after_a_final_status_update() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let interval = [("CALENDAR_SYNC_STATUS_INTERVAL_SECS", "30".to_string())];
    let mut child = spawn_run(&db, &interval, Stdio::null());
    wait_streaming(&db).await;
    let id = db.insert("Via the binary", "now()", "").await;
    db.wait_count(
        &format!("select count(*) from calendar_events where related_id = '{id}'"),
        1,
    )
    .await;
    let (code, _) = sigterm_within(&mut child, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    // The status interval is 30 s, so only the final status update can have
    // moved the slot to the applied transaction. The walsender reads that
    // update after the process is gone, on its own time (under load it was
    // not yet done when this was checked at once): wait for it, well below
    // the 30 s interval.
    let acked = wait_until(Duration::from_secs(10), || async {
        db.count(&format!(
            "select count(*) from pg_replication_slots s join calendar_sync_progress p using (slot_name)
              where slot_name = '{}' and s.confirmed_flush_lsn >= p.lsn",
            db.name
        ))
        .await
            == 1
    })
    .await;
    assert!(
        acked,
        "the final status update reported the last applied LSN"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_slot_progress_lag_and_pending_failures_as_json() {
    let (db, run) = started().await;
    db.insert("Status", "now()", "").await;
    db.barrier().await;
    let out = binary_for(&db)
        .args(["status", "--json"])
        .output()
        .expect("run status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(v["slot"], db.name.as_str());
    assert_eq!(v["slot_exists"], true);
    assert_eq!(v["slot_active"], true);
    assert_eq!(v["pending_failures"], 0);
    assert!(
        v["progress_lsn"].as_str().is_some_and(|l| l.contains('/')),
        "{v}"
    );
    assert!(v["lag_bytes"].as_i64().is_some(), "{v}");
    run.stop().await.expect("clean stop");
}

/// With REPLICA IDENTITY FULL a column list without private_notes would make
/// every CRM UPDATE and DELETE of interaction fail: migrate refuses instead,
/// creates no publication, and the CRM keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_a_replica_identity_the_column_list_cannot_cover() {
    let db = TestDb::crm().await;
    db.client
        .batch_execute("alter table interaction replica identity full")
        .await
        .expect("ri full");
    let err = calendar_sync::migrate::migrate(&db.config())
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("REPLICA IDENTITY is FULL") && text.contains("REPLICA IDENTITY DEFAULT"),
        "{text}"
    );
    assert_eq!(
        db.count(&format!(
            "select count(*) from pg_publication where pubname = '{}'",
            db.name
        ))
        .await,
        0
    );
    let id = db.insert("Still writable", "now()", "").await;
    db.client
        .execute(
            "update interaction set subject = 'edited' where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("CRM update works");
    db.client
        .batch_execute("alter table interaction replica identity default")
        .await
        .expect("ri default");
    calendar_sync::migrate::migrate(&db.config())
        .await
        .expect("migrate with the default identity");
    db.client
        .execute("delete from interaction where interaction_id = $1", &[&id])
        .await
        .expect("CRM delete works");
}

/// The README's first command: `calendar-sync demo` starts its own
/// PostgreSQL, shows every kind of change reach the calendar, and exits 0.
/// Its interactions are at fixed times of day in the zone it prints (issue
/// 15, point 7), so the first screen reads the same whenever it runs.
#[test]
fn the_demo_runs_on_its_own_and_shows_fixed_times_of_day() {
    let out = binary()
        .arg("demo")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |title: &str, time: &str| {
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with(title) && l.contains(time))
    };
    assert!(row("Renewal call ", "12:00-12:15"), "{stdout}");
    assert!(row("Quarterly review ", "10:00-11:00"), "{stdout}");
    assert!(
        row("Quarterly review (moved to 14:00)", "14:00-15:00"),
        "{stdout}"
    );
    assert!(row("Site visit ", "09:00-10:30"), "{stdout}");
    assert!(
        !stdout.contains("Old visit"),
        "the 90-day-old visit stays out: {stdout}"
    );
    for action in ["create", "update", "cancel", "delete"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(action) && l.contains("success")),
            "a {action} in the log: {stdout}"
        );
    }
}
