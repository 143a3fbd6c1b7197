//! Errors of the IO layers, classified by consequence in one place.
//!
//! Materialize's split: an error is either *transient* (roll back, back off,
//! reconnect, replay from the stored progress: nothing is lost because the slot
//! and the progress row only move after a target commit) or *fatal* (an operator
//! must act; the process exits non-zero with a hint). A third class,
//! *row-permanent*, exists only inside `apply`: one change that the target
//! refuses (constraint, invalid data) is isolated under a savepoint and recorded
//! in `calendar_sync_failures`; it never reaches this type.

use tokio_postgres::error::SqlState;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a failure means for the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connection lost, server restart, serialization failure, deadlock, lock
    /// timeout: retry the whole source transaction later.
    Transient,
    /// The target refuses this one row (23xxx integrity, 22xxx data exception).
    RowPermanent,
    /// Anything else: configuration, permissions, missing objects.
    Fatal,
}

/// Classifies a SQLSTATE. The one place that decides what is retryable.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    match code {
        // serialization_failure, deadlock_detected, lock_not_available,
        // query_canceled (statement_timeout), too_many_connections,
        // cannot_connect_now (server starting / in recovery), object_in_use
        // (another session holds the replication slot during a rolling deploy).
        "40001" | "40P01" | "55P03" | "57014" | "53300" | "57P03" | "55006" => {
            ErrorClass::Transient
        }
        // admin_shutdown, crash_shutdown, and every connection exception.
        // database_dropped and configuration_limit_exceeded (e.g. all
        // replication slots in use) never pass by waiting.
        "57P04" | "53400" => ErrorClass::Fatal,
        c if c.starts_with("57P") || c.starts_with("08") => ErrorClass::Transient,
        // insufficient_resources (disk full, out of memory) usually passes.
        c if c.starts_with("53") => ErrorClass::Transient,
        c if c.starts_with("23") || c.starts_with("22") => ErrorClass::RowPermanent,
        _ => ErrorClass::Fatal,
    }
}

/// Classifies a tokio-postgres error. Without a SQLSTATE: a broken or
/// refused connection (an I/O error, or the connection closed) is transient;
/// anything else (TLS required but not configured, a bad connection string)
/// needs an operator.
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
    let chain = || std::iter::successors(std::error::Error::source(e), |s| s.source());
    if chain().any(|s| s.is::<std::io::Error>()) {
        return ErrorClass::Transient;
    }
    // tokio-postgres reports a closed connection and timeouts without a source.
    let text = e.to_string();
    if text.contains("connection closed")
        || text.contains("timed out")
        || text.contains("unexpected EOF")
    {
        return ErrorClass::Transient;
    }
    ErrorClass::Fatal
}

/// A TLS failure (untrusted certificate, wrong host name) arrives wrapped in
/// an I/O error, but never passes by retrying.
fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    std::iter::successors(std::error::Error::source(e), |s| s.source()).any(|s| {
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
    /// Stop; an operator must act. `hint` says how.
    #[error("{message}\n  hint: {hint}")]
    Fatal { message: String, hint: String },
}

impl SyncError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SyncError::Transient { .. })
    }

    pub fn fatal(message: impl Into<String>, hint: impl Into<String>) -> Self {
        SyncError::Fatal {
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
            // what logs and `{:#}` print. `describe_pg` is the one filter.
            ErrorClass::Transient => SyncError::transient(context, ServerError(describe_pg(&e))),
            ErrorClass::RowPermanent | ErrorClass::Fatal => {
                let hint = hint_for_pg(&e);
                SyncError::fatal(format!("{context}: {}", describe_pg(&e)), hint)
            }
        }
    }

    /// An error of the replication stream (pgwire-replication).
    pub fn stream(context: impl Into<String>, e: pgwire_replication::PgWireError) -> Self {
        use pgwire_replication::PgWireError as W;
        let context = context.into();
        match &e {
            W::Io(_) | W::Task(_) => SyncError::transient(context, e),
            W::Server(msg) => {
                let code = server_sqlstate(msg).unwrap_or("");
                match classify_sqlstate(code) {
                    ErrorClass::Transient => SyncError::transient(context, e),
                    _ => SyncError::fatal(format!("{context}: {msg}"), hint_for_server(code, msg)),
                }
            }
            W::Auth(msg) => SyncError::fatal(
                format!("{context}: authentication failed: {msg}"),
                "check the user and password in DATABASE_URL and pg_hba.conf",
            ),
            _ => SyncError::fatal(
                format!("{context}: {e}"),
                "this is a protocol or TLS problem between calendar-sync and the server; check sslmode and the server version",
            ),
        }
    }
}

/// A database error as text that went through [`describe_pg`]'s filter: the
/// source of a transient [`SyncError`], so that neither its Display nor its
/// Debug nor a cause chain can show a row's contents.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServerError(String);

/// pgwire-replication formats server errors as "message (SQLSTATE XXXXX)".
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

fn hint_for_server(code: &str, msg: &str) -> String {
    match code {
        "42704" if msg.contains("replication slot") => {
            "the replication slot is gone (dropped, or invalidated by max_slot_wal_keep_size); changes since the last sync may be lost: delete this slot's row from calendar_sync_progress so that `run` takes a new snapshot, then remove events whose interaction is gone (there is no `reconcile` command yet)".into()
        }
        "42704" => "the publication is missing: run `calendar-sync migrate`".into(),
        "42501" => "the role needs the REPLICATION attribute (on RDS: GRANT rds_replication TO <role>)".into(),
        "55000" if msg.contains("wal_level") => {
            "set wal_level = logical (on RDS: rds.logical_replication = 1) and restart the server".into()
        }
        _ => "see the PostgreSQL server log".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_consequence() {
        for c in [
            "40001", "40P01", "55P03", "57014", "57P01", "57P02", "08006", "08000", "55006",
        ] {
            assert_eq!(classify_sqlstate(c), ErrorClass::Transient, "{c}");
        }
        for c in ["23503", "23505", "22003", "22P02"] {
            assert_eq!(classify_sqlstate(c), ErrorClass::RowPermanent, "{c}");
        }
        for c in ["42P01", "42501", "XX000", "57P04", "53400", ""] {
            assert_eq!(classify_sqlstate(c), ErrorClass::Fatal, "{c}");
        }
    }

    #[test]
    fn sqlstate_is_read_from_pgwire_server_messages() {
        assert_eq!(
            server_sqlstate("replication slot \"x\" does not exist (SQLSTATE 42704)"),
            Some("42704")
        );
        assert_eq!(server_sqlstate("no code here"), None);
    }
}
