//! Log sequence numbers and the progress rule.
//!
//! # Progress tracking
//!
//! The progress LSN is the `end_lsn` of the last source transaction whose effects
//! are committed in the target. It is written in the *same* target transaction as
//! those effects (`calendar_sync_progress`), so after any crash the target says
//! exactly which source transactions it holds.
//!
//! A source transaction whose commit record starts at `final_lsn` ends at
//! `end_lsn > final_lsn`, and every later transaction's commit record starts at or
//! after that `end_lsn`. So a transaction is already applied iff
//! `final_lsn < progress`: this is the test made at Begin, before any work, and it
//! is the same as "its end LSN is at or below the stored progress".

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL WAL position (`pg_lsn`), printed as `X/Y` like the server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// True when a source transaction whose commit record starts at `self`
    /// (pgoutput Begin `final_lsn`) is already applied under `progress`.
    pub fn already_applied(self, progress: Lsn) -> bool {
        self < progress
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A string that is not `X/Y` with hexadecimal halves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 16/B374D848")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl From<pgwire_replication::Lsn> for Lsn {
    fn from(l: pgwire_replication::Lsn) -> Self {
        Lsn(l.as_u64())
    }
}

impl From<Lsn> for pgwire_replication::Lsn {
    fn from(l: Lsn) -> Self {
        pgwire_replication::Lsn::from_u64(l.0)
    }
}

impl From<tokio_postgres::types::PgLsn> for Lsn {
    fn from(l: tokio_postgres::types::PgLsn) -> Self {
        Lsn(u64::from(l))
    }
}

impl From<Lsn> for tokio_postgres::types::PgLsn {
    fn from(l: Lsn) -> Self {
        tokio_postgres::types::PgLsn::from(l.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let l: Lsn = "16/B374D848".parse().expect("valid");
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn a_transaction_is_applied_iff_its_commit_record_starts_below_progress() {
        let progress = Lsn(100); // end_lsn of the last applied transaction
        assert!(Lsn(90).already_applied(progress)); // that same transaction's final_lsn
        assert!(!Lsn(100).already_applied(progress)); // the next commit record
        assert!(!Lsn(150).already_applied(progress));
    }
}
