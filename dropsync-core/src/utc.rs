//! UTC calendar dates without a date crate (Howard Hinnant's algorithms):
//! for conflict-copy names, the status page, and the times the history
//! commands take and show.

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) to days since 1970-01-01; the inverse of
/// [`civil_from_days`].
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch as "YYYY-MM-DD HH:MM:SS".
pub fn format(unix_secs: i64) -> String {
    let (y, m, d) = civil_from_days(unix_secs.div_euclid(86_400));
    let s = unix_secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// "YYYY-MM-DD HH:MM[:SS]" (or with a `T`), UTC, to seconds since the
/// epoch; `None` if it is not one.
pub fn parse(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, time) = text.split_once([' ', 'T']).unwrap_or((text, "00:00"));
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.trim().trim_end_matches('Z').splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi) = (t.next()??, t.next()??);
    let s = t.next().unwrap_or(Some(0))?;
    let ok = (1..=12).contains(&mo)
        && (1..=31).contains(&da)
        && (0..24).contains(&h)
        && (0..60).contains(&mi)
        && (0..61).contains(&s);
    if !ok {
        return None;
    }
    let days = days_from_civil(y, mo as u32, da as u32);
    // A day past the month's end (2026-02-31) is not a date.
    (civil_from_days(days) == (y, mo as u32, da as u32)).then_some(days * 86_400 + h * 3600 + mi * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dates() {
        assert_eq!(format(0), "1970-01-01 00:00:00");
        assert_eq!(format(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(parse("2023-11-14 22:13:20"), Some(1_700_000_000));
        assert_eq!(parse("2023-11-14T22:13"), Some(1_699_999_980));
        assert_eq!(parse("2026-02-31 00:00"), None);
        assert_eq!(parse("yesterday"), None);
    }

    proptest! {
        #[test]
        fn parse_undoes_format(secs in -10_000_000_000i64..10_000_000_000) {
            prop_assert_eq!(parse(&format(secs)), Some(secs));
        }
    }
}
