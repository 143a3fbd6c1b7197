//! Contract §5 "Permanent for one row" and §7: one bad change is isolated
//! (savepoint), recorded in `calendar_sync_failures` with a `failed` log row,
//! the stream goes on; the retry worker re-syncs the interaction's current
//! state with backoff; a later successful sync resolves the failure; one open
//! failure row per interaction. And the `failures` commands of the binary.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::support::*;

fn failure_rows(id: Uuid) -> String {
    format!("select count(*) from calendar_sync_failures where interaction_id = '{id}'")
}

#[derive(Debug)]
struct FailureRow {
    failure_id: Uuid,
    action: String,
    error_message: String,
    retry_count: Option<i32>,
    last_retry_at: Option<DateTime<Utc>>,
    next_retry_at: Option<DateTime<Utc>>,
    resolved: Option<bool>,
    created_at: Option<DateTime<Utc>>,
}

/// The one failure row of `id` (all rows, resolved or not: there must be one).
async fn the_failure(db: &TestDb, id: Uuid) -> FailureRow {
    let rows = db
        .client
        .query(
            "select failure_id, action, error_message, retry_count, last_retry_at,
                    next_retry_at, resolved, created_at
               from calendar_sync_failures where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("select failures");
    assert_eq!(rows.len(), 1, "exactly one failure row for {id}");
    let r = &rows[0];
    FailureRow {
        failure_id: r.get(0),
        action: r.get(1),
        error_message: r.get(2),
        retry_count: r.get(3),
        last_retry_at: r.get(4),
        next_retry_at: r.get(5),
        resolved: r.get(6),
        created_at: r.get(7),
    }
}

/// An interaction created by `by` (the harness's `insert` uses the known user).
async fn insert_by(db: &TestDb, subject: &str, by: Uuid) -> Uuid {
    db.client
        .query_one(
            "insert into interaction (interaction_type, subject, interaction_date, created_by)
             values ('meeting', $1, now(), $2) returning interaction_id",
            &[&subject, &by],
        )
        .await
        .expect("insert interaction")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_created_by_is_recorded_and_the_retry_worker_creates_the_event_once_the_user_exists(
) {
    let (db, run) = started().await;
    // The CRM's users table lives in the same database, so calendar_events has
    // a foreign key to it; let the source accept a user the target refuses.
    db.client
        .batch_execute("alter table interaction drop constraint interaction_created_by_fkey")
        .await
        .expect("drop the source-side FK");
    let ghost = Uuid::new_v4();
    let bad = insert_by(&db, "By a ghost", ghost).await;
    db.wait_count(&failure_rows(bad), 1).await;

    let f = the_failure(&db, bad).await;
    assert_eq!(f.resolved, Some(false), "{f:?}");
    assert_eq!(f.retry_count, Some(0), "{f:?}");
    assert!(f.next_retry_at.is_some(), "backoff scheduled: {f:?}");
    assert!(f.last_retry_at.is_none(), "never retried yet: {f:?}");
    assert_eq!(f.action, "create");
    assert!(
        f.error_message.contains("calendar_events_created_by_fkey"),
        "the failure names the constraint: {}",
        f.error_message
    );
    let log = db
        .client
        .query(
            "select action, status, error_message, event_id from calendar_sync_log where interaction_id = $1",
            &[&bad],
        )
        .await
        .expect("log");
    assert_eq!(log.len(), 1, "one log row for the failed insert");
    assert_eq!(log[0].get::<_, String>("action"), "create");
    assert_eq!(log[0].get::<_, String>("status"), "failed");
    let message: Option<String> = log[0].get("error_message");
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("calendar_events_created_by_fkey")),
        "{message:?}"
    );
    assert!(log[0].get::<_, Option<Uuid>>("event_id").is_none());
    assert!(
        db.event(bad).await.is_none(),
        "the savepoint rolled the insert back"
    );

    // The stream goes on.
    let good = db.insert("Good", "now()", "").await;
    db.wait_count(&log_rows(good, "create", "success"), 1).await;
    assert!(db.event(good).await.is_some());

    // Fix the cause, make the failure due: the retry worker re-syncs the
    // interaction's current state and the success resolves the failure.
    db.client
        .execute(
            "insert into users (user_id, email) values ($1, 'ghost@example.com')",
            &[&ghost],
        )
        .await
        .expect("the missing user");
    let due = calendar_sync::failures::retry(&db.config(), None)
        .await
        .expect("failures retry");
    assert_eq!(due, 1, "one open failure made due");
    db.wait_count(&log_rows(bad, "create", "success"), 1).await;
    db.wait_count(
        &format!(
            "select count(*) from calendar_sync_failures where interaction_id = '{bad}' and resolved"
        ),
        1,
    )
    .await;
    let e = db.event(bad).await.expect("the retry created the event");
    assert_eq!(e.get::<_, String>("title"), "By a ghost");
    assert_eq!(e.get::<_, Uuid>("created_by"), ghost);
    assert_eq!(e.get::<_, String>("event_status"), "scheduled");

    db.barrier().await;
    assert_eq!(
        db.count("select count(*) from calendar_sync_failures")
            .await,
        1,
        "no failure row for anything else"
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_log where status = 'failed'")
            .await,
        1,
        "no other failed log row"
    );
    assert_eq!(db.count("select count(*) from calendar_events").await, 2);
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_duration_update_keeps_the_last_good_event_backs_off_on_retry_and_a_fix_resolves_it(
) {
    let (db, run) = started().await;
    let cfg = db.config();
    let id = db
        .insert(
            "Review",
            "now() + interval '1 day'",
            "duration_minutes=30;location='Room 1'",
        )
        .await;
    db.wait_count(&log_rows(id, "create", "success"), 1).await;
    let good = db.event(id).await.expect("event");

    db.client
        .execute(
            "update interaction set subject = 'Review (moved)', location = 'Room 9', duration_minutes = -15
              where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("bad update");
    db.wait_count(&failure_rows(id), 1).await;
    let first = the_failure(&db, id).await;
    assert_eq!(first.resolved, Some(false), "{first:?}");
    assert_eq!(first.retry_count, Some(0), "{first:?}");
    assert_eq!(first.action, "update", "the event exists: {first:?}");
    assert!(
        first.error_message.contains("duration_minutes") && first.error_message.contains("-15"),
        "{}",
        first.error_message
    );
    assert_eq!(db.count(&log_rows(id, "update", "failed")).await, 1);

    // The event keeps its last good state.
    let assert_last_good = |e: tokio_postgres::Row| {
        for col in ["title", "location"] {
            assert_eq!(
                e.get::<_, Option<String>>(col),
                good.get::<_, Option<String>>(col),
                "{col} kept its last good value"
            );
        }
        assert_eq!(
            e.get::<_, Option<chrono::NaiveTime>>("end_time"),
            good.get::<_, Option<chrono::NaiveTime>>("end_time")
        );
        assert_eq!(
            e.get::<_, Option<DateTime<Utc>>>("updated_at"),
            good.get::<_, Option<DateTime<Utc>>>("updated_at")
        );
    };
    assert_last_good(db.event(id).await.expect("event kept"));

    // The stream goes on.
    let next = db.insert("Next", "now()", "").await;
    db.wait_count(&log_rows(next, "create", "success"), 1).await;

    // Retried while still negative: the same open row counts the retry and
    // backs off further.
    let due = calendar_sync::failures::retry(&cfg, None)
        .await
        .expect("failures retry");
    assert_eq!(due, 1);
    db.wait_count(
        &format!(
            "select count(*) from calendar_sync_failures where interaction_id = '{id}' and retry_count = 1"
        ),
        1,
    )
    .await;
    let second = the_failure(&db, id).await;
    assert_eq!(second.failure_id, first.failure_id, "the same row");
    assert_eq!(second.resolved, Some(false));
    let last_retry = second.last_retry_at.expect("last_retry_at set");
    let next_retry = second.next_retry_at.expect("next_retry_at set");
    let first_next = first.next_retry_at.expect("first next_retry_at");
    assert!(
        next_retry > first_next,
        "{next_retry} is later than {first_next}"
    );
    // Exponential: the delay after the first retry is at least twice the first one.
    let first_delay = first_next - first.created_at.expect("created_at");
    let second_delay = next_retry - last_retry;
    assert!(
        second_delay >= first_delay * 2 - chrono::Duration::seconds(1),
        "backoff grew from {first_delay} to {second_delay}"
    );
    assert_eq!(db.count(&log_rows(id, "update", "failed")).await, 2);
    assert_last_good(db.event(id).await.expect("event kept"));

    // A fixing update in the source: the streamed sync resolves the failure
    // and the event mirrors the interaction's current state.
    db.client
        .execute(
            "update interaction set duration_minutes = 45 where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("fix");
    db.wait_count(
        &format!(
            "select count(*) from calendar_sync_failures where interaction_id = '{id}' and resolved"
        ),
        1,
    )
    .await;
    assert_eq!(db.count(&failure_rows(id)).await, 1, "still one row");
    assert_eq!(db.count(&log_rows(id, "update", "success")).await, 1);
    let e = db.event(id).await.expect("event");
    assert_eq!(e.get::<_, String>("title"), "Review (moved)");
    assert_eq!(
        e.get::<_, Option<String>>("location").as_deref(),
        Some("Room 9")
    );
    assert_eq!(e.get::<_, Option<bool>>("all_day"), Some(false));
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_events e join interaction i on i.interaction_id = e.related_id
              where e.related_id = '{id}'
                and e.end_time = ((i.interaction_date + interval '45 minutes') at time zone 'UTC')::time"
        ))
        .await,
        1,
        "end_time is start + 45 minutes"
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_failure_of_the_same_interaction_updates_its_open_row() {
    let (db, run) = started().await;
    let id = db.insert("Broken", "now()", "duration_minutes=-5").await;
    db.wait_count(&failure_rows(id), 1).await;
    let first = the_failure(&db, id).await;
    assert_eq!(first.action, "create", "no event exists: {first:?}");
    assert!(
        first.error_message.contains("-5"),
        "{}",
        first.error_message
    );

    db.client
        .execute(
            "update interaction set duration_minutes = -10 where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("second bad change");
    db.wait_count(&log_rows(id, "create", "failed"), 2).await;
    // the_failure asserts there is exactly one row, resolved or not.
    let second = the_failure(&db, id).await;
    assert_eq!(second.failure_id, first.failure_id, "updated, not added");
    assert_eq!(second.resolved, Some(false));
    assert!(
        second.error_message.contains("-10"),
        "the open row carries the latest error: {}",
        second.error_message
    );
    assert_eq!(
        second.retry_count,
        Some(0),
        "a new failure from the stream is not a retry"
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_failures where not resolved")
            .await,
        1
    );
    assert!(db.event(id).await.is_none());
    run.stop().await.expect("clean stop");
}

async fn failures_cli(db: &TestDb, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_calendar-sync"))
        .arg("failures")
        .args(args)
        .env_remove("TARGET_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .env("DATABASE_URL", &db.url)
        .env("CALENDAR_SYNC_PUBLICATION", &db.name)
        .env("CALENDAR_SYNC_SLOT", &db.name)
        .output()
        .await
        .expect("run calendar-sync failures")
}

fn show(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failures_commands_list_and_resolve_through_the_binary() {
    let (db, run) = started().await;
    let id = db.insert("Broken", "now()", "duration_minutes=-1").await;
    db.wait_count(&failure_rows(id), 1).await;
    run.stop().await.expect("clean stop");
    let f = the_failure(&db, id).await;

    let out = failures_cli(&db, &["list"]).await;
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&id.to_string()), "{}", show(&out));
    assert!(text.contains(&f.failure_id.to_string()), "{}", show(&out));

    let out = failures_cli(&db, &["list", "--json"]).await;
    assert!(out.status.success(), "{}", show(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
    let items = json.as_array().expect("a JSON array");
    assert_eq!(items.len(), 1, "{json}");
    assert_eq!(items[0]["interaction_id"], id.to_string(), "{json}");
    assert_eq!(items[0]["failure_id"], f.failure_id.to_string(), "{json}");
    assert_eq!(items[0]["retry_count"], 0, "{json}");

    let failure_id = f.failure_id.to_string();
    let out = failures_cli(&db, &["resolve", &failure_id]).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(the_failure(&db, id).await.resolved, Some(true));

    let out = failures_cli(&db, &["resolve", &failure_id]).await;
    assert!(
        !out.status.success(),
        "resolving twice fails: {}",
        show(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&failure_id) && stderr.contains("no open failure"),
        "{}",
        show(&out)
    );

    let out = failures_cli(&db, &["list", "--json"]).await;
    assert!(out.status.success(), "{}", show(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
    assert_eq!(json, serde_json::json!([]), "nothing open any more");
}

/// A trigger of the CRM on calendar_events that raises against one row
/// (P0001, `raise exception`) refuses that row, not the stream (decision 56;
/// it stopped the stream before): the row is a failure, the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_trigger_raising_against_one_event_is_that_rows_failure() {
    let (db, run) = started().await;
    db.client
        .batch_execute(
            "create function veto() returns trigger language plpgsql as $$
             begin
               if new.title = 'Vetoed' then
                 raise exception 'the CRM refuses %', new.title;
               end if;
               return new;
             end $$;
             create trigger veto before insert or update on calendar_events
               for each row execute function veto();",
        )
        .await
        .expect("the trigger");
    let bad = db.insert("Vetoed", "now()", "").await;
    let good = db.insert("Welcome", "now()", "").await;
    db.wait_count(&failure_rows(bad), 1).await;
    db.wait_count(&log_rows(good, "create", "success"), 1).await;
    let f = the_failure(&db, bad).await;
    assert!(
        f.error_message.contains("the CRM refuses Vetoed") && f.error_message.contains("P0001"),
        "{f:?}"
    );
    assert!(db.event(bad).await.is_none());
    assert!(!run.handle.is_finished(), "the stream goes on");
    run.stop().await.expect("clean stop");
}
