//! Unit tests of the pgoutput decoder: hand-assembled frames, builder
//! round-trips, and one test per error variant with the exact offset and
//! field it must report.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::test_utils::pgoutput::{self as build, text, tuple};

fn parse_slice(data: &[u8]) -> Result<Message, DecodeError> {
    parse(&Bytes::copy_from_slice(data))
}

// ---- frames written out byte by byte, independent of the builders ----

#[test]
fn golden_insert_bytes() {
    let frame = b"I\x00\x00\x40\x00N\x00\x03t\x00\x00\x00\x0212nu";
    let expected = Message::Insert(Insert {
        relation_id: 16384,
        new: tuple(&[text("12"), TupleValue::Null, TupleValue::UnchangedToast]),
    });
    assert_eq!(parse_slice(frame), Ok(expected));
}

#[test]
fn golden_relation_bytes() {
    let frame = b"R\x00\x00\x40\x00public\x00events\x00d\x00\x02\
        \x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff\
        \x00title\x00\x00\x00\x04\x13\x00\x00\x00\x68";
    let expected = Message::Relation(Relation {
        id: 16384,
        namespace: "public".into(),
        name: "events".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            Column {
                is_key: true,
                name: "id".into(),
                type_oid: 23,
                type_modifier: -1,
            },
            Column {
                is_key: false,
                name: "title".into(),
                type_oid: 1043,
                type_modifier: 104,
            },
        ],
    });
    assert_eq!(parse_slice(frame), Ok(expected));
}

// ---- builder round-trips ----

#[test]
fn begin_commit_origin_type_message_round_trip() {
    assert_eq!(
        parse(&build::begin(0x16B3748, 700_000_000_000_000, 742)),
        Ok(Message::Begin(Begin {
            final_lsn: 0x16B3748,
            commit_time: 700_000_000_000_000,
            xid: 742,
        }))
    );
    assert_eq!(
        parse(&build::commit(0, 10, 20, -5)),
        Ok(Message::Commit(Commit {
            flags: 0,
            commit_lsn: 10,
            end_lsn: 20,
            commit_time: -5,
        }))
    );
    assert_eq!(
        parse(&build::origin(u64::MAX, "node_a")),
        Ok(Message::Origin(Origin {
            commit_lsn: u64::MAX,
            name: "node_a".into(),
        }))
    );
    assert_eq!(
        parse(&build::type_message(90001, "crm", "mood")),
        Ok(Message::Type(TypeMessage {
            id: 90001,
            namespace: "crm".into(),
            name: "mood".into(),
        }))
    );
    assert_eq!(
        parse(&build::logical_message(true, 99, "calendar", b"\x00\x01hi")),
        Ok(Message::LogicalMessage(LogicalMessage {
            transactional: true,
            lsn: 99,
            prefix: "calendar".into(),
            content: Bytes::from_static(b"\x00\x01hi"),
        }))
    );
}

#[test]
fn relation_round_trip() {
    let frame = build::relation(
        7,
        "",
        "interaction",
        b'f',
        &[("id", 2950, true), ("starts_at", 1184, false)],
    );
    let Ok(Message::Relation(rel)) = parse(&frame) else {
        panic!("not a relation: {:?}", parse(&frame));
    };
    assert_eq!(rel.id, 7);
    assert_eq!(rel.namespace, "");
    assert_eq!(rel.name, "interaction");
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    assert_eq!(rel.columns.len(), 2);
    assert_eq!(
        rel.columns[1],
        Column {
            is_key: false,
            name: "starts_at".into(),
            type_oid: 1184,
            type_modifier: -1,
        }
    );
    assert!(rel.columns[0].is_key);
}

#[test]
fn insert_round_trip_is_zero_copy() {
    let values = [text("héllo"), build::binary(&[0, 1, 2]), TupleValue::Null];
    let frame = build::insert(42, &values);
    let msg = parse(&frame).expect("valid test input");
    assert_eq!(
        msg,
        Message::Insert(Insert {
            relation_id: 42,
            new: tuple(&values),
        })
    );
    let Message::Insert(insert) = msg else {
        unreachable!()
    };
    let value = insert.new.values()[0].as_bytes().expect("valid test input");
    let frame_range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
    assert!(frame_range.contains(&(value.as_ptr() as usize)));
    assert_eq!(insert.new.values()[0].as_text(), Some(Ok("héllo")));
    assert_eq!(insert.new.values()[1].as_text(), None);
    assert!(TupleValue::Text(Bytes::from_static(b"\xff"))
        .as_text()
        .expect("valid test input")
        .is_err());
}

#[test]
fn update_with_key_old_tuple() {
    let old = [text("1"), TupleValue::Null];
    let new = [text("2"), text("x")];
    assert_eq!(
        parse(&build::update(5, Some((b'K', &old)), &new)),
        Ok(Message::Update(Update {
            relation_id: 5,
            old: Some(OldTuple::Key(tuple(&old))),
            new: tuple(&new),
        }))
    );
}

