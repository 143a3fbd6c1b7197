//! PURE: Begin .. changes .. Commit framing of the replication stream.
//!
//! pgoutput (proto 1) sends each committed transaction whole, in commit order:
//! Begin, then its Relation/Insert/Update/Delete/Truncate/Message frames, then
//! Commit. This state machine checks that order and decides, per transaction,
//! whether its changes are applied: not when it is already applied (a replay
//! after a lost acknowledgement) and not when it is one of calendar-sync's own.
//!
//! # Own transactions
//!
//! calendar-sync's own transactions start with the echo marker (a transactional
//! logical message, see `crate::echo`), but any role may emit that message, so
//! the marker's presence decides nothing. A marker that arrives before any
//! change asks for a check ([`Marker::Verify`]): the runner checks that its
//! content is the MAC of the Begin xid under calendar-sync's key
//! (`echo::EchoKey::proves`, no IO) and reports the answer
//! ([`Framer::verified`]); only then is the transaction ignored. Since
//! that happens before any change, an own transaction never has a change
//! applied. A marker after a change ([`Marker::Late`]) is never ours (ours is
//! always the first statement), so the transaction applies whole, the changes
//! before the marker included. This module stays pure: it asks, the runner
//! does the IO.

use chrono::{DateTime, Utc};

use crate::lsn::Lsn;

/// The source transaction being received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTxn {
    /// Begin `final_lsn`: the LSN of its commit record.
    pub final_lsn: Lsn,
    pub commit_ts: DateTime<Utc>,
    /// `final_lsn < progress`: applied before; its changes are ignored.
    pub replay: bool,
    /// The Begin xid: the low 32 bits of the transaction's full id.
    pub xid: u32,
    /// A data change (Insert/Update/Delete/Truncate) arrived.
    pub changed: bool,
    /// An echo marker arrived (only the first one counts).
    pub marked: bool,
    /// Verified as calendar-sync's own (marker first, its content the MAC of
    /// the xid); its changes are ignored.
    pub own: bool,
}

/// What the runner does about an echo marker (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// Before any change: ask whether transaction `xid` is calendar-sync's,
    /// then call [`Framer::verified`] before the next frame.
    Verify { xid: u32 },
    /// After a change: not calendar-sync's; the transaction applies.
    Late { xid: u32 },
    /// Nothing to decide: a replay (ignored anyway), a second marker, or a
    /// message outside any transaction.
    Ignore,
}

impl OpenTxn {
    /// Whether changes of this transaction reach the applier.
    pub fn applies(&self) -> bool {
        !self.replay && !self.own
    }
}

/// The stream broke the Begin/Commit order: nothing of the transaction is
/// applied, and the stream restarts from the stored progress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("Begin of the transaction committing at {new} while the one committing at {open} is still open")]
    NestedBegin { open: Lsn, new: Lsn },
    #[error("a change arrived outside Begin/Commit")]
    ChangeOutsideTxn,
    #[error("Commit at {0} without a Begin")]
    CommitWithoutBegin(Lsn),
    #[error("Commit LSN {commit} does not match the Begin's final LSN {begin}")]
    CommitLsnMismatch { begin: Lsn, commit: Lsn },
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Framer {
    open: Option<OpenTxn>,
}

impl Framer {
    pub fn new() -> Self {
        Framer::default()
    }

    pub fn is_idle(&self) -> bool {
        self.open.is_none()
    }

    /// The transaction being received, if any.
    pub fn current(&self) -> Option<&OpenTxn> {
        self.open.as_ref()
    }

    pub fn begin(
        &mut self,
        final_lsn: Lsn,
        xid: u32,
        commit_ts: DateTime<Utc>,
        progress: Lsn,
    ) -> Result<&OpenTxn, FramingError> {
        if let Some(open) = &self.open {
            return Err(FramingError::NestedBegin {
                open: open.final_lsn,
                new: final_lsn,
            });
        }
        Ok(self.open.insert(OpenTxn {
            final_lsn,
            commit_ts,
            replay: final_lsn.already_applied(progress),
            xid,
            changed: false,
            marked: false,
            own: false,
        }))
    }

    /// A transactional logical message with the echo prefix arrived.
    /// (Non-transactional messages are not part of any transaction.)
    pub fn marker(&mut self) -> Marker {
        let Some(open) = self.open.as_mut() else {
            return Marker::Ignore;
        };
        if std::mem::replace(&mut open.marked, true) || open.replay {
            return Marker::Ignore;
        }
        if open.changed {
            Marker::Late { xid: open.xid }
        } else {
            Marker::Verify { xid: open.xid }
        }
    }

