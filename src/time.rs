//! Time input and output: durations (`30m`, `1h30m`, `90d`), instants (RFC 3339 or a date),
//! and the relative form people read in tables ("in 1h 58m").

use crate::error::{Error, Result};
use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, TimeZone, Utc};

/// The longest duration pim accepts (100 years); longer is `permanent`.
pub const MAX_DURATION_DAYS: i64 = 36_500;

/// The latest instant pim accepts: the end of year 9999.
pub const MAX_INSTANT: i64 = 253_402_300_799;

/// Parse a duration such as `30m`, `2h`, `1h30m`, `7d` or `90d` (at most 100 years).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = || {
        Error::Usage(format!(
            "'{text}' is not a duration. Write it like 30m, 2h, 1h30m or 90d."
        ))
    };
    let trimmed = text.trim();
    if trimmed.is_empty() || !trimmed.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let too_long = || {
        Error::Usage(format!(
            "'{text}' is longer than {MAX_DURATION_DAYS}d, the longest duration pim accepts; use --permanent for no end."
        ))
    };
    let std = humantime::parse_duration(trimmed).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => too_long(),
        _ => bad(),
    })?;
    let d = Duration::from_std(std).map_err(|_| too_long())?;
    if d > Duration::days(MAX_DURATION_DAYS) {
        return Err(too_long());
    }
    if d <= Duration::zero() {
        return Err(Error::Usage(format!(
            "'{text}' is not a positive duration. Write it like 30m, 2h or 90d."
        )));
    }
    if d.subsec_nanos() != 0 {
        return Err(Error::Usage(format!(
            "'{text}' has fractions of a second; pim counts whole seconds."
        )));
    }
    Ok(d)
}

/// Parse an instant: RFC 3339, or a date meaning midnight UTC; from 1970 to the end of 9999.
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>> {
    let t = text.trim();
    let in_range = |at: DateTime<Utc>| {
        if (0..=MAX_INSTANT).contains(&at.timestamp()) {
            Ok(at)
        } else {
            Err(Error::Usage(format!(
                "'{text}' is outside the times pim accepts (1970 to 9999)."
            )))
        }
    };
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        let utc = dt.with_timezone(&Utc);
        return in_range(
            Utc.timestamp_opt(utc.timestamp(), 0)
                .single()
                .unwrap_or(utc),
        );
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        if let Some(midnight) = date.and_hms_opt(0, 0, 0) {
            return in_range(Utc.from_utc_datetime(&midnight));
        }
    }
    Err(Error::Usage(format!(
        "'{text}' is not a time. Write it as RFC 3339 (2026-12-01T09:00:00Z) or a date (2026-12-01)."
    )))
}

/// `at + d`, or a usage error when the result would leave the times pim accepts.
pub fn checked_add(at: DateTime<Utc>, d: Duration) -> Result<DateTime<Utc>> {
    at.checked_add_signed(d)
        .filter(|t| (0..=MAX_INSTANT).contains(&t.timestamp()))
        .ok_or_else(|| {
            Error::Usage(format!(
                "{} from {} is past the end of year 9999; ask for less.",
                format_duration(d),
                rfc3339(at)
            ))
        })
}

