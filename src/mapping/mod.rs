//! PURE: from decoded rows to sync decisions. No IO, no clock: the decision
//! time is the source transaction's commit timestamp, passed in, so a replay
//! after an outage decides exactly as the first pass did.
//!
//! - [`interaction`]: the typed `interaction` row, decoded from a pgoutput tuple
//!   (text format) or from a SQL row, and the column map of its Relation.
//! - [`fields`]: the field mapping of contract §3 (times in a zone, participants).
//! - [`rules`]: the decision table of contract §2.

pub mod fields;
pub mod interaction;
pub mod rules;
pub mod value;

pub use fields::{EventFields, EventStatus};
pub use interaction::{InteractionColumns, InteractionRow, Toast};
pub use rules::{decide, Action, Decision, Outcome, Skip};

/// One change the target cannot take, permanent for that row: recorded in
/// `calendar_sync_failures`, the stream goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("interaction.{column}: expected {expected}, got {found:?}")]
    InvalidValue {
        column: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("interaction.{column} is NULL but calendar_events needs a value")]
    Null { column: &'static str },
    #[error(
        "interaction.{column} arrived as an unchanged TOAST value, which only description may be"
    )]
    UnexpectedToast { column: &'static str },
    #[error("interaction.duration_minutes is {0}: a duration cannot be negative (fix the interaction; it is retried from its current state)")]
    NegativeDuration(i32),
    #[error("interaction_date + duration_minutes is outside the supported date range")]
    EndOutOfRange,
    #[error("description arrived unchanged (TOAST) for an event that does not exist yet; the caller must load it from the source first")]
    UnresolvedToast,
}

/// The published schema of a table cannot be mapped: the stream stops with a
/// clear error (a DBA dropped or retyped a mapped column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("{table}.{column} is not in the replication stream: calendar-sync maps it, so it must exist and be in the publication's column list (re-run `calendar-sync migrate` after restoring it)")]
    MissingColumn { table: String, column: String },
    #[error("{table}.{column} has type oid {found}, expected {expected}: calendar-sync cannot map a retyped column")]
    WrongType {
        table: String,
        column: String,
        expected: &'static str,
        found: u32,
    },
}
