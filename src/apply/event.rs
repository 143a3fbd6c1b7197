//! Reading a `calendar_events` row back as a [`StoredEvent`].

use chrono::{DateTime, NaiveTime, Utc};
use tokio_postgres::types::PgLsn;
use tokio_postgres::Row;

use super::plan::StoredEvent;
use crate::lsn::Lsn;
use crate::mapping::{EventFields, EventStatus};

/// Reads a row selected with `sql::EVENT_COLUMNS`.
pub(crate) fn event_from_row(r: &Row) -> Result<StoredEvent, tokio_postgres::Error> {
    let status: Option<String> = r.try_get("event_status")?;
    let start: Option<NaiveTime> = r.try_get("start_time")?;
    let participants: Option<Vec<String>> = r.try_get("participants")?;
    let event_date: DateTime<Utc> = r.try_get("event_date")?;
    let source_lsn: Option<PgLsn> = r.try_get("source_lsn")?;
    Ok(StoredEvent {
        event_id: r.try_get("event_id")?,
        fields: EventFields {
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
        source_lsn: source_lsn.map(Lsn::from),
    })
}
