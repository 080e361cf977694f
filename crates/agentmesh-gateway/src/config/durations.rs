//! Serde helpers for the durations in a gateway config, so each names its key in errors.

/// Durations in `[[provider]]`, each naming its key in the error.
pub(super) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// The form `parse` reads back, so a written config loads to the same durations.
    pub fn write<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(|d| humantime::format_duration(d).to_string())
            .serialize(s)
    }

    fn parse<'de, D: Deserializer<'de>>(d: D, key: &str) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "{key} {s:?} is not a duration like 30s or 500ms: {e}"
            ))
        })
    }

    pub fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        parse(d, "timeout")
    }

    pub fn connect_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        parse(d, "connect_timeout")
    }

    pub fn retry_backoff<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        parse(d, "retry_backoff")
    }

    pub fn retry_backoff_max<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        parse(d, "retry_backoff_max")
    }

    pub fn circuit_cooldown<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        parse(d, "circuit_cooldown")
    }
}

/// `Option<Duration>` written like `1h`, for the caller windows.
pub(super) mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        super::duration::write(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s).map_err(|e| {
                serde::de::Error::custom(format!("window {s:?} is not a duration like 1h: {e}"))
            })
        })
        .transpose()
    }
}