    /// The answer to [`Marker::Verify`]: whether the open transaction is
    /// calendar-sync's own.
    pub fn verified(&mut self, own: bool) {
        if let Some(open) = self.open.as_mut() {
            debug_assert!(!open.changed, "verified after a change was applied");
            open.own = own && !open.changed;
        }
    }

    /// A data change arrived: the open transaction it belongs to.
    pub fn change(&mut self) -> Result<&OpenTxn, FramingError> {
        let open = self.open.as_mut().ok_or(FramingError::ChangeOutsideTxn)?;
        open.changed = true;
        Ok(open)
    }

    /// Closes the transaction committed at `commit_lsn`.
    pub fn commit(&mut self, commit_lsn: Lsn) -> Result<OpenTxn, FramingError> {
        let open = self
            .open
            .take()
            .ok_or(FramingError::CommitWithoutBegin(commit_lsn))?;
        if open.final_lsn != commit_lsn {
            return Err(FramingError::CommitLsnMismatch {
                begin: open.final_lsn,
                commit: commit_lsn,
            });
        }
        Ok(open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts() -> DateTime<Utc> {
        DateTime::<Utc>::MIN_UTC
    }

    #[test]
    fn a_transaction_opens_and_commits() {
        let mut f = Framer::new();
        assert!(f
            .begin(Lsn(100), 1, ts(), Lsn(50))
            .expect("begin")
            .applies());
        assert!(f.change().expect("inside").applies());
        let t = f.commit(Lsn(100)).expect("commit");
        assert_eq!(t.final_lsn, Lsn(100));
        assert!(f.is_idle());
    }

    #[test]
    fn replays_do_not_apply_and_need_no_verification() {
        let mut f = Framer::new();
        assert!(f.begin(Lsn(40), 7, ts(), Lsn(50)).expect("begin").replay);
        assert_eq!(f.marker(), Marker::Ignore);
        assert!(!f.change().expect("inside").applies());
        f.commit(Lsn(40)).expect("commit");
    }

    #[test]
    fn a_verified_marker_before_any_change_makes_the_transaction_ours() {
        let mut f = Framer::new();
        f.begin(Lsn(60), 7, ts(), Lsn(50)).expect("begin");
        assert_eq!(f.marker(), Marker::Verify { xid: 7 });
        f.verified(true);
        assert!(!f.change().expect("inside").applies());
        assert_eq!(f.marker(), Marker::Ignore, "only the first marker counts");
        assert!(f.commit(Lsn(60)).expect("commit").own);
    }

    #[test]
    fn a_marker_that_fails_verification_hides_nothing() {
        let mut f = Framer::new();
        f.begin(Lsn(60), 7, ts(), Lsn(50)).expect("begin");
        assert_eq!(f.marker(), Marker::Verify { xid: 7 });
        f.verified(false);
        assert!(f.change().expect("inside").applies());
        assert_eq!(f.marker(), Marker::Ignore);
        assert!(f.change().expect("inside").applies());
    }

    #[test]
    fn a_marker_after_a_change_is_late_and_hides_nothing() {
        let mut f = Framer::new();
        f.begin(Lsn(60), 9, ts(), Lsn(50)).expect("begin");
        assert!(f.change().expect("inside").applies());
        assert_eq!(f.marker(), Marker::Late { xid: 9 });
        assert!(f.change().expect("inside").applies());
        assert!(!f.commit(Lsn(60)).expect("commit").own);
        assert_eq!(f.marker(), Marker::Ignore, "outside a transaction");
    }

    #[test]
    fn order_violations_are_errors() {
        let mut f = Framer::new();
        assert_eq!(f.change().err(), Some(FramingError::ChangeOutsideTxn));
        assert_eq!(
            f.commit(Lsn(1)).err(),
            Some(FramingError::CommitWithoutBegin(Lsn(1)))
        );
        f.begin(Lsn(10), 1, ts(), Lsn(0)).expect("begin");
        assert_eq!(
            f.begin(Lsn(20), 2, ts(), Lsn(0)).err(),
            Some(FramingError::NestedBegin {
                open: Lsn(10),
                new: Lsn(20)
            })
        );
        assert_eq!(
            f.commit(Lsn(11)).err(),
            Some(FramingError::CommitLsnMismatch {
                begin: Lsn(10),
                commit: Lsn(11)
            })
        );
    }
}
