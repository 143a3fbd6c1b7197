//! Ordinary SQL connections (tokio-postgres, TLS through rustls: see
//! [`crate::tls`]) and the one identifier-quoting helper.
//!
//! # Bounded waits
//!
//! Every wait of `run` is bounded (contract §7), so that a stuck session
//! becomes a transient error (retried with backoff) instead of a stream that
//! stops while the slot retains WAL:
//! - a lock held by a CRM session: `lock_timeout` (55P03);
//! - a statement that hangs: `statement_timeout` (57014);
//! - a dead server or network path: TCP keepalives ([`KEEPALIVE_IDLE`], then
//!   probes), `tcp_user_timeout` for data the peer never acknowledges, and a
//!   connect timeout.
//!
//! `idle_in_transaction_session_timeout` is deliberately not set: the
//! advisory-lock session must live as long as `run`, and a snapshot's
//! reading transaction is idle while the target writes.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::SecretUrl;
use crate::error::{FatalKind, SyncError};
use crate::tls::{SslMode, TlsSettings};

/// `application_name` of every session, so operators can find them.
pub const APPLICATION_NAME: &str = "calendar-sync";

/// Idle time before the first TCP keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Between keepalive probes; [`KEEPALIVE_RETRIES`] unanswered ones close the
/// connection (a dead peer is noticed about a minute after it went quiet).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the connection is
/// closed (Linux `TCP_USER_TIMEOUT`; keepalives only cover idle sockets).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);
/// Per address tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Server-side limits of a session of `run`: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
}

impl Limits {
    /// The `-c` options that set them, for the startup packet (no extra round
    /// trip, and in force before the first statement).
    fn options(&self) -> String {
        format!(
            "-c lock_timeout={}ms -c statement_timeout={}ms",
            self.lock_timeout.as_millis(),
            self.statement_timeout.as_millis()
        )
    }
}

/// Opens a SQL session without statement or lock limits (`migrate`, `status`,
/// the tests' own sessions). The connection task ends when the client is
/// dropped.
pub async fn connect(url: &SecretUrl, role: &str) -> Result<Client, SyncError> {
    connect_with(url, role, None).await
}

/// Opens a SQL session of `run`, with `limits`.
pub async fn connect_limited(
    url: &SecretUrl,
    role: &str,
    limits: Limits,
) -> Result<Client, SyncError> {
    connect_with(url, role, Some(limits)).await
}

async fn connect_with(
    url: &SecretUrl,
    role: &str,
    limits: Option<Limits>,
) -> Result<Client, SyncError> {
    let bad = |e: &dyn std::fmt::Display| {
        SyncError::fatal(
            FatalKind::Config,
            format!("{role} connection string: {e}"),
            "expected postgres://user:password@host:port/dbname[?sslmode=verify-full&sslrootcert=/path/ca.pem]",
        )
    };
    let (rest, tls) = TlsSettings::split(url.expose()).map_err(|e| bad(&e))?;
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| bad(&e))?;
    config.application_name(APPLICATION_NAME);
    config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(TCP_USER_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(limits) = limits {
        // After the URL's own options (e.g. -csearch_path=crm): the later
        // setting of a parameter wins.
        let options = match config.get_options() {
            Some(own) if !own.trim().is_empty() => format!("{own} {}", limits.options()),
            _ => limits.options(),
        };
        config.options(options);
    }
    config.ssl_mode(tls.driver_mode());
    let connecting = format!("connecting to the {role} database");
    let client = if tls.mode == SslMode::Disable {
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| SyncError::connect(connecting, e))?;
        spawn_connection(role, connection);
        client
    } else {
        let rustls = tls.client_config().map_err(|e| bad(&e))?;
        let (client, connection) = config
            .connect(MakeRustlsConnect::new(rustls))
            .await
            .map_err(|e| SyncError::connect(connecting, e))?;
        spawn_connection(role, connection);
        client
    };
    Ok(client)
}

/// Drives a connection until its client is dropped.
fn spawn_connection<F>(role: &str, connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    let role = role.to_string();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(database = %role, error = %e, "SQL connection closed");
        }
    });
}

/// Quotes an identifier for SQL text. Values are always bound as `$n`; only
/// configured table, column, publication and slot names go through here.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal for the replication protocol, which has no bind
/// parameters (snapshot names).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_startup_options_in_milliseconds() {
        let limits = Limits {
            lock_timeout: Duration::from_millis(500),
            statement_timeout: Duration::from_secs(60),
        };
        assert_eq!(
            limits.options(),
            "-c lock_timeout=500ms -c statement_timeout=60000ms"
        );
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("interaction"), "\"interaction\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
