//! Output formats and the helpers that render times, JSON and certificates.

use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;

/// `-o text|json`, for commands that show records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum TextOrJson {
    /// Aligned `Key : value` lines.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// Renders unix seconds as RFC 3339 in UTC, e.g. `2025-01-02T03:04:05Z`.
pub fn rfc3339_secs(secs: i64) -> String {
    agentmesh_telemetry::clock::rfc3339_secs(secs).unwrap_or_else(|| secs.to_string())
}

pub use agentmesh_telemetry::clock::rfc3339;

/// Renders a TTL in seconds the way humans write it (`1h`, `5m`, `90s`); zero means the
/// server's default.
pub fn ttl(secs: i64) -> String {
    match u64::try_from(secs) {
        Ok(0) | Err(_) => "default".to_owned(),
        Ok(s) => humantime::format_duration(Duration::from_secs(s)).to_string(),
    }
}

/// Prints a value as pretty JSON with a trailing newline.
///
/// # Errors
/// Serialization failing, which does not happen for the types printed here.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot render JSON")?;
    println!("{text}");
    Ok(())
}

/// Splits concatenated DER certificates (the Workload API's `x509_svid` and `bundle`
/// fields) into one DER blob per certificate.
///
/// # Errors
/// Bytes that are not a sequence of DER certificates.
pub fn split_der_certs(bytes: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    Ok(agentmesh_ca::split_der_certs(bytes)?)
}

/// PEM `CERTIFICATE` blocks for each DER certificate, concatenated.
pub fn certs_pem(certs: &[Vec<u8>]) -> String {
    certs
        .iter()
        .map(|c| agentmesh_ca::pem_encode("CERTIFICATE", c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn times_render_as_rfc3339_utc() {
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn ttls_render_like_the_flags_take_them() {
        assert_eq!(ttl(0), "default");
        assert_eq!(ttl(3600), "1h");
        assert_eq!(ttl(90), "1m 30s");
    }

    #[test]
    fn garbage_is_not_a_certificate_list() {
        assert!(split_der_certs(b"not der").is_err());
        assert!(split_der_certs(b"").unwrap().is_empty());
    }
}
