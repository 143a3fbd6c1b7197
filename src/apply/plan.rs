//! PURE: decides a chunk of interaction changes in memory, in LSN order, and
//! says which set-based writes make the target match.
//!
//! The chunk's existing events, open failures and participant names are read
//! first (one query each, see `apply::write`); then every change is decided by
//! [`mapping::decide`](crate::mapping::decide) against the state the changes
//! before it left, exactly as if each were applied alone (contract §7,
//! "Batching"). The same interaction may change several times in one chunk: the
//! event is written once, in its last state, while every action gets its own
//! log row.
//!
//! A TOAST-unchanged description can only be resolved from the event when the
//! event holds the interaction's last applied state. When there is no event,
//! or when a change of the interaction failed since the event was written (an
//! open failure, or one earlier in this chunk: issue 9, point 2), the
//! description is read from the source; [`plan`] then returns
//! [`Planned::NeedDescriptions`] and is run again with them.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

use crate::lsn::Lsn;
use crate::mapping::rules::{decide, Change};
use crate::mapping::Outcome;
use crate::mapping::{Action, Decision, EventFields, InteractionRow, RowError, Toast};
use crate::participants::participants;
use crate::participants::Party;

/// One change of an interaction, with the source transaction it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    /// Commit LSN of its source transaction (for the snapshot: the consistent
    /// point; for a retry: the source WAL position its state was read at).
    pub lsn: Lsn,
    /// The decision time T (contract §2).
    pub ts: DateTime<Utc>,
    pub id: Uuid,
    /// `None`: a DELETE. `Some(Err)`: a row that cannot be mapped.
    pub row: Option<Result<InteractionRow, RowError>>,
}

impl RowChange {
    /// Rough in-memory size, for the batch's byte bound.
    pub fn bytes(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        160 + match &self.row {
            Some(Ok(r)) => {
                r.interaction_type.len()
                    + text(&r.subject)
                    + text(&r.location)
                    + match &r.description {
                        Toast::Value(d) => text(d),
                        Toast::Unchanged => 0,
                    }
            }
            _ => 0,
        }
    }
}

/// An event as stored, with its regression guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub event_id: Uuid,
    pub fields: EventFields,
    /// Commit LSN of the last change written to it; `None` after a new snapshot.
    pub source_lsn: Option<Lsn>,
}

impl StoredEvent {
    fn by(&self) -> Uuid {
        self.fields.updated_by.unwrap_or(self.fields.created_by)
    }
}

/// What the chunk's changes need to know of the target and the source.
#[derive(Debug, Default, Clone)]
pub struct Known {
    /// Existing events by interaction id (absent: no event).
    pub events: HashMap<Uuid, StoredEvent>,
    /// Interactions with an open failure.
    pub failing: HashSet<Uuid>,
    /// Participant display names (absent or `None`: no name).
    pub names: HashMap<(Party, Uuid), Option<String>>,
    /// Live descriptions read from the source (TOAST, see the module docs).
    pub descriptions: HashMap<Uuid, Option<String>>,
}

impl Known {
    fn name(&self, party: Party, id: Option<Uuid>) -> Option<String> {
        id.and_then(|id| self.names.get(&(party, id)).cloned().flatten())
    }

    /// Takes what a written plan left: the chunk's final events (moved, not
    /// copied: a chunk of large descriptions is held once) and failures.
    pub fn absorb(&mut self, plan: Plan) {
        for (id, event) in plan.finals {
            match event {
                Some(e) => self.events.insert(id, e),
                None => self.events.remove(&id),
            };
        }
        for f in &plan.failures {
            self.failing.insert(f.interaction_id);
        }
        for id in &plan.resolved {
            self.failing.remove(id);
        }
    }
}

/// One `calendar_sync_log` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub interaction_id: Uuid,
    pub event_id: Option<Uuid>,
    pub action: Action,
    pub status: Outcome,
    pub error: Option<String>,
    pub by: Uuid,
    pub lsn: Lsn,
}

/// An open failure to record (one per interaction and chunk: its last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRow {
    pub interaction_id: Uuid,
    pub action: Action,
    pub message: String,
}

