//! The command line. Every flag has an environment variable.

use clap::{Parser, Subcommand};

use crate::config::{DbArgs, SyncArgs};

#[derive(Debug, Parser)]
#[command(
    name = "calendar-sync",
    version,
    about = "Keeps calendar_events in step with the CRM's interaction table by reading PostgreSQL's WAL (logical replication, pgoutput)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
    },
    /// Slot, lag, progress and pending failures.
    Status {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}
