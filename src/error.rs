//! Errors of the IO layers, classified by consequence in one place.
//!
//! Materialize's split: an error is either *transient* (roll back, back off,
//! reconnect, replay from the stored progress: nothing is lost because the slot
//! and the progress row only move after a target commit) or *fatal* (an operator
//! must act; the process exits non-zero with a hint, and the error's
//! [`FatalKind`] says what the operator faces). A third class,
//! *row-permanent*, exists only inside `apply`: one change that the target
//! refuses (constraint, invalid data, a trigger's exception) is isolated under
//! a savepoint and recorded in `calendar_sync_failures`; it never reaches this
//! type. What cannot be classified is transient (decision 56; the table per
//! SQLSTATE class is in [`sqlstate`]).

use tokio_postgres::error::SqlState;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

mod sqlstate;

pub use sqlstate::{classify_sqlstate, fatal_kind};

/// What a failure means for the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connection lost, server restart, serialization failure, deadlock, lock
    /// timeout, and whatever cannot be classified: retry the whole source
    /// transaction later.
    Transient,
    /// The target refuses this one row (22 data, 23 integrity, a CRM trigger
    /// raising against it, ...: see [`classify_sqlstate`]).
    RowPermanent,
    /// Configuration, permissions, missing objects, a gone slot: an operator
    /// must act.
    Fatal,
}

/// What an operator faces when the process stops: the kind of a
/// [`SyncError::Fatal`]. Tests and callers branch on it, never on the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatalKind {
    /// The slot calendar-sync streamed from is gone: dropped, or invalidated
    /// (`wal_status = lost`, `max_slot_wal_keep_size`). Changes may be lost:
    /// `run --resync`.
    SlotGone,
    /// The slot is not this deployment's: another deployment claimed it, or
    /// it belongs to another database, plugin or tool (decision 53).
    OwnershipConflict,
    /// Something else moves this slot's progress row in the target.
    ProgressConflict,
    /// The publication is missing or does not publish a tracked table.
    PublicationMissing,
    /// calendar-sync's own tables or rows are missing, old or damaged (what
    /// `migrate` creates, and the rows only calendar-sync writes).
    SchemaMissing,
    /// The CRM's tables are not what the mapping reads: a table or column
    /// missing, dropped, retyped or replaced, a replica identity without the
    /// id.
    SchemaChanged,
    /// A setting of calendar-sync or of the server: connection string, TLS,
    /// database, server version, `wal_level`, slot limits.
    Config,
    /// A login refused or a right missing (`REPLICATION`, grants).
    Permission,
    /// The server's answer or the replication stream is not what the protocol
    /// says.
    MalformedStream,
    /// The database refuses a statement of ours and would every time (a
    /// row-permanent SQLSTATE outside a savepoint, damaged data): the
    /// message and the server log say which.
    Refused,
    /// An invariant of calendar-sync broke: report it with the log.
    Bug,
    /// A command's argument names nothing to act on.
    Usage,
}

impl FatalKind {
    /// The `kind` field of the JSON log line that ends the process: what a
    /// log-based alert or a dashboard filters on.
    pub fn as_str(self) -> &'static str {
        match self {
            FatalKind::SlotGone => "slot_gone",
            FatalKind::OwnershipConflict => "ownership_conflict",
            FatalKind::ProgressConflict => "progress_conflict",
            FatalKind::PublicationMissing => "publication_missing",
            FatalKind::SchemaMissing => "schema_missing",
            FatalKind::SchemaChanged => "schema_changed",
            FatalKind::Config => "config",
            FatalKind::Permission => "permission",
            FatalKind::MalformedStream => "malformed_stream",
            FatalKind::Refused => "refused",
            FatalKind::Bug => "bug",
            FatalKind::Usage => "usage",
        }
    }
}

