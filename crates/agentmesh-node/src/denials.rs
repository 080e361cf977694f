//! Explain without disclosing: what a caller that matches no registration entry is told, and
//! what the node's operator sees.
//!
//! The refused caller learns three things: that no entry matched its own selectors, which
//! *kinds* of selector (`TYPE:KEY`, such as `unix:uid` or `launcher:service`) the closest
//! entry needs that it lacks, and a request id. It never learns another entry's SPIFFE ID,
//! entry id or selector values: a process that may not have an identity must not be able to
//! map out which identities exist and how to get them.
//!
//! The full explanation (the closest entry, its id, the selector values it needs and the
//! caller's own values) goes to the node log as one WARN line carrying the request id, and
//! into a ring of the last [`KEEP`] denials that the node's 0600 admin socket serves
//! (`ListDenials`, which `agentmesh node denials` and the inspector read). Selectors whose key
//! is `env` (`docker:env:NAME=VALUE`, `launcher:env:…`) may hold secrets: their values are
//! never written anywhere, only `NAME`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use agentmesh_spiffe::{Selector, SpiffeId};
use ring::rand::SecureRandom as _;

use crate::attestor::Attestation;
use crate::cache::EntryInfo;

/// How many denials the node remembers for its admin API.
pub const KEEP: usize = 256;

/// Selector keys whose values may be secrets.
const SECRET_KEYS: &[&str] = &["env"];

/// Which API refused the caller; it picks the log line's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeniedBy {
    /// The Workload API, on a request.
    WorkloadApi,
    /// The Workload API, on an open `FetchX509SVID` stream whose entries went away.
    WorkloadApiStream,
    /// Envoy SDS.
    Sds,
    /// The proxy API (policy relay, service registration).
    ProxyApi,
}

impl DeniedBy {
    /// The name the admin API reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkloadApi | Self::WorkloadApiStream => "workload_api",
            Self::Sds => "sds",
            Self::ProxyApi => "proxy_api",
        }
    }
}

/// One refusal, as the operator sees it.
#[derive(Debug, Clone)]
pub struct Denial {
    /// Random, 16 hex digits; the refused caller was given it.
    pub request_id: String,
    /// When.
    pub at: SystemTime,
    /// Which API refused.
    pub api: DeniedBy,
    /// The caller's pid, if the kernel said.
    pub pid: Option<u32>,
    /// The caller's uid.
    pub uid: u32,
    /// The full closest-entry explanation, secret values left out.
    pub explanation: String,
    /// The selector kinds (`TYPE:KEY`) the caller was told it lacks.
    pub missing_kinds: Vec<String>,
    /// The closest entry's id and SPIFFE ID (none when the node serves no entries).
    pub closest: Option<(String, SpiffeId)>,
}

/// The last [`KEEP`] denials, newest last.
#[derive(Debug, Default)]
pub struct Denials {
    recent: Mutex<VecDeque<Arc<Denial>>>,
}

impl Denials {
    /// Records a refusal of `att` (which matches none of `entries`), logs the full
    /// explanation at WARN with the request id, and returns the message for the caller.
    pub fn refuse(&self, api: DeniedBy, att: &Attestation, entries: &[EntryInfo]) -> String {
        let request_id = new_request_id();
        let closest = closest_entry(att, entries);
        let mut explanation = full_explanation(att, closest.as_ref());
        let missing_kinds = closest
            .as_ref()
            .map(|(_, missing)| kinds(missing))
            .unwrap_or_default();
        let mut public = public_message(&missing_kinds, &request_id, closest.is_some());
        // The caller's own container, the socket and the engine's state are no one else's
        // secrets, and without them the caller cannot tell a missing label from a down engine.
        if let Some(e) = &att.docker_error {
            let why = format!("; its container could not be attested: {e}");
            explanation.push_str(&why);
            public.push_str(&why);
        }
        let closest_ids = closest
            .as_ref()
            .map(|(e, _)| (e.id.clone(), e.spiffe_id.clone()));
        let (entry_id, spiffe_id) = closest_ids
            .as_ref()
            .map(|(id, sid)| (id.as_str(), sid.to_string()))
            .unwrap_or_default();
        let pid = att.cred.pid.unwrap_or_default();
        let uid = att.cred.uid;
        // One literal message per API, so existing log searches keep working.
        match api {
            DeniedBy::WorkloadApi => {
                tracing::warn!(%request_id, api = api.as_str(), pid, uid, closest_entry = entry_id, closest_spiffe_id = %spiffe_id, reason = %explanation, "no identity issued")
            }
            DeniedBy::WorkloadApiStream => {
                tracing::warn!(%request_id, api = api.as_str(), pid, uid, closest_entry = entry_id, closest_spiffe_id = %spiffe_id, reason = %explanation, "identity withdrawn")
            }
            DeniedBy::Sds => {
                tracing::warn!(%request_id, api = api.as_str(), pid, uid, closest_entry = entry_id, closest_spiffe_id = %spiffe_id, reason = %explanation, "no identity issued over SDS")
            }
            DeniedBy::ProxyApi => {
                tracing::warn!(%request_id, api = api.as_str(), pid, uid, closest_entry = entry_id, closest_spiffe_id = %spiffe_id, reason = %explanation, "proxy API refused an unregistered caller")
            }
        }
        let denial = Denial {
            request_id,
            at: SystemTime::now(),
            api,
            pid: att.cred.pid,
            uid,
            explanation,
            missing_kinds,
            closest: closest_ids,
        };
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == KEEP {
            recent.pop_front();
        }
        recent.push_back(Arc::new(denial));
        public
    }

