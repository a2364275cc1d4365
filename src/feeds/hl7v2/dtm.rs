//! HL7 v2 date/time values (DT, DTM, TS) into FHIR `date` and `dateTime`.
//!
//! `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`. Precision is kept: a v2
//! value of `202307` becomes `2023-07`. A value with a time but no offset is
//! Europe/London local time: GMT in winter, BST (+01:00) from 01:00 UTC on the
//! last Sunday of March to 01:00 UTC on the last Sunday of October. A local time
//! in the spring-forward gap does not exist and is an error; a time in the
//! autumn hour that happens twice is taken as the first (BST) one.
//!
//! The changeover rule is the one in force since 1996; it is applied to every
//! year, so a time within a day of a changeover before 1996 may be an hour off.

use crate::fhir::time::{days_from_civil, days_in_month};

/// A parsed v2 date/time: the FHIR text and whether it carries a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dtm {
    /// FHIR `dateTime` text (a date when the value has no time).
    pub fhir: String,
    pub has_time: bool,
}

impl Dtm {
    /// The `date` part (`YYYY`, `YYYY-MM` or `YYYY-MM-DD`).
    pub fn date(&self) -> &str {
        self.fhir.split('T').next().unwrap_or(&self.fhir)
    }
}

fn digits(s: &str, what: &str) -> Result<u32, String> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().map_err(|_| format!("{what} '{s}' is not a number"))
    } else {
        Err(format!("{what} '{s}' is not a number"))
    }
}

/// Day of the week, 0 = Sunday.
fn weekday(y: i64, m: u32, d: u32) -> u32 {
    // 1970-01-01 was a Thursday.
    (days_from_civil(y, m, d) + 4).rem_euclid(7) as u32
}

fn last_sunday(y: i64, m: u32) -> u32 {
    let last = days_in_month(y, m);
    last - weekday(y, m, last)
}

/// The Europe/London offset in minutes of a local time, or an error for a time
/// that does not exist (the spring-forward gap).
pub fn london_offset(y: i64, mo: u32, d: u32, h: u32, mi: u32) -> Result<i32, String> {
    let start = last_sunday(y, 3);
    let end = last_sunday(y, 10);
    let minutes = h * 60 + mi;
    let bst = match mo {
        4..=9 => true,
        3 if d > start => true,
        3 if d == start => {
            if (60..120).contains(&minutes) {
                return Err(format!(
                    "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} does not exist in Europe/London \
                     (clocks go forward from 01:00 to 02:00)"
                ));
            }
            minutes >= 120
        }
        10 if d < end => true,
        10 if d == end => minutes < 120,
        _ => false,
    };
    Ok(if bst { 60 } else { 0 })
}

/// Parses a v2 DT/DTM/TS value. `TS` values may carry a second component
/// (degree of precision), which is ignored.
pub fn parse(raw: &str) -> Result<Dtm, String> {
    let value = raw.trim();
    let (body, offset) = match value.find(['+', '-']) {
        Some(i) => (&value[..i], Some(&value[i..])),
        None => (value, None),
    };
    let (whole, frac) = match body.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (body, None),
    };
    // Digits only, so that the slices below never fall inside a multi-byte character.
    if !matches!(whole.len(), 4 | 6 | 8 | 10 | 12 | 14) || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{raw}' is not a v2 date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])"
        ));
    }
    let y = digits(&whole[..4], "year")? as i64;
    // The parts are checked digits of the right width: copied as they are, not formatted.
    let mut out = String::with_capacity(29);
    out.push_str(&whole[..4]);
    if whole.len() == 4 {
        return finish_date(raw, out, offset, frac);
    }
    let mo = digits(&whole[4..6], "month")?;
    if !(1..=12).contains(&mo) {
        return Err(format!("'{raw}': month {mo} is out of range"));
    }
    out.push('-');
    out.push_str(&whole[4..6]);
    if whole.len() == 6 {
        return finish_date(raw, out, offset, frac);
    }
    let d = digits(&whole[6..8], "day")?;
    if d < 1 || d > days_in_month(y, mo) {
        return Err(format!("'{raw}': day {d} does not exist in {y:04}-{mo:02}"));
    }
    out.push('-');
    out.push_str(&whole[6..8]);
    if whole.len() == 8 {
        return finish_date(raw, out, offset, frac);
    }
    let h = digits(&whole[8..10], "hour")?;
    let mi = if whole.len() >= 12 {
        digits(&whole[10..12], "minute")?
    } else {
        0
    };
    let s = if whole.len() >= 14 {
        digits(&whole[12..14], "second")?
    } else {
        0
    };
    if h > 23 || mi > 59 || s > 59 {
        return Err(format!("'{raw}': {h:02}:{mi:02}:{s:02} is not a time of day"));
    }
    out.push('T');
    out.push_str(&whole[8..10]);
    out.push(':');
    out.push_str(whole.get(10..12).unwrap_or("00"));
    out.push(':');
    out.push_str(whole.get(12..14).unwrap_or("00"));
    if let Some(f) = frac {
        if whole.len() != 14 || f.is_empty() || f.len() > 4 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "'{raw}': fractional seconds must follow seconds (1 to 4 digits)"
            ));
        }
        out.push('.');
        out.push_str(f);
    }
    let minutes = match offset {
        Some(o) => parse_offset(raw, o)?,
        None => london_offset(y, mo, d, h, mi).map_err(|e| format!("'{raw}': {e}"))?,
    };
    let sign = if minutes < 0 { '-' } else { '+' };
    let abs = minutes.unsigned_abs();
    use std::fmt::Write;
    let _ = write!(out, "{sign}{:02}:{:02}", abs / 60, abs % 60);
    Ok(Dtm {
        fhir: out,
        has_time: true,
    })
}

