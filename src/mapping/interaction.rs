//! The `interaction` row as calendar-sync sees it: only the mapped columns
//! (the publication's column list leaves the rest, `private_notes` above all,
//! out of the stream), decoded from a pgoutput tuple or from a SQL row.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::value::{self, BadValue};
use super::{RowError, SchemaError};
use crate::pgoutput::{Relation, Tuple, TupleValue};

/// A value that pgoutput may send as "unchanged TOAST" (`u`): an UPDATE that did
/// not touch a large out-of-line value does not carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toast<T> {
    Value(T),
    Unchanged,
}

/// The mapped columns of `interaction`, in publication order. Nothing else is
/// ever read from the source table.
pub const MAPPED_COLUMNS: [&str; 14] = [
    "interaction_id",
    "interaction_type",
    "subject",
    "interaction_date",
    "customer_id",
    "contact_id",
    "location",
    "description",
    "duration_minutes",
    "created_by",
    "updated_by",
    "created_at",
    "updated_at",
    "archived",
];

// Indexes into MAPPED_COLUMNS.
const ID: usize = 0;
const TYPE: usize = 1;
const SUBJECT: usize = 2;
const DATE: usize = 3;
const CUSTOMER: usize = 4;
const CONTACT: usize = 5;
const LOCATION: usize = 6;
const DESCRIPTION: usize = 7;
const DURATION: usize = 8;
const CREATED_BY: usize = 9;
const UPDATED_BY: usize = 10;
const CREATED_AT: usize = 11;
const UPDATED_AT: usize = 12;
const ARCHIVED: usize = 13;

/// Accepted type OIDs per mapped column (pg_type.h): text-like, uuid,
/// timestamptz, integers, bool.
fn expected_types(i: usize) -> (&'static str, &'static [u32]) {
    const TEXT: &[u32] = &[25, 1043, 1042];
    match i {
        ID | CUSTOMER | CONTACT | CREATED_BY | UPDATED_BY => ("uuid", &[2950]),
        DATE | CREATED_AT | UPDATED_AT => ("timestamp with time zone", &[1184]),
        DURATION => ("integer", &[21, 23]),
        ARCHIVED => ("boolean", &[16]),
        _ => ("text or varchar", TEXT),
    }
}

/// The interaction as calendar-sync needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InteractionRow {
    pub interaction_id: Uuid,
    pub interaction_type: String,
    pub subject: Option<String>,
    pub interaction_date: Option<DateTime<Utc>>,
    pub customer_id: Option<Uuid>,
    pub contact_id: Option<Uuid>,
    pub location: Option<String>,
    pub description: Toast<Option<String>>,
    pub duration_minutes: Option<i32>,
    pub created_by: Uuid,
    pub updated_by: Option<Uuid>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// NULL reads as false (the seed's default).
    pub archived: bool,
}

/// Where each mapped column sits in the current Relation of `interaction`.
/// Rebuilt on every Relation message, so columns are found by name: an added
/// or dropped unmapped column changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InteractionColumns {
    positions: [usize; MAPPED_COLUMNS.len()],
    width: usize,
}

impl InteractionColumns {
    pub fn from_relation(rel: &Relation) -> Result<Self, SchemaError> {
        let mut positions = [0usize; MAPPED_COLUMNS.len()];
        for (i, name) in MAPPED_COLUMNS.iter().enumerate() {
            let (pos, col) = rel
                .columns
                .iter()
                .enumerate()
                .find(|(_, c)| c.name == *name)
                .ok_or_else(|| SchemaError::MissingColumn {
                    table: rel.name.clone(),
                    column: (*name).to_string(),
                })?;
            let (expected, oids) = expected_types(i);
            if !oids.contains(&col.type_oid) {
                return Err(SchemaError::WrongType {
                    table: rel.name.clone(),
                    column: (*name).to_string(),
                    expected,
                    found: col.type_oid,
                });
            }
            positions[i] = pos;
        }
        Ok(InteractionColumns {
            positions,
            width: rel.columns.len(),
        })
    }

    /// Number of columns of the Relation this map was built from.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The interaction id of a key or old tuple (DELETE, or UPDATE of the key).
    pub fn key(&self, tuple: &Tuple) -> Result<Uuid, RowError> {
        let r = Reader { cols: self, tuple };
        r.required(ID, value::parse_uuid)
    }

