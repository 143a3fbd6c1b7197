//! PURE: pgoutput messages -> source changes calendar-sync acts on.
//!
//! Keeps the relation cache (pgoutput sends a Relation message before the first
//! change of a table in a session, and again after its schema changes; see
//! PostgreSQL's `pgoutput.c`, `maybe_send_schema`). Columns are found by name
//! on every Relation message, so an added or dropped unmapped column changes
//! nothing, while a missing or retyped mapped one is a clear error.
//!
//! # Tables by identity
//!
//! interaction, customer and contact are recognised by relation id (the OID
//! every pgoutput message carries), resolved schema-qualified from the catalog
//! when the session starts ([`TrackedTables`]), never by bare name:
//! - A tracked OID is ours whatever its Relation message calls it: logical
//!   decoding names a table as the catalog did when the change was written
//!   (a replay after `ALTER TABLE interaction RENAME TO ..` still says the old
//!   name), but a rename keeps the OID, so a rename (and back) is followed,
//!   live and on replay.
//! - Any other OID is not ours, even when named `interaction`: a same-named
//!   table in another schema that is in the publication is ignored.
//! - An untracked OID under a tracked table's schema-qualified name means that
//!   name now belongs to another table than the one tracked (dropped and
//!   re-created, or swapped): an error, since the changes of one of the two
//!   would otherwise be lost without a word ([`StreamError::Replaced`]).

use std::collections::HashMap;

use uuid::Uuid;

use crate::config::ParticipantSchema;
use crate::mapping::value;
use crate::mapping::{InteractionColumns, InteractionRow, RowError, SchemaError};
use crate::participants::Party;
use crate::pgoutput::{DecodeError, Message, OldTuple, Relation, RelationId, Tuple, TupleValue};

/// One change calendar-sync acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceChange {
    /// INSERT or UPDATE. `row` is `Err` when the row's values cannot be mapped
    /// (recorded as a failure of interaction `id`).
    InteractionUpsert {
        id: Uuid,
        row: Result<InteractionRow, RowError>,
    },
    InteractionDelete {
        id: Uuid,
    },
    InteractionTruncate,
    /// A customer or contact was inserted or updated (`name`: its display
    /// name), or deleted.
    PartyChanged {
        party: Party,
        id: Uuid,
        name: Option<String>,
        deleted: bool,
    },
}

/// The stream cannot go on: bytes or schema do not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("malformed pgoutput message: {0}")]
    Decode(#[from] DecodeError),
    #[error("change for relation id {0} arrived before its Relation message")]
    UnknownRelation(RelationId),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(
        "{table}: the tuple has {found} columns, the last Relation message announced {expected}"
    )]
    ColumnCount {
        table: String,
        expected: usize,
        found: usize,
    },
    #[error(
        "the stream has {schema}.{name} as relation id {found}, but calendar-sync tracks {schema}.{name} as relation id {tracked}: the table was dropped and re-created, or swapped for another"
    )]
    Replaced {
        schema: String,
        name: String,
        tracked: RelationId,
        found: RelationId,
    },
    /// The old key of a DELETE, or of an UPDATE of the replica identity
    /// columns, lacks the id: the table's replica identity did not hold it
    /// when the change was written (issue 13).
    #[error("{table}.{column} is not in the old key of a DELETE (or of an UPDATE of the replica identity columns): PostgreSQL logs only the table's replica identity columns there, and when this change was written they did not include {column}")]
    NoKey { table: String, column: String },
    #[error("{table}.{column}: expected {expected} in a key, got {found:?}")]
    BadKey {
        table: String,
        column: String,
        expected: &'static str,
        found: String,
    },
}

#[derive(Debug, Clone)]
enum TableMap {
    Interaction(InteractionColumns),
    Party {
        party: Party,
        id: usize,
        names: Vec<usize>,
        table: String,
        id_column: String,
        width: usize,
    },
    Other,
}

/// One source table calendar-sync reads, by identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableId {
    /// `pg_class.oid`: what pgoutput messages refer to; kept across renames.
    pub oid: RelationId,
    /// Schema and table name when the session resolved it.
    pub schema: String,
    pub name: String,
}

impl std::fmt::Display for TableId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{} (relation id {})",
            self.schema, self.name, self.oid
        )
    }
}

