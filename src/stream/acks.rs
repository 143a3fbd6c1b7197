//! PURE: what a streaming session may report to the server as flushed
//! (issue 15, point 2: the acknowledgement state gets a type of its own).
//!
//! Three positions, always in this order: `acked <= ackable`, and `acked`
//! never decreases.
//!
//! - **progress**: the end of the last source transaction received whole
//!   (applied, or known to need nothing); a Begin records it as what could
//!   be acknowledged before that transaction (`visibility::Pending`).
//! - **ackable** ([`Acks::mark`]): the highest position whose transactions
//!   are committed in the target (a batch's end after its commit), or need
//!   nothing (a replay, one of ours, a keepalive's `wal_end` between
//!   transactions).
//! - **acked** ([`Acks::released`]): the highest position reported. The
//!   runner reports only what [`Acks::releasable`] allows under the bounds
//!   of its gates (a transaction not yet visible, `visibility::Pending`; a
//!   target commit the failover standbys lack, `standby::StandbyGate`), and
//!   only after a publication check that began after the position was
//!   received.
//!
//! The lag gauge counts from what the server already had at start (the
//! slot's confirmed position, or the snapshot's consistent point) until the
//! first report passes it ([`Acks::lag_from`]).

use std::time::{Duration, Instant};

use crate::lsn::Lsn;

/// After this long, what holds acknowledgements back is logged (once).
pub const HOLDBACK_WARN_AFTER: Duration = Duration::from_secs(30);

/// How long the first entry of a gate (`visibility::Pending`,
/// `standby::StandbyGate`) has held acknowledgements back: each gate
/// reports it once, after [`HOLDBACK_WARN_AFTER`].
#[derive(Debug)]
pub struct Holdback<T> {
    holding: Option<(T, Instant, bool)>,
}

impl<T> Default for Holdback<T> {
    fn default() -> Self {
        Holdback { holding: None }
    }
}

impl<T: PartialEq + Copy> Holdback<T> {
    /// `front`: what holds acknowledgements back now, if anything. Returns
    /// it, with how long it has, once it has held them for longer than
    /// [`HOLDBACK_WARN_AFTER`]; the clock starts when it is first seen.
    pub fn observe(&mut self, front: Option<T>) -> Option<(T, Duration)> {
        let Some(front) = front else {
            self.holding = None;
            return None;
        };
        match &mut self.holding {
            Some((held, since, warned)) if *held == front => {
                if !*warned && since.elapsed() >= HOLDBACK_WARN_AFTER {
                    *warned = true;
                    return Some((front, since.elapsed()));
                }
                None
            }
            _ => {
                self.holding = Some((front, Instant::now(), false));
                None
            }
        }
    }

    /// Tests: as if what is held had been held `by` longer.
    #[cfg(test)]
    pub fn age(&mut self, by: Duration) {
        if let Some((_, since, _)) = self.holding.as_mut() {
            *since -= by;
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acks {
    progress: Lsn,
    ackable: Lsn,
    acked: Lsn,
    lag_base: Lsn,
}

impl Acks {
    /// A session resuming at `progress` (the stored progress, or the
    /// snapshot's consistent point) from a slot the server has confirmed up to
    /// `server_has`.
    pub fn new(progress: Lsn, server_has: Option<Lsn>) -> Acks {
        Acks {
            progress,
            ackable: Lsn::ZERO,
            acked: Lsn::ZERO,
            lag_base: server_has.map_or(progress, |c| c.max(progress)),
        }
    }

    /// End of the last source transaction received whole.
    pub fn progress(&self) -> Lsn {
        self.progress
    }

    /// A source transaction ended at `end`.
    pub fn transaction_ended(&mut self, end: Lsn) {
        self.progress = self.progress.max(end);
    }

    /// Everything up to `lsn` is committed in the target or needs nothing.
    pub fn mark(&mut self, lsn: Lsn) {
        self.ackable = self.ackable.max(lsn);
    }

    /// The highest position marked.
    pub fn ackable(&self) -> Lsn {
        self.ackable
    }

    /// The highest position reported.
    pub fn acked(&self) -> Lsn {
        self.acked
    }

    /// Something marked has not been reported yet.
    pub fn wants_release(&self) -> bool {
        self.ackable > self.acked
    }

    /// What may be reported now: the marked position, held below every
    /// bound; `None` when that is nothing new.
    pub fn releasable(&self, bounds: &[Lsn]) -> Option<Lsn> {
        let upto = bounds.iter().fold(self.ackable, |a, b| a.min(*b));
        (upto > self.acked).then_some(upto)
    }

    /// `lsn` (from [`Acks::releasable`]) was reported to the server.
    pub fn released(&mut self, lsn: Lsn) {
        assert!(
            lsn <= self.ackable,
            "reported {lsn} past what was marked ({})",
            self.ackable
        );
        self.acked = self.acked.max(lsn);
    }

    /// Where the lag gauge counts from.
    pub fn lag_from(&self) -> Lsn {
        self.acked.max(self.lag_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_released_before_it_is_marked() {
        let a = Acks::new(Lsn(100), Some(Lsn(90)));
        assert!(!a.wants_release());
        assert_eq!(a.releasable(&[]), None);
        assert_eq!(a.lag_from(), Lsn(100), "counts from the progress");
    }

    #[test]
    fn a_release_never_passes_a_bound_and_never_goes_back() {
        let mut a = Acks::new(Lsn(100), None);
        a.mark(Lsn(300));
        assert_eq!(a.releasable(&[Lsn(250), Lsn(400)]), Some(Lsn(250)));
        a.released(Lsn(250));
        assert_eq!(a.acked(), Lsn(250));
        assert!(a.wants_release());
        assert_eq!(a.releasable(&[Lsn(200)]), None, "a lower bound later");
        a.mark(Lsn(200));
        assert_eq!(a.ackable(), Lsn(300), "marks only rise");
        assert_eq!(a.releasable(&[]), Some(Lsn(300)));
        a.released(Lsn(300));
        assert!(!a.wants_release());
        a.released(Lsn(280));
        assert_eq!(a.acked(), Lsn(300), "acked never decreases");
    }

    #[test]
    #[should_panic(expected = "past what was marked")]
    fn reporting_past_the_mark_is_a_bug() {
        let mut a = Acks::new(Lsn(100), None);
        a.mark(Lsn(150));
        a.released(Lsn(151));
    }

    #[test]
    fn the_lag_counts_from_what_the_server_had_until_a_report_passes_it() {
        let mut a = Acks::new(Lsn(100), Some(Lsn(500)));
        assert_eq!(a.lag_from(), Lsn(500));
        a.mark(Lsn(600));
        a.released(Lsn(600));
        assert_eq!(a.lag_from(), Lsn(600));
    }

    #[test]
    fn progress_follows_the_ends_of_transactions() {
        let mut a = Acks::new(Lsn(100), None);
        a.transaction_ended(Lsn(150));
        a.transaction_ended(Lsn(120));
        assert_eq!(a.progress(), Lsn(150));
    }
}
