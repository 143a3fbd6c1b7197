//! `calendar-sync status` through the real binary: exit code 0 healthy,
//! 1 degraded, 2 broken; `--json` carries the same fields.

use std::process::Output;

use uuid::Uuid;

use crate::support::*;

fn status(db: &TestDb, extra: &[&str]) -> (i32, serde_json::Value, Output) {
    let out = binary_for(db)
        .args(["status", "--json"])
        .args(extra)
        .output()
        .expect("run status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json is not JSON ({e}): stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v, out)
}

fn text_status(db: &TestDb) -> (i32, String) {
    let out = binary_for(db)
        .args(["status"])
        .output()
        .expect("run status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_streaming_consumer_is_healthy_with_slot_wal_and_holder() {
    let (db, run) = started().await;
    db.insert("Status", "now()", "").await;
    db.barrier().await;
    let (code, v, out) = status(&db, &[]);
    assert_eq!(code, 0, "{v} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(v["health"], "healthy", "{v}");
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    assert_eq!(v["slot_exists"], true, "{v}");
    assert_eq!(v["slot_active"], true, "{v}");
    assert!(v["slot_active_pid"].as_i64().is_some(), "{v}");
    assert_eq!(v["slot_client_addr"], "127.0.0.1", "{v}");
    assert_eq!(v["wal_status"], "reserved", "{v}");
    assert!(
        v["retained_wal_bytes"].as_i64().is_some_and(|b| b >= 0),
        "{v}"
    );
    assert!(
        v["safe_wal_size_bytes"].is_null(),
        "unlimited max_slot_wal_keep_size: {v}"
    );
    assert!(v["lag_bytes"].as_i64().is_some(), "{v}");
    assert!(v["lag_seconds"].as_f64().is_some_and(|s| s < 300.0), "{v}");
    assert!(v["last_commit_time"].as_str().is_some(), "{v}");
    assert_eq!(v["snapshot_in_progress"], false, "{v}");
    assert_eq!(v["publication"], db.name.as_str(), "{v}");
    assert_eq!(v["publication_exists"], true, "{v}");
    assert_eq!(v["wal_level"], "logical", "{v}");
    assert_eq!(v["pending_failures"], 0, "{v}");
    assert!(v["oldest_failure"].is_null(), "{v}");
    let (code, text) = text_status(&db);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("healthy") && text.contains("retained WAL"),
        "{text}"
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_failures_make_status_degraded_and_name_the_oldest() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    db.client
        .batch_execute("alter table interaction drop constraint interaction_created_by_fkey")
        .await
        .expect("drop the source-side FK");
    let bad: Uuid = db
        .client
        .query_one(
            "insert into interaction (interaction_type, subject, interaction_date, created_by)
             values ('meeting', 'By a ghost', now(), $1) returning interaction_id",
            &[&Uuid::new_v4()],
        )
        .await
        .expect("insert")
        .get(0);
    db.wait_count(
        "select count(*) from calendar_sync_failures where not resolved",
        1,
    )
    .await;
    let (code, v, _) = status(&db, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["health"], "degraded", "{v}");
    assert_eq!(v["pending_failures"], 1, "{v}");
    assert_eq!(
        v["oldest_failure"]["interaction_id"],
        bad.to_string(),
        "{v}"
    );
    assert!(v["oldest_failure"]["created_at"].as_str().is_some(), "{v}");
    assert!(
        v["problems"].to_string().contains("failure"),
        "the reason is named: {v}"
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lag_over_the_threshold_or_an_inactive_slot_is_degraded() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    run.stop().await.expect("clean stop");
    db.insert("While stopped", "now()", "").await;
    // The test cluster commits asynchronously: wait until the WAL write
    // position (what lag is measured against) is past the insert.
    let inserted = pg_current_lsn(&db.client).await;
    db.wait_count(
        &format!("select count(*) where pg_current_wal_lsn() >= '{inserted}'::pg_lsn"),
        1,
    )
    .await;
    let (code, v, _) = status(&db, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["slot_active"], false, "{v}");
    assert!(v["problems"].to_string().contains("inactive"), "{v}");
    // The stopped consumer has not applied a committed transaction: with
    // --max-lag-seconds 0 that lag is over the threshold too.
    let (code, v, _) = status(&db, &["--max-lag-seconds", "0"]);
    assert_eq!(code, 1, "{v}");
    assert!(v["problems"].to_string().contains("lag"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_or_publication_is_broken() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    run.stop().await.expect("clean stop");
    db.drop_slot_once_released().await;
    let (code, v, _) = status(&db, &[]);
    assert_eq!(code, 2, "{v}");
    assert_eq!(v["health"], "broken", "{v}");
    assert_eq!(v["slot_exists"], false, "{v}");
    assert!(v["problems"].to_string().contains("slot"), "{v}");
    // The way back is named where the operator reads it, not only in `run`'s
    // fatal error.
    assert!(
        v["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("`calendar-sync run --resync`")),
        "{v}"
    );
    let (code, text) = text_status(&db);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("broken"), "{text}");
    // No slot, so nothing to say about its WAL (not "unlimited": the
    // server's max_slot_wal_keep_size is not what is missing).
    assert!(text.lines().any(|l| l == "safe WAL size    -"), "{text}");

    db.client
        .batch_execute(&format!("drop publication {}", db.name))
        .await
        .expect("drop publication");
    let (code, v, _) = status(&db, &[]);
    assert_eq!(code, 2, "{v}");
    assert_eq!(v["publication_exists"], false, "{v}");
    assert!(v["problems"].to_string().contains("publication"), "{v}");
}

/// A slot without a progress row: its snapshot has not committed. From
/// outside only the size estimate is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_without_progress_is_a_snapshot_in_progress_with_the_estimate() {
    let db = TestDb::crm().await;
    db.migrate().await;
    db.client
        .batch_execute("analyze interaction")
        .await
        .expect("analyze");
    db.client
        .execute(
            "select pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.name],
        )
        .await
        .expect("create slot");
    let (_, v, _) = status(&db, &[]);
    assert_eq!(v["snapshot_in_progress"], true, "{v}");
    assert!(v["snapshot_rows_estimate"].as_i64().is_some(), "{v}");
    let (_, text) = text_status(&db);
    assert!(text.contains("snapshot in progress"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_that_cannot_connect_is_broken() {
    let port = free_port();
    let out = binary()
        .args(["status", "--json"])
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/nope"),
        )
        .output()
        .expect("run status");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON even then");
    assert_eq!(v["health"], "broken", "{v}");
}
