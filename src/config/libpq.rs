//! The libpq environment variables (`PGHOST`, `PGPASSWORD`, ...): a
//! connection string built from them when DATABASE_URL is unset, PGPASSWORD
//! added to a connection string that has no password (as libpq does), and
//! connection strings parsed as tokio-postgres will without ever putting
//! them into an error.

use std::fmt;
use std::str::FromStr;

use super::ConfigError;

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
    pub(super) fn any_set(&self) -> bool {
        self.pghost.is_some()
            || self.pgport.is_some()
            || self.pguser.is_some()
            || self.pgdatabase.is_some()
            || self.pgsslmode.is_some()
            || self.pgsslrootcert.is_some()
    }

    /// A URL from the PG* variables (the password as a query parameter).
    pub(super) fn url(&self) -> String {
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
    pub(super) fn with_password(
        &self,
        setting: &'static str,
        conn: String,
    ) -> Result<String, ConfigError> {
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
pub(super) fn parse_connection(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DbArgs, ParticipantArgs};

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
}
