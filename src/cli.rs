//! The command line. Every flag has an environment variable.

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{DbArgs, SyncArgs};

#[derive(Debug, Parser)]
#[command(
    name = "calendar-sync",
    version,
    about = "Keeps calendar_events in step with the CRM's interaction table by reading PostgreSQL's WAL (logical replication, pgoutput)."
)]
pub struct Cli {
    /// Log lines as text, or as one JSON object per line (for CloudWatch
    /// Logs Insights and the like). Levels: RUST_LOG (default info).
    #[arg(
        long,
        global = true,
        env = "CALENDAR_SYNC_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        help_heading = "Logging"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// `CALENDAR_SYNC_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable; colours only when stderr is a terminal.
    Text,
    /// One JSON object per line: timestamp, level, target, fields.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a throw-away PostgreSQL, load a small CRM, run the sync and show the calendar changing.
    Demo,
    /// Apply migrations (idempotent) and create the publication.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Create the slot on first start (with a consistent snapshot), then stream until SIGTERM.
    Run {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        sync: SyncArgs,
        /// The way back from a dropped or invalidated slot (explicit, never
        /// automatic; no environment variable on purpose, so that it cannot
        /// stay set in a task definition): forgets the progress row, drops the
        /// lost slot, takes a new snapshot, then deletes the events of
        /// interactions that no longer exist.
        #[arg(long)]
        resync: bool,
    },
    /// Compare calendar_events with what the interactions give now (missing,
    /// extra, drifted field by field) and repair it through the stream's
    /// writer. Exit code 0: no drift (or repaired), 1: drift found by
    /// --dry-run (or left after a repair), 2: error.
    Reconcile {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        sync: SyncArgs,
        /// Only report; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON (stable keys) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The failure queue: list, retry, resolve.
    Failures {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        action: FailuresAction,
    },
    /// Slot, WAL, lag, snapshot, publication and failures, with a verdict:
    /// exit code 0 healthy, 1 degraded, 2 broken.
    Status {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON instead of text (field names are stable, see README).
        #[arg(long)]
        json: bool,
        /// Degraded when the lag is over this many seconds.
        #[arg(long, env = "CALENDAR_SYNC_MAX_LAG_SECONDS", default_value_t = 300)]
        max_lag_seconds: u64,
    },
    /// Asks the running process's /healthz (for the ECS container healthCheck;
    /// the image has no curl): exit code 0 on 200, 1 otherwise, with a reason.
    Healthcheck {
        /// The address `run` serves on; 0.0.0.0 / `[::]` mean this host.
        #[arg(long, env = "CALENDAR_SYNC_HTTP_ADDR")]
        http_addr: Option<SocketAddr>,
        /// Give up after this many seconds.
        #[arg(
            long,
            env = "CALENDAR_SYNC_HEALTHCHECK_TIMEOUT_SECS",
            default_value_t = 5
        )]
        timeout_secs: u64,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum FailuresAction {
    /// Open failures, oldest first.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make failures due now: the running service retries them from the
    /// interaction's current state within seconds.
    Retry {
        /// The failure_id to retry.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<uuid::Uuid>,
        /// Every open failure.
        #[arg(long)]
        all: bool,
    },
    /// Mark a failure resolved by hand (no retry).
    Resolve {
        /// The failure_id.
        id: uuid::Uuid,
    },
}
