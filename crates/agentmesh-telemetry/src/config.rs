//! Where and how spans are exported, from the standard OpenTelemetry environment variables.
//!
//! Export is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set (or `OTEL_TRACES_EXPORTER=otlp`, which defaults to `http://localhost:4318`), and off
//! when neither is, when `OTEL_TRACES_EXPORTER=none` or when `OTEL_SDK_DISABLED=true`. A value
//! that cannot be used is an error at startup naming the variable, never a silent fallback: a
//! process that says it exports but does not would hide exactly what tracing is for.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};

/// The base endpoint; `/v1/traces` is appended.
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The traces endpoint, used as it is; wins over [`ENDPOINT_ENV`].
pub const TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The `service.name` resource attribute; wins over the component's default.
pub const SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";
/// More resource attributes, `key=value,key=value` (values percent-decoded).
pub const RESOURCE_ATTRIBUTES_ENV: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// Headers sent with every export, `key=value,...` (for a collector's API key).
pub const HEADERS_ENV: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// Traces-only headers; win over [`HEADERS_ENV`].
pub const TRACES_HEADERS_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
/// Export timeout in milliseconds (default 10000).
pub const TIMEOUT_ENV: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// Traces-only export timeout; wins over [`TIMEOUT_ENV`].
pub const TRACES_TIMEOUT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
/// The protocol; only `http/protobuf` is spoken.
pub const PROTOCOL_ENV: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// Traces-only protocol; wins over [`PROTOCOL_ENV`].
pub const TRACES_PROTOCOL_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// `otlp` or `none`.
pub const TRACES_EXPORTER_ENV: &str = "OTEL_TRACES_EXPORTER";
/// `true` turns all of it off.
pub const SDK_DISABLED_ENV: &str = "OTEL_SDK_DISABLED";
/// Milliseconds between exports of a partial batch (default 5000).
pub const SCHEDULE_DELAY_ENV: &str = "OTEL_BSP_SCHEDULE_DELAY";
/// Spans that may wait for export; more are dropped and counted (default 2048).
pub const MAX_QUEUE_SIZE_ENV: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
/// Spans per export request (default 512).
pub const MAX_EXPORT_BATCH_SIZE_ENV: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";

/// The endpoint `OTEL_TRACES_EXPORTER=otlp` uses when no endpoint is set (the spec's default).
const DEFAULT_TRACES_ENDPOINT: &str = "http://localhost:4318/v1/traces";
const TRACES_PATH: &str = "/v1/traces";