/// Classifies a tokio-postgres error by the driver's own signals, never by
/// its text: a SQLSTATE ([`classify_sqlstate`]); `is_closed()` (the
/// connection task ended); a TLS failure (fatal: it never passes by
/// retrying); any `io::Error` in the source chain (transient, whatever its
/// `ErrorKind`: a refused or reset connection, a `connect_timeout` (the
/// driver's `Kind::Connect` with `TimedOut`), an unexpected EOF while reading
/// a message, and also a host name that resolves to nothing or a standby that
/// refuses writes, both normal while a failover moves DNS). What is left
/// (a value of an unexpected type, a row or column count, a password the URL
/// lacks) is decided in calendar-sync or its driver, not by the server: fatal.
///
/// The driver's `Kind` is private; before this, its Display was matched for
/// "connection closed" (that is `is_closed()`), "timed out" and "unexpected
/// EOF" (those are `io::Error`s in the chain: the driver's Display never shows
/// its cause). Its `Kind::Timeout` is built only by the blocking `postgres`
/// crate.
pub fn classify_pg(e: &tokio_postgres::Error) -> ErrorClass {
    if let Some(code) = e.code() {
        return classify_sqlstate(code.code());
    }
    if e.is_closed() {
        return ErrorClass::Transient;
    }
    if is_tls_failure(e) {
        return ErrorClass::Fatal;
    }
    if causes(e).any(|s| s.is::<std::io::Error>()) {
        return ErrorClass::Transient;
    }
    ErrorClass::Fatal
}

/// The kind of a tokio-postgres error that stops the stream (see
/// [`classify_pg`]).
pub fn pg_fatal_kind(e: &tokio_postgres::Error) -> FatalKind {
    use tokio_postgres::types::{WasNull, WrongType};
    if let Some(db) = e.as_db_error() {
        return fatal_kind(db.code().code(), db.message());
    }
    if is_tls_failure(e) {
        return FatalKind::Config;
    }
    // A column read or a parameter bound as a type the table no longer has.
    if causes(e).any(|s| s.is::<WrongType>() || s.is::<WasNull>()) {
        return FatalKind::SchemaChanged;
    }
    FatalKind::Bug
}

fn causes(e: &tokio_postgres::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(e), |s| s.source())
}

/// A TLS failure (untrusted certificate, wrong host name) arrives wrapped in
/// an I/O error, but never passes by retrying.
fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    causes(e).any(|s| {
        s.is::<rustls::Error>()
            || s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<rustls::Error>())
    })
}

/// The SQLSTATE of a tokio-postgres error, if the server sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

/// The error of the sync pipeline as a whole. The variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Retry after a backoff; replay from the stored progress.
    #[error("{context}: {source}")]
    Transient {
        context: String,
        #[source]
        source: BoxError,
    },
    /// Stop; an operator must act. `kind` says what they face, `hint` how
    /// to act.
    #[error("{message}\n  hint: {hint}")]
    Fatal {
        kind: FatalKind,
        message: String,
        hint: String,
    },
}

