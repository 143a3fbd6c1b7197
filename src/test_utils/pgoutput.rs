//! Encoders for hand-built pgoutput messages, for tests and benches.
//!
//! Each builder writes exactly the protocol-1 wire layout that
//! [`crate::pgoutput::parse`] reads, so a test can describe a replication
//! stream in Rust and feed the bytes through the real decoder. Bytes that
//! select a variant (replica identity, old-tuple kind) are taken raw so that
//! tests can also build invalid messages.
//!
//! These are test helpers: they panic on input that cannot be encoded at all
//! (a name containing NUL, more than `i16::MAX` columns, a value longer than
//! `i32::MAX` bytes).

use bytes::{BufMut, Bytes, BytesMut};

use crate::pgoutput::{Message, OldTuple, ReplicaIdentity, Tuple, TupleValue};

/// A text-format column value.
pub fn text(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// A binary-format column value.
pub fn binary(b: &[u8]) -> TupleValue {
    TupleValue::Binary(Bytes::copy_from_slice(b))
}

/// 'B': Begin.
pub fn begin(final_lsn: u64, commit_time: i64, xid: u32) -> Bytes {
    let mut buf = BytesMut::with_capacity(21);
    buf.put_u8(b'B');
    buf.put_u64(final_lsn);
    buf.put_i64(commit_time);
    buf.put_u32(xid);
    buf.freeze()
}

/// 'C': Commit.
pub fn commit(flags: u8, commit_lsn: u64, end_lsn: u64, commit_time: i64) -> Bytes {
    let mut buf = BytesMut::with_capacity(26);
    buf.put_u8(b'C');
    buf.put_u8(flags);
    buf.put_u64(commit_lsn);
    buf.put_u64(end_lsn);
    buf.put_i64(commit_time);
    buf.freeze()
}

/// 'O': Origin.
pub fn origin(lsn: u64, name: &str) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(b'O');
    buf.put_u64(lsn);
    put_str(&mut buf, name);
    buf.freeze()
}

/// 'R': Relation. Columns are `(name, type OID, part of key)`, with type
/// modifier -1; `replica_identity` is the raw byte ('d', 'n', 'f', 'i').
pub fn relation(
    id: u32,
    namespace: &str,
    name: &str,
    replica_identity: u8,
    columns: &[(&str, u32, bool)],
) -> Bytes {
    let columns = columns.iter().map(|&(name, oid, key)| (name, oid, key, -1));
    relation_with_modifiers(id, namespace, name, replica_identity, columns)
}

/// 'R': Relation with explicit type modifiers: columns are
/// `(name, type OID, part of key, type modifier)`.
pub fn relation_with_modifiers<'a>(
    id: u32,
    namespace: &str,
    name: &str,
    replica_identity: u8,
    columns: impl ExactSizeIterator<Item = (&'a str, u32, bool, i32)>,
) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(b'R');
    buf.put_u32(id);
    put_str(&mut buf, namespace);
    put_str(&mut buf, name);
    buf.put_u8(replica_identity);
    buf.put_i16(i16::try_from(columns.len()).expect("more than i16::MAX columns"));
    for (name, oid, key, modifier) in columns {
        buf.put_u8(u8::from(key));
        put_str(&mut buf, name);
        buf.put_u32(oid);
        buf.put_i32(modifier);
    }
    buf.freeze()
}

/// 'Y': Type.
pub fn type_message(id: u32, namespace: &str, name: &str) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(b'Y');
    buf.put_u32(id);
    put_str(&mut buf, namespace);
    put_str(&mut buf, name);
    buf.freeze()
}

/// 'I': Insert of a row with these column values.
pub fn insert(relation_id: u32, values: &[TupleValue]) -> Bytes {
    let mut buf = BytesMut::with_capacity(8 + tuple_size(values));
    buf.put_u8(b'I');
    buf.put_u32(relation_id);
    buf.put_u8(b'N');
    put_tuple(&mut buf, values);
    buf.freeze()
}

/// 'U': Update; `old` is `(b'K' or b'O', values)` when an old tuple is sent.
pub fn update(relation_id: u32, old: Option<(u8, &[TupleValue])>, new: &[TupleValue]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(b'U');
    buf.put_u32(relation_id);
    if let Some((kind, values)) = old {
        buf.put_u8(kind);
        put_tuple(&mut buf, values);
    }
    buf.put_u8(b'N');
    put_tuple(&mut buf, new);
    buf.freeze()
}

