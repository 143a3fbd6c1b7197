//! Configuration: every flag has an environment variable (ECS passes
//! configuration as environment and secrets). Parsed by clap, validated once into
//! [`Config`]; connection strings are secrets and never printed.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;

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

/// The libpq environment variables, the RDS way: ECS injects PGPASSWORD
/// alone from the RDS-managed secret's `password` key, so rotation works.
/// Used when DATABASE_URL is unset; PGPASSWORD also fills a DATABASE_URL (or
/// TARGET_DATABASE_URL) that has no password, as libpq does. Debug redacts
/// the password.
#[derive(Clone, Default, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct LibpqArgs {
    /// Server host name or address (or a Unix socket directory), when DATABASE_URL is unset.
    #[arg(long, env = "PGHOST")]
    pub pghost: Option<String>,
    /// Server port, when DATABASE_URL is unset (default 5432).
    #[arg(long, env = "PGPORT")]
    pub pgport: Option<u16>,
    /// User name, when DATABASE_URL is unset.
    #[arg(long, env = "PGUSER")]
    pub pguser: Option<String>,
    /// Password: for the PG* connection, and for a DATABASE_URL /
    /// TARGET_DATABASE_URL without one. Prefer the environment variable (a
    /// flag shows in `ps`). Never printed.
    #[arg(long, env = "PGPASSWORD", hide_env_values = true)]
    pub pgpassword: Option<String>,
    /// Database name, when DATABASE_URL is unset (default: the user name).
    #[arg(long, env = "PGDATABASE")]
    pub pgdatabase: Option<String>,
    /// disable, prefer (default), require or verify-full, when DATABASE_URL is unset.
    #[arg(long, env = "PGSSLMODE")]
    pub pgsslmode: Option<String>,
    /// CA bundle that signs the server's certificate (for RDS: the global
    /// bundle), when DATABASE_URL is unset.
    #[arg(long, env = "PGSSLROOTCERT")]
    pub pgsslrootcert: Option<String>,
}

impl fmt::Debug for LibpqArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LibpqArgs")
            .field("pghost", &self.pghost)
            .field("pgport", &self.pgport)
            .field("pguser", &self.pguser)
            .field(
                "pgpassword",
                &format_args!(
                    "{}",
                    if self.pgpassword.is_some() {
                        "<redacted>"
                    } else {
                        "<unset>"
                    }
                ),
            )
            .field("pgdatabase", &self.pgdatabase)
            .field("pgsslmode", &self.pgsslmode)
            .field("pgsslrootcert", &self.pgsslrootcert)
            .finish()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl LibpqArgs {
    fn any_set(&self) -> bool {
        self.pghost.is_some()
            || self.pgport.is_some()
            || self.pguser.is_some()
            || self.pgdatabase.is_some()
            || self.pgsslmode.is_some()
            || self.pgsslrootcert.is_some()
    }

    /// A URL from the PG* variables (the password as a query parameter).
    fn url(&self) -> String {
        let mut params = Vec::new();
        if let Some(p) = &self.pgpassword {
            params.push(format!("password={}", url_encode(p)));
        }
        if let Some(m) = &self.pgsslmode {
            params.push(format!("sslmode={}", url_encode(m)));
        }
        if let Some(c) = &self.pgsslrootcert {
            params.push(format!("sslrootcert={}", url_encode(c)));
        }
        let user = self
            .pguser
            .as_deref()
            .map(|u| format!("{}@", url_encode(u)))
            .unwrap_or_default();
        let db = self.pgdatabase.as_deref().or(self.pguser.as_deref());
        format!(
            "postgres://{user}{}:{}/{}{}{}",
            url_encode(self.pghost.as_deref().unwrap_or("localhost")),
            self.pgport.unwrap_or(5432),
            db.map(url_encode).unwrap_or_default(),
            if params.is_empty() { "" } else { "?" },
            params.join("&")
        )
    }

    /// `conn` with PGPASSWORD added when it has no password of its own.
    fn with_password(&self, setting: &'static str, conn: String) -> Result<String, ConfigError> {
        let Some(password) = &self.pgpassword else {
            return Ok(conn);
        };
        if parse_connection(setting, &conn)?.get_password().is_some() {
            return Ok(conn);
        }
        Ok(
            if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
                let sep = if conn.contains('?') { '&' } else { '?' };
                format!("{conn}{sep}password={}", url_encode(password))
            } else {
                let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
                format!("{conn} password='{quoted}'")
            },
        )
    }
}

