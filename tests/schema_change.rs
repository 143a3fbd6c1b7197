//! Schema changes of `interaction` while streaming. pgoutput sends a new
//! Relation message after DDL; calendar-sync maps its columns by name, so
//! unmapped columns may come and go (and shift the mapped ones), while a
//! retyped or vanished mapped column stops the stream with a clear error.
//!
//! What PostgreSQL 15 (15.18, checked with psql) does with a column that is in
//! a publication's column list, as `calendar-sync migrate` creates it:
//! - `ALTER TABLE interaction ALTER COLUMN duration_minutes TYPE text` is
//!   refused: SQLSTATE 0A000 "cannot alter type of a column used by a
//!   publication WHERE clause" (sic: the message says WHERE clause for a column
//!   list too), detail "publication of table interaction in publication <p>
//!   depends on column "duration_minutes"". A DBA can retype only by taking the
//!   column (or the table) out of the publication first, e.g. with
//!   `ALTER PUBLICATION .. SET TABLE`, and putting it back afterwards.
//! - `ALTER TABLE interaction DROP COLUMN location` is refused: SQLSTATE 2BP01
//!   "cannot drop column location of table interaction because other objects
//!   depend on it", hint "Use DROP ... CASCADE".
//! - `DROP COLUMN location CASCADE` succeeds with only a NOTICE ("drop cascades
//!   to publication of table interaction in publication <p>"): the table
//!   silently leaves the publication and its changes stop arriving at all.

use std::time::Duration;

use calendar_sync::error::SyncError;
use calendar_sync::mapping::interaction::MAPPED_COLUMNS;
use tokio_postgres::error::SqlState;

use crate::support::*;

/// `ALTER PUBLICATION .. SET TABLE` with `interaction_columns` for interaction
/// and customer and contact as `migrate` publishes them (SET TABLE replaces
/// the whole table list).
fn set_publication(db: &TestDb, interaction_columns: &[&str]) -> String {
    format!(
        "alter publication {} set table interaction ({}), customer (customer_id, name),
             contact (contact_id, first_name, last_name, email)",
        db.name,
        interaction_columns.join(", ")
    )
}

