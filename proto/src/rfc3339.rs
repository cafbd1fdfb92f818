//! RFC 3339 date-times as Unix seconds, both ways, for key usage limits (`not_after`).
//!
//! Accepts `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (`t`/`z`/space allowed as RFC 3339
//! permits) and a bare `YYYY-MM-DD` (midnight UTC); fractions of a second are dropped. Years
//! 1970 to 9999 only: a key limit before the epoch means nothing. Formats as
//! `YYYY-MM-DDTHH:MM:SSZ`. This module must never guess: anything else is `None`.

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian; H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count from 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |n, d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

/// Parse an RFC 3339 date-time (or a full date) into Unix seconds.
pub fn parse(text: &str) -> Option<u64> {
    let b = text.trim().as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = i64::from(digits(&b[0..4])?);
    let mo = digits(&b[5..7])?;
    let d = digits(&b[8..10])?;
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || d == 0 {
        return None;
    }
    if d > days_in_month(y, mo) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    if b.len() == 10 {
        return u64::try_from(days * 86_400).ok();
    }
    let rest = &b[10..];
    if rest.len() < 9
        || !matches!(rest[0], b'T' | b't' | b' ')
        || rest[3] != b':'
        || rest[6] != b':'
    {
        return None;
    }
    let (h, mi, s) = (
        digits(&rest[1..3])?,
        digits(&rest[4..6])?,
        digits(&rest[7..9])?,
    );
    // 60: a leap second, counted as the next second's start.
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut tail = &rest[9..];
    if let [b'.', frac @ ..] = tail {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        tail = &frac[n..];
    }
    let offset: i64 = match tail {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), oh @ .., b':', om1, om2] if oh.len() == 2 => {
            let (oh, om) = (digits(oh)?, digits(&[*om1, *om2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + s) - offset;
    u64::try_from(secs).ok()
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format(secs: u64) -> String {
    let secs = secs.min(253_402_300_799); // 9999-12-31T23:59:59Z
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_parse_and_format() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(parse("2026-11-30T08:00:00Z"), Some(1_796_025_600));
        assert_eq!(parse("2026-11-30T09:00:00+01:00"), Some(1_796_025_600));
        assert_eq!(
            parse("2026-11-30t07:30:00.123456-00:30"),
            Some(1_796_025_600)
        );
        assert_eq!(parse("2026-11-30"), Some(1_795_996_800));
        assert_eq!(parse("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        assert_eq!(format(1_796_025_600), "2026-11-30T08:00:00Z");
        assert_eq!(format(0), "1970-01-01T00:00:00Z");
        for t in [
            0,
            951_868_800,
            1_709_208_000,
            4_102_444_799,
            253_402_300_799,
        ] {
            assert_eq!(parse(&format(t)), Some(t));
        }
    }

    #[test]
    fn malformed_text_is_refused() {
        for bad in [
            "",
            "tomorrow",
            "2026-11-31T00:00:00Z",
            "2025-02-29",
            "2026-13-01",
            "2026-11-30T24:00:00Z",
            "2026-11-30T08:00:00",
            "2026-11-30T08:00Z",
            "2026-11-30T08:00:00.Z",
            "2026-11-30T08:00:00+0100",
            "1969-12-31T23:59:59Z",
            "+2026-11-30",
            "2026-1-30",
            "2026-11-30T08:00:00Zjunk",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
