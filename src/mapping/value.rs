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
///
/// Read by position, without a format string: every interaction carries
/// several timestamps, and chrono's `parse_from_str` parses its format on
/// every call (issue 16's profile: 7.7 % of the process's CPU during a
/// catch-up). The test `the_positional_parser_agrees_with_chrono` holds it
/// to a `parse_from_str` reading of the same text.
pub fn parse_timestamptz(s: &str) -> Result<DateTime<Utc>, BadValue> {
    const EXPECTED: &str = "an ISO timestamp with time zone such as 2026-11-25 01:40:32.5+00";
    let err = || bad(EXPECTED, s);
    let mut c = Cursor {
        b: s.as_bytes(),
        i: 0,
    };
    let year = c.number(4, 6).ok_or_else(err)?;
    let month = c.then(b'-').and_then(|c| c.number(2, 2)).ok_or_else(err)?;
    let day = c.then(b'-').and_then(|c| c.number(2, 2)).ok_or_else(err)?;
    let hour = c.then(b' ').and_then(|c| c.number(2, 2)).ok_or_else(err)?;
    let minute = c.then(b':').and_then(|c| c.number(2, 2)).ok_or_else(err)?;
    let second = c.then(b':').and_then(|c| c.number(2, 2)).ok_or_else(err)?;
    let mut nanos = 0;
    if c.peek() == Some(b'.') {
        c.i += 1;
        let start = c.i;
        let frac = c.number(1, 9).ok_or_else(err)?;
        nanos = frac * 10u32.pow(9 - (c.i - start) as u32);
    }
    let sign: i64 = match c.peek() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(err()),
    };
    c.i += 1;
    let mut offset = i64::from(c.number(2, 2).ok_or_else(err)?) * 3600;
    for unit in [60, 1] {
        if c.peek() != Some(b':') {
            break;
        }
        c.i += 1;
        offset += i64::from(c.number(2, 2).ok_or_else(err)?) * unit;
    }
    if c.i != c.b.len() {
        return Err(err());
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day).ok_or_else(err)?;
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos).ok_or_else(err)?;
    let utc = NaiveDateTime::new(date, time)
        .checked_sub_signed(chrono::Duration::seconds(sign * offset))
        .ok_or_else(err)?;
    Ok(utc.and_utc())
}

/// A position in a value's bytes ([`parse_timestamptz`]).
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Skips `byte`, if it is next.
    fn then(&mut self, byte: u8) -> Option<&mut Self> {
        (self.peek() == Some(byte)).then(|| {
            self.i += 1;
            self
        })
    }

    /// A run of `min..=max` ASCII digits (a longer run is an error).
    fn number(&mut self, min: usize, max: usize) -> Option<u32> {
        let start = self.i;
        let mut n: u32 = 0;
        while let Some(d) = self.peek().filter(u8::is_ascii_digit) {
            if self.i - start == max {
                return None;
            }
            n = n * 10 + u32::from(d - b'0');
            self.i += 1;
        }
        (self.i - start >= min).then_some(n)
    }
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

    /// The reading by format string the positional parser replaced.
    fn by_chrono(s: &str) -> Option<DateTime<Utc>> {
        let split = s
            .char_indices()
            .skip(11)
            .filter(|(_, c)| *c == '+' || *c == '-')
            .map(|(i, _)| i)
            .last()?;
        let (local, offset) = s.split_at(split);
        let (date, time) = local.split_once(' ')?;
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        let time = NaiveTime::parse_from_str(time, "%H:%M:%S%.f").ok()?;
        let sign: i64 = if offset.starts_with('-') { -1 } else { 1 };
        let mut secs: i64 = 0;
        for (i, part) in offset[1..].split(':').enumerate() {
            if i > 2 || part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            secs += part.parse::<i64>().ok()? * [3600, 60, 1][i];
        }
        let utc = NaiveDateTime::new(date, time)
            .checked_sub_signed(chrono::Duration::seconds(sign * secs))?;
        Some(utc.and_utc())
    }

    #[test]
    fn the_positional_parser_agrees_with_chrono() {
        // Every shape PostgreSQL prints (fractions trimmed of trailing
        // zeros, offsets of hours, minutes and seconds), over a spread of
        // instants, and text it never prints.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut checked = 0;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % 8_000_000_000) as i64 - 1_000_000_000;
            let micros = (x >> 40) % 1_000_000;
            let t = Utc
                .timestamp_opt(secs, (micros * 1000) as u32)
                .single()
                .expect("in range");
            let frac = format!(".{micros:06}");
            let frac = frac.trim_end_matches('0');
            let frac = if frac == "." { "" } else { frac };
            for offset in ["+00", "+05:30", "-03", "-00:53:28", "+14"] {
                let zone = chrono::FixedOffset::east_opt(parse_offset(offset)).expect("offset");
                let local = t.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S");
                let text = format!("{local}{frac}{offset}");
                assert_eq!(parse_timestamptz(&text).ok(), Some(t), "{text}");
                assert_eq!(by_chrono(&text), Some(t), "{text}");
                checked += 1;
            }
        }
        assert_eq!(checked, 100_000);
        for bad in [
            "",
            "2026-11-25 01:40:32",
            "2026-11-25 01:40:32+",
            "2026-11-25 01:40:32+1",
            "2026-11-25 01:40:32+001",
            "2026-11-25 01:40:32.+00",
            "2026-11-25T01:40:32+00",
            "2026-11-25 01:40:32+00:",
            "2026-11-25 01:40:32+00:00:00:00",
            "2026-02-30 01:40:32+00",
            "2026-11-25 24:00:00+00",
            "2026-11-25 01:40:32+00 ",
            " 2026-11-25 01:40:32+00",
            "2026-1-25 01:40:32+00",
            "26-11-25 01:40:32+00",
            "infinity",
            "-infinity",
        ] {
            // (chrono is laxer on field widths: it takes "2026-1-25".)
            assert!(parse_timestamptz(bad).is_err(), "{bad:?}");
        }
    }

    fn parse_offset(o: &str) -> i32 {
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let parts: Vec<i32> = o[1..]
            .split(':')
            .map(|p| p.parse().expect("digits"))
            .collect();
        sign * parts
            .iter()
            .zip([3600, 60, 1])
            .map(|(p, u)| p * u)
            .sum::<i32>()
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