/// Parses a connection string as tokio-postgres will (sslmode and
/// sslrootcert taken out first); the error never contains the string.
fn parse_connection(
    setting: &'static str,
    conn: &str,
) -> Result<tokio_postgres::Config, ConfigError> {
    let (rest, _) = crate::tls::TlsSettings::split(conn).map_err(|e| ConfigError {
        setting,
        problem: e.to_string(),
    })?;
    tokio_postgres::Config::from_str(&rest).map_err(|e| ConfigError {
        setting,
        problem: format!("not a PostgreSQL connection string ({e}); expected postgres://user:password@host:port/dbname"),
    })
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

    /// Write interaction.calendar_synced_at after each successful sync.
    #[arg(long, env = "CALENDAR_SYNC_WRITE_SYNCED_AT", help_heading = "Sync", default_value_t = true, action = clap::ArgAction::Set)]
    pub write_synced_at: bool,

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

/// Bounds of one batch (see `apply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_changes: usize,
    pub max_bytes: usize,
    pub max_delay: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_changes: 5000,
            max_bytes: 4 << 20,
            max_delay: Duration::from_millis(100),
        }
    }
}

impl Default for SyncArgs {
    fn default() -> Self {
        SyncArgs {
            window_days: 30,
            timezone: "UTC".into(),
            http_addr: None,
            liveness_secs: crate::metrics::DEFAULT_LIVENESS.as_secs(),
            write_synced_at: true,
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

/// A connection string. Debug and Display never show it (it holds a password).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(s: impl Into<String>) -> Self {
        SecretUrl(s.into())
    }
    /// The raw string, for the database driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretUrl(<redacted>)")
    }
}

/// Participant lookup schema, validated identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantSchema {
    pub customer_table: String,
    pub customer_id: String,
    pub customer_name: String,
    pub contact_table: String,
    pub contact_id: String,
    pub contact_first_name: String,
    pub contact_last_name: String,
    pub contact_email: String,
}

impl Default for ParticipantSchema {
    fn default() -> Self {
        ParticipantSchema {
            customer_table: "customer".into(),
            customer_id: "customer_id".into(),
            customer_name: "name".into(),
            contact_table: "contact".into(),
            contact_id: "contact_id".into(),
            contact_first_name: "first_name".into(),
            contact_last_name: "last_name".into(),
            contact_email: "email".into(),
        }
    }
}

/// Validated configuration of the database-facing commands.
#[derive(Debug, Clone)]
pub struct Config {
    pub source_url: SecretUrl,
    /// Where `source_url` came from, for messages: `DATABASE_URL` or the PG* variables.
    pub source_setting: &'static str,
    /// `None`: the target is the source database.
    pub target_url: Option<SecretUrl>,
    pub slot: String,
    pub publication: String,
    pub participants: ParticipantSchema,
    pub window: chrono::Duration,
    pub timezone: Tz,
    pub http_addr: Option<SocketAddr>,
    /// See `CALENDAR_SYNC_LIVENESS_SECS`.
    pub liveness: Duration,
    pub write_synced_at: bool,
    pub status_interval: Duration,
    pub batch: BatchLimits,
    /// PostgreSQL `lock_timeout` of every SQL session of `run`.
    pub lock_timeout: Duration,
    /// PostgreSQL `statement_timeout` of every SQL session of `run`.
    pub statement_timeout: Duration,
    /// `run --resync`: start over from a missing or lost slot (issue 8).
    pub resync: bool,
}

/// Invalid configuration: says which setting and what is expected.
#[derive(Debug, thiserror::Error)]
#[error("invalid {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

impl Config {
    /// Configuration for tests and the demo: defaults everywhere else.
    pub fn new(source_url: impl Into<String>, slot: &str) -> Result<Config, ConfigError> {
        Config::from_args(
            DbArgs {
                database_url: Some(source_url.into()),
                target_database_url: None,
                libpq: LibpqArgs::default(),
                slot: slot.into(),
                publication: "calendar_sync".into(),
                participants: ParticipantArgs::default(),
            },
            None,
        )
    }

