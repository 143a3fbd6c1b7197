//! Issue 13: a replica identity that does not hold a tracked table's id column
//! makes PostgreSQL log DELETEs (and UPDATEs of the identity columns) with an
//! old key that does not say which row it was. `migrate` refuses it, `run`
//! refuses it at start (before any slot work), and a stream that meets such a
//! key anyway stops with the way out. An identity index that holds the id
//! column among others works.

use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

/// A unique index on (subject, interaction_date), both NOT NULL, made the
/// replica identity of interaction: it does not hold interaction_id.
const SUBJECT_DATE: &str =
    "create unique index interaction_subject_date on interaction (subject, interaction_date);
     alter table interaction replica identity using index interaction_subject_date;";

async fn publication_count(db: &TestDb) -> i64 {
    db.count(&format!(
        "select count(*) from pg_publication where pubname = '{}'",
        db.name
    ))
    .await
}

async fn slot_count(db: &TestDb) -> i64 {
    db.count(&format!(
        "select count(*) from pg_replication_slots where slot_name = '{}'",
        db.name
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_an_identity_index_without_the_id_column() {
    let db = TestDb::crm().await;
    db.client
        .batch_execute(SUBJECT_DATE)
        .await
        .expect("ri index");
    let text = calendar_sync::migrate::migrate(&db.config())
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        text.contains("interaction_subject_date") && text.contains("interaction_id"),
        "names the index and the missing column: {text}"
    );
    assert!(
        text.contains("ALTER TABLE interaction REPLICA IDENTITY DEFAULT"),
        "says the way out: {text}"
    );
    assert_eq!(publication_count(&db).await, 0, "no publication");

    // interaction_id as an INCLUDE column is not in the old key either
    // (PostgreSQL logs the index's key columns only).
    db.client
        .batch_execute(
            "create unique index interaction_subject_date_inc on interaction (subject, interaction_date) include (interaction_id);
             alter table interaction replica identity using index interaction_subject_date_inc;",
        )
        .await
        .expect("ri index with include");
    let text = calendar_sync::migrate::migrate(&db.config())
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        text.contains("interaction_subject_date_inc (subject, interaction_date)"),
        "{text}"
    );

    // customer the same way (its configured id column, customer_id).
    db.client
        .batch_execute(
            "alter table interaction replica identity default;
             create unique index customer_by_name on customer (name);
             alter table customer replica identity using index customer_by_name;",
        )
        .await
        .expect("ri customer");
    let text = calendar_sync::migrate::migrate(&db.config())
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        text.contains("customer_by_name")
            && text.contains("customer_id")
            && text.contains("ALTER TABLE customer REPLICA IDENTITY DEFAULT"),
        "{text}"
    );
    assert_eq!(publication_count(&db).await, 0, "no publication");

    db.client
        .batch_execute("alter table customer replica identity default")
        .await
        .expect("ri default");
    db.migrate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_at_start_an_identity_index_set_after_migrate() {
    let db = TestDb::crm().await;
    db.migrate().await;
    db.client
        .batch_execute(SUBJECT_DATE)
        .await
        .expect("ri index");

    // In-process: fatal, naming the index and the column, before any slot.
    let mut run = Running::start(db.config());
    let (message, hint) =
        fatal_of(&mut run, FatalKind::SchemaChanged, Duration::from_secs(15)).await;
    assert!(
        message.contains("interaction_subject_date") && message.contains("interaction_id"),
        "names the index and the missing column: {message}"
    );
    assert!(
        hint.contains("ALTER TABLE interaction REPLICA IDENTITY DEFAULT"),
        "says the way out: {hint}"
    );
    assert_eq!(slot_count(&db).await, 0, "refused before the slot");

    // The real binary: non-zero, the problem and the hint in stderr.
    let (code, stderr) =
        exit_of(spawn_run(&db, &[], Stdio::piped()), Duration::from_secs(20)).await;
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}: {stderr}");
    assert!(
        stderr.contains("interaction_subject_date")
            && stderr.contains("ALTER TABLE interaction REPLICA IDENTITY DEFAULT"),
        "{stderr}"
    );
    assert_eq!(slot_count(&db).await, 0, "refused before the slot");

    // A later deploy's migrate refuses it too, though the publication exists.
    let text = calendar_sync::migrate::migrate(&db.config())
        .await
        .expect_err("refused")
        .to_string();
    assert!(text.contains("interaction_subject_date"), "{text}");

    // The hint works.
    db.client
        .batch_execute("alter table interaction replica identity default")
        .await
        .expect("ri default");
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    run.stop().await.expect("clean stop");
}

