//! Formatting of the report's cells, and its two renderings: a plain-text
//! table and the same as markdown for the README.

use std::time::Duration;

use crate::process::Outcome;
use crate::workload::Spill;

pub const HEAD: [&str; 8] = [
    "scenario",
    "measure",
    "pg_recvlogical",
    "set-based SQL",
    "calendar-sync",
    "ratio",
    "goal",
    "met",
];

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

pub fn thousands(n: u64) -> String {
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

pub fn mib(bytes: u64) -> String {
    if bytes < 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / 1024.0 / 1024.0)
    }
}

/// Below this, `pg_replslot/` holds only the slots' `state` files: nothing spilled.
pub const NO_SPILL: u64 = 1024 * 1024;

pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

pub fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Done(d) => secs(*d),
        Outcome::TimedOut { after, .. } => format!("timed out after {}", secs(*after)),
        Outcome::Failed(_) => "failed (see notes)".into(),
    }
}

pub fn rate(rows: u64, o: &Outcome) -> String {
    o.time()
        .map(|d| {
            format!(
                "{} rows/s",
                thousands((rows as f64 / d.as_secs_f64()) as u64)
            )
        })
        .unwrap_or_default()
}

pub fn met(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "?".into(),
    }
}

pub fn spill(s: &Spill) -> String {
    format!(
        "{} txns spilled {} times, {} (of {} txns)",
        thousands(s.txns.max(0) as u64),
        thousands(s.count.max(0) as u64),
        mib(s.bytes.max(0) as u64),
        thousands(s.total_txns.max(0) as u64)
    )
}

pub type Row = [String; 8];

pub fn row(cells: [&str; 8]) -> Row {
    cells.map(str::to_string)
}

pub fn text_table(rows: &[Row]) -> String {
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

pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n", HEAD.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(HEAD.len())));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}