/// Why the export settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The endpoint is not a URL.
    #[error("invalid ${var} {value:?}: {reason} (use a URL such as http://127.0.0.1:4318)")]
    Endpoint {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// An `https://` endpoint: this exporter has no CA store to verify a collector with.
    #[error(
        "invalid ${var} {value:?}: https endpoints are not supported yet; send to a local collector over http:// (for example http://127.0.0.1:4318) and let it forward over TLS"
    )]
    Https {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A protocol other than OTLP/HTTP with protobuf.
    #[error("unsupported ${var} {value:?}: only http/protobuf is spoken (OTLP/HTTP, port 4318)")]
    Protocol {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// An exporter other than `otlp` or `none`.
    #[error("unsupported ${TRACES_EXPORTER_ENV} {0:?}: use otlp or none")]
    Exporter(String),
    /// A number that is not a positive integer.
    #[error("invalid ${var} {value:?}: expected a positive whole number")]
    Number {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The export batch is larger than the queue.
    #[error(
        "${MAX_EXPORT_BATCH_SIZE_ENV} ({batch}) is larger than ${MAX_QUEUE_SIZE_ENV} ({queue}); make the batch at most the queue size"
    )]
    BatchLargerThanQueue {
        /// The batch size.
        batch: usize,
        /// The queue size.
        queue: usize,
    },
    /// A malformed `key=value` list. The value is not repeated: headers may hold API keys.
    #[error("invalid ${var}: entry {entry} {reason} (expected key=value,key=value)")]
    List {
        /// The variable.
        var: &'static str,
        /// Which entry, from 1.
        entry: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Where spans go and how they are batched.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// The full URL spans are POSTed to.
    pub endpoint: Uri,
    /// Extra headers for each POST.
    pub headers: HeaderMap,
    /// How long one export may take, retries included.
    pub timeout: Duration,
    /// The resource attributes, `service.name` first.
    pub resource: Vec<(String, String)>,
    /// How long a partial batch waits before it is sent.
    pub schedule_delay: Duration,
    /// How many spans may wait; more are dropped and counted.
    pub max_queue_size: usize,
    /// Spans per request.
    pub max_export_batch_size: usize,
}

impl ExportConfig {
    /// Reads the process environment. `default_service_name` names the component (for
    /// example `agentmesh-proxy/executor`) when `OTEL_SERVICE_NAME` does not.
    ///
    /// # Errors
    /// A variable whose value cannot be used; the message names it.
    pub fn from_env(default_service_name: &str) -> Result<Option<Self>, ConfigError> {
        Self::from_vars(default_service_name, |k| std::env::var(k).ok())
    }

    /// Reads the settings through `var`, so tests pass a map instead of changing the
    /// environment. `None` when export is off. Empty values count as unset, as the
    /// OpenTelemetry spec says.
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_vars(
        default_service_name: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if get(SDK_DISABLED_ENV).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let exporter = get(TRACES_EXPORTER_ENV);
        match exporter.as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => return Err(ConfigError::Exporter(other.to_owned())),
        }
        let endpoint = if let Some(v) = get(TRACES_ENDPOINT_ENV) {
            parse_endpoint(TRACES_ENDPOINT_ENV, &v, false)?
        } else if let Some(v) = get(ENDPOINT_ENV) {
            parse_endpoint(ENDPOINT_ENV, &v, true)?
        } else if exporter.is_some() {
            parse_endpoint(TRACES_EXPORTER_ENV, DEFAULT_TRACES_ENDPOINT, false)?
        } else {
            return Ok(None);
        };
        for p in [TRACES_PROTOCOL_ENV, PROTOCOL_ENV] {
            if let Some(v) = get(p) {
                if v != "http/protobuf" {
                    return Err(ConfigError::Protocol { var: p, value: v });
                }
                break;
            }
        }
        let mut headers = HeaderMap::new();
        let headers_var = [TRACES_HEADERS_ENV, HEADERS_ENV]
            .into_iter()
            .find_map(|k| get(k).map(|v| (k, v)));
        if let Some((k, v)) = headers_var {
            for (name, value) in parse_list(k, &v)? {
                let entry = headers.len() + 1;
                let bad = |reason| ConfigError::List {
                    var: k,
                    entry,
                    reason,
                };
                let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| bad("has an invalid header name"))?;
                let value = HeaderValue::from_str(&value)
                    .map_err(|_| bad("has an invalid header value"))?;
                headers.append(name, value);
            }
        }
        let timeout = match [TRACES_TIMEOUT_ENV, TIMEOUT_ENV]
            .into_iter()
            .find_map(|k| get(k).map(|v| (k, v)))
        {
            Some((k, v)) => Duration::from_millis(positive(k, &v)? as u64),
            None => Duration::from_secs(10),
        };
        let schedule_delay = match get(SCHEDULE_DELAY_ENV) {
            Some(v) => Duration::from_millis(positive(SCHEDULE_DELAY_ENV, &v)? as u64),
            None => Duration::from_secs(5),
        };
        let max_queue_size = match get(MAX_QUEUE_SIZE_ENV) {
            Some(v) => positive(MAX_QUEUE_SIZE_ENV, &v)?,
            None => 2048,
        };
        let max_export_batch_size = match get(MAX_EXPORT_BATCH_SIZE_ENV) {
            Some(v) => positive(MAX_EXPORT_BATCH_SIZE_ENV, &v)?,
            None => 512.min(max_queue_size),
        };
        if max_export_batch_size > max_queue_size {
            return Err(ConfigError::BatchLargerThanQueue {
                batch: max_export_batch_size,
                queue: max_queue_size,
            });
        }

        // service.name: OTEL_SERVICE_NAME, then OTEL_RESOURCE_ATTRIBUTES, then the component.
        let mut extra = match get(RESOURCE_ATTRIBUTES_ENV) {
            Some(v) => parse_list(RESOURCE_ATTRIBUTES_ENV, &v)?,
            None => Vec::new(),
        };
        let from_resource = extra
            .iter()
            .position(|(k, _)| k == "service.name")
            .map(|i| extra.remove(i).1);
        let service_name = get(SERVICE_NAME_ENV)
            .or(from_resource)
            .unwrap_or_else(|| default_service_name.to_owned());
        let mut resource = vec![("service.name".to_owned(), service_name)];
        resource.append(&mut extra);
        for (k, v) in [
            ("telemetry.sdk.name", "agentmesh"),
            ("telemetry.sdk.language", "rust"),
            ("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ] {
            if !resource.iter().any(|(have, _)| have == k) {
                resource.push((k.to_owned(), v.to_owned()));
            }
        }
        Ok(Some(Self {
            endpoint,
            headers,
            timeout,
            resource,
            schedule_delay,
            max_queue_size,
            max_export_batch_size,
        }))
    }

    /// The `service.name` resource attribute.
    pub fn service_name(&self) -> &str {
        self.resource
            .first()
            .map_or("unknown_service", |(_, v)| v.as_str())
    }
}

