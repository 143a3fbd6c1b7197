//! Typed pgoutput messages (protocol version 1).
//!
//! These types mirror the wire layouts in the PostgreSQL documentation,
//! chapter "Logical Replication Message Formats", one struct per message
//! tag. They are deliberately plain data: every field is public, nothing is
//! lazily decoded, and nothing refers back to the relation cache. Turning a
//! [`Tuple`] into typed column values needs the matching [`Relation`], which
//! the consumer keeps; that lookup belongs to the consumer, not the decoder.
//!
//! Column values stay as the server sent them: [`TupleValue::Text`] holds the
//! text output of the column's type (pgoutput sends text unless the
//! subscription asked for `binary`), as a zero-copy slice of the frame it
//! came from. Interpreting it is the consumer's job.

use bytes::Bytes;

/// The OID PostgreSQL assigns to a table; pgoutput uses it to tie row
/// messages to the [`Relation`] message that described the table.
pub type RelationId = u32;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 'B': start of a transaction.
    Begin(Begin),
    /// 'C': end of a transaction.
    Commit(Commit),
    /// 'O': the transaction came from another replication origin.
    Origin(Origin),
    /// 'R': describes a table; sent before the first row of that table in a
    /// session and again whenever its definition changes.
    Relation(Relation),
    /// 'Y': describes a non-built-in type used by a following Relation.
    Type(TypeMessage),
    /// 'I': a row was inserted.
    Insert(Insert),
    /// 'U': a row was updated.
    Update(Update),
    /// 'D': a row was deleted.
    Delete(Delete),
    /// 'T': one or more tables were truncated.
    Truncate(Truncate),
    /// 'M': a message written with `pg_logical_emit_message`.
    LogicalMessage(LogicalMessage),
}

/// 'B': `BEGIN` of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: u64,
    /// Commit time in microseconds since 2000-01-01 00:00:00 UTC (the
    /// PostgreSQL epoch, not the Unix one).
    pub commit_time: i64,
    /// Transaction id.
    pub xid: u32,
}

/// 'C': `COMMIT` of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Currently always 0; kept so a future flag is not silently dropped.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// LSN just past the commit record: the position to acknowledge once
    /// the transaction has been applied.
    pub end_lsn: u64,
    /// Commit time in microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
}

/// 'O': replication origin of the current transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// LSN of the commit on the origin server.
    pub commit_lsn: u64,
    /// Name of the origin.
    pub name: String,
}

/// 'R': the shape of a table, as of the rows that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Table OID; row messages refer to it.
    pub id: RelationId,
    /// Schema name; pgoutput sends `pg_catalog` as the empty string.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Which columns an Update or Delete's old tuple carries.
    pub replica_identity: ReplicaIdentity,
    /// Columns in table order; tuples carry one value per column, in this
    /// order.
    pub columns: Vec<Column>,
}

/// `pg_class.relreplident`: what the old tuple of an Update or Delete holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// 'd': the primary key columns.
    Default,
    /// 'n': nothing; Updates and Deletes carry no old tuple at all.
    Nothing,
    /// 'f': the whole old row.
    Full,
    /// 'i': the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The byte `pg_class.relreplident` and the wire use for this setting.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    /// The setting for a wire byte, or `None` for a byte PostgreSQL does
    /// not define.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Whether the column is part of the replica identity (flag bit 1).
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// OID of the column's type.
    pub type_oid: u32,
    /// `atttypmod`: e.g. the length of a `varchar(n)`; -1 when none.
    pub type_modifier: i32,
}

/// 'Y': a type that is not built in, sent before a Relation that uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    /// Type OID.
    pub id: u32,
    /// Schema name; `pg_catalog` is sent as the empty string.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// A row image: one value per column of the relation, in column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<TupleValue>);

impl Tuple {
    /// The column values, in column order.
    pub fn values(&self) -> &[TupleValue] {
        &self.0
    }

    /// Number of column values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the tuple has no columns (possible for a zero-column table).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One column value inside a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// 'n': SQL NULL.
    Null,
    /// 'u': a TOASTed value that the Update did not change, so the server
    /// did not send it; the consumer must keep the value it already has.
    UnchangedToast,
    /// 't': the type's text output; a zero-copy slice of the frame.
    Text(Bytes),
    /// 'b': the type's binary (send) output; a zero-copy slice of the frame.
    Binary(Bytes),
}

impl TupleValue {
    /// The value as UTF-8 text: `None` unless this is [`TupleValue::Text`].
    ///
    /// The decoder does not validate text values up front (most are never
    /// looked at as strings), so the check happens here.
    pub fn as_text(&self) -> Option<Result<&str, std::str::Utf8Error>> {
        match self {
            TupleValue::Text(bytes) => Some(std::str::from_utf8(bytes)),
            _ => None,
        }
    }

    /// The raw bytes of a [`TupleValue::Text`] or [`TupleValue::Binary`].
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            TupleValue::Text(bytes) | TupleValue::Binary(bytes) => Some(bytes),
            TupleValue::Null | TupleValue::UnchangedToast => None,
        }
    }
}

/// The old-row image of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': only the replica identity columns; the others are `Null`.
    Key(Tuple),
    /// 'O': the whole old row (`REPLICA IDENTITY FULL`).
    Full(Tuple),
}

impl OldTuple {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

/// 'I': a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The table, as announced by an earlier [`Relation`].
    pub relation_id: RelationId,
    /// The inserted row.
    pub new: Tuple,
}

/// 'U': a changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The table, as announced by an earlier [`Relation`].
    pub relation_id: RelationId,
    /// Sent only when the replica identity changed ('K') or the table is
    /// `REPLICA IDENTITY FULL` ('O'); `None` means the key is unchanged and
    /// can be read from `new`.
    pub old: Option<OldTuple>,
    /// The row after the update; unchanged TOASTed columns are
    /// [`TupleValue::UnchangedToast`].
    pub new: Tuple,
}

/// 'D': a removed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The table, as announced by an earlier [`Relation`].
    pub relation_id: RelationId,
    /// The key ('K') or, for `REPLICA IDENTITY FULL`, the whole row ('O').
    pub old: OldTuple,
}

/// 'T': `TRUNCATE` of one or more tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Bit set of [`Truncate::CASCADE`] and [`Truncate::RESTART_IDENTITY`].
    pub options: u8,
    /// The truncated tables.
    pub relation_ids: Vec<RelationId>,
}

impl Truncate {
    /// Option bit: `TRUNCATE ... CASCADE`.
    pub const CASCADE: u8 = 1;
    /// Option bit: `TRUNCATE ... RESTART IDENTITY`.
    pub const RESTART_IDENTITY: u8 = 2;
}

/// 'M': a message emitted with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Whether it was emitted inside the transaction (flag bit 1) rather
    /// than immediately.
    pub transactional: bool,
    /// LSN of the message.
    pub lsn: u64,
    /// Prefix given by the emitter, used to tell applications apart.
    pub prefix: String,
    /// Payload; a zero-copy slice of the frame.
    pub content: Bytes,
}
