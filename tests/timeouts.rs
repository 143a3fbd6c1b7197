//! Waiting is bounded (contract §7): a lock held by a CRM session is a
//! transient error after the configured lock timeout, retried with backoff;
//! SIGTERM is answered within seconds while a statement waits.

use std::time::Duration;

use uuid::Uuid;

use crate::recovery::reconnects;
use crate::support::*;

/// A CRM session's open transaction that holds the event row of `id`
/// (`select ... for update`), as an idle CRM transaction would.
async fn crm_locks_event(db: &TestDb, id: Uuid) -> tokio_postgres::Client {
    let crm = connect(&db.url).await;
    crm.batch_execute("begin").await.expect("begin");
    let locked = crm
        .execute(
            "select 1 from calendar_events where related_id = $1 for update",
            &[&id],
        )
        .await
        .expect("lock the event row");
    assert_eq!(locked, 1);
    crm
}

async fn rename(db: &TestDb, id: Uuid, subject: &str) {
    db.client
        .execute(
            "update interaction set subject = $2 where interaction_id = $1",
            &[&id, &subject],
        )
        .await
        .expect("update interaction");
}

fn events_titled(id: Uuid, title: &str) -> String {
    format!("select count(*) from calendar_events where related_id = '{id}' and title = '{title}'")
}

fn update_log_rows(id: Uuid) -> String {
    format!("select count(*) from calendar_sync_log where interaction_id = '{id}' and action = 'update' and status = 'success'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_lock_on_an_event_is_a_transient_error_and_the_change_applies_once_it_ends() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let mut cfg = db.config();
    cfg.lock_timeout = Duration::from_millis(300);
    let run = Running::start(cfg);
    wait_streaming(&db).await;
    let id = db.insert("Before", "now()", "").await;
    db.wait_count(&events_titled(id, "Before"), 1).await;

    let crm = crm_locks_event(&db, id).await;
    rename(&db, id, "After").await;
    assert!(
        wait_until(Duration::from_secs(15), || async {
            reconnects(&run.metrics) >= 2
        })
        .await,
        "the lock wait never ended as a transient error (reconnects: {})",
        reconnects(&run.metrics)
    );
    assert_eq!(db.count(&events_titled(id, "After")).await, 0);

    crm.batch_execute("commit").await.expect("crm commit");
    db.wait_count(&events_titled(id, "After"), 1).await;
    db.barrier().await;
    assert_eq!(db.count(&update_log_rows(id)).await, 1, "applied once");
    assert_eq!(
        db.count("select count(*) from calendar_sync_failures")
            .await,
        0,
        "a lock wait is no failure of the row"
    );
    run.stop().await.expect("clean stop");
}
