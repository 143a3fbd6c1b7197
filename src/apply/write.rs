//! Writing a chunk: read what it needs in one round of queries, decide it in
//! memory ([`super::plan`]), write it set-based under one savepoint, and bisect
//! on a row-permanent error (see the module docs of [`super`]).

use std::collections::{HashSet, VecDeque};

use tokio_postgres::types::PgLsn;
use uuid::Uuid;

use super::columns::EventArrays;
use super::event::event_from_row;
use super::plan::{self, FailureRow, Known, LogRow, Plan, Planned, RowChange};
use super::{db, Batch, Writer};
use crate::error::{classify_pg, describe_pg, ErrorClass, FatalKind, SyncError};
use crate::lsn::Lsn;
use crate::mapping::Action;
use crate::mapping::Outcome;
use crate::participants::Party;

/// How long a read of the source waits for what the stream delivered to
/// become visible before the session is restarted (see `decide`).
const READ_VISIBLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// How a chunk's write ended.
enum Written {
    Plan(Plan),
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
                Written::Plan(mut plan) => {
                    self.account(&plan);
                    if let Some(s) = self.stamper.as_mut() {
                        s.hold(std::mem::take(&mut plan.stamps));
                    }
                    known.absorb(plan);
                }
                Written::RowError(message) if part.len() == 1 => {
                    let failed = self.isolate(&part[0], &known, message).await?;
                    self.account(&failed);
                    known.absorb(failed);
                }
                Written::RowError(_) => {
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
        if let Some(names) = self.batch.as_ref().and_then(Batch::live_names) {
            known
                .names
                .extend(names.iter().map(|(k, v)| (*k, v.clone())));
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
    async fn write_plan(&mut self, plan: Plan) -> Result<Written, SyncError> {
        let retry = self.batch.as_ref().is_some_and(Batch::is_retry);
        self.metrics.savepoint();
        match self.statements(&plan, retry).await {
            Ok(()) => Ok(Written::Plan(plan)),
            Err(e) if classify_pg(&e) == ErrorClass::RowPermanent => {
                self.rollback_to("chunk").await?;
                Ok(Written::RowError(describe_pg(&e)))
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
                t.execute(&self.t.update_events, &updates.params()).await
            },
            async {
                if plan.inserts.is_empty() {
                    return Ok(0);
                }
                t.execute(&self.t.insert_events, &inserts.params()).await
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
                status: Outcome::Failed,
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
        let retry = self.batch.as_ref().is_some_and(Batch::is_retry);
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
