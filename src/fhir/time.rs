//! FHIR date, dateTime and instant values as millisecond ranges (UTC).
//!
//! A FHIR date has an implicit precision: `2020` is the whole year. Search
//! compares ranges, so every value becomes `[low, high]`, both inclusive.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Formats milliseconds since the epoch as a FHIR instant with millisecond precision.
pub fn format_instant(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, frac) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
}

fn num(s: &str, range: std::ops::RangeInclusive<u32>) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u32 = s.parse().ok()?;
    range.contains(&v).then_some(v)
}

/// Parses a FHIR date, dateTime or instant into its inclusive UTC millisecond range.
/// A dateTime without an offset (allowed in search values) is taken as UTC.
pub fn parse_range(s: &str) -> Option<(i64, i64)> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let ys = parts.next()?;
    if ys.len() != 4 {
        return None;
    }
    let y = num(ys, 0..=9999)? as i64;
    let month = parts.next();
    let day = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let Some(ms) = month else {
        let lo = days_from_civil(y, 1, 1) * 86_400_000;
        return Some((lo, days_from_civil(y + 1, 1, 1) * 86_400_000 - 1));
    };
    if ms.len() != 2 {
        return None;
    }
    let m = num(ms, 1..=12)?;
    let Some(ds) = day else {
        let lo = days_from_civil(y, m, 1) * 86_400_000;
        let hi = lo + days_in_month(y, m) as i64 * 86_400_000 - 1;
        return Some((lo, hi));
    };
    if ds.len() != 2 {
        return None;
    }
    let d = num(ds, 1..=days_in_month(y, m))?;
    let day_start = days_from_civil(y, m, d) * 86_400_000;
    let Some(t) = time else {
        return Some((day_start, day_start + 86_400_000 - 1));
    };
    // Split off the zone: `Z`, `+hh:mm` or `-hh:mm`.
    let (clock, offset_ms) = if let Some(c) = t.strip_suffix('Z') {
        (c, 0)
    } else if let Some(pos) = t.rfind(['+', '-']) {
        let (c, z) = t.split_at(pos);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (zh, zm) = z[1..].split_once(':')?;
        let off = (num(zh, 0..=14)? as i64 * 60 + num(zm, 0..=59)? as i64) * 60_000;
        (c, sign * off)
    } else {
        (t, 0)
    };
    let mut hms = clock.split(':');
    let h = num(hms.next()?, 0..=23)? as i64;
    let mi = num(hms.next()?, 0..=59)? as i64;
    let (sec, frac_len, frac) = match hms.next() {
        None => (None, 0, 0),
        Some(sp) => {
            let (whole, frac) = match sp.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (sp, None),
            };
            if whole.len() != 2 {
                return None;
            }
            let s = num(whole, 0..=60)? as i64;
            match frac {
                Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
                    let digits = &f[..f.len().min(3)];
                    let v: i64 = digits.parse().ok()?;
                    (Some(s), digits.len(), v * 10i64.pow(3 - digits.len() as u32))
                }
                Some(_) => return None,
                None => (Some(s), 0, 0),
            }
        }
    };
    if hms.next().is_some() {
        return None;
    }
    let base = day_start + h * 3_600_000 + mi * 60_000 + sec.unwrap_or(0) * 1000 + frac - offset_ms;
    let width = match (sec, frac_len) {
        (None, _) => 60_000,
        (Some(_), 0) => 1000,
        (Some(_), n) => 10i64.pow(3 - n as u32),
    };
    Some((base, base + width - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_precision() {
        let (lo, hi) = parse_range("2020").unwrap();
        assert_eq!(format_instant(lo), "2020-01-01T00:00:00.000Z");
        assert_eq!(format_instant(hi), "2020-12-31T23:59:59.999Z");
        let (lo, hi) = parse_range("2024-02").unwrap();
        assert_eq!(format_instant(hi), "2024-02-29T23:59:59.999Z");
        assert_eq!(format_instant(lo), "2024-02-01T00:00:00.000Z");
        let (lo, hi) = parse_range("2019-07-01T10:00:00+01:00").unwrap();
        assert_eq!(format_instant(lo), "2019-07-01T09:00:00.000Z");
        assert_eq!(hi - lo, 999);
        let (lo, _) = parse_range("2019-07-01T10:00:00.5Z").unwrap();
        assert_eq!(format_instant(lo), "2019-07-01T10:00:00.500Z");
    }

    #[test]
    fn rejects_impossible_dates() {
        for bad in [
            "2019-02-29",
            "2020-13",
            "20",
            "2020-1-01",
            "2020-01-01T25:00:00Z",
            "2020-01-01T10:00:00.Z",
            "x",
        ] {
            assert!(parse_range(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 1, 18_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
