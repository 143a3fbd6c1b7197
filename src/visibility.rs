//! One visibility rule for every read of the source made because of the
//! stream (contract §8, "Visibility"; decision 51): such a read never decides
//! on a state older than what the stream has already delivered.
//!
//! # Why a rule is needed
//!
//! A transaction's commit record is written (and can be decoded and streamed)
//! before the transaction leaves the server's process array; until then it is
//! *in progress* for every other session, and its rows are invisible. That
//! window is microseconds on a quiet primary, milliseconds on an RDS Multi-AZ
//! DB cluster (every commit waits for a standby while the walsender already
//! sends it), and unbounded when a synchronous standby does not answer. A read
//! of the source in that window sees the state *before* a change the stream
//! has delivered: a TOAST description read for a row not visible yet, a
//! retry or a reconcile repair that writes an older state with a newer
//! position, an event taken for an orphan.
//!
//! # The rule
//!
//! A delivered transaction is visible to every snapshot taken after one
//! snapshot (`pg_current_snapshot()`) no longer counts it as in progress:
//! its xid is below the snapshot's `xmax` and not in its `xip` list (an xid
//! at or above `xmax` is in progress too, without being listed: `xmax` is the
//! latest *completed* xid plus one). It has committed (it was streamed) and
//! left the process array, which is permanent. So:
//!
//! - the stream records every Begin ([`Pending::delivered`]), and a
//!   transaction stays *pending* until a snapshot shows it no longer running
//!   ([`Pending::refresh`], one small query; it returns the snapshot's `xmax`
//!   and the xids listed as running, a handful);
//! - a read because of a change committed at LSN `L` first waits until no
//!   pending transaction committed at or before `L` ([`Pending::wait_through`]);
//! - the slot's confirmed position never passes a pending transaction
//!   ([`Pending::ack_bound`]): `confirmed_flush_lsn` only names transactions
//!   that are applied **and** visible, which is what lets another process
//!   (`reconcile`) rely on it;
//! - a process without the stream (`reconcile`, a one-shot retry) asks for a
//!   *settled position* ([`settled_position`]): a WAL position `W` such that
//!   every transaction committed at or before `W` is visible (and, while `run`
//!   streams the slot, applied). Its writes then carry `W` as their LSN, so
//!   the stream's later changes (above `W`) win, and none of the earlier ones
//!   was missed by the read.
//!
//! This module owns the rule; `stream::runner`, `apply` and `reconcile`
//! only call it.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use crate::error::SyncError;
use crate::lsn::Lsn;
use crate::stream::acks::Holdback;

/// A snapshot taken now: its `xmax` and its listed in-progress xids (64-bit).
const SNAPSHOT: &str = "select pg_snapshot_xmax(s)::text::bigint,
        coalesce((select array_agg(x::text::bigint) from pg_snapshot_xip(s) x), '{}')
   from (select pg_current_snapshot() as s) q";

/// What a snapshot counts as in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    /// Latest completed xid + 1: every xid at or above it is in progress.
    pub xmax: u64,
    /// The xids below `xmax` still in progress.
    pub xip: HashSet<u64>,
}

impl Snap {
    /// Whether the transaction with Begin xid `xid` (the low 32 bits of an
    /// assigned id, less than 2^31 from `xmax`: PostgreSQL's wraparound
    /// limit) has ended for this snapshot.
    pub fn ended(&self, xid: u32) -> bool {
        let full = self.full(xid);
        full < self.xmax && !self.xip.contains(&full)
    }

    /// The 64-bit id with low bits `xid` nearest to `xmax`.
    fn full(&self, xid: u32) -> u64 {
        let candidate = (self.xmax & !0xffff_ffff) | u64::from(xid);
        if candidate > self.xmax.saturating_add(1 << 31) {
            candidate.saturating_sub(1 << 32)
        } else if candidate.saturating_add(1 << 31) < self.xmax {
            candidate + (1 << 32)
        } else {
            candidate
        }
    }
}

