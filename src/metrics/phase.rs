//! What the process is doing: its [`Phase`], `/readyz`'s readiness and
//! `/healthz`'s liveness, kept in atomics of [`Metrics`] and mirrored in the
//! `calendar_sync_phase`, `calendar_sync_streaming`, `calendar_sync_backoff_*`
//! and `calendar_sync_last_server_message_age_seconds` gauges.
//!
//! # Phase
//! `calendar_sync_phase{phase}` is 1 for the phase the process is in and 0
//! for the others. The phase is derived from independent flags, each set by
//! the code that knows it (the runner: streaming, backoff; the snapshot
//! copy: snapshot; the signal handler: stopping), with a fixed precedence:
//! stopping > backoff > streaming > snapshot > starting. So no setter has to
//! know what the others did, and "stopping" is never overwritten.
//!
//! # Liveness
//! While streaming, the server sends data or, when idle, a keepalive at least
//! every `wal_sender_timeout / 2`. The runner records the time of each
//! message it takes from the stream; `/healthz` fails when the last one is
//! older than the liveness limit (`CALENDAR_SYNC_LIVENESS_SECS`): a wedged
//! connection, a stopped walsender, or a consumer stuck on one message.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Metrics;

/// Reasons [`Metrics::is_ready`] gives when not ready.
pub const NOT_STREAMING: &str = "not streaming yet";
pub const BACKING_OFF: &str = "backing off after a transient failure";
pub const SNAPSHOT_IN_PROGRESS: &str = "snapshot in progress";
pub const STOPPING: &str = "stopping";

/// Default of `CALENDAR_SYNC_LIVENESS_SECS`.
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(120);

/// What the process is doing (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting, checking, or between a stop of the stream and the next step.
    Starting,
    /// Creating the slot and copying the initial snapshot.
    Snapshot,
    Streaming,
    /// Sleeping before a reconnect after a transient failure.
    Backoff,
    /// SIGTERM/SIGINT received.
    Stopping,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Starting,
        Phase::Snapshot,
        Phase::Streaming,
        Phase::Backoff,
        Phase::Stopping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Snapshot => "snapshot",
            Phase::Streaming => "streaming",
            Phase::Backoff => "backoff",
            Phase::Stopping => "stopping",
        }
    }

    /// Why `/readyz` is not 200 in this phase.
    fn not_ready(self) -> Option<&'static str> {
        match self {
            Phase::Streaming => None,
            Phase::Starting => Some(NOT_STREAMING),
            Phase::Snapshot => Some(SNAPSHOT_IN_PROGRESS),
            Phase::Backoff => Some(BACKING_OFF),
            Phase::Stopping => Some(STOPPING),
        }
    }
}

impl Metrics {
    /// `Some(delay)` while sleeping before a reconnect, `None` otherwise.
    pub fn set_backoff(&self, delay: Option<Duration>) {
        if delay.is_some() {
            // A failed snapshot is over; the next session starts anew.
            self.inner.in_snapshot.store(false, Ordering::Relaxed);
        }
        self.inner
            .is_backing_off
            .store(delay.is_some(), Ordering::Relaxed);
        self.inner
            .backoff_seconds
            .set(delay.map_or(0.0, |d| d.as_secs_f64()));
        self.inner.backoff_active.set(i64::from(delay.is_some()));
    }

    /// Whether the replication stream is running.
    pub fn set_streaming(&self, streaming: bool) {
        if streaming {
            self.inner.in_snapshot.store(false, Ordering::Relaxed);
            // Liveness counts from the start of the stream.
            self.server_message();
        }
        self.inner.is_streaming.store(streaming, Ordering::Relaxed);
        self.inner.streaming.set(i64::from(streaming));
    }

    /// The initial snapshot started (the phase until streaming or backoff).
    pub fn set_snapshot(&self) {
        self.inner.in_snapshot.store(true, Ordering::Relaxed);
    }