impl SyncError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SyncError::Transient { .. })
    }

    /// The kind of a fatal error; `None` for a transient one.
    pub fn kind(&self) -> Option<FatalKind> {
        match self {
            SyncError::Fatal { kind, .. } => Some(*kind),
            SyncError::Transient { .. } => None,
        }
    }

    pub fn fatal(kind: FatalKind, message: impl Into<String>, hint: impl Into<String>) -> Self {
        SyncError::Fatal {
            kind,
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn transient(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        SyncError::Transient {
            context: context.into(),
            source: source.into(),
        }
    }

    /// A database error met outside a per-row savepoint: transient or fatal.
    /// (A row-permanent SQLSTATE here means a statement of ours is wrong for this
    /// database, which an operator must look at.)
    pub fn db(context: impl Into<String>, e: tokio_postgres::Error) -> Self {
        let context = context.into();
        match classify_pg(&e) {
            // Not the driver error itself: its Debug and its source (the
            // server's DbError) carry the full DETAIL, and the cause chain is
            // what logs and `{:#}` print. `describe_pg` is the one filter; it
            // keeps the SQLSTATE, so every retry's log line names it.
            ErrorClass::Transient => SyncError::transient(context, ServerError(describe_pg(&e))),
            ErrorClass::RowPermanent | ErrorClass::Fatal => SyncError::fatal(
                pg_fatal_kind(&e),
                format!("{context}: {}", describe_pg(&e)),
                hint_for_pg(&e),
            ),
        }
    }

    /// Opening a session: as [`SyncError::db`], but what stops it without a
    /// SQLSTATE, the network or TLS (a password the URL lacks, an
    /// authentication method the driver does not speak) is configuration.
    pub fn connect(context: impl Into<String>, e: tokio_postgres::Error) -> Self {
        match SyncError::db(context, e) {
            SyncError::Fatal {
                kind: FatalKind::Bug,
                message,
                hint,
            } => SyncError::fatal(FatalKind::Config, message, hint),
            other => other,
        }
    }

    /// An error of the replication stream (pgwire-replication), classified by
    /// its variant; a server error by the SQLSTATE in its text (the crate
    /// keeps only the text, see [`server_sqlstate`]).
    pub fn stream(context: impl Into<String>, e: pgwire_replication::PgWireError) -> Self {
        use pgwire_replication::PgWireError as W;
        let context = context.into();
        let (kind, hint) = match &e {
            W::Io(_) | W::Task(_) => return SyncError::transient(context, e),
            W::Server(msg) => {
                let code = server_sqlstate(msg).unwrap_or("");
                if classify_sqlstate(code) == ErrorClass::Transient {
                    return SyncError::transient(context, e);
                }
                let kind = fatal_kind(code, msg);
                let hint = hint_for_server(kind, code, msg);
                return SyncError::fatal(kind, format!("{context}: {msg}"), hint);
            }
            W::Auth(_) => (
                FatalKind::Permission,
                "check the user and password in DATABASE_URL and pg_hba.conf",
            ),
            W::Tls(_) => (
                FatalKind::Config,
                "check sslmode and sslrootcert in DATABASE_URL (the CA that signed the server's certificate) and that its host matches the certificate",
            ),
            W::Protocol(_) | W::MessageTooLarge { .. } => (
                FatalKind::MalformedStream,
                "the server's replication protocol is not what calendar-sync speaks: check the server version (14 or newer) and that nothing but PostgreSQL answers on DATABASE_URL",
            ),
            W::Internal(_) => (
                FatalKind::Bug,
                "this is a bug in calendar-sync or pgwire-replication: report it with the log",
            ),
            // A variant a later pgwire-replication adds (`non_exhaustive`):
            // what cannot be classified is retried, its text logged.
            _ => return SyncError::transient(context, e),
        };
        SyncError::fatal(kind, format!("{context}: {e}"), hint)
    }
}

/// A database error as text that went through [`describe_pg`]'s filter: the
/// source of a transient [`SyncError`], so that neither its Display nor its
/// Debug nor a cause chain can show a row's contents.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServerError(String);

/// pgwire-replication formats server errors as "message (SQLSTATE XXXXX)"
/// and keeps no field of its own for the code (`PgWireError::Server` holds
/// only that text), so the code is read back from it.
pub fn server_sqlstate(msg: &str) -> Option<&str> {
    let start = msg.rfind("(SQLSTATE ")? + "(SQLSTATE ".len();
    msg.get(start..start + 5)
}

/// A database error with its detail, for operators. Never includes row data
/// beyond what the server put in its message.
pub fn describe_pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            // "Failing row contains (...)" lists every column of the row,
            // which for interaction includes private_notes: never pass it on.
            if let Some(d) = db.detail().filter(|d| !d.contains("Failing row contains")) {
                s.push_str(&format!("; detail: {d}"));
            }
            s
        }
        None => {
            // The driver's own message is generic ("error performing TLS
            // handshake"); the cause is in the source chain.
            let mut s = e.to_string();
            for cause in std::iter::successors(std::error::Error::source(e), |s| s.source()) {
                s.push_str(&format!(": {cause}"));
            }
            s
        }
    }
}

fn hint_for_pg(e: &tokio_postgres::Error) -> String {
    if is_tls_failure(e) {
        return "check sslrootcert (it must hold the CA that signed the server's certificate; for RDS, the RDS global bundle) and that the host in the URL matches the certificate".into();
    }
    match e.code() {
        Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::UNDEFINED_COLUMN => {
            "the calendar-sync schema is missing or old: run `calendar-sync migrate` against this database".into()
        }
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
            "grant the calendar-sync role rights on the tables (and REPLICATION / rds_replication)".into()
        }
        Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            "check the user and password in DATABASE_URL / TARGET_DATABASE_URL".into()
        }
        _ => "see the PostgreSQL server log for the statement that failed".into(),
    }
}