/// interaction, customer and contact as resolved at session start (see the
/// module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedTables {
    pub interaction: TableId,
    pub customer: TableId,
    pub contact: TableId,
}

impl TrackedTables {
    pub fn iter(&self) -> impl Iterator<Item = &TableId> {
        [&self.interaction, &self.customer, &self.contact].into_iter()
    }
}

/// Relation id -> how to read that table's tuples.
#[derive(Debug, Clone)]
pub struct RelationCache {
    schema: ParticipantSchema,
    tracked: TrackedTables,
    tables: HashMap<RelationId, TableMap>,
}

fn position(rel: &Relation, column: &str) -> Result<usize, SchemaError> {
    rel.columns
        .iter()
        .position(|c| c.name == column)
        .ok_or_else(|| SchemaError::MissingColumn {
            table: rel.name.clone(),
            column: column.to_string(),
        })
}

impl RelationCache {
    pub fn new(schema: ParticipantSchema, tracked: TrackedTables) -> Self {
        RelationCache {
            schema,
            tracked,
            tables: HashMap::new(),
        }
    }

    /// The tables this cache maps, by identity.
    pub fn tracked(&self) -> &TrackedTables {
        &self.tracked
    }

    /// Learns (or re-learns after DDL) a table's columns. Matches by relation
    /// id only; the name in `rel` may be a historic one (see the module docs).
    pub fn on_relation(&mut self, rel: &Relation) -> Result<(), StreamError> {
        let s = &self.schema;
        let t = &self.tracked;
        let map = if rel.id == t.interaction.oid {
            TableMap::Interaction(InteractionColumns::from_relation(rel)?)
        } else if let Some(party) = [(Party::Customer, &t.customer), (Party::Contact, &t.contact)]
            .into_iter()
            .find_map(|(party, table)| (rel.id == table.oid).then_some(party))
        {
            TableMap::Party {
                party,
                id: position(rel, party.id_column(s))?,
                names: party
                    .name_columns(s)
                    .into_iter()
                    .map(|c| position(rel, c))
                    .collect::<Result<_, _>>()?,
                table: rel.name.clone(),
                id_column: party.id_column(s).to_string(),
                width: rel.columns.len(),
            }
        } else if let Some(ours) = t
            .iter()
            .find(|o| o.schema == rel.namespace && o.name == rel.name)
        {
            return Err(StreamError::Replaced {
                schema: ours.schema.clone(),
                name: ours.name.clone(),
                tracked: ours.oid,
                found: rel.id,
            });
        } else {
            TableMap::Other
        };
        self.tables.insert(rel.id, map);
        Ok(())
    }

    fn table(&self, id: RelationId) -> Result<&TableMap, StreamError> {
        self.tables.get(&id).ok_or(StreamError::UnknownRelation(id))
    }

