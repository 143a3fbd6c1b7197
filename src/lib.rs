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
//! [`pgoutput`], [`changes`], [`mapping`] and [`participants`] are PURE (no
//! IO, no clock), as are the decisions of the IO modules (`apply::plan`,
//! `stream::client::StartPlan`, `stream::acks`, `stream::ownership`,
//! `reconcile::compare`, `status::Health::of`).
//!
//! # One owner per concept
//!
//! | concept | owner |
//! |---|---|
//! | pgoutput bytes -> messages | [`pgoutput`] |
//! | tables by identity, messages -> `SourceChange` | [`changes`] |
//! | source transactions framed, our own marked | [`txn`] |
//! | an interaction row, the field mapping, the decision table, `Action`/`Outcome` | [`mapping`] |
//! | who an event shows as participants (`Party`, name columns, the rule and its SQL twin) | [`participants`] |
//! | a batch (one target transaction), its kind's data, what its commit means (`Committed`) | [`apply`] |
//! | a chunk's decision against the events it reads | `apply::plan` |
//! | every statement of the apply path | `apply::sql` |
//! | `calendar_events`' mapped columns: names, types, parameters, drift fields | `apply::columns` |
//! | writes from the source's live state (retries, reconcile) | `apply::live` |
//! | the `calendar_synced_at` stamp | `apply::stamper` |
//! | the echo marker and its proof | [`echo`] |
//! | when a streamed change is visible to a read | [`visibility`] |
//! | what may be acknowledged | `stream::acks` (gates: [`visibility`], `stream::standby`) |
//! | a session's start and stop, reconnects | `stream::session` |
//! | the streaming loop | `stream::runner` |
//! | the slot's facts and the start plan | `stream::client` |
//! | who may use a slot; a start-over | `stream::ownership`; `stream::resync` |
//! | the initial snapshot | `stream::snapshot` |
//! | drift, and events whose interaction is gone (also a start-over's removal pass) | [`reconcile`] |
//! | what an error means (transient, row-permanent, fatal) | [`error`] |
//!
//! Commands: [`migrate`], [`status`], [`reconcile`], [`failures`],
//! [`healthcheck`], [`demo`]; [`pgcluster`]: throw-away local PostgreSQL for
//! the demo and the tests. Shared pieces: [`config`], [`lsn`], [`metrics`],
//! [`http`], [`db`], [`tls`].

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