    /// A full new tuple (INSERT, UPDATE).
    pub fn row(&self, tuple: &Tuple) -> Result<InteractionRow, RowError> {
        if tuple.0.len() != self.width {
            return Err(RowError::InvalidValue {
                column: "interaction_id",
                expected: "a tuple as wide as the last Relation message",
                found: format!("{} columns instead of {}", tuple.0.len(), self.width),
            });
        }
        let r = Reader { cols: self, tuple };
        let description = match r.raw(DESCRIPTION) {
            TupleValue::UnchangedToast => Toast::Unchanged,
            _ => Toast::Value(r.text(DESCRIPTION)?.map(str::to_string)),
        };
        Ok(InteractionRow {
            interaction_id: r.required(ID, value::parse_uuid)?,
            interaction_type: r.required(TYPE, |s| Ok(s.to_string()))?,
            subject: r.optional(SUBJECT, |s| Ok(s.to_string()))?,
            interaction_date: r.optional(DATE, value::parse_timestamptz)?,
            customer_id: r.optional(CUSTOMER, value::parse_uuid)?,
            contact_id: r.optional(CONTACT, value::parse_uuid)?,
            location: r.optional(LOCATION, |s| Ok(s.to_string()))?,
            description,
            duration_minutes: r.optional(DURATION, value::parse_i32)?,
            created_by: r.required(CREATED_BY, value::parse_uuid)?,
            updated_by: r.optional(UPDATED_BY, value::parse_uuid)?,
            created_at: r.optional(CREATED_AT, value::parse_timestamptz)?,
            updated_at: r.optional(UPDATED_AT, value::parse_timestamptz)?,
            archived: r.optional(ARCHIVED, value::parse_bool)?.unwrap_or(false),
        })
    }
}

struct Reader<'a> {
    cols: &'a InteractionColumns,
    tuple: &'a Tuple,
}

impl Reader<'_> {
    fn raw(&self, i: usize) -> &TupleValue {
        self.tuple
            .0
            .get(self.cols.positions[i])
            .unwrap_or(&TupleValue::Null)
    }

    fn text(&self, i: usize) -> Result<Option<&str>, RowError> {
        let column = MAPPED_COLUMNS[i];
        match self.raw(i) {
            TupleValue::Null => Ok(None),
            TupleValue::UnchangedToast => Err(RowError::UnexpectedToast { column }),
            TupleValue::Text(b) => {
                std::str::from_utf8(b)
                    .map(Some)
                    .map_err(|_| RowError::InvalidValue {
                        column,
                        expected: "UTF-8 text",
                        found: String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned(),
                    })
            }
            TupleValue::Binary(_) => Err(RowError::InvalidValue {
                column,
                expected: "a text-format value (the stream is started without binary)",
                found: "a binary value".into(),
            }),
        }
    }

    fn optional<T>(
        &self,
        i: usize,
        parse: impl Fn(&str) -> Result<T, BadValue>,
    ) -> Result<Option<T>, RowError> {
        let column = MAPPED_COLUMNS[i];
        self.text(i)?
            .map(|s| {
                parse(s).map_err(|b| RowError::InvalidValue {
                    column,
                    expected: b.expected,
                    found: b.found,
                })
            })
            .transpose()
    }

    fn required<T>(
        &self,
        i: usize,
        parse: impl Fn(&str) -> Result<T, BadValue>,
    ) -> Result<T, RowError> {
        self.optional(i, parse)?.ok_or(RowError::Null {
            column: MAPPED_COLUMNS[i],
        })
    }
}

