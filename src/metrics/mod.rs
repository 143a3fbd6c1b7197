//! Prometheus metrics. Names are constants; labels come from enums.
//!
//! Besides the counters, [`Metrics`] carries the little bit of state the
//! `/readyz` endpoint needs (streaming? backing off?) in atomics, so every
//! setter is cheap, takes `&self` and can be called from any task without
//! holding a lock across an `.await`.
//!
//! - this module: the metric names, the registry, the counters and gauges
//!   that code sets directly, and the text exposition ([`Metrics::render`]);
//! - `phase`: the process's [`Phase`], readiness and liveness (the state
//!   `/readyz` and `/healthz` answer from) and the gauges derived from them.

mod phase;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use prometheus::{
    Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::lsn::Lsn;
use crate::mapping::{Action, Outcome};

pub const ACTIONS_TOTAL: &str = "calendar_sync_actions_total";
pub const TRANSACTIONS_TOTAL: &str = "calendar_sync_transactions_applied_total";
pub const LAST_APPLIED_LSN: &str = "calendar_sync_last_applied_lsn";
pub const LAST_COMMIT_TIME: &str = "calendar_sync_last_applied_commit_timestamp_seconds";
pub const RECONNECTS_TOTAL: &str = "calendar_sync_reconnects_total";
pub const REPLICATION_LAG_BYTES: &str = "calendar_sync_replication_lag_bytes";
pub const REPLICATION_LAG_SECONDS: &str = "calendar_sync_replication_lag_seconds";
pub const PENDING_FAILURES: &str = "calendar_sync_pending_failures";
pub const BACKOFF_SECONDS: &str = "calendar_sync_backoff_seconds";
pub const BACKOFF_ACTIVE: &str = "calendar_sync_backoff_active";
pub const STREAMING: &str = "calendar_sync_streaming";
pub const SAVEPOINTS_TOTAL: &str = "calendar_sync_savepoints_total";
pub const SNAPSHOT_ROWS_TOTAL: &str = "calendar_sync_snapshot_rows_total";
pub const ECHO_REJECTED_TOTAL: &str = "calendar_sync_echo_markers_rejected_total";
pub const PHASE: &str = "calendar_sync_phase";
pub const LAST_SERVER_MESSAGE_AGE: &str = "calendar_sync_last_server_message_age_seconds";

pub use phase::{
    Phase, BACKING_OFF, DEFAULT_LIVENESS, NOT_STREAMING, SNAPSHOT_IN_PROGRESS, STOPPING,
};

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
    lag_bytes: IntGauge,
    lag_seconds: Gauge,
    pending_failures: IntGauge,
    backoff_seconds: Gauge,
    backoff_active: IntGauge,
    streaming: IntGauge,
    savepoints: IntCounter,
    snapshot_rows: IntCounter,
    echo_rejected: IntCounter,
    /// Set from the flags below when rendered.
    phase: IntGaugeVec,
    /// Set from `last_server_message` when rendered.
    last_server_message_age: Gauge,
    /// Readiness state; the gauges mirror it for dashboards.
    is_streaming: AtomicBool,
    is_backing_off: AtomicBool,
    in_snapshot: AtomicBool,
    stopping: AtomicBool,
    /// Milliseconds since `created` of the last message from the server (or
    /// of the start of streaming).
    last_server_message: AtomicU64,
    created: Instant,
    /// `/healthz` fails while streaming and the last message is older (ms).
    liveness_limit_ms: AtomicU64,
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
        let lag_bytes = IntGauge::new(
            REPLICATION_LAG_BYTES,
            "Server WAL end seen in keepalives minus the last confirmed LSN",
        )
        .expect("static metric definition");
        let lag_seconds = Gauge::new(
            REPLICATION_LAG_SECONDS,
            "Replication lag in seconds behind the source",
        )
        .expect("static metric definition");
        let pending_failures =
            IntGauge::new(PENDING_FAILURES, "Failed changes waiting to be retried")
                .expect("static metric definition");
        let backoff_seconds = Gauge::new(
            BACKOFF_SECONDS,
            "Current reconnect backoff delay (0 when not backing off)",
        )
        .expect("static metric definition");
        let backoff_active = IntGauge::new(
            BACKOFF_ACTIVE,
            "1 while backing off after a transient failure, else 0",
        )
        .expect("static metric definition");
        let streaming = IntGauge::new(
            STREAMING,
            "1 while the replication stream is running, else 0",
        )
        .expect("static metric definition");
        let savepoints = IntCounter::new(
            SAVEPOINTS_TOTAL,
            "Savepoints (subtransactions) taken in target transactions",
        )
        .expect("static metric definition");
        let snapshot_rows = IntCounter::new(
            SNAPSHOT_ROWS_TOTAL,
            "Interaction rows copied by initial snapshots",
        )
        .expect("static metric definition");
        let echo_rejected = IntCounter::new(
            ECHO_REJECTED_TOTAL,
            "Transactions that carried calendar-sync's echo marker without proving it theirs (applied like any other)",
        )
        .expect("static metric definition");
        let phase = IntGaugeVec::new(
            Opts::new(
                PHASE,
                "1 for the current phase (starting, snapshot, streaming, backoff, stopping), else 0",
            ),
            &["phase"],
        )
        .expect("static metric definition");
        let last_server_message_age = Gauge::new(
            LAST_SERVER_MESSAGE_AGE,
            "While streaming: seconds since the last message or keepalive from the server (0 otherwise)",
        )
        .expect("static metric definition");
        for c in [
            Box::new(actions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(snapshot_rows.clone()),
            Box::new(echo_rejected.clone()),
            Box::new(phase.clone()),
            Box::new(last_server_message_age.clone()),
            Box::new(savepoints.clone()),
            Box::new(transactions.clone()),
            Box::new(last_lsn.clone()),
            Box::new(last_commit_time.clone()),
            Box::new(reconnects.clone()),
            Box::new(lag_bytes.clone()),
            Box::new(lag_seconds.clone()),
            Box::new(pending_failures.clone()),
            Box::new(backoff_seconds.clone()),
            Box::new(backoff_active.clone()),
            Box::new(streaming.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Pre-create every label pair so dashboards see zeros, not gaps.
        for a in Action::ALL {
            for s in [Outcome::Success, Outcome::Failed] {
                actions.with_label_values(&[a.as_str(), s.as_str()]);
            }
        }
        let m = Metrics {
            inner: Arc::new(Inner {
                registry,
                actions,
                transactions,
                last_lsn,
                last_commit_time,
                reconnects,
                lag_bytes,
                lag_seconds,
                pending_failures,
                backoff_seconds,
                backoff_active,
                streaming,
                savepoints,
                snapshot_rows,
                echo_rejected,
                phase,
                last_server_message_age,
                is_streaming: AtomicBool::new(false),
                is_backing_off: AtomicBool::new(false),
                in_snapshot: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                last_server_message: AtomicU64::new(0),
                created: Instant::now(),
                liveness_limit_ms: AtomicU64::new(DEFAULT_LIVENESS.as_millis() as u64),
            }),
        };
        m.refresh_derived();
        m
    }

    pub fn action(&self, action: Action, status: Outcome) {
        self.inner
            .actions
            .with_label_values(&[action.as_str(), status.as_str()])
            .inc();
    }

    /// `n` actions at once (a committed batch).
    pub fn actions(&self, action: Action, status: Outcome, n: u64) {
        self.inner
            .actions
            .with_label_values(&[action.as_str(), status.as_str()])
            .inc_by(n);
    }

    /// A savepoint was set in a target transaction.
    pub fn savepoint(&self) {
        self.inner.savepoints.inc();
    }

    /// A marked transaction was not proven calendar-sync's.
    pub fn echo_rejected(&self) {
        self.inner.echo_rejected.inc();
    }

    pub fn echo_rejected_count(&self) -> u64 {
        self.inner.echo_rejected.get()
    }

    pub fn savepoint_count(&self) -> u64 {
        self.inner.savepoints.get()
    }

    pub fn action_count(&self, action: Action, status: Outcome) -> u64 {
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

    /// Replication lag: `bytes` is the server WAL end seen in keepalives
    /// minus the last confirmed LSN; `seconds` the time behind the source.
    pub fn set_lag(&self, bytes: u64, seconds: f64) {
        self.inner
            .lag_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.inner.lag_seconds.set(seconds);
    }

    /// Number of failed changes waiting to be retried.
    pub fn set_pending_failures(&self, n: i64) {
        self.inner.pending_failures.set(n);
    }

    /// `n` more interaction rows copied by the initial snapshot.
    pub fn snapshot_rows(&self, n: u64) {
        self.inner.snapshot_rows.inc_by(n);
    }

    /// The Prometheus text exposition (format 0.0.4) of the registry.
    pub fn render(&self) -> String {
        self.refresh_derived();
        let families = self.inner.registry.gather();
        match TextEncoder::new().encode_to_string(&families) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(error = %e, "encoding metrics failed");
                String::new()
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    pub(super) fn sample(text: &str, name: &str) -> Option<String> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    }

    #[test]
    fn render_exposes_gauges() {
        let m = Metrics::new();
        let text = m.render();
        for name in [
            ACTIONS_TOTAL,
            TRANSACTIONS_TOTAL,
            REPLICATION_LAG_BYTES,
            REPLICATION_LAG_SECONDS,
            PENDING_FAILURES,
            BACKOFF_SECONDS,
            BACKOFF_ACTIVE,
            STREAMING,
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert_eq!(sample(&text, STREAMING).as_deref(), Some("0"));
        assert_eq!(sample(&text, BACKOFF_ACTIVE).as_deref(), Some("0"));

        m.set_lag(123_456, 2.5);
        m.set_pending_failures(3);
        m.set_backoff(Some(Duration::from_millis(1500)));
        m.set_streaming(true);
        let text = m.render();
        assert_eq!(
            sample(&text, REPLICATION_LAG_BYTES).as_deref(),
            Some("123456")
        );
        assert_eq!(
            sample(&text, REPLICATION_LAG_SECONDS).as_deref(),
            Some("2.5")
        );
        assert_eq!(sample(&text, PENDING_FAILURES).as_deref(), Some("3"));
        assert_eq!(sample(&text, BACKOFF_SECONDS).as_deref(), Some("1.5"));
        assert_eq!(sample(&text, BACKOFF_ACTIVE).as_deref(), Some("1"));
        assert_eq!(sample(&text, STREAMING).as_deref(), Some("1"));

        // Exposition goes through f64, so check saturation on the gauge.
        m.set_lag(u64::MAX, 0.0);
        assert_eq!(m.inner.lag_bytes.get(), i64::MAX);

        m.set_backoff(None);
        let text = m.render();
        assert_eq!(sample(&text, BACKOFF_SECONDS).as_deref(), Some("0"));
        assert_eq!(sample(&text, BACKOFF_ACTIVE).as_deref(), Some("0"));
    }

    #[test]
    fn action_labels_are_precreated() {
        let m = Metrics::new();
        let text = m.render();
        assert!(
            text.contains("calendar_sync_actions_total{action=\"create\",status=\"success\"} 0")
        );
        m.action(Action::Create, Outcome::Success);
        assert_eq!(m.action_count(Action::Create, Outcome::Success), 1);
        assert!(m
            .render()
            .contains("calendar_sync_actions_total{action=\"create\",status=\"success\"} 1"));
    }

    #[test]
    fn transaction_applied_sets_lsn_and_commit_time() {
        let m = Metrics::new();
        let ts = DateTime::from_timestamp(1_700_000_000, 0).expect("valid timestamp");
        m.transaction_applied(Lsn(0x1_0000_0010), ts);
        let text = m.render();
        assert_eq!(sample(&text, TRANSACTIONS_TOTAL).as_deref(), Some("1"));
        assert_eq!(
            sample(&text, LAST_APPLIED_LSN),
            Some(0x1_0000_0010_i64.to_string())
        );
        assert_eq!(
            sample(&text, LAST_COMMIT_TIME).as_deref(),
            Some("1700000000")
        );
    }
}
