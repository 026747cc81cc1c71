//! Times as Redis keeps them (milliseconds) and as the API writes them.

use time::OffsetDateTime;

pub fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
    from_ms(to_ms(t))
}

/// RFC 3339 in UTC with exactly three fractional digits.
pub fn rfc3339_ms(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_milliseconds() {
        assert_eq!(
            rfc3339_ms(from_ms(1_765_497_600_123)),
            "2025-12-12T00:00:00.123Z"
        );
    }
}