    pub fn from_args(db: DbArgs, sync: Option<SyncArgs>) -> Result<Config, ConfigError> {
        let slot = validate_slot(&db.slot)?;
        let ident = |setting: &'static str, v: &str| -> Result<String, ConfigError> {
            if v.is_empty() || v.len() > 63 || v.contains('\0') {
                return Err(ConfigError {
                    setting,
                    problem: format!("{v:?} is not a PostgreSQL identifier (1-63 characters)"),
                });
            }
            Ok(v.to_string())
        };
        let p = &db.participants;
        let participants = ParticipantSchema {
            customer_table: ident("CALENDAR_SYNC_CUSTOMER_TABLE", &p.customer_table)?,
            customer_id: ident("CALENDAR_SYNC_CUSTOMER_ID_COLUMN", &p.customer_id_column)?,
            customer_name: ident(
                "CALENDAR_SYNC_CUSTOMER_NAME_COLUMN",
                &p.customer_name_column,
            )?,
            contact_table: ident("CALENDAR_SYNC_CONTACT_TABLE", &p.contact_table)?,
            contact_id: ident("CALENDAR_SYNC_CONTACT_ID_COLUMN", &p.contact_id_column)?,
            contact_first_name: ident(
                "CALENDAR_SYNC_CONTACT_FIRST_NAME_COLUMN",
                &p.contact_first_name_column,
            )?,
            contact_last_name: ident(
                "CALENDAR_SYNC_CONTACT_LAST_NAME_COLUMN",
                &p.contact_last_name_column,
            )?,
            contact_email: ident(
                "CALENDAR_SYNC_CONTACT_EMAIL_COLUMN",
                &p.contact_email_column,
            )?,
        };
        let publication = ident("CALENDAR_SYNC_PUBLICATION", &db.publication)?;
        let (source_setting, source) = match db.database_url.clone().filter(|u| !u.is_empty()) {
            Some(url) => ("DATABASE_URL", db.libpq.with_password("DATABASE_URL", url)?),
            None if db.libpq.any_set() => ("PGHOST/PGSSLMODE", db.libpq.url()),
            None => {
                return Err(ConfigError {
                    setting: "DATABASE_URL",
                    problem: "not set: set DATABASE_URL (postgres://user:password@host:port/dbname) or the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE (and PGSSLMODE, PGSSLROOTCERT)".into(),
                })
            }
        };
        parse_connection(source_setting, &source)?;
        let target = match db.target_database_url.clone().filter(|t| !t.is_empty()) {
            Some(t) => Some(db.libpq.with_password("TARGET_DATABASE_URL", t)?),
            None => None,
        };
        if let Some(t) = &target {
            parse_connection("TARGET_DATABASE_URL", t)?;
        }
        let sync = sync.unwrap_or_default();
        if sync.batch_changes == 0 || sync.batch_bytes < 1024 {
            return Err(ConfigError {
                setting: "CALENDAR_SYNC_BATCH_CHANGES / CALENDAR_SYNC_BATCH_BYTES",
                problem: "expected at least 1 change and 1024 bytes per batch".into(),
            });
        }
        let timezone: Tz = sync.timezone.parse().map_err(|_| ConfigError {
            setting: "CALENDAR_SYNC_TIMEZONE",
            problem: format!(
                "{:?} is not an IANA time zone name such as UTC or Europe/Berlin",
                sync.timezone
            ),
        })?;
        if sync.liveness_secs == 0 {
            return Err(ConfigError {
                setting: "CALENDAR_SYNC_LIVENESS_SECS",
                problem: "expected at least 1 second".into(),
            });
        }
        if sync.status_interval_secs == 0 || sync.status_interval_secs > 60 {
            return Err(ConfigError {
                setting: "CALENDAR_SYNC_STATUS_INTERVAL_SECS",
                problem: "expected 1 to 60 seconds".into(),
            });
        }
        let target_url = target.filter(|t| *t != source).map(SecretUrl::new);
        Ok(Config {
            source_url: SecretUrl::new(source),
            source_setting,
            target_url,
            slot,
            publication,
            participants,
            window: chrono::Duration::days(i64::from(sync.window_days)),
            timezone,
            http_addr: sync.http_addr,
            liveness: Duration::from_secs(sync.liveness_secs),
            write_synced_at: sync.write_synced_at,
            status_interval: Duration::from_secs(sync.status_interval_secs),
            batch: BatchLimits {
                max_changes: sync.batch_changes,
                max_bytes: sync.batch_bytes,
                max_delay: Duration::from_millis(sync.batch_delay_ms),
            },
            lock_timeout: sync.lock_timeout,
            statement_timeout: sync.statement_timeout,
            resync: false,
        })
    }

    /// The database that holds calendar_events.
    pub fn target_url(&self) -> &SecretUrl {
        self.target_url.as_ref().unwrap_or(&self.source_url)
    }

    /// Statement and lock limits of the SQL sessions of `run`.
    pub fn limits(&self) -> crate::db::Limits {
        crate::db::Limits {
            lock_timeout: self.lock_timeout,
            statement_timeout: self.statement_timeout,
        }
    }

    /// Warnings for connection strings that do not verify the server (see
    /// [`crate::tls::unverified_warning`]); logged once at start.
    pub fn tls_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        warnings.extend(crate::tls::unverified_warning(
            self.source_setting,
            self.source_url.expose(),
        ));
        if let Some(target) = &self.target_url {
            warnings.extend(crate::tls::unverified_warning(
                "TARGET_DATABASE_URL",
                target.expose(),
            ));
        }
        warnings
    }

    /// True when events live in the source database itself.
    pub fn same_database(&self) -> bool {
        self.target_url.is_none()
    }
}

