//! Ordinary SQL connections (tokio-postgres) and the one identifier-quoting
//! helper. TLS: connections use `NoTls`, so `sslmode=disable|prefer` work and
//! `sslmode=require` is refused by the driver (see README, "TLS").

use std::str::FromStr;

use tokio_postgres::{Client, NoTls};

use crate::config::SecretUrl;
use crate::error::SyncError;

/// `application_name` of every session, so operators can find them.
pub const APPLICATION_NAME: &str = "calendar-sync";

/// Opens a SQL session. The connection task ends when the client is dropped.
pub async fn connect(url: &SecretUrl, role: &str) -> Result<Client, SyncError> {
    let mut config = tokio_postgres::Config::from_str(url.expose()).map_err(|e| {
        SyncError::fatal(
            format!("{role} connection string: {e}"),
            "expected postgres://user:password@host:port/dbname",
        )
    })?;
    config.application_name(APPLICATION_NAME);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| SyncError::db(format!("connecting to the {role} database"), e))?;
    let role = role.to_string();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(database = %role, error = %e, "SQL connection closed");
        }
    });
    Ok(client)
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
