//! What a SQLSTATE means for the stream (decision 15).

use super::{ErrorClass, FatalKind};

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

/// What an operator faces for a SQLSTATE that stops the stream (a fatal one,
/// or a row-permanent one outside a savepoint). `message` is the server's
/// text, read only where one code covers several objects (42704: a slot or a
/// publication; 55000: wal_level or an invalidated slot).
pub fn fatal_kind(code: &str, message: &str) -> FatalKind {
    match code {
        "42501" => FatalKind::Permission,
        "42704" if message.contains("replication slot") => FatalKind::SlotGone,
        "42704" if message.contains("publication") => FatalKind::PublicationMissing,
        "42704" | "42P01" | "42703" | "3F000" => FatalKind::SchemaMissing,
        // datatype_mismatch, undefined_function, cannot_coerce: a type or
        // function our statements use is not what it was.
        "42804" | "42883" | "42846" => FatalKind::SchemaChanged,
        "42601" => FatalKind::Bug,
        "55000" if message.contains("no longer") => FatalKind::SlotGone,
        "53400" | "57P04" | "3D000" => FatalKind::Config,
        _ => match code.get(..2).unwrap_or("") {
            "28" | "0L" | "0P" | "2B" => FatalKind::Permission,
            "55" | "F0" => FatalKind::Config,
            _ => FatalKind::Refused,
        },
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
    fn a_stopping_sqlstate_names_what_the_operator_faces() {
        let cases = [
            (
                "42704",
                "replication slot \"s\" does not exist",
                FatalKind::SlotGone,
            ),
            (
                "42704",
                "publication \"p\" does not exist",
                FatalKind::PublicationMissing,
            ),
            (
                "42704",
                "type \"x\" does not exist",
                FatalKind::SchemaMissing,
            ),
            (
                "55000",
                "can no longer get changes from replication slot \"s\"",
                FatalKind::SlotGone,
            ),
            (
                "55000",
                "logical decoding requires \"wal_level\" >= \"logical\"",
                FatalKind::Config,
            ),
            (
                "42501",
                "permission denied for table interaction",
                FatalKind::Permission,
            ),
            (
                "28P01",
                "password authentication failed",
                FatalKind::Permission,
            ),
            (
                "42P01",
                "relation \"calendar_sync_progress\" does not exist",
                FatalKind::SchemaMissing,
            ),
            (
                "42804",
                "column is of type integer",
                FatalKind::SchemaChanged,
            ),
            ("57P04", "database dropped", FatalKind::Config),
            (
                "53400",
                "all replication slots are in use",
                FatalKind::Config,
            ),
            ("XX002", "index is corrupted", FatalKind::Refused),
            ("23514", "violates check constraint", FatalKind::Refused),
        ];
        for (code, message, kind) in cases {
            assert_eq!(fatal_kind(code, message), kind, "{code} {message}");
        }
    }
}
