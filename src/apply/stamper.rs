//! `interaction.calendar_synced_at`, written beside the writer on a session
//! of its own, so that the stamp no longer lengthens the target transaction.
//!
//! Each batch's stamps go into one *stamp transaction* in the source: it
//! begins with [`sql::ECHO_MARKER`] (the stream ignores it), takes each
//! chunk's stamps as the chunk is written (one `update` under a savepoint,
//! rows a CRM session has locked skipped), and commits only after the batch's
//! target transaction committed; a batch rolled back rolls its stamps back.
//! So a stamp is never visible before its event, the stamp runs on another
//! backend while the writer's goes on with the next chunk, and no id is held
//! in memory past its chunk (a million-row source transaction or snapshot
//! included).
//!
//! Best effort, as before (decision 4): a failed stamp statement is rolled
//! back to its savepoint and logged, a lost session is reconnected at the next
//! batch, and a stop between the target commit and the stamp commit leaves
//! those stamps old; the calendar is right either way. The writer never waits
//! for a stamp, except when [`QUEUE`] commands are already waiting.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::{db, sql, ECHO_PREFIX};
use crate::config::SecretUrl;
use crate::db::Limits;
use crate::error::{describe_pg, SyncError};
use crate::metrics::Metrics;

/// Commands the writer may queue before it waits for the stamper: enough to
/// overlap a chunk's stamp with the next chunk's write.
const QUEUE: usize = 2;

enum Command {
    /// Stamps of one written chunk of the open batch.
    Stamp(Vec<Uuid>),
    /// The batch's target transaction committed.
    Commit,
    /// The batch was abandoned.
    Rollback,
    /// Answer once everything before it is done.
    Settle(oneshot::Sender<()>),
}

/// The writer's handle on the stamp session. Dropping it ends the task, whose
/// open stamp transaction (if any) is rolled back with its session.
pub(super) struct Stamper {
    tx: mpsc::Sender<Command>,
    /// Stamps were sent since the last commit or rollback.
    open: bool,
    _task: JoinHandle<()>,
}

impl Stamper {
    /// Starts the task; it connects at the first stamp.
    pub(super) fn start(url: SecretUrl, limits: Limits, slot: String, metrics: Metrics) -> Stamper {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(
            Session {
                url,
                limits,
                slot,
                metrics,
                conn: None,
                state: State::Idle,
            }
            .run(rx),
        );
        Stamper {
            tx,
            open: false,
            _task: task,
        }
    }

    /// Stamps `ids` in the open batch's stamp transaction.
    pub(super) async fn stamp(&mut self, ids: Vec<Uuid>) {
        if ids.is_empty() {
            return;
        }
        self.open = true;
        self.send(Command::Stamp(ids)).await;
    }

    /// The batch committed: its stamps commit (in the background).
    pub(super) async fn commit(&mut self) {
        if std::mem::take(&mut self.open) {
            self.send(Command::Commit).await;
        }
    }

    /// The batch was abandoned: its stamps are rolled back, and their row
    /// locks released before the batch is replayed (whose stamps would skip
    /// rows still locked).
    pub(super) async fn rollback(&mut self) {
        if std::mem::take(&mut self.open) {
            self.send(Command::Rollback).await;
            self.settle().await;
        }
    }

    /// Waits until every stamp sent so far is committed or given up (a
    /// one-shot command's writer, before the process exits).
    pub(super) async fn settle(&self) {
        let (done, settled) = oneshot::channel();
        self.send(Command::Settle(done)).await;
        let _ = settled.await;
    }

