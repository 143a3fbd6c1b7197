//! The pgoutput (protocol version 1) decoder.
//!
//! [`parse`] takes one complete message, as carried in an `XLogData` payload,
//! and returns a [`Message`] or a [`DecodeError`]. It is a single forward pass
//! over the buffer with a cursor ([`Reader`]); every read is bounds-checked and
//! every failure says which message, which byte offset and which field, so a
//! malformed frame in production can be located in a hex dump without a
//! debugger. Offsets count from the start of the message, tag byte included.
//!
//! Rules the code keeps, because the input comes from the network:
//! - no indexing, `unwrap` or unchecked arithmetic: a length read from the
//!   wire (an `Int32`, possibly negative or larger than the frame) is checked
//!   before use, and it never sizes an allocation beyond what the remaining
//!   bytes could fill;
//! - a message must use up its frame exactly: leftover bytes mean we and the
//!   server disagree on the layout, which is reported rather than ignored;
//! - column values are not copied: they are `Bytes` slices of the frame.

use bytes::Bytes;

use super::message::*;

/// Tag of a Begin message.
pub(crate) const TAG_BEGIN: u8 = b'B';
/// Tag of a Commit message.
pub(crate) const TAG_COMMIT: u8 = b'C';
/// Tag of an Origin message.
pub(crate) const TAG_ORIGIN: u8 = b'O';
/// Tag of a Relation message.
pub(crate) const TAG_RELATION: u8 = b'R';
/// Tag of a Type message.
pub(crate) const TAG_TYPE: u8 = b'Y';
/// Tag of an Insert message.
pub(crate) const TAG_INSERT: u8 = b'I';
/// Tag of an Update message.
pub(crate) const TAG_UPDATE: u8 = b'U';
/// Tag of a Delete message.
pub(crate) const TAG_DELETE: u8 = b'D';
/// Tag of a Truncate message.
pub(crate) const TAG_TRUNCATE: u8 = b'T';
/// Tag of a logical decoding Message.
pub(crate) const TAG_MESSAGE: u8 = b'M';

/// Marker before the new tuple of an Insert or Update.
pub(crate) const TUPLE_NEW: u8 = b'N';
/// Marker before an old tuple holding only the replica identity columns.
pub(crate) const TUPLE_OLD_KEY: u8 = b'K';
/// Marker before an old tuple holding the whole row.
pub(crate) const TUPLE_OLD_FULL: u8 = b'O';

/// TupleData column kind: NULL.
pub(crate) const VALUE_NULL: u8 = b'n';
/// TupleData column kind: unchanged TOASTed value.
pub(crate) const VALUE_UNCHANGED_TOAST: u8 = b'u';
/// TupleData column kind: text-format value.
pub(crate) const VALUE_TEXT: u8 = b't';
/// TupleData column kind: binary-format value.
pub(crate) const VALUE_BINARY: u8 = b'b';

