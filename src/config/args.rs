//! The clap flag groups of the commands: connection and replication
//! ([`DbArgs`]), participant lookup ([`ParticipantArgs`]) and `run`'s sync,
//! batching and timeout flags ([`SyncArgs`]), with their defaults. Every flag
//! has an environment variable. Nothing here is validated: that is
//! [`super::Config::from_args`]'s job.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::{BatchLimits, LibpqArgs, ParticipantSchema};

/// Flags shared by every command that talks to a database. Its Debug shows
/// no connection string (they hold passwords).
#[derive(Clone, clap::Args)]
pub struct DbArgs {
    /// Source database (the CRM): libpq URL
    /// (postgres://user:password@host:port/dbname?sslmode=verify-full&sslrootcert=/path/ca.pem)
    /// or key=value string. When unset, built from the PG* variables below.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        help_heading = "Connection"
    )]
    pub database_url: Option<String>,

    /// Where calendar_events, the log, the failures and the progress live.
    /// Defaults to the source database.
    #[arg(
        long,
        env = "TARGET_DATABASE_URL",
        hide_env_values = true,
        help_heading = "Connection"
    )]
    pub target_database_url: Option<String>,

    #[command(flatten)]
    pub libpq: LibpqArgs,

    /// Logical replication slot (pgoutput). A plain lower-case identifier.
    #[arg(
        long,
        env = "CALENDAR_SYNC_SLOT",
        default_value = "calendar_sync",
        help_heading = "Replication"
    )]
    pub slot: String,

    /// Publication over interaction, customer and contact.
    #[arg(
        long,
        env = "CALENDAR_SYNC_PUBLICATION",
        default_value = "calendar_sync",
        help_heading = "Replication"
    )]
    pub publication: String,

    #[command(flatten)]
    pub participants: ParticipantArgs,
}

impl fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |set: bool| if set { "<redacted>" } else { "<unset>" };
        f.debug_struct("DbArgs")
            .field("database_url", &format_args!("{}", redacted(true)))
            .field(
                "target_database_url",
                &format_args!("{}", redacted(self.target_database_url.is_some())),
            )
            .field("libpq", &self.libpq)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("participants", &self.participants)
            .finish()
    }
}

/// Where participant names come from (contract §3: overridable by configuration).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Participant names")]
pub struct ParticipantArgs {
    /// Table holding customers (the `customer_id` of an interaction).
    #[arg(long, env = "CALENDAR_SYNC_CUSTOMER_TABLE", default_value = "customer")]
    pub customer_table: String,
    /// Its key column.
    #[arg(
        long,
        env = "CALENDAR_SYNC_CUSTOMER_ID_COLUMN",
        default_value = "customer_id"
    )]
    pub customer_id_column: String,
    /// Its column with the customer's display name.
    #[arg(
        long,
        env = "CALENDAR_SYNC_CUSTOMER_NAME_COLUMN",
        default_value = "name"
    )]
    pub customer_name_column: String,
    /// Table holding contacts (the `contact_id` of an interaction).
    #[arg(long, env = "CALENDAR_SYNC_CONTACT_TABLE", default_value = "contact")]
    pub contact_table: String,
    /// Its key column.
    #[arg(
        long,
        env = "CALENDAR_SYNC_CONTACT_ID_COLUMN",
        default_value = "contact_id"
    )]
    pub contact_id_column: String,
    /// Its first-name column.
    #[arg(
        long,
        env = "CALENDAR_SYNC_CONTACT_FIRST_NAME_COLUMN",
        default_value = "first_name"
    )]
    pub contact_first_name_column: String,
    /// Its last-name column.
    #[arg(
        long,
        env = "CALENDAR_SYNC_CONTACT_LAST_NAME_COLUMN",
        default_value = "last_name"
    )]
    pub contact_last_name_column: String,
    /// Its e-mail column.
    #[arg(
        long,
        env = "CALENDAR_SYNC_CONTACT_EMAIL_COLUMN",
        default_value = "email"
    )]
    pub contact_email_column: String,
}

impl Default for ParticipantArgs {
    fn default() -> Self {
        let d = ParticipantSchema::default();
        ParticipantArgs {
            customer_table: d.customer_table,
            customer_id_column: d.customer_id,
            customer_name_column: d.customer_name,
            contact_table: d.contact_table,
            contact_id_column: d.contact_id,
            contact_first_name_column: d.contact_first_name,
            contact_last_name_column: d.contact_last_name,
            contact_email_column: d.contact_email,
        }
    }
}

