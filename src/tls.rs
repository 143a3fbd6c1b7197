//! TLS for both connections, configured libpq-style in the connection string.
//!
//! tokio-postgres parses only `sslmode=disable|prefer|require` and no
//! `sslrootcert`, so [`TlsSettings::split`] takes `sslmode` and `sslrootcert`
//! out of `DATABASE_URL` / `TARGET_DATABASE_URL` first and leaves the rest to
//! tokio-postgres. The SQL connections use rustls (tokio-postgres-rustls), the
//! replication connection pgwire-replication's own rustls; both with the ring
//! provider, so one crypto stack serves both.
//!
//! Modes, as libpq defines them: `disable` never encrypts; `prefer` (the
//! default) and `require` encrypt without verifying the server; `verify-full`
//! verifies the chain against `sslrootcert` (for RDS: the RDS CA bundle) and
//! the host name. `verify-ca` is refused: rustls has no chain-only check.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// libpq `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyFull,
}

/// The TLS part of a connection string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

/// A TLS setting that cannot be used; says what is expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl TlsSettings {
    /// Splits `sslmode` and `sslrootcert` out of a libpq URL
    /// (`postgres://...?sslmode=verify-full&sslrootcert=/ca.pem`) or key=value
    /// string; returns the rest for tokio-postgres.
    pub fn split(conn: &str) -> Result<(String, TlsSettings), TlsError> {
        let mut settings = TlsSettings::default();
        let mut take = |key: &str, value: &str| -> Result<bool, TlsError> {
            match key {
                "sslmode" => {
                    settings.mode = match value {
                        "disable" => SslMode::Disable,
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-full" => SslMode::VerifyFull,
                        "verify-ca" => {
                            return Err(TlsError(
                                "sslmode=verify-ca is not supported: use verify-full (chain and host name) with sslrootcert".into(),
                            ))
                        }
                        other => {
                            return Err(TlsError(format!(
                                "sslmode={other}: expected disable, prefer, require or verify-full"
                            )))
                        }
                    };
                    Ok(true)
                }
                "sslrootcert" => {
                    settings.root_cert = Some(PathBuf::from(value));
                    Ok(true)
                }
                _ => Ok(false),
            }
        };
        let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
            match conn.split_once('?') {
                None => conn.to_string(),
                Some((base, query)) => {
                    let mut kept = Vec::new();
                    for pair in query.split('&').filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        if !take(k, &percent_decode(v))? {
                            kept.push(pair);
                        }
                    }
                    if kept.is_empty() {
                        base.to_string()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                }
            }
        } else {
            let mut kept = Vec::new();
            for token in conn.split_whitespace() {
                let (k, v) = token.split_once('=').unwrap_or((token, ""));
                if !take(k.trim(), v.trim_matches('\''))? {
                    kept.push(token);
                }
            }
            kept.join(" ")
        };
        if settings.mode == SslMode::VerifyFull && settings.root_cert.is_none() {
            return Err(TlsError(
                "sslmode=verify-full needs sslrootcert=<CA bundle file> (for RDS: the RDS global bundle)".into(),
            ));
        }
        Ok((rest, settings))
    }

    /// tokio-postgres's sslmode for these settings.
    pub fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }

    /// The rustls client configuration of the SQL connections.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS setup: {e}")))?;
        let config = match (&self.mode, &self.root_cert) {
            (SslMode::VerifyFull, Some(path)) => builder
                .with_root_certificates(load_roots(path)?)
                .with_no_client_auth(),
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth(),
        };
        Ok(config)
    }

    /// The replication connection's TLS (pgwire-replication).
    pub fn replication(&self) -> pgwire_replication::TlsConfig {
        match self.mode {
            SslMode::Disable => pgwire_replication::TlsConfig::disabled(),
            SslMode::Prefer => {
                let mut t = pgwire_replication::TlsConfig::disabled();
                t.mode = pgwire_replication::SslMode::Prefer;
                t
            }
            SslMode::Require => pgwire_replication::TlsConfig::require(),
            SslMode::VerifyFull => {
                pgwire_replication::TlsConfig::verify_full(self.root_cert.clone())
            }
        }
    }
}

