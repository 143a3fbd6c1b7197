//! The table holds the statements and their parameters to it. Every value of
//! the test event is made from its column's name, so a parameter that holds
//! another column's values (a swap anywhere: the table, `EventArrays`, the
//! generated SQL) encodes other bytes than the column its `$n` is named as.

use std::collections::HashSet;

use bytes::BytesMut;
use tokio_postgres::types::Type;

use super::*;
use crate::lsn::Lsn;
use crate::mapping::EventStatus;

/// `(n, type, name)` of each `$n::type[]` of [`unnest_params`] and its name in
/// `as v(..)`, read from the SQL text.
fn unnest_sql() -> Vec<(usize, String, String)> {
    let sql = unnest_params();
    let (arrays, rest) = sql
        .strip_prefix("unnest(")
        .and_then(|s| s.split_once(')'))
        .expect("unnest(..)");
    let names = rest
        .trim_start()
        .strip_prefix("as v(")
        .and_then(|s| s.strip_suffix(')'))
        .expect("as v(..)");
    let arrays: Vec<&str> = arrays.split(',').map(str::trim).collect();
    let names: Vec<&str> = names.split(',').map(str::trim).collect();
    assert_eq!(arrays.len(), names.len(), "{sql}");
    arrays
        .iter()
        .zip(names)
        .map(|(a, name)| {
            let (n, ty) = a
                .strip_prefix('$')
                .and_then(|a| a.strip_suffix("[]"))
                .and_then(|a| a.split_once("::"))
                .unwrap_or_else(|| panic!("{a}: expected $n::type[]"));
            (n.parse().expect("n"), ty.to_string(), name.to_string())
        })
        .collect()
}

fn array_type(ty: &str) -> Type {
    match ty {
        "text" => Type::TEXT_ARRAY,
        "uuid" => Type::UUID_ARRAY,
        "timestamptz" => Type::TIMESTAMPTZ_ARRAY,
        "time" => Type::TIME_ARRAY,
        "bool" => Type::BOOL_ARRAY,
        "pg_lsn" => Type::PG_LSN_ARRAY,
        other => panic!("no array type for {other}"),
    }
}

/// Values made from a column's name and its variant (`0` or `1`), distinct
/// for every name and variant.
struct Values<F>(F);

impl<F: Fn(&str) -> u8> Values<F> {
    fn tag(&self, name: &str) -> u64 {
        // FNV-1a.
        name.bytes()
            .chain([0xff, (self.0)(name)])
            .fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
    }
    fn odd(&self, name: &str) -> bool {
        (self.0)(name) % 2 == 1
    }
    fn text(&self, name: &str) -> String {
        format!("{name} {}", (self.0)(name))
    }
    fn uuid(&self, name: &str) -> Uuid {
        Uuid::from_u128(u128::from(self.tag(name)))
    }
    fn instant(&self, name: &str) -> DateTime<Utc> {
        let secs = i64::try_from(self.tag(name) % 4_000_000_000).expect("fits");
        DateTime::from_timestamp(secs, 0).expect("in range")
    }
    fn time(&self, name: &str) -> NaiveTime {
        let secs = u32::try_from(self.tag(name) % 86_400).expect("fits");
        NaiveTime::from_num_seconds_from_midnight_opt(secs, 0).expect("in range")
    }
    fn status(&self, name: &str) -> EventStatus {
        if self.odd(name) {
            EventStatus::Cancelled
        } else {
            EventStatus::Scheduled
        }
    }
    fn participants(&self, name: &str) -> Vec<String> {
        vec![self.text(name)]
    }
    fn lsn(&self, name: &str) -> Lsn {
        Lsn(self.tag(name))
    }
}

/// An event whose every field holds a value made from its column's name:
/// the specification of which field is which column, written once, here.
fn event(variant: impl Fn(&str) -> u8) -> StoredEvent {
    let v = Values(variant);
    StoredEvent {
        event_id: v.uuid("event_id"),
        fields: EventFields {
            title: v.text("title"),
            description: Some(v.text("description")),
            event_date: v.instant("event_date"),
            start_time: v.time("start_time"),
            end_time: Some(v.time("end_time")),
            all_day: v.odd("all_day"),
            event_type: v.text("event_type"),
            event_status: v.status("event_status"),
            location: Some(v.text("location")),
            participants: v.participants("participants"),
            created_by: v.uuid("created_by"),
            updated_by: Some(v.uuid("updated_by")),
            created_at: Some(v.instant("created_at")),
            updated_at: Some(v.instant("updated_at")),
            customer_id: Some(v.uuid("customer_id")),
            contact_id: Some(v.uuid("contact_id")),
        },
        source_lsn: Some(v.lsn("source_lsn")),
    }
}

/// The array a parameter named `name` of type `ty` must bind for events
/// `event(|_| r)` of `rows`, made from the name alone.
fn expected(name: &str, ty: &str, rows: &[u8]) -> Box<dyn ToSql + Sync> {
    fn each<T>(rows: &[u8], f: impl Fn(u8) -> T) -> Vec<T> {
        rows.iter().map(|&r| f(r)).collect()
    }
    let row = |r: u8| Values(move |_: &str| r);
    match (ty, name) {
        ("text", "event_status") => Box::new(each(rows, |r| row(r).status(name).as_str())),
        ("text", "participants") => {
            Box::new(each(rows, |r| array_literal(&row(r).participants(name))))
        }
        ("text", _) => Box::new(each(rows, |r| row(r).text(name))),
        ("uuid", _) => Box::new(each(rows, |r| row(r).uuid(name))),
        ("timestamptz", _) => Box::new(each(rows, |r| row(r).instant(name))),
        ("time", _) => Box::new(each(rows, |r| row(r).time(name))),
        ("bool", _) => Box::new(each(rows, |r| row(r).odd(name))),
        ("pg_lsn", _) => Box::new(each(rows, |r| PgLsn::from(row(r).lsn(name)))),
        _ => panic!("no values for {name} {ty}"),
    }
}

