//! Writing a chunk: read what it needs in one round of queries, decide it in
//! memory ([`super::plan`]), write it set-based under one savepoint, and bisect
//! on a row-permanent error (see the module docs of [`super`]).

use std::collections::{HashSet, VecDeque};

use chrono::NaiveTime;
use tokio_postgres::types::PgLsn;
use uuid::Uuid;

use super::event::event_from_row;
use super::plan::{self, FailureRow, Known, LogRow, Plan, Planned, RowChange};
use super::{db, sql, BatchKind, Writer};
use crate::changes::Party;
use crate::error::{classify_pg, describe_pg, ErrorClass, FatalKind, SyncError};
use crate::lsn::Lsn;
use crate::mapping::Action;
use crate::metrics::Status;

/// How long a read of the source waits for what the stream delivered to
/// become visible before the session is restarted (see `decide`).
const READ_VISIBLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// How a chunk's write ended.
enum Outcome {
    Written(Plan),
    /// A row-permanent error: rolled back to the chunk's savepoint.
    RowError(String),
}

impl Writer {
    /// Writes the pending chunk, if any, into the open target transaction.
    pub(super) async fn flush(&mut self) -> Result<(), SyncError> {
        let chunk = match self.batch.as_mut() {
            Some(b) if !b.chunk.is_empty() => {
                b.chunk_bytes = 0;
                std::mem::take(&mut b.chunk)
            }
            _ => return Ok(()),
        };
        self.ensure_open().await?;
        let mut known = self.load(&chunk).await?;
        // Bisect: ranges still to write, in LSN order.
        let mut todo = VecDeque::from([(0, chunk.len())]);
        while let Some((from, to)) = todo.pop_front() {
            let part = &chunk[from..to];
            let plan = self.decide(part, &mut known).await?;
            match self.write_plan(plan).await? {
                Outcome::Written(mut plan) => {
                    self.account(&plan);
                    if let Some(s) = self.stamper.as_mut() {
                        s.hold(std::mem::take(&mut plan.stamps));
                    }
                    known.absorb(plan);
                }
                Outcome::RowError(message) if part.len() == 1 => {
                    let failed = self.isolate(&part[0], &known, message).await?;
                    self.account(&failed);
                    known.absorb(failed);
                }
                Outcome::RowError(_) => {
                    let mid = from + part.len() / 2;
                    todo.push_front((mid, to));
                    todo.push_front((from, mid));
                }
            }
        }
        Ok(())
    }

    /// Counts a written plan into the batch (metrics after commit, stamps).
    fn account(&mut self, plan: &Plan) {
        if plan.refused > 0 {
            tracing::warn!(
                refused = plan.refused,
                "refused to overwrite events written from a later source LSN (by a retry)"
            );
        }
        if let Some(b) = self.batch.as_mut() {
            for (action, status) in plan.counts() {
                b.count(action, status, 1);
            }
        }
    }

