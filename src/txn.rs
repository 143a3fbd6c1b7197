//! PURE: Begin .. changes .. Commit framing of the replication stream.
//!
//! pgoutput (proto 1) sends each committed transaction whole, in commit order:
//! Begin, then its Relation/Insert/Update/Delete/Truncate/Message frames, then
//! Commit. This state machine checks that order and decides, per transaction,
//! whether its changes are applied: not when it is already applied (a replay
//! after a lost acknowledgement) and not when it is one of calendar-sync's own
//! (it carries the echo marker, see `apply`).

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
    /// Carries the echo marker; its changes are ignored.
    pub own: bool,
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

    pub fn begin(
        &mut self,
        final_lsn: Lsn,
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
            own: false,
        }))
    }

    /// A transactional logical message: `is_echo` marks the transaction as ours.
    /// (Non-transactional messages are not part of any transaction.)
    pub fn message(&mut self, is_echo: bool) {
        if let (true, Some(open)) = (is_echo, self.open.as_mut()) {
            open.own = true;
        }
    }

    /// The open transaction a data change belongs to.
    pub fn change(&self) -> Result<&OpenTxn, FramingError> {
        self.open.as_ref().ok_or(FramingError::ChangeOutsideTxn)
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
        assert!(f.begin(Lsn(100), ts(), Lsn(50)).expect("begin").applies());
        assert!(f.change().expect("inside").applies());
        let t = f.commit(Lsn(100)).expect("commit");
        assert_eq!(t.final_lsn, Lsn(100));
        assert!(f.is_idle());
    }

    #[test]
    fn replays_and_own_transactions_do_not_apply() {
        let mut f = Framer::new();
        assert!(f.begin(Lsn(40), ts(), Lsn(50)).expect("begin").replay);
        assert!(!f.change().expect("inside").applies());
        f.commit(Lsn(40)).expect("commit");
        f.begin(Lsn(60), ts(), Lsn(50)).expect("begin");
        f.message(false);
        assert!(f.change().expect("inside").applies());
        f.message(true);
        assert!(!f.change().expect("inside").applies());
    }

    #[test]
    fn order_violations_are_errors() {
        let mut f = Framer::new();
        assert_eq!(f.change().err(), Some(FramingError::ChangeOutsideTxn));
        assert_eq!(
            f.commit(Lsn(1)).err(),
            Some(FramingError::CommitWithoutBegin(Lsn(1)))
        );
        f.begin(Lsn(10), ts(), Lsn(0)).expect("begin");
        assert_eq!(
            f.begin(Lsn(20), ts(), Lsn(0)).err(),
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
