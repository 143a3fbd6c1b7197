//! `calendar-sync reconcile [--dry-run] [--json]`: proves the calendar right,
//! or makes it so (issue 8, section 1).
//!
//! # What is compared
//!
//! Every interaction, read now with its participants' names (keyset pages of
//! [`PAGE`] ids, in id order), against its event in the target:
//! - **missing**: no event, and the contract would create one *now* (not
//!   archived, subject and date set, inside the window at reconcile time);
//! - **drifted**: an event whose mapped fields differ from what the
//!   interaction gives, field by field ([`FIELDS`]). An event is never
//!   expected to go for age: only creation looks at the window;
//! - **extra**: an interaction event whose interaction is gone (a second,
//!   paged pass over the events' `related_id`s, checked against the source);
//! - **invalid**: an interaction that cannot be mapped (negative duration...):
//!   reported, not repaired, since the failure queue owns it.
//!
//! `updated_at`: by default our stamp sets off no CRM trigger (decision 52),
//! so `updated_at` is the user's. Where triggers fire on it
//! (`CALENDAR_SYNC_WRITE_SYNCED_AT=true`), one that bumps `updated_at` moves
//! it while the event keeps the user's last change (the stream ignores its
//! own echo). So when the interaction's `updated_at` is at most
//! [`compare::STAMP_BUMP_WINDOW`] past its `calendar_synced_at` (the last
//! write to the row was the stamp, or came before it), a differing
//! `updated_at` is not drift, and a repair keeps the event's.
//!
//! # Repair, and why it is safe while `run` streams
//!
//! Without `--dry-run`, each page's missing and drifted interactions are read
//! again, `for share` (a transaction still writing one of them is waited for),
//! with their names and `pg_current_wal_insert_lsn()`, and pushed through the
//! stream's own planner and writer as a [`crate::apply::BatchKind::Reconcile`] batch (no
//! progress row); extra events are pushed as deletes. Log rows carry the real
//! action, interactions are stamped, a bad row becomes a failure, exactly as
//! the stream does it. Each write carries the WAL position read with its row:
//! at or after the commit of the state it saw. The stream's changes of that
//! interaction committed before are refused by the regression guard (the
//! event already shows their result or a later one); those committed after
//! have a higher LSN and win. A reconcile write therefore only ever moves an
//! event to a state the interaction really had, never behind the stream, and
//! the stream's next change puts it where the stream alone would. Events are
//! read `for update` by the writer, so a reconcile batch and a stream batch
//! never interleave on one event.
//!
//! # Size
//!
//! Pages of [`PAGE`] rows; memory holds one page and its events. A progress
//! line goes to stderr every few seconds.

//!
//! # Layout
//!
//! - this module: the driver ([`reconcile`]): pages of interactions, their
//!   events, `settle` before anything is counted as drift;
//! - `compare`: PURE, how one interaction stands against its event ([`judge`]);
//! - `repair`: the writes of a repair, through the stream's [`Writer`];
//! - `extra`: the pass over events whose interaction is gone;
//! - `report`: what was found and done ([`Report`]), as text and JSON.

mod compare;
mod extra;
mod repair;
mod report;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::apply::columns::EventColumn;
use crate::apply::event::event_from_row;
use crate::apply::plan::StoredEvent;
use crate::apply::sql::{self, LiveRead};
use crate::apply::{LiveInteraction, Writer, STAMPS_AT_EXIT};
use crate::config::Config;
use crate::db;
use crate::error::SyncError;
use crate::lsn::Lsn;
use crate::mapping::Action;
use crate::mapping::Outcome;
use crate::metrics::Metrics;
use crate::visibility;

pub use compare::{differing_fields, judge, stamp_bump_only, Verdict};
pub use extra::remove_extra_events;
pub use report::Report;

use extra::extra_events;
use repair::repair_page;

/// Interactions (and events) per page.
pub const PAGE: i64 = 5000;

/// How often a progress line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The compared `calendar_events` columns, as named in the report: the
/// mapped columns, in table order ([`EventColumn::NAMES`]).
pub const FIELDS: [&str; EventColumn::ALL.len()] = EventColumn::NAMES;

fn db(context: &'static str) -> impl Fn(tokio_postgres::Error) -> SyncError {
    move |e| SyncError::db(context, e)
}

