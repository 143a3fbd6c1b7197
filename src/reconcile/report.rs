//! What `reconcile` found and did: the [`Report`], its exit code, its text
//! form (stderr) and its JSON form (`--json`, stable keys).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::FIELDS;

/// What `reconcile` found and did. Its JSON form is stable: every key is
/// always present, `fields` has every name of [`FIELDS`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// Interactions read.
    pub interactions: u64,
    /// Interaction events read (the extra-event pass).
    pub events: u64,
    pub missing: u64,
    pub extra: u64,
    pub drifted: u64,
    /// Drifted events per differing field.
    pub fields: BTreeMap<&'static str, u64>,
    pub invalid: u64,
    /// Successful writes (log rows with status `success`).
    pub repaired: u64,
    /// Repairs that failed (recorded in the failure queue).
    pub failed: u64,
}

impl Report {
    pub(super) fn new(dry_run: bool) -> Report {
        Report {
            dry_run,
            interactions: 0,
            events: 0,
            missing: 0,
            extra: 0,
            drifted: 0,
            fields: FIELDS.iter().map(|f| (*f, 0)).collect(),
            invalid: 0,
            repaired: 0,
            failed: 0,
        }
    }

    /// Missing, extra and drifted events.
    pub fn drift(&self) -> u64 {
        self.missing + self.extra + self.drifted
    }

    /// 0: no drift, or all of it repaired; 1: drift found by `--dry-run`, or
    /// left after a repair (failures). Errors are 2 (main).
    pub fn exit_code(&self) -> u8 {
        let left = if self.dry_run {
            self.drift()
        } else {
            self.failed
        };
        u8::from(left > 0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "reconcile{}: {} interactions, {} interaction events checked",
            if self.dry_run { " (dry run)" } else { "" },
            self.interactions,
            self.events
        )?;
        let fields: Vec<String> = self
            .fields
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "missing {}, extra {}, drifted {}{}, invalid {}",
            self.missing,
            self.extra,
            self.drifted,
            if fields.is_empty() {
                String::new()
            } else {
                format!(" ({})", fields.join(", "))
            },
            self.invalid
        )?;
        write!(f, "repaired {}, failed {}", self.repaired, self.failed)
    }
}