    /// The changes one data message means (an UPDATE that changes the key is a
    /// delete of the old id and an upsert of the new one).
    pub fn changes(&self, msg: &Message) -> Result<Vec<SourceChange>, StreamError> {
        match msg {
            Message::Insert(i) => match self.table(i.relation_id)? {
                TableMap::Interaction(cols) => Ok(vec![upsert(cols, &i.new)?]),
                TableMap::Party {
                    party,
                    id,
                    names,
                    table,
                    id_column,
                    width,
                } => {
                    check_width(table, *width, &i.new)?;
                    Ok(vec![party_change(
                        *party,
                        &i.new,
                        *id,
                        Some(names),
                        table,
                        id_column,
                    )?])
                }
                TableMap::Other => Ok(vec![]),
            },
            Message::Update(u) => match self.table(u.relation_id)? {
                TableMap::Interaction(cols) => {
                    let new = upsert(cols, &u.new)?;
                    let old_id = match &u.old {
                        Some(OldTuple::Key(t) | OldTuple::Full(t)) => Some(old_key(cols, t)?),
                        None => None,
                    };
                    match (old_id, &new) {
                        (Some(old), SourceChange::InteractionUpsert { id, .. }) if old != *id => {
                            Ok(vec![SourceChange::InteractionDelete { id: old }, new])
                        }
                        _ => Ok(vec![new]),
                    }
                }
                TableMap::Party {
                    party,
                    id,
                    names,
                    table,
                    id_column,
                    width,
                } => {
                    check_width(table, *width, &u.new)?;
                    if name_unchanged(&u.new, names) {
                        return Ok(vec![]);
                    }
                    Ok(vec![party_change(
                        *party,
                        &u.new,
                        *id,
                        Some(names),
                        table,
                        id_column,
                    )?])
                }
                TableMap::Other => Ok(vec![]),
            },
            Message::Delete(d) => {
                let old = match &d.old {
                    OldTuple::Key(t) | OldTuple::Full(t) => t,
                };
                match self.table(d.relation_id)? {
                    TableMap::Interaction(cols) => Ok(vec![SourceChange::InteractionDelete {
                        id: old_key(cols, old)?,
                    }]),
                    TableMap::Party {
                        party,
                        id,
                        table,
                        id_column,
                        ..
                    } => {
                        if matches!(old.0.get(*id), None | Some(TupleValue::Null)) {
                            return Err(StreamError::NoKey {
                                table: table.clone(),
                                column: id_column.clone(),
                            });
                        }
                        Ok(vec![party_change(
                            *party, old, *id, None, table, id_column,
                        )?])
                    }
                    TableMap::Other => Ok(vec![]),
                }
            }
            Message::Truncate(t) => {
                let mut out = Vec::new();
                for id in &t.relation_ids {
                    if let TableMap::Interaction(_) = self.table(*id)? {
                        out.push(SourceChange::InteractionTruncate);
                    }
                }
                Ok(out)
            }
            _ => Ok(vec![]),
        }
    }
}

fn key(cols: &InteractionColumns, t: &Tuple) -> Result<Uuid, StreamError> {
    cols.key(t).map_err(bad_key)
}

fn bad_key(e: RowError) -> StreamError {
    StreamError::BadKey {
        table: "interaction".into(),
        column: "interaction_id".into(),
        expected: "a UUID",
        found: e.to_string(),
    }
}

/// [`key`] of an old tuple, which holds only the replica identity columns
/// unless the identity is FULL: a NULL id means the identity lacked it.
fn old_key(cols: &InteractionColumns, t: &Tuple) -> Result<Uuid, StreamError> {
    cols.key(t).map_err(|e| match e {
        RowError::Null { .. } => StreamError::NoKey {
            table: "interaction".into(),
            column: "interaction_id".into(),
        },
        e => bad_key(e),
    })
}

fn check_width(table: &str, expected: usize, t: &Tuple) -> Result<(), StreamError> {
    if t.0.len() == expected {
        Ok(())
    } else {
        Err(StreamError::ColumnCount {
            table: table.to_string(),
            expected,
            found: t.0.len(),
        })
    }
}

fn upsert(cols: &InteractionColumns, t: &Tuple) -> Result<SourceChange, StreamError> {
    check_width("interaction", cols.width(), t)?;
    Ok(SourceChange::InteractionUpsert {
        id: key(cols, t)?,
        row: cols.row(t),
    })
}

fn text(t: &Tuple, pos: usize) -> Option<&str> {
    match t.0.get(pos) {
        Some(TupleValue::Text(b)) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// An UPDATE that left an out-of-line (TOASTed) name unchanged does not carry
/// it: nothing to record or refresh, the stored name is still right.
fn name_unchanged(t: &Tuple, names: &[usize]) -> bool {
    names
        .iter()
        .any(|p| matches!(t.0.get(*p), Some(TupleValue::UnchangedToast)))
}

fn party_change(
    party: Party,
    t: &Tuple,
    id_pos: usize,
    names: Option<&Vec<usize>>,
    table: &str,
    id_column: &str,
) -> Result<SourceChange, StreamError> {
    let raw = text(t, id_pos).unwrap_or("");
    let id = value::parse_uuid(raw).map_err(|b| StreamError::BadKey {
        table: table.to_string(),
        column: id_column.to_string(),
        expected: b.expected,
        found: b.found,
    })?;
    let name = names.and_then(|names| {
        let parts: Vec<Option<&str>> = names.iter().map(|p| text(t, *p)).collect();
        party.display_name(&parts)
    });
    Ok(SourceChange::PartyChanged {
        party,
        id,
        name,
        deleted: names.is_none(),
    })
}

#[cfg(test)]
mod tests;
