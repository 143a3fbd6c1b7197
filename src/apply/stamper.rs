//! `interaction.calendar_synced_at`, written on a session of its own after
//! each batch's target commit, in short transactions that never make a CRM
//! session wait (contract §8, "The stamp is harmless"; decision 52).
//!
//! - **After the commit.** The writer holds a batch's synced ids
//!   ([`Stamper::hold`]) and hands them over when the batch's target
//!   transaction has committed ([`Stamper::commit`]); a batch rolled back
//!   drops them. A stamp is never visible before its event, and the writer
//!   never waits for one (except when [`QUEUE`] batches already wait).
//! - **Short.** Each group of at most [`STAMP_ROWS`] ids is one transaction:
//!   `begin`, [`echo::MARKER`], [`sql::MARK_SYNCED`], `commit`, pipelined in
//!   one round trip. Its row locks live for that one statement; rows a CRM
//!   session holds are skipped (`for update skip locked`), so a stamp never
//!   waits behind a CRM lock, and a CRM session waits at most for one
//!   statement of a few hundred primary-key updates.
//! - **No trigger fires.** Where the role may, the session runs with
//!   `session_replication_role = replica`: the CRM's ordinary triggers
//!   (the one that moves `updated_at`, audit triggers) do not fire on a write
//!   that is no business change. [`Stamper::start`] decides whether stamps are
//!   written at all ([`Stamping`]): `auto` stamps only where no trigger fires
//!   on the stamp.
//! - **Never applied back.** The marker proves the transaction ours
//!   (`crate::echo`); the stream ignores it whatever the timing.
//!
//! Best effort, as before (decision 4): a failed stamp is logged, a lost
//! session is reconnected at the next batch, and a stop before the stamps of
//! a committed batch are written leaves them old; the calendar is right
//! either way. At most [`HELD_MAX`] ids are held per batch (16 MiB): the
//! stamps of a larger batch beyond that are not written (logged).

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::{db, sql};
use crate::config::{SecretUrl, Stamping};
use crate::db::Limits;
use crate::echo;
use crate::error::{describe_pg, SyncError};

/// Batches whose stamps may wait for the stamp session before the writer waits.
const QUEUE: usize = 2;
/// Ids per stamp transaction: its row locks last one statement this long.
pub const STAMP_ROWS: usize = 500;
/// Ids held per batch at most (16 bytes each).
pub const HELD_MAX: usize = 1 << 20;

enum Command {
    /// Stamps of one committed batch.
    Stamp(Vec<Vec<Uuid>>),
    /// Answer once everything before it is done.
    Settle(oneshot::Sender<()>),
}

/// The writer's handle on the stamp session. Dropping it ends the task.
pub(super) struct Stamper {
    tx: mpsc::Sender<Command>,
    /// The open batch's synced ids, in chunks as written.
    held: Vec<Vec<Uuid>>,
    held_count: usize,
    /// Ids of the open batch that did not fit into [`HELD_MAX`].
    dropped: usize,
    _task: JoinHandle<()>,
}

/// Why stamps are or are not written, found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampProbe {
    /// The role may set `session_replication_role = replica`.
    pub replica_role: bool,
    /// Triggers of `interaction` that would fire on the stamp.
    pub firing: Vec<String>,
}

impl StampProbe {
    /// Whether `mode` writes stamps given what was found.
    pub fn stamps(&self, mode: Stamping) -> bool {
        match mode {
            Stamping::Off => false,
            Stamping::On => true,
            Stamping::Auto => self.firing.is_empty(),
        }
    }
}

