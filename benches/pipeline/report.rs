//! The printed result: one table (plain text, then the same as markdown for
//! the README) with the references, ratios and goals, the machine, and the
//! details behind each number.

use std::fmt::Write as _;
use std::time::Duration;

use crate::process::Outcome;
use crate::scenario::{CatchUp, Snapshot, Steady, Writer};
use crate::setup::{load_average, Machine};
use crate::workload::{Backlog, Spill};
use crate::Args;

pub type Scenario<T> = Option<Result<T, String>>;

pub struct Report {
    args: Args,
    machine: Machine,
    pub backlog: Scenario<CatchUp>,
    pub large: Scenario<CatchUp>,
    pub wide: Scenario<CatchUp>,
    pub snapshot: Scenario<Snapshot>,
    pub steady: Scenario<Steady>,
    pub writer: Scenario<Writer>,
}

const HEAD: [&str; 8] = [
    "scenario",
    "measure",
    "pg_recvlogical",
    "set-based SQL",
    "calendar-sync",
    "ratio",
    "goal",
    "met",
];

/// Catch-up and snapshot goals (issue 7).
const MAX_RATIO: f64 = 1.5;
const MIN_ROWS_PER_SEC: f64 = 20_000.0;
const MAX_RSS_MIB: f64 = 100.0;
const MAX_P99_MS: f64 = 100.0;
const MIN_WRITER_SHARE: f64 = 0.90;

pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.2} s")
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn mib(bytes: u64) -> String {
    if bytes < 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / 1024.0 / 1024.0)
    }
}

/// Below this, `pg_replslot/` holds only the slots' `state` files: nothing spilled.
const NO_SPILL: u64 = 1024 * 1024;

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Done(d) => secs(*d),
        Outcome::TimedOut { after, .. } => format!("timed out after {}", secs(*after)),
        Outcome::Failed(_) => "failed (see notes)".into(),
    }
}

fn rate(rows: u64, o: &Outcome) -> String {
    o.time()
        .map(|d| {
            format!(
                "{} rows/s",
                thousands((rows as f64 / d.as_secs_f64()) as u64)
            )
        })
        .unwrap_or_default()
}

fn met(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "?".into(),
    }
}

fn spill(s: &Spill) -> String {
    format!(
        "{} txns spilled {} times, {} (of {} txns)",
        thousands(s.txns.max(0) as u64),
        thousands(s.count.max(0) as u64),
        mib(s.bytes.max(0) as u64),
        thousands(s.total_txns.max(0) as u64)
    )
}

type Row = [String; 8];

fn row(cells: [&str; 8]) -> Row {
    cells.map(str::to_string)
}

impl Report {
    pub fn new(args: &Args, machine: Machine) -> Report {
        Report {
            args: args.clone(),
            machine,
            backlog: None,
            large: None,
            wide: None,
            snapshot: None,
            steady: None,
            writer: None,
        }
    }

    fn rows(&self, notes: &mut Vec<String>) -> Vec<Row> {
        let mut rows = Vec::new();
        let mut failed = |rows: &mut Vec<Row>, name: &str, e: &str| {
            rows.push(row([name, "", "", "", "failed (see notes)", "", "", ""]));
            notes.push(format!("{name}: {e}"));
        };
        for (n, c) in [(1, &self.backlog), (2, &self.large), (6, &self.wide)] {
            let name = match (n, c) {
                (1, _) => "1. catch-up",
                (2, _) => "2. one large txn",
                _ => "6. wide rows",
            };
            match c {
                None => {}
                Some(Err(e)) => failed(&mut rows, name, e),
                Some(Ok(c)) => rows.extend(self.catch_up_rows(n, c)),
            }
        }
        match &self.snapshot {
            None => {}
            Some(Err(e)) => failed(&mut rows, "3. snapshot", e),
            Some(Ok(s)) => rows.extend(snapshot_rows(s)),
        }
        match &self.steady {
            None => {}
            Some(Err(e)) => failed(&mut rows, "4. steady state", e),
            Some(Ok(s)) => rows.extend(steady_rows(s)),
        }
        match &self.writer {
            None => {}
            Some(Err(e)) => failed(&mut rows, "5. CRM writer", e),
            Some(Ok(w)) => rows.extend(writer_rows(w)),
        }
        rows
    }