fn hint_for_server(kind: FatalKind, code: &str, msg: &str) -> String {
    match kind {
        FatalKind::SlotGone => {
            "the replication slot is gone (dropped, or invalidated by max_slot_wal_keep_size): changes made while it was gone cannot be replayed; run `calendar-sync run --resync` once: it takes a new snapshot (re-syncing every interaction) and then removes events of interactions deleted meanwhile".into()
        }
        FatalKind::PublicationMissing => "the publication is missing: run `calendar-sync migrate`".into(),
        FatalKind::Permission if code == "42501" => {
            "the role needs the REPLICATION attribute (on RDS: GRANT rds_replication TO <role>)".into()
        }
        FatalKind::Permission if code.starts_with("28") => {
            "check the user and password in DATABASE_URL and pg_hba.conf".into()
        }
        FatalKind::Config if msg.contains("wal_level") => {
            "set wal_level = logical (on RDS: rds.logical_replication = 1) and restart the server".into()
        }
        _ => "see the PostgreSQL server log".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_is_read_from_pgwire_server_messages() {
        assert_eq!(
            server_sqlstate("replication slot \"x\" does not exist (SQLSTATE 42704)"),
            Some("42704")
        );
        assert_eq!(server_sqlstate("no code here"), None);
    }

    #[test]
    fn replication_errors_are_classified_by_variant() {
        use pgwire_replication::PgWireError as W;
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(SyncError::stream("c", W::Io(std::sync::Arc::new(io))).is_transient());
        assert!(SyncError::stream("c", W::Task("worker ended".into())).is_transient());
        for (e, kind) in [
            (W::Auth("password".into()), FatalKind::Permission),
            (W::Tls("handshake".into()), FatalKind::Config),
            (W::Protocol("truncated".into()), FatalKind::MalformedStream),
            (W::Internal("state".into()), FatalKind::Bug),
        ] {
            assert_eq!(SyncError::stream("c", e).kind(), Some(kind));
        }
    }

    #[test]
    fn a_retried_server_error_keeps_its_sqlstate_and_message_for_the_log() {
        use pgwire_replication::PgWireError as W;
        let e = SyncError::stream(
            "receiving from the replication stream",
            W::Server("could not read block 7 in file \"base/1/2\": read only 0 of 8192 bytes (SQLSTATE 58030)".into()),
        );
        assert!(e.is_transient());
        let text = e.to_string();
        assert!(
            text.contains("SQLSTATE 58030") && text.contains("could not read block 7"),
            "{text}"
        );
    }

    #[test]
    fn a_gone_slot_from_the_server_says_how_to_start_over() {
        use pgwire_replication::PgWireError as W;
        let e = SyncError::stream(
            "starting replication",
            W::Server("replication slot \"s\" does not exist (SQLSTATE 42704)".into()),
        );
        assert_eq!(e.kind(), Some(FatalKind::SlotGone));
        assert!(
            e.to_string().contains("`calendar-sync run --resync`"),
            "{e}"
        );
        let e = SyncError::stream(
            "starting replication",
            W::Server("publication \"p\" does not exist (SQLSTATE 42704)".into()),
        );
        assert_eq!(e.kind(), Some(FatalKind::PublicationMissing));
    }

    async fn connect_error(port: u16) -> tokio_postgres::Error {
        let url = format!("postgres://u:p@127.0.0.1:{port}/d?connect_timeout=5");
        match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok(_) => panic!("nothing listens at {port}, yet it connected"),
            Err(e) => e,
        }
    }

    /// Without a server: the driver's kinds, not its text, make a refused and
    /// a dropped connection transient.
    #[tokio::test]
    async fn a_refused_or_dropped_connection_is_transient_by_the_drivers_kinds() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let refused = connect_error(port).await;
        assert!(causes(&refused).any(|s| s
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)));
        assert_eq!(classify_pg(&refused), ErrorClass::Transient);
        assert!(SyncError::connect("connecting", refused).is_transient());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hang_up = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            drop(socket);
        });
        let dropped = connect_error(port).await;
        hang_up.await.expect("the listener task");
        assert!(dropped.is_closed() || causes(&dropped).any(|s| s.is::<std::io::Error>()));
        assert_eq!(classify_pg(&dropped), ErrorClass::Transient, "{dropped:?}");
    }
}