/// Triggers of `interaction` that fire on an update by a session whose
/// `session_replication_role` is `$1` ('replica' or 'origin'): enabled
/// `ALWAYS` or `REPLICA` in replica mode, `ALWAYS` or ordinary otherwise.
const FIRING_TRIGGERS: &str = "select tgname::text from pg_trigger
  where tgrelid = 'interaction'::regclass and not tgisinternal
    and tgenabled = any(case when $1 = 'replica' then '{A,R}'::\"char\"[] else '{A,O}'::\"char\"[] end)
    and (tgtype::int & 16) <> 0
  order by tgname";

impl Stamper {
    /// Connects the stamp session and decides, for `mode`, whether stamps
    /// are written (logged either way). `None`: no stamps.
    pub(super) async fn start(
        url: SecretUrl,
        limits: Limits,
        mode: Stamping,
    ) -> Result<Option<Stamper>, SyncError> {
        if mode == Stamping::Off {
            return Ok(None);
        }
        let (client, probe) = connect(&url, limits).await?;
        if !probe.stamps(mode) {
            tracing::warn!(
                triggers = %probe.firing.join(", "),
                replica_role = probe.replica_role,
                "interaction.calendar_synced_at is not written: the stamp would set off the CRM's triggers listed (the role may {}set session_replication_role = replica); set CALENDAR_SYNC_WRITE_SYNCED_AT=true to stamp anyway, or false to silence this (README, 'The calendar_synced_at stamp')",
                if probe.replica_role { "" } else { "not " }
            );
            return Ok(None);
        }
        if probe.firing.is_empty() {
            tracing::info!(
                replica_role = probe.replica_role,
                "interaction.calendar_synced_at is written after each batch; no CRM trigger fires on it"
            );
        } else {
            tracing::warn!(
                triggers = %probe.firing.join(", "),
                "interaction.calendar_synced_at is written (CALENDAR_SYNC_WRITE_SYNCED_AT=true) although these CRM triggers fire on it: what they change in the CRM row (an updated_at bump) is not copied to the calendar by the stream, but retries and reconcile repairs read the row as it is"
            );
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(
            Session {
                url,
                limits,
                conn: Some(client),
            }
            .run(rx),
        );
        Ok(Some(Stamper {
            tx,
            held: Vec::new(),
            held_count: 0,
            dropped: 0,
            _task: task,
        }))
    }

    /// Holds the ids of a written chunk of the open batch.
    pub(super) fn hold(&mut self, ids: Vec<Uuid>) {
        if ids.is_empty() {
            return;
        }
        if self.held_count + ids.len() > HELD_MAX {
            self.dropped += ids.len();
            return;
        }
        self.held_count += ids.len();
        self.held.push(ids);
    }

    /// The batch committed: its stamps are written (in the background).
    pub(super) async fn commit(&mut self) {
        let held = std::mem::take(&mut self.held);
        self.held_count = 0;
        let dropped = std::mem::take(&mut self.dropped);
        if dropped > 0 {
            tracing::warn!(
                rows = dropped,
                held = HELD_MAX,
                "a batch synced more interactions than the stamps held per batch: these keep their old calendar_synced_at (the calendar is synced)"
            );
        }
        if !held.is_empty() {
            self.send(Command::Stamp(held)).await;
        }
    }

    /// The batch was abandoned: nothing of it is stamped.
    pub(super) fn rollback(&mut self) {
        self.held.clear();
        self.held_count = 0;
        self.dropped = 0;
    }

    /// Waits until every stamp handed over so far is written or given up (a
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

/// A stamp session and what it found (see [`StampProbe`]).
async fn connect(url: &SecretUrl, limits: Limits) -> Result<(Client, StampProbe), SyncError> {
    let client = crate::db::connect_limited(url, "source", limits).await?;
    let replica_role = client
        .batch_execute("set session_replication_role = replica")
        .await
        .is_ok();
    let role = if replica_role { "replica" } else { "origin" };
    let firing = client
        .query(FIRING_TRIGGERS, &[&role])
        .await
        .map_err(db(
            "reading the triggers of interaction (has `calendar-sync migrate` run?)",
        ))?
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(db("reading the triggers of interaction"))?;
    Ok((
        client,
        StampProbe {
            replica_role,
            firing,
        },
    ))
}

struct Session {
    url: SecretUrl,
    limits: Limits,
    conn: Option<Client>,
}

impl Session {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut prepared: Option<(Statement, Statement)> = None;
        while let Some(command) = rx.recv().await {
            match command {
                Command::Stamp(chunks) => {
                    let ids: Vec<Uuid> = chunks.into_iter().flatten().collect();
                    for group in ids.chunks(STAMP_ROWS) {
                        if let Err(e) = self.stamp(&mut prepared, group).await {
                            tracing::warn!(error = %e, rows = ids.len(), "could not write interaction.calendar_synced_at; the events are synced");
                            break;
                        }
                    }
                }
                Command::Settle(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    /// One stamp transaction for `ids`.
    async fn stamp(
        &mut self,
        prepared: &mut Option<(Statement, Statement)>,
        ids: &[Uuid],
    ) -> Result<(), SyncError> {
        if self.conn.as_ref().is_some_and(Client::is_closed) {
            self.conn = None;
        }
        if self.conn.is_none() {
            // Reconnected: the role and triggers are as they were at start
            // (a change of either is seen at the next start).
            let (client, _) = connect(&self.url, self.limits).await?;
            self.conn = Some(client);
            *prepared = None;
        }
        let Some(client) = self.conn.as_ref() else {
            return Ok(());
        };
        if prepared.is_none() {
            let prepare = db(
                "preparing the calendar_synced_at statements (has `calendar-sync migrate` run? the role needs select on calendar_sync_echo_key)",
            );
            let marker = client.prepare(echo::MARKER).await.map_err(&prepare)?;
            let mark = client.prepare(sql::MARK_SYNCED).await.map_err(&prepare)?;
            *prepared = Some((marker, mark));
        }
        let Some((marker, mark)) = prepared.as_ref() else {
            return Ok(());
        };
        let prefix: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&echo::PREFIX];
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
        // Pipelined: one round trip. The marker is the transaction's first
        // statement (the stream takes a later one for a forgery).
        let (begun, marked, stamped, committed) = tokio::join!(
            client.batch_execute("begin"),
            client.query(marker, &prefix),
            client.execute(mark, &params),
            client.batch_execute("commit"),
        );
        let empty = marked.as_ref().map(Vec::is_empty).unwrap_or(false);
        let failed = begun
            .and(marked.map(|_| ()))
            .and(stamped.map(|_| ()))
            .and(committed);
        if let Err(e) = failed {
            // Commit on an aborted transaction rolls it back; a broken
            // session is replaced at the next stamp.
            let _ = client.batch_execute("rollback").await;
            return Err(SyncError::transient(
                "stamping calendar_synced_at",
                describe_pg(&e),
            ));
        }
        if empty {
            tracing::warn!("calendar_sync_echo_key is empty: calendar_synced_at is not written (run `calendar-sync migrate`)");
        }
        Ok(())
    }
}