/// The parameters that do not encode as their `$n::type[]`, or hold other
/// values than the column `$n` is named as in `as v(..)`.
fn mismatches(params: &[&(dyn ToSql + Sync)], rows: &[u8]) -> Vec<String> {
    let sql = unnest_sql();
    assert_eq!(params.len(), sql.len(), "one parameter per $n");
    let mut bad = Vec::new();
    for (param, (n, ty, name)) in params.iter().zip(&sql) {
        let array = array_type(ty);
        let mut got = BytesMut::new();
        if let Err(e) = param.to_sql_checked(&array, &mut got) {
            bad.push(format!("${n} ({name}) does not encode as {ty}[]: {e}"));
            continue;
        }
        let mut want = BytesMut::new();
        expected(name, ty, rows)
            .to_sql_checked(&array, &mut want)
            .expect("the expected values encode");
        if got != want {
            bad.push(format!("${n} holds other values than {name}'s"));
        }
    }
    bad
}

/// Two events, `event(|_| 0)` and `event(|_| 1)`, as written.
fn two_events() -> Vec<StoredEvent> {
    vec![event(|_| 0), event(|_| 1)]
}

fn arrays_of(events: &[StoredEvent]) -> EventArrays<'_> {
    let rows: Vec<(Uuid, &StoredEvent)> = events
        .iter()
        .zip(0u8..)
        .map(|(e, r)| (Values(|_: &str| r).uuid("related_id"), e))
        .collect();
    EventArrays::new(&rows)
}

#[test]
fn unnest_parameters_are_numbered_in_table_order_and_named_as_their_columns() {
    let sql = unnest_sql();
    assert_eq!(sql.len(), EventParam::ALL.len());
    for (i, ((n, ty, name), p)) in sql.iter().zip(EventParam::ALL).enumerate() {
        assert_eq!(*n, i + 1);
        assert_eq!((ty.as_str(), name.as_str()), (p.sql_type(), p.name()));
    }
    let names: Vec<&str> = sql.iter().map(|(_, _, name)| name.as_str()).collect();
    let mut want = vec!["event_id"];
    want.extend(EventColumn::NAMES);
    want.extend(["source_lsn", "related_id"]);
    assert_eq!(names, want);
    assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len());
}

#[test]
fn every_parameter_encodes_as_its_array_type_and_holds_its_own_column() {
    let events = two_events();
    let arrays = arrays_of(&events);
    assert_eq!(mismatches(&arrays.params(), &[0, 1]), Vec::<String>::new());
}

#[test]
fn any_two_parameters_swapped_are_caught() {
    let events = two_events();
    let arrays = arrays_of(&events);
    let params = arrays.params();
    let names = EventParam::ALL.map(EventParam::name);
    for i in 0..params.len() {
        for j in i + 1..params.len() {
            let mut swapped = params;
            swapped.swap(i, j);
            assert!(
                !mismatches(&swapped, &[0, 1]).is_empty(),
                "{} and {} swapped go unnoticed",
                names[i],
                names[j]
            );
        }
    }
}

#[test]
fn each_column_differs_in_its_own_field_only() {
    let base = event(|_| 0).fields;
    for c in EventColumn::ALL {
        let other = event(|name| u8::from(name == c.name())).fields;
        let differing: Vec<EventColumn> = EventColumn::ALL
            .into_iter()
            .filter(|d| d.differs(&base, &other))
            .collect();
        assert_eq!(differing, [c], "{} alone changed", c.name());
    }
}

/// `v.<column>`, or `v.<column>::text[]` for the array literals.
fn is_value_of(value: &str, column: &str) -> bool {
    let cast = if column == "participants" {
        "::text[]"
    } else {
        ""
    };
    value == format!("v.{column}{cast}")
}

#[test]
fn inserts_and_updates_write_each_value_to_its_own_column() {
    let columns: Vec<String> = stored_columns().split(", ").map(String::from).collect();
    let mut want = vec!["event_id"];
    want.extend(EventColumn::NAMES);
    want.push("source_lsn");
    assert_eq!(columns, want);
    let values = stored_values();
    let values: Vec<&str> = values.split(", ").collect();
    assert_eq!(values.len(), columns.len());
    for (c, v) in columns.iter().zip(&values) {
        assert!(is_value_of(v, c), "{c} inserted from {v}");
    }
    let set = update_assignments();
    let set: Vec<(&str, &str)> = set
        .split(", ")
        .map(|a| a.split_once(" = ").expect("column = value"))
        .collect();
    let set_columns: Vec<&str> = set.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        set_columns,
        columns[1..],
        "every stored column but event_id"
    );
    for (c, v) in set {
        assert!(is_value_of(v, c), "{c} set from {v}");
    }
}

/// The README documents `reconcile --json`'s `fields{..}` in table order.
#[test]
fn the_readme_documents_the_fields_in_table_order() {
    let readme = include_str!("../../../README.md");
    let fields = readme
        .split_once("fields{")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(fields, _)| fields)
        .expect("README: fields{..}");
    let documented: Vec<&str> = fields.split(',').map(str::trim).collect();
    assert_eq!(documented, EventColumn::NAMES);
}
