//! Issue 7: batches of source transactions written set-based, with every
//! promise kept: one bad row isolated, one log row per action, exactly once
//! across kill -9 between the target commit and the flush report, chunks
//! bounded by bytes, a large source transaction without a subtransaction storm.

use std::process::Stdio;
use std::time::Duration;

use calendar_sync::config::Config;
use uuid::Uuid;

use crate::support::*;

/// A migrated CRM whose slot exists (empty snapshot) and whose consumer is
/// stopped again, so that what follows is a backlog read in batches.
async fn with_slot_then_stopped(cfg: impl Fn(&TestDb) -> Config) -> TestDb {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(cfg(&db));
    wait_streaming(&db).await;
    run.stop().await.expect("clean stop");
    db
}

fn applied_batches(run: &Running) -> u64 {
    metric(&run.metrics, calendar_sync::metrics::TRANSACTIONS_TOTAL) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_in_the_middle_of_a_10000_row_batch_fails_alone_and_the_others_commit_once() {
    let db = with_slot_then_stopped(TestDb::config).await;
    db.client
        .batch_execute("alter table interaction drop constraint interaction_created_by_fkey")
        .await
        .expect("drop the source-side FK");
    let ghost = Uuid::new_v4();
    // One source transaction: 9,999 good rows around one whose creator the
    // target's foreign key refuses.
    db.client
        .execute(
            &format!(
                "insert into interaction (interaction_type, subject, interaction_date, created_by)
                 select 'visit', 'row ' || g, now(),
                        case when g = 5000 then $1::uuid else '{USER}'::uuid end
                   from generate_series(1, 10000) g"
            ),
            &[&ghost],
        )
        .await
        .expect("10,000 rows");
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    db.barrier().await;
    assert_eq!(
        db.count("select count(*) from calendar_events").await,
        9_999
    );
    assert_eq!(
        db.count(
            "select count(*) from calendar_sync_log where action = 'create' and status = 'success'"
        )
        .await,
        9_999,
        "once each"
    );
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_sync_failures f join interaction i using (interaction_id)
              where not f.resolved and i.created_by = '{ghost}'"
        ))
        .await,
        1,
        "the bad row alone is in the failure queue"
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_log where status = 'failed'")
            .await,
        1
    );
    let savepoints = run.metrics.savepoint_count();
    assert!(
        savepoints <= 100,
        "bisecting one bad row out of 10,000 took {savepoints} savepoints"
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_interaction_changed_several_times_in_one_batch_ends_in_its_last_state_with_a_log_row_per_action(
) {
    let db = with_slot_then_stopped(TestDb::config).await;
    let id = db.insert("first", "now()", "").await;
    for sql in [
        "update interaction set subject = 'second' where interaction_id = $1",
        "update interaction set archived = true where interaction_id = $1",
        "update interaction set subject = 'third', location = 'Room 1' where interaction_id = $1",
    ] {
        db.client.execute(sql, &[&id]).await.expect("update");
    }
    // And one source transaction changing it twice more.
    db.client
        .batch_execute(&format!(
            "begin;
             update interaction set archived = false where interaction_id = '{id}';
             update interaction set subject = 'last' where interaction_id = '{id}';
             commit;"
        ))
        .await
        .expect("two in one");
    // And 200 more source transactions of one insert each, so that batching
    // shows whatever the machine's load: a batch also commits whenever the
    // stream has nothing more waiting, which a busy machine makes happen
    // between any two of five transactions now and then.
    for n in 0..200 {
        db.insert(&format!("filler {n}"), "now() + interval '1 day'", "")
            .await;
    }
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    db.barrier().await;
    let e = db.event(id).await.expect("event");
    assert_eq!(e.get::<_, String>("title"), "last");
    assert_eq!(
        e.get::<_, Option<String>>("location").as_deref(),
        Some("Room 1")
    );
    assert_eq!(
        e.get::<_, Option<String>>("event_status").as_deref(),
        Some("scheduled")
    );
    let actions: Vec<String> = db
        .client
        .query(
            "select action from calendar_sync_log where interaction_id = $1 order by source_lsn, ctid",
            &[&id],
        )
        .await
        .expect("log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        actions,
        ["create", "update", "cancel", "update", "update", "update"],
        "one log row per action, in LSN order"
    );
    assert!(
        applied_batches(&run) < 50,
        "205 source transactions were applied in {} target transactions: no batching",
        applied_batches(&run)
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_source_transactions_replays_exactly_once_after_kill_9_between_commit_and_flush(
) {
    let db = with_slot_then_stopped(TestDb::config).await;
    for n in 0..200 {
        db.insert(&format!("backlog {n}"), "now()", "").await;
    }
    let end = pg_current_lsn(&db.client).await;
    // A status interval far beyond the test: the batch commits, the flush is
    // never reported, then kill -9.
    let mut child = spawn_run(
        &db,
        &[("CALENDAR_SYNC_STATUS_INTERVAL_SECS", "60".to_string())],
        Stdio::null(),
    );
    // The events commit with the progress row (other tests' WAL may lie
    // beyond `end`, so wait on the events, not on an LSN).
    db.wait_count("select count(*) from calendar_events", 200)
        .await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert_eq!(
        db.count(&format!(
            "select count(*) from pg_replication_slots where slot_name = '{}' and confirmed_flush_lsn < '{end}'::pg_lsn",
            db.name
        ))
        .await,
        1,
        "the slot did not hear of the batch: the restart must replay it"
    );
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    db.barrier().await;
    assert_eq!(db.count("select count(*) from calendar_events").await, 200);
    assert_eq!(
        db.count("select count(*) from calendar_sync_log").await,
        200,
        "exactly once"
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_large_rows_are_bounded_by_bytes() {
    let small_chunks = |db: &TestDb| {
        let mut cfg = db.config();
        cfg.batch.max_bytes = 1 << 20;
        cfg
    };
    let db = with_slot_then_stopped(small_chunks).await;
    // 60 rows of ~100 kB each (incompressible) in one source transaction.
    db.client
        .batch_execute(&format!(
            "insert into interaction (interaction_type, subject, interaction_date, created_by, description)
             select 'visit', 'big ' || g, now(), '{USER}',
                    (select string_agg(md5(g::text || s::text), '') from generate_series(1, 3200) s)
               from generate_series(1, 60) g"
        ))
        .await
        .expect("large rows");
    let run = Running::start(small_chunks(&db));
    wait_streaming(&db).await;
    db.barrier().await;
    assert_eq!(
        db.count("select count(*) from calendar_events where length(description) = 102400")
            .await,
        60
    );
    // 6 MB of descriptions through 1 MiB chunks: at least 6 chunks, each
    // written under its own savepoint (the count bound alone would make one).
    let chunks = run.metrics.savepoint_count();
    assert!(
        chunks >= 6,
        "only {chunks} chunks for 6 MB with a 1 MiB bound"
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100000_row_source_transaction_is_applied_with_a_few_hundred_savepoints_at_most() {
    let db = with_slot_then_stopped(TestDb::config).await;
    db.client
        .batch_execute(&format!(
            "insert into interaction (interaction_type, subject, interaction_date, created_by)
             select 'visit', 'bulk ' || g, now(), '{USER}' from generate_series(1, 100000) g"
        ))
        .await
        .expect("bulk import");
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let deadline = Duration::from_secs(240);
    assert!(
        wait_until(deadline, || async {
            db.count("select count(*) from calendar_events").await == 100_000
        })
        .await,
        "the bulk import was not applied within {deadline:?}"
    );
    db.barrier().await;
    let savepoints = run.metrics.savepoint_count();
    // Stamps are on: one chunk savepoint and one stamp savepoint (in the
    // stamp transaction) per 5,000 changes.
    assert!(
        savepoints <= 300,
        "{savepoints} savepoints for one 100,000-row source transaction"
    );
    // Every row stamped (on the stamp session, committed right after the batch).
    db.wait_count(
        "select count(*) from interaction where calendar_synced_at is not null",
        100_000,
    )
    .await;
    run.stop().await.expect("clean stop");
}