/// The writes that make the target match the chunk, in statement order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub deletes: Vec<Uuid>,
    /// Indexes into `finals` of events to update in place.
    pub updates: Vec<usize>,
    /// Indexes into `finals` of events to insert (the interaction id is the
    /// final's key).
    pub inserts: Vec<usize>,
    pub log: Vec<LogRow>,
    pub failures: Vec<FailureRow>,
    /// Open failures to resolve: the interaction's last change here succeeded.
    pub resolved: Vec<Uuid>,
    /// Interactions to stamp (`calendar_synced_at`): created, updated or cancelled.
    pub stamps: Vec<Uuid>,
    /// Updates refused by the regression guard (an event written from a later LSN).
    pub refused: usize,
    /// The final event of every interaction the chunk touched.
    pub finals: Vec<(Uuid, Option<StoredEvent>)>,
}

impl Plan {
    /// `(interaction id, event)` of the events to insert.
    pub fn inserted(&self) -> impl Iterator<Item = (Uuid, &StoredEvent)> + '_ {
        self.inserts.iter().filter_map(|&i| {
            let (id, e) = self.finals.get(i)?;
            Some((*id, e.as_ref()?))
        })
    }

    /// The events to update in place.
    pub fn updated(&self) -> impl Iterator<Item = &StoredEvent> + '_ {
        self.updates
            .iter()
            .filter_map(|&i| self.finals.get(i)?.1.as_ref())
    }

    pub fn counts(&self) -> impl Iterator<Item = (Action, Outcome)> + '_ {
        self.log.iter().map(|l| (l.action, l.status))
    }
}

/// The outcome of [`plan`].
#[derive(Debug)]
pub enum Planned {
    Done(Plan),
    /// Read these interactions' descriptions from the source, then plan again.
    NeedDescriptions(Vec<Uuid>),
}

/// Where an interaction stands while the chunk is decided.
struct Standing {
    initial: Option<StoredEvent>,
    now: Option<StoredEvent>,
    /// A change of it failed since its event was last written.
    stale: bool,
    /// `Some(true)`: last change succeeded; `Some(false)`: failed.
    last_ok: Option<bool>,
    failure: Option<FailureRow>,
    stamp: bool,
}

