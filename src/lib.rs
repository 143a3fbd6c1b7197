//! calendar-sync: a logical-replication CDC consumer that keeps
//! `calendar_events` in step with a CRM's `interaction` table.
//!
//! # Layout
//!
//! Data moves one way through typed values:
//!
//! ```text
//! Bytes --pgoutput::parse--> Message --changes::RelationCache--> SourceChange
//!       --apply::Writer: batches; apply::plan (mapping::decide, pure) per chunk;
//!         set-based statements--> calendar_events + log + progress
//! ```
//!
//! - [`pgoutput`], [`changes`], [`mapping`]: PURE (no IO, no clock).
//! - [`apply`]: target writes: several source transactions per target
//!   transaction, each chunk decided in memory and written set-based, the
//!   progress row; savepoints only to isolate a bad row.
//! - [`stream`]: the replication session (slot, snapshot, loop, reconnects).
//! - [`migrate`], [`status`], [`reconcile`], [`healthcheck`], [`demo`]: commands; [`pgcluster`]: throw-away
//!   local PostgreSQL for the demo and the tests.
//! - [`config`], [`error`], [`lsn`], [`metrics`], [`db`]: shared pieces.

pub mod apply;
pub mod changes;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod echo;
pub mod error;
pub mod failures;
pub mod healthcheck;
pub mod http;
pub mod lsn;
pub mod mapping;
pub mod metrics;
pub mod migrate;
pub mod participants;
pub mod pgcluster;
pub mod pgoutput;
pub mod reconcile;
pub mod status;
pub mod stream;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod tls;
pub mod txn;
pub mod visibility;