    async fn send(&self, command: Command) {
        if self.tx.send(command).await.is_err() {
            // Only after a panic in the task: the events are synced anyway.
            tracing::warn!("the calendar_synced_at session is gone; stamps are not written");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No stamp transaction.
    Idle,
    /// A stamp transaction is open and healthy.
    Open,
    /// The batch's stamp transaction failed: the rest of its stamps are
    /// dropped until its commit or rollback.
    Failed,
}

struct Session {
    url: SecretUrl,
    limits: Limits,
    slot: String,
    metrics: Metrics,
    conn: Option<(Client, Statement, Statement)>,
    state: State,
}

impl Session {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(command) = rx.recv().await {
            match command {
                Command::Stamp(ids) => self.stamp(&ids).await,
                Command::Commit => self.end("commit").await,
                Command::Rollback => self.end("rollback").await,
                Command::Settle(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    async fn stamp(&mut self, ids: &[Uuid]) {
        if self.state == State::Failed {
            return;
        }
        if self.state == State::Idle {
            if let Err(e) = self.begin().await {
                self.failed(&e, ids.len());
                return;
            }
            self.state = State::Open;
        }
        let Some((client, _, mark)) = &self.conn else {
            return;
        };
        self.metrics.savepoint();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
        let (sp, stamped, released) = tokio::join!(
            client.batch_execute("savepoint stamp"),
            client.execute(mark, &params),
            client.batch_execute("release savepoint stamp"),
        );
        let Err(e) = sp.and(stamped).and(released) else {
            return;
        };
        // A statement failed (a CHECK, a raising trigger, a timeout): only
        // this chunk's stamps are lost, unless the transaction cannot go on.
        tracing::warn!(error = %describe_pg(&e), rows = ids.len(), "could not write interaction.calendar_synced_at; the events are synced");
        let recovered = !client.is_closed()
            && client
                .batch_execute("rollback to savepoint stamp")
                .await
                .is_ok();
        if !recovered {
            self.failed(&SyncError::db("stamping calendar_synced_at", e), 0);
        }
    }

    /// Opens the stamp transaction (and the session, when there is none).
    async fn begin(&mut self) -> Result<(), SyncError> {
        if self.conn.as_ref().is_some_and(|(c, _, _)| c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let client = crate::db::connect_limited(&self.url, "source", self.limits).await?;
            let prepare = db(
                "preparing the calendar_synced_at statements (has `calendar-sync migrate` run?)",
            );
            let marker = client.prepare(sql::ECHO_MARKER).await.map_err(&prepare)?;
            let mark = client.prepare(sql::MARK_SYNCED).await.map_err(&prepare)?;
            self.conn = Some((client, marker, mark));
        }
        let Some((client, marker, _)) = &self.conn else {
            return Ok(());
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&ECHO_PREFIX, &self.slot];
        let (begun, marked) = tokio::join!(
            client.batch_execute("begin"),
            client.query_one(marker, &params)
        );
        begun
            .and(marked.map(|_| ()))
            .map_err(db("beginning the calendar_synced_at transaction as calendar-sync's own (may this role insert into calendar_sync_echo?)"))
    }

    /// Ends the batch's stamp transaction: `commit` or `rollback` (always
    /// `rollback` when it failed).
    async fn end(&mut self, how: &str) {
        let state = std::mem::replace(&mut self.state, State::Idle);
        let how = match state {
            State::Idle => return,
            State::Open => how,
            State::Failed => "rollback",
        };
        let Some((client, _, _)) = &self.conn else {
            return;
        };
        if let Err(e) = client.batch_execute(how).await {
            tracing::warn!(error = %describe_pg(&e), "could not {how} the calendar_synced_at transaction; the events are synced");
            if client.is_closed() {
                self.conn = None;
            }
        }
    }

    /// The batch's stamp transaction cannot go on: its remaining stamps are
    /// dropped (its end rolls back); a closed session is reopened next batch.
    fn failed(&mut self, e: &SyncError, rows: usize) {
        if rows > 0 {
            tracing::warn!(error = %e, rows, "could not write interaction.calendar_synced_at; the events are synced");
        }
        if self.conn.as_ref().is_some_and(|(c, _, _)| c.is_closed()) {
            self.conn = None;
        }
        self.state = State::Failed;
    }
}
