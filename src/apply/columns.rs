//! PURE: the mapped columns of `calendar_events`, in one table
//! ([`EventColumn`]): name, the SQL type each travels as, how it is written,
//! how two events compare on it. Everything that lists them comes from here:
//! the select lists, the `unnest` parameters and the insert and `SET` lists of
//! [`super::sql`], the statement parameters (`EventArrays`), the names
//! `event::event_from_row` reads, and `reconcile`'s drift fields.
//!
//! Nothing pairs a value with its column by position: a Rust value is chosen
//! for a column by a `match` on it, and the SQL numbers its parameters in the
//! order of the same table ([`EventParam::ALL`]). Neighbouring columns share
//! types (`title`/`event_type`, `created_by`/`updated_by`), so two of them
//! swapped in one positional list would compile, run and write wrong data;
//! the tests (`columns/tests.rs`) fail on any such swap.

use chrono::{DateTime, NaiveTime, Utc};
use tokio_postgres::types::{PgLsn, ToSql};
use uuid::Uuid;

use super::plan::StoredEvent;
use super::sql::array_literal;
use crate::mapping::EventFields;

/// A mapped column of `calendar_events`: a field of [`EventFields`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventColumn {
    Title,
    Description,
    EventDate,
    StartTime,
    EndTime,
    AllDay,
    EventType,
    EventStatus,
    Location,
    Participants,
    CreatedBy,
    UpdatedBy,
    CreatedAt,
    UpdatedAt,
    CustomerId,
    ContactId,
}

/// One row of the table.
struct Spec {
    name: &'static str,
    /// The element type of its `unnest` array parameter.
    param: &'static str,
    /// The cast from the parameter to the column.
    cast: &'static str,
}

const fn spec(name: &'static str, param: &'static str) -> Spec {
    Spec {
        name,
        param,
        cast: "",
    }
}

impl EventColumn {
    /// Every mapped column, in table order: the order of the statements'
    /// lists and parameters, and of `reconcile`'s fields (its `--json` report
    /// documents this order).
    pub const ALL: [EventColumn; 16] = [
        EventColumn::Title,
        EventColumn::Description,
        EventColumn::EventDate,
        EventColumn::StartTime,
        EventColumn::EndTime,
        EventColumn::AllDay,
        EventColumn::EventType,
        EventColumn::EventStatus,
        EventColumn::Location,
        EventColumn::Participants,
        EventColumn::CreatedBy,
        EventColumn::UpdatedBy,
        EventColumn::CreatedAt,
        EventColumn::UpdatedAt,
        EventColumn::CustomerId,
        EventColumn::ContactId,
    ];

    /// The names of [`Self::ALL`], in its order.
    pub const NAMES: [&'static str; EventColumn::ALL.len()] = {
        let mut names = [""; EventColumn::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = EventColumn::ALL[i].name();
            i += 1;
        }
        names
    };

    /// The table.
    const fn spec(self) -> Spec {
        match self {
            EventColumn::Title => spec("title", "text"),
            EventColumn::Description => spec("description", "text"),
            EventColumn::EventDate => spec("event_date", "timestamptz"),
            EventColumn::StartTime => spec("start_time", "time"),
            EventColumn::EndTime => spec("end_time", "time"),
            EventColumn::AllDay => spec("all_day", "bool"),
            EventColumn::EventType => spec("event_type", "text"),
            EventColumn::EventStatus => spec("event_status", "text"),
            EventColumn::Location => spec("location", "text"),
            // An array literal each (`sql::array_literal`): `unnest` of a
            // two-dimensional array would flatten it.
            EventColumn::Participants => Spec {
                name: "participants",
                param: "text",
                cast: "::text[]",
            },
            EventColumn::CreatedBy => spec("created_by", "uuid"),
            EventColumn::UpdatedBy => spec("updated_by", "uuid"),
            EventColumn::CreatedAt => spec("created_at", "timestamptz"),
            EventColumn::UpdatedAt => spec("updated_at", "timestamptz"),
            EventColumn::CustomerId => spec("customer_id", "uuid"),
            EventColumn::ContactId => spec("contact_id", "uuid"),
        }
    }

