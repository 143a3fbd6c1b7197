//! Which deployment owns the slot (issue 14; decision 53).
//!
//! A slot lives in the source; a deployment is its target. The source's
//! `calendar_sync_slot_owner` (migrations/source/0004) says which target
//! claimed each slot name, by the target's random id
//! (`calendar_sync_target_id`, migrations/target/0004). `run` reads it under
//! the slot's advisory lock ([`super::client::lock_slot`]) and acts only on a
//! slot its own target claimed ([`Ownership::decide`], pure): it claims the name before
//! it creates the slot, so a slot whose first snapshot never committed is
//! still recognized and taken again; a slot claimed by another target, or an
//! unclaimed one it has no progress for, stops `run` with both deployments'
//! facts and the deliberate way out.

use tokio_postgres::Client;
use uuid::Uuid;

use super::client::SlotInfo;
use crate::error::{FatalKind, SyncError};
use crate::lsn::Lsn;

/// This deployment: its target's id and, for people, where that target is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub target_id: Uuid,
    pub target: String,
}

/// A row of `calendar_sync_slot_owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub target_id: Uuid,
    pub target: String,
    pub consistent_point: Option<Lsn>,
    pub claimed_at: String,
}

/// What [`Ownership::decide`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Claimed by this target: use, drop or recreate it as the start plan says.
    Ours,
    /// Unclaimed: claim it first (no slot yet, or a slot this target has
    /// progress for, from before slots had owners).
    Claim,
}

fn db(context: &'static str) -> impl Fn(tokio_postgres::Error) -> SyncError {
    move |e| SyncError::db(context, e)
}

/// Reads this deployment's identity from its target.
pub async fn me(target: &Client) -> Result<Me, SyncError> {
    let row = target
        .query_one(
            "select (select target_id from calendar_sync_target_id),
                    current_database()::text || '@' || coalesce(host(inet_server_addr()), 'local')
                        || ':' || coalesce(inet_server_port()::text, current_setting('port'))",
            &[],
        )
        .await
        .map_err(db(
            "reading calendar_sync_target_id (has `calendar-sync migrate` run on this target?)",
        ))?;
    let target_id: Option<Uuid> = row
        .try_get(0)
        .map_err(db("reading calendar_sync_target_id"))?;
    let Some(target_id) = target_id else {
        return Err(SyncError::fatal(
            FatalKind::SchemaMissing,
            "calendar_sync_target_id is empty: this target has no identity to claim a slot with",
            "run `calendar-sync migrate` (it creates it); do not delete the row",
        ));
    };
    Ok(Me {
        target_id,
        target: row.try_get(1).map_err(db("reading the target's name"))?,
    })
}

