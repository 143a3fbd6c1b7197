//! The field mapping of contract §3, as pure functions.

use chrono::{DateTime, NaiveTime, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

use super::RowError;

/// `calendar_events.event_status` as this service writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    Scheduled,
    Cancelled,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        self.as_db()
    }

    /// The same, as a `'static` statement parameter (`&&str` is `ToSql`).
    pub fn as_db(&self) -> &'static &'static str {
        match self {
            EventStatus::Scheduled => &"scheduled",
            EventStatus::Cancelled => &"cancelled",
        }
    }

    /// Other values (e.g. `completed`, set by hand) are kept as "not cancelled".
    pub fn from_db(s: Option<&str>) -> EventStatus {
        match s {
            Some("cancelled") => EventStatus::Cancelled,
            _ => EventStatus::Scheduled,
        }
    }
}

/// Every mapped column of one `calendar_events` row. Two equal values mean the
/// row needs no write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFields {
    pub title: String,
    pub description: Option<String>,
    pub event_date: DateTime<Utc>,
    pub start_time: NaiveTime,
    pub end_time: Option<NaiveTime>,
    pub all_day: bool,
    pub event_type: String,
    pub event_status: EventStatus,
    pub location: Option<String>,
    pub participants: Vec<String>,
    pub created_by: Uuid,
    pub updated_by: Option<Uuid>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// Tracking columns (a deviation from the seed): which customer and contact
    /// the participants came from, so a rename finds the events to refresh.
    pub customer_id: Option<Uuid>,
    pub contact_id: Option<Uuid>,
}

/// Time of day of `at` in `tz`.
pub fn start_time(at: DateTime<Utc>, tz: Tz) -> NaiveTime {
    at.with_timezone(&tz).time()
}

/// `all_day`: `duration_minutes IS NULL OR duration_minutes = 0`.
pub fn all_day(duration_minutes: Option<i32>) -> bool {
    matches!(duration_minutes, None | Some(0))
}

/// Time of day, in `tz`, of the real end instant `at + duration`. Wraps past
/// midnight; across a DST change it is the wall-clock time of the real end, as
/// the seed's JavaScript (`setMinutes(getMinutes() + d)`) computes it. NULL for
/// all-day events; a negative duration is bad input.
pub fn end_time(
    at: DateTime<Utc>,
    duration_minutes: Option<i32>,
    tz: Tz,
) -> Result<Option<NaiveTime>, RowError> {
    match duration_minutes {
        None | Some(0) => Ok(None),
        Some(d) if d < 0 => Err(RowError::NegativeDuration(d)),
        Some(d) => {
            let end = at
                .checked_add_signed(chrono::Duration::minutes(i64::from(d)))
                .ok_or(RowError::EndOutOfRange)?;
            Ok(Some(end.with_timezone(&tz).time()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid")
    }

    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("valid")
    }

    #[test]
    fn start_time_is_the_time_of_day_in_the_zone() {
        assert_eq!(
            start_time(utc(2026, 7, 1, 12, 0), chrono_tz::UTC),
            hm(12, 0)
        );
        assert_eq!(
            start_time(utc(2026, 7, 1, 12, 0), chrono_tz::Europe::Berlin),
            hm(14, 0)
        );
        assert_eq!(
            start_time(utc(2026, 7, 1, 2, 0), chrono_tz::America::New_York),
            hm(22, 0)
        );
    }

    #[test]
    fn end_time_wraps_past_midnight() {
        let end = end_time(utc(2026, 7, 1, 23, 30), Some(90), chrono_tz::UTC);
        assert_eq!(end, Ok(Some(hm(1, 0))));
    }

    #[test]
    fn end_time_across_dst_is_the_real_end() {
        // Berlin springs forward 2026-03-29 02:00 -> 03:00. 01:30 local + 60 min
        // of real time is 03:30 local, not 02:30.
        let start = chrono_tz::Europe::Berlin
            .with_ymd_and_hms(2026, 3, 29, 1, 30, 0)
            .single()
            .expect("valid")
            .with_timezone(&Utc);
        assert_eq!(
            end_time(start, Some(60), chrono_tz::Europe::Berlin),
            Ok(Some(hm(3, 30)))
        );
    }

    #[test]
    fn all_day_events_have_no_end_and_negative_durations_are_refused() {
        assert!(all_day(None) && all_day(Some(0)) && !all_day(Some(1)));
        assert_eq!(
            end_time(utc(2026, 7, 1, 9, 0), None, chrono_tz::UTC),
            Ok(None)
        );
        assert_eq!(
            end_time(utc(2026, 7, 1, 9, 0), Some(0), chrono_tz::UTC),
            Ok(None)
        );
        assert_eq!(
            end_time(utc(2026, 7, 1, 9, 0), Some(-5), chrono_tz::UTC),
            Err(RowError::NegativeDuration(-5))
        );
    }
}
