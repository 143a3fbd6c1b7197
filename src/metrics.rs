//! Prometheus metrics. Names are constants; labels come from enums.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::lsn::Lsn;
use crate::mapping::Action;

pub const ACTIONS_TOTAL: &str = "calendar_sync_actions_total";
pub const TRANSACTIONS_TOTAL: &str = "calendar_sync_transactions_applied_total";
pub const LAST_APPLIED_LSN: &str = "calendar_sync_last_applied_lsn";
pub const LAST_COMMIT_TIME: &str = "calendar_sync_last_applied_commit_timestamp_seconds";
pub const RECONNECTS_TOTAL: &str = "calendar_sync_reconnects_total";

/// `status` label of actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failed => "failed",
        }
    }
}

/// Handles to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    actions: IntCounterVec,
    transactions: IntCounter,
    last_lsn: IntGauge,
    last_commit_time: IntGauge,
    reconnects: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let actions = IntCounterVec::new(
            Opts::new(ACTIONS_TOTAL, "Sync actions applied, by action and status"),
            &["action", "status"],
        )
        .expect("static metric definition");
        let transactions = IntCounter::new(TRANSACTIONS_TOTAL, "Target transactions committed")
            .expect("static metric definition");
        let last_lsn = IntGauge::new(
            LAST_APPLIED_LSN,
            "End LSN of the last applied source transaction",
        )
        .expect("static metric definition");
        let last_commit_time = IntGauge::new(
            LAST_COMMIT_TIME,
            "Commit time of the last applied source transaction",
        )
        .expect("static metric definition");
        let reconnects = IntCounter::new(RECONNECTS_TOTAL, "Reconnects after transient failures")
            .expect("static metric definition");
        for c in [
            Box::new(actions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(transactions.clone()),
            Box::new(last_lsn.clone()),
            Box::new(last_commit_time.clone()),
            Box::new(reconnects.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Pre-create every label pair so dashboards see zeros, not gaps.
        for a in Action::ALL {
            for s in [Status::Success, Status::Failed] {
                actions.with_label_values(&[a.as_str(), s.as_str()]);
            }
        }
        Metrics {
            inner: Arc::new(Inner {
                registry,
                actions,
                transactions,
                last_lsn,
                last_commit_time,
                reconnects,
            }),
        }
    }

    pub fn action(&self, action: Action, status: Status) {
        self.inner
            .actions
            .with_label_values(&[action.as_str(), status.as_str()])
            .inc();
    }

    pub fn action_count(&self, action: Action, status: Status) -> u64 {
        self.inner
            .actions
            .with_label_values(&[action.as_str(), status.as_str()])
            .get()
    }

    pub fn transaction_applied(&self, end_lsn: Lsn, commit_ts: DateTime<Utc>) {
        self.inner.transactions.inc();
        self.inner
            .last_lsn
            .set(i64::try_from(end_lsn.0).unwrap_or(i64::MAX));
        self.inner.last_commit_time.set(commit_ts.timestamp());
    }

    pub fn reconnect(&self) {
        self.inner.reconnects.inc();
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