/// RFC 3339 UTC, whole seconds: the form of JSON and CSV.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// From stored unix seconds.
pub fn from_unix(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

/// A duration in compact words: `1h 58m`, `3d 4h`, `45s` (cut to the units shown: the audit
/// log's durations are not rounded up).
pub fn format_duration(d: Duration) -> String {
    let secs = d.num_seconds().abs();
    let (days, hours, mins, s) = (
        secs / 86_400,
        (secs % 86_400) / 3_600,
        (secs % 3_600) / 60,
        secs % 60,
    );
    let (big, small) = if days > 0 {
        (format!("{days}d"), (hours > 0).then(|| format!("{hours}h")))
    } else if hours > 0 {
        (format!("{hours}h"), (mins > 0).then(|| format!("{mins}m")))
    } else if mins > 0 {
        (format!("{mins}m"), None)
    } else {
        (format!("{s}s"), None)
    };
    match small {
        Some(small) => format!("{big} {small}"),
        None => big,
    }
}

/// A duration as a policy writes it: `8h`, `1h30m`, `90d`.
pub fn policy_duration(d: Duration) -> String {
    let secs = d.num_seconds();
    if secs % 86_400 == 0 && secs > 86_400 {
        return format!("{}d", secs / 86_400);
    }
    let mut out = String::new();
    let (h, m, s) = (secs / 3_600, (secs % 3_600) / 60, secs % 60);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// "in 1h 58m", "3d 4h ago", or "now".
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = t - now;
    // Rounded to the smallest unit shown, as people say it (1h 59m 59s away is "in 2h"):
    // what a command did, printed a second after its write on a loaded machine, reads the
    // same as at once. To the nearest minute from one minute up, to the nearest hour from
    // one day up; a rounding that reaches the next unit is shown in it (23h 59m 40s: "1d").
    let secs = d.num_seconds().abs();
    let shown = if secs < 60 {
        secs
    } else if (secs + 30) / 60 * 60 < 86_400 {
        (secs + 30) / 60 * 60
    } else {
        (secs + 1_800) / 3_600 * 3_600
    };
    let shown = Duration::seconds(shown);
    // What a command just did, printed a moment after its write (a second or two on a
    // loaded machine), happened "now", not "1s ago".
    if (-5..=0).contains(&d.num_seconds()) {
        "now".to_string()
    } else if d > Duration::zero() {
        format!("in {}", format_duration(shown))
    } else {
        format!("{} ago", format_duration(shown))
    }
}

/// An instant for people, the one way pim shows time: local time with the zone's
/// abbreviation, and how far from now ("2026-12-02 09:30 CET (in 11h 58m)"; today's without
/// the date: "21:30 CET (in 1h)"). JSON and CSV keep RFC 3339 UTC.
pub fn human(unix: i64, now: DateTime<Utc>) -> String {
    shown(unix, now, false)
}

/// `human`, to the second (audit events).
pub fn human_precise(unix: i64, now: DateTime<Utc>) -> String {
    shown(unix, now, true)
}

fn shown(unix: i64, now: DateTime<Utc>, seconds: bool) -> String {
    // A table's rows often show the same instants (rows made together, a common end): those
    // written are kept, a thousand at most (5,000 instructions each: two conversions to local
    // time, the zone's name from the C library, the distance from now).
    type Shown = std::collections::HashMap<(i64, DateTime<Utc>, bool), String>;
    thread_local! {
        static SHOWN: std::cell::RefCell<Shown> = std::cell::RefCell::default();
    }
    let key = (unix, now, seconds);
    if let Some(text) = SHOWN.with_borrow(|shown| shown.get(&key).cloned()) {
        return text;
    }
    let text = shown_afresh(unix, now, seconds);
    SHOWN.with_borrow_mut(|shown| {
        if shown.len() >= 1024 {
            shown.clear();
        }
        shown.insert(key, text.clone());
    });
    text
}

fn shown_afresh(unix: i64, now: DateTime<Utc>, seconds: bool) -> String {
    use chrono::{Datelike, Local, Timelike};
    use std::fmt::Write;
    let at = from_unix(unix);
    let local = at.with_timezone(&Local);
    // Written field by field (a table of a hundred rows shows two hundred instants; chrono's
    // format strings are parsed each time): `%Y-%m-%d %H:%M[:%S]`, the date only when it is
    // not today's.
    let mut out = String::with_capacity(48);
    if local.date_naive() != now.with_timezone(&Local).date_naive() {
        if (0..=9999).contains(&local.year()) {
            let _ = write!(
                out,
                "{:04}-{:02}-{:02} ",
                local.year(),
                local.month(),
                local.day()
            );
        } else {
            let _ = write!(out, "{} ", local.format("%Y-%m-%d"));
        }
    }
    let _ = write!(out, "{:02}:{:02}", local.hour(), local.minute());
    if seconds {
        let _ = write!(out, ":{:02}", local.second());
    }
    let _ = write!(out, " {} ({})", zone_abbreviation(unix), relative(at, now));
    out
}

/// The local zone's abbreviation at `t` ("CET", "EDT", "UTC"), from the C library (chrono
/// knows offsets, not names); the offset when there is none.
fn zone_abbreviation(t: i64) -> String {
    let time: libc::time_t = t as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which outlives the call; tm_zone points to
    // static storage of the C library (or is null), read at once.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if !libc::localtime_r(&time, &mut tm).is_null() && !tm.tm_zone.is_null() {
            if let Ok(name) = std::ffi::CStr::from_ptr(tm.tm_zone).to_str() {
                if !name.is_empty() {
                    return name.to_string();
                }
            }
        }
    }
    from_unix(t)
        .with_timezone(&chrono::Local)
        .format("%:z")
        .to_string()
}

/// Serialise a stored instant (unix seconds) as RFC 3339.
pub(crate) fn ser_unix<S: serde::Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(from_unix(*t)))
}