    /// Existing events, open failures and participant names of a chunk.
    async fn load(&self, chunk: &[RowChange]) -> Result<Known, SyncError> {
        let mut ids: Vec<Uuid> = chunk.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut customers = HashSet::new();
        let mut contacts = HashSet::new();
        for c in chunk {
            if let Some(Ok(r)) = &c.row {
                customers.extend(r.customer_id);
                contacts.extend(r.contact_id);
            }
        }
        let customers: Vec<Uuid> = customers.into_iter().collect();
        let contacts: Vec<Uuid> = contacts.into_iter().collect();
        let by_id: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
        let by_party: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&customers, &contacts];
        // Three queries, pipelined on the one connection: one round trip.
        // `join!`, not `try_join!`: it polls in rotating order, so the first
        // error it would return may be a later statement's "transaction is
        // aborted"; the results are checked in statement order instead.
        let (events, failing, names) = tokio::join!(
            self.target.query(&self.t.select_events, &by_id),
            self.target.query(&self.t.select_failing, &by_id),
            self.target.query(&self.t.select_names, &by_party),
        );
        let read = db("reading the chunk's events, failures and names");
        let (events, failing, names) = (
            events.map_err(&read)?,
            failing.map_err(&read)?,
            names.map_err(&read)?,
        );
        let mut known = Known::default();
        for r in &events {
            let id: Uuid = r
                .try_get("related_id")
                .map_err(db("reading calendar_events.related_id"))?;
            let event = event_from_row(r).map_err(db("reading an event"))?;
            known.events.insert(id, event);
        }
        for r in &failing {
            known
                .failing
                .insert(r.try_get(0).map_err(db("reading a failure"))?);
        }
        for r in &names {
            let raw: &str = r.try_get(0).map_err(db("reading a name"))?;
            let Some(party) = Party::parse(raw) else {
                return Err(SyncError::fatal(
                    FatalKind::SchemaMissing,
                    format!("calendar_sync_party_names holds a row with party {raw:?}, expected 'customer' or 'contact'"),
                    "something other than calendar-sync wrote calendar_sync_party_names: delete that row (calendar-sync refreshes names from the stream and the snapshot)",
                ));
            };
            let id: Uuid = r.try_get(1).map_err(db("reading a name"))?;
            let name: Option<String> = r.try_get(2).map_err(db("reading a name"))?;
            known.names.insert((party, id), name);
        }
        if let Some(b) = self.batch.as_ref() {
            known
                .names
                .extend(b.names.iter().map(|(k, v)| (*k, v.clone())));
        }
        Ok(known)
    }

    /// Plans `part`, reading live descriptions when the plan asks for them.
    ///
    /// The read waits until every source transaction delivered up to the
    /// chunk's last change is visible ([`crate::visibility`]): it never sees
    /// the row as it was before a change the stream delivered. A row still
    /// not found then was deleted by a later transaction (its delete follows
    /// in the stream and removes the event): the event's description is kept
    /// meanwhile, never replaced by NULL.
    async fn decide(&mut self, part: &[RowChange], known: &mut Known) -> Result<Plan, SyncError> {
        loop {
            match plan::plan(part, known, self.window, self.tz) {
                Planned::Done(plan) => return Ok(plan),
                Planned::NeedDescriptions(ids) => {
                    let upto = part.iter().map(|c| c.lsn).max().unwrap_or(Lsn::ZERO);
                    self.pending
                        .require_through(&self.source, upto, READ_VISIBLE_WITHIN)
                        .await?;
                    let rows = self
                        .source
                        .query(&self.s.select_descriptions, &[&ids])
                        .await
                        .map_err(db("reading descriptions from the source (TOAST)"))?;
                    for r in &rows {
                        let id: Uuid = r.try_get(0).map_err(db("reading a description"))?;
                        let d: Option<String> =
                            r.try_get(1).map_err(db("reading a description"))?;
                        known.descriptions.insert(id, d);
                    }
                    for id in ids {
                        let kept = known
                            .events
                            .get(&id)
                            .and_then(|e| e.fields.description.clone());
                        known.descriptions.entry(id).or_insert(kept);
                    }
                }
            }
        }
    }

    /// Runs a plan's statements under one savepoint, pipelined: the
    /// savepoint, every statement and the release go out together and the
    /// server runs them in order (one round trip). After a failure the rest
    /// fail as "transaction aborted"; the first error is the one that counts.
    async fn write_plan(&mut self, plan: Plan) -> Result<Outcome, SyncError> {
        let retry = matches!(self.batch.as_ref().map(|b| b.kind), Some(BatchKind::Retry));
        self.metrics.savepoint();
        match self.statements(&plan, retry).await {
            Ok(()) => Ok(Outcome::Written(plan)),
            Err(e) if classify_pg(&e) == ErrorClass::RowPermanent => {
                self.rollback_to("chunk").await?;
                Ok(Outcome::RowError(describe_pg(&e)))
            }
            Err(e) => Err(SyncError::db("writing a batch of events", e)),
        }
    }

    async fn statements(&self, plan: &Plan, retry: bool) -> Result<(), tokio_postgres::Error> {
        let t = &self.target;
        let updates: Vec<(Uuid, &plan::StoredEvent)> =
            plan.updated().map(|e| (Uuid::nil(), e)).collect();
        let updates = EventArrays::new(&updates);
        let inserts: Vec<(Uuid, &plan::StoredEvent)> = plan.inserted().collect();
        let inserts = EventArrays::new(&inserts);
        // Pipelined; checked in statement order (see `load`).
        let (sp, deleted, updated, inserted, logged, failed, resolved, released) = tokio::join!(
            t.batch_execute("savepoint chunk"),
            async {
                if plan.deletes.is_empty() {
                    return Ok(0);
                }
                t.execute(&self.t.delete_events, &[&plan.deletes]).await
            },
            async {
                if plan.updates.is_empty() {
                    return Ok(0);
                }
                updates.execute(t, &self.t.update_events).await
            },
            async {
                if plan.inserts.is_empty() {
                    return Ok(0);
                }
                inserts.execute(t, &self.t.insert_events).await
            },
            self.write_log(&plan.log),
            self.write_failures(&plan.failures, retry),
            async {
                if plan.resolved.is_empty() {
                    return Ok(0);
                }
                t.execute(&self.t.resolve_failures, &[&plan.resolved]).await
            },
            t.batch_execute("release savepoint chunk"),
        );
        sp?;
        deleted?;
        updated?;
        inserted?;
        logged?;
        failed?;
        resolved?;
        released?;
        Ok(())
    }

    pub(super) async fn write_log(&self, rows: &[LogRow]) -> Result<(), tokio_postgres::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        let mut actions = Vec::with_capacity(rows.len());
        let mut statuses = Vec::with_capacity(rows.len());
        let mut errors = Vec::with_capacity(rows.len());
        let mut by = Vec::with_capacity(rows.len());
        let mut lsns = Vec::with_capacity(rows.len());
        for r in rows {
            ids.push(r.interaction_id);
            events.push(r.event_id);
            actions.push(r.action.as_str());
            statuses.push(r.status.as_str());
            errors.push(r.error.as_deref());
            by.push(r.by);
            lsns.push(PgLsn::from(r.lsn));
        }
        self.target
            .execute(
                &self.t.insert_log,
                &[&ids, &events, &actions, &statuses, &errors, &by, &lsns],
            )
            .await
            .map(|_| ())
    }

    async fn write_failures(
        &self,
        rows: &[FailureRow],
        retry: bool,
    ) -> Result<(), tokio_postgres::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = rows.iter().map(|f| f.interaction_id).collect();
        let actions: Vec<&str> = rows.iter().map(|f| f.action.as_str()).collect();
        let messages: Vec<&str> = rows.iter().map(|f| f.message.as_str()).collect();
        self.target
            .execute(
                &self.t.record_failures,
                &[&ids, &actions, &messages, &retry],
            )
            .await
            .map(|_| ())
    }

    /// One change whose write failed alone: its failure and `failed` log row.
    /// The event stays as it was (its last good state).
    async fn isolate(
        &mut self,
        change: &RowChange,
        known: &Known,
        message: String,
    ) -> Result<Plan, SyncError> {
        let existing = known.events.get(&change.id);
        let action = match (&change.row, existing) {
            (None, _) => Action::Delete,
            (Some(_), Some(_)) => Action::Update,
            (Some(_), None) => Action::Create,
        };
        let by = match (&change.row, existing) {
            (Some(Ok(r)), _) => r.updated_by.unwrap_or(r.created_by),
            (_, Some(e)) => e.fields.updated_by.unwrap_or(e.fields.created_by),
            _ => Uuid::nil(),
        };
        tracing::warn!(interaction = %change.id, lsn = %change.lsn, error = %message, "change failed; recorded in calendar_sync_failures, stream goes on");
        let plan = Plan {
            log: vec![LogRow {
                interaction_id: change.id,
                event_id: existing.map(|e| e.event_id),
                action,
                status: Status::Failed,
                error: Some(message.clone()),
                by,
                lsn: change.lsn,
            }],
            failures: vec![FailureRow {
                interaction_id: change.id,
                action,
                message,
            }],
            ..Plan::default()
        };
        let retry = matches!(self.batch.as_ref().map(|b| b.kind), Some(BatchKind::Retry));
        self.write_log(&plan.log)
            .await
            .map_err(db("writing calendar_sync_log"))?;
        self.write_failures(&plan.failures, retry)
            .await
            .map_err(db("writing calendar_sync_failures"))?;
        Ok(plan)
    }

    async fn rollback_to(&self, name: &str) -> Result<(), SyncError> {
        self.target
            .batch_execute(&format!("rollback to savepoint {name}"))
            .await
            .map_err(db("rolling back to a savepoint"))
    }
}