    /// The column's name in `calendar_events`.
    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    /// `a` and `b` differ in this column.
    pub fn differs(self, a: &EventFields, b: &EventFields) -> bool {
        match self {
            EventColumn::Title => a.title != b.title,
            EventColumn::Description => a.description != b.description,
            EventColumn::EventDate => a.event_date != b.event_date,
            EventColumn::StartTime => a.start_time != b.start_time,
            EventColumn::EndTime => a.end_time != b.end_time,
            EventColumn::AllDay => a.all_day != b.all_day,
            EventColumn::EventType => a.event_type != b.event_type,
            EventColumn::EventStatus => a.event_status != b.event_status,
            EventColumn::Location => a.location != b.location,
            EventColumn::Participants => a.participants != b.participants,
            EventColumn::CreatedBy => a.created_by != b.created_by,
            EventColumn::UpdatedBy => a.updated_by != b.updated_by,
            EventColumn::CreatedAt => a.created_at != b.created_at,
            EventColumn::UpdatedAt => a.updated_at != b.updated_at,
            EventColumn::CustomerId => a.customer_id != b.customer_id,
            EventColumn::ContactId => a.contact_id != b.contact_id,
        }
    }
}

/// One array parameter of the event writes (`sql::insert_events`,
/// `update_events`): the event id, the mapped columns, the regression guard,
/// the interaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventParam {
    EventId,
    Column(EventColumn),
    SourceLsn,
    RelatedId,
}

impl EventParam {
    /// In statement order: `$1` is the first.
    pub const ALL: [EventParam; EventColumn::ALL.len() + 3] = {
        let mut all = [EventParam::EventId; EventColumn::ALL.len() + 3];
        let mut i = 0;
        while i < EventColumn::ALL.len() {
            all[i + 1] = EventParam::Column(EventColumn::ALL[i]);
            i += 1;
        }
        all[i + 1] = EventParam::SourceLsn;
        all[i + 2] = EventParam::RelatedId;
        all
    };

    /// Its name in `as v(..)`, the name of the column it is written to.
    pub const fn name(self) -> &'static str {
        match self {
            EventParam::EventId => "event_id",
            EventParam::Column(c) => c.name(),
            EventParam::SourceLsn => "source_lsn",
            EventParam::RelatedId => "related_id",
        }
    }

    /// The element type of its array.
    pub const fn sql_type(self) -> &'static str {
        match self {
            EventParam::EventId | EventParam::RelatedId => "uuid",
            EventParam::Column(c) => c.spec().param,
            EventParam::SourceLsn => "pg_lsn",
        }
    }

    /// The value written to its column, from `v`.
    fn written(self) -> String {
        let cast = match self {
            EventParam::Column(c) => c.spec().cast,
            _ => "",
        };
        format!("v.{}{cast}", self.name())
    }
}

/// What an event row stores and is read back as: the event id, the mapped
/// columns, the regression guard (every parameter but `related_id`, which is
/// selected and written on its own).
fn stored() -> impl Iterator<Item = EventParam> {
    EventParam::ALL
        .into_iter()
        .filter(|p| *p != EventParam::RelatedId)
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// `event_id, title, .., contact_id, source_lsn`: the columns read back as a
/// [`StoredEvent`], and written by an insert.
pub fn stored_columns() -> String {
    join(stored().map(|p| p.name().to_string()))
}

/// `v.event_id, v.title, .., v.source_lsn`: the values of
/// [`stored_columns`] from [`unnest_params`].
pub fn stored_values() -> String {
    join(stored().map(EventParam::written))
}

/// `title = v.title, .., source_lsn = v.source_lsn`: an update of every
/// stored column but the event id, from [`unnest_params`].
pub fn update_assignments() -> String {
    join(
        stored()
            .filter(|p| *p != EventParam::EventId)
            .map(|p| format!("{} = {}", p.name(), p.written())),
    )
}

/// `unnest($1::uuid[], $2::text[], ..) as v(event_id, title, ..)`: the
/// parameters of the event writes, numbered in [`EventParam::ALL`] order,
/// which `EventArrays::params` binds.
pub fn unnest_params() -> String {
    let arrays = join(
        EventParam::ALL
            .iter()
            .enumerate()
            .map(|(i, p)| format!("${}::{}[]", i + 1, p.sql_type())),
    );
    let names = join(EventParam::ALL.iter().map(|p| p.name().to_string()));
    format!("unnest({arrays})\n     as v({names})")
}

/// The parameters of the event writes, column by column.
pub(super) struct EventArrays<'a> {
    event_id: Vec<Uuid>,
    title: Vec<&'a str>,
    description: Vec<Option<&'a str>>,
    event_date: Vec<DateTime<Utc>>,
    start_time: Vec<NaiveTime>,
    end_time: Vec<Option<NaiveTime>>,
    all_day: Vec<bool>,
    event_type: Vec<&'a str>,
    event_status: Vec<&'static str>,
    location: Vec<Option<&'a str>>,
    participants: Vec<String>,
    created_by: Vec<Uuid>,
    updated_by: Vec<Option<Uuid>>,
    created_at: Vec<Option<DateTime<Utc>>>,
    updated_at: Vec<Option<DateTime<Utc>>>,
    customer_id: Vec<Option<Uuid>>,
    contact_id: Vec<Option<Uuid>>,
    source_lsn: Vec<Option<PgLsn>>,
    related_id: Vec<Uuid>,
}