fn finish_date(raw: &str, out: String, offset: Option<&str>, frac: Option<&str>) -> Result<Dtm, String> {
    if frac.is_some() {
        return Err(format!("'{raw}': fractional seconds without a time"));
    }
    if let Some(o) = offset {
        // An offset on a date is meaningless but harmless; it must still be well formed.
        parse_offset(raw, o)?;
    }
    Ok(Dtm {
        fhir: out,
        has_time: false,
    })
}

fn parse_offset(raw: &str, o: &str) -> Result<i32, String> {
    let sign = if o.starts_with('-') { -1 } else { 1 };
    let digits_part = &o[1..];
    if digits_part.len() != 4 || !digits_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{raw}': the offset '{o}' must be +/-HHMM"));
    }
    let h: i32 = digits_part[..2].parse().unwrap_or(99);
    let m: i32 = digits_part[2..].parse().unwrap_or(99);
    if h > 14 || m > 59 {
        return Err(format!("'{raw}': the offset '{o}' is out of range"));
    }
    Ok(sign * (h * 60 + m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        parse(s).unwrap().fhir
    }

    #[test]
    fn keeps_precision_and_explicit_offsets() {
        assert_eq!(ok("2023"), "2023");
        assert_eq!(ok("202307"), "2023-07");
        assert_eq!(ok("20230704"), "2023-07-04");
        assert_eq!(ok("198908181126+0215"), "1989-08-18T11:26:00+02:15");
        assert_eq!(ok("20210817151943.4+0200"), "2021-08-17T15:19:43.4+02:00");
        assert_eq!(ok("20230704101500-0500"), "2023-07-04T10:15:00-05:00");
        assert_eq!(ok("2023070410"), "2023-07-04T10:00:00+01:00");
    }

    #[test]
    fn local_times_are_london_with_daylight_saving() {
        assert_eq!(ok("20230715120000"), "2023-07-15T12:00:00+01:00");
        assert_eq!(ok("20230115120000"), "2023-01-15T12:00:00+00:00");
        // 2024: BST from Sunday 31 March 01:00 GMT to Sunday 27 October 01:00 GMT.
        assert_eq!(ok("202403310059"), "2024-03-31T00:59:00+00:00");
        assert_eq!(ok("202403310200"), "2024-03-31T02:00:00+01:00");
        assert!(parse("202403310130").unwrap_err().contains("does not exist"));
        assert_eq!(ok("202410270130"), "2024-10-27T01:30:00+01:00");
        assert_eq!(ok("202410270200"), "2024-10-27T02:00:00+00:00");
        assert_eq!(ok("202403300130"), "2024-03-30T01:30:00+00:00");
    }

    #[test]
    fn refuses_what_is_not_a_date() {
        for bad in [
            "2023-07-04",
            "20231304",
            "20230230",
            "20230704246000",
            "2023070412345",
            "20230704120000+25",
            "20230704120000+2500",
            "ABCD",
            "20230704.5",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse("20240229").is_ok());
        assert!(parse("20230229").is_err());
    }

    #[test]
    fn a_multi_byte_character_is_an_error_not_a_panic() {
        // Found by the hl7v2 fuzz target: in "202é010" (8 bytes) the year slice [..4] ends inside "é".
        for raw in [
            "20\u{e9}4",
            "2\u{e9}0101",
            "202401\u{e9}1",
            "2024\u{e9}\u{e9}",
            "202\u{e9}010",
        ] {
            assert!(parse(raw).is_err(), "{raw}");
        }
        assert!(parse("20240101").is_ok());
    }
}
