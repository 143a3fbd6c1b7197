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
//! `updated_at`: our stamp writes `interaction.calendar_synced_at`, and a CRM
//! trigger that bumps `updated_at` then moves it too, while the event keeps
//! the user's last change (the stream ignores its own echo). So when the
//! interaction's `updated_at` is at or before its `calendar_synced_at` (the
//! last write to the row was the stamp, or came before it; the trigger and
//! the stamp both take the stamp transaction's `now()`), a differing
//! `updated_at` is not drift, and a repair keeps the event's.
//!
//! # Repair, and why it is safe while `run` streams
//!
//! Without `--dry-run`, each page's missing and drifted interactions are read
//! again, `for share` (a transaction still writing one of them is waited for),
//! with their names and `pg_current_wal_insert_lsn()`, and pushed through the
//! stream's own planner and writer as a [`BatchKind::Reconcile`] batch (no
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::apply::event::event_from_row;
use crate::apply::plan::StoredEvent;
use crate::apply::sql::{self, CurrentOf};
use crate::apply::{BatchKind, Current, RowChange, Writer};
use crate::config::Config;
use crate::db;
use crate::error::SyncError;
use crate::mapping::rules::{decide, event_fields, Change};
use crate::mapping::{Action, Decision, EventFields, InteractionRow};
use crate::metrics::{Metrics, Status};

/// Interactions (and events) per page.
pub const PAGE: i64 = 5000;

/// How often a progress line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The compared `calendar_events` columns, as named in the report.
pub const FIELDS: [&str; 16] = [
    "title",
    "description",
    "event_date",
    "start_time",
    "end_time",
    "all_day",
    "event_type",
    "event_status",
    "location",
    "participants",
    "created_by",
    "updated_by",
    "created_at",
    "updated_at",
    "customer_id",
    "contact_id",
];

/// What `reconcile` found and did. Its JSON form is stable: every key is
/// always present, `fields` has every name of [`FIELDS`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// Interactions read.
    pub interactions: u64,
    /// Interaction events read (the extra-event pass).
    pub events: u64,
    pub missing: u64,
    pub extra: u64,
    pub drifted: u64,
    /// Drifted events per differing field.
    pub fields: BTreeMap<&'static str, u64>,
    pub invalid: u64,
    /// Successful writes (log rows with status `success`).
    pub repaired: u64,
    /// Repairs that failed (recorded in the failure queue).
    pub failed: u64,
}

impl Report {
    fn new(dry_run: bool) -> Report {
        Report {
            dry_run,
            interactions: 0,
            events: 0,
            missing: 0,
            extra: 0,
            drifted: 0,
            fields: FIELDS.iter().map(|f| (*f, 0)).collect(),
            invalid: 0,
            repaired: 0,
            failed: 0,
        }
    }

    /// Missing, extra and drifted events.
    pub fn drift(&self) -> u64 {
        self.missing + self.extra + self.drifted
    }

    /// 0: no drift, or all of it repaired; 1: drift found by `--dry-run`, or
    /// left after a repair (failures). Errors are 2 (main).
    pub fn exit_code(&self) -> u8 {
        let left = if self.dry_run {
            self.drift()
        } else {
            self.failed
        };
        u8::from(left > 0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "reconcile{}: {} interactions, {} interaction events checked",
            if self.dry_run { " (dry run)" } else { "" },
            self.interactions,
            self.events
        )?;
        let fields: Vec<String> = self
            .fields
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "missing {}, extra {}, drifted {}{}, invalid {}",
            self.missing,
            self.extra,
            self.drifted,
            if fields.is_empty() {
                String::new()
            } else {
                format!(" ({})", fields.join(", "))
            },
            self.invalid
        )?;
        write!(f, "repaired {}, failed {}", self.repaired, self.failed)
    }
}

/// How one interaction stands (PURE, [`judge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    Missing,
    Drifted(Vec<&'static str>),
    Invalid,
}

/// The stamp rule (see the module docs): the interaction's `updated_at` is not
/// newer than our stamp, so a difference in it is the stamp's trigger bump.
pub fn stamp_bump_only(row: &InteractionRow, synced_at: Option<DateTime<Utc>>) -> bool {
    matches!((row.updated_at, synced_at), (Some(u), Some(s)) if u <= s)
}