/// What an operator must know when the connection string `conn` (of
/// `setting`, e.g. `DATABASE_URL`) does not verify the server: without
/// `verify-full` anyone on the network path can impersonate the server (and,
/// with `prefer`, downgrade the connection to plaintext) and so read the
/// password and the data. `None` for `verify-full` and for Unix-socket hosts
/// (no network path).
pub fn unverified_warning(setting: &str, conn: &str) -> Option<String> {
    let (rest, tls) = TlsSettings::split(conn).ok()?;
    if tls.mode == SslMode::VerifyFull {
        return None;
    }
    let config = tokio_postgres::Config::from_str(&rest).ok()?;
    let networked = config.get_hosts().is_empty()
        || config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, tokio_postgres::config::Host::Tcp(_)));
    if !networked {
        return None;
    }
    let risk = match tls.mode {
        SslMode::Disable => "sslmode=disable: the password (unless the server uses SCRAM) and all data cross the network unencrypted",
        SslMode::Prefer => "sslmode=prefer (the default) does not verify the server: anyone on the network path can downgrade the connection to plaintext or impersonate the server, and read the password and the data",
        SslMode::Require => "sslmode=require encrypts but does not verify the server: anyone on the network path can impersonate it and read the password and the data",
        SslMode::VerifyFull => return None,
    };
    Some(format!(
        "{setting}: {risk}; use sslmode=verify-full&sslrootcert=<CA bundle> (for RDS: the RDS global bundle)"
    ))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("sslrootcert {}: {e}", path.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| TlsError(format!("sslrootcert {}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("sslrootcert {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(TlsError(format!(
            "sslrootcert {} holds no certificate",
            path.display()
        )));
    }
    Ok(roots)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `prefer` / `require`: encrypt, but accept any certificate (libpq's meaning).
/// Signatures are still checked, so the handshake is a real one.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_settings_are_split_out_of_urls_and_keyword_strings() {
        let (rest, s) = TlsSettings::split("postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=%2Fetc%2Frds.pem&application_name=x").expect("valid");
        assert_eq!(rest, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(
            s,
            TlsSettings {
                mode: SslMode::VerifyFull,
                root_cert: Some("/etc/rds.pem".into())
            }
        );
        let (rest, s) = TlsSettings::split("host=h dbname=db sslmode=require").expect("valid");
        assert_eq!(rest, "host=h dbname=db");
        assert_eq!(s.mode, SslMode::Require);
        let (rest, s) = TlsSettings::split("postgres://h/db").expect("valid");
        assert_eq!(
            (rest.as_str(), s.mode),
            ("postgres://h/db", SslMode::Prefer)
        );
    }

    #[test]
    fn only_a_verified_or_local_socket_connection_goes_without_a_warning() {
        for (conn, mode) in [
            ("postgres://u:p@db.example.com/crm", "sslmode=prefer"),
            (
                "postgres://u:p@db.example.com/crm?sslmode=require",
                "sslmode=require",
            ),
            (
                "host=db.example.com dbname=crm sslmode=disable",
                "sslmode=disable",
            ),
        ] {
            let w = unverified_warning("DATABASE_URL", conn).expect("warned");
            assert!(w.starts_with("DATABASE_URL: ") && w.contains(mode), "{w}");
            assert!(!w.contains("u:p@"), "no connection string: {w}");
        }
        assert_eq!(
            unverified_warning(
                "DATABASE_URL",
                "postgres://u:p@db.example.com/crm?sslmode=verify-full&sslrootcert=/ca.pem"
            ),
            None
        );
        assert_eq!(
            unverified_warning("DATABASE_URL", "host=/var/run/postgresql dbname=crm"),
            None
        );
    }

    #[test]
    fn unusable_settings_say_what_is_expected() {
        assert!(TlsSettings::split("postgres://h/db?sslmode=verify-full")
            .expect_err("no root")
            .to_string()
            .contains("sslrootcert"));
        assert!(
            TlsSettings::split("postgres://h/db?sslmode=verify-ca&sslrootcert=/x")
                .expect_err("ca")
                .to_string()
                .contains("verify-full")
        );
        assert!(TlsSettings::split("postgres://h/db?sslmode=bogus").is_err());
        let missing = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
        };
        assert!(missing
            .client_config()
            .expect_err("missing file")
            .to_string()
            .contains("/nonexistent/ca.pem"));
    }
}
