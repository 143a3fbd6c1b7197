//! A failover slot with the calendar in the source database (issue 14): the
//! slot's confirmed position never passes a source transaction whose
//! *target* commit the failover standbys have not flushed yet.
//!
//! # Why
//!
//! With `synchronized_standby_slots`, the primary sends calendar-sync only
//! what the standbys named there have flushed, and a standby copies the
//! slot's confirmed position as soon as it has flushed the WAL up to it. Both
//! are about the *source* transaction. The consumer's own commit (events, log
//! rows, `calendar_sync_progress`) comes after it in the WAL, and physical
//! replication is asynchronous: when the consumer acknowledged source
//! transaction `S` and the standby copied that position before it received
//! the target commit, a promotion leaves a database whose stored progress is
//! before `S` and a slot that resumes after it. `S` is not replayed, and its
//! calendar change is lost for good (tests/failover.rs reproduces it by
//! freezing the standby's walsender).
//!
//! # The rule
//!
//! After each target commit the WAL insert position is taken
//! ([`StandbyGate::committed`], one small query); an acknowledgement stays
//! below the first target commit the standbys have not flushed
//! ([`StandbyGate::bound`]). What a standby has flushed is its physical
//! slot's `restart_lsn`, the same position the primary's walsenders wait for
//! ([`standby_flushed`]). Only with `CALENDAR_SYNC_SLOT_FAILOVER=true` and
//! no `TARGET_DATABASE_URL` (a separate target database has its own
//! durability); without `synchronized_standby_slots` nothing is held (the
//! start log and `status` warn about that already).

use std::collections::VecDeque;
use std::time::Duration;

use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use crate::error::SyncError;
use crate::lsn::Lsn;
use crate::stream::acks::Holdback;

/// A target commit not yet known flushed on the standbys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Commit {
    /// What could be acknowledged before this batch: the bound while it waits.
    before: Lsn,
    /// The WAL position after its commit record.
    wal: Lsn,
}

/// The target commits of this session that the standbys may still lack.
#[derive(Debug, Default)]
pub struct StandbyGate {
    waiting: VecDeque<Commit>,
    /// How long the first commit has held acknowledgements back.
    holding: Holdback<Commit>,
}

impl StandbyGate {
    /// A target commit happened; `before` is what could be acknowledged
    /// before its batch, `wal` the WAL insert position after it.
    pub fn committed(&mut self, before: Lsn, wal: Lsn) {
        self.waiting.push_back(Commit { before, wal });
    }

    /// Whether any target commit waits for the standbys.
    pub fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The highest position that may be acknowledged when `upto` is ready
    /// and the standbys have flushed the WAL up to `flushed` (`None`: no
    /// `synchronized_standby_slots`, nothing to wait for).
    pub fn bound(&mut self, upto: Lsn, flushed: Option<Lsn>) -> Lsn {
        match flushed {
            None => self.waiting.clear(),
            Some(f) => {
                while self.waiting.front().is_some_and(|c| c.wal <= f) {
                    self.waiting.pop_front();
                }
            }
        }
        match self.waiting.front() {
            Some(c) => upto.min(c.before),
            None => upto,
        }
    }

    /// Once per target commit that has held acknowledgements back for longer
    /// than [`crate::stream::acks::HOLDBACK_WARN_AFTER`]: its WAL position and how long, for a warning.
    pub fn overdue(&mut self) -> Option<(Lsn, Duration)> {
        self.holding
            .observe(self.waiting.front().copied())
            .map(|(c, held)| (c.wal, held))
    }
}

/// The WAL insert position now: after every commit this process has seen
/// succeed.
pub async fn wal_now(source: &Client) -> Result<Lsn, SyncError> {
    let row = source
        .query_one("select pg_current_wal_insert_lsn()", &[])
        .await
        .map_err(|e| SyncError::db("reading the WAL position after the calendar commit", e))?;
    Ok(Lsn::from(row.get::<_, PgLsn>(0)))
}

/// What every standby named in `synchronized_standby_slots` has flushed: the
/// least `restart_lsn` of their physical slots (a missing or unreserved one
/// counts as 0/0, as the primary's walsenders wait for it too). `None` when
/// the setting is empty (or the server predates it).
pub async fn standby_flushed(source: &Client) -> Result<Option<Lsn>, SyncError> {
    let row = source
        .query_one(
            "with names as (
               select unnest(string_to_array(replace(current_setting('synchronized_standby_slots', true), ' ', ''), ',')) as name
             )
             select case when coalesce(current_setting('synchronized_standby_slots', true), '') = '' then null
                    else (select min(coalesce(s.restart_lsn, '0/0'::pg_lsn))
                            from names n left join pg_replication_slots s
                              on s.slot_name = n.name and s.slot_type = 'physical'
                           where n.name <> '')
                    end",
            &[],
        )
        .await
        .map_err(|e| SyncError::db("reading what the standbys have flushed (synchronized_standby_slots)", e))?;
    Ok(row.get::<_, Option<PgLsn>>(0).map(Lsn::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::acks::HOLDBACK_WARN_AFTER;

    #[test]
    fn nothing_waiting_bounds_nothing() {
        let mut g = StandbyGate::default();
        assert_eq!(g.bound(Lsn(500), Some(Lsn(10))), Lsn(500));
        assert!(!g.is_waiting());
    }

    #[test]
    fn an_unflushed_commit_holds_acknowledgements_before_its_batch() {
        let mut g = StandbyGate::default();
        // Batch 1 (ackable was 100 before it) committed at WAL 200, batch 2
        // (ackable 150 before it) at WAL 300.
        g.committed(Lsn(100), Lsn(200));
        g.committed(Lsn(150), Lsn(300));
        assert_eq!(g.bound(Lsn(400), Some(Lsn(199))), Lsn(100));
        assert_eq!(g.bound(Lsn(400), Some(Lsn(200))), Lsn(150));
        assert!(g.is_waiting());
        assert_eq!(g.bound(Lsn(400), Some(Lsn(300))), Lsn(400));
        assert!(!g.is_waiting());
    }

    #[test]
    fn no_standby_slots_releases_everything() {
        let mut g = StandbyGate::default();
        g.committed(Lsn(100), Lsn(200));
        assert_eq!(g.bound(Lsn(400), None), Lsn(400));
        assert!(!g.is_waiting());
    }

    #[test]
    fn an_overdue_commit_is_reported_once_per_commit() {
        let mut g = StandbyGate::default();
        assert_eq!(g.overdue(), None);
        g.committed(Lsn(100), Lsn(200));
        assert_eq!(g.overdue(), None, "the first look starts the clock");
        g.holding.age(HOLDBACK_WARN_AFTER);
        assert_eq!(g.overdue().map(|(wal, _)| wal), Some(Lsn(200)));
        assert_eq!(g.overdue(), None, "once");
    }
}
