//! Property tests of the pgoutput decoder: it never panics on arbitrary
//! input, rejects every truncation of a valid frame, and round-trips
//! whatever the builders encode.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::test_utils::pgoutput as build;

const TAGS: &[u8] = b"BCORYIUDTM";

fn arb_value() -> impl Strategy<Value = TupleValue> {
    prop_oneof![
        Just(TupleValue::Null),
        Just(TupleValue::UnchangedToast),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| TupleValue::Text(v.into())),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| TupleValue::Binary(v.into())),
    ]
}

fn arb_values() -> impl Strategy<Value = Vec<TupleValue>> {
    proptest::collection::vec(arb_value(), 0..20)
}

fn arb_name() -> impl Strategy<Value = String> {
    "[^\\x00]{0,16}"
}

fn arb_old() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        arb_values().prop_map(|v| OldTuple::Key(Tuple(v))),
        arb_values().prop_map(|v| OldTuple::Full(Tuple(v))),
    ]
}

fn arb_relation() -> impl Strategy<Value = Relation> {
    let column = (any::<bool>(), arb_name(), any::<u32>(), any::<i32>()).prop_map(
        |(is_key, name, type_oid, type_modifier)| Column {
            is_key,
            name,
            type_oid,
            type_modifier,
        },
    );
    let identity = prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ];
    (
        any::<u32>(),
        arb_name(),
        arb_name(),
        identity,
        proptest::collection::vec(column, 0..20),
    )
        .prop_map(
            |(id, namespace, name, replica_identity, columns)| Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            },
        )
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            Message::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        }),
        (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(f, c, e, t)| {
            Message::Commit(Commit {
                flags: f,
                commit_lsn: c,
                end_lsn: e,
                commit_time: t,
            })
        }),
        (any::<u64>(), arb_name())
            .prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
        arb_relation().prop_map(Message::Relation),
        (any::<u32>(), arb_name(), arb_name()).prop_map(|(id, namespace, name)| Message::Type(
            TypeMessage {
                id,
                namespace,
                name
            }
        )),
        (any::<u32>(), arb_values()).prop_map(|(relation_id, v)| Message::Insert(Insert {
            relation_id,
            new: Tuple(v),
        })),
        (any::<u32>(), proptest::option::of(arb_old()), arb_values()).prop_map(
            |(relation_id, old, v)| Message::Update(Update {
                relation_id,
                old,
                new: Tuple(v),
            })
        ),
        (any::<u32>(), arb_old())
            .prop_map(|(relation_id, old)| Message::Delete(Delete { relation_id, old })),
        (any::<u8>(), proptest::collection::vec(any::<u32>(), 0..10)).prop_map(
            |(options, relation_ids)| Message::Truncate(Truncate {
                options,
                relation_ids,
            })
        ),
        (
            any::<bool>(),
            any::<u64>(),
            arb_name(),
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(transactional, lsn, prefix, content)| {
                Message::LogicalMessage(LogicalMessage {
                    transactional,
                    lsn,
                    prefix,
                    content: content.into(),
                })
            }),
    ]
}

proptest! {
    /// Arbitrary bytes never panic; whatever parses re-encodes to a frame
    /// that parses to the same message.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(msg) = parse(&Bytes::from(data)) {
            prop_assert_eq!(parse(&build::encode(&msg)), Ok(msg));
        }
    }

    /// Same, but with a valid tag first so the body decoders get exercised.
    #[test]
    fn tagged_arbitrary_bytes_never_panic(
        tag in proptest::sample::select(TAGS),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut data = vec![tag];
        data.extend_from_slice(&body);
        match parse(&Bytes::from(data)) {
            Ok(msg) => prop_assert_eq!(parse(&build::encode(&msg)), Ok(msg)),
            Err(err) => prop_assert!(
                !matches!(err, DecodeError::UnknownTag { .. } | DecodeError::Empty),
                "valid tag rejected as unknown: {:?}",
                err
            ),
        }
    }

    /// Every strict prefix of a valid frame is a truncation error.
    #[test]
    fn every_truncation_is_an_error(msg in arb_message()) {
        let frame = build::encode(&msg);
        prop_assert_eq!(parse(&frame), Ok(msg));
        prop_assert_eq!(parse(&frame.slice(..0)), Err(DecodeError::Empty));
        for cut in 1..frame.len() {
            let err = parse(&frame.slice(..cut));
            prop_assert!(
                matches!(err, Err(DecodeError::Truncated { .. } | DecodeError::UnterminatedString { .. })),
                "cut at {} of {}: {:?}", cut, frame.len(), err
            );
        }
    }

    /// The named builders produce frames that decode to what they were given.
    #[test]
    fn builders_round_trip(
        relation_id in any::<u32>(),
        old in proptest::option::of(arb_old()),
        new in arb_values(),
        rel in arb_relation(),
    ) {
        prop_assert_eq!(
            parse(&build::insert(relation_id, &new)),
            Ok(Message::Insert(Insert { relation_id, new: Tuple(new.clone()) }))
        );
        let old_parts = old.as_ref().map(|o| match o {
            OldTuple::Key(t) => (b'K', t.values()),
            OldTuple::Full(t) => (b'O', t.values()),
        });
        prop_assert_eq!(
            parse(&build::update(relation_id, old_parts, &new)),
            Ok(Message::Update(Update { relation_id, old: old.clone(), new: Tuple(new.clone()) }))
        );
        let columns: Vec<_> = rel.columns.iter().map(|c| (c.name.as_str(), c.type_oid, c.is_key)).collect();
        let frame = build::relation(rel.id, &rel.namespace, &rel.name, rel.replica_identity.as_byte(), &columns);
        let expected = Relation {
            columns: rel.columns.iter().map(|c| Column { type_modifier: -1, ..c.clone() }).collect(),
            ..rel.clone()
        };
        prop_assert_eq!(parse(&frame), Ok(Message::Relation(expected)));
    }
}
