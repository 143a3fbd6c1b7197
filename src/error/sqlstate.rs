//! What a SQLSTATE means for the stream, class by class (decision 56).
//!
//! PostgreSQL's codes are `CCxxx`: the class `CC` says what kind of condition
//! it is, so a code this table does not name is decided by its class
//! (Appendix A of the PostgreSQL manual). Materialize's rule for the rest:
//! what cannot be classified is retried, because a transient error with a
//! backoff, a `reconnects_total` count and its SQLSTATE and message in the
//! log on every attempt is never silent, while a wrong "fatal" stops a
//! consumer that would have recovered by itself.
//!
//! | class | name | class | why |
//! |---|---|---|---|
//! | 08 | connection exception | transient | the connection broke; a new one is the cure |
//! | 25 | invalid transaction state | transient | session state: a fresh session and a replay reset it; 25006 read-only (a writer endpoint still on a demoted node while Aurora/RDS fails over), 25P03 idle-in-transaction timeout |
//! | 0B, 24, 26, 2D, 34, 3B | transaction initiation, cursor, prepared statement, transaction end, cursor name, savepoint | transient | session state as 25 (26000 after a pooler dropped our prepared statements) |
//! | 40 | transaction rollback | transient | the class means "rolled back, run it again" (40001, 40P01) |
//! | 53 | insufficient resources | transient | disk full, out of memory, too many connections pass; **53400** configuration_limit_exceeded (all replication slots in use) is fatal |
//! | 57 | operator intervention | transient | canceled (statement_timeout), shutdown, crash, starting up, idle session timeout; **57P04** database_dropped is fatal |
//! | 58 | system error (I/O) | transient | the server's disk or files; a replay after a reconnect is all a client can do |
//! | 72 | snapshot failure | transient | a new transaction takes a new snapshot |
//! | 0A | feature not supported | transient | "cached plan must not change result type" after DDL and "logical decoding cannot be used while in recovery" (a failover in progress) pass with a new session |
//! | HV | foreign data wrapper | transient | a calendar table behind postgres_fdw: mostly the remote server's connection |
//! | XX | internal error | transient | XX000 is often a race with concurrent DDL; **XX001** data_corrupted and **XX002** index_corrupted are fatal (they stay until repaired) |
//! | 22, 23 | data exception, integrity constraint | row-permanent | this row is refused (kept from decision 15) |
//! | 44 | WITH CHECK OPTION violation | row-permanent | a view's condition refuses this row |
//! | 21 | cardinality violation | row-permanent | depends on the rows of the statement: bisection finds them |
//! | 54 | program limit exceeded | row-permanent | "index row size exceeds maximum" is one row's value; a statement too complex splits |
//! | P0, 09, 20, 27, 2F, 38, 39 | PL/pgSQL, triggered action, case not found, triggered data change, routine, external routine | row-permanent | a trigger or function of the CRM refuses our write of this row (P0001 `raise exception`) |
//! | 28, 0L, 0P, 2B | authorization, grantor, role, privileges | fatal | a login or a right only an operator can give |
//! | 42 | syntax error or access rule | fatal | our statement does not fit this database: privileges, missing objects, changed types |
//! | 3D, 3F | invalid catalog, schema name | fatal | the database or schema in the configuration does not exist |
//! | 55 | object not in prerequisite state | fatal | wal_level, an invalidated slot, a runtime parameter; **55006** object_in_use (the slot held during a rolling deploy) and **55P03** lock_not_available are transient |
//! | F0 | configuration file | fatal | the server's configuration needs an operator |
//! | 00, 01, 02, 03, 0F, 0Z, unknown | success, warnings, locator, diagnostics, a class PostgreSQL adds later | transient | never raised as an error by PostgreSQL for our statements: cannot be classified |
//!
//! Row-permanent means "isolate the change under a savepoint and record it in
//! `calendar_sync_failures`"; outside a savepoint such an error is fatal
//! ([`super::SyncError::db`]).

use super::{ErrorClass, FatalKind};

/// Classifies a SQLSTATE: the one place that decides what is retryable (see
/// the module's table).
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    use ErrorClass::{Fatal, RowPermanent, Transient};
    match code {
        "53400" | "57P04" | "XX001" | "XX002" => return Fatal,
        "55006" | "55P03" => return Transient,
        _ => {}
    }
    match code.get(..2).unwrap_or("") {
        "08" | "25" | "0B" | "24" | "26" | "2D" | "34" | "3B" | "40" | "53" | "57" | "58"
        | "72" | "0A" | "HV" | "XX" => Transient,
        "22" | "23" | "44" | "21" | "54" | "P0" | "09" | "20" | "27" | "2F" | "38" | "39" => {
            RowPermanent
        }
        "28" | "0L" | "0P" | "2B" | "42" | "3D" | "3F" | "55" | "F0" => Fatal,
        _ => Transient,
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
    use ErrorClass::{Fatal, RowPermanent, Transient};

    /// One representative code of every class in Appendix A (PostgreSQL 18),
    /// and the codes decided apart from their class.
    #[test]
    fn every_class_is_decided() {
        let cases = [
            ("00000", Transient),
            ("01000", Transient),
            ("02000", Transient),
            ("03000", Transient),
            ("08006", Transient),
            ("08P01", Transient),
            ("09000", RowPermanent),
            ("0A000", Transient),
            ("0B000", Transient),
            ("0F000", Transient),
            ("0L000", Fatal),
            ("0P000", Fatal),
            ("0Z000", Transient),
            ("20000", RowPermanent),
            ("21000", RowPermanent),
            ("22P02", RowPermanent),
            ("23505", RowPermanent),
            ("24000", Transient),
            ("25006", Transient),
            ("25P03", Transient),
            ("26000", Transient),
            ("27000", RowPermanent),
            ("28P01", Fatal),
            ("2B000", Fatal),
            ("2D000", Transient),
            ("2F005", RowPermanent),
            ("34000", Transient),
            ("38001", RowPermanent),
            ("39P01", RowPermanent),
            ("3B001", Transient),
            ("3D000", Fatal),
            ("3F000", Fatal),
            ("40001", Transient),
            ("40P01", Transient),
            ("42501", Fatal),
            ("42P01", Fatal),
            ("44000", RowPermanent),
            ("53100", Transient),
            ("53300", Transient),
            ("53400", Fatal),
            ("54000", RowPermanent),
            ("55000", Fatal),
            ("55006", Transient),
            ("55P03", Transient),
            ("57000", Transient),
            ("57014", Transient),
            ("57P01", Transient),
            ("57P03", Transient),
            ("57P04", Fatal),
            ("57P05", Transient),
            ("58030", Transient),
            ("72000", Transient),
            ("F0000", Fatal),
            ("HV00N", Transient),
            ("P0001", RowPermanent),
            ("P0004", RowPermanent),
            ("XX000", Transient),
            ("XX001", Fatal),
            ("XX002", Fatal),
            // Not a class PostgreSQL has, and no code at all.
            ("ZZ999", Transient),
            ("", Transient),
        ];
        for (code, class) in cases {
            assert_eq!(classify_sqlstate(code), class, "{code}");
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
