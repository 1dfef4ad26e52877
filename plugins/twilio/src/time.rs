//! Timestamps: ISO 8601 UTC with milliseconds (`2024-01-01T12:00:00.000Z`), the form of every
//! `timestamp` field of telephony.md section 2 and of the SQLite timestamp columns; parsing of
//! what the database gives back (SQLite: that form; PostgreSQL `CAST(ts AS TEXT)`:
//! `2024-01-01 12:00:00.123`).

/// Milliseconds since the Unix epoch, from the host's wall clock.
pub(crate) fn now_ms() -> u64 {
    gatewayd_plugin::rate::now_ms()
}

/// Now, as [`iso_from_ms`] writes it.
pub(crate) fn now_iso() -> String {
    iso_from_ms(now_ms())
}

/// `ms` since the Unix epoch as ISO 8601 UTC with milliseconds and `Z`
/// (telephony.md section 2: `"timestamp": "2024-01-01T12:00:00Z"`, here with milliseconds).
pub(crate) fn iso_from_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let day_secs = secs % 86_400;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
        ms % 1000
    )
}

/// A database timestamp as ms since the Unix epoch: `YYYY-MM-DD`, `T` or a space,
/// `HH:MM:SS`, optional fraction (digits after the third are dropped), optional `Z` or
/// `+HH[:MM]` / `-HH[:MM]` (none: UTC, as the plugin writes them). `None` for anything else or
/// a time before 1970.
pub(crate) fn parse_ms(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().all(u8::is_ascii_digit).then(|| digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && (sep(10, b'T') || sep(10, b' ')) && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if sep(i, b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        None => 0,
        Some(b'Z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let hours = num(i + 1, 2)?;
            let minutes = match b.len() - (i + 3) {
                0 => 0,
                3 if sep(i + 3, b':') => num(i + 4, 2)?,
                2 => num(i + 3, 2)?,
                _ => return None,
            };
            let secs = hours * 3600 + minutes * 60;
            if sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let total = (days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs) * 1000 + millis;
    u64::try_from(total).ok()
}

/// A database timestamp in the form [`iso_from_ms`] writes; text that does not parse is
/// returned as it came.
pub(crate) fn normalize(s: &str) -> String {
    parse_ms(s).map_or_else(|| s.to_string(), iso_from_ms)
}

/// Whole seconds from `start_ms` to `end_ms` (0 when the clock went backwards): a call's
/// `duration` (telephony.md section 4, `phone_calls.duration INTEGER`).
pub(crate) fn duration_secs(start_ms: u64, end_ms: u64) -> i64 {
    i64::try_from(end_ms.saturating_sub(start_ms) / 1000).unwrap_or(i64::MAX)
}

/// (year, month, day) of the day `z` days after 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to (year, month, day) (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_timestamps_are_utc_with_milliseconds_and_z() {
        assert_eq!(iso_from_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_from_ms(1_704_110_400_000), "2024-01-01T12:00:00.000Z");
        assert_eq!(iso_from_ms(1_709_208_000_123), "2024-02-29T12:00:00.123Z");
        assert_eq!(iso_from_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn both_backends_timestamps_parse_back_to_the_same_instant() {
        let ms = 1_709_208_000_123;
        assert_eq!(parse_ms("2024-02-29T12:00:00.123Z"), Some(ms));
        // PostgreSQL CAST(timestamp AS TEXT).
        assert_eq!(parse_ms("2024-02-29 12:00:00.123"), Some(ms));
        assert_eq!(parse_ms("2024-02-29 12:00:00.123456"), Some(ms));
        assert_eq!(parse_ms("2024-02-29 12:00:00.1"), Some(ms - 23));
        assert_eq!(parse_ms("2024-02-29 12:00:00"), Some(ms - 123));
        assert_eq!(parse_ms("2024-02-29T14:00:00.123+02:00"), Some(ms));
        assert_eq!(parse_ms("2024-02-29T14:00:00.123+02"), Some(ms));
        assert_eq!(parse_ms("2024-02-29T11:30:00.123-0030"), Some(ms));
        assert_eq!(normalize("2024-02-29 12:00:00.123"), "2024-02-29T12:00:00.123Z");
    }

    #[test]
    fn malformed_timestamps_do_not_parse() {
        for bad in [
            "",
            "2024-02-29",
            "2024-13-01T00:00:00Z",
            "2024-02-29T12:00:00.Z",
            "2024-02-29T12:00:00Zx",
            "1969-12-31T23:59:59Z",
            "2024-02-29X12:00:00",
            "２０２４-02-29T12:00:00",
        ] {
            assert_eq!(parse_ms(bad), None, "{bad}");
        }
        assert_eq!(normalize("not a time"), "not a time");
    }

    #[test]
    fn every_day_round_trips() {
        for day in (0..60_000i64).step_by(7) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn durations_are_whole_seconds_and_never_negative() {
        assert_eq!(duration_secs(1_000, 62_999), 61);
        assert_eq!(duration_secs(5_000, 1_000), 0);
    }
}
