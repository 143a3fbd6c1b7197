//! Decoder for PostgreSQL's `pgoutput` logical replication messages,
//! protocol version 1.
//!
//! The transport, pgwire-replication, hands us Begin, Commit and Message as
//! typed events but everything else (Relation, Insert, Update, Delete,
//! Truncate, Origin, Type) as the raw `XLogData` payload. This module turns
//! such a payload into a [`Message`].
//!
//! # Why an in-house decoder
//!
//! The format is small and stable (see "Logical Replication Message Formats"
//! in the PostgreSQL docs), and the decoder is a few hundred lines of
//! straight-line code over [`bytes::Bytes`]. Writing it ourselves buys:
//!
//! - errors that name the message, the byte offset and what was expected
//!   there ("pgoutput Insert message truncated at byte 7: expected 4 bytes
//!   for the column count, 2 remain"), instead of a generic parse failure;
//! - zero-copy column values: [`TupleValue::Text`] is a slice of the frame;
//! - a pure function (no IO, no async, no clock) that is easy to fuzz and
//!   property-test, and that never panics on hostile input;
//! - no extra dependency. The alternative was pg_walstream's parser, which
//!   would have brought its own transport types along with it.
//!
//! Begin, Commit and Message are decoded too, although the transport already
//! types them, so that the decoder covers the whole protocol and any frame
//! can be fed to it.
//!
//! Only protocol version 1 is understood: no streamed transactions (no xid
//! prefix on row messages) and no two-phase commit messages.

mod message;
mod parse;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use message::*;
pub use parse::{parse, DecodeError};