    /// A stop was requested; the phase stays `stopping` from now on.
    pub fn set_stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    /// A message (data or keepalive) arrived from the server.
    pub fn server_message(&self) {
        self.inner
            .last_server_message
            .store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// `/healthz` fails when streaming and the last server message is older.
    pub fn set_liveness_limit(&self, limit: Duration) {
        self.inner
            .liveness_limit_ms
            .store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    fn elapsed_ms(&self) -> u64 {
        self.inner.created.elapsed().as_millis() as u64
    }

    /// The current phase (precedence in the module docs).
    pub fn phase(&self) -> Phase {
        let i = &self.inner;
        if i.stopping.load(Ordering::Relaxed) {
            Phase::Stopping
        } else if i.is_backing_off.load(Ordering::Relaxed) {
            Phase::Backoff
        } else if i.is_streaming.load(Ordering::Relaxed) {
            Phase::Streaming
        } else if i.in_snapshot.load(Ordering::Relaxed) {
            Phase::Snapshot
        } else {
            Phase::Starting
        }
    }

    /// While streaming: time since the last server message; else `None`.
    pub fn server_silence(&self) -> Option<Duration> {
        (self.phase() == Phase::Streaming).then(|| {
            let last = self.inner.last_server_message.load(Ordering::Relaxed);
            Duration::from_millis(self.elapsed_ms().saturating_sub(last))
        })
    }

    /// Ready = streaming (not backing off, not stopping); otherwise a short
    /// reason naming the phase.
    pub fn is_ready(&self) -> Result<(), &'static str> {
        match self.phase().not_ready() {
            None => Ok(()),
            Some(reason) => Err(reason),
        }
    }

    /// Live = not streaming, or streaming with a server message within the
    /// liveness limit; otherwise the reason.
    pub fn is_live(&self) -> Result<(), String> {
        let limit = Duration::from_millis(self.inner.liveness_limit_ms.load(Ordering::Relaxed));
        match self.server_silence() {
            Some(silence) if silence > limit => Err(format!(
                "no message from the server for {} s (limit CALENDAR_SYNC_LIVENESS_SECS={} s)",
                silence.as_secs(),
                limit.as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// Gauges computed from state: the phase and the server message age.
    pub(super) fn refresh_derived(&self) {
        let current = self.phase();
        for p in Phase::ALL {
            self.inner
                .phase
                .with_label_values(&[p.as_str()])
                .set(i64::from(p == current));
        }
        self.inner
            .last_server_message_age
            .set(self.server_silence().map_or(0.0, |d| d.as_secs_f64()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::sample;
    use crate::metrics::LAST_SERVER_MESSAGE_AGE;

    #[test]
    fn readiness_follows_streaming_and_backoff() {
        let m = Metrics::new();
        assert_eq!(m.is_ready(), Err(NOT_STREAMING));
        m.set_streaming(true);
        assert_eq!(m.is_ready(), Ok(()));
        m.set_backoff(Some(Duration::from_millis(1500)));
        assert_eq!(m.is_ready(), Err(BACKING_OFF));
        m.set_backoff(None);
        assert_eq!(m.is_ready(), Ok(()));
        m.set_streaming(false);
        assert_eq!(m.is_ready(), Err(NOT_STREAMING));
    }

    #[test]
    fn the_phase_follows_precedence_and_stopping_is_final() {
        let m = Metrics::new();
        assert_eq!(m.phase(), Phase::Starting);
        m.set_snapshot();
        assert_eq!(m.phase(), Phase::Snapshot);
        assert_eq!(m.is_ready(), Err(SNAPSHOT_IN_PROGRESS));
        let text = m.render();
        assert!(
            text.contains("calendar_sync_phase{phase=\"snapshot\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("calendar_sync_phase{phase=\"streaming\"} 0"),
            "{text}"
        );
        m.set_backoff(Some(Duration::from_secs(1)));
        assert_eq!(m.phase(), Phase::Backoff);
        m.set_backoff(None);
        assert_eq!(m.phase(), Phase::Starting, "the failed snapshot is over");
        m.set_snapshot();
        m.set_streaming(true);
        assert_eq!(m.phase(), Phase::Streaming);
        m.set_streaming(false);
        assert_eq!(m.phase(), Phase::Starting);
        m.set_stopping();
        m.set_streaming(true);
        m.set_backoff(Some(Duration::from_secs(1)));
        assert_eq!(m.phase(), Phase::Stopping);
        assert_eq!(m.is_ready(), Err(STOPPING));
        assert!(m
            .render()
            .contains("calendar_sync_phase{phase=\"stopping\"} 1"));
    }

    #[test]
    fn liveness_fails_only_while_streaming_and_silent_past_the_limit() {
        let m = Metrics::new();
        m.set_liveness_limit(Duration::ZERO);
        assert_eq!(m.is_live(), Ok(()), "not streaming: nothing to expect");
        m.set_streaming(true);
        std::thread::sleep(Duration::from_millis(5));
        assert!(m
            .is_live()
            .is_err_and(|r| r.contains("no message from the server")));
        m.set_liveness_limit(Duration::from_secs(60));
        m.server_message();
        assert_eq!(m.is_live(), Ok(()));
        m.set_streaming(false);
        assert_eq!(
            sample(&m.render(), LAST_SERVER_MESSAGE_AGE).as_deref(),
            Some("0")
        );
    }

    #[test]
    fn clones_share_state() {
        let m = Metrics::new();
        let other = m.clone();
        other.set_streaming(true);
        assert_eq!(m.is_ready(), Ok(()));
    }
}