/// The claim on `slot`, if any.
pub async fn claim_of(source: &Client, slot: &str) -> Result<Option<Claim>, SyncError> {
    let ctx = "reading calendar_sync_slot_owner (has `calendar-sync migrate` run? calendar-sync's role needs select, insert, update on it)";
    let Some(r) = source
        .query_opt(
            "select target_id, target, consistent_point, claimed_at::text
               from calendar_sync_slot_owner where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(db(ctx))?
    else {
        return Ok(None);
    };
    Ok(Some(Claim {
        target_id: r.try_get(0).map_err(db(ctx))?,
        target: r.try_get(1).map_err(db(ctx))?,
        consistent_point: r
            .try_get::<_, Option<tokio_postgres::types::PgLsn>>(2)
            .map_err(db(ctx))?
            .map(Lsn::from),
        claimed_at: r.try_get(3).map_err(db(ctx))?,
    }))
}

/// Claims `slot` for `me` (an existing claim of ours is refreshed, one of
/// another target is left alone: the caller judged first, under the lock).
pub async fn claim(source: &Client, slot: &str, me: &Me) -> Result<(), SyncError> {
    source
        .execute(
            "insert into calendar_sync_slot_owner (slot_name, target_id, target)
             values ($1, $2, $3)
             on conflict (slot_name) do update set target = excluded.target
              where calendar_sync_slot_owner.target_id = excluded.target_id",
            &[&slot, &me.target_id, &me.target],
        )
        .await
        .map_err(db("claiming the slot in calendar_sync_slot_owner"))?;
    Ok(())
}

/// Records the consistent point of the slot `me` created (after its snapshot
/// committed).
pub async fn record_consistent_point(
    source: &Client,
    slot: &str,
    me: &Me,
    consistent_point: Lsn,
) -> Result<(), SyncError> {
    source
        .execute(
            "update calendar_sync_slot_owner set consistent_point = $3, claimed_at = now()
              where slot_name = $1 and target_id = $2",
            &[
                &slot,
                &me.target_id,
                &tokio_postgres::types::PgLsn::from(consistent_point),
            ],
        )
        .await
        .map_err(db(
            "recording the slot's consistent point in calendar_sync_slot_owner",
        ))?;
    Ok(())
}

impl Ownership {
    /// PURE: may this deployment (`me`, with `stored` progress for the slot) act
    /// on `slot` as `pg_replication_slots` shows it, given the `claim`?
    pub fn decide(
        slot_name: &str,
        me: &Me,
        claim: Option<&Claim>,
        stored: Option<Lsn>,
        slot: Option<&SlotInfo>,
    ) -> Result<Ownership, SyncError> {
        match (claim, slot, stored) {
        (Some(c), _, _) if c.target_id == me.target_id => Ok(Ownership::Ours),
        (Some(c), _, _) => Err(SyncError::fatal(
            FatalKind::OwnershipConflict,
            format!(
                "replication slot {slot_name} belongs to another calendar-sync: it was claimed at {} by the deployment whose target is {} (target id {}, consistent point {}); this one writes to {} (target id {}){}. Nothing was changed",
                c.claimed_at,
                c.target,
                c.target_id,
                c.consistent_point.map_or_else(|| "not recorded".into(), |l| l.to_string()),
                me.target,
                me.target_id,
                match slot.and_then(|s| s.confirmed_flush) {
                    Some(l) => format!("; the slot is at {l}"),
                    None if slot.is_none() => "; the slot does not exist right now".into(),
                    None => String::new(),
                },
            ),
            format!(
                "give this deployment its own CALENDAR_SYNC_SLOT (and CALENDAR_SYNC_PUBLICATION if you like); if TARGET_DATABASE_URL is wrong, fix it. Only if the other deployment is gone for good, hand the slot over deliberately: in the source, `select pg_drop_replication_slot('{slot_name}')` (when it exists) and `delete from calendar_sync_slot_owner where slot_name = '{slot_name}'`; this one then takes a new snapshot"
            ),
        )),
        (None, None, _) => Ok(Ownership::Claim),
        (None, Some(_), Some(_)) => Ok(Ownership::Claim),
        (None, Some(s), None) => Err(SyncError::fatal(
            FatalKind::OwnershipConflict,
            format!(
                "replication slot {slot_name} exists{}, but no calendar-sync has claimed it and this target ({}) has no progress for it: it may be another tool's, or another deployment's from before slots had owners. Nothing was changed",
                s.confirmed_flush.map_or_else(String::new, |l| format!(" (at {l})")),
                me.target,
            ),
            format!(
                "give this deployment its own CALENDAR_SYNC_SLOT; or, if nothing uses the slot, drop it in the source (`select pg_drop_replication_slot('{slot_name}')`) and start again: a new snapshot follows"
            ),
        )),
    }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Me {
        Me {
            target_id: Uuid::from_u128(1),
            target: "calendar@10.0.0.1:5432".into(),
        }
    }

    fn claim_by(id: u128) -> Claim {
        Claim {
            target_id: Uuid::from_u128(id),
            target: "staging@10.0.0.2:5432".into(),
            consistent_point: Some(Lsn(0x1000)),
            claimed_at: "2026-12-01 10:00:00+00".into(),
        }
    }

    fn slot() -> SlotInfo {
        SlotInfo::sample(Lsn(0x2000))
    }

    #[test]
    fn our_claim_is_ours_whatever_the_slot_and_progress() {
        for (s, p) in [
            (None, None),
            (Some(slot()), None),
            (Some(slot()), Some(Lsn(5))),
            (None, Some(Lsn(5))),
        ] {
            assert_eq!(
                Ownership::decide("s", &me(), Some(&claim_by(1)), p, s.as_ref()).ok(),
                Some(Ownership::Ours)
            );
        }
    }

    #[test]
    fn another_targets_claim_stops_with_both_deployments_facts() {
        let e = Ownership::decide("s", &me(), Some(&claim_by(2)), None, Some(&slot())).unwrap_err();
        let text = e.to_string();
        for fact in [
            "staging@10.0.0.2:5432",
            "calendar@10.0.0.1:5432",
            "0/1000",
            "0/2000",
            "pg_drop_replication_slot('s')",
            "delete from calendar_sync_slot_owner where slot_name = 's'",
        ] {
            assert!(text.contains(fact), "{fact} in {text}");
        }
        assert_eq!(e.kind(), Some(FatalKind::OwnershipConflict));
    }

    #[test]
    fn an_unclaimed_slot_is_claimed_only_with_our_progress_or_before_it_exists() {
        assert_eq!(
            Ownership::decide("s", &me(), None, None, None).ok(),
            Some(Ownership::Claim)
        );
        assert_eq!(
            Ownership::decide("s", &me(), None, Some(Lsn(9)), Some(&slot())).ok(),
            Some(Ownership::Claim),
            "a slot this target streamed before slots had owners"
        );
        let e = Ownership::decide("s", &me(), None, None, Some(&slot())).unwrap_err();
        assert_eq!(e.kind(), Some(FatalKind::OwnershipConflict), "{e}");
        assert!(
            e.to_string().contains("no calendar-sync has claimed it"),
            "{e}"
        );
    }
}