/// Why a buffer is not a valid pgoutput message.
///
/// `tag` is the message's tag byte as a character, `offset` the byte offset
/// (from the tag) where the problem starts, and `field` names what was being
/// read there, so each error reads as a sentence a person can act on.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer has no bytes at all, so not even a tag.
    #[error("empty pgoutput message: expected at least a tag byte")]
    Empty,
    /// The first byte is not a pgoutput protocol-1 message tag.
    #[error("unknown pgoutput message tag {}", ShowByte(*.tag))]
    UnknownTag { tag: u8 },
    /// The buffer ends before a field does.
    #[error(
        "pgoutput {} message truncated at byte {offset}: expected {needed} bytes for the {field}, {remaining} remain",
        name(*.tag)
    )]
    Truncated {
        tag: char,
        offset: usize,
        needed: usize,
        remaining: usize,
        field: &'static str,
    },
    /// Bytes are left after the last field of the message.
    #[error(
        "pgoutput {} message has {remaining} trailing bytes at byte {offset}, after its last field",
        name(*.tag)
    )]
    TrailingBytes {
        tag: char,
        offset: usize,
        remaining: usize,
    },
    /// A String field has no terminating NUL before the end of the buffer.
    #[error(
        "pgoutput {} message: the {field} starting at byte {offset} has no terminating NUL",
        name(*.tag)
    )]
    UnterminatedString {
        tag: char,
        offset: usize,
        field: &'static str,
    },
    /// A String field is not valid UTF-8.
    #[error(
        "pgoutput {} message: the {field} starting at byte {offset} is not valid UTF-8",
        name(*.tag)
    )]
    InvalidUtf8 {
        tag: char,
        offset: usize,
        field: &'static str,
    },
    /// A TupleData column kind other than 'n', 'u', 't' or 'b'.
    #[error(
        "pgoutput {} message: unknown tuple value kind {} at byte {offset}; expected 'n', 'u', 't' or 'b'",
        name(*.tag), ShowByte(*.kind)
    )]
    UnknownTupleKind { tag: char, offset: usize, kind: u8 },
    /// A Relation's replica identity byte is not 'd', 'n', 'f' or 'i'.
    #[error(
        "pgoutput {} message: unknown replica identity {} at byte {offset}; expected 'd', 'n', 'f' or 'i'",
        name(*.tag), ShowByte(*.value)
    )]
    UnknownReplicaIdentity { tag: char, offset: usize, value: u8 },
    /// The old-tuple marker of an Update or Delete is not 'K' or 'O' (nor,
    /// for an Update, the 'N' that starts the new tuple directly).
    #[error(
        "pgoutput {} message: unknown old-tuple kind {} at byte {offset}; expected 'K' or 'O'",
        name(*.tag), ShowByte(*.kind)
    )]
    UnknownOldTupleKind { tag: char, offset: usize, kind: u8 },
    /// The byte where the new tuple must start is not 'N'.
    #[error(
        "pgoutput {} message: expected the new-tuple marker 'N' at byte {offset}, found {}",
        name(*.tag), ShowByte(*.found)
    )]
    MissingNewTuple { tag: char, offset: usize, found: u8 },
    /// A length or count field is negative.
    #[error(
        "pgoutput {} message: the {field} at byte {offset} is negative ({length})",
        name(*.tag)
    )]
    NegativeLength {
        tag: char,
        offset: usize,
        field: &'static str,
        length: i32,
    },
}

/// Human name of a message tag, for error messages.
fn name(tag: char) -> &'static str {
    match u8::try_from(tag).unwrap_or(0) {
        TAG_BEGIN => "Begin",
        TAG_COMMIT => "Commit",
        TAG_ORIGIN => "Origin",
        TAG_RELATION => "Relation",
        TAG_TYPE => "Type",
        TAG_INSERT => "Insert",
        TAG_UPDATE => "Update",
        TAG_DELETE => "Delete",
        TAG_TRUNCATE => "Truncate",
        TAG_MESSAGE => "Message",
        _ => "unknown",
    }
}

/// Shows a byte as `'x' (0x78)`, or just `0x00` when it is not printable.
struct ShowByte(u8);

