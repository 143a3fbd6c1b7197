//! Relation cache and change extraction on hand-built pgoutput messages.

use super::*;
use crate::mapping::interaction::MAPPED_COLUMNS;
use crate::participants::Party;
use crate::test_utils::pgoutput as b;

fn tracked() -> TrackedTables {
    let id = |oid, name: &str| TableId {
        oid,
        schema: "public".into(),
        name: name.into(),
    };
    TrackedTables {
        interaction: id(10, "interaction"),
        customer: id(11, "customer"),
        contact: id(12, "contact"),
    }
}

fn interaction_columns() -> Vec<(&'static str, u32, bool)> {
    let mut cols: Vec<(&str, u32, bool)> = vec![("private_notes", 1043, false)];
    let oid = |n: &str| match n {
        "interaction_id" | "customer_id" | "contact_id" | "created_by" | "updated_by" => 2950,
        "interaction_date" | "created_at" | "updated_at" => 1184,
        "duration_minutes" => 23,
        "archived" => 16,
        _ => 25,
    };
    cols.extend(
        MAPPED_COLUMNS
            .iter()
            .map(|n| (*n, oid(n), *n == "interaction_id")),
    );
    cols
}

fn relation(c: &mut RelationCache, bytes: bytes::Bytes) -> Result<(), StreamError> {
    let Ok(Message::Relation(r)) = crate::pgoutput::parse(&bytes) else {
        panic!("relation")
    };
    c.on_relation(&r)
}

fn cache() -> RelationCache {
    let mut c = RelationCache::new(ParticipantSchema::default(), tracked());
    let cols = interaction_columns();
    for bytes in [
        b::relation(10, "public", "interaction", b'd', &cols),
        b::relation(
            11,
            "public",
            "customer",
            b'd',
            &[("customer_id", 2950, true), ("name", 25, false)],
        ),
        b::relation(
            12,
            "public",
            "contact",
            b'd',
            &[
                ("contact_id", 2950, true),
                ("first_name", 25, false),
                ("last_name", 25, false),
                ("email", 25, false),
            ],
        ),
        b::relation(13, "public", "unrelated", b'd', &[("id", 23, true)]),
    ] {
        relation(&mut c, bytes).expect("mappable");
    }
    c
}

const ID: &str = "7b6f1c1e-0000-4000-8000-000000000001";

fn interaction_values(id: &str) -> Vec<TupleValue> {
    let mut v = vec![b::text("secret")];
    for n in MAPPED_COLUMNS {
        v.push(match n {
            "interaction_id" => b::text(id),
            "interaction_type" => b::text("visit"),
            "subject" => b::text("Review"),
            "interaction_date" | "created_at" | "updated_at" => b::text("2026-11-25 09:00:00+00"),
            "created_by" => b::text("7b6f1c1e-0000-4000-8000-0000000000aa"),
            "archived" => b::text("f"),
            _ => TupleValue::Null,
        });
    }
    v
}

fn changes(bytes: bytes::Bytes) -> Result<Vec<SourceChange>, StreamError> {
    cache().changes(&crate::pgoutput::parse(&bytes)?)
}

#[test]
fn interaction_insert_update_delete_truncate() {
    let id = Uuid::parse_str(ID).expect("uuid");
    let ins = changes(b::insert(10, &interaction_values(ID))).expect("ok");
    assert!(
        matches!(&ins[..], [SourceChange::InteractionUpsert { id: i, row: Ok(_) }] if *i == id)
    );
    let upd = changes(b::update(10, None, &interaction_values(ID))).expect("ok");
    assert_eq!(upd.len(), 1);
    let del = changes(b::delete(10, b'K', &interaction_values(ID))).expect("ok");
    assert_eq!(del, vec![SourceChange::InteractionDelete { id }]);
    let tr = changes(b::truncate(0, &[13, 10])).expect("ok");
    assert_eq!(tr, vec![SourceChange::InteractionTruncate]);
}

#[test]
fn an_update_of_the_key_deletes_the_old_id() {
    let other = "7b6f1c1e-0000-4000-8000-000000000002";
    let got = changes(b::update(
        10,
        Some((b'K', &interaction_values(other))),
        &interaction_values(ID),
    ))
    .expect("ok");
    assert!(matches!(
        &got[..],
        [
            SourceChange::InteractionDelete { .. },
            SourceChange::InteractionUpsert { .. }
        ]
    ));
}

#[test]
fn party_changes_carry_the_new_name() {
    let cid = "7b6f1c1e-0000-4000-8000-0000000000c1";
    let got = changes(b::update(11, None, &[b::text(cid), b::text("Acme GmbH")])).expect("ok");
    assert_eq!(
        got,
        vec![SourceChange::PartyChanged {
            party: Party::Customer,
            id: Uuid::parse_str(cid).expect("uuid"),
            name: Some("Acme GmbH".into()),
            deleted: false,
        }]
    );
    let got = changes(b::update(
        11,
        None,
        &[b::text(cid), TupleValue::UnchangedToast],
    ))
    .expect("ok");
    assert!(
        got.is_empty(),
        "an unchanged TOASTed name is not a change: {got:?}"
    );
    let got = changes(b::delete(11, b'K', &[b::text(cid), TupleValue::Null])).expect("ok");
    assert!(matches!(
        &got[..],
        [SourceChange::PartyChanged {
            name: None,
            deleted: true,
            ..
        }]
    ));
    let got = changes(b::update(
        12,
        None,
        &[
            b::text(cid),
            TupleValue::Null,
            TupleValue::Null,
            b::text("a@b.c"),
        ],
    ))
    .expect("ok");
    assert!(
        matches!(&got[..], [SourceChange::PartyChanged { party: Party::Contact, name: Some(n), .. }] if n == "a@b.c")
    );
}