/// The parameters of `sql::insert_events` / `update_events`, column by column.
struct EventArrays<'a> {
    event_id: Vec<Uuid>,
    title: Vec<&'a str>,
    description: Vec<Option<&'a str>>,
    event_date: Vec<chrono::DateTime<chrono::Utc>>,
    start_time: Vec<NaiveTime>,
    end_time: Vec<Option<NaiveTime>>,
    all_day: Vec<bool>,
    event_type: Vec<&'a str>,
    event_status: Vec<&'static str>,
    location: Vec<Option<&'a str>>,
    participants: Vec<String>,
    created_by: Vec<Uuid>,
    updated_by: Vec<Option<Uuid>>,
    created_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    updated_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    customer_id: Vec<Option<Uuid>>,
    contact_id: Vec<Option<Uuid>>,
    source_lsn: Vec<Option<PgLsn>>,
    related_id: Vec<Uuid>,
}

impl<'a> EventArrays<'a> {
    /// `rows`: `(interaction id, event)`.
    fn new(rows: &[(Uuid, &'a plan::StoredEvent)]) -> Self {
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
            a.participants.push(sql::array_literal(&f.participants));
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

    async fn execute(
        &self,
        c: &tokio_postgres::Client,
        stmt: &tokio_postgres::Statement,
    ) -> Result<u64, tokio_postgres::Error> {
        c.execute(
            stmt,
            &[
                &self.event_id,
                &self.title,
                &self.description,
                &self.event_date,
                &self.start_time,
                &self.end_time,
                &self.all_day,
                &self.event_type,
                &self.event_status,
                &self.location,
                &self.participants,
                &self.created_by,
                &self.updated_by,
                &self.created_at,
                &self.updated_at,
                &self.customer_id,
                &self.contact_id,
                &self.source_lsn,
                &self.related_id,
            ],
        )
        .await
    }
}
