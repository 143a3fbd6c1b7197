//! Contract §3, the field mapping, through the real stream.

use chrono::{DateTime, NaiveTime, Utc};
use uuid::Uuid;

use crate::support::*;

async fn started_with(tz: &str) -> (TestDb, Running) {
    let db = TestDb::crm().await;
    db.migrate().await;
    let mut cfg = db.config();
    cfg.timezone = tz.parse().expect("zone");
    let run = Running::start(cfg);
    wait_streaming(&db).await;
    (db, run)
}

fn hm(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_field_is_copied() {
    let (db, run) = started_with("UTC").await;
    let id = db
        .insert(
            "Review",
            "now() + interval '1 day'",
            &format!("description='Agenda';location='HQ';duration_minutes=45;customer_id='{CUSTOMER}';contact_id='{CONTACT}';updated_by='{USER}'"),
        )
        .await;
    db.wait_count("select count(*) from calendar_events", 1)
        .await;
    // The stamp commits right after the event, on its own session.
    db.wait_count(
        &format!("select count(*) from interaction where interaction_id = '{id}' and calendar_synced_at is not null"),
        1,
    )
    .await;
    let e = db.event(id).await.expect("event");
    let i = db
        .client
        .query_one(
            "select * from interaction where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("interaction");
    assert_eq!(e.get::<_, String>("title"), i.get::<_, String>("subject"));
    assert_eq!(
        e.get::<_, Option<String>>("description").as_deref(),
        Some("Agenda")
    );
    assert_eq!(
        e.get::<_, DateTime<Utc>>("event_date"),
        i.get::<_, DateTime<Utc>>("interaction_date")
    );
    assert_eq!(e.get::<_, String>("event_type"), "meeting");
    assert_eq!(
        e.get::<_, Option<String>>("location").as_deref(),
        Some("HQ")
    );
    assert_eq!(
        e.get::<_, Vec<String>>("participants"),
        vec!["Acme Corp".to_string(), "Ada Lovelace".to_string()]
    );
    assert_eq!(
        e.get::<_, uuid::Uuid>("created_by"),
        i.get::<_, uuid::Uuid>("created_by")
    );
    assert_eq!(
        e.get::<_, Option<uuid::Uuid>>("updated_by"),
        i.get::<_, Option<uuid::Uuid>>("updated_by")
    );
    assert_eq!(
        e.get::<_, Option<DateTime<Utc>>>("created_at"),
        i.get::<_, Option<DateTime<Utc>>>("created_at")
    );
    // updated_at is the value the change carried (the INSERT's now(), like
    // created_at). The interaction's own updated_at has since been bumped by
    // its trigger when calendar-sync stamped calendar_synced_at: that echo is
    // ours and deliberately not mirrored (docs/decisions.md).
    let event_updated: Option<DateTime<Utc>> = e.get("updated_at");
    assert_eq!(
        event_updated,
        i.get::<_, Option<DateTime<Utc>>>("created_at")
    );
    assert!(
        i.get::<_, Option<DateTime<Utc>>>("calendar_synced_at")
            .is_some(),
        "calendar_synced_at is written by default"
    );
    assert!(i.get::<_, Option<DateTime<Utc>>>("updated_at") >= event_updated);
    assert_eq!(e.get::<_, Option<bool>>("all_day"), Some(false));
    let start: NaiveTime = e.get("start_time");
    let end: NaiveTime = e.get("end_time");
    assert_eq!(end - start, chrono::Duration::minutes(45));
    run.stop().await.expect("clean stop");
}

/// Columns of one type side by side (`title`/`event_type`,
/// `description`/`location`, `start_time`/`end_time`,
/// `created_by`/`updated_by`, `created_at`/`updated_at`,
/// `customer_id`/`contact_id`) get distinct values, and each lands in its own
/// column: on insert (the `unnest` parameters) and on update (the `SET`
/// list), with the pairs turned round by the update (issue 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_of_one_type_side_by_side_each_land_in_their_own() {
    const EDITOR: &str = "00000000-0000-4000-8000-0000000000e1";
    let (db, run) = started_with("UTC").await;
    db.client
        .batch_execute(&format!(
            "insert into users (user_id, email) values ('{EDITOR}', 'eve@example.com')"
        ))
        .await
        .expect("a second user");
    let (user, editor): (Uuid, Uuid) = (USER.parse().expect("uuid"), EDITOR.parse().expect("uuid"));
    let (customer, contact): (Uuid, Uuid) = (
        CUSTOMER.parse().expect("uuid"),
        CONTACT.parse().expect("uuid"),
    );
    let created: DateTime<Utc> = "2001-01-02T03:04:05Z".parse().expect("time");
    let updated: DateTime<Utc> = "2001-01-03T04:05:06Z".parse().expect("time");
    let id = db
        .insert(
            "Quarterly review",
            "now() + interval '1 day'",
            &format!(
                "description='Agenda';location='HQ';duration_minutes=45;customer_id='{CUSTOMER}';\
                 contact_id='{CONTACT}';updated_by='{EDITOR}';created_at='{created}';updated_at='{updated}'"
            ),
        )
        .await;
    let texts = |e: &tokio_postgres::Row| {
        ["title", "event_type", "description", "location"].map(|c| e.get::<_, Option<String>>(c))
    };
    let some = |v: [&str; 4]| v.map(|s| Some(s.to_string()));
    let by = |e: &tokio_postgres::Row| {
        ["created_by", "updated_by", "customer_id", "contact_id"]
            .map(|c| e.get::<_, Option<Uuid>>(c))
    };
    let at = |e: &tokio_postgres::Row| {
        ["created_at", "updated_at"].map(|c| e.get::<_, Option<DateTime<Utc>>>(c))
    };
    let length = |e: &tokio_postgres::Row| {
        e.get::<_, NaiveTime>("end_time") - e.get::<_, NaiveTime>("start_time")
    };
    db.wait_count(
        &format!("select count(*) from calendar_events where related_id = '{id}'"),
        1,
    )
    .await;
    let e = db.event(id).await.expect("event");
    assert_eq!(
        texts(&e),
        some(["Quarterly review", "meeting", "Agenda", "HQ"])
    );
    assert_eq!(by(&e), [user, editor, customer, contact].map(Some));
    assert_eq!(at(&e), [Some(created), Some(updated)]);
    assert_eq!(length(&e), chrono::Duration::minutes(45));

    db.client
        .execute(
            &format!(
                "update interaction set subject = 'call', interaction_type = 'Quarterly review',
                        description = 'HQ', location = 'Agenda', created_by = '{EDITOR}',
                        updated_by = '{USER}', customer_id = null, duration_minutes = 50
                  where interaction_id = $1"
            ),
            &[&id],
        )
        .await
        .expect("update");
    db.wait_count(
        &format!(
            "select count(*) from calendar_events where related_id = '{id}' and title = 'call'"
        ),
        1,
    )
    .await;
    let e = db.event(id).await.expect("event");
    assert_eq!(
        texts(&e),
        some(["call", "Quarterly review", "HQ", "Agenda"])
    );
    assert_eq!(by(&e), [Some(editor), Some(user), None, Some(contact)]);
    let [created_at, updated_at] = at(&e);
    assert_eq!(created_at, Some(created));
    assert!(
        updated_at > Some(updated),
        "the update trigger's clock_timestamp(): {updated_at:?}"
    );
    assert_eq!(length(&e), chrono::Duration::minutes(50));
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_are_in_the_configured_zone_and_end_time_wraps_past_midnight() {
    let (db, run) = started_with("Europe/Berlin").await;
    // 22:30 UTC on a winter day is 23:30 in Berlin; +90 min ends 01:00.
    let id = db
        .insert(
            "Late call",
            "date_trunc('day', now()) + interval '1 day 22 hours 30 minutes'",
            "duration_minutes=90",
        )
        .await;
    db.wait_count("select count(*) from calendar_events", 1)
        .await;
    let e = db.event(id).await.expect("event");
    let date: DateTime<Utc> = e.get("event_date");
    let offset_h =
        chrono::TimeZone::offset_from_utc_datetime(&chrono_tz::Europe::Berlin, &date.naive_utc());
    let local = date.with_timezone(&chrono_tz::Europe::Berlin).time();
    assert_eq!(
        e.get::<_, NaiveTime>("start_time"),
        local,
        "offset {offset_h:?}"
    );
    let end = (date + chrono::Duration::minutes(90))
        .with_timezone(&chrono_tz::Europe::Berlin)
        .time();
    assert_eq!(e.get::<_, NaiveTime>("end_time"), end);
    assert!(end < local, "wrapped past midnight: {local} -> {end}");
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_or_zero_duration_is_all_day_without_end_time() {
    let (db, run) = started_with("UTC").await;
    let none = db
        .insert(
            "No duration",
            "date_trunc('day', now()) + interval '1 day 9 hours'",
            "",
        )
        .await;
    let zero = db
        .insert(
            "Zero",
            "date_trunc('day', now()) + interval '1 day 9 hours'",
            "duration_minutes=0",
        )
        .await;
    db.wait_count("select count(*) from calendar_events", 2)
        .await;
    for id in [none, zero] {
        let e = db.event(id).await.expect("event");
        assert_eq!(e.get::<_, Option<bool>>("all_day"), Some(true));
        assert_eq!(e.get::<_, Option<NaiveTime>>("end_time"), None);
        assert_eq!(e.get::<_, Option<NaiveTime>>("start_time"), Some(hm(9, 0)));
    }
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_leave_nulls_out_and_are_empty_when_none() {
    let (db, run) = started_with("UTC").await;
    db.client
        .batch_execute(
            "insert into contact (contact_id, first_name, last_name, email) values
               ('00000000-0000-4000-8000-0000000000d2', null, '  ', 'bob@example.com'),
               ('00000000-0000-4000-8000-0000000000d3', 'Cher', null, null)",
        )
        .await
        .expect("contacts");
    let none = db.insert("Nobody", "now()", "").await;
    let only_contact = db
        .insert(
            "Only contact",
            "now()",
            "contact_id='00000000-0000-4000-8000-0000000000d3'",
        )
        .await;
    let email = db
        .insert(
            "Email fallback",
            "now()",
            &format!("customer_id='{CUSTOMER}';contact_id='00000000-0000-4000-8000-0000000000d2'"),
        )
        .await;
    db.wait_count("select count(*) from calendar_events", 3)
        .await;
    let p = |r: tokio_postgres::Row| r.get::<_, Vec<String>>("participants");
    assert_eq!(
        p(db.event(none).await.expect("event")),
        Vec::<String>::new()
    );
    assert_eq!(
        p(db.event(only_contact).await.expect("event")),
        vec!["Cher"]
    );
    assert_eq!(
        p(db.event(email).await.expect("event")),
        vec!["Acme Corp", "bob@example.com"]
    );
    run.stop().await.expect("clean stop");
}

/// The participants rule has a Rust side (the stream, the snapshot, retries)
/// and a SQL twin (the set-based refresh after a rename): they agree on every
/// combination of missing, NULL, empty and blank names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_participants_rule_agrees_with_the_rust_rule_for_null_and_blank_names() {
    use calendar_sync::participants::{participants, participants_sql};
    let db = TestDb::empty().await;
    let sql = format!("select {}", participants_sql("$1::text", "$2::text"));
    let names = [
        None,
        Some(""),
        Some(" "),
        Some("Acme"),
        Some("NULL"),
        Some("a \"b\""),
    ];
    let mut checked = 0;
    for customer in names {
        for contact in names {
            let from_sql: Vec<String> = db
                .client
                .query_one(sql.as_str(), &[&customer, &contact])
                .await
                .expect("participants in SQL")
                .get(0);
            let from_rust = participants(customer.map(str::to_string), contact.map(str::to_string));
            assert_eq!(
                from_sql, from_rust,
                "customer {customer:?}, contact {contact:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, names.len() * names.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_customer_or_contact_refreshes_participants_of_its_events() {
    let (db, run) = started_with("UTC").await;
    let a = db
        .insert(
            "A",
            "now()",
            &format!("customer_id='{CUSTOMER}';contact_id='{CONTACT}'"),
        )
        .await;
    let b = db
        .insert(
            "B",
            "now() - interval '200 days'",
            &format!("customer_id='{CUSTOMER}'"),
        )
        .await; // no event
    db.wait_count("select count(*) from calendar_events", 1)
        .await;
    db.client
        .execute(
            &format!("update customer set name = 'Acme Inc' where customer_id = '{CUSTOMER}'"),
            &[],
        )
        .await
        .expect("rename");
    db.wait_count(&format!("select count(*) from calendar_events where related_id = '{a}' and participants[1] = 'Acme Inc'"), 1).await;
    db.client
        .execute(&format!("update contact set first_name = 'Augusta', last_name = 'King' where contact_id = '{CONTACT}'"), &[])
        .await
        .expect("rename contact");
    db.wait_count(&format!("select count(*) from calendar_events where related_id = '{a}' and participants = array['Acme Inc', 'Augusta King']"), 1).await;
    assert_eq!(db.count(&format!("select count(*) from calendar_sync_log where interaction_id = '{a}' and action = 'update'")).await, 2);
    assert!(db.event(b).await.is_none());
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_leaving_toasted_description_keeps_stored_value() {
    let (db, run) = started_with("UTC").await;
    // Random text does not compress: stored out of line (TOAST), > 8 kB.
    let big: String = (0..12_000)
        .map(|i| char::from(b'a' + ((i * 7919 + i / 13) % 26) as u8))
        .collect();
    let id = db.insert("Toast", "now()", "").await;
    db.client
        .execute(
            "update interaction set description = $2 where interaction_id = $1",
            &[&id, &big],
        )
        .await
        .expect("big description");
    db.wait_count(&format!("select count(*) from calendar_events where related_id = '{id}' and length(description) = 12000"), 1).await;
    db.client
        .execute(
            "update interaction set location = 'Elsewhere' where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("other column");
    db.wait_count(&format!("select count(*) from calendar_events where related_id = '{id}' and location = 'Elsewhere'"), 1).await;
    let e = db.event(id).await.expect("event");
    assert_eq!(
        e.get::<_, Option<String>>("description").as_deref(),
        Some(big.as_str()),
        "the stored description survived"
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_created_from_an_update_with_toasted_description_gets_the_real_one() {
    let (db, run) = started_with("UTC").await;
    let big: String = (0..12_000)
        .map(|i| char::from(b'a' + ((i * 31 + i / 7) % 26) as u8))
        .collect();
    let id = db.insert("Archived toast", "now()", "archived=true").await;
    db.client
        .execute(
            "update interaction set description = $2 where interaction_id = $1",
            &[&id, &big],
        )
        .await
        .expect("big");
    db.barrier().await;
    assert!(db.event(id).await.is_none());
    db.client
        .execute(
            "update interaction set archived = false where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("unarchive");
    db.wait_count("select count(*) from calendar_events", 1)
        .await;
    let e = db.event(id).await.expect("event");
    assert_eq!(
        e.get::<_, Option<String>>("description").as_deref(),
        Some(big.as_str())
    );
    run.stop().await.expect("clean stop");
}
