//! PURE: how one interaction stands against its event ([`judge`]): fine,
//! missing, drifted (field by field, [`FIELDS`](super::FIELDS)) or invalid,
//! with the stamp rule for `updated_at` (see the parent module's docs). No
//! IO, no clock: the time is passed in.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::apply::columns::EventColumn;
use crate::apply::LiveInteraction;
use crate::mapping::rules::{decide, event_fields, Change};
use crate::mapping::{Decision, EventFields, InteractionRow};

/// How one interaction stands (PURE, [`judge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    Missing,
    Drifted(Vec<&'static str>),
    Invalid,
}

/// How long after our stamp's `now()` a trigger's `clock_timestamp()` bump
/// may land (the stamp is one short statement; decision 52).
pub const STAMP_BUMP_WINDOW: chrono::Duration = chrono::Duration::seconds(1);

/// The stamp rule (see the module docs): the interaction's `updated_at` is not
/// newer than our stamp (give or take [`STAMP_BUMP_WINDOW`]), so a difference
/// in it is the stamp's trigger bump. Only where triggers fire on the stamp
/// (`CALENDAR_SYNC_WRITE_SYNCED_AT=true` against them); by default none does.
pub fn stamp_bump_only(row: &InteractionRow, synced_at: Option<DateTime<Utc>>) -> bool {
    matches!((row.updated_at, synced_at), (Some(u), Some(s)) if u <= s + STAMP_BUMP_WINDOW)
}

/// PURE: the fields of `stored` that differ from `expected`, in
/// [`FIELDS`](super::FIELDS) order, each compared by its column
/// ([`EventColumn::differs`]); `updated_at` not when `ignore_updated_at` (the
/// stamp rule).
pub fn differing_fields(
    expected: &EventFields,
    stored: &EventFields,
    ignore_updated_at: bool,
) -> Vec<&'static str> {
    EventColumn::ALL
        .into_iter()
        .filter(|c| !(ignore_updated_at && *c == EventColumn::UpdatedAt))
        .filter(|c| c.differs(expected, stored))
        .map(EventColumn::name)
        .collect()
}

/// PURE: how interaction `c` stands against its event `stored`, at `now`.
pub fn judge(
    c: &LiveInteraction,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use crate::mapping::Toast;
    use chrono::TimeZone;
    use uuid::Uuid;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
            .single()
            .expect("valid")
    }

    fn current(days_ago: i64, archived: bool) -> LiveInteraction {
        LiveInteraction {
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

    fn judged(c: &LiveInteraction, stored: Option<&EventFields>) -> Verdict {
        judge(c, stored, t0(), chrono::Duration::days(30), chrono_tz::UTC)
    }

    fn fields_of(c: &LiveInteraction) -> EventFields {
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
        // A clock_timestamp() trigger lands just after the stamp's now().
        c.synced_at = Some(t0() - chrono::Duration::milliseconds(3));
        assert_eq!(judged(&c, Some(&stored)), Verdict::Fine);
        c.synced_at = Some(t0() - chrono::Duration::seconds(2));
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
