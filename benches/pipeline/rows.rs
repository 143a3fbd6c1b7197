//! The rows of scenarios 3, 4 and 5, the CPU rows of 1, 2 and 3, and the goals.

use std::time::Duration;

use crate::cpu::ServerCpu;
use crate::process::Outcome;
use crate::scenario::{Snapshot, Steady};
use crate::table::{met, ms, outcome, rate, row, thousands, Row};
use crate::writer::Writer;

/// Catch-up and snapshot goals (issue 7).
pub const MAX_RATIO: f64 = 1.5;
pub const MIN_ROWS_PER_SEC: f64 = 20_000.0;
pub const MAX_RSS_MIB: f64 = 100.0;
pub const MAX_P99_MS: f64 = 100.0;
/// The CRM writer's txn/s while calendar-sync streams, against its txn/s
/// while pg_recvlogical drains a slot (decoding alone; issue 16).
pub const MIN_WRITER_SHARE: f64 = 0.70;
/// Server CPU of calendar-sync's sessions against the set-based statement's.
pub const MAX_CPU_RATIO: f64 = 1.8;

/// What a catch-up and the snapshot share: calendar-sync against its
/// references, in time, rate and cost.
pub struct Costs<'a> {
    pub title: String,
    pub rows: u64,
    /// pg_recvlogical's drain and walsender (none for the snapshot).
    pub recv: Option<(&'a Outcome, Option<ServerCpu>)>,
    pub set_based: &'a Outcome,
    pub set_based_cpu: Option<Duration>,
    pub sync: &'a Outcome,
    pub sync_cpu: Option<ServerCpu>,
    pub sync_own_cpu: Option<Duration>,
    pub stamp_ref: Option<(Duration, Option<Duration>)>,
}

impl Costs<'_> {
    /// The time and rows/s rows, with their goals.
    pub fn time_rows(&self) -> Vec<Row> {
        let ratio = match (self.sync.time(), self.set_based.time()) {
            (Some(a), Some(b)) => Some(a.as_secs_f64() / b.as_secs_f64()),
            _ => None,
        };
        let per_sec = self.sync.time().map(|d| self.rows as f64 / d.as_secs_f64());
        let (recv_time, recv_rate) = match self.recv {
            Some((o, _)) => (outcome(o), rate(self.rows, o)),
            None => ("—".into(), String::new()),
        };
        vec![
            [
                self.title.clone(),
                "time".into(),
                recv_time,
                outcome(self.set_based),
                outcome(self.sync),
                ratio.map(|r| format!("{r:.2}x SQL")).unwrap_or_default(),
                format!("≤ {MAX_RATIO}x SQL"),
                met(ratio.map(|r| r <= MAX_RATIO)),
            ],
            [
                String::new(),
                "rows/s".into(),
                recv_rate,
                rate(self.rows, self.set_based),
                rate(self.rows, self.sync),
                String::new(),
                format!("≥ {} rows/s", thousands(MIN_ROWS_PER_SEC as u64)),
                met(per_sec.map(|r| r >= MIN_ROWS_PER_SEC)),
            ],
        ]
    }

    /// The server and process CPU rows, then the rows against reference +
    /// stamp.
    pub fn cost_rows(&self) -> Vec<Row> {
        let mut rows = cpu_rows(
            self.rows,
            self.recv.map(|(_, cpu)| cpu),
            self.set_based_cpu,
            self.sync_cpu,
            self.sync_own_cpu,
        );
        rows.extend(stamp_rows(
            self.sync.time(),
            self.set_based.time(),
            self.sync_cpu,
            self.set_based_cpu,
            self.stamp_ref,
        ));
        rows
    }
}

pub fn snapshot_rows(s: &Snapshot) -> Vec<Row> {
    let costs = Costs {
        title: format!("3. snapshot of {} rows", thousands(s.rows)),
        rows: s.rows,
        recv: None,
        set_based: &s.set_based,
        set_based_cpu: s.set_based_cpu,
        sync: &s.sync,
        sync_cpu: s.sync_cpu,
        sync_own_cpu: s.sync_own_cpu,
        stamp_ref: s.stamp_ref,
    };
    let mut rows = costs.time_rows();
    rows.push([
        String::new(),
        "peak RSS (VmHWM)".into(),
        String::new(),
        String::new(),
        s.sync_hwm_kib
            .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "?".into()),
        String::new(),
        String::new(),
        String::new(),
    ]);
    rows.extend(costs.cost_rows());
    rows
}

/// calendar-sync against the reference that also stamps (the set-based
/// statement plus one set-based `update` of `calendar_synced_at`: the work
/// the contract asks for), when calendar-sync stamped.
fn stamp_rows(
    sync_time: Option<Duration>,
    set_based: Option<Duration>,
    sync_cpu: Option<ServerCpu>,
    set_based_cpu: Option<Duration>,
    stamp_ref: Option<(Duration, Option<Duration>)>,
) -> Vec<Row> {
    let Some((stamp_took, stamp_cpu)) = stamp_ref else {
        return Vec::new();
    };
    let ratio = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => Some(a.as_secs_f64() / b.as_secs_f64()),
        _ => None,
    };
    let time_ref = set_based.map(|d| d + stamp_took);
    let cpu_ref = set_based_cpu.zip(stamp_cpu).map(|(a, b)| a + b);
    let time_ratio = ratio(sync_time, time_ref);
    let cpu_ratio = ratio(sync_cpu.map(|c| c.total()), cpu_ref);
    vec![
        [
            String::new(),
            "time, reference + stamp".into(),
            String::new(),
            time_ref
                .map(|d| format!("{} (stamp {})", cpu_secs(d), cpu_secs(stamp_took)))
                .unwrap_or_else(|| "?".into()),
            sync_time.map(cpu_secs).unwrap_or_else(|| "?".into()),
            time_ratio
                .map(|r| format!("{r:.2}x SQL+stamp"))
                .unwrap_or_default(),
            format!("≤ {MAX_RATIO}x SQL+stamp"),
            met(time_ratio.map(|r| r <= MAX_RATIO)),
        ],
        [
            String::new(),
            "server CPU, reference + stamp".into(),
            String::new(),
            match (cpu_ref, stamp_cpu) {
                (Some(d), Some(s)) => format!("{} (stamp {})", cpu_secs(d), cpu_secs(s)),
                _ => "?".into(),
            },
            sync_cpu
                .map(|c| cpu_secs(c.total()))
                .unwrap_or_else(|| "?".into()),
            cpu_ratio
                .map(|r| format!("{r:.2}x SQL+stamp"))
                .unwrap_or_default(),
            format!("≤ {MAX_CPU_RATIO}x SQL+stamp"),
            met(cpu_ratio.map(|r| r <= MAX_CPU_RATIO)),
        ],
    ]
}

fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

pub fn steady_rows(s: &Steady) -> Vec<Row> {
    let (p50, p99, max) = (
        percentile(&s.latencies, 0.50),
        percentile(&s.latencies, 0.99),
        s.latencies.last().copied(),
    );
    let lat = match (p50, p99, max) {
        (Some(a), Some(b), Some(c)) => format!("{} / {} / {} ms", ms(a), ms(b), ms(c)),
        _ => "no event seen".into(),
    };
    let ok = p99.map(|p| p.as_secs_f64() * 1000.0 < MAX_P99_MS && s.unseen == 0);
    let mut cell = lat;
    if s.unseen > 0 {
        cell.push_str(&format!(", {} never seen", thousands(s.unseen as u64)));
    }
    vec![row([
        &format!("4. steady, {:.0} txn/s", s.rate),
        "latency p50 / p99 / max",
        "—",
        "—",
        &cell,
        "",
        &format!("p99 < {MAX_P99_MS} ms"),
        &met(ok),
    ])]
}

pub fn writer_rows(w: &Writer) -> Vec<Row> {
    let mut rows = vec![row([
        "5. CRM writer, 2 conns",
        "txn/s, reference",
        &thousands(w.recv as u64),
        &format!("{} (nothing consuming)", thousands(w.none as u64)),
        "",
        &format!(
            "pg_recvlogical: {:.0} % of nothing",
            share(w.recv, w.none) * 100.0
        ),
        "",
        "",
    ])];
    for (label, (rate, _lag)) in [
        ("stamping on (default)", w.stamping_on),
        ("stamping off", w.stamping_off),
    ] {
        let of_recv = share(rate, w.recv);
        rows.push([
            String::new(),
            format!("txn/s, {label}"),
            String::new(),
            String::new(),
            thousands(rate as u64),
            format!(
                "{:.0} % of pg_recvlogical ({:.0} % of nothing)",
                of_recv * 100.0,
                share(rate, w.none) * 100.0
            ),
            format!("≥ {:.0} % of pg_recvlogical", MIN_WRITER_SHARE * 100.0),
            met(Some(of_recv >= MIN_WRITER_SHARE)),
        ]);
    }
    rows
}

fn share(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn cpu_secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Server CPU (calendar-sync's backends and walsender against the
/// reference's), and calendar-sync's own CPU per row, for `rows` row changes.
/// `recv`: pg_recvlogical's walsender (none for the snapshot).
pub fn cpu_rows(
    rows: u64,
    recv: Option<Option<ServerCpu>>,
    set_based: Option<Duration>,
    sync: Option<ServerCpu>,
    own: Option<Duration>,
) -> Vec<Row> {
    let ratio = match (sync, set_based) {
        (Some(s), Some(r)) if !r.is_zero() => Some(s.total().as_secs_f64() / r.as_secs_f64()),
        _ => None,
    };
    let per_row = |d: Duration| d.as_secs_f64() * 1e6 / rows.max(1) as f64;
    vec![
        [
            String::new(),
            "server CPU".into(),
            match recv {
                None => "—".into(),
                Some(Some(c)) => format!("{} (walsender)", cpu_secs(c.walsenders)),
                Some(None) => "?".into(),
            },
            set_based
                .map(|d| format!("{} (backend)", cpu_secs(d)))
                .unwrap_or_else(|| "?".into()),
            sync.map(|c| {
                format!(
                    "{}: backends {} + walsender {} ({} processes)",
                    cpu_secs(c.total()),
                    cpu_secs(c.backends),
                    cpu_secs(c.walsenders),
                    c.processes
                )
            })
            .unwrap_or_else(|| "?".into()),
            ratio.map(|r| format!("{r:.2}x SQL")).unwrap_or_default(),
            format!("≤ {MAX_CPU_RATIO}x SQL"),
            met(ratio.map(|r| r <= MAX_CPU_RATIO)),
        ],
        [
            String::new(),
            "server CPU per row".into(),
            match recv {
                Some(Some(c)) => format!("{:.1} µs", per_row(c.walsenders)),
                _ => String::new(),
            },
            set_based
                .map(|d| format!("{:.1} µs", per_row(d)))
                .unwrap_or_default(),
            sync.map(|c| format!("{:.1} µs", per_row(c.total())))
                .unwrap_or_default(),
            String::new(),
            String::new(),
            String::new(),
        ],
        [
            String::new(),
            "calendar-sync process CPU".into(),
            String::new(),
            String::new(),
            own.map(|d| format!("{}, {:.1} µs/row", cpu_secs(d), per_row(d)))
                .unwrap_or_else(|| "?".into()),
            String::new(),
            String::new(),
            String::new(),
        ],
    ]
}