impl<'a> EventArrays<'a> {
    /// `rows`: `(interaction id, event)`.
    pub(super) fn new(rows: &[(Uuid, &'a StoredEvent)]) -> Self {
        let n = rows.len();
        let mut a = EventArrays {
            event_id: Vec::with_capacity(n),
            title: Vec::with_capacity(n),
            description: Vec::with_capacity(n),
            event_date: Vec::with_capacity(n),
            start_time: Vec::with_capacity(n),
            end_time: Vec::with_capacity(n),
            all_day: Vec::with_capacity(n),
            event_type: Vec::with_capacity(n),
            event_status: Vec::with_capacity(n),
            location: Vec::with_capacity(n),
            participants: Vec::with_capacity(n),
            created_by: Vec::with_capacity(n),
            updated_by: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
            updated_at: Vec::with_capacity(n),
            customer_id: Vec::with_capacity(n),
            contact_id: Vec::with_capacity(n),
            source_lsn: Vec::with_capacity(n),
            related_id: Vec::with_capacity(n),
        };
        for (related, e) in rows {
            let f = &e.fields;
            a.event_id.push(e.event_id);
            a.title.push(&f.title);
            a.description.push(f.description.as_deref());
            a.event_date.push(f.event_date);
            a.start_time.push(f.start_time);
            a.end_time.push(f.end_time);
            a.all_day.push(f.all_day);
            a.event_type.push(&f.event_type);
            a.event_status.push(f.event_status.as_str());
            a.location.push(f.location.as_deref());
            a.participants.push(array_literal(&f.participants));
            a.created_by.push(f.created_by);
            a.updated_by.push(f.updated_by);
            a.created_at.push(f.created_at);
            a.updated_at.push(f.updated_at);
            a.customer_id.push(f.customer_id);
            a.contact_id.push(f.contact_id);
            a.source_lsn.push(e.source_lsn.map(PgLsn::from));
            a.related_id.push(*related);
        }
        a
    }

    /// The array bound to `p`.
    fn param(&self, p: EventParam) -> &(dyn ToSql + Sync) {
        match p {
            EventParam::EventId => &self.event_id,
            EventParam::Column(c) => match c {
                EventColumn::Title => &self.title,
                EventColumn::Description => &self.description,
                EventColumn::EventDate => &self.event_date,
                EventColumn::StartTime => &self.start_time,
                EventColumn::EndTime => &self.end_time,
                EventColumn::AllDay => &self.all_day,
                EventColumn::EventType => &self.event_type,
                EventColumn::EventStatus => &self.event_status,
                EventColumn::Location => &self.location,
                EventColumn::Participants => &self.participants,
                EventColumn::CreatedBy => &self.created_by,
                EventColumn::UpdatedBy => &self.updated_by,
                EventColumn::CreatedAt => &self.created_at,
                EventColumn::UpdatedAt => &self.updated_at,
                EventColumn::CustomerId => &self.customer_id,
                EventColumn::ContactId => &self.contact_id,
            },
            EventParam::SourceLsn => &self.source_lsn,
            EventParam::RelatedId => &self.related_id,
        }
    }

    /// Every parameter, in the order [`unnest_params`] numbers them.
    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); EventParam::ALL.len()] {
        EventParam::ALL.map(|p| self.param(p))
    }
}

#[cfg(test)]
mod tests;