/// Flags of `run` (and `demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    /// Creation window in days: an event is created only for interactions dated
    /// at or after (source commit time - window).
    #[arg(
        long,
        env = "CALENDAR_SYNC_WINDOW_DAYS",
        help_heading = "Sync",
        default_value_t = 30
    )]
    pub window_days: u32,

    /// IANA time zone for start_time / end_time.
    #[arg(
        long,
        env = "CALENDAR_SYNC_TIMEZONE",
        help_heading = "Sync",
        default_value = "UTC"
    )]
    pub timezone: String,

    /// Serve /metrics, /healthz and /readyz here (e.g. 0.0.0.0:9187).
    #[arg(
        long,
        env = "CALENDAR_SYNC_HTTP_ADDR",
        help_heading = "HTTP and health"
    )]
    pub http_addr: Option<SocketAddr>,

    /// While streaming, /healthz answers 503 when no message (data or
    /// keepalive) came from the server for this many seconds. The server
    /// sends a keepalive at least every wal_sender_timeout / 2 (default 30 s).
    #[arg(
        long,
        env = "CALENDAR_SYNC_LIVENESS_SECS",
        default_value_t = 120,
        help_heading = "HTTP and health"
    )]
    pub liveness_secs: u64,

    /// Write interaction.calendar_synced_at after each successful sync:
    /// `auto` (only where the stamp sets off none of the CRM's triggers),
    /// `true` (always, even where triggers fire on it), `false`.
    #[arg(long, env = "CALENDAR_SYNC_WRITE_SYNCED_AT", help_heading = "Sync", default_value = "auto", value_parser = super::Stamping::parse)]
    pub write_synced_at: super::Stamping,

    /// PostgreSQL 17+: make the slot a failover slot (synchronized to a
    /// standby with sync_replication_slots = on), so that streaming goes on
    /// after a promotion without an operator. An existing slot is altered.
    #[arg(long, env = "CALENDAR_SYNC_SLOT_FAILOVER", help_heading = "Replication", default_value_t = false, action = clap::ArgAction::Set)]
    pub slot_failover: bool,

    /// Seconds between standby status updates sent to the server.
    #[arg(
        long,
        env = "CALENDAR_SYNC_STATUS_INTERVAL_SECS",
        help_heading = "Replication",
        default_value_t = 1
    )]
    pub status_interval_secs: u64,

    /// Changes per chunk written set-based, and per target transaction (a
    /// batch commits at the next source-transaction boundary after it).
    #[arg(
        long,
        env = "CALENDAR_SYNC_BATCH_CHANGES",
        help_heading = "Batching and timeouts",
        default_value_t = 5000
    )]
    pub batch_changes: usize,

    /// Bytes of row data held in memory per chunk before it is written.
    #[arg(long, env = "CALENDAR_SYNC_BATCH_BYTES", help_heading = "Batching and timeouts", default_value_t = 4 << 20)]
    pub batch_bytes: usize,

    /// A batch commits at the next source-transaction boundary after this
    /// many milliseconds (and at once when no more data is waiting).
    #[arg(
        long,
        env = "CALENDAR_SYNC_BATCH_DELAY_MS",
        help_heading = "Batching and timeouts",
        default_value_t = 100
    )]
    pub batch_delay_ms: u64,

    /// How long a statement of ours waits for a row or table lock (held by a
    /// CRM session, say) before it fails as a transient error and is retried
    /// with backoff: PostgreSQL's lock_timeout, e.g. 10s or 500ms.
    #[arg(long, env = "CALENDAR_SYNC_LOCK_TIMEOUT", help_heading = "Batching and timeouts", default_value = "10s", value_parser = parse_duration)]
    pub lock_timeout: Duration,

    /// How long one statement of ours may run before the server cancels it
    /// (a transient error, retried with backoff): PostgreSQL's
    /// statement_timeout, e.g. 60s or 2min.
    #[arg(long, env = "CALENDAR_SYNC_STATEMENT_TIMEOUT", help_heading = "Batching and timeouts", default_value = "60s", value_parser = parse_duration)]
    pub statement_timeout: Duration,
}

impl Default for SyncArgs {
    fn default() -> Self {
        SyncArgs {
            window_days: 30,
            timezone: "UTC".into(),
            http_addr: None,
            liveness_secs: crate::metrics::DEFAULT_LIVENESS.as_secs(),
            write_synced_at: super::Stamping::Auto,
            slot_failover: false,
            status_interval_secs: 1,
            batch_changes: BatchLimits::default().max_changes,
            batch_bytes: BatchLimits::default().max_bytes,
            batch_delay_ms: 100,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
        }
    }
}

/// Default of `CALENDAR_SYNC_LOCK_TIMEOUT`.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `CALENDAR_SYNC_STATEMENT_TIMEOUT`.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A duration as operators write PostgreSQL's: a positive whole number with
/// `ms`, `s` or `min` (`500ms`, `10s`, `2min`). Zero (PostgreSQL's "no limit")
/// is refused: waiting is bounded (contract §7).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let expected =
        || format!("{s:?}: expected a positive whole number with ms, s or min, e.g. 10s");
    let n: u64 = number.parse().map_err(|_| expected())?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(expected()),
    };
    if d.is_zero() {
        return Err(expected());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_args_debug_never_shows_the_connection_strings() {
        let args = DbArgs {
            database_url: Some("postgres://u:hunter2@localhost/db".into()),
            target_database_url: Some("postgres://u:swordfish@other/db".into()),
            libpq: LibpqArgs {
                pgpassword: Some("tiger".into()),
                ..LibpqArgs::default()
            },
            slot: "s".into(),
            publication: "p".into(),
            participants: ParticipantArgs::default(),
        };
        let shown = format!("{args:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("swordfish") && !shown.contains("tiger"),
            "{shown}"
        );
        assert!(
            shown.contains("slot: \"s\""),
            "the rest stays visible: {shown}"
        );
    }

    #[test]
    fn timeouts_are_written_like_postgresql_settings_and_never_zero() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        for bad in ["0s", "10", "s", "-1s", "1.5s", "10 h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