/// 'D': Delete; `kind` is b'K' (key columns) or b'O' (whole row).
pub fn delete(relation_id: u32, kind: u8, old: &[TupleValue]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(b'D');
    buf.put_u32(relation_id);
    buf.put_u8(kind);
    put_tuple(&mut buf, old);
    buf.freeze()
}

/// 'T': Truncate; `options` is 1 for CASCADE, 2 for RESTART IDENTITY.
pub fn truncate(options: u8, relation_ids: &[u32]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(b'T');
    buf.put_i32(i32::try_from(relation_ids.len()).expect("too many relations"));
    buf.put_u8(options);
    for &id in relation_ids {
        buf.put_u32(id);
    }
    buf.freeze()
}

/// 'M': a logical decoding message.
pub fn logical_message(transactional: bool, lsn: u64, prefix: &str, content: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(b'M');
    buf.put_u8(u8::from(transactional));
    buf.put_u64(lsn);
    put_str(&mut buf, prefix);
    put_len(&mut buf, content.len());
    buf.put_slice(content);
    buf.freeze()
}

/// Encodes any decoded [`Message`] back to its wire form, so that
/// `parse(&encode(&m)) == Ok(m)` for every message the decoder can produce.
pub fn encode(message: &Message) -> Bytes {
    fn old_parts(old: &OldTuple) -> (u8, &[TupleValue]) {
        match old {
            OldTuple::Key(t) => (b'K', t.values()),
            OldTuple::Full(t) => (b'O', t.values()),
        }
    }
    match message {
        Message::Begin(m) => begin(m.final_lsn, m.commit_time, m.xid),
        Message::Commit(m) => commit(m.flags, m.commit_lsn, m.end_lsn, m.commit_time),
        Message::Origin(m) => origin(m.commit_lsn, &m.name),
        Message::Relation(m) => relation_with_modifiers(
            m.id,
            &m.namespace,
            &m.name,
            ReplicaIdentity::as_byte(m.replica_identity),
            m.columns
                .iter()
                .map(|c| (c.name.as_str(), c.type_oid, c.is_key, c.type_modifier)),
        ),
        Message::Type(m) => type_message(m.id, &m.namespace, &m.name),
        Message::Insert(m) => insert(m.relation_id, m.new.values()),
        Message::Update(m) => update(m.relation_id, m.old.as_ref().map(old_parts), m.new.values()),
        Message::Delete(m) => {
            let (kind, values) = old_parts(&m.old);
            delete(m.relation_id, kind, values)
        }
        Message::Truncate(m) => truncate(m.options, &m.relation_ids),
        Message::LogicalMessage(m) => {
            logical_message(m.transactional, m.lsn, &m.prefix, &m.content)
        }
    }
}

/// Wraps values into a [`Tuple`], for building expected messages.
pub fn tuple(values: &[TupleValue]) -> Tuple {
    Tuple(values.to_vec())
}

/// Writes TupleData: Int16 count, then kind byte and value per column.
fn put_tuple(buf: &mut BytesMut, values: &[TupleValue]) {
    buf.put_i16(i16::try_from(values.len()).expect("more than i16::MAX columns"));
    for value in values {
        match value {
            TupleValue::Null => buf.put_u8(b'n'),
            TupleValue::UnchangedToast => buf.put_u8(b'u'),
            TupleValue::Text(b) => {
                buf.put_u8(b't');
                put_len(buf, b.len());
                buf.put_slice(b);
            }
            TupleValue::Binary(b) => {
                buf.put_u8(b'b');
                put_len(buf, b.len());
                buf.put_slice(b);
            }
        }
    }
}

fn tuple_size(values: &[TupleValue]) -> usize {
    2 + values
        .iter()
        .map(|v| 1 + v.as_bytes().map_or(0, |b| 4 + b.len()))
        .sum::<usize>()
}

fn put_len(buf: &mut BytesMut, len: usize) {
    buf.put_i32(i32::try_from(len).expect("value longer than i32::MAX bytes"));
}

fn put_str(buf: &mut BytesMut, s: &str) {
    assert!(
        !s.contains('\0'),
        "pgoutput strings cannot contain NUL: {s:?}"
    );
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}
