//! Text-format column values as the walsender prints them (pgoutput proto 1
//! without `binary`). The replication session pins `DateStyle=ISO` and
//! `TimeZone=UTC`, so timestamptz arrives as `2026-11-25 01:40:32.123456+00`;
//! other offsets (`+05:30`, `-03:00:15`) are still accepted.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use uuid::Uuid;

/// Why a text value could not be read (the caller adds the column name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    pub expected: &'static str,
    pub found: String,
}

fn bad(expected: &'static str, found: &str) -> BadValue {
    // Values of mapped columns only; cut long ones so a log line stays a line.
    let found: String = found.chars().take(64).collect();
    BadValue { expected, found }
}

pub fn parse_uuid(s: &str) -> Result<Uuid, BadValue> {
    Uuid::parse_str(s).map_err(|_| bad("a UUID", s))
}

pub fn parse_i32(s: &str) -> Result<i32, BadValue> {
    s.parse().map_err(|_| bad("a 32-bit integer", s))
}

pub fn parse_bool(s: &str) -> Result<bool, BadValue> {
    match s {
        "t" => Ok(true),
        "f" => Ok(false),
        _ => Err(bad("a boolean ('t' or 'f')", s)),
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]±HH[:MM[:SS]]`. `infinity` and BC dates have no
/// place in a calendar and are rejected.
pub fn parse_timestamptz(s: &str) -> Result<DateTime<Utc>, BadValue> {
    const EXPECTED: &str = "an ISO timestamp with time zone such as 2026-11-25 01:40:32.5+00";
    let err = || bad(EXPECTED, s);
    // The offset starts at the last '+' or '-' after the time part.
    let split = s
        .char_indices()
        .skip(11)
        .filter(|(_, c)| *c == '+' || *c == '-')
        .map(|(i, _)| i)
        .last()
        .ok_or_else(err)?;
    let (local, offset) = s.split_at(split);
    let (date, time) = local.split_once(' ').ok_or_else(err)?;
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| err())?;
    let time = NaiveTime::parse_from_str(time, "%H:%M:%S%.f").map_err(|_| err())?;
    let sign: i64 = if offset.starts_with('-') { -1 } else { 1 };
    let mut secs: i64 = 0;
    for (i, part) in offset[1..].split(':').enumerate() {
        if i > 2 || part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let n: i64 = part.parse().map_err(|_| err())?;
        secs += n * [3600, 60, 1][i];
    }
    let naive = NaiveDateTime::new(date, time);
    let utc = naive
        .checked_sub_signed(chrono::Duration::seconds(sign * secs))
        .ok_or_else(err)?;
    Ok(utc.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_in_iso_style_with_any_offset() {
        let want = Utc
            .with_ymd_and_hms(2026, 11, 25, 1, 40, 32)
            .single()
            .expect("valid");
        assert_eq!(parse_timestamptz("2026-11-25 01:40:32+00"), Ok(want));
        assert_eq!(parse_timestamptz("2026-11-25 07:10:32+05:30"), Ok(want));
        assert_eq!(parse_timestamptz("2026-11-24 22:40:32-03"), Ok(want));
        let frac = parse_timestamptz("2026-11-25 01:40:32.123456+00").expect("valid");
        assert_eq!(frac.timestamp_subsec_micros(), 123_456);
        assert_eq!(
            parse_timestamptz("1850-01-01 00:00:00-00:53:28"),
            Ok(Utc
                .with_ymd_and_hms(1850, 1, 1, 0, 53, 28)
                .single()
                .expect("valid"))
        );
    }

    #[test]
    fn bad_timestamps_say_what_was_expected() {
        for s in [
            "infinity",
            "2026-11-25",
            "2026-13-01 00:00:00+00",
            "2026-11-25 01:40:32 BC",
            "2026-11-25 01:40:32+5",
        ] {
            let e = parse_timestamptz(s).expect_err(s);
            assert!(e.expected.contains("ISO timestamp"), "{s}");
        }
    }

    #[test]
    fn scalars() {
        assert_eq!(parse_bool("t"), Ok(true));
        assert!(parse_bool("true").is_err());
        assert_eq!(parse_i32("-5"), Ok(-5));
        assert!(parse_i32("5.0").is_err());
        assert!(parse_uuid("not-a-uuid").is_err());
    }
}
