//! The printed result: one table (plain text, then the same as markdown for
//! the README) with the references, ratios and goals, the machine, and the
//! details behind each number.

use std::fmt::Write as _;

use crate::process::Outcome;
use crate::rows::{snapshot_rows, steady_rows, writer_rows, Costs, MAX_RSS_MIB};
use crate::scenario::{CatchUp, Snapshot, Steady};
use crate::setup::{load_average, Machine};
use crate::table::{markdown_table, met, mib, row, spill, text_table, thousands};
use crate::table::{Row, NO_SPILL};
use crate::workload::Backlog;
use crate::writer::Writer;
use crate::Args;

pub use crate::table::secs;

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
        let costs = Costs {
            title,
            rows: rows_n,
            recv: Some((&c.recv, c.recv_cpu)),
            set_based: &c.set_based,
            set_based_cpu: c.set_based_cpu,
            sync: &c.sync,
            sync_cpu: c.sync_cpu,
            sync_own_cpu: c.sync_own_cpu,
            stamp_ref: c.stamp_ref,
        };
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
        let mut rows = costs.time_rows();
        rows.extend([
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
        ]);
        rows.extend(costs.cost_rows());
        rows
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
            "\n# calendar-sync pipeline bench: size {} row changes, fsync {}\n",
            thousands(self.args.size),
            if self.args.fsync { "on" } else { "off" }
        );
        out.push_str(&text_table(&rows));
        let _ = writeln!(out, "\nmachine: {machine}");
        let _ = writeln!(
            out,
            "pg_replslot/ peak: bytes under pg_replslot/ sampled every 100 ms while each consumer \
             ran (own spill = pg_recvlogical's); under 1 MiB counts as no spill. \
             calendar-sync times run from process start (connect, slot, decode, apply, confirm) \
             until its slot's confirmed_flush_lsn passes the last source commit (1, 2) or the \
             snapshot's progress row commits (3); defaults: window 30 days, UTC, stamping on. \
             Scenario 3 snapshots all `size` rows. Server CPU: utime + stime (/proc/<pid>/stat) \
             of the server processes of calendar-sync's sessions (backends and walsender, \
             sampled every 50 ms until the end of the measurement; the stamp session's stamps \
             after that point are not counted), of the set-based statement's backend, and of \
             pg_recvlogical's walsender; process CPU: calendar-sync's own utime + stime."
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
            let rounds: Vec<String> = w
                .rounds
                .iter()
                .map(|r| {
                    format!(
                        "{} / {} / {} / {}",
                        thousands(r[0] as u64),
                        thousands(r[1] as u64),
                        thousands(r[2] as u64),
                        thousands(r[3] as u64)
                    )
                })
                .collect();
            notes.push(format!(
                "5: 2 connections committing single-row inserts, {:.0} s each variant, each on a \
                 fresh database, {} interleaved rounds, medians shown; txn/s per round (nothing / \
                 pg_recvlogical / stamping on / off): {}; calendar-sync's lag at the end of the \
                 last round: stamping on {}, off {}",
                w.secs,
                w.rounds.len(),
                rounds.join("; "),
                mib(w.stamping_on.1.max(0) as u64),
                mib(w.stamping_off.1.max(0) as u64)
            ));
        }
    }
}
