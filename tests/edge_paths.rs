//! Issue 9, points 1, 2 and 7: paths where the calendar used to end wrong.
//! Each test failed on the code before its fix (see the commit messages).

use uuid::Uuid;

use crate::support::*;

/// Point 1: a retried event is field for field what the stream would have
/// written, participants included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_event_has_the_participants_the_stream_would_have_written() {
    let (db, run) = started().await;
    // Let the source accept a user the target's foreign key refuses.
    db.client
        .batch_execute("alter table interaction drop constraint interaction_created_by_fkey")
        .await
        .expect("drop the source-side FK");
    let ghost = Uuid::new_v4();
    let id: Uuid = db
        .client
        .query_one(
            &format!(
                "insert into interaction (interaction_type, subject, interaction_date, created_by,
                     customer_id, contact_id)
                 values ('meeting', 'Retried', now(), $1, '{CUSTOMER}', '{CONTACT}')
                 returning interaction_id"
            ),
            &[&ghost],
        )
        .await
        .expect("insert")
        .get(0);
    db.wait_count(&log_rows(id, "create", "failed"), 1).await;
    assert!(db.event(id).await.is_none());

    db.client
        .execute(
            "insert into users (user_id, email) values ($1, 'ghost@example.com')",
            &[&ghost],
        )
        .await
        .expect("the user now exists");
    db.client
        .batch_execute(
            "update calendar_sync_failures set next_retry_at = now() - interval '1 second'",
        )
        .await
        .expect("make the failure due");
    db.wait_count(&log_rows(id, "create", "success"), 1).await;
    let e = db.event(id).await.expect("the retry created the event");
    assert_eq!(
        e.get::<_, Vec<String>>("participants"),
        vec!["Acme Corp".to_string(), "Ada Lovelace".to_string()],
        "participants as the stream builds them"
    );
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_sync_failures where interaction_id = '{id}' and not resolved"
        ))
        .await,
        0
    );
    run.stop().await.expect("clean stop");
}

/// Point 2: T1 sets a large description with bad data (rolled back, the event
/// keeps the old description); T2 fixes only the bad field, so the description
/// travels as unchanged TOAST. The event must end with T2's description.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_after_a_failed_update_gets_the_large_description_of_the_failed_one() {
    let (db, run) = started().await;
    let id = db.insert("Toast after failure", "now()", "").await;
    db.wait_count(&log_rows(id, "create", "success"), 1).await;
    // md5 hex of random numbers: pglz cannot shrink it, so it is stored out
    // of line and T2 carries it as unchanged TOAST.
    let big: String = db
        .client
        .query_one(
            "update interaction set duration_minutes = -5,
                    description = (select string_agg(md5(random()::text), '') from generate_series(1, 400))
              where interaction_id = $1 returning description",
            &[&id],
        )
        .await
        .expect("T1")
        .get(0);
    assert_eq!(
        db.count(&format!(
            "select count(*) from interaction where interaction_id = '{id}'
               and pg_column_size(description) >= length(description)"
        ))
        .await,
        1,
        "the description is stored uncompressed (out of line)"
    );
    db.wait_count(&log_rows(id, "update", "failed"), 1).await;
    db.client
        .execute(
            "update interaction set duration_minutes = 30 where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("T2");
    db.wait_count(&log_rows(id, "update", "success"), 1).await;
    let e = db.event(id).await.expect("event");
    let description: Option<String> = e.get("description");
    assert_eq!(
        description.as_ref().map(String::len),
        Some(big.len()),
        "the event must show the interaction's description, not the one before the failed change"
    );
    assert_eq!(description.as_deref(), Some(big.as_str()));
    run.stop().await.expect("clean stop");
}

/// Point 7: a retry re-syncs the interaction's current state; older changes of
/// it still in the stream must not walk the event back through earlier states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_ahead_of_the_stream_is_never_walked_back_by_older_changes() {
    let (db, run) = started().await;
    let id = db.insert("v0", "now()", "").await;
    db.wait_count(&log_rows(id, "create", "success"), 1).await;
    db.client
        .execute(
            "update interaction set duration_minutes = -1 where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("bad");
    db.wait_count(&log_rows(id, "update", "failed"), 1).await;
    run.stop().await.expect("clean stop");

    // While the consumer is down: T1 fixes the row as v1, T2 renames it v2.
    db.client
        .execute(
            "update interaction set duration_minutes = 30, subject = 'v1' where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("T1");
    db.client
        .execute(
            "update interaction set subject = 'v2' where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("T2");
    db.client
        .batch_execute(
            "update calendar_sync_failures set next_retry_at = now() - interval '1 second'",
        )
        .await
        .expect("make the failure due");
    // The retry runs first, ahead of the stream: it writes v2.
    let retried = calendar_sync::apply::retry_due_once(&db.config())
        .await
        .expect("retry");
    assert_eq!(retried, 1);
    assert_eq!(
        db.event(id).await.expect("event").get::<_, String>("title"),
        "v2"
    );
    let updates_before = db.count(&log_rows(id, "update", "success")).await;

    // Then the stream delivers T1 and T2: both are older than what the retry
    // wrote, so neither may touch the event.
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    db.barrier().await;
    assert_eq!(
        db.event(id).await.expect("event").get::<_, String>("title"),
        "v2"
    );
    assert_eq!(
        db.count(&log_rows(id, "update", "success")).await,
        updates_before,
        "no update from the older T1/T2: the event never went back to v1"
    );
    run.stop().await.expect("clean stop");
}