/// Decides `changes` (in LSN order) against `known`. See the module docs.
pub fn plan(changes: &[RowChange], known: &Known, window: chrono::Duration, tz: Tz) -> Planned {
    let mut order: Vec<Uuid> = Vec::new();
    let mut state: HashMap<Uuid, Standing> = HashMap::new();
    let mut log = Vec::new();
    let mut refused = 0;
    let mut needs: Vec<Uuid> = Vec::new();

    for c in changes {
        let cur = state.entry(c.id).or_insert_with(|| {
            order.push(c.id);
            let initial = known.events.get(&c.id).cloned();
            Standing {
                now: initial.clone(),
                initial,
                stale: known.failing.contains(&c.id),
                last_ok: None,
                failure: None,
                stamp: false,
            }
        });
        let fail = |cur: &mut Standing, log: &mut Vec<LogRow>, action, message: String, by| {
            log.push(LogRow {
                interaction_id: c.id,
                event_id: cur.now.as_ref().map(|e| e.event_id),
                action,
                status: Outcome::Failed,
                error: Some(message.clone()),
                by,
                lsn: c.lsn,
            });
            cur.failure = Some(FailureRow {
                interaction_id: c.id,
                action,
                message,
            });
            cur.stale = true;
            cur.last_ok = Some(false);
        };
        let upsert_action = |cur: &Standing| {
            if cur.now.is_some() {
                Action::Update
            } else {
                Action::Create
            }
        };
        let row = match &c.row {
            None => {
                // DELETE: a true hard delete of the event, if there is one,
                // unless the event was written from a later position (a
                // reconcile delete at its settled position must not remove
                // an event the stream created after it; the stream's own
                // deletes always come after the event's last change).
                if cur
                    .now
                    .as_ref()
                    .is_some_and(|e| e.source_lsn.is_some_and(|l| l > c.lsn))
                {
                    refused += 1;
                    continue;
                }
                if let Some(e) = cur.now.take() {
                    log.push(LogRow {
                        interaction_id: c.id,
                        event_id: Some(e.event_id),
                        action: Action::Delete,
                        status: Outcome::Success,
                        error: None,
                        by: e.by(),
                        lsn: c.lsn,
                    });
                }
                cur.stale = false;
                cur.last_ok = Some(true);
                continue;
            }
            Some(Err(e)) => {
                let by = cur.now.as_ref().map_or(Uuid::nil(), StoredEvent::by);
                let action = upsert_action(cur);
                fail(cur, &mut log, action, e.to_string(), by);
                continue;
            }
            Some(Ok(row)) => row,
        };
        let by = row.updated_by.unwrap_or(row.created_by);
        let mut resolved;
        let mut row = row;
        if row.description == Toast::Unchanged && (cur.now.is_none() || cur.stale) {
            match known.descriptions.get(&c.id) {
                Some(d) => {
                    resolved = row.clone();
                    resolved.description = Toast::Value(d.clone());
                    row = &resolved;
                }
                None => {
                    needs.push(c.id);
                    continue;
                }
            }
        }
        let names = participants(
            known.name(Party::Customer, row.customer_id),
            known.name(Party::Contact, row.contact_id),
        );
        let change = Change::Upsert {
            row,
            participants: names,
        };
        let decision = decide(
            &change,
            cur.now.as_ref().map(|e| &e.fields),
            c.ts,
            window,
            tz,
        );
        match decision {
            Err(e) => {
                let action = upsert_action(cur);
                fail(cur, &mut log, action, e.to_string(), by);
                continue;
            }
            Ok(Decision::Create(fields)) => {
                let event = StoredEvent {
                    event_id: Uuid::new_v4(),
                    fields,
                    source_lsn: Some(c.lsn),
                };
                log.push(success(c, Some(event.event_id), Action::Create, by));
                cur.now = Some(event);
                cur.stamp = true;
            }
            Ok(Decision::Update { action, fields }) => {
                let Some(event) = cur.now.as_mut() else {
                    // decide() only updates an existing event.
                    continue;
                };
                if event.source_lsn.is_some_and(|l| l > c.lsn) {
                    refused += 1;
                } else {
                    event.fields = fields;
                    event.source_lsn = Some(c.lsn);
                    log.push(success(c, Some(event.event_id), action, by));
                    cur.stamp = true;
                }
            }
            Ok(Decision::Delete) | Ok(Decision::Skip(_)) => {}
        }
        cur.stale = false;
        cur.last_ok = Some(true);
    }
    if !needs.is_empty() {
        needs.sort();
        needs.dedup();
        return Planned::NeedDescriptions(needs);
    }

    let mut plan = Plan {
        log,
        refused,
        ..Plan::default()
    };
    for id in order {
        let Some(cur) = state.remove(&id) else {
            continue;
        };
        match (&cur.initial, &cur.now) {
            (None, None) => {}
            (None, Some(_)) => plan.inserts.push(plan.finals.len()),
            (Some(a), None) => plan.deletes.push(a.event_id),
            (Some(a), Some(b)) if a.event_id == b.event_id => {
                if a != b {
                    plan.updates.push(plan.finals.len());
                }
            }
            (Some(a), Some(_)) => {
                plan.deletes.push(a.event_id);
                plan.inserts.push(plan.finals.len());
            }
        }
        match cur.last_ok {
            Some(true) if known.failing.contains(&id) => plan.resolved.push(id),
            Some(false) => plan.failures.extend(cur.failure),
            _ => {}
        }
        if cur.stamp {
            plan.stamps.push(id);
        }
        plan.finals.push((id, cur.now));
    }
    Planned::Done(plan)
}

fn success(c: &RowChange, event_id: Option<Uuid>, action: Action, by: Uuid) -> LogRow {
    LogRow {
        interaction_id: c.id,
        event_id,
        action,
        status: Outcome::Success,
        error: None,
        by,
        lsn: c.lsn,
    }
}

#[cfg(test)]
mod tests;