/// A delivered source transaction not yet known to be visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// pgoutput Begin's xid (the low 32 bits of the full id).
    xid: u32,
    /// Its commit LSN.
    final_lsn: Lsn,
    /// What could be acknowledged before it began (the stream's progress).
    before: Lsn,
}

/// The stream's delivered transactions not yet known to be visible. See the
/// module docs.
#[derive(Debug, Default)]
pub struct Pending {
    queue: VecDeque<Entry>,
    /// How long the first entry has held acknowledgements back.
    holding: Holdback<Entry>,
}

impl Pending {
    pub fn new() -> Pending {
        Pending::default()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A source transaction's Begin arrived: `xid` commits at `final_lsn`;
    /// `before` is what could be acknowledged before it.
    pub fn delivered(&mut self, xid: u32, final_lsn: Lsn, before: Lsn) {
        self.queue.push_back(Entry {
            xid,
            final_lsn,
            before,
        });
    }

    /// `snap`: a snapshot taken after the entries were delivered. Every
    /// entry it does not count as in progress is visible now.
    pub fn observe(&mut self, snap: &Snap) {
        self.queue.retain(|e| !snap.ended(e.xid));
    }

    /// Whether every delivered transaction committed at or before `lsn` is
    /// known visible.
    pub fn visible_through(&self, lsn: Lsn) -> bool {
        !self.queue.iter().any(|e| e.final_lsn <= lsn)
    }

    /// The highest position that may be acknowledged when `upto` is ready:
    /// never past a transaction not known visible.
    pub fn ack_bound(&self, upto: Lsn) -> Lsn {
        match self.queue.front() {
            Some(e) => upto.min(e.before),
            None => upto,
        }
    }

    /// Once per transaction that has held acknowledgements back for longer
    /// than [`crate::stream::acks::HOLDBACK_WARN_AFTER`]: its xid and commit LSN, for a warning.
    pub fn overdue(&mut self) -> Option<(u32, Lsn, Duration)> {
        self.holding
            .observe(self.queue.front().copied())
            .map(|(e, held)| (e.xid, e.final_lsn, held))
    }

    /// IO: one snapshot of the source; drops what is visible now.
    pub async fn refresh(&mut self, source: &Client) -> Result<(), SyncError> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let snap = snapshot(source).await?;
        self.observe(&snap);
        Ok(())
    }