/// The identity changed while streaming: the first DELETE arrives without its
/// id. Logical decoding replays it that way after the identity is fixed, so
/// the way out is a new slot; the hint says so, and following it removes the
/// deleted interaction's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_without_its_id_in_the_stream_stops_with_the_way_out() {
    let (db, mut run) = started().await;
    let id = db
        .insert("Deleted unkeyed", "now() + interval '1 day'", "")
        .await;
    db.wait_count(&success_rows(id, "create"), 1).await;
    db.client
        .batch_execute(SUBJECT_DATE)
        .await
        .expect("ri index");
    db.client
        .execute("delete from interaction where interaction_id = $1", &[&id])
        .await
        .expect("CRM delete works");
    let (message, hint) =
        fatal_of(&mut run, FatalKind::SchemaChanged, Duration::from_secs(20)).await;
    assert!(
        message.contains("interaction.interaction_id") && message.contains("replica identity"),
        "{message}"
    );
    assert!(
        hint.contains("REPLICA IDENTITY DEFAULT")
            && hint.contains(&format!("pg_drop_replication_slot('{}')", db.name))
            && hint.contains("--resync"),
        "{hint}"
    );

    // The identity is still wrong: the next start says so.
    let mut run = Running::start(db.config());
    let (message, _) = fatal_of(&mut run, FatalKind::SchemaChanged, Duration::from_secs(15)).await;
    assert!(message.contains("interaction_subject_date"), "{message}");

    // Fixed identity, same slot: the delete is replayed as it was written.
    db.client
        .batch_execute("alter table interaction replica identity default")
        .await
        .expect("ri default");
    let mut run = Running::start(db.config());
    let (message, _) = fatal_of(&mut run, FatalKind::SchemaChanged, Duration::from_secs(20)).await;
    assert!(message.contains("interaction.interaction_id"), "{message}");

    // Following the hint: drop the slot, run --resync once.
    db.drop_slot_once_released().await;
    let mut cfg = db.config();
    cfg.resync = true;
    let run = Running::start(cfg);
    wait_streaming(&db).await;
    db.wait_count(
        &format!("select count(*) from calendar_events where related_id = '{id}'"),
        0,
    )
    .await;
    run.stop().await.expect("clean stop");
}

/// An identity index holding interaction_id and another published column:
/// the old key carries the id, so deletes (and updates of the other column,
/// which log an old key too) are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_index_that_holds_the_id_column_works() {
    let db = TestDb::crm().await;
    db.client
        .batch_execute(
            "create unique index interaction_id_subject on interaction (interaction_id, subject);
             alter table interaction replica identity using index interaction_id_subject;",
        )
        .await
        .expect("ri index");
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let id = db.insert("Keyed", "now() + interval '1 day'", "").await;
    db.wait_count(&success_rows(id, "create"), 1).await;
    db.client
        .execute(
            "update interaction set subject = 'Keyed, renamed' where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("update");
    db.wait_count(
        &format!(
            "select count(*) from calendar_events where related_id = '{id}' and title = 'Keyed, renamed'"
        ),
        1,
    )
    .await;
    db.client
        .execute("delete from interaction where interaction_id = $1", &[&id])
        .await
        .expect("delete");
    db.wait_count(&success_rows(id, "delete"), 1).await;
    db.barrier().await;
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_events where related_id = '{id}'"
        ))
        .await,
        0
    );
    run.stop().await.expect("clean stop");
}