/// Waits (bounded) for the in-process consumer to end; returns its error.
async fn wait_stopped(run: Running, within: Duration) -> SyncError {
    let handle = run.handle;
    let ended = wait_until(within, || {
        let done = handle.is_finished();
        async move { done }
    })
    .await;
    assert!(ended, "calendar-sync did not stop within {within:?}");
    handle
        .await
        .expect("the consumer task did not panic")
        .expect_err("calendar-sync stopped with an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_and_dropping_unmapped_columns_while_streaming_changes_nothing() {
    let (db, run) = started().await;
    let early = db.insert("Early", "now()", "").await;
    db.wait_count(&success_rows(early, "create"), 1).await;

    db.client
        .batch_execute(
            "alter table interaction add column extra int;
             alter table interaction drop column medium;",
        )
        .await
        .expect("unmapped DDL");
    let id = db
        .insert("After DDL", "now()", "extra=7;location='Room 1'")
        .await;
    db.wait_count(&success_rows(id, "create"), 1).await;
    let e = db.event(id).await.expect("event");
    assert_eq!(e.get::<_, String>("title"), "After DDL");
    assert_eq!(
        e.get::<_, Option<String>>("location").as_deref(),
        Some("Room 1")
    );
    db.client
        .execute(
            "update interaction set subject = 'Early (edited)', extra = 8 where interaction_id = $1",
            &[&early],
        )
        .await
        .expect("update");
    db.wait_count(&success_rows(early, "update"), 1).await;
    assert_eq!(
        db.event(early)
            .await
            .expect("event")
            .get::<_, String>("title"),
        "Early (edited)"
    );

    // Re-mapping by name: publish two unmapped columns too. opportunity_id sits
    // before location, description, duration_minutes, ... in the table, so the
    // new Relation message is wider and every later mapped column moves one
    // place to the right; extra (added last) widens it once more.
    let mut columns = MAPPED_COLUMNS.to_vec();
    columns.extend(["opportunity_id", "extra"]);
    db.client
        .batch_execute(&set_publication(&db, &columns))
        .await
        .expect("widen the publication");
    db.client
        .execute(
            "update interaction set location = 'Moved here', description = 'Agenda',
                    duration_minutes = 20, opportunity_id = gen_random_uuid(), extra = 9
              where interaction_id = $1",
            &[&early],
        )
        .await
        .expect("update after widening");
    db.wait_count(&success_rows(early, "update"), 2).await;
    let e = db.event(early).await.expect("event");
    assert_eq!(e.get::<_, String>("title"), "Early (edited)");
    assert_eq!(
        e.get::<_, Option<String>>("location").as_deref(),
        Some("Moved here")
    );
    assert_eq!(
        e.get::<_, Option<String>>("description").as_deref(),
        Some("Agenda")
    );
    assert_eq!(e.get::<_, Option<bool>>("all_day"), Some(false));
    let late = db
        .insert(
            "Late",
            "now()",
            "opportunity_id=gen_random_uuid();extra=1;location='Room 2';archived=false",
        )
        .await;
    db.wait_count(&success_rows(late, "create"), 1).await;
    let e = db.event(late).await.expect("event");
    assert_eq!(
        e.get::<_, Option<String>>("location").as_deref(),
        Some("Room 2")
    );
    assert_eq!(e.get::<_, String>("event_status"), "scheduled");
    db.barrier().await;
    assert_eq!(
        db.count("select count(*) from calendar_sync_failures")
            .await,
        0
    );
    run.stop().await.expect("still streaming; clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retyping_a_mapped_column_stops_the_stream_with_a_fatal_error_naming_it_and_progress_stays_before_it(
) {
    let (db, run) = started().await;
    let before_ddl = db.insert("Before", "now()", "duration_minutes=30").await;
    db.wait_count(&success_rows(before_ddl, "create"), 1).await;

    // PostgreSQL 15 refuses to retype a column in the publication's column list.
    let err = db
        .client
        .batch_execute(
            "alter table interaction alter column duration_minutes type text using duration_minutes::text",
        )
        .await
        .expect_err("PostgreSQL 15 refuses ALTER TYPE of a published column");
    assert_eq!(
        err.code(),
        Some(&SqlState::FEATURE_NOT_SUPPORTED),
        "{err:?}"
    );
    let detail = err
        .as_db_error()
        .and_then(|d| d.detail())
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains(&db.name) && detail.contains("duration_minutes"),
        "{detail}"
    );

    // The way a DBA gets there anyway: out of the column list, retype, back in.
    let without: Vec<&str> = MAPPED_COLUMNS
        .iter()
        .copied()
        .filter(|c| *c != "duration_minutes")
        .collect();
    db.client
        .batch_execute(&format!(
            "begin;
             {};
             alter table interaction alter column duration_minutes type text using duration_minutes::text;
             {};
             commit;",
            set_publication(&db, &without),
            set_publication(&db, &MAPPED_COLUMNS)
        ))
        .await
        .expect("retype through the publication");

    let before_insert = pg_current_lsn(&db.client).await;
    let after = db
        .insert("After retype", "now()", "duration_minutes='30'")
        .await;
    let e = wait_stopped(run, Duration::from_secs(20)).await;
    assert_eq!(
        e.kind(),
        Some(FatalKind::SchemaChanged),
        "fatal, not retried: {e}"
    );
    assert!(e.to_string().contains("duration_minutes"), "{e}");

    // Nothing of the failing transaction was applied and progress stayed below it.
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_sync_progress
              where slot_name = '{}' and lsn <= '{before_insert}'::pg_lsn",
            db.name
        ))
        .await,
        1,
        "progress did not move past the failing transaction"
    );
    assert!(db.event(after).await.is_none());
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_sync_log where interaction_id = '{after}'"
        ))
        .await,
        0
    );

    // A restart replays the transaction (it was not skipped) and stops again.
    let again = Running::start(db.config());
    let e = wait_stopped(again, Duration::from_secs(20)).await;
    assert_eq!(e.kind(), Some(FatalKind::SchemaChanged), "{e}");
    assert!(e.to_string().contains("duration_minutes"), "{e}");
    assert!(db.event(after).await.is_none());

    // Restoring the column does not help: logical decoding reads each change
    // with the catalog as it was when the change was written, so the replayed
    // INSERT still arrives with duration_minutes as text. The error's hint says
    // so: the way out is a new slot and snapshot.
    db.client
        .batch_execute(&format!(
            "begin;
             {};
             alter table interaction alter column duration_minutes type integer using duration_minutes::integer;
             {};
             commit;",
            set_publication(&db, &without),
            set_publication(&db, &MAPPED_COLUMNS)
        ))
        .await
        .expect("restore the type");
    let restored = Running::start(db.config());
    let e = wait_stopped(restored, Duration::from_secs(20)).await;
    assert_eq!(e.kind(), Some(FatalKind::SchemaChanged), "{e}");
    assert!(
        e.to_string().contains("type oid 25"),
        "still the retyped column of the replayed transaction: {e}"
    );
    assert!(
        e.to_string().contains("pg_drop_replication_slot"),
        "the hint gives the way out: {e}"
    );
    assert!(db.event(after).await.is_none());
}