#[test]
fn unknown_relations_and_bad_keys_are_errors() {
    assert_eq!(
        changes(b::insert(99, &[b::text("x")])),
        Err(StreamError::UnknownRelation(99))
    );
    assert!(matches!(
        changes(b::insert(10, &interaction_values("nope"))),
        Err(StreamError::BadKey { .. })
    ));
    assert_eq!(changes(b::insert(13, &[b::text("1")])), Ok(vec![]));
    assert!(matches!(
        changes(b::insert(10, &[b::text(ID)])),
        Err(StreamError::ColumnCount {
            expected: 15,
            found: 1,
            ..
        })
    ));
}

/// An old key holds only the replica identity columns: one without the id
/// (an identity index that lacks it, issue 13) is `NoKey`, not a bad value.
#[test]
fn an_old_key_without_the_id_is_no_key() {
    // Identity (subject, interaction_date): everything else NULL.
    let keyless: Vec<TupleValue> = interaction_values(ID)
        .into_iter()
        .enumerate()
        .map(|(i, v)| match i {
            3 | 4 => v,
            _ => TupleValue::Null,
        })
        .collect();
    let no_key = Err(StreamError::NoKey {
        table: "interaction".into(),
        column: "interaction_id".into(),
    });
    assert_eq!(changes(b::delete(10, b'K', &keyless)), no_key);
    assert_eq!(
        changes(b::update(
            10,
            Some((b'K', &keyless)),
            &interaction_values(ID)
        )),
        no_key
    );
    assert_eq!(
        changes(b::delete(11, b'K', &[TupleValue::Null, b::text("Acme")])),
        Err(StreamError::NoKey {
            table: "customer".into(),
            column: "customer_id".into(),
        })
    );
    // A NULL id in a new tuple stays a bad key.
    assert!(matches!(
        changes(b::insert(10, &keyless)),
        Err(StreamError::BadKey { .. })
    ));
}

#[test]
fn a_tracked_table_under_another_name_is_still_ours() {
    // A replay after `ALTER TABLE interaction RENAME TO ..` names the table
    // as it was called then; the relation id stays.
    let mut c = cache();
    relation(
        &mut c,
        b::relation(10, "public", "interaction_v2", b'd', &interaction_columns()),
    )
    .expect("a renamed interaction is still interaction");
    let id = Uuid::parse_str(ID).expect("uuid");
    let msg = crate::pgoutput::parse(&b::insert(10, &interaction_values(ID))).expect("parse");
    assert!(matches!(
        &c.changes(&msg).expect("ok")[..],
        [SourceChange::InteractionUpsert { id: i, .. }] if *i == id
    ));
    let msg = crate::pgoutput::parse(&b::truncate(0, &[10])).expect("parse");
    assert_eq!(
        c.changes(&msg).expect("ok"),
        vec![SourceChange::InteractionTruncate]
    );
}

#[test]
fn a_same_named_table_in_another_schema_is_never_ours() {
    let mut c = cache();
    relation(
        &mut c,
        b::relation(20, "staging", "interaction", b'd', &interaction_columns()),
    )
    .expect("not ours, not an error");
    relation(
        &mut c,
        b::relation(
            21,
            "staging",
            "customer",
            b'd',
            &[("customer_id", 2950, true)],
        ),
    )
    .expect("not ours, not an error");
    for bytes in [
        b::insert(20, &interaction_values(ID)),
        b::update(20, None, &interaction_values(ID)),
        b::delete(20, b'K', &interaction_values(ID)),
        b::truncate(0, &[20, 21]),
        b::insert(21, &[b::text(ID)]),
    ] {
        let msg = crate::pgoutput::parse(&bytes).expect("parse");
        assert_eq!(c.changes(&msg), Ok(vec![]), "{msg:?}");
    }
}

#[test]
fn another_table_under_a_tracked_name_is_an_error_naming_both_ids() {
    let mut c = cache();
    assert_eq!(
        relation(
            &mut c,
            b::relation(30, "public", "interaction", b'd', &interaction_columns()),
        ),
        Err(StreamError::Replaced {
            schema: "public".into(),
            name: "interaction".into(),
            tracked: 10,
            found: 30,
        })
    );
    assert!(
        matches!(
            relation(
                &mut c,
                b::relation(31, "public", "contact", b'd', &[("contact_id", 2950, true)]),
            ),
            Err(StreamError::Replaced {
                tracked: 12,
                found: 31,
                ..
            })
        ),
        "customer and contact too"
    );
}
