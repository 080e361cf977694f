//! Timestamps as the audit, access-log and inspector lines write them: RFC 3339 in UTC.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The current time as RFC 3339, UTC, to the nanosecond (the gateway's audit lines, the
/// agents' logs).
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The current time as RFC 3339, UTC, to the millisecond, always three digits (the proxy's
/// access log, whose lines line up and sort as text).
pub fn now_rfc3339_millis() -> String {
    let now = OffsetDateTime::now_utc();
    let ms = now.millisecond();
    let base = now
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    // 2026-11-23T10:00:00Z -> 2026-11-23T10:00:00.123Z
    match base.strip_suffix('Z') {
        Some(stem) => format!("{stem}.{ms:03}Z"),
        None => base,
    }
}

/// Unix seconds as RFC 3339 in UTC, e.g. `2025-01-02T03:04:05Z`; `None` when the time is out
/// of the range RFC 3339 can write, so each caller picks what to show instead.
pub fn rfc3339_secs(secs: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
}

/// A system time as RFC 3339 in UTC, to the second, or the unix seconds when out of range.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    rfc3339_secs(secs).unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(rfc3339_secs(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(rfc3339_secs(i64::MAX), None);
        let ms = now_rfc3339_millis();
        assert_eq!(ms.len(), "2026-11-23T10:00:00.123Z".len(), "{ms}");
        assert!(now_rfc3339().ends_with('Z'));
    }
}