impl InteractionRow {
    /// The select list that [`InteractionRow::from_sql`] reads, qualified by
    /// `alias`. Used by the snapshot and by every re-read of current state.
    pub fn select_list(alias: &str) -> String {
        MAPPED_COLUMNS
            .iter()
            .map(|c| format!("{alias}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// From a row selected with [`InteractionRow::select_list`].
    pub fn from_sql(row: &tokio_postgres::Row) -> Result<InteractionRow, RowError> {
        fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
            row: &'a tokio_postgres::Row,
            i: usize,
        ) -> Result<T, RowError> {
            row.try_get(MAPPED_COLUMNS[i])
                .map_err(|e| RowError::InvalidValue {
                    column: MAPPED_COLUMNS[i],
                    expected: expected_types(i).0,
                    found: e.to_string(),
                })
        }
        let id: Uuid = get(row, ID)?;
        let created_by: Option<Uuid> = get(row, CREATED_BY)?;
        let interaction_type: Option<String> = get(row, TYPE)?;
        let duration: Option<i32> = match row.columns().get(DURATION).map(|c| c.type_().clone()) {
            Some(t) if t == tokio_postgres::types::Type::INT2 => {
                get::<Option<i16>>(row, DURATION)?.map(i32::from)
            }
            _ => get(row, DURATION)?,
        };
        Ok(InteractionRow {
            interaction_id: id,
            interaction_type: interaction_type.ok_or(RowError::Null {
                column: "interaction_type",
            })?,
            subject: get(row, SUBJECT)?,
            interaction_date: get(row, DATE)?,
            customer_id: get(row, CUSTOMER)?,
            contact_id: get(row, CONTACT)?,
            location: get(row, LOCATION)?,
            description: Toast::Value(get(row, DESCRIPTION)?),
            duration_minutes: duration,
            created_by: created_by.ok_or(RowError::Null {
                column: "created_by",
            })?,
            updated_by: get(row, UPDATED_BY)?,
            created_at: get(row, CREATED_AT)?,
            updated_at: get(row, UPDATED_AT)?,
            archived: get::<Option<bool>>(row, ARCHIVED)?.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{Column, ReplicaIdentity};
    use bytes::Bytes;

    fn relation(extra_first: bool) -> Relation {
        let mut columns: Vec<Column> = Vec::new();
        if extra_first {
            columns.push(Column {
                is_key: false,
                name: "private_notes".into(),
                type_oid: 1043,
                type_modifier: -1,
            });
        }
        for (i, name) in MAPPED_COLUMNS.iter().enumerate() {
            columns.push(Column {
                is_key: i == ID,
                name: (*name).into(),
                type_oid: expected_types(i).1[0],
                type_modifier: -1,
            });
        }
        Relation {
            id: 1,
            namespace: "public".into(),
            name: "interaction".into(),
            replica_identity: ReplicaIdentity::Default,
            columns,
        }
    }

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn tuple(prefix: Option<TupleValue>) -> Tuple {
        let mut v: Vec<TupleValue> = prefix.into_iter().collect();
        v.extend([
            t("7b6f1c1e-0000-4000-8000-000000000001"),
            t("visit"),
            t("Quarterly review"),
            t("2026-11-25 09:30:00+00"),
            TupleValue::Null,
            TupleValue::Null,
            t("HQ"),
            TupleValue::UnchangedToast,
            t("45"),
            t("7b6f1c1e-0000-4000-8000-0000000000aa"),
            TupleValue::Null,
            t("2026-11-01 00:00:00+00"),
            t("2026-11-02 00:00:00+00"),
            t("f"),
        ]);
        Tuple(v)
    }

    #[test]
    fn columns_are_found_by_name_wherever_they_sit() {
        let cols = InteractionColumns::from_relation(&relation(true)).expect("mappable");
        let row = cols.row(&tuple(Some(t("secret")))).expect("decodes");
        assert_eq!(row.subject.as_deref(), Some("Quarterly review"));
        assert_eq!(row.description, Toast::Unchanged);
        assert_eq!(row.duration_minutes, Some(45));
        assert!(!row.archived);
    }

    #[test]
    fn a_missing_or_retyped_mapped_column_is_a_schema_error_naming_it() {
        let mut rel = relation(false);
        rel.columns.retain(|c| c.name != "subject");
        let e = InteractionColumns::from_relation(&rel).expect_err("missing");
        assert!(e.to_string().contains("interaction.subject"), "{e}");
        let mut rel = relation(false);
        rel.columns[DURATION].type_oid = 25;
        let e = InteractionColumns::from_relation(&rel).expect_err("retyped");
        assert!(e.to_string().contains("duration_minutes"), "{e}");
    }

    #[test]
    fn bad_values_name_the_column() {
        let cols = InteractionColumns::from_relation(&relation(false)).expect("mappable");
        let mut tup = tuple(None);
        tup.0[DATE] = t("yesterday");
        let e = cols.row(&tup).expect_err("bad date");
        assert!(
            matches!(
                e,
                RowError::InvalidValue {
                    column: "interaction_date",
                    ..
                }
            ),
            "{e}"
        );
        let mut tup = tuple(None);
        tup.0[SUBJECT] = TupleValue::UnchangedToast;
        assert_eq!(
            cols.row(&tup),
            Err(RowError::UnexpectedToast { column: "subject" })
        );
        let short = Tuple(tuple(None).0[..5].to_vec());
        assert!(cols.row(&short).is_err());
    }
}