/// Runs `reconcile`: compares every interaction with its event and, unless
/// `dry_run`, repairs what differs. See the module docs.
pub async fn reconcile(cfg: &Config, dry_run: bool) -> Result<Report, SyncError> {
    let source = db::connect_limited(&cfg.source_url, "source", cfg.limits()).await?;
    let target = db::connect_limited(cfg.target_url(), "target", cfg.limits()).await?;
    let metrics = Metrics::new();
    let mut writer = if dry_run {
        None
    } else {
        let t = db::connect_limited(cfg.target_url(), "target", cfg.limits()).await?;
        let s = db::connect_limited(&cfg.source_url, "source", cfg.limits()).await?;
        Some(Writer::new(cfg, t, s, metrics.clone()).await?)
    };
    let mut report = Report::new(dry_run);
    let first = source
        .prepare(&sql::live_with_names(
            &cfg.participants,
            LiveRead::Page { inclusive: true },
        ))
        .await
        .map_err(db("preparing the interaction read (has `calendar-sync migrate` run? are customer and contact as configured?)"))?;
    let next = source
        .prepare(&sql::live_with_names(
            &cfg.participants,
            LiveRead::Page { inclusive: false },
        ))
        .await
        .map_err(db("preparing the interaction read"))?;
    let peek = target.prepare(&sql::PEEK_EVENTS).await.map_err(db(
        "preparing the event read (has `calendar-sync migrate` run?)",
    ))?;
    let by_ids = source
        .prepare(&sql::live_with_names(&cfg.participants, LiveRead::Ids))
        .await
        .map_err(db("preparing the interaction read"))?;
    let started = Instant::now();
    let mut logged = Instant::now();
    let mut after = Uuid::nil();
    let mut statement = &first;
    loop {
        let rows = source
            .query(statement, &[&after, &PAGE])
            .await
            .map_err(db("reading a page of interactions"))?;
        statement = &next;
        let Some(last) = rows.last() else { break };
        after = last
            .try_get("interaction_id")
            .map_err(db("reading interaction_id"))?;
        report.interactions += rows.len() as u64;
        // Judged only to find candidates: nothing is decided on this read.
        let page: Vec<LiveInteraction> = rows
            .iter()
            .map(|r| LiveInteraction::from_row(r, Lsn::ZERO))
            .collect::<Result<_, _>>()?;
        let events = peek_events(&target, &peek, &page).await?;
        let now = Utc::now();
        let mut candidates: Vec<Uuid> = Vec::new();
        for c in &page {
            let stored = events.get(&c.id).map(|e| &e.fields);
            match judge(c, stored, now, cfg.window, cfg.timezone) {
                Verdict::Missing | Verdict::Drifted(_) => candidates.push(c.id),
                Verdict::Invalid => report.invalid += 1,
                Verdict::Fine => {}
            }
        }
        drop(page);
        if candidates.is_empty() {
            continue;
        }
        // Drift the running stream is about to fix is not drift: let it
        // apply what was committed before this point, then look again.
        let at = settle(&source, &cfg.slot).await?;
        let rows = source
            .query(&by_ids, &[&candidates])
            .await
            .map_err(db("reading interactions again"))?;
        let page: Vec<LiveInteraction> = rows
            .iter()
            .map(|r| LiveInteraction::from_row(r, at))
            .collect::<Result<_, _>>()?;
        let events = peek_events(&target, &peek, &page).await?;
        let now = Utc::now();
        let mut repair = Vec::new();
        for c in &page {
            let stored = events.get(&c.id).map(|e| &e.fields);
            match judge(c, stored, now, cfg.window, cfg.timezone) {
                Verdict::Fine | Verdict::Invalid => {}
                Verdict::Missing => {
                    report.missing += 1;
                    repair.push(c.id);
                }
                Verdict::Drifted(fields) => {
                    report.drifted += 1;
                    for f in fields {
                        *report.fields.entry(f).or_insert(0) += 1;
                    }
                    repair.push(c.id);
                }
            }
        }
        if let Some(w) = writer.as_mut() {
            if !repair.is_empty() {
                repair_page(w, cfg, &repair, &events, at).await?;
            }
        }
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            tracing::info!(
                interactions = report.interactions,
                missing = report.missing,
                drifted = report.drifted,
                invalid = report.invalid,
                elapsed_s = started.elapsed().as_secs(),
                "reconcile: interactions in progress"
            );
        }
    }
    let (events, extra) = extra_events(&source, &target, Some(&cfg.slot), writer.as_mut()).await?;
    report.events = events;
    report.extra = extra;
    if let Some(w) = writer.as_ref() {
        w.settle_stamps(STAMPS_AT_EXIT).await;
        for action in Action::ALL {
            report.repaired += metrics.action_count(action, Outcome::Success);
            report.failed += metrics.action_count(action, Outcome::Failed);
        }
    }
    tracing::info!(
        interactions = report.interactions,
        events = report.events,
        missing = report.missing,
        extra = report.extra,
        drifted = report.drifted,
        invalid = report.invalid,
        repaired = report.repaired,
        failed = report.failed,
        elapsed_s = started.elapsed().as_secs(),
        "reconcile done"
    );
    Ok(report)
}

/// The events of `page`'s interactions, by interaction id.
async fn peek_events(
    target: &Client,
    peek: &tokio_postgres::Statement,
    page: &[LiveInteraction],
) -> Result<HashMap<Uuid, StoredEvent>, SyncError> {
    let ids: Vec<Uuid> = page.iter().map(|c| c.id).collect();
    let mut events = HashMap::with_capacity(ids.len());
    for r in &target
        .query(peek, &[&ids])
        .await
        .map_err(db("reading the page's events"))?
    {
        let id: Uuid = r
            .try_get("related_id")
            .map_err(db("reading calendar_events.related_id"))?;
        events.insert(id, event_from_row(r).map_err(db("reading an event"))?);
    }
    Ok(events)
}

/// A position `W` such that every source transaction committed at or before
/// it is visible to the reads that follow and, while `run` streams `slot`,
/// applied by it ([`visibility::settled_position`]). Drift the running stream
/// is about to fix is then not drift, and a change committed but not yet
/// visible is never mistaken for drift (issue 13): candidates are read again
/// after it, and their repairs carry `W`.
async fn settle(source: &Client, slot: &str) -> Result<Lsn, SyncError> {
    visibility::settled_position(source, Some(slot), visibility::SETTLE_TIMEOUT).await
}