    /// IO: waits (polling, at most `within`) until every delivered
    /// transaction committed at or before `lsn` is visible. `Ok(false)`: not
    /// within `within`.
    pub async fn wait_through(
        &mut self,
        source: &Client,
        lsn: Lsn,
        within: Duration,
    ) -> Result<bool, SyncError> {
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(1);
        loop {
            if self.visible_through(lsn) {
                return Ok(true);
            }
            self.refresh(source).await?;
            if self.visible_through(lsn) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// [`Pending::wait_through`], as an error after `within` (for a read that
    /// cannot go on without it: the stream is restarted with backoff).
    pub async fn require_through(
        &mut self,
        source: &Client,
        lsn: Lsn,
        within: Duration,
    ) -> Result<(), SyncError> {
        if self.wait_through(source, lsn, within).await? {
            return Ok(());
        }
        let first = self.queue.iter().find(|e| e.final_lsn <= lsn);
        Err(SyncError::transient(
            "reading the source after a streamed change",
            format!(
                "transaction {} committed at {} was streamed, but after {} s it is still in progress for other sessions (is its commit waiting for a synchronous standby? see pg_stat_activity wait_event SyncRep); calendar-sync reads the source only once what the stream delivered is visible, and will try again",
                first.map_or(0, |e| e.xid),
                first.map_or(lsn, |e| e.final_lsn),
                within.as_secs()
            ),
        ))
    }
}

/// IO: a snapshot of the source taken now.
pub async fn snapshot(source: &Client) -> Result<Snap, SyncError> {
    let ctx = "reading the source's running transactions (pg_current_snapshot)";
    let row = source
        .query_one(SNAPSHOT, &[])
        .await
        .map_err(|e| SyncError::db(ctx, e))?;
    let xmax: i64 = row.try_get(0).map_err(|e| SyncError::db(ctx, e))?;
    let xip: Vec<i64> = row.try_get(1).map_err(|e| SyncError::db(ctx, e))?;
    Ok(Snap {
        xmax: xmax as u64,
        xip: xip.into_iter().map(|x| x as u64).collect(),
    })
}

/// IO: assigns a transaction id and rolls it back: every transaction that
/// committed before now has a lower id.
async fn next_xid(source: &Client) -> Result<u64, SyncError> {
    let ctx = "taking a transaction id on the source";
    let (begun, xid, ended) = tokio::join!(
        source.batch_execute("begin"),
        source.query_one("select pg_current_xact_id()::text::bigint", &[]),
        source.batch_execute("rollback"),
    );
    begun.map_err(|e| SyncError::db(ctx, e))?;
    let xid: i64 = xid
        .map_err(|e| SyncError::db(ctx, e))?
        .try_get(0)
        .map_err(|e| SyncError::db(ctx, e))?;
    ended.map_err(|e| SyncError::db(ctx, e))?;
    Ok(xid as u64)
}

/// How long [`settled_position`] waits by default.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// For a process without the stream: a WAL position `W` such that every
/// source transaction committed at or before `W` is visible to every read
/// from now on, and, while a `run` streams `slot`, applied by it.
///
/// - While `slot` is active: waits until its `confirmed_flush_lsn` reaches
///   `W` (the stream confirms only applied and visible transactions,
///   [`Pending::ack_bound`]).
/// - Otherwise, or with no `slot` (`run --resync` before it streams): takes
///   a transaction id `N` after reading `W` (and rolls it back), then waits
///   until no transaction below `N` is in progress any more that was in
///   progress then: one that committed at or before `W` but had not yet left
///   the process array is among them. (An idle-in-transaction session that
///   holds an id keeps this waiting: the server cannot tell us whether a
///   transaction in progress has already written its commit record.)
///
/// Bounded by `within`, then a transient error that says why.
pub async fn settled_position(
    source: &Client,
    slot: Option<&str>,
    within: Duration,
) -> Result<Lsn, SyncError> {
    let deadline = Instant::now() + within;
    let ctx = "reading the source WAL position";
    let w: PgLsn = source
        .query_one("select pg_current_wal_insert_lsn()", &[])
        .await
        .map_err(|e| SyncError::db(ctx, e))?
        .try_get(0)
        .map_err(|e| SyncError::db(ctx, e))?;
    let w = Lsn::from(w);
    // After W was read: see the function docs. Only without a running stream.
    let mut fence: Option<(u64, Snap)> = None;
    loop {
        let active = match slot {
            Some(slot) => slot_state(source, slot).await?,
            None => None,
        };
        let waiting_for = match active {
            Some((true, confirmed)) => {
                if confirmed.is_some_and(|c| Lsn::from(c) >= w) {
                    return Ok(w);
                }
                format!("the running stream of slot {} to confirm {w} (it confirms only what it applied and what other sessions can see)", slot.unwrap_or_default())
            }
            _ => {
                let (n, at_w) = match &fence {
                    Some(f) => f,
                    None => {
                        let n = next_xid(source).await?;
                        fence.insert((n, snapshot(source).await?))
                    }
                };
                let now = snapshot(source).await?;
                let was_running = |x: &u64| *x < *n && (*x >= at_w.xmax || at_w.xip.contains(x));
                let still: Vec<u64> = now.xip.iter().copied().filter(was_running).collect();
                if still.is_empty() && now.xmax > *n {
                    return Ok(w);
                }
                format!("transactions {still:?}, in progress when the WAL position {w} was read, to end (one may have committed before it and not be visible yet; an idle-in-transaction session keeps this waiting: see pg_stat_activity)")
            }
        };
        if Instant::now() >= deadline {
            return Err(SyncError::transient(
                "waiting until the source's committed changes are visible and applied",
                format!(
                    "waited {} s for {waiting_for}; without it, drift cannot be told from changes in flight: try again when `calendar-sync status` shows little lag",
                    within.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `active` and `confirmed_flush_lsn` of `slot`, if it exists.
async fn slot_state(
    source: &Client,
    slot: &str,
) -> Result<Option<(bool, Option<PgLsn>)>, SyncError> {
    let ctx = "reading pg_replication_slots";
    source
        .query_opt(
            "select active, confirmed_flush_lsn from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| SyncError::db(ctx, e))?
        .map(|r| Ok::<_, tokio_postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
        .transpose()
        .map_err(|e| SyncError::db(ctx, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::acks::HOLDBACK_WARN_AFTER;

    /// A snapshot with `xmax` 1000 and these xids listed as running.
    fn running(xids: &[u32]) -> Snap {
        Snap {
            xmax: 1000,
            xip: xids.iter().map(|x| u64::from(*x)).collect(),
        }
    }

    #[test]
    fn an_xid_at_or_above_xmax_is_in_progress_though_not_listed() {
        let s = running(&[10]);
        assert!(!s.ended(10), "listed");
        assert!(s.ended(11), "below xmax, not listed");
        assert!(!s.ended(1000), "at xmax: not completed yet");
        assert!(!s.ended(1001), "above xmax");
    }

    #[test]
    fn the_32_bit_xid_is_placed_next_to_xmax_across_an_epoch() {
        let s = Snap {
            xmax: (5 << 32) + 10,
            xip: [(5 << 32) + 5, (4 << 32) + 0xffff_fff0]
                .into_iter()
                .collect(),
        };
        assert!(!s.ended(5), "this epoch, listed");
        assert!(s.ended(6), "this epoch, ended");
        assert!(!s.ended(0xffff_fff0), "previous epoch, listed");
        assert!(s.ended(0xffff_ffa0), "previous epoch, ended");
        assert!(!s.ended(11), "this epoch, at or above xmax");
    }

    #[test]
    fn nothing_pending_bounds_nothing() {
        let p = Pending::new();
        assert!(p.is_empty());
        assert!(p.visible_through(Lsn(u64::MAX)));
        assert_eq!(p.ack_bound(Lsn(500)), Lsn(500));
    }

    #[test]
    fn acknowledgements_stop_before_the_first_transaction_not_visible() {
        let mut p = Pending::new();
        p.delivered(10, Lsn(100), Lsn(50));
        p.delivered(11, Lsn(200), Lsn(110));
        p.delivered(12, Lsn(300), Lsn(210));
        // 10 and 12 have left the process array; 11 waits (a synchronous
        // standby): nothing at or after 11 may be confirmed.
        p.observe(&running(&[11, 99]));
        assert_eq!(p.ack_bound(Lsn(310)), Lsn(110));
        assert!(p.visible_through(Lsn(150)));
        assert!(!p.visible_through(Lsn(200)));
        assert!(!p.visible_through(Lsn(300)));
        p.observe(&running(&[99]));
        assert!(p.is_empty());
        assert_eq!(p.ack_bound(Lsn(310)), Lsn(310));
    }

    #[test]
    fn a_later_transaction_not_visible_does_not_hold_back_earlier_reads() {
        let mut p = Pending::new();
        p.delivered(10, Lsn(100), Lsn(50));
        p.delivered(11, Lsn(200), Lsn(110));
        p.observe(&running(&[11]));
        assert!(p.visible_through(Lsn(100)));
        assert!(!p.visible_through(Lsn(200)));
    }

    #[test]
    fn the_holdback_is_reported_once_per_transaction() {
        let mut p = Pending::new();
        p.delivered(10, Lsn(100), Lsn(50));
        assert_eq!(p.overdue(), None, "starts the clock");
        p.holding.age(HOLDBACK_WARN_AFTER);
        assert_eq!(p.overdue().map(|o| (o.0, o.1)), Some((10, Lsn(100))));
        assert_eq!(p.overdue(), None, "once");
        p.observe(&running(&[]));
        assert_eq!(p.overdue(), None);
    }
}
