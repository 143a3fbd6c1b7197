//! Contract §7: tables are tracked by identity (relation OID, resolved
//! schema-qualified at start), not by bare name. A rename of `interaction` (and
//! back) is followed with nothing lost, live and on replay; a same-named table
//! in another schema is never ours; a publication that no longer holds a
//! tracked table, or another table under a tracked name, is a fatal error found
//! before anything after it is acknowledged.

use std::time::Duration;

use uuid::Uuid;

use crate::support::*;

/// Inserts an interaction dated now into `table` (schema-qualified or not).
async fn insert_into(db: &TestDb, table: &str, subject: &str) -> Uuid {
    db.client
        .query_one(
            &format!(
                "insert into {table} (interaction_type, subject, interaction_date, created_by)
                 values ('meeting', $1, now(), '{USER}') returning interaction_id"
            ),
            &[&subject],
        )
        .await
        .unwrap_or_else(|e| panic!("insert into {table}: {e}"))
        .get(0)
}

async fn title(db: &TestDb, id: Uuid) -> Option<String> {
    db.event(id).await.map(|e| e.get("title"))
}

/// The slot's confirmed_flush_lsn is below `lsn`.
async fn confirmed_below(db: &TestDb, lsn: &str) -> bool {
    db.count(&format!(
        "select count(*) from pg_replication_slots
          where slot_name = '{}' and confirmed_flush_lsn < '{lsn}'::pg_lsn",
        db.name
    ))
    .await
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_interaction_and_back_loses_no_change_live_or_replayed() {
    let (db, run) = started().await;
    let a = db.insert("A", "now()", "").await;
    db.wait_count(&success_rows(a, "create"), 1).await;

    // Live: changes made while interaction has another name still arrive.
    db.client
        .batch_execute("alter table interaction rename to crm_interaction")
        .await
        .expect("rename");
    let b = insert_into(&db, "crm_interaction", "B").await;
    db.client
        .execute(
            "update crm_interaction set subject = 'A2' where interaction_id = $1",
            &[&a],
        )
        .await
        .expect("update while renamed");
    db.wait_count(&success_rows(b, "create"), 1).await;
    db.wait_count(&success_rows(a, "update"), 1).await;
    assert_eq!(title(&db, a).await.as_deref(), Some("A2"));

    // Replayed: changes made while the consumer is down (and interaction still
    // renamed) are decoded after the restart under the old name.
    run.stop().await.expect("clean stop");
    let c = insert_into(&db, "crm_interaction", "C").await;
    db.client
        .batch_execute(&format!(
            "update crm_interaction set subject = 'B2' where interaction_id = '{b}';
             delete from crm_interaction where interaction_id = '{a}';"
        ))
        .await
        .expect("changes while down");
    // A start while the configured name resolves to nothing waits (transient):
    // it cannot know which table to follow.
    let run = Running::start(db.config());
    assert!(
        wait_until(Duration::from_secs(20), || async {
            reconnects(&run.metrics) >= 1
        })
        .await,
        "the start while renamed is retried"
    );
    assert!(!run.handle.is_finished(), "not a fatal error");
    db.client
        .batch_execute("alter table crm_interaction rename to interaction")
        .await
        .expect("rename back");
    let d = db.insert("D", "now()", "").await;
    db.wait_count(&success_rows(d, "create"), 1).await;
    db.wait_count(&success_rows(c, "create"), 1).await;
    db.wait_count(&success_rows(b, "update"), 1).await;
    db.wait_count(&success_rows(a, "delete"), 1).await;
    assert_eq!(title(&db, b).await.as_deref(), Some("B2"));
    assert_eq!(title(&db, c).await.as_deref(), Some("C"));
    assert!(db.event(a).await.is_none(), "A's delete arrived");
    db.barrier().await;
    assert_eq!(
        db.count("select count(*) from calendar_sync_failures")
            .await,
        0
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_named_table_in_another_schema_is_never_ours_even_when_truncated() {
    let (db, run) = started().await;
    let a = db.insert("A", "now()", "").await;
    db.wait_count(&success_rows(a, "create"), 1).await;

    db.client
        .batch_execute(&format!(
            "create schema staging;
             create table staging.interaction (like public.interaction including all);
             alter publication {} add table staging.interaction;",
            db.name
        ))
        .await
        .expect("staging.interaction in the publication");
    let s = insert_into(&db, "staging.interaction", "Staging only").await;
    db.client
        .batch_execute(&format!(
            "insert into staging.interaction (interaction_id, interaction_type, subject, interaction_date, created_by)
               values ('{a}', 'meeting', 'Staging copy of A', now(), '{USER}');
             update staging.interaction set subject = 'Staging edit' where interaction_id = '{a}';
             delete from staging.interaction where interaction_id = '{a}';
             truncate staging.interaction;"
        ))
        .await
        .expect("staging changes");
    db.barrier().await;
    assert_eq!(title(&db, a).await.as_deref(), Some("A"), "A untouched");
    assert!(db.event(s).await.is_none(), "no event for a staging row");
    assert_eq!(
        db.count("select count(*) from calendar_sync_log").await,
        1,
        "only A's create was logged"
    );

    // The real interaction still streams.
    let b = db.insert("B", "now()", "").await;
    db.wait_count(&success_rows(b, "create"), 1).await;
    assert_eq!(
        db.count("select count(*) from calendar_sync_failures")
            .await,
        0
    );
    run.stop().await.expect("clean stop");
}

/// `ALTER PUBLICATION .. DROP TABLE interaction` leaves no trace in the
/// stream. The error must come before anything after it is acknowledged (the
/// periodic check alone let keepalive and commit acknowledgements pass it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_interaction_from_the_publication_is_fatal_before_anything_after_it_is_acknowledged()
{
    let (db, mut run) = started().await;
    let a = db.insert("A", "now()", "").await;
    db.wait_count(&success_rows(a, "create"), 1).await;

    db.client
        .batch_execute(&format!(
            "alter publication {} drop table interaction",
            db.name
        ))
        .await
        .expect("drop interaction from the publication");
    let after = pg_current_lsn(&db.client).await;
    // A streamed transaction after it (customer is still published).
    db.client
        .execute(
            &format!("update customer set name = 'Acme Ltd' where customer_id = '{CUSTOMER}'"),
            &[],
        )
        .await
        .expect("customer update");
    let (message, hint) = fatal_of(
        &mut run,
        FatalKind::PublicationMissing,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        message.contains(&format!("publication {}", db.name)) && message.contains("interaction"),
        "{message}"
    );
    assert!(hint.contains("ADD TABLE interaction"), "{hint}");
    assert!(
        confirmed_below(&db, &after).await,
        "nothing at or after the ALTER PUBLICATION ({after}) was acknowledged"
    );
}

/// A CRM migration that swaps in a new table under the name interaction,
/// while calendar-sync runs: it follows the old table by identity, so it must
/// notice that the name now means another table instead of going on with a
/// table nobody writes to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_table_taking_the_name_interaction_is_fatal_before_anything_after_it_is_acknowledged(
) {
    let (db, mut run) = started().await;
    let a = db.insert("A", "now()", "").await;
    db.wait_count(&success_rows(a, "create"), 1).await;

    db.client
        .batch_execute(
            "begin;
             alter table interaction rename to interaction_old;
             create table interaction (like interaction_old including all);
             commit;",
        )
        .await
        .expect("swap");
    let after = pg_current_lsn(&db.client).await;
    let (message, hint) =
        fatal_of(&mut run, FatalKind::SchemaChanged, Duration::from_secs(20)).await;
    assert!(
        message.contains("interaction now names another table"),
        "{message}"
    );
    assert!(hint.contains("pg_drop_replication_slot"), "{hint}");
    assert!(
        confirmed_below(&db, &after).await,
        "nothing at or after the swap ({after}) was acknowledged"
    );
}

/// The same swap while calendar-sync is down, with changes of the old table
/// still to be replayed: at the next start interaction resolves to the new
/// table, and the old one's changes (decoded under the name interaction)
/// must not be dropped as "another table".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_swapped_in_while_calendar_sync_was_down_is_fatal_not_a_silent_loss() {
    let (db, run) = started().await;
    let a = db.insert("A", "now()", "").await;
    db.wait_count(&success_rows(a, "create"), 1).await;
    run.stop().await.expect("clean stop");

    let lost = db.insert("Written before the swap", "now()", "").await;
    db.client
        .batch_execute(&format!(
            "alter table interaction rename to interaction_old;
             create table interaction (like interaction_old including all);
             alter publication {} add table interaction;",
            db.name
        ))
        .await
        .expect("swap");
    let mut run = Running::start(db.config());
    let (message, hint) =
        fatal_of(&mut run, FatalKind::SchemaChanged, Duration::from_secs(20)).await;
    assert!(
        message.contains("public.interaction") && message.contains("relation id"),
        "{message}"
    );
    assert!(hint.contains("pg_drop_replication_slot"), "{hint}");
    assert!(db.event(lost).await.is_none());
}
