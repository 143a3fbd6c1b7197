//! Reading a `calendar_events` row back as a [`StoredEvent`].

use chrono::{DateTime, NaiveTime, Utc};
use tokio_postgres::types::PgLsn;
use tokio_postgres::Row;

use super::columns::EventColumn as C;
use super::plan::StoredEvent;
use crate::lsn::Lsn;
use crate::mapping::{EventFields, EventStatus};

/// Reads a row selected with `sql::EVENT_COLUMNS`, each field by its
/// column's name ([`C`]).
pub(crate) fn event_from_row(r: &Row) -> Result<StoredEvent, tokio_postgres::Error> {
    let status: Option<String> = r.try_get(C::EventStatus.name())?;
    let start: Option<NaiveTime> = r.try_get(C::StartTime.name())?;
    let participants: Option<Vec<String>> = r.try_get(C::Participants.name())?;
    let event_date: DateTime<Utc> = r.try_get(C::EventDate.name())?;
    let source_lsn: Option<PgLsn> = r.try_get("source_lsn")?;
    Ok(StoredEvent {
        event_id: r.try_get("event_id")?,
        fields: EventFields {
            title: r.try_get(C::Title.name())?,
            description: r.try_get(C::Description.name())?,
            event_date,
            start_time: start.unwrap_or_default(),
            end_time: r.try_get(C::EndTime.name())?,
            all_day: r
                .try_get::<_, Option<bool>>(C::AllDay.name())?
                .unwrap_or(false),
            event_type: r.try_get(C::EventType.name())?,
            event_status: EventStatus::from_db(status.as_deref()),
            location: r.try_get(C::Location.name())?,
            participants: participants.unwrap_or_default(),
            created_by: r.try_get(C::CreatedBy.name())?,
            updated_by: r.try_get(C::UpdatedBy.name())?,
            created_at: r.try_get(C::CreatedAt.name())?,
            updated_at: r.try_get(C::UpdatedAt.name())?,
            customer_id: r.try_get(C::CustomerId.name())?,
            contact_id: r.try_get(C::ContactId.name())?,
        },
        source_lsn: source_lsn.map(Lsn::from),
    })
}
