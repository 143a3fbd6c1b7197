//! Contract §2, row by row, through the real stream: INSERT/UPDATE/DELETE/
//! TRUNCATE of interaction reach calendar_events in commit order.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_in_window_creates_a_scheduled_event_with_a_create_log_row() {
    let (db, run) = started().await;
    let id = db.insert("Kickoff", "now() + interval '1 day'", "").await;
    db.wait_count(&success_rows(id, "create"), 1).await;
    let e = db.event(id).await.expect("event created");
    assert_eq!(e.get::<_, String>("title"), "Kickoff");
    assert_eq!(e.get::<_, String>("event_status"), "scheduled");
    assert_eq!(e.get::<_, String>("related_table"), "interaction");
    assert_eq!(e.get::<_, String>("synced_from"), "interaction");
    assert!(e
        .get::<_, Option<chrono::DateTime<chrono::Utc>>>("last_synced_at")
        .is_some());
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_outside_the_window_archived_or_without_event_create_nothing() {
    let (db, run) = started().await;
    let old = db.insert("Old", "now() - interval '31 days'", "").await;
    let archived = db.insert("Archived", "now()", "archived=true").await;
    db.barrier().await;
    assert!(db.event(old).await.is_none(), "no event outside the window");
    assert!(
        db.event(archived).await.is_none(),
        "never create a cancelled event"
    );
    // Just inside the window: created.
    let edge = db
        .insert("Edge", "now() - interval '29 days 23 hours'", "")
        .await;
    db.wait_count(&success_rows(edge, "create"), 1).await;
    assert_eq!(db.count("select count(*) from calendar_sync_log").await, 1);
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_mirrors_and_an_update_of_no_mapped_field_writes_nothing() {
    let (db, run) = started().await;
    let id = db.insert("Call", "now() + interval '2 days'", "").await;
    db.wait_count(&success_rows(id, "create"), 1).await;
    db.client
        .execute("update interaction set subject = 'Call (moved)', location = 'Room 4' where interaction_id = $1", &[&id])
        .await
        .expect("update");
    db.wait_count(&success_rows(id, "update"), 1).await;
    let e = db.event(id).await.expect("event");
    assert_eq!(e.get::<_, String>("title"), "Call (moved)");
    assert_eq!(
        e.get::<_, Option<String>>("location").as_deref(),
        Some("Room 4")
    );
    // Unmapped columns only: nothing written (the updated_at trigger fires, so
    // updated_at changes: that is a mapped field; change it back explicitly).
    db.client
        .execute("update interaction set outcome = 'won', private_notes = 'secret', updated_at = $2 where interaction_id = $1",
            &[&id, &e.get::<_, Option<chrono::DateTime<chrono::Utc>>>("updated_at")])
        .await
        .expect("unmapped update");
    db.client
        .batch_execute("drop trigger interaction_set_updated_at on interaction")
        .await
        .expect("drop trigger");
    db.client
        .execute("update interaction set outcome = 'lost', sentiment = 'negative' where interaction_id = $1", &[&id])
        .await
        .expect("unmapped update");
    db.barrier().await;
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_sync_log where interaction_id = '{id}'"
        ))
        .await,
        3
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_cancels_and_unarchive_restores_scheduled() {
    let (db, run) = started().await;
    let id = db.insert("Visit", "now() + interval '1 day'", "").await;
    db.wait_count(&success_rows(id, "create"), 1).await;
    db.client
        .execute(
            "update interaction set archived = true where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("archive");
    db.wait_count(&success_rows(id, "cancel"), 1).await;
    let e = db.event(id).await.expect("kept for audit");
    assert_eq!(e.get::<_, String>("event_status"), "cancelled");
    // An edit while archived mirrors, stays cancelled, logs update.
    db.client
        .execute(
            "update interaction set location = 'Zoom' where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("edit");
    db.wait_count(&success_rows(id, "update"), 1).await;
    assert_eq!(
        db.event(id)
            .await
            .expect("event")
            .get::<_, String>("event_status"),
        "cancelled"
    );
    db.client
        .execute(
            "update interaction set archived = false where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("unarchive");
    db.wait_count(&success_rows(id, "update"), 2).await;
    assert_eq!(
        db.event(id)
            .await
            .expect("event")
            .get::<_, String>("event_status"),
        "scheduled"
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unarchiving_an_interaction_without_event_creates_it_when_in_window() {
    let (db, run) = started().await;
    let id = db
        .insert("Was archived", "now() + interval '1 day'", "archived=true")
        .await;
    let old = db
        .insert(
            "Old archived",
            "now() - interval '60 days'",
            "archived=true",
        )
        .await;
    db.client
        .execute(
            "update interaction set archived = false where interaction_id = any($1)",
            &[&vec![id, old]],
        )
        .await
        .expect("unarchive");
    db.wait_count(&success_rows(id, "create"), 1).await;
    db.barrier().await;
    assert!(
        db.event(old).await.is_none(),
        "outside the window: still nothing"
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_keeps_mirroring_when_its_date_moves_outside_the_window() {
    let (db, run) = started().await;
    let id = db.insert("Moving", "now()", "").await;
    db.wait_count(&success_rows(id, "create"), 1).await;
    db.client
        .execute("update interaction set interaction_date = now() - interval '400 days' where interaction_id = $1", &[&id])
        .await
        .expect("move");
    db.wait_count(&success_rows(id, "update"), 1).await;
    let e = db.event(id).await.expect("never deleted for being old");
    let date: chrono::DateTime<chrono::Utc> = e.get("event_date");
    assert!(date < chrono::Utc::now() - chrono::Duration::days(399));
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_a_true_hard_delete_and_a_delete_without_event_does_nothing() {
    let (db, run) = started().await;
    let id = db.insert("Gone soon", "now()", "").await;
    let cancelled = db.insert("Cancelled then deleted", "now()", "").await;
    let never = db
        .insert("No event", "now() - interval '90 days'", "")
        .await;
    db.wait_count(&success_rows(cancelled, "create"), 1).await;
    db.client
        .execute(
            "update interaction set archived = true where interaction_id = $1",
            &[&cancelled],
        )
        .await
        .expect("archive");
    db.wait_count(&success_rows(cancelled, "cancel"), 1).await;
    db.client
        .execute(
            "delete from interaction where interaction_id = any($1)",
            &[&vec![id, cancelled, never]],
        )
        .await
        .expect("delete");
    db.wait_count(&success_rows(id, "delete"), 1).await;
    db.wait_count(&success_rows(cancelled, "delete"), 1).await;
    db.barrier().await;
    assert_eq!(db.count("select count(*) from calendar_events").await, 0);
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_sync_log where interaction_id = '{never}'"
        ))
        .await,
        0
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_deletes_every_interaction_event_with_one_log_row_each() {
    let (db, run) = started().await;
    for i in 0..3 {
        db.insert(&format!("T{i}"), "now()", "").await;
    }
    db.wait_count("select count(*) from calendar_events", 3)
        .await;
    // A hand-made event of another source survives.
    db.client
        .batch_execute(&format!(
            "insert into calendar_events (title, event_date, event_type, related_table, created_by)
             values ('Manual', now(), 'task', 'task', '{USER}')"
        ))
        .await
        .expect("manual event");
    db.client
        .batch_execute("truncate interaction")
        .await
        .expect("truncate");
    db.wait_count(
        "select count(*) from calendar_sync_log where action = 'delete'",
        3,
    )
    .await;
    assert_eq!(
        db.count("select count(*) from calendar_events where related_table = 'interaction'")
            .await,
        0
    );
    assert_eq!(db.count("select count(*) from calendar_events").await, 1);
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_statement_transaction_applies_whole_in_order() {
    let (db, run) = started().await;
    db.client
        .batch_execute(&format!(
            "begin;
             insert into interaction (interaction_id, interaction_type, subject, interaction_date, created_by)
               values ('10000000-0000-4000-8000-000000000001', 'phone', 'A', now(), '{USER}'),
                      ('10000000-0000-4000-8000-000000000002', 'phone', 'B', now(), '{USER}');
             update interaction set subject = 'A2' where interaction_id = '10000000-0000-4000-8000-000000000001';
             delete from interaction where interaction_id = '10000000-0000-4000-8000-000000000002';
             insert into interaction (interaction_id, interaction_type, subject, interaction_date, created_by)
               values ('10000000-0000-4000-8000-000000000003', 'phone', 'C', now(), '{USER}');
             commit;"
        ))
        .await
        .expect("transaction");
    db.wait_count("select count(*) from calendar_sync_log", 5)
        .await;
    let titles: Vec<String> = db
        .client
        .query("select title from calendar_events order by title", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(titles, vec!["A2", "C"]);
    // All five log rows carry the same source LSN: one source transaction.
    assert_eq!(
        db.count("select count(distinct source_lsn) from calendar_sync_log")
            .await,
        1
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_source_transaction_never_appears() {
    let (db, run) = started().await;
    db.client
        .batch_execute(&format!(
            "begin;
             insert into interaction (interaction_type, subject, interaction_date, created_by)
               values ('phone', 'Rolled back', now(), '{USER}');
             rollback;"
        ))
        .await
        .expect("rolled back transaction");
    let kept = db.insert("Kept", "now()", "").await;
    db.wait_count(&success_rows(kept, "create"), 1).await;
    db.barrier().await;
    assert_eq!(
        db.count("select count(*) from calendar_events where title = 'Rolled back'")
            .await,
        0
    );
    assert_eq!(db.count("select count(*) from calendar_sync_log").await, 1);
    run.stop().await.expect("clean stop");
}