impl std::fmt::Display for ShowByte {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' (0x{:02x})", char::from(self.0), self.0)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// Decodes one pgoutput protocol-1 message.
///
/// `data` is the whole message, tag byte first, exactly as carried in an
/// `XLogData` payload. Column values and Message content in the result are
/// slices of `data` (no copy); names are copied into `String`s since they are
/// few and short. Never panics, whatever the input.
pub fn parse(data: &Bytes) -> Result<Message, DecodeError> {
    let tag = *data.first().ok_or(DecodeError::Empty)?;
    let mut r = Reader {
        buf: data,
        pos: 1,
        tag: char::from(tag),
    };
    let message = match tag {
        TAG_BEGIN => Message::Begin(Begin {
            final_lsn: r.u64("final LSN")?,
            commit_time: r.i64("commit timestamp")?,
            xid: r.u32("transaction id")?,
        }),
        TAG_COMMIT => Message::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_time: r.i64("commit timestamp")?,
        }),
        TAG_ORIGIN => Message::Origin(Origin {
            commit_lsn: r.u64("commit LSN")?,
            name: r.string("origin name")?,
        }),
        TAG_RELATION => Message::Relation(r.relation()?),
        TAG_TYPE => Message::Type(TypeMessage {
            id: r.u32("type OID")?,
            namespace: r.string("namespace")?,
            name: r.string("type name")?,
        }),
        TAG_INSERT => {
            let relation_id = r.u32("relation id")?;
            r.new_marker()?;
            Message::Insert(Insert {
                relation_id,
                new: r.tuple()?,
            })
        }
        TAG_UPDATE => Message::Update(r.update()?),
        TAG_DELETE => {
            let relation_id = r.u32("relation id")?;
            let offset = r.pos;
            let old = match r.u8("old-tuple marker")? {
                TUPLE_OLD_KEY => OldTuple::Key(r.tuple()?),
                TUPLE_OLD_FULL => OldTuple::Full(r.tuple()?),
                kind => return Err(r.err_old_kind(offset, kind)),
            };
            Message::Delete(Delete { relation_id, old })
        }
        TAG_TRUNCATE => Message::Truncate(r.truncate()?),
        TAG_MESSAGE => Message::LogicalMessage(LogicalMessage {
            transactional: r.u8("flags")? & 1 != 0,
            lsn: r.u64("message LSN")?,
            prefix: r.string("prefix")?,
            content: {
                let len = r.length("content length")?;
                r.bytes(len, "content")?
            },
        }),
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    r.finish()?;
    Ok(message)
}

/// A cursor over one message. `pos` is the offset of the next unread byte;
/// it only moves forward, and only past bytes that exist.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    tag: char,
}