/// PURE: the fields of `stored` that differ from `expected`.
pub fn differing_fields(
    expected: &EventFields,
    stored: &EventFields,
    ignore_updated_at: bool,
) -> Vec<&'static str> {
    let (e, s) = (expected, stored);
    let same = [
        e.title == s.title,
        e.description == s.description,
        e.event_date == s.event_date,
        e.start_time == s.start_time,
        e.end_time == s.end_time,
        e.all_day == s.all_day,
        e.event_type == s.event_type,
        e.event_status == s.event_status,
        e.location == s.location,
        e.participants == s.participants,
        e.created_by == s.created_by,
        e.updated_by == s.updated_by,
        e.created_at == s.created_at,
        ignore_updated_at || e.updated_at == s.updated_at,
        e.customer_id == s.customer_id,
        e.contact_id == s.contact_id,
    ];
    FIELDS
        .iter()
        .zip(same)
        .filter(|(_, same)| !same)
        .map(|(f, _)| *f)
        .collect()
}

/// PURE: how interaction `c` stands against its event `stored`, at `now`.
pub fn judge(
    c: &Current,
    stored: Option<&EventFields>,
    now: DateTime<Utc>,
    window: chrono::Duration,
    tz: Tz,
) -> Verdict {
    let Ok(row) = &c.row else {
        return Verdict::Invalid;
    };
    let participants = c.participants();
    match stored {
        Some(stored) => match event_fields(row, &participants, Some(stored), tz) {
            Ok(expected) => {
                let diff = differing_fields(&expected, stored, stamp_bump_only(row, c.synced_at));
                if diff.is_empty() {
                    Verdict::Fine
                } else {
                    Verdict::Drifted(diff)
                }
            }
            Err(_) => Verdict::Invalid,
        },
        None => {
            let change = Change::Upsert { row, participants };
            match decide(&change, None, now, window, tz) {
                Ok(Decision::Create(_)) => Verdict::Missing,
                Ok(_) => Verdict::Fine,
                Err(_) => Verdict::Invalid,
            }
        }
    }
}

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
        .prepare(&sql::current_with_names(
            &cfg.participants,
            CurrentOf::Page { inclusive: true },
        ))
        .await
        .map_err(db("preparing the interaction read (has `calendar-sync migrate` run? are customer and contact as configured?)"))?;
    let next = source
        .prepare(&sql::current_with_names(
            &cfg.participants,
            CurrentOf::Page { inclusive: false },
        ))
        .await
        .map_err(db("preparing the interaction read"))?;
    let peek = target.prepare(sql::PEEK_EVENTS).await.map_err(db(
        "preparing the event read (has `calendar-sync migrate` run?)",
    ))?;
    let by_ids = source
        .prepare(&sql::current_with_names(&cfg.participants, CurrentOf::Ids))
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
        let page: Vec<Current> = rows
            .iter()
            .map(Current::from_row)
            .collect::<Result<_, _>>()?;
        let events = peek_events(&target, &peek, &page).await?;
        let now = Utc::now();
        let candidates: Vec<Uuid> = page
            .iter()
            .filter(|c| {
                let stored = events.get(&c.id).map(|e| &e.fields);
                matches!(
                    judge(c, stored, now, cfg.window, cfg.timezone),
                    Verdict::Missing | Verdict::Drifted(_)
                )
            })
            .map(|c| c.id)
            .collect();
        report.invalid += page
            .iter()
            .filter(|c| {
                let stored = events.get(&c.id).map(|e| &e.fields);
                judge(c, stored, now, cfg.window, cfg.timezone) == Verdict::Invalid
            })
            .count() as u64;
        drop(page);
        if candidates.is_empty() {
            continue;
        }
        // Drift the running stream is about to fix is not drift: let it
        // apply what was committed before this point, then look again.
        settle(&source, &cfg.slot).await?;
        let rows = source
            .query(&by_ids, &[&candidates])
            .await
            .map_err(db("reading interactions again"))?;
        let page: Vec<Current> = rows
            .iter()
            .map(Current::from_row)
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
                repair_page(w, cfg, &repair, &events).await?;
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
    if writer.is_some() {
        for action in Action::ALL {
            report.repaired += metrics.action_count(action, Status::Success);
            report.failed += metrics.action_count(action, Status::Failed);
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
    page: &[Current],
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

/// How long [`settle`] waits for a running stream.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// When a `run` is streaming this slot, waits until it has confirmed the
/// source's current WAL position: every transaction committed before now is
/// applied (an idle slot follows the WAL within seconds, contract §6). Returns
/// at once when the slot is missing or inactive (nothing else writes), and
/// after [`SETTLE_TIMEOUT`] with a warning (a lagging stream: what is reported
/// may include changes still in flight, which the regression guard orders).
async fn settle(source: &Client, slot: &str) -> Result<(), SyncError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let wal: tokio_postgres::types::PgLsn = source
        .query_one("select pg_current_wal_insert_lsn()", &[])
        .await
        .map_err(db("reading the source WAL position"))?
        .try_get(0)
        .map_err(db("reading the source WAL position"))?;
    loop {
        let waiting = source
            .query_opt(
                "select active and (confirmed_flush_lsn is null or confirmed_flush_lsn < $2)
                   from pg_replication_slots where slot_name = $1",
                &[&slot, &wal],
            )
            .await
            .map_err(db("reading pg_replication_slots"))?
            .map(|r| r.try_get::<_, Option<bool>>(0))
            .transpose()
            .map_err(db("reading pg_replication_slots"))?
            .flatten()
            .unwrap_or(false);
        if !waiting {
            return Ok(());
        }
        if Instant::now() >= deadline {
            tracing::warn!(slot, waited_s = SETTLE_TIMEOUT.as_secs(), "the running stream has not caught up: drift reported now may include changes still in flight");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Repairs interactions `ids` of one page from their current state, read
/// again `for share` (see the module docs), in one target transaction.
async fn repair_page(
    w: &mut Writer,
    cfg: &Config,
    ids: &[Uuid],
    events: &HashMap<Uuid, StoredEvent>,
) -> Result<(), SyncError> {
    let fresh = w.read_current(ids, &cfg.participants, true).await?;
    let now = Utc::now();
    w.begin(BatchKind::Reconcile);
    let result = async {
        let mut seen = HashSet::new();
        for mut c in fresh {
            seen.insert(c.id);
            let synced_at = c.synced_at;
            if let (Ok(row), Some(e)) = (c.row.as_mut(), events.get(&c.id)) {
                if stamp_bump_only(row, synced_at) {
                    row.updated_at = e.fields.updated_at;
                }
            }
            w.push_current(c, now).await?;
        }
        // Deleted since the page was read: its event goes too.
        let gone: Vec<Uuid> = ids
            .iter()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        if !gone.is_empty() {
            let lsn = w.source_wal_position().await?;
            for id in gone {
                w.push_row(RowChange {
                    lsn,
                    ts: now,
                    id,
                    row: None,
                })
                .await?;
            }
        }
        w.commit().await
    }
    .await;
    if let Err(e) = result {
        w.rollback().await;
        return Err(e);
    }
    Ok(())
}

/// Interaction events whose interaction is gone, in keyset pages of their
/// `related_id`s checked against the source (works with a separate target);
/// deleted through `writer` when given. Returns (events read, extra).
/// With `slot`, candidates are checked again after [`settle`].
async fn extra_events(
    source: &Client,
    target: &Client,
    slot: Option<&str>,
    mut writer: Option<&mut Writer>,
) -> Result<(u64, u64), SyncError> {
    let peek = target
        .prepare(sql::PEEK_EVENTS)
        .await
        .map_err(db("preparing the event read"))?;
    let first = target
        .prepare(sql::event_ids_page(true))
        .await
        .map_err(db("preparing the event id read"))?;
    let next = target
        .prepare(sql::event_ids_page(false))
        .await
        .map_err(db("preparing the event id read"))?;
    let existing = source
        .prepare(sql::EXISTING_INTERACTIONS)
        .await
        .map_err(db("preparing the interaction check"))?;
    let (mut read, mut extra) = (0u64, 0u64);
    let mut after = Uuid::nil();
    let mut statement = &first;
    let mut logged = Instant::now();
    loop {
        let ids: Vec<Uuid> = target
            .query(statement, &[&after, &PAGE])
            .await
            .map_err(db("reading a page of event ids"))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(db("reading calendar_events.related_id"))?;
        statement = &next;
        let Some(last) = ids.last() else { break };
        after = *last;
        read += ids.len() as u64;
        let present: HashSet<Uuid> = source
            .query(&existing, &[&ids])
            .await
            .map_err(db("checking the events' interactions"))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(db("reading interaction_id"))?;
        let mut gone: Vec<Uuid> = ids.into_iter().filter(|id| !present.contains(id)).collect();
        if let (Some(slot), false) = (slot, gone.is_empty()) {
            // A delete still in the stream is not drift (see `settle`).
            settle(source, slot).await?;
            let back: HashSet<Uuid> = source
                .query(&existing, &[&gone])
                .await
                .map_err(db("checking the events' interactions"))?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(db("reading interaction_id"))?;
            let still: HashSet<Uuid> = target
                .query(&peek, &[&gone])
                .await
                .map_err(db("reading events"))?
                .iter()
                .map(|r| r.try_get("related_id"))
                .collect::<Result<_, _>>()
                .map_err(db("reading calendar_events.related_id"))?;
            gone.retain(|id| !back.contains(id) && still.contains(id));
        }
        extra += gone.len() as u64;
        if let (Some(w), false) = (writer.as_deref_mut(), gone.is_empty()) {
            delete_events_of(w, &gone).await?;
        }
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            tracing::info!(events = read, extra, "reconcile: extra events in progress");
        }
    }
    Ok((read, extra))
}

/// Deletes the events of interactions `gone` through the writer (delete log
/// rows), in one target transaction.
async fn delete_events_of(w: &mut Writer, gone: &[Uuid]) -> Result<(), SyncError> {
    let lsn = w.source_wal_position().await?;
    let now = Utc::now();
    w.begin(BatchKind::Reconcile);
    let result = async {
        for id in gone {
            w.push_row(RowChange {
                lsn,
                ts: now,
                id: *id,
                row: None,
            })
            .await?;
        }
        w.commit().await
    }
    .await;
    if let Err(e) = result {
        w.rollback().await;
        return Err(e);
    }
    Ok(())
}

/// `run --resync`, after its new snapshot committed: deletes the events of
/// interactions deleted while no slot recorded it. Returns how many.
pub async fn remove_extra_events(cfg: &Config, writer: &mut Writer) -> Result<u64, SyncError> {
    let source = db::connect_limited(&cfg.source_url, "source", cfg.limits()).await?;
    let target = db::connect_limited(cfg.target_url(), "target", cfg.limits()).await?;
    let (_, extra) = extra_events(&source, &target, None, Some(writer)).await?;
    Ok(extra)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use crate::mapping::Toast;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
            .single()
            .expect("valid")
    }

    fn current(days_ago: i64, archived: bool) -> Current {
        Current {
            id: Uuid::from_u128(1),
            row: Ok(InteractionRow {
                interaction_id: Uuid::from_u128(1),
                interaction_type: "visit".into(),
                subject: Some("Review".into()),
                interaction_date: Some(t0() - chrono::Duration::days(days_ago)),
                customer_id: None,
                contact_id: None,
                location: Some("HQ".into()),
                description: Toast::Value(None),
                duration_minutes: Some(30),
                created_by: Uuid::from_u128(9),
                updated_by: None,
                created_at: None,
                updated_at: Some(t0()),
                archived,
            }),
            synced_at: None,
            customer_name: Some("Acme".into()),
            contact_name: None,
            read_at: Lsn::ZERO,
        }
    }

    fn judged(c: &Current, stored: Option<&EventFields>) -> Verdict {
        judge(c, stored, t0(), chrono::Duration::days(30), chrono_tz::UTC)
    }

    fn fields_of(c: &Current) -> EventFields {
        let row = c.row.as_ref().expect("row");
        event_fields(row, &c.participants(), None, chrono_tz::UTC).expect("fields")
    }

    #[test]
    fn missing_only_where_the_contract_creates_now() {
        assert_eq!(judged(&current(1, false), None), Verdict::Missing);
        assert_eq!(
            judged(&current(90, false), None),
            Verdict::Fine,
            "outside the window"
        );
        assert_eq!(judged(&current(1, true), None), Verdict::Fine, "archived");
    }

    #[test]
    fn an_old_event_is_compared_never_expected_to_go() {
        let c = current(400, false);
        assert_eq!(judged(&c, Some(&fields_of(&c))), Verdict::Fine);
    }

    #[test]
    fn drift_names_each_differing_field() {
        let c = current(1, false);
        let mut stored = fields_of(&c);
        stored.title = "typo".into();
        stored.participants = vec![];
        assert_eq!(
            judged(&c, Some(&stored)),
            Verdict::Drifted(vec!["title", "participants"])
        );
    }

    #[test]
    fn updated_at_moved_by_the_stamp_is_not_drift_a_later_user_change_is() {
        let mut c = current(1, false);
        let mut stored = fields_of(&c);
        stored.updated_at = Some(t0() - chrono::Duration::minutes(1));
        c.synced_at = Some(t0());
        assert_eq!(judged(&c, Some(&stored)), Verdict::Fine);
        c.synced_at = Some(t0() - chrono::Duration::seconds(1));
        assert_eq!(
            judged(&c, Some(&stored)),
            Verdict::Drifted(vec!["updated_at"])
        );
    }

    #[test]
    fn an_unmappable_row_is_invalid() {
        let mut c = current(1, false);
        if let Ok(r) = c.row.as_mut() {
            r.duration_minutes = Some(-5);
        }
        assert_eq!(judged(&c, None), Verdict::Invalid);
    }
}