/// An `http://` URL; with `append`, `/v1/traces` is added to its path (the base endpoint
/// variable's rule in the OTLP exporter spec).
fn parse_endpoint(var: &'static str, value: &str, append: bool) -> Result<Uri, ConfigError> {
    let bad = |reason: &str| ConfigError::Endpoint {
        var,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = value
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(ConfigError::Https {
                var,
                value: value.to_owned(),
            });
        }
        Some(_) => return Err(bad("the scheme must be http")),
        None => return Err(bad("no scheme")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !append {
        return Ok(uri);
    }
    let mut parts = uri.into_parts();
    let base = parts.path_and_query.as_ref().map_or("", |p| p.path());
    let path = format!("{}{TRACES_PATH}", base.trim_end_matches('/'));
    parts.path_and_query =
        Some(PathAndQuery::try_from(path.as_str()).map_err(|e| bad(&e.to_string()))?);
    Uri::from_parts(parts).map_err(|e| bad(&e.to_string()))
}

fn positive(var: &'static str, value: &str) -> Result<usize, ConfigError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ConfigError::Number {
            var,
            value: value.to_owned(),
        })
}

/// `key=value,key=value` with percent-encoded values (the W3C Baggage format the spec uses
/// for these variables).
fn parse_list(var: &'static str, value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, item) in value.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let bad = |reason| ConfigError::List {
            var,
            entry: i + 1,
            reason,
        };
        let (k, v) = item.split_once('=').ok_or_else(|| bad("has no '='"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(bad("has an empty key"));
        }
        let v = percent_decode(v.trim()).ok_or_else(|| bad("has a bad percent escape"))?;
        out.push((k.to_owned(), v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> Result<Option<ExportConfig>, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ExportConfig::from_vars("agentmesh-proxy/executor", |k| map.get(k).cloned())
    }

    #[test]
    fn export_is_off_without_an_endpoint_or_when_disabled() {
        assert!(cfg(&[]).unwrap().is_none());
        assert!(
            cfg(&[(ENDPOINT_ENV, "  ")]).unwrap().is_none(),
            "empty is unset"
        );
        assert!(
            cfg(&[(ENDPOINT_ENV, "http://c:4318"), (SDK_DISABLED_ENV, "TRUE")])
                .unwrap()
                .is_none()
        );
        assert!(
            cfg(&[
                (ENDPOINT_ENV, "http://c:4318"),
                (TRACES_EXPORTER_ENV, "none")
            ])
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn endpoints_follow_the_otlp_exporter_rules() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[(ENDPOINT_ENV, "http://127.0.0.1:4318")],
                "http://127.0.0.1:4318/v1/traces",
            ),
            (
                &[(ENDPOINT_ENV, "http://collector:4318/")],
                "http://collector:4318/v1/traces",
            ),
            (
                &[(ENDPOINT_ENV, "http://collector/otlp/")],
                "http://collector/otlp/v1/traces",
            ),
            (
                &[
                    (ENDPOINT_ENV, "http://ignored:1"),
                    (TRACES_ENDPOINT_ENV, "http://c:9/custom"),
                ],
                "http://c:9/custom",
            ),
            (
                &[(TRACES_EXPORTER_ENV, "otlp")],
                "http://localhost:4318/v1/traces",
            ),
        ];
        for (vars, want) in cases {
            let c = cfg(vars).unwrap().unwrap();
            assert_eq!(c.endpoint.to_string(), *want, "{vars:?}");
        }
    }

    #[test]
    fn unusable_values_are_one_error_naming_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(ENDPOINT_ENV, "not a url")], ENDPOINT_ENV),
            (&[(ENDPOINT_ENV, "127.0.0.1:4318")], ENDPOINT_ENV),
            (&[(ENDPOINT_ENV, "ftp://c:21")], ENDPOINT_ENV),
            (
                &[(TRACES_ENDPOINT_ENV, "https://c:4318")],
                "https endpoints",
            ),
            (
                &[(ENDPOINT_ENV, "http://c:4318"), (PROTOCOL_ENV, "grpc")],
                PROTOCOL_ENV,
            ),
            (&[(TRACES_EXPORTER_ENV, "jaeger")], TRACES_EXPORTER_ENV),
            (
                &[(ENDPOINT_ENV, "http://c"), (SCHEDULE_DELAY_ENV, "soon")],
                SCHEDULE_DELAY_ENV,
            ),
            (
                &[(ENDPOINT_ENV, "http://c"), (TIMEOUT_ENV, "0")],
                TIMEOUT_ENV,
            ),
            (
                &[
                    (ENDPOINT_ENV, "http://c"),
                    (MAX_QUEUE_SIZE_ENV, "10"),
                    (MAX_EXPORT_BATCH_SIZE_ENV, "20"),
                ],
                MAX_EXPORT_BATCH_SIZE_ENV,
            ),
            (
                &[(ENDPOINT_ENV, "http://c"), (HEADERS_ENV, "api-key")],
                HEADERS_ENV,
            ),
        ];
        for (vars, want) in cases {
            let err = cfg(vars).unwrap_err().to_string();
            assert!(err.contains(want), "{vars:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn header_values_never_appear_in_errors() {
        let err = cfg(&[
            (ENDPOINT_ENV, "http://c"),
            (HEADERS_ENV, "x-api-key=sekrit%0A"),
        ])
        .unwrap_err()
        .to_string();
        assert!(!err.contains("sekrit"), "{err}");
    }

    #[test]
    fn service_name_comes_from_the_env_then_resource_attributes_then_the_component() {
        let c = cfg(&[(ENDPOINT_ENV, "http://c")]).unwrap().unwrap();
        assert_eq!(c.service_name(), "agentmesh-proxy/executor");
        let c = cfg(&[
            (ENDPOINT_ENV, "http://c"),
            (
                RESOURCE_ATTRIBUTES_ENV,
                "service.name=from-attrs,team=a%20b",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.service_name(), "from-attrs");
        assert!(c.resource.contains(&("team".into(), "a b".into())));
        let c = cfg(&[
            (ENDPOINT_ENV, "http://c"),
            (RESOURCE_ATTRIBUTES_ENV, "service.name=from-attrs"),
            (SERVICE_NAME_ENV, "from-env"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.service_name(), "from-env");
        assert_eq!(
            c.resource
                .iter()
                .filter(|(k, _)| k == "service.name")
                .count(),
            1
        );
    }

    #[test]
    fn headers_and_batching_are_read() {
        let c = cfg(&[
            (ENDPOINT_ENV, "http://c"),
            (HEADERS_ENV, "X-Api-Key=a%3Db, other = 1"),
            (SCHEDULE_DELAY_ENV, "200"),
            (MAX_QUEUE_SIZE_ENV, "100"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.headers.get("x-api-key").unwrap(), "a=b");
        assert_eq!(c.headers.get("other").unwrap(), "1");
        assert_eq!(c.schedule_delay, Duration::from_millis(200));
        assert_eq!(c.max_queue_size, 100);
        assert_eq!(c.max_export_batch_size, 100, "capped at the queue size");
        assert_eq!(c.timeout, Duration::from_secs(10));
    }
}