impl Reader<'_> {
    /// The unread bytes.
    fn rest(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// Consumes exactly `N` bytes.
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        match self.rest().split_first_chunk::<N>() {
            Some((head, _)) => {
                let head = *head;
                self.pos += N;
                Ok(head)
            }
            None => Err(self.err_truncated(N, field)),
        }
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads an `Int32` length or count and rejects negative values.
    fn length(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let n = self.i32(field)?;
        self.non_negative(offset, n, field)
    }

    /// Reads an `Int16` count and rejects negative values.
    fn count16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let n = self.i16(field)?;
        self.non_negative(offset, i32::from(n), field)
    }

    fn non_negative(
        &self,
        offset: usize,
        n: i32,
        field: &'static str,
    ) -> Result<usize, DecodeError> {
        // A non-negative i32 always fits a u32, and a u32 fits the usize of
        // every target PostgreSQL clients run on.
        match u32::try_from(n) {
            Ok(n) => Ok(n as usize),
            Err(_) => Err(DecodeError::NegativeLength {
                tag: self.tag,
                offset,
                field,
                length: n,
            }),
        }
    }

    /// Consumes `len` bytes as a zero-copy slice of the frame.
    fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if len > self.rest().len() {
            return Err(self.err_truncated(len, field));
        }
        let start = self.pos;
        self.pos += len;
        Ok(self.buf.slice(start..self.pos))
    }

    /// Consumes a NUL-terminated UTF-8 String, terminator included.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = self.rest();
        let (text, _) = rest
            .iter()
            .position(|&b| b == 0)
            .and_then(|nul| rest.split_at_checked(nul))
            .ok_or(DecodeError::UnterminatedString {
                tag: self.tag,
                offset,
                field,
            })?;
        let text = std::str::from_utf8(text).map_err(|_| DecodeError::InvalidUtf8 {
            tag: self.tag,
            offset,
            field,
        })?;
        let text = text.to_owned();
        self.pos += text.len() + 1;
        Ok(text)
    }

    /// Relation body: id, names, replica identity, columns.
    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("relation id")?;
        let namespace = self.string("namespace")?;
        let name = self.string("relation name")?;
        let offset = self.pos;
        let value = self.u8("replica identity")?;
        let replica_identity =
            ReplicaIdentity::from_byte(value).ok_or(DecodeError::UnknownReplicaIdentity {
                tag: self.tag,
                offset,
                value,
            })?;
        let ncols = self.count16("column count")?;
        // Each column takes at least 10 bytes; never reserve more than the
        // rest of the frame could hold.
        let mut columns = Vec::with_capacity(ncols.min(self.rest().len() / 10));
        for _ in 0..ncols {
            columns.push(Column {
                is_key: self.u8("column flags")? & 1 != 0,
                name: self.string("column name")?,
                type_oid: self.u32("column type OID")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    /// Update body: relation id, optional old tuple, new tuple.
    fn update(&mut self) -> Result<Update, DecodeError> {
        let relation_id = self.u32("relation id")?;
        let offset = self.pos;
        let old = match self.u8("tuple marker")? {
            TUPLE_NEW => None,
            TUPLE_OLD_KEY => Some(OldTuple::Key(self.tuple()?)),
            TUPLE_OLD_FULL => Some(OldTuple::Full(self.tuple()?)),
            kind => return Err(self.err_old_kind(offset, kind)),
        };
        if old.is_some() {
            self.new_marker()?;
        }
        Ok(Update {
            relation_id,
            old,
            new: self.tuple()?,
        })
    }

    /// Truncate body: count, options, relation ids.
    fn truncate(&mut self) -> Result<Truncate, DecodeError> {
        let count = self.length("relation count")?;
        let options = self.u8("options")?;
        let mut relation_ids = Vec::with_capacity(count.min(self.rest().len() / 4));
        for _ in 0..count {
            relation_ids.push(self.u32("relation id")?);
        }
        Ok(Truncate {
            options,
            relation_ids,
        })
    }

    /// Consumes the 'N' that starts a new tuple.
    fn new_marker(&mut self) -> Result<(), DecodeError> {
        let offset = self.pos;
        match self.u8("new-tuple marker")? {
            TUPLE_NEW => Ok(()),
            found => Err(DecodeError::MissingNewTuple {
                tag: self.tag,
                offset,
                found,
            }),
        }
    }

    /// TupleData: Int16 count, then one kind byte (and maybe a value) each.
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let ncols = self.count16("tuple column count")?;
        // Each value takes at least its kind byte.
        let mut values = Vec::with_capacity(ncols.min(self.rest().len()));
        for _ in 0..ncols {
            let offset = self.pos;
            let value = match self.u8("tuple value kind")? {
                VALUE_NULL => TupleValue::Null,
                VALUE_UNCHANGED_TOAST => TupleValue::UnchangedToast,
                VALUE_TEXT => {
                    let len = self.length("text value length")?;
                    TupleValue::Text(self.bytes(len, "text value")?)
                }
                VALUE_BINARY => {
                    let len = self.length("binary value length")?;
                    TupleValue::Binary(self.bytes(len, "binary value")?)
                }
                kind => {
                    return Err(DecodeError::UnknownTupleKind {
                        tag: self.tag,
                        offset,
                        kind,
                    })
                }
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }

    /// Succeeds only if the whole frame was consumed.
    fn finish(&self) -> Result<(), DecodeError> {
        match self.rest().len() {
            0 => Ok(()),
            remaining => Err(DecodeError::TrailingBytes {
                tag: self.tag,
                offset: self.pos,
                remaining,
            }),
        }
    }

    fn err_truncated(&self, needed: usize, field: &'static str) -> DecodeError {
        DecodeError::Truncated {
            tag: self.tag,
            offset: self.pos,
            needed,
            remaining: self.rest().len(),
            field,
        }
    }

    fn err_old_kind(&self, offset: usize, kind: u8) -> DecodeError {
        DecodeError::UnknownOldTupleKind {
            tag: self.tag,
            offset,
            kind,
        }
    }
}