/// pgwire-replication writes the slot name into START_REPLICATION unquoted, so
/// only plain lower-case identifiers are accepted.
fn validate_slot(slot: &str) -> Result<String, ConfigError> {
    let ok = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(slot.to_string())
    } else {
        Err(ConfigError {
            setting: "CALENDAR_SYNC_SLOT",
            problem: format!("{slot:?}: expected 1-63 characters of a-z, 0-9 and _"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let c = Config::new("postgres://u:hunter2@localhost/db", "calendar_sync").expect("valid");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

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

    fn args(url: Option<&str>, libpq: LibpqArgs) -> DbArgs {
        DbArgs {
            database_url: url.map(str::to_owned),
            target_database_url: None,
            libpq,
            slot: "s".into(),
            publication: "p".into(),
            participants: ParticipantArgs::default(),
        }
    }

    fn password_of(cfg: &Config) -> Option<String> {
        let (rest, _) = crate::tls::TlsSettings::split(cfg.source_url.expose()).expect("tls");
        tokio_postgres::Config::from_str(&rest)
            .expect("parses")
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    #[test]
    fn the_libpq_variables_build_the_connection_when_database_url_is_unset() {
        let libpq = LibpqArgs {
            pghost: Some("db.example.rds.amazonaws.com".into()),
            pgport: Some(5433),
            pguser: Some("sync user".into()),
            pgpassword: Some("p@ss/w?rd&x='y'".into()),
            pgdatabase: Some("crm".into()),
            pgsslmode: Some("verify-full".into()),
            pgsslrootcert: Some("/etc/ssl/rds global.pem".into()),
        };
        let cfg = Config::from_args(args(None, libpq), None).expect("valid");
        let (rest, tls) = crate::tls::TlsSettings::split(cfg.source_url.expose()).expect("tls");
        let pg = tokio_postgres::Config::from_str(&rest).expect("parses");
        assert_eq!(pg.get_user(), Some("sync user"));
        assert_eq!(pg.get_dbname(), Some("crm"));
        assert_eq!(pg.get_ports(), &[5433]);
        assert_eq!(password_of(&cfg).as_deref(), Some("p@ss/w?rd&x='y'"));
        assert_eq!(
            tls.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ssl/rds global.pem"))
        );
        assert!(Config::from_args(args(None, LibpqArgs::default()), None)
            .is_err_and(|e| e.to_string().contains("PGHOST")));
    }

    #[test]
    fn tls_warnings_name_the_variables_the_connection_came_from() {
        let libpq = LibpqArgs {
            pghost: Some("db.example.com".into()),
            pgsslmode: Some("require".into()),
            ..LibpqArgs::default()
        };
        let cfg = Config::from_args(args(None, libpq), None).expect("valid");
        let warnings = cfg.tls_warnings();
        assert!(
            warnings.len() == 1 && warnings[0].starts_with("PGHOST/PGSSLMODE: sslmode=require"),
            "{warnings:?}"
        );
    }

    #[test]
    fn pgpassword_fills_a_database_url_without_a_password_only() {
        let libpq = LibpqArgs {
            pgpassword: Some(r"it's\ secret".into()),
            ..LibpqArgs::default()
        };
        for url in [
            "postgres://u@localhost/db",
            "postgres://u@localhost/db?sslmode=disable",
            "host=localhost user=u dbname=db",
        ] {
            let cfg = Config::from_args(args(Some(url), libpq.clone()), None).expect(url);
            assert_eq!(password_of(&cfg).as_deref(), Some(r"it's\ secret"), "{url}");
        }
        let cfg = Config::from_args(args(Some("postgres://u:own@localhost/db"), libpq), None)
            .expect("valid");
        assert_eq!(password_of(&cfg).as_deref(), Some("own"));
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

    #[test]
    fn slot_names_must_be_plain_identifiers() {
        assert!(Config::new("postgres://localhost/db", "Bad-Slot").is_err());
        assert!(Config::new("postgres://localhost/db", "ok_slot_1").is_ok());
    }

    #[test]
    fn a_target_equal_to_the_source_is_the_same_database() {
        let mut args = DbArgs {
            database_url: Some("postgres://localhost/db".into()),
            target_database_url: Some("postgres://localhost/db".into()),
            libpq: LibpqArgs::default(),
            slot: "s".into(),
            publication: "p".into(),
            participants: ParticipantArgs::default(),
        };
        assert!(Config::from_args(args.clone(), None)
            .expect("valid")
            .same_database());
        args.target_database_url = Some("postgres://localhost/other".into());
        assert!(!Config::from_args(args, None)
            .expect("valid")
            .same_database());
    }
}
