//! The decision table of contract §2, one pure function.
//!
//! | change                       | event exists                                   | event missing                         |
//! |------------------------------|------------------------------------------------|---------------------------------------|
//! | upsert, `archived = false`   | mirror, `scheduled` (`update`)                 | create iff in window and subject/date |
//! | upsert, `archived = true`    | mirror, `cancelled` (`cancel` on change)       | nothing                               |
//! | delete                       | hard delete (`delete`)                         | nothing                               |
//!
//! The window gates creation only. An upsert that changes no mapped field
//! decides [`Skip::Unchanged`]: no write, no log row, no metric.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::fields::{self, EventFields, EventStatus};
use super::interaction::{InteractionRow, Toast};
use super::RowError;

/// The action written to `calendar_sync_log.action` and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Create,
    Update,
    Cancel,
    Delete,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Create,
        Action::Update,
        Action::Cancel,
        Action::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Cancel => "cancel",
            Action::Delete => "delete",
        }
    }
}

/// How an action ended: `calendar_sync_log.status` and the metrics' `status`
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 2] = [Outcome::Success, Outcome::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
        }
    }
}

/// Why nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Delete of an interaction that has no event.
    NoEvent,
    /// Archived interaction without an event: a cancelled event is never created.
    Archived,
    /// No event and `interaction_date < T - window`.
    OutsideWindow,
    /// No event and no subject or no date.
    MissingSubjectOrDate,
    /// The event already mirrors the interaction.
    Unchanged,
}

/// What to do to `calendar_events` for one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Create(EventFields),
    /// `action` is `Update` or `Cancel`.
    Update {
        action: Action,
        fields: EventFields,
    },
    Delete,
    Skip(Skip),
}

impl Decision {
    pub fn action(&self) -> Option<Action> {
        match self {
            Decision::Create(_) => Some(Action::Create),
            Decision::Update { action, .. } => Some(*action),
            Decision::Delete => Some(Action::Delete),
            Decision::Skip(_) => None,
        }
    }
}

/// One source change of an interaction, as `decide` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<'a> {
    /// INSERT or UPDATE, with the participants looked up at apply time.
    Upsert {
        row: &'a InteractionRow,
        participants: Vec<String>,
    },
    /// DELETE.
    Delete,
}

/// Decides the sync action for `change` at source commit time `commit_ts`.
///
/// `existing` is the event's current mapped fields. A TOAST-unchanged
/// description keeps `existing.description`; with no event, the caller must
/// have loaded the real description first ([`RowError::UnresolvedToast`]).
pub fn decide(
    change: &Change<'_>,
    existing: Option<&EventFields>,
    commit_ts: DateTime<Utc>,
    window: chrono::Duration,
    tz: Tz,
) -> Result<Decision, RowError> {
    let (row, participants) = match change {
        Change::Delete => {
            return Ok(match existing {
                Some(_) => Decision::Delete,
                None => Decision::Skip(Skip::NoEvent),
            })
        }
        Change::Upsert { row, participants } => (*row, participants),
    };
    match existing {
        Some(current) => {
            let fields = event_fields(row, participants, Some(current), tz)?;
            if fields == *current {
                return Ok(Decision::Skip(Skip::Unchanged));
            }
            let action = if fields.event_status == EventStatus::Cancelled
                && current.event_status != EventStatus::Cancelled
            {
                Action::Cancel
            } else {
                Action::Update
            };
            Ok(Decision::Update { action, fields })
        }
        None => {
            if row.archived {
                return Ok(Decision::Skip(Skip::Archived));
            }
            let Some(date) = row.interaction_date.filter(|_| row.subject.is_some()) else {
                return Ok(Decision::Skip(Skip::MissingSubjectOrDate));
            };
            let window_start = commit_ts
                .checked_sub_signed(window)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            if date < window_start {
                return Ok(Decision::Skip(Skip::OutsideWindow));
            }
            Ok(Decision::Create(event_fields(row, participants, None, tz)?))
        }
    }
}

/// The mapped fields of the event for `row` (contract §3).
pub fn event_fields(
    row: &InteractionRow,
    participants: &[String],
    existing: Option<&EventFields>,
    tz: Tz,
) -> Result<EventFields, RowError> {
    let title = row
        .subject
        .clone()
        .ok_or(RowError::Null { column: "subject" })?;
    let date = row.interaction_date.ok_or(RowError::Null {
        column: "interaction_date",
    })?;
    let description = match (&row.description, existing) {
        (Toast::Value(v), _) => v.clone(),
        (Toast::Unchanged, Some(e)) => e.description.clone(),
        (Toast::Unchanged, None) => return Err(RowError::UnresolvedToast),
    };
    Ok(EventFields {
        title,
        description,
        event_date: date,
        start_time: fields::start_time(date, tz),
        end_time: fields::end_time(date, row.duration_minutes, tz)?,
        all_day: fields::all_day(row.duration_minutes),
        event_type: row.interaction_type.clone(),
        event_status: if row.archived {
            EventStatus::Cancelled
        } else {
            EventStatus::Scheduled
        },
        location: row.location.clone(),
        participants: participants.to_vec(),
        created_by: row.created_by,
        updated_by: row.updated_by,
        created_at: row.created_at,
        updated_at: row.updated_at,
        customer_id: row.customer_id,
        contact_id: row.contact_id,
    })
}

#[cfg(test)]
mod tests;
