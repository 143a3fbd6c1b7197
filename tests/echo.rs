//! calendar-sync's own writes to interaction (calendar_synced_at, with the CRM's
//! updated_at trigger) never cause an event write, a log row or a loop, and an
//! idle slot follows the server's WAL.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_with_the_updated_at_trigger_are_ignored_and_the_idle_slot_keeps_up() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let id = db.insert("Echo", "now()", "").await;
    db.wait_count(
        "select count(*) from interaction where calendar_synced_at is not null",
        1,
    )
    .await;
    db.client
        .execute(
            "update interaction set subject = 'Echo 2' where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("update");
    db.wait_count("select count(*) from calendar_sync_log", 2)
        .await;
    db.barrier().await;
    let stamp = || async {
        db.client
            .query_one(
                "select calendar_synced_at from interaction where interaction_id = $1",
                &[&id],
            )
            .await
            .expect("stamp")
            .get::<_, chrono::DateTime<chrono::Utc>>(0)
    };
    let stamped = stamp().await;
    let applied = run.metrics.action_count(
        calendar_sync::mapping::Action::Update,
        calendar_sync::metrics::Status::Success,
    );
    // Two more barriers: with an echo loop, each stamp would be applied as an
    // update (the trigger changed updated_at), stamped again, and so on.
    db.barrier().await;
    db.barrier().await;
    assert_eq!(
        db.count("select count(*) from calendar_sync_log").await,
        2,
        "the log is quiet after catch-up"
    );
    assert_eq!(
        run.metrics.action_count(
            calendar_sync::mapping::Action::Update,
            calendar_sync::metrics::Status::Success
        ),
        applied
    );
    let again = stamp().await;
    assert_eq!(stamped, again, "not stamped again");
    // The slot does not hold WAL: once idle, confirmed_flush passes the WAL
    // position the server had (keepalive wal_end is acknowledged).
    let now = pg_current_lsn(&db.client).await;
    let follows = db.wait_slot_passes(&now).await;
    assert!(
        follows,
        "confirmed_flush_lsn did not reach {now} while idle"
    );
    run.stop().await.expect("clean stop");
}
