//! Extra events: interaction events whose interaction is gone from the
//! source, found in keyset pages of the events' `related_id`s checked against
//! the source (so it works with a separate target), checked again after
//! after a settled position (see [`settle`]), and deleted through the writer
//! at that position.

use std::collections::HashSet;
use std::time::Instant;

use tokio_postgres::Client;
use uuid::Uuid;

use super::repair::delete_events_of;
use super::{db, settle, PAGE, PROGRESS_EVERY};
use crate::apply::event::event_from_row;
use crate::apply::{sql, Writer};
use crate::config::Config;
use crate::error::SyncError;
use crate::visibility;

/// Interaction events whose interaction is gone, in keyset pages of their
/// `related_id`s checked against the source (works with a separate target);
/// deleted through `writer` when given. Returns (events read, extra).
/// Candidates are checked again after a settled position `W` (with `slot`,
/// also applied by the stream that runs it: [`settle`]): an interaction
/// absent then is gone, unless its event was written from above `W` (its
/// insert may not be visible yet: left for the next run).
pub(super) async fn extra_events(
    source: &Client,
    target: &Client,
    slot: Option<&str>,
    mut writer: Option<&mut Writer>,
) -> Result<(u64, u64), SyncError> {
    let peek = target
        .prepare(&sql::PEEK_EVENTS)
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
        let present = existing_of(source, &existing, &ids).await?;
        let mut gone: Vec<Uuid> = ids.into_iter().filter(|id| !present.contains(id)).collect();
        if gone.is_empty() {
            continue;
        }
        let at = match slot {
            Some(slot) => settle(source, slot).await?,
            None => visibility::settled_position(source, None, visibility::SETTLE_TIMEOUT).await?,
        };
        let back = existing_of(source, &existing, &gone).await?;
        let mut still: HashSet<Uuid> = HashSet::new();
        for r in &target
            .query(&peek, &[&gone])
            .await
            .map_err(db("reading events"))?
        {
            let id: Uuid = r
                .try_get("related_id")
                .map_err(db("reading calendar_events.related_id"))?;
            let e = event_from_row(r).map_err(db("reading an event"))?;
            if e.source_lsn.is_none_or(|l| l <= at) {
                still.insert(id);
            }
        }
        gone.retain(|id| !back.contains(id) && still.contains(id));
        extra += gone.len() as u64;
        if let (Some(w), false) = (writer.as_deref_mut(), gone.is_empty()) {
            delete_events_of(w, &gone, at).await?;
        }
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            tracing::info!(events = read, extra, "reconcile: extra events in progress");
        }
    }
    Ok((read, extra))
}

/// Which of interactions `ids` exist in the source (`existing`:
/// [`sql::EXISTING_INTERACTIONS`], prepared on `source`).
async fn existing_of(
    source: &Client,
    existing: &tokio_postgres::Statement,
    ids: &[Uuid],
) -> Result<HashSet<Uuid>, SyncError> {
    source
        .query(existing, &[&ids])
        .await
        .map_err(db("checking the events' interactions"))?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(db("reading interaction_id"))
}

/// `run --resync`, after its new snapshot committed: deletes the events of
/// interactions deleted while no slot recorded it. Returns how many.
pub async fn remove_extra_events(cfg: &Config, writer: &mut Writer) -> Result<u64, SyncError> {
    let source = crate::db::connect_limited(&cfg.source_url, "source", cfg.limits()).await?;
    let target = crate::db::connect_limited(cfg.target_url(), "target", cfg.limits()).await?;
    let (_, extra) = extra_events(&source, &target, None, Some(writer)).await?;
    Ok(extra)
}
