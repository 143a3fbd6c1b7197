//! Reading and writing one `calendar_events` row for a decision.

use chrono::{DateTime, NaiveTime, Utc};
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Applier, ChangeError, TxnState};
use crate::error::SyncError;
use crate::lsn::Lsn;
use crate::mapping::{Action, Decision, EventFields, EventStatus};
use crate::metrics::Status;

impl Applier {
    /// Writes one decision. Returns the logged action; `None` when nothing was written.
    pub(super) async fn write(
        &mut self,
        id: Uuid,
        decision: Decision,
        existing: Option<(Uuid, EventFields)>,
        lsn: Lsn,
    ) -> Result<Option<Action>, ChangeError> {
        let pg_lsn = PgLsn::from(lsn);
        let (action, event_id, by) = match decision {
            Decision::Skip(skip) => {
                tracing::trace!(interaction = %id, ?skip, "nothing to write");
                return Ok(None);
            }
            Decision::Create(f) => {
                let r = self
                    .target
                    .query_one(&self.t.insert_event, &event_params(&f, &id, &pg_lsn))
                    .await?;
                (
                    Action::Create,
                    r.get::<_, Uuid>(0),
                    f.updated_by.unwrap_or(f.created_by),
                )
            }
            Decision::Update { action, fields: f } => {
                let Some((event_id, _)) = existing else {
                    return Err(ChangeError::Batch(SyncError::fatal(
                        "decided an update without an event",
                        "this is a bug: report it",
                    )));
                };
                let n = self
                    .target
                    .execute(&self.t.update_event, &event_params(&f, &event_id, &pg_lsn))
                    .await?;
                if n == 0 {
                    tracing::warn!(interaction = %id, lsn = %lsn, "refused to overwrite an event written by a later source transaction");
                    return Ok(None);
                }
                (action, event_id, f.updated_by.unwrap_or(f.created_by))
            }
            Decision::Delete => {
                let Some((event_id, f)) = existing else {
                    return Err(ChangeError::Batch(SyncError::fatal(
                        "decided a delete without an event",
                        "this is a bug: report it",
                    )));
                };
                self.target
                    .execute(&self.t.delete_event, &[&event_id])
                    .await?;
                (
                    Action::Delete,
                    event_id,
                    f.updated_by.unwrap_or(f.created_by),
                )
            }
        };
        self.log(id, Some(event_id), action, Status::Success, None, by, lsn)
            .await?;
        if action != Action::Delete && self.write_synced_at {
            // Stamped once per batch at commit (see `Applier::stamp`).
            if let TxnState::Open { synced, .. } = &mut self.state {
                synced.push(id);
            }
        }
        Ok(Some(action))
    }
}

/// The parameters of `insert_event` and `update_event`: the mapped fields,
/// then `key` (the interaction id to insert, or the event id to update), then
/// the source LSN.
fn event_params<'a>(
    f: &'a EventFields,
    key: &'a Uuid,
    lsn: &'a PgLsn,
) -> [&'a (dyn ToSql + Sync); 18] {
    [
        &f.title,
        &f.description,
        &f.event_date,
        &f.start_time,
        &f.end_time,
        &f.all_day,
        &f.event_type,
        f.event_status.as_db(),
        &f.location,
        &f.participants,
        &f.created_by,
        &f.updated_by,
        &f.created_at,
        &f.updated_at,
        &f.customer_id,
        &f.contact_id,
        key,
        lsn,
    ]
}

/// Reads `(event_id, mapped fields)` from a row selected with `EVENT_COLUMNS`.
pub(super) fn event_from_row(r: &Row) -> Result<(Uuid, EventFields), tokio_postgres::Error> {
    let status: Option<String> = r.try_get("event_status")?;
    let start: Option<NaiveTime> = r.try_get("start_time")?;
    let participants: Option<Vec<String>> = r.try_get("participants")?;
    let event_date: DateTime<Utc> = r.try_get("event_date")?;
    Ok((
        r.try_get("event_id")?,
        EventFields {
            title: r.try_get("title")?,
            description: r.try_get("description")?,
            event_date,
            start_time: start.unwrap_or_default(),
            end_time: r.try_get("end_time")?,
            all_day: r.try_get::<_, Option<bool>>("all_day")?.unwrap_or(false),
            event_type: r.try_get("event_type")?,
            event_status: EventStatus::from_db(status.as_deref()),
            location: r.try_get("location")?,
            participants: participants.unwrap_or_default(),
            created_by: r.try_get("created_by")?,
            updated_by: r.try_get("updated_by")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            customer_id: r.try_get("customer_id")?,
            contact_id: r.try_get("contact_id")?,
        },
    ))
}
