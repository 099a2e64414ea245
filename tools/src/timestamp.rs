//! Timestamps as text, both ways: milliseconds since the epoch to ISO 8601 UTC (what
//! `kafki dump` prints) and ISO 8601 back to milliseconds (what `kafki groups reset-offsets
//! --to-datetime` takes), proleptic Gregorian, without a time-zone database: a time without
//! a zone is UTC.

/// A millisecond timestamp as ISO 8601 UTC (or the number, if out of range).
pub fn format_ms(ms: i64) -> String {
    if ms < 0 {
        return ms.to_string();
    }
    let seconds = ms / 1000;
    let (year, month, day) = civil_from_days(seconds / 86_400);
    if year > 9999 {
        return format!("{ms}ms");
    }
    let of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm), for `days >= 0`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Parses `YYYY-MM-DD[THH:MM[:SS[.fff]]][Z|±HH:MM|±HHMM]` (Kafka's `--to-datetime` format
/// `YYYY-MM-DDTHH:mm:SS.sss`, zone optional) to milliseconds since the epoch.
pub fn parse_iso8601_ms(text: &str) -> Result<i64, String> {
    let invalid = || format!("{text:?} is not a date-time like 2024-05-01T12:30:00.000Z");
    let (date, rest) = text.split_at(text.find(['T', ' ']).unwrap_or(text.len()));
    let mut date_parts = date.split('-');
    let number = |part: Option<&str>, digits: usize| -> Result<i64, String> {
        match part {
            Some(part) if part.len() == digits && part.bytes().all(|b| b.is_ascii_digit()) => {
                part.parse::<i64>().map_err(|_| invalid())
            }
            _ => Err(invalid()),
        }
    };
    let year = number(date_parts.next(), 4)?;
    let month = number(date_parts.next(), 2)?;
    let day = number(date_parts.next(), 2)?;
    if date_parts.next().is_some()
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
    {
        return Err(invalid());
    }
    let time = rest.get(1..).unwrap_or("");
    // The zone: Z, or a sign after the time (a '-' inside the date was split off above).
    let (clock, zone) = match time.find(['Z', 'z', '+', '-']) {
        Some(at) => time.split_at(at),
        None => (time, ""),
    };
    let (clock, fraction) = match clock.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (clock, None),
    };
    let mut clock_parts = clock.split(':');
    let (hour, minute, second) = if clock.is_empty() {
        (0, 0, 0)
    } else {
        let hour = number(clock_parts.next(), 2)?;
        let minute = number(clock_parts.next(), 2)?;
        let second = match clock_parts.next() {
            None => 0,
            some => number(some, 2)?,
        };
        (hour, minute, second)
    };
    if (!clock.is_empty() && clock_parts.next().is_some())
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(invalid());
    }
    let millis = match fraction {
        None => 0,
        Some(digits)
            if !digits.is_empty()
                && digits.len() <= 9
                && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            let padded = format!("{digits:0<3}");
            padded[..3].parse::<i64>().map_err(|_| invalid())?
        }
        Some(_) => return Err(invalid()),
    };
    let zone_offset_minutes = match zone {
        "" | "Z" | "z" => 0,
        signed => {
            let (sign, digits) = signed.split_at(1);
            let digits = digits.replace(':', "");
            if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let hours: i64 = digits[..2].parse().map_err(|_| invalid())?;
            let minutes: i64 = digits[2..].parse().map_err(|_| invalid())?;
            let offset = hours * 60 + minutes;
            if sign == "-" {
                -offset
            } else {
                offset
            }
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - zone_offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_print_as_iso_8601_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_ms(-1), "-1");
        assert_eq!(format_ms(i64::MAX), format!("{}ms", i64::MAX));
    }

    #[test]
    fn iso_8601_parses_with_and_without_zones() {
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:00.000Z"), Ok(0));
        assert_eq!(
            parse_iso8601_ms("2000-02-29T00:00:00.123"),
            Ok(951_782_400_123)
        );
        assert_eq!(parse_iso8601_ms("2000-02-29"), Ok(951_782_400_000));
        assert_eq!(parse_iso8601_ms("2000-02-29T00:00"), Ok(951_782_400_000));
        assert_eq!(
            parse_iso8601_ms("2000-02-29T02:00:00+02:00"),
            Ok(951_782_400_000)
        );
        assert_eq!(
            parse_iso8601_ms("2000-02-28T22:00:00.5-0200"),
            Ok(951_782_400_500)
        );
        for bad in [
            "",
            "2000-13-01",
            "2001-02-29",
            "2000-01-01T25:00",
            "2000-01-01T00:00:00+2",
            "yesterday",
            "2000-01-01T00:00:00.x",
        ] {
            assert!(parse_iso8601_ms(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn printing_then_parsing_gives_the_same_millisecond(ms in 0i64..253_402_300_799_999) {
            proptest::prop_assert_eq!(parse_iso8601_ms(&format_ms(ms)), Ok(ms));
        }
    }
}
