//! Contract §5, fatal failures (slot gone, publication or schema missing,
//! wal_level, replication rights): the consumer stops with a message that
//! names the problem and a hint that says what to do, never retrying forever.

use std::process::Stdio;
use std::time::Duration;

use crate::recovery::{crm_on, private_cluster, remove_cluster};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_is_fatal_names_the_slot_and_says_how_to_start_over() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let id = db.insert("Kept", "now() + interval '1 day'", "").await;
    db.wait_count(
        &format!("select count(*) from calendar_events where related_id = '{id}'"),
        1,
    )
    .await;
    run.stop().await.expect("clean stop");
    db.drop_slot_once_released().await;

    // In-process: a fatal error, not an endless retry.
    let mut run = Running::start(db.config());
    let (message, hint) = fatal_of(&mut run, FatalKind::SlotGone, Duration::from_secs(20)).await;
    assert!(message.contains(&db.name), "names the slot: {message}");
    let recipe = format!(
        "delete from calendar_sync_progress where slot_name = '{}'",
        db.name
    );
    assert!(hint.contains(&recipe), "says how to start over: {hint}");

    // The real binary: non-zero, the slot in stderr, within 20 s.
    let (code, stderr) =
        exit_of(spawn_run(&db, &[], Stdio::piped()), Duration::from_secs(20)).await;
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}: {stderr}");
    assert!(
        stderr.contains(&format!("replication slot {}", db.name)) && stderr.contains(&recipe),
        "stderr names the slot and the way out: {stderr}"
    );

    // The hint works: with the progress row gone, `run` takes a new snapshot.
    db.client
        .batch_execute(&recipe)
        .await
        .expect("follow the hint");
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let after = db
        .insert("After starting over", "now() + interval '1 day'", "")
        .await;
    db.wait_count(
        &format!("select count(*) from calendar_events where related_id = '{after}'"),
        1,
    )
    .await;
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_sync_log where interaction_id = '{id}' and action = 'create'"
        ))
        .await,
        1,
        "the new snapshot does not create the kept event again"
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_publication_stops_the_binary_quickly_with_a_hint_to_migrate() {
    let db = TestDb::crm().await;
    db.migrate().await;
    db.client
        .batch_execute(&format!("drop publication {}", db.name))
        .await
        .expect("drop publication");
    let (code, stderr) =
        exit_of(spawn_run(&db, &[], Stdio::piped()), Duration::from_secs(10)).await;
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}: {stderr}");
    assert!(
        stderr.contains(&format!("publication {}", db.name)),
        "names the publication: {stderr}"
    );
    assert!(
        stderr.contains("calendar-sync migrate"),
        "hints migrate: {stderr}"
    );
    assert_eq!(
        db.count(&format!(
            "select count(*) from pg_replication_slots where slot_name = '{}'",
            db.name
        ))
        .await,
        0,
        "the check comes before the slot is created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_target_schema_is_fatal_with_a_hint_to_migrate() {
    let db = TestDb::crm().await;
    // Every table published (with interaction alone, the publication check
    // stops it first), but nothing of `migrate` in the target.
    db.client
        .batch_execute(&format!(
            "create publication {} for table interaction, customer, contact",
            db.name
        ))
        .await
        .expect("publication by hand");
    let mut run = Running::start(db.config());
    let (message, hint) =
        fatal_of(&mut run, FatalKind::SchemaMissing, Duration::from_secs(15)).await;
    assert!(
        hint.contains("calendar-sync migrate"),
        "hints migrate: {message} / {hint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_fatal_and_names_wal_level() {
    let cluster = private_cluster(
        "recovery-replica",
        "wal_level = replica\nlog_min_messages = warning\n",
    )
    .await;
    let db = crm_on(&cluster, "t_replica").await;
    db.migrate().await;
    let mut run = Running::start(db.config());
    let (message, hint) = fatal_of(&mut run, FatalKind::Config, Duration::from_secs(15)).await;
    assert!(
        message.contains("wal_level is replica"),
        "names wal_level: {message}"
    );
    assert!(
        hint.contains("wal_level = logical") && hint.contains("restart"),
        "says what to set: {hint}"
    );
    drop(db);
    remove_cluster(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_rights_is_fatal_and_mentions_replication() {
    let db = TestDb::crm().await;
    db.migrate().await;
    // Roles are cluster-wide: a name of this test's own.
    let role = format!("norepl_{}", &db.name[2..14]);
    db.client
        .batch_execute(&format!(
            "create role {role} login; grant all on all tables in schema public to {role};"
        ))
        .await
        .expect("create role");
    let url = format!(
        "postgres://{role}@127.0.0.1:{}/{}",
        cluster().port(),
        db.name
    );
    let mut cfg = calendar_sync::config::Config::new(url, &db.name).expect("config");
    cfg.publication = db.name.clone();
    let mut run = Running::start(cfg);
    let (message, hint) = fatal_of(&mut run, FatalKind::Permission, Duration::from_secs(15)).await;
    assert!(
        format!("{message} {hint}").contains("REPLICATION"),
        "mentions REPLICATION: {message} / {hint}"
    );
    assert!(
        message.contains("replication rights"),
        "says what is missing: {message}"
    );
}

/// A slot invalidated by `max_slot_wal_keep_size` (the server removed WAL it
/// still needed) is fatal and says so; it is never streamed from as if
/// nothing was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_invalidated_by_max_slot_wal_keep_size_is_fatal() {
    let cluster = private_cluster(
        "lost",
        "max_slot_wal_keep_size = 1MB\nmax_wal_size = 32MB\nmin_wal_size = 32MB\n",
    )
    .await;
    let db = crm_on(&cluster, "lost").await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    run.stop().await.expect("clean stop");
    // While nobody consumes the slot, write and switch past several segments.
    db.client
        .batch_execute("create table ballast (v text)")
        .await
        .expect("ballast");
    let lost = wait_until(Duration::from_secs(60), || async {
        db.client
            .batch_execute("insert into ballast select repeat(md5(g::text), 32) from generate_series(1, 5000) g; select pg_switch_wal(); checkpoint;")
            .await
            .expect("generate WAL");
        db.count(&format!("select count(*) from pg_replication_slots where slot_name = '{}' and wal_status = 'lost'", db.name))
            .await
            == 1
    })
    .await;
    assert!(lost, "the slot was not invalidated");
    let mut run = Running::start(db.config());
    let (message, hint) = fatal_of(&mut run, FatalKind::SlotGone, Duration::from_secs(20)).await;
    assert!(
        message.contains("invalidated") && message.contains(&db.name),
        "{message}"
    );
    assert!(
        hint.contains("max_slot_wal_keep_size") && hint.contains("calendar_sync_progress"),
        "{hint}"
    );
    remove_cluster(cluster).await;
}
