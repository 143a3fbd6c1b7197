//! The initial snapshot is consistent with the slot, and restarts resume from
//! the stored progress without applying anything twice.

use std::time::Duration;

use crate::support::*;

/// Every interaction present now has exactly its event (all rows here are in
/// the window and not archived), no event is left for a deleted one, and no
/// interaction got two `create` rows.
async fn assert_calendar_matches_interactions(db: &TestDb) {
    let missing = db
        .count("select count(*) from interaction i where not exists (select 1 from calendar_events e where e.related_id = i.interaction_id and e.title = i.subject)")
        .await;
    if missing != 0 {
        let detail: Vec<String> = db
            .client
            .query(
                "select i.interaction_id::text || ' subject=' || i.subject || ' event=' || coalesce(e.title, '<none>')
                        || ' log=' || coalesce((select string_agg(action || '/' || status || '@' || source_lsn::text, ',') from calendar_sync_log l where l.interaction_id = i.interaction_id), '')
                   from interaction i left join calendar_events e on e.related_id = i.interaction_id
                  where e.title is distinct from i.subject",
                &[],
            )
            .await
            .expect("detail")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let failures = db
            .count("select count(*) from calendar_sync_failures")
            .await;
        let progress: String = db.client.query_one("select lsn::text || ' snapshot ' || snapshot_lsn::text from calendar_sync_progress", &[]).await.expect("p").get(0);
        panic!("interactions without a matching event: {detail:#?}; failures {failures}; progress {progress}");
    }
    let orphans = db
        .count("select count(*) from calendar_events e where not exists (select 1 from interaction i where i.interaction_id = e.related_id)")
        .await;
    assert_eq!(orphans, 0, "events of deleted interactions");
    let doubled = db
        .count("select count(*) from (select interaction_id from calendar_sync_log where action = 'create' group by 1 having count(*) > 1) d")
        .await;
    assert_eq!(doubled, 0, "interactions created twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_copies_existing_rows_and_misses_or_doubles_nothing_under_concurrent_writes() {
    let db = TestDb::crm().await;
    db.client
        .batch_execute(&format!(
            "insert into interaction (interaction_type, subject, interaction_date, created_by, customer_id)
             select 'visit', 'pre ' || g, now() + g * interval '1 minute', '{USER}', '{CUSTOMER}'
               from generate_series(1, 300) g"
        ))
        .await
        .expect("existing rows");
    db.migrate().await;
    // A writer runs before, while and after the slot is created and the
    // snapshot copied: until 30 writes after the snapshot committed.
    let url = db.url.clone();
    let slot = db.name.clone();
    let writer = tokio::spawn(async move {
        let c = connect(&url).await;
        let mut after_snapshot = 0;
        for i in 0..3000 {
            if after_snapshot >= 30 {
                break;
            }
            if c.query_one(
                "select count(*) from calendar_sync_progress where slot_name = $1",
                &[&slot],
            )
            .await
            .expect("progress")
            .get::<_, i64>(0)
                == 1
            {
                after_snapshot += 1;
            }
            let sql = match i % 3 {
                0 => format!("insert into interaction (interaction_type, subject, interaction_date, created_by) values ('phone', 'during {i}', now(), '{USER}')"),
                1 => format!("update interaction set subject = subject || ' *' where interaction_id = (select interaction_id from interaction order by subject limit 1 offset {i})"),
                _ => format!("delete from interaction where interaction_id = (select interaction_id from interaction order by subject desc limit 1 offset {i})"),
            };
            c.batch_execute(&sql).await.expect("concurrent write");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let run = Running::start(db.config());
    writer.await.expect("writer");
    wait_streaming(&db).await;
    db.barrier().await;
    assert_calendar_matches_interactions(&db).await;
    assert_eq!(
        db.count("select count(*) from calendar_events").await,
        db.count("select count(*) from interaction").await
    );
    // Both paths were taken: rows copied by the snapshot, and writes streamed
    // after its consistent point.
    let by_snapshot = db.count("select count(*) from calendar_sync_log l, calendar_sync_progress p where l.source_lsn = p.snapshot_lsn").await;
    let by_stream = db.count("select count(*) from calendar_sync_log l, calendar_sync_progress p where l.source_lsn > p.snapshot_lsn").await;
    assert!(
        by_snapshot >= 250 && by_stream >= 10,
        "snapshot {by_snapshot}, stream {by_stream}"
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_progress_without_reapplying() {
    let db = TestDb::crm().await;
    db.migrate().await;
    // Feedback every 60 s: the acks of what run 1 applies will not reach the
    // server before it is killed, so run 2 is sent those transactions again.
    let mut slow_ack = db.config();
    slow_ack.status_interval = Duration::from_secs(60);
    let run = Running::start(slow_ack);
    wait_streaming(&db).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(db.insert(&format!("first run {i}"), "now()", "").await);
    }
    db.wait_count("select count(*) from calendar_sync_log", 5)
        .await;
    run.kill();
    // The server's slot is behind what the target holds: a real replay.
    let behind = wait_until(Duration::from_secs(10), || async {
        db.count(&format!(
            "select count(*) from pg_replication_slots s, calendar_sync_progress p
              where s.slot_name = '{0}' and p.slot_name = '{0}' and not s.active and s.confirmed_flush_lsn < p.lsn",
            db.name
        ))
        .await
            == 1
    })
    .await;
    assert!(
        behind,
        "expected the slot to lag the stored progress after the kill"
    );
    db.insert("while down", "now()", "").await;

    let run = Running::start(db.config());
    db.insert("second run", "now()", "").await;
    db.wait_count("select count(*) from calendar_events", 7)
        .await;
    db.barrier().await;
    assert_eq!(
        db.count("select count(*) from calendar_sync_log").await,
        7,
        "no log row doubled"
    );
    assert_calendar_matches_interactions(&db).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_whose_snapshot_never_committed_is_taken_again() {
    let db = TestDb::crm().await;
    db.insert("existing", "now()", "").await;
    db.migrate().await;
    // A crash between CREATE_REPLICATION_SLOT and the snapshot's commit leaves
    // a slot and no progress row: its start point is past rows never copied.
    // `run` claimed the name first (decision 53), so it is ours.
    db.client
        .execute(
            "insert into calendar_sync_slot_owner (slot_name, target_id, target)
             select $1, target_id, 'this target' from calendar_sync_target_id",
            &[&db.name],
        )
        .await
        .expect("our claim");
    db.client
        .execute(
            "select pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.name],
        )
        .await
        .expect("orphan slot");
    db.insert("after the orphan slot", "now()", "").await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    db.barrier().await;
    assert_eq!(db.count("select count(*) from calendar_events").await, 2);
    run.stop().await.expect("clean stop");
}

/// The snapshot's progress row carries the snapshot's own time (the source
/// state it copied), not the moment its batch committed: `commit_time` is
/// before the batch's transaction began (`snapshot_at`, its `now()`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_progress_is_dated_at_the_snapshot_not_at_its_commit() {
    let db = TestDb::crm().await;
    db.insert("existing", "now()", "").await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let r = db
        .client
        .query_one(
            "select commit_time < snapshot_at, commit_time::text, snapshot_at::text
               from calendar_sync_progress where slot_name = $1",
            &[&db.name],
        )
        .await
        .expect("progress row");
    assert!(
        r.get::<_, bool>(0),
        "commit_time {} should be the snapshot's time, before the batch began at {}",
        r.get::<_, String>(1),
        r.get::<_, String>(2)
    );
    run.stop().await.expect("clean stop");
}

/// PostgreSQL does not hold a slot while its exported snapshot is copied, so a
/// second instance starting then must wait (the slot's advisory lock), not
/// take the slot for an interrupted one and drop it under the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_waits_while_the_first_copies_its_snapshot() {
    let db = TestDb::crm().await;
    db.client
        .batch_execute(&format!(
            "insert into interaction (interaction_type, subject, interaction_date, created_by)
             select 'visit', 'pre ' || g, now(), '{USER}' from generate_series(1, 5000) g"
        ))
        .await
        .expect("existing rows");
    db.migrate().await;
    let first = Running::start(db.config());
    let copying = wait_until(Duration::from_secs(20), || async {
        db.count(&format!(
            "select count(*) from pg_replication_slots where slot_name = '{0}'
              and not exists (select 1 from calendar_sync_progress where slot_name = '{0}')",
            db.name
        ))
        .await
            == 1
    })
    .await;
    assert!(copying, "never saw the first instance copying its snapshot");
    let second = Running::start(db.config());
    wait_streaming(&db).await;
    let waited = wait_until(Duration::from_secs(20), || async {
        reconnects(&second.metrics) >= 1
    })
    .await;
    assert!(waited, "the second instance did not wait");
    first.stop().await.expect("first stops cleanly");
    let id = db.insert("after the handover", "now()", "").await;
    db.wait_count(
        &format!("select count(*) from calendar_events where related_id = '{id}'"),
        1,
    )
    .await;
    assert_calendar_matches_interactions(&db).await;
    assert_eq!(
        db.count("select count(*) from calendar_sync_log").await,
        5001
    );
    second.stop().await.expect("second stops cleanly");
}
