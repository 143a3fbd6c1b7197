//! Configuration: every flag has an environment variable (ECS passes
//! configuration as environment and secrets). Parsed by clap, validated once into
//! [`Config`]; connection strings are secrets and never printed.
//!
//! - `args`: the clap flag groups ([`DbArgs`], [`ParticipantArgs`],
//!   [`SyncArgs`]) and their defaults, as operators write them.
//! - `libpq`: the libpq `PG*` variables ([`LibpqArgs`]): a connection built
//!   from them, PGPASSWORD added to a URL without one, connection strings
//!   checked without ever showing them.
//! - this module: the validated [`Config`] and what it is made of, built once
//!   by [`Config::from_args`].

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use chrono_tz::Tz;

mod args;
mod libpq;

pub use args::{
    DbArgs, ParticipantArgs, SyncArgs, DEFAULT_LOCK_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT,
};
pub use libpq::LibpqArgs;

use libpq::parse_connection;

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
    /// `interaction.calendar_synced_at` stamps (`CALENDAR_SYNC_WRITE_SYNCED_AT`).
    pub write_synced_at: Stamping,
    /// `CALENDAR_SYNC_SLOT_FAILOVER`: a failover slot (PostgreSQL 17+).
    pub slot_failover: bool,
    pub status_interval: Duration,
    pub batch: BatchLimits,
    /// PostgreSQL `lock_timeout` of every SQL session of `run`.
    pub lock_timeout: Duration,
    /// PostgreSQL `statement_timeout` of every SQL session of `run`.
    pub statement_timeout: Duration,
    /// `run --resync`: start over from a missing or lost slot (issue 8).
    pub resync: bool,
}

/// When `interaction.calendar_synced_at` is written (decision 52).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamping {
    /// Only where the stamp sets off none of the CRM's triggers: the role may
    /// set `session_replication_role = replica` and no trigger of
    /// `interaction` is enabled `ALWAYS` or `REPLICA`, or `interaction` has
    /// no trigger that fires on an update at all. Otherwise no stamps.
    Auto,
    /// Always; where triggers fire on the stamp, their side effects (an
    /// `updated_at` bump) land in the CRM row.
    On,
    Off,
}

impl Stamping {
    /// `auto`, `true`/`on`, `false`/`off`.
    pub fn parse(s: &str) -> Result<Stamping, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Stamping::Auto),
            "true" | "on" => Ok(Stamping::On),
            "false" | "off" => Ok(Stamping::Off),
            other => Err(format!(
                "expected auto, true or false, got {other:?} (auto: stamp only where it sets off none of the CRM's triggers)"
            )),
        }
    }
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
            slot_failover: sync.slot_failover,
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