    /// The remembered denials, newest first; only `request_id`'s if given.
    pub fn list(&self, request_id: Option<&str>) -> Vec<Arc<Denial>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .rev()
            .filter(|d| request_id.is_none_or(|id| d.request_id == id))
            .cloned()
            .collect()
    }
}

fn new_request_id() -> String {
    let mut bytes = [0u8; 8];
    // The system RNG failing is not worth refusing over; an all-zero id still names the
    // denial in the log (only less uniquely).
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The entry with the most selectors matched and then the fewest missing, and the selectors
/// of it the caller lacks.
fn closest_entry<'a>(
    att: &'a Attestation,
    entries: &'a [EntryInfo],
) -> Option<(&'a EntryInfo, Vec<&'a Selector>)> {
    let entry = entries.iter().max_by_key(|e| {
        let missing = e.selectors.missing_from(&att.selectors).count();
        ((e.selectors.len() - missing) as i64, -(missing as i64))
    })?;
    let missing = entry.selectors.missing_from(&att.selectors).collect();
    Some((entry, missing))
}

/// `TYPE:KEY` of each selector, deduplicated, in order.
fn kinds(selectors: &[&Selector]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in selectors {
        let kind = format!("{}:{}", s.kind(), s.key());
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    out
}

/// What the refused caller is told: no foreign SPIFFE ID, entry id or selector value.
fn public_message(kinds: &[String], request_id: &str, any_entry: bool) -> String {
    let lookup = format!(
        "request id {request_id} (the node's operator can see the full explanation with `agentmesh node denials --request-id {request_id}` or in the node log)"
    );
    if !any_entry {
        return format!(
            "no registration entry matches this process's selectors: this node serves no entries; {lookup}"
        );
    }
    let what = match kinds {
        [one] => format!("a {one} selector"),
        many => format!("{} selectors", many.join(", ")),
    };
    format!(
        "no registration entry matches this process's selectors; the closest entry needs {what} that this process lacks; {lookup}"
    )
}

/// A selector as logs and the admin API may show it: secret-valued ones by name only.
pub fn shown(s: &Selector) -> String {
    if SECRET_KEYS.contains(&s.key()) {
        let name = s.value().split_once('=').map_or(s.value(), |(n, _)| n);
        format!("{}:{}:{name}=<redacted>", s.kind(), s.key())
    } else {
        s.to_string()
    }
}

/// The operator's explanation: the closest entry, its id, what it needs and what the caller
/// has of each kind.
fn full_explanation(att: &Attestation, closest: Option<&(&EntryInfo, Vec<&Selector>)>) -> String {
    let head = format!(
        "no registration entry matches this process ({})",
        att.summary
    );
    let Some((entry, missing)) = closest else {
        return format!(
            "{head}: this node serves no entries; create one with `agentmesh entry create`"
        );
    };
    let needs: Vec<String> = missing
        .iter()
        .map(|want| {
            let have: Vec<String> = att
                .selectors
                .iter()
                .filter(|s| s.kind() == want.kind() && s.key() == want.key())
                .map(shown)
                .collect();
            if have.is_empty() {
                format!(
                    "{} (this process has no {}:{} selector)",
                    shown(want),
                    want.kind(),
                    want.key()
                )
            } else {
                format!("{} (this process has {})", shown(want), have.join(", "))
            }
        })
        .collect();
    format!(
        "{head}; closest entry {} (id {}) needs {}",
        entry.spiffe_id,
        entry.id,
        needs.join(" and ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestor::PeerCred;
    use agentmesh_spiffe::SelectorSet;

    fn set(v: &[&str]) -> SelectorSet {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn entry(id: &str, spiffe: &str, sel: &[&str]) -> EntryInfo {
        EntryInfo {
            id: id.into(),
            spiffe_id: spiffe.parse().unwrap(),
            selectors: set(sel),
            x509_ttl: 0,
            jwt_ttl: 0,
            dns_names: vec![],
            federates_with: vec![],
        }
    }

    fn caller() -> Attestation {
        Attestation {
            selectors: set(&[
                "unix:uid:1000",
                "unix:gid:1000",
                "unix:path:/usr/bin/python3",
                "launcher:env:API_TOKEN=caller-secret",
            ]),
            summary: "pid=7 uid=1000 gid=1000 path=/usr/bin/python3".into(),
            docker_error: None,
            cred: PeerCred {
                pid: Some(7),
                uid: 1000,
                gid: 1000,
            },
        }
    }

    fn entries() -> Vec<EntryInfo> {
        vec![
            entry(
                "e1",
                "spiffe://td/ns/default/sa/reader",
                &["unix:uid:2000", "unix:gid:2000"],
            ),
            entry(
                "e2-writer-entry",
                "spiffe://td/ns/default/sa/writer",
                &[
                    "unix:uid:1001",
                    "unix:path:/usr/bin/python3",
                    "launcher:service:writer",
                    "launcher:env:API_TOKEN=entry-secret",
                ],
            ),
        ]
    }

    #[test]
    fn the_caller_learns_the_kinds_it_lacks_and_a_request_id_only() {
        let denials = Denials::default();
        let message = denials.refuse(DeniedBy::WorkloadApi, &caller(), &entries());
        let d = denials.list(None).remove(0);
        assert!(
            message.starts_with("no registration entry matches this process's selectors"),
            "{message}"
        );
        assert!(
            message.contains("launcher:env, launcher:service, unix:uid selectors"),
            "{message}"
        );
        assert!(message.contains(&d.request_id), "{message}");
        assert_eq!(d.request_id.len(), 16);
        // Nothing about other entries: no SPIFFE ID, no entry id, no selector value.
        for secret in [
            "spiffe://",
            "writer",
            "reader",
            "e2-writer-entry",
            "1001",
            "2000",
            "entry-secret",
            "API_TOKEN",
            "/usr/bin/python3",
        ] {
            assert!(!message.contains(secret), "{secret:?} leaked: {message}");
        }
    }

    #[test]
    fn the_operator_gets_the_full_explanation_by_request_id() {
        let denials = Denials::default();
        let message = denials.refuse(DeniedBy::Sds, &caller(), &entries());
        let id = message
            .split("request id ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap();
        let found = denials.list(Some(id));
        assert_eq!(found.len(), 1);
        let d = &found[0];
        assert_eq!(d.api, DeniedBy::Sds);
        assert_eq!((d.pid, d.uid), (Some(7), 1000));
        assert_eq!(
            d.closest
                .as_ref()
                .map(|(id, sid)| (id.as_str(), sid.to_string())),
            Some((
                "e2-writer-entry",
                "spiffe://td/ns/default/sa/writer".to_owned()
            ))
        );
        let text = &d.explanation;
        assert!(
            text.starts_with("no registration entry matches this process (pid=7"),
            "{text}"
        );
        assert!(
            text.contains("closest entry spiffe://td/ns/default/sa/writer (id e2-writer-entry)"),
            "{text}"
        );
        assert!(
            text.contains("unix:uid:1001 (this process has unix:uid:1000)"),
            "{text}"
        );
        assert!(
            text.contains(
                "launcher:service:writer (this process has no launcher:service selector)"
            ),
            "{text}"
        );
        // Secret-valued selectors: names only, on both sides.
        assert!(text.contains("launcher:env:API_TOKEN=<redacted>"), "{text}");
        assert!(!text.contains("entry-secret"), "{text}");
        assert!(!text.contains("caller-secret"), "{text}");
        assert!(denials.list(Some("0000000000000000")).is_empty());
    }

    /// A log sink for one test's subscriber.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn the_warn_line_with_the_request_id_has_the_full_explanation_and_no_secret() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .finish();
        let denials = Denials::default();
        let message = tracing::subscriber::with_default(subscriber, || {
            denials.refuse(DeniedBy::WorkloadApi, &caller(), &entries())
        });
        let id = &denials.list(None)[0].request_id;
        assert!(message.contains(id.as_str()), "{message}");
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("request_id={id}")))
            .unwrap_or_else(|| panic!("no line with request_id={id}: {log}"));
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("no identity issued"), "{line}");
        assert!(
            line.contains("closest entry spiffe://td/ns/default/sa/writer (id e2-writer-entry)"),
            "{line}"
        );
        assert!(
            line.contains("unix:uid:1001 (this process has unix:uid:1000)"),
            "{line}"
        );
        assert!(line.contains("launcher:env:API_TOKEN=<redacted>"), "{line}");
        assert!(
            !log.contains("entry-secret") && !log.contains("caller-secret"),
            "{log}"
        );
    }

    #[test]
    fn a_node_with_no_entries_says_so_and_the_ring_is_bounded() {
        let denials = Denials::default();
        let message = denials.refuse(DeniedBy::ProxyApi, &caller(), &[]);
        assert!(message.contains("serves no entries"), "{message}");
        let d = denials.list(None).remove(0);
        assert!(d.closest.is_none());
        assert!(
            d.explanation.contains("create one with"),
            "{}",
            d.explanation
        );
        for _ in 0..KEEP + 10 {
            denials.refuse(DeniedBy::WorkloadApi, &caller(), &entries());
        }
        let all = denials.list(None);
        assert_eq!(all.len(), KEEP);
        assert!(all.iter().all(|d| d.api == DeniedBy::WorkloadApi));
    }
}
