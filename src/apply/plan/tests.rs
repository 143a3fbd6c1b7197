//! The planner against hand-built states: one test per batching promise.

use chrono::{TimeZone, Utc};

use super::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
        .single()
        .expect("valid")
}

fn row(id: Uuid, subject: &str) -> InteractionRow {
    InteractionRow {
        interaction_id: id,
        interaction_type: "meeting".into(),
        subject: Some(subject.into()),
        interaction_date: Some(t0()),
        customer_id: None,
        contact_id: None,
        location: None,
        description: Toast::Value(Some("d".into())),
        duration_minutes: Some(30),
        created_by: Uuid::nil(),
        updated_by: None,
        created_at: None,
        updated_at: None,
        archived: false,
    }
}

fn upsert(lsn: u64, r: InteractionRow) -> RowChange {
    RowChange {
        lsn: Lsn(lsn),
        ts: t0(),
        id: r.interaction_id,
        row: Some(Ok(r)),
    }
}

fn delete(lsn: u64, id: Uuid) -> RowChange {
    RowChange {
        lsn: Lsn(lsn),
        ts: t0(),
        id,
        row: None,
    }
}

fn done(p: Planned) -> Plan {
    match p {
        Planned::Done(p) => p,
        Planned::NeedDescriptions(ids) => panic!("unexpected description reads: {ids:?}"),
    }
}

fn run(changes: &[RowChange], known: &Known) -> Plan {
    done(plan(
        changes,
        known,
        chrono::Duration::days(30),
        chrono_tz::UTC,
    ))
}

fn actions(p: &Plan) -> Vec<(Action, Outcome)> {
    p.counts().collect()
}

#[test]
fn the_same_interaction_several_times_is_written_once_in_its_last_state_with_a_log_row_per_action()
{
    let id = Uuid::new_v4();
    let mut archived = row(id, "c");
    archived.archived = true;
    let p = run(
        &[
            upsert(1, row(id, "a")),
            upsert(2, row(id, "b")),
            upsert(3, archived),
        ],
        &Known::default(),
    );
    assert_eq!(
        actions(&p),
        vec![
            (Action::Create, Outcome::Success),
            (Action::Update, Outcome::Success),
            (Action::Cancel, Outcome::Success)
        ]
    );
    assert_eq!(p.inserts.len(), 1);
    assert!(p.updates.is_empty() && p.deletes.is_empty());
    let e = p.inserted().next().expect("one insert").1;
    assert_eq!(e.fields.title, "c");
    assert_eq!(e.source_lsn, Some(Lsn(3)));
    // Every log row names the one event.
    assert!(p.log.iter().all(|l| l.event_id == Some(e.event_id)));
}

#[test]
fn a_create_then_delete_writes_no_event_but_logs_both() {
    let id = Uuid::new_v4();
    let p = run(&[upsert(1, row(id, "a")), delete(2, id)], &Known::default());
    assert_eq!(
        actions(&p),
        vec![
            (Action::Create, Outcome::Success),
            (Action::Delete, Outcome::Success)
        ]
    );
    assert!(p.inserts.is_empty() && p.updates.is_empty() && p.deletes.is_empty());
}

#[test]
fn an_existing_event_deleted_and_created_again_is_deleted_then_inserted() {
    let id = Uuid::new_v4();
    let mut known = Known::default();
    let first = run(&[upsert(1, row(id, "a"))], &known);
    known.absorb(first);
    let old = known.events[&id].event_id;
    let p = run(&[delete(2, id), upsert(3, row(id, "b"))], &known);
    assert_eq!(p.deletes, vec![old]);
    assert_eq!(p.inserts.len(), 1);
    assert_ne!(p.inserted().next().expect("insert").1.event_id, old);
}

#[test]
fn a_bad_row_fails_alone_and_keeps_the_last_good_event() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut bad = row(a, "bad");
    bad.duration_minutes = Some(-5);
    let p = run(
        &[
            upsert(1, row(a, "good")),
            upsert(2, bad),
            upsert(3, row(b, "other")),
        ],
        &Known::default(),
    );
    assert_eq!(
        actions(&p),
        vec![
            (Action::Create, Outcome::Success),
            (Action::Update, Outcome::Failed),
            (Action::Create, Outcome::Success)
        ]
    );
    assert_eq!(p.failures.len(), 1);
    assert_eq!(p.failures[0].interaction_id, a);
    let a_event = p.inserted().find(|(id, _)| *id == a).expect("a created");
    assert_eq!(a_event.1.fields.title, "good");
}

#[test]
fn an_unchanged_toast_after_a_failure_reads_the_live_description() {
    let id = Uuid::new_v4();
    let mut known = Known::default();
    known.absorb(run(&[upsert(1, row(id, "a"))], &known));
    known.failing.insert(id);
    let mut fix = row(id, "a");
    fix.description = Toast::Unchanged;
    match plan(
        &[upsert(2, fix.clone())],
        &known,
        chrono::Duration::days(30),
        chrono_tz::UTC,
    ) {
        Planned::NeedDescriptions(ids) => assert_eq!(ids, vec![id]),
        Planned::Done(_) => panic!("a stale event's description must be read"),
    }
    known.descriptions.insert(id, Some("live".into()));
    let p = run(&[upsert(2, fix)], &known);
    assert_eq!(p.updates.len(), 1);
    assert_eq!(
        p.updated()
            .next()
            .expect("update")
            .fields
            .description
            .as_deref(),
        Some("live")
    );
    assert_eq!(p.resolved, vec![id]);
}

#[test]
fn an_unchanged_toast_of_a_fresh_event_keeps_the_stored_description() {
    let id = Uuid::new_v4();
    let mut known = Known::default();
    known.absorb(run(&[upsert(1, row(id, "a"))], &known));
    let mut next = row(id, "b");
    next.description = Toast::Unchanged;
    let p = run(&[upsert(2, next)], &known);
    assert_eq!(
        p.updated()
            .next()
            .expect("update")
            .fields
            .description
            .as_deref(),
        Some("d")
    );
}

#[test]
fn an_update_older_than_the_event_is_refused_by_the_guard() {
    let id = Uuid::new_v4();
    let mut known = Known::default();
    known.absorb(run(&[upsert(10, row(id, "new"))], &known));
    let p = run(&[upsert(5, row(id, "old"))], &known);
    assert_eq!(p.refused, 1);
    assert!(p.updates.is_empty() && p.log.is_empty());
}

#[test]
fn participants_come_from_the_known_names() {
    let id = Uuid::new_v4();
    let (cu, co) = (Uuid::new_v4(), Uuid::new_v4());
    let mut r = row(id, "a");
    r.customer_id = Some(cu);
    r.contact_id = Some(co);
    let mut known = Known::default();
    known
        .names
        .insert((Party::Customer, cu), Some("Acme".into()));
    known.names.insert((Party::Contact, co), None);
    let p = run(&[upsert(1, r)], &known);
    assert_eq!(
        p.inserted().next().expect("insert").1.fields.participants,
        vec!["Acme".to_string()]
    );
}