    fn catch_up_rows(&self, n: u8, c: &CatchUp) -> Vec<Row> {
        let rows_n = c.shape.rows();
        let title = match c.shape {
            Backlog::Txns { txns, per } => format!(
                "1. catch-up: {} rows in {} txns of {per}",
                thousands(rows_n),
                thousands(txns)
            ),
            Backlog::One { rows } => format!("2. one txn of {} rows", thousands(rows)),
            Backlog::Wide { rows } => format!(
                "6. one txn of {} rows with 100 kB descriptions",
                thousands(rows)
            ),
        };
        let ratio = match (c.sync.time(), c.set_based.time()) {
            (Some(s), Some(r)) => Some(s.as_secs_f64() / r.as_secs_f64()),
            _ => None,
        };
        let per_sec = c.sync.time().map(|d| rows_n as f64 / d.as_secs_f64());
        let large = n == 2 || n == 6;
        // VmHWM can read a little below a sampled VmRSS; take the larger.
        let rss = c
            .sync_hwm_kib
            .map(|k| k.max(c.sync_peaks.rss_kib) as f64 / 1024.0);
        let subtxns = match c.savepoints {
            Some(s) => format!("{} savepoints (metric)", thousands(s as u64)),
            None => format!(
                "{} xids for {} txns applied",
                thousands(c.xids.max(0) as u64),
                c.txns_applied
                    .map(|t| thousands(t as u64))
                    .unwrap_or_else(|| "?".into())
            ),
        };
        vec![
            [
                title,
                "time".into(),
                outcome(&c.recv),
                outcome(&c.set_based),
                outcome(&c.sync),
                ratio.map(|r| format!("{r:.1}x SQL")).unwrap_or_default(),
                format!("≤ {MAX_RATIO}x SQL"),
                met(ratio.map(|r| r <= MAX_RATIO)),
            ],
            [
                String::new(),
                "rows/s".into(),
                rate(rows_n, &c.recv),
                rate(rows_n, &c.set_based),
                rate(rows_n, &c.sync),
                String::new(),
                format!("≥ {} rows/s", thousands(MIN_ROWS_PER_SEC as u64)),
                met(per_sec.map(|r| r >= MIN_ROWS_PER_SEC)),
            ],
            [
                String::new(),
                "peak RSS (VmHWM)".into(),
                String::new(),
                String::new(),
                rss.map(|m| format!("{m:.1} MiB"))
                    .unwrap_or_else(|| "?".into()),
                String::new(),
                if large {
                    format!("< {MAX_RSS_MIB} MiB")
                } else {
                    String::new()
                },
                if large {
                    met(rss.map(|m| m < MAX_RSS_MIB))
                } else {
                    String::new()
                },
            ],
            [
                String::new(),
                "pg_replslot/ peak".into(),
                mib(c.recv_replslot),
                String::new(),
                mib(c.sync_peaks.replslot_bytes),
                if c.recv_replslot >= NO_SPILL {
                    format!(
                        "{:.1}x own spill",
                        c.sync_peaks.replslot_bytes as f64 / c.recv_replslot as f64
                    )
                } else {
                    String::new()
                },
                if large {
                    "≤ own spill".into()
                } else {
                    String::new()
                },
                if large {
                    met(Some(
                        c.sync_peaks.replslot_bytes <= c.recv_replslot.max(NO_SPILL),
                    ))
                } else {
                    String::new()
                },
            ],
            [
                String::new(),
                "subtransactions".into(),
                String::new(),
                String::new(),
                subtxns,
                String::new(),
                String::new(),
                String::new(),
            ],
        ]
    }

