//! Waiting is bounded (contract §7): a lock held by a CRM session is a
//! transient error after the configured lock timeout, retried with backoff;
//! SIGTERM is answered within seconds while a statement waits.

use std::process::Stdio;
use std::time::Duration;

use uuid::Uuid;

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

/// Waits until a session of calendar-sync in `db` (not its walsender) waits
/// for a lock.
pub(crate) async fn consumer_waits_for_a_lock(db: &TestDb) -> bool {
    wait_until(Duration::from_secs(20), || async {
        db.count(&format!(
            "select count(*) from pg_stat_activity where datname = '{}'
                and application_name = 'calendar-sync' and wait_event_type = 'Lock'",
            db.name
        ))
        .await
            >= 1
    })
    .await
}

/// Holds the consumer's initial snapshot just before it commits: a CRM
/// transaction with an xid makes CREATE_REPLICATION_SLOT wait (the slot's
/// consistent point waits for running transactions); meanwhile another
/// session takes a SHARE lock on `calendar_sync_progress` (no xid, so no
/// wait for the slot), which the snapshot's final progress write needs; then
/// the first ends. Returns the session holding the progress lock, once the
/// consumer waits for it. `start` starts the consumer.
pub(crate) async fn hold_snapshot_commit(
    db: &TestDb,
    start: impl FnOnce(),
) -> tokio_postgres::Client {
    let xid = connect(&db.url).await;
    xid.batch_execute("begin; select pg_current_xact_id()")
        .await
        .expect("a transaction with an xid");
    start();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            db.count(&format!(
                "select count(*) from pg_stat_activity where datname = '{}'
                    and backend_type = 'walsender' and wait_event_type = 'Lock'",
                db.name
            ))
            .await
                == 1
        })
        .await,
        "CREATE_REPLICATION_SLOT did not wait for the open transaction"
    );
    let progress = connect(&db.url).await;
    progress
        .batch_execute("begin; lock table calendar_sync_progress in share mode")
        .await
        .expect("lock calendar_sync_progress");
    xid.batch_execute("commit").await.expect("commit");
    assert!(
        consumer_waits_for_a_lock(db).await,
        "the snapshot did not reach its progress write"
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_progress")
            .await,
        0
    );
    progress
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

/// SIGTERM while a statement waits for a CRM lock: the in-flight batch is
/// abandoned (its connections dropped, so the server rolls it back) and the
/// process exits 0 within seconds; the next start applies the change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_a_crm_lock_exits_zero_at_once_and_a_restart_applies_once() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let long_wait = [("CALENDAR_SYNC_LOCK_TIMEOUT", "5min".to_string())];
    let mut child = spawn_run(&db, &long_wait, Stdio::null());
    wait_streaming(&db).await;
    let id = db.insert("Before", "now()", "").await;
    db.wait_count(&events_titled(id, "Before"), 1).await;

    let crm = crm_locks_event(&db, id).await;
    rename(&db, id, "After").await;
    assert!(consumer_waits_for_a_lock(&db).await, "never blocked");
    let (code, _) = sigterm_within(&mut child, Duration::from_secs(5)).await;
    assert_eq!(code, Some(0));

    crm.batch_execute("commit").await.expect("crm commit");
    let mut child = spawn_run(&db, &long_wait, Stdio::null());
    db.wait_count(&events_titled(id, "After"), 1).await;
    db.barrier().await;
    assert_eq!(db.count(&update_log_rows(id)).await, 1, "applied once");
    assert_eq!(
        sigterm_within(&mut child, Duration::from_secs(10)).await.0,
        Some(0)
    );
}

/// SIGTERM while the initial snapshot waits (here: its final write, behind a
/// lock) ends the process at once with status 0, and the snapshot is not
/// committed; the next start takes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_initial_snapshot_exits_zero_at_once() {
    let db = TestDb::crm().await;
    db.insert("Existing", "now()", "").await;
    db.migrate().await;
    let long_wait = [("CALENDAR_SYNC_LOCK_TIMEOUT", "5min".to_string())];
    let mut child = None;
    let progress_lock = hold_snapshot_commit(&db, || {
        child = Some(spawn_run(&db, &long_wait, Stdio::null()));
    })
    .await;
    let mut child = child.expect("started");
    let (code, _) = sigterm_within(&mut child, Duration::from_secs(5)).await;
    assert_eq!(code, Some(0));
    progress_lock
        .batch_execute("commit")
        .await
        .expect("release");

    let mut child = spawn_run(&db, &long_wait, Stdio::null());
    wait_streaming(&db).await;
    db.barrier().await;
    assert_eq!(
        db.count("select count(*) from calendar_sync_log where action = 'create'")
            .await,
        1,
        "the interrupted snapshot left nothing; the second wrote its event once"
    );
    assert_eq!(
        sigterm_within(&mut child, Duration::from_secs(10)).await.0,
        Some(0)
    );
}

/// A stamp is never visible before its event: the stamps of a batch's
/// written chunks commit only after the batch does. Here a source
/// transaction's first chunk (two new interactions) is written and stamped,
/// then its last change waits for a CRM lock and the batch rolls back, again
/// and again: neither the events nor the stamps of the first two show; once
/// the lock is gone, all three apply and are stamped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamps_of_a_batch_that_cannot_commit_never_show() {
    let mut db = TestDb::crm().await;
    db.migrate().await;
    let mut cfg = db.config();
    cfg.lock_timeout = Duration::from_millis(300);
    cfg.batch.max_changes = 2;
    let run = Running::start(cfg);
    wait_streaming(&db).await;
    let locked = db.insert("Before", "now()", "").await;
    db.wait_count(&events_titled(locked, "Before"), 1).await;

    let crm = crm_locks_event(&db, locked).await;
    let tx = db.client.build_transaction().start().await.expect("begin");
    let mut fresh = Vec::new();
    for subject in ["New 1", "New 2"] {
        fresh.push(
            tx.query_one(
                "insert into interaction (interaction_type, subject, interaction_date, created_by)
                 values ('meeting', $1, now(), (select created_by from interaction where interaction_id = $2))
                 returning interaction_id",
                &[&subject, &locked],
            )
            .await
            .expect("insert")
            .get::<_, Uuid>(0),
        );
    }
    tx.execute(
        "update interaction set subject = 'After' where interaction_id = $1",
        &[&locked],
    )
    .await
    .expect("update");
    tx.commit().await.expect("commit");
    let stamped = format!(
        "select count(*) from interaction where interaction_id in ('{}', '{}') and calendar_synced_at is not null",
        fresh[0], fresh[1]
    );
    assert!(
        wait_until(Duration::from_secs(15), || async {
            reconnects(&run.metrics) >= 3
        })
        .await,
        "the lock wait never ended as a transient error (reconnects: {})",
        reconnects(&run.metrics)
    );
    assert!(
        run.metrics.savepoint_count() >= 2,
        "the first chunk and its stamps were written at least once"
    );
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_events where related_id in ('{}', '{}')",
            fresh[0], fresh[1]
        ))
        .await,
        0
    );
    assert_eq!(
        db.count(&stamped).await,
        0,
        "stamps showed before their events"
    );

    crm.batch_execute("commit").await.expect("crm commit");
    db.wait_count(&events_titled(locked, "After"), 1).await;
    db.wait_count(&stamped, 2).await;
    run.stop().await.expect("clean stop");
}