#[test]
fn update_with_full_old_tuple() {
    let old = [text("1"), text("a")];
    let new = [text("1"), text("b")];
    let msg = parse(&build::update(5, Some((b'O', &old)), &new)).expect("valid test input");
    let Message::Update(update) = msg else {
        panic!("not an update: {msg:?}")
    };
    assert_eq!(update.old, Some(OldTuple::Full(tuple(&old))));
    assert_eq!(update.old.as_ref().map(|o| o.tuple().len()), Some(2));
    assert_eq!(update.new, tuple(&new));
}

#[test]
fn update_without_old_tuple_and_unchanged_toast() {
    let new = [text("1"), TupleValue::UnchangedToast];
    assert_eq!(
        parse(&build::update(5, None, &new)),
        Ok(Message::Update(Update {
            relation_id: 5,
            old: None,
            new: Tuple(vec![text("1"), TupleValue::UnchangedToast]),
        }))
    );
}

#[test]
fn delete_and_truncate_round_trip() {
    assert_eq!(
        parse(&build::delete(9, b'K', &[text("17")])),
        Ok(Message::Delete(Delete {
            relation_id: 9,
            old: OldTuple::Key(tuple(&[text("17")])),
        }))
    );
    assert_eq!(
        parse(&build::delete(9, b'O', &[])),
        Ok(Message::Delete(Delete {
            relation_id: 9,
            old: OldTuple::Full(Tuple::default()),
        }))
    );
    let flags = Truncate::CASCADE | Truncate::RESTART_IDENTITY;
    assert_eq!(
        parse(&build::truncate(flags, &[1, 2, u32::MAX])),
        Ok(Message::Truncate(Truncate {
            options: 3,
            relation_ids: vec![1, 2, u32::MAX],
        }))
    );
}

// ---- one test per error ----

#[test]
fn empty_and_unknown_tag() {
    assert_eq!(parse(&Bytes::new()), Err(DecodeError::Empty));
    let err = parse_slice(b"Zabc").unwrap_err();
    assert_eq!(err, DecodeError::UnknownTag { tag: b'Z' });
    assert_eq!(err.to_string(), "unknown pgoutput message tag 'Z' (0x5a)");
    assert_eq!(
        parse_slice(b"\x00").unwrap_err().to_string(),
        "unknown pgoutput message tag 0x00"
    );
}

fn truncated(offset: usize, needed: usize, remaining: usize, field: &'static str) -> DecodeError {
    DecodeError::Truncated {
        tag: 'I',
        offset,
        needed,
        remaining,
        field,
    }
}

#[test]
fn insert_truncated_at_each_field() {
    let full = build::insert(1, &[text("abc")]);
    // I | rel id (1..5) | N (5) | ncols (6..8) | 't' (8) | len (9..13) | "abc"
    let cases = [
        (1, truncated(1, 4, 0, "relation id")),
        (3, truncated(1, 4, 2, "relation id")),
        (5, truncated(5, 1, 0, "new-tuple marker")),
        (7, truncated(6, 2, 1, "tuple column count")),
        (8, truncated(8, 1, 0, "tuple value kind")),
        (11, truncated(9, 4, 2, "text value length")),
        (15, truncated(13, 3, 2, "text value")),
    ];
    for (cut, expected) in cases {
        assert_eq!(parse(&full.slice(..cut)), Err(expected), "cut at {cut}");
    }
    assert_eq!(
        parse(&full.slice(..11)).unwrap_err().to_string(),
        "pgoutput Insert message truncated at byte 9: expected 4 bytes \
         for the text value length, 2 remain"
    );
}

#[test]
fn fixed_layout_messages_truncated() {
    let begin = build::begin(1, 2, 3);
    assert_eq!(
        parse(&begin.slice(..20)),
        Err(DecodeError::Truncated {
            tag: 'B',
            offset: 17,
            needed: 4,
            remaining: 3,
            field: "transaction id",
        })
    );
    let commit = build::commit(0, 1, 2, 3);
    assert!(matches!(
        parse(&commit.slice(..9)),
        Err(DecodeError::Truncated {
            tag: 'C',
            offset: 2,
            field: "commit LSN",
            ..
        })
    ));
}

#[test]
fn huge_lengths_and_counts_are_truncation_not_allocation() {
    let mut buf = BytesMut::new();
    buf.put_slice(b"I\x00\x00\x00\x01N\x00\x01t");
    buf.put_i32(i32::MAX);
    buf.put_slice(b"abc");
    assert_eq!(
        parse(&buf.freeze()),
        Err(truncated(13, i32::MAX as usize, 3, "text value"))
    );

    let mut buf = BytesMut::new();
    buf.put_u8(b'T');
    buf.put_i32(i32::MAX);
    buf.put_u8(0);
    buf.put_u32(1);
    assert_eq!(
        parse(&buf.freeze()),
        Err(DecodeError::Truncated {
            tag: 'T',
            offset: 10,
            needed: 4,
            remaining: 0,
            field: "relation id",
        })
    );
}

