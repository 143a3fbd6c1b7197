//! One case per row of contract §2's table, plus the rules under it.

use super::*;
use chrono::TimeZone;
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
        .single()
        .expect("valid")
}

fn row(archived: bool, days_ago: i64) -> InteractionRow {
    InteractionRow {
        interaction_id: Uuid::from_u128(1),
        interaction_type: "visit".into(),
        subject: Some("Review".into()),
        interaction_date: Some(t0() - chrono::Duration::days(days_ago)),
        customer_id: None,
        contact_id: None,
        location: Some("HQ".into()),
        description: Toast::Value(Some("notes".into())),
        duration_minutes: Some(30),
        created_by: Uuid::from_u128(9),
        updated_by: None,
        created_at: None,
        updated_at: None,
        archived,
    }
}

fn run(r: &InteractionRow, existing: Option<&EventFields>) -> Result<Decision, RowError> {
    let change = Change::Upsert {
        row: r,
        participants: vec!["Acme".into()],
    };
    decide(
        &change,
        existing,
        t0(),
        chrono::Duration::days(30),
        chrono_tz::UTC,
    )
}

fn existing_for(r: &InteractionRow) -> EventFields {
    event_fields(r, &["Acme".to_string()], None, chrono_tz::UTC).expect("valid")
}

struct Case {
    name: &'static str,
    row: InteractionRow,
    existing: Option<EventFields>,
    want: Result<Option<Action>, ()>,
    want_skip: Option<Skip>,
}

#[test]
fn every_row_of_the_contract_table() {
    let scheduled = existing_for(&row(false, 1));
    let cancelled = existing_for(&row(true, 1));
    let mut renamed = row(false, 1);
    renamed.subject = Some("New title".into());
    let cases = vec![
        Case {
            name: "insert, not archived, in window, no event: create",
            row: row(false, 1),
            existing: None,
            want: Ok(Some(Action::Create)),
            want_skip: None,
        },
        Case {
            name: "insert, not archived, outside window: nothing",
            row: row(false, 31),
            existing: None,
            want: Ok(None),
            want_skip: Some(Skip::OutsideWindow),
        },
        Case {
            name: "exactly at the window start: create",
            row: row(false, 30),
            existing: None,
            want: Ok(Some(Action::Create)),
            want_skip: None,
        },
        Case {
            name: "future interaction: create",
            row: row(false, -10),
            existing: None,
            want: Ok(Some(Action::Create)),
            want_skip: None,
        },
        Case {
            name: "update, not archived, event exists: update",
            row: renamed,
            existing: Some(scheduled.clone()),
            want: Ok(Some(Action::Update)),
            want_skip: None,
        },
        Case {
            name: "update, archived, event scheduled: cancel",
            row: row(true, 1),
            existing: Some(scheduled.clone()),
            want: Ok(Some(Action::Cancel)),
            want_skip: None,
        },
        Case {
            name: "update, archived, no event: nothing (never create a cancelled event)",
            row: row(true, 1),
            existing: None,
            want: Ok(None),
            want_skip: Some(Skip::Archived),
        },
        Case {
            name: "un-archive, event cancelled: update back to scheduled",
            row: row(false, 1),
            existing: Some(cancelled.clone()),
            want: Ok(Some(Action::Update)),
            want_skip: None,
        },
        Case {
            name: "un-archive, no event, in window: create",
            row: row(false, 1),
            existing: None,
            want: Ok(Some(Action::Create)),
            want_skip: None,
        },
        Case {
            name: "update changing no mapped field: nothing",
            row: row(false, 1),
            existing: Some(scheduled.clone()),
            want: Ok(None),
            want_skip: Some(Skip::Unchanged),
        },
        Case {
            name: "archived edit of an already cancelled event: update",
            row: {
                let mut r = row(true, 1);
                r.location = Some("Elsewhere".into());
                r
            },
            existing: Some(cancelled.clone()),
            want: Ok(Some(Action::Update)),
            want_skip: None,
        },
        Case {
            name: "event exists, date moved outside window: still mirrored",
            row: row(false, 400),
            existing: Some(scheduled.clone()),
            want: Ok(Some(Action::Update)),
            want_skip: None,
        },
        Case {
            name: "negative duration is bad input",
            row: {
                let mut r = row(false, 1);
                r.duration_minutes = Some(-1);
                r
            },
            existing: None,
            want: Err(()),
            want_skip: None,
        },
        Case {
            name: "no date: nothing created",
            row: {
                let mut r = row(false, 1);
                r.interaction_date = None;
                r
            },
            existing: None,
            want: Ok(None),
            want_skip: Some(Skip::MissingSubjectOrDate),
        },
        Case {
            name: "no subject: nothing created",
            row: {
                let mut r = row(false, 1);
                r.subject = None;
                r
            },
            existing: None,
            want: Ok(None),
            want_skip: Some(Skip::MissingSubjectOrDate),
        },
    ];
    for c in cases {
        let got = run(&c.row, c.existing.as_ref());
        match (&got, &c.want) {
            (Ok(d), Ok(want)) => {
                assert_eq!(d.action(), *want, "{}", c.name);
                if let Some(skip) = c.want_skip {
                    assert_eq!(*d, Decision::Skip(skip), "{}", c.name);
                }
            }
            (Err(_), Err(())) => {}
            _ => panic!("{}: got {got:?}", c.name),
        }
    }
}

#[test]
fn delete_removes_an_existing_event_and_ignores_a_missing_one() {
    let e = existing_for(&row(false, 1));
    let at = |existing| {
        decide(
            &Change::Delete,
            existing,
            t0(),
            chrono::Duration::days(30),
            chrono_tz::UTC,
        )
    };
    assert_eq!(at(Some(&e)), Ok(Decision::Delete));
    assert_eq!(at(None), Ok(Decision::Skip(Skip::NoEvent)));
}

#[test]
fn mirrored_fields_follow_the_mapping() {
    let r = row(true, 1);
    let Ok(Decision::Update { fields, .. }) = run(&r, Some(&existing_for(&row(false, 1)))) else {
        panic!("expected an update");
    };
    assert_eq!(fields.event_status, EventStatus::Cancelled);
    assert_eq!(fields.title, "Review");
    assert_eq!(fields.event_type, "visit");
    assert_eq!(fields.participants, vec!["Acme".to_string()]);
    assert!(!fields.all_day);
    assert_eq!(
        fields.end_time,
        Some(fields.start_time + chrono::Duration::minutes(30))
    );
}

#[test]
fn unchanged_toast_keeps_the_stored_description() {
    let mut stored = existing_for(&row(false, 1));
    stored.description = Some("x".repeat(10_000));
    let mut r = row(false, 1);
    r.description = Toast::Unchanged;
    r.location = Some("Moved".into());
    let Ok(Decision::Update { fields, .. }) = run(&r, Some(&stored)) else {
        panic!("expected an update");
    };
    assert_eq!(fields.description, stored.description);
    // With no event, the caller must resolve the value first.
    assert_eq!(run(&r, None), Err(RowError::UnresolvedToast));
}

#[test]
fn the_decision_uses_the_commit_time_not_the_clock() {
    let r = row(false, 20);
    let later = t0() + chrono::Duration::days(20);
    let change = Change::Upsert {
        row: &r,
        participants: vec![],
    };
    let d = decide(
        &change,
        None,
        later,
        chrono::Duration::days(30),
        chrono_tz::UTC,
    )
    .expect("valid");
    assert_eq!(d, Decision::Skip(Skip::OutsideWindow));
}