    pub fn render(&self) -> String {
        let mut notes = Vec::new();
        let rows = self.rows(&mut notes);
        self.details(&mut notes);
        let m = &self.machine;
        let machine = format!(
            "{} CPUs ({}), {:.1} GiB RAM, load average {} at the start, {} at the end; \
             PostgreSQL {} ({}); calendar-sync {}",
            m.nproc,
            m.cpu,
            m.mem_gib,
            m.load_at_start,
            load_average(),
            m.pg,
            m.settings,
            m.commit
        );
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n# calendar-sync pipeline bench: size {} row changes\n",
            thousands(self.args.size)
        );
        out.push_str(&text_table(&rows));
        let _ = writeln!(out, "\nmachine: {machine}");
        let _ = writeln!(
            out,
            "pg_replslot/ peak: bytes under pg_replslot/ sampled every 100 ms while each consumer \
             ran (own spill = pg_recvlogical's); under 1 MiB counts as no spill. \
             calendar-sync times run from process start (connect, slot, decode, apply, confirm) \
             until its slot's confirmed_flush_lsn passes the last source commit (1, 2) or the \
             snapshot's progress row commits (3); defaults: window 30 days, UTC, stamping on."
        );
        for n in &notes {
            let _ = writeln!(out, "- {n}");
        }
        let _ = writeln!(out, "\n## markdown\n");
        out.push_str(&markdown_table(&rows));
        let _ = writeln!(
            out,
            "\nSize {} row changes; {machine}.",
            thousands(self.args.size)
        );
        out
    }

    fn details(&self, notes: &mut Vec<String>) {
        for (name, c) in [("1", &self.backlog), ("2", &self.large), ("6", &self.wide)] {
            let Some(Ok(c)) = c else { continue };
            notes.push(format!(
                "{name}: backlog written by the CRM in {}; calendar-sync had committed it \
                 (calendar_sync_progress) after {}; {} events in calendar_events; peak VmRSS \
                 sampled {:.1} MiB",
                secs(c.written),
                c.sync_applied.map(secs).unwrap_or_else(|| "-".into()),
                thousands(c.events.max(0) as u64),
                c.sync_peaks.rss_kib as f64 / 1024.0
            ));
            if c.savepoints.is_none() {
                notes.push(format!(
                    "{name}: subtransactions: the binary has no calendar_sync_savepoints_total \
                     metric; shown instead are the transaction ids assigned while it caught up \
                     (top-level transactions + subtransactions that wrote) next to the source \
                     transactions it applied (calendar_sync_transactions_applied_total)"
                ));
            }
            notes.push(format!(
                "{name}: pg_stat_replication_slots: pg_recvlogical's slot {}; calendar-sync's slot \
                 {} (it also decodes calendar-sync's own writes to this database)",
                spill(&c.recv_spill),
                spill(&c.sync_spill)
            ));
            for (who, o) in [
                ("pg_recvlogical", &c.recv),
                ("set-based SQL", &c.set_based),
                ("calendar-sync", &c.sync),
            ] {
                match o {
                    Outcome::TimedOut { after, progress } => notes.push(format!(
                        "{name}: {who} timed out after {}: {progress}",
                        secs(*after)
                    )),
                    Outcome::Failed(e) => notes.push(format!("{name}: {who} failed: {e}")),
                    Outcome::Done(_) => {}
                }
            }
        }
        if let Some(Ok(s)) = &self.snapshot {
            notes.push(format!(
                "3: {} events in calendar_events after calendar-sync's snapshot",
                thousands(s.events.max(0) as u64)
            ));
            for (who, o) in [("set-based SQL", &s.set_based), ("calendar-sync", &s.sync)] {
                match o {
                    Outcome::TimedOut { after, progress } => notes.push(format!(
                        "3: {who} timed out after {}: {progress}",
                        secs(*after)
                    )),
                    Outcome::Failed(e) => notes.push(format!("3: {who} failed: {e}")),
                    Outcome::Done(_) => {}
                }
            }
        }
        if let Some(Ok(s)) = &self.steady {
            notes.push(format!(
                "4: {} single-row txns in {:.1} s ({:.0}/s of {:.0} asked); latency = first poll \
                 (every 2 ms) showing the event minus the writer's commit returning",
                thousands(s.written),
                s.secs,
                s.achieved_rate,
                s.rate
            ));
        }
        if let Some(Ok(w)) = &self.writer {
            notes.push(format!(
                "5: 2 connections, {:.0} s each variant, each on a fresh database; calendar-sync's \
                 lag at the end: stamping on {}, off {}",
                w.secs,
                mib(w.stamping_on.1.max(0) as u64),
                mib(w.stamping_off.1.max(0) as u64)
            ));
        }
    }
}

fn snapshot_rows(s: &Snapshot) -> Vec<Row> {
    let ratio = match (s.sync.time(), s.set_based.time()) {
        (Some(a), Some(b)) => Some(a.as_secs_f64() / b.as_secs_f64()),
        _ => None,
    };
    let per_sec = s.sync.time().map(|d| s.rows as f64 / d.as_secs_f64());
    vec![
        [
            format!("3. snapshot of {} rows", thousands(s.rows)),
            "time".into(),
            "—".into(),
            outcome(&s.set_based),
            outcome(&s.sync),
            ratio.map(|r| format!("{r:.1}x SQL")).unwrap_or_default(),
            format!("≤ {MAX_RATIO}x SQL"),
            met(ratio.map(|r| r <= MAX_RATIO)),
        ],
        [
            String::new(),
            "rows/s".into(),
            String::new(),
            rate(s.rows, &s.set_based),
            rate(s.rows, &s.sync),
            String::new(),
            format!("≥ {} rows/s", thousands(MIN_ROWS_PER_SEC as u64)),
            met(per_sec.map(|r| r >= MIN_ROWS_PER_SEC)),
        ],
        [
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

fn steady_rows(s: &Steady) -> Vec<Row> {
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

fn writer_rows(w: &Writer) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, (label, (rate, _lag))) in [
        ("stamping on", w.stamping_on),
        ("stamping off", w.stamping_off),
    ]
    .into_iter()
    .enumerate()
    {
        let share = if w.none > 0.0 { rate / w.none } else { 0.0 };
        rows.push([
            if i == 0 {
                "5. CRM writer, 2 conns".into()
            } else {
                String::new()
            },
            format!("txn/s, {label}"),
            "—".into(),
            format!("{} (nothing consuming)", thousands(w.none as u64)),
            thousands(rate as u64),
            format!("{:.0} %", share * 100.0),
            format!("≥ {:.0} %", MIN_WRITER_SHARE * 100.0),
            met(Some(share >= MIN_WRITER_SHARE)),
        ]);
    }
    rows
}

fn text_table(rows: &[Row]) -> String {
    let mut widths = HEAD.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (c, w) in cells.iter().zip(widths) {
            let pad = w - c.chars().count();
            s.push_str(c);
            s.push_str(&" ".repeat(pad + 2));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&HEAD.map(str::to_string));
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn markdown_table(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n", HEAD.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(HEAD.len())));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}