#[test]
fn negative_lengths() {
    // Text value length -1.
    let frame = b"I\x00\x00\x00\x01N\x00\x01t\xff\xff\xff\xff";
    let err = parse_slice(frame).unwrap_err();
    assert_eq!(
        err,
        DecodeError::NegativeLength {
            tag: 'I',
            offset: 9,
            field: "text value length",
            length: -1,
        }
    );
    assert!(err.to_string().contains("negative (-1)"), "{err}");
    // Tuple column count -2 (Int16).
    assert!(matches!(
        parse_slice(b"D\x00\x00\x00\x01K\xff\xfe"),
        Err(DecodeError::NegativeLength {
            tag: 'D',
            offset: 6,
            length: -2,
            ..
        })
    ));
    // Truncate relation count i32::MIN.
    assert!(matches!(
        parse_slice(b"T\x80\x00\x00\x00\x00"),
        Err(DecodeError::NegativeLength {
            tag: 'T',
            offset: 1,
            length: i32::MIN,
            ..
        })
    ));
    // Message content length -5.
    assert!(matches!(
        parse_slice(b"M\x01\x00\x00\x00\x00\x00\x00\x00\x01p\x00\xff\xff\xff\xfb"),
        Err(DecodeError::NegativeLength {
            tag: 'M',
            offset: 12,
            length: -5,
            ..
        })
    ));
}

#[test]
fn unknown_tuple_kind() {
    let mut frame = build::insert(1, &[TupleValue::Null, TupleValue::Null]).to_vec();
    *frame.last_mut().expect("valid test input") = b'x';
    let err = parse_slice(&frame).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownTupleKind {
            tag: 'I',
            offset: 9,
            kind: b'x',
        }
    );
    assert!(err.to_string().contains("'x' (0x78) at byte 9"), "{err}");
}

#[test]
fn trailing_bytes() {
    let mut frame = build::truncate(0, &[1]).to_vec();
    frame.extend_from_slice(b"zz");
    assert_eq!(
        parse_slice(&frame),
        Err(DecodeError::TrailingBytes {
            tag: 'T',
            offset: 10,
            remaining: 2,
        })
    );
}

#[test]
fn invalid_utf8_in_a_name() {
    let mut frame = build::relation(1, "public", "ev?nts", b'd', &[]).to_vec();
    let at = frame
        .iter()
        .position(|&b| b == b'?')
        .expect("valid test input");
    frame[at] = 0xff;
    assert_eq!(
        parse_slice(&frame),
        Err(DecodeError::InvalidUtf8 {
            tag: 'R',
            offset: 12,
            field: "relation name",
        })
    );
}

#[test]
fn unterminated_string() {
    let frame = build::origin(1, "node");
    let err = parse(&frame.slice(..frame.len() - 1)).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnterminatedString {
            tag: 'O',
            offset: 9,
            field: "origin name",
        }
    );
    assert_eq!(
        err.to_string(),
        "pgoutput Origin message: the origin name starting at byte 9 has no terminating NUL"
    );
}

#[test]
fn unknown_replica_identity() {
    let frame = build::relation(1, "a", "b", b'x', &[]);
    assert_eq!(
        parse(&frame),
        Err(DecodeError::UnknownReplicaIdentity {
            tag: 'R',
            offset: 9,
            value: b'x',
        })
    );
}

#[test]
fn unknown_old_tuple_kind_and_missing_new_tuple() {
    assert_eq!(
        parse(&build::delete(1, b'N', &[])),
        Err(DecodeError::UnknownOldTupleKind {
            tag: 'D',
            offset: 5,
            kind: b'N',
        })
    );
    assert_eq!(
        parse(&build::update(1, Some((b'x', &[])), &[])),
        Err(DecodeError::UnknownOldTupleKind {
            tag: 'U',
            offset: 5,
            kind: b'x',
        })
    );
    // An Update whose old tuple is followed by something other than 'N'.
    let mut frame = build::update(1, Some((b'K', &[])), &[]).to_vec();
    frame[8] = b'K';
    assert_eq!(
        parse_slice(&frame),
        Err(DecodeError::MissingNewTuple {
            tag: 'U',
            offset: 8,
            found: b'K',
        })
    );
    let mut frame = build::insert(1, &[]).to_vec();
    frame[5] = b'O';
    assert!(matches!(
        parse_slice(&frame),
        Err(DecodeError::MissingNewTuple {
            tag: 'I',
            offset: 5,
            found: b'O',
        })
    ));
}
