//! The slot (issue 14): a start-over (`run --resync`) finishes even when it
//! is killed, and a deployment drops, resumes or takes over only a slot its
//! own target claimed.

use std::process::Stdio;
use std::time::Duration;

use calendar_sync::config::SecretUrl;

use crate::support::*;

/// Waits until a backend of `db`'s cluster waits for a lock in a statement
/// that mentions `table` (not the test's own `lock table`, which may wait
/// for a killed consumer's backend that has not noticed its end yet).
async fn blocked_on(db: &TestDb, table: &str) {
    let blocked = wait_until(Duration::from_secs(60), || async {
        db.count(&format!(
            "select count(*) from pg_stat_activity
              where wait_event_type = 'Lock' and query like '%{table}%' and pid <> pg_backend_pid()
                and query not like '%lock table%'"
        ))
        .await
            > 0
    })
    .await;
    assert!(
        blocked,
        "no statement on {table} waited for the test's lock"
    );
}

async fn events_of_gone(db: &TestDb) -> i64 {
    db.count(
        "select count(*) from calendar_events e
          where e.related_table = 'interaction'
            and not exists (select 1 from interaction i where i.interaction_id = e.related_id)",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_over_killed_in_its_snapshot_and_in_its_removal_pass_is_finished_by_plain_runs() {
    let db = TestDb::crm().await;
    db.client
        .batch_execute(&format!(
            "insert into interaction (interaction_type, subject, interaction_date, created_by)
             select 'visit', 'r' || g, now() + g * interval '1 minute', '{USER}'
               from generate_series(1, 600) g"
        ))
        .await
        .expect("rows");
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    db.wait_count("select count(*) from calendar_events", 600)
        .await;
    run.stop().await.expect("clean stop");
    // The slot is lost; meanwhile 200 interactions are deleted.
    db.drop_slot_once_released().await;
    db.client
        .batch_execute(
            "delete from interaction where interaction_id in
               (select interaction_id from interaction order by interaction_id limit 200)",
        )
        .await
        .expect("deletes");
    assert_eq!(events_of_gone(&db).await, 200);

    // 1. `run --resync`, killed while its snapshot writes (held by a lock).
    let lock = connect(&db.url).await;
    lock.batch_execute("begin; lock table calendar_events in share mode")
        .await
        .expect("lock");
    let mut c = binary_for(&db)
        .args(["run", "--resync"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    blocked_on(&db, "calendar_events").await;
    kill9(&mut c);
    lock.batch_execute("rollback").await.expect("unlock");
    assert_eq!(
        db.count("select count(*) from calendar_sync_resync").await,
        1,
        "the start-over is recorded as pending"
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_progress")
            .await,
        0
    );
    let st = calendar_sync::status::status(&db.config(), 60)
        .await
        .expect("status");
    assert!(st.resync_pending);

    // 2. A plain `run` takes the snapshot again and removes the events of
    // the deleted interactions; killed before it could record that it is
    // done (the last statement held by a lock).
    let lock = connect(&db.url).await;
    lock.batch_execute("begin; lock table calendar_sync_resync in exclusive mode")
        .await
        .expect("lock");
    let mut c = spawn_run(&db, &[], Stdio::null());
    blocked_on(&db, "calendar_sync_resync").await;
    kill9(&mut c);
    lock.batch_execute("rollback").await.expect("unlock");
    assert_eq!(
        db.count("select count(*) from calendar_sync_resync").await,
        1,
        "still pending"
    );

    // 3. Another plain `run` finishes it.
    let run = Running::start(db.config());
    db.wait_count("select count(*) from calendar_sync_resync", 0)
        .await;
    wait_streaming(&db).await;
    assert_eq!(
        events_of_gone(&db).await,
        0,
        "no event of a deleted interaction"
    );
    assert_eq!(db.count("select count(*) from calendar_events").await, 400);
    let st = calendar_sync::status::status(&db.config(), 60)
        .await
        .expect("status");
    assert!(!st.resync_pending);
    run.stop().await.expect("clean stop");
}

/// The slot's position and catalog horizon, to show it was not touched.
async fn slot_facts(db: &TestDb, slot: &str) -> (String, String) {
    let r = db
        .client
        .query_one(
            "select confirmed_flush_lsn::text, catalog_xmin::text from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot");
    (r.get(0), r.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_deployment_on_the_same_slot_name_is_refused_and_the_first_loses_nothing() {
    let source = TestDb::crm().await;
    let (target_a, target_b) = (TestDb::empty().await, TestDb::empty().await);
    let slot = source.name.clone();
    let cfg_for = |t: &TestDb| {
        let mut cfg = source.config();
        cfg.target_url = Some(SecretUrl::new(t.url.clone()));
        cfg
    };
    let (cfg_a, cfg_b) = (cfg_for(&target_a), cfg_for(&target_b));
    calendar_sync::migrate::migrate(&cfg_a)
        .await
        .expect("migrate a");
    calendar_sync::migrate::migrate(&cfg_b)
        .await
        .expect("migrate b");

    // A's first snapshot is killed midway (held by a lock on its target):
    // its slot is still recognized as A's and taken again.
    let lock = connect(&target_a.url).await;
    lock.batch_execute("begin; lock table calendar_events in share mode")
        .await
        .expect("lock");
    source.insert("Before A", "now()", "").await;
    let mut c = binary_for(&source)
        .env("TARGET_DATABASE_URL", &target_a.url)
        .args(["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    blocked_on(&target_a, "calendar_events").await;
    kill9(&mut c);
    lock.batch_execute("rollback").await.expect("unlock");
    let run_a = Running::start(cfg_a.clone());
    let started = wait_until(Duration::from_secs(60), || async {
        target_a
            .count("select count(*) from calendar_sync_progress")
            .await
            == 1
    })
    .await;
    assert!(
        started,
        "A restarts by itself after a kill in its first snapshot"
    );
    let first = source.insert("While A runs", "now()", "").await;
    source.barrier_for(&target_a.client, &slot).await;
    run_a.stop().await.expect("A stops");
    // Wait until the walsender let go of it.
    source
        .wait_count(
            &format!("select count(*) from pg_replication_slots where slot_name = '{slot}' and not active"),
            1,
        )
        .await;
    let before = slot_facts(&source, &slot).await;

    // B, pointed at the same CRM and slot name: refused, nothing touched.
    let mut run_b = Running::start(cfg_b.clone());
    let (message, hint) = fatal_of(
        &mut run_b,
        FatalKind::OwnershipConflict,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        message.contains("belongs to another calendar-sync"),
        "{message}"
    );
    assert!(
        message.contains(&target_a.name) && message.contains(&target_b.name),
        "both deployments' targets: {message}"
    );
    assert!(hint.contains("own CALENDAR_SYNC_SLOT"), "{hint}");
    let (code, stderr) = exit_of(
        binary_for(&source)
            .env("TARGET_DATABASE_URL", &target_b.url)
            .args(["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
        Duration::from_secs(20),
    )
    .await;
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {stderr}");
    assert!(
        stderr.contains("belongs to another calendar-sync"),
        "{stderr}"
    );
    assert_eq!(
        slot_facts(&source, &slot).await,
        before,
        "the slot is unchanged"
    );
    assert_eq!(
        target_b.count("select count(*) from calendar_events").await,
        0
    );
    let st = calendar_sync::status::status(&cfg_b, 60)
        .await
        .expect("status");
    assert_eq!(st.slot_owned_here, Some(false));
    assert!(
        st.problems.iter().any(|p| p.contains("another deployment")),
        "{:?}",
        st.problems
    );

    // Written while B tried: A, back, loses nothing.
    let second = source.insert("While B tried", "now()", "").await;
    let run_a = Running::start(cfg_a);
    source.barrier_for(&target_a.client, &slot).await;
    for id in [first, second] {
        assert_eq!(
            target_a
                .count(&format!(
                    "select count(*) from calendar_events where related_id = '{id}'"
                ))
                .await,
            1
        );
    }
    assert_eq!(
        target_a.count("select count(*) from calendar_events").await,
        3
    );
    run_a.stop().await.expect("A stops");
}