/// PostgreSQL 15 refuses to drop a column in the publication's column list;
/// with CASCADE it drops it and takes interaction out of the publication
/// without an error (a NOTICE only), after which its changes silently stop
/// arriving. calendar-sync notices at its periodic publication check (every
/// 15 ticks of 2 s, about 30 s after the stream started) and stops with a
/// fatal error naming the publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_mapped_column_is_refused_and_with_cascade_stops_calendar_sync_naming_the_publication(
) {
    let (db, run) = started().await;
    let first = db.insert("First", "now()", "location='Room 1'").await;
    db.wait_count(&success_rows(first, "create"), 1).await;
    let published = format!(
        "select count(*) from pg_publication_tables where pubname = '{}' and tablename = 'interaction'",
        db.name
    );

    let err = db
        .client
        .batch_execute("alter table interaction drop column location")
        .await
        .expect_err("PostgreSQL 15 refuses DROP COLUMN of a published column");
    assert_eq!(
        err.code(),
        Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST),
        "{err:?}"
    );
    let detail = err
        .as_db_error()
        .and_then(|d| d.detail())
        .unwrap_or_default()
        .to_string();
    assert!(detail.contains(&db.name), "{detail}");
    assert_eq!(db.count(&published).await, 1, "still published");

    db.client
        .batch_execute("alter table interaction drop column location cascade")
        .await
        .expect("CASCADE is allowed");
    assert_eq!(
        db.count(&published).await,
        0,
        "CASCADE took interaction out of the publication"
    );
    // Never streamed: the table is no longer published.
    let lost = db.insert("After the drop", "now()", "").await;

    let e = wait_stopped(run, Duration::from_secs(45)).await;
    assert_eq!(
        e.kind(),
        Some(FatalKind::PublicationMissing),
        "fatal, not retried: {e}"
    );
    let text = e.to_string();
    assert!(
        text.contains(&format!("publication {}", db.name)) && text.contains("interaction"),
        "{text}"
    );
    assert!(db.event(lost).await.is_none());
}

/// The same for a participant column: `DROP COLUMN .. CASCADE` of
/// `contact.email` (in the publication's column list of contact) takes contact
/// out of the publication, after which contact renames silently stop
/// refreshing `participants` (contract §3). The periodic publication check
/// should catch it as it catches interaction leaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_participant_column_with_cascade_also_stops_calendar_sync_naming_the_publication(
) {
    let (db, run) = started().await;
    let id = db
        .insert("With Ada", "now()", &format!("contact_id='{CONTACT}'"))
        .await;
    db.wait_count(&success_rows(id, "create"), 1).await;
    db.client
        .batch_execute("alter table contact drop column email cascade")
        .await
        .expect("CASCADE is allowed");
    assert_eq!(
        db.count(&format!(
            "select count(*) from pg_publication_tables where pubname = '{}' and tablename = 'contact'",
            db.name
        ))
        .await,
        0,
        "CASCADE took contact out of the publication"
    );
    // Never streamed any more: the event would keep showing "Ada Lovelace".
    db.client
        .execute(
            "update contact set first_name = 'Augusta' where contact_id = $1",
            &[&CONTACT.parse::<uuid::Uuid>().expect("uuid")],
        )
        .await
        .expect("rename");
    // The publication check (before every acknowledgement) stops the
    // consumer, possibly before a barrier could pass: wait for the stop, then
    // look at the event, which nothing can change any more.
    let e = wait_stopped(run, Duration::from_secs(45)).await;
    assert_eq!(
        db.event(id)
            .await
            .expect("event")
            .get::<_, Vec<String>>("participants"),
        vec!["Ada Lovelace".to_string()],
        "the rename never arrived"
    );
    assert_eq!(
        e.kind(),
        Some(FatalKind::PublicationMissing),
        "fatal, not retried: {e}"
    );
    let text = e.to_string();
    assert!(
        text.contains(&format!("publication {}", db.name)) && text.contains("contact"),
        "{text}"
    );
}
