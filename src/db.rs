//! Ordinary SQL connections (tokio-postgres, TLS through rustls: see
//! [`crate::tls`]) and the one identifier-quoting helper.

use std::str::FromStr;

use tokio_postgres::{Client, NoTls};

use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::SecretUrl;
use crate::error::SyncError;
use crate::tls::{SslMode, TlsSettings};

/// `application_name` of every session, so operators can find them.
pub const APPLICATION_NAME: &str = "calendar-sync";

/// Opens a SQL session. The connection task ends when the client is dropped.
pub async fn connect(url: &SecretUrl, role: &str) -> Result<Client, SyncError> {
    let bad = |e: &dyn std::fmt::Display| {
        SyncError::fatal(
            format!("{role} connection string: {e}"),
            "expected postgres://user:password@host:port/dbname[?sslmode=verify-full&sslrootcert=/path/ca.pem]",
        )
    };
    let (rest, tls) = TlsSettings::split(url.expose()).map_err(|e| bad(&e))?;
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| bad(&e))?;
    config.application_name(APPLICATION_NAME);
    config.ssl_mode(tls.driver_mode());
    let connecting = format!("connecting to the {role} database");
    let client = if tls.mode == SslMode::Disable {
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| SyncError::db(connecting, e))?;
        spawn_connection(role, connection);
        client
    } else {
        let rustls = tls.client_config().map_err(|e| bad(&e))?;
        let (client, connection) = config
            .connect(MakeRustlsConnect::new(rustls))
            .await
            .map_err(|e| SyncError::db(connecting, e))?;
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
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("interaction"), "\"interaction\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