/// `ser_unix` for an instant that may be absent.
pub(crate) fn ser_unix_opt<S: serde::Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_unix(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `shown` writes what chrono's format strings wrote, for any instant and any now.
    #[test]
    fn instants_for_people_are_chronos_format() {
        fn by_format(unix: i64, now: DateTime<Utc>, clock: &str) -> String {
            use chrono::Local;
            let at = from_unix(unix);
            let local = at.with_timezone(&Local);
            let format = if local.date_naive() == now.with_timezone(&Local).date_naive() {
                clock.to_string()
            } else {
                format!("%Y-%m-%d {clock}")
            };
            format!(
                "{} {} ({})",
                local.format(&format),
                zone_abbreviation(unix),
                relative(at, now)
            )
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |below: i64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as i64
        };
        for _ in 0..2000 {
            let now = from_unix(next(MAX_INSTANT));
            let unix = match next(3) {
                0 => now.timestamp() + next(172_800) - 86_400,
                1 => next(MAX_INSTANT + 1),
                _ => [0, 59, 86_399, 86_400, MAX_INSTANT][next(5) as usize],
            };
            assert_eq!(human(unix, now), by_format(unix, now, "%H:%M"), "{unix}");
            assert_eq!(
                human_precise(unix, now),
                by_format(unix, now, "%H:%M:%S"),
                "{unix}"
            );
            // Again, twice each (the second is the one kept), and from another moment in
            // between: its distance from now is not the first moment's.
            let later = now + Duration::seconds(next(200_000) + 1);
            for moment in [now, now, later, later, now] {
                assert_eq!(
                    human(unix, moment),
                    by_format(unix, moment, "%H:%M"),
                    "{unix}"
                );
            }
        }
    }

    #[test]
    fn durations_of_the_contract_parse() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::minutes(30));
        assert_eq!(parse_duration("2h").unwrap(), Duration::hours(2));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::minutes(90));
        assert_eq!(parse_duration("7d").unwrap(), Duration::days(7));
        assert_eq!(parse_duration("90d").unwrap(), Duration::days(90));
        // The spellings the README lists beside them.
        assert_eq!(parse_duration("2hours").unwrap(), Duration::hours(2));
        assert_eq!(parse_duration("1h 30min").unwrap(), Duration::minutes(90));
        assert_eq!(parse_duration("2weeks").unwrap(), Duration::days(14));
        assert_eq!(parse_duration("1w").unwrap(), Duration::days(7));
        assert_eq!(parse_duration("1M").unwrap(), Duration::seconds(2_630_016));
        assert_eq!(parse_duration("1y").unwrap(), Duration::seconds(31_557_600));
    }

    #[test]
    fn bad_durations_are_usage_errors() {
        for bad in ["", "abc", "-1h", "0m", "h", "5x", "1h 30q"] {
            let err = parse_duration(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn huge_durations_and_far_instants_are_usage_errors() {
        for huge in ["200000000y", "99999999999999999999d", "36501d"] {
            let e = parse_duration(huge).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{huge}");
            assert!(e.to_string().contains("longest"), "{huge}: {e}");
        }
        assert!(parse_duration("36500d").is_ok());
        assert_eq!(parse_instant("1969-12-31").unwrap_err().exit_code(), 2);
        let end = parse_instant("9999-12-31").unwrap();
        assert_eq!(
            checked_add(end, Duration::days(2)).unwrap_err().exit_code(),
            2
        );
    }

    #[test]
    fn instants_parse_as_rfc3339_or_date() {
        let t = parse_instant("2026-12-01T09:00:00Z").unwrap();
        assert_eq!(rfc3339(t), "2026-12-01T09:00:00Z");
        let d = parse_instant("2026-12-01").unwrap();
        assert_eq!(rfc3339(d), "2026-12-01T00:00:00Z");
        let z = parse_instant("2026-12-01T10:00:00+01:00").unwrap();
        assert_eq!(rfc3339(z), "2026-12-01T09:00:00Z");
        assert_eq!(parse_instant("tomorrow").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn relative_times_read_like_people_speak() {
        let now = parse_instant("2026-12-01T00:00:00Z").unwrap();
        assert_eq!(relative(now + Duration::minutes(118), now), "in 1h 58m");
        assert_eq!(relative(now + Duration::hours(2), now), "in 2h");
        assert_eq!(relative(now - Duration::days(3), now), "3d ago");
        assert_eq!(relative(now + Duration::seconds(45), now), "in 45s");
        assert_eq!(relative(now, now), "now");
        assert_eq!(relative(now - Duration::seconds(2), now), "now");
        assert_eq!(relative(now - Duration::seconds(6), now), "6s ago");
        // A second (or half a minute) short of a unit shown reads as that unit.
        assert_eq!(relative(now + Duration::seconds(7_199), now), "in 2h");
        assert_eq!(relative(now + Duration::seconds(7_170), now), "in 2h");
        assert_eq!(relative(now + Duration::seconds(7_169), now), "in 1h 59m");
        assert_eq!(relative(now + Duration::seconds(59), now), "in 59s");
        assert_eq!(relative(now + Duration::seconds(89), now), "in 1m");
        assert_eq!(relative(now + Duration::seconds(3_599), now), "in 1h");
        assert_eq!(relative(now + Duration::seconds(86_399), now), "in 1d");
        let year = Duration::days(365);
        assert_eq!(relative(now + year - Duration::seconds(1), now), "in 365d");
        assert_eq!(
            relative(now - Duration::hours(75) - Duration::minutes(29), now),
            "3d 3h ago"
        );
        assert_eq!(
            relative(now - Duration::hours(75) - Duration::minutes(30), now),
            "3d 4h ago"
        );
        // What the audit log records is cut, never rounded up.
        assert_eq!(format_duration(Duration::seconds(7_199)), "1h 59m");
        assert_eq!(policy_duration(Duration::minutes(90)), "1h30m");
        assert_eq!(policy_duration(Duration::days(365)), "365d");
    }
}
