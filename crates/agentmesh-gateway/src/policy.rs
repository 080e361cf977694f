//! Who may use what: the caller's verified SPIFFE ID (from the proxy's
//! `x-forwarded-client-cert`) picks a `[[caller]]` entry, which lists models, a token budget
//! per window and the largest request. A caller with no entry is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentmesh_spiffe::SpiffeId;

use crate::config::{CallerConfig, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_WINDOW};

/// The identity the gateway's proxy verified, from Envoy's XFCC format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's SPIFFE ID (`URI=`).
    pub id: SpiffeId,
    /// The proxy's own ID (`By=`), whose trust domain resolves service names.
    pub by: Option<SpiffeId>,
}

/// Reads the last element of an `x-forwarded-client-cert` value: the one the gateway's own
/// proxy added (any earlier ones were stripped by it, but the last is the nearest hop).
pub fn parse_xfcc(value: &str) -> Option<Caller> {
    let element = value.rsplit(',').next()?;
    let mut uri = None;
    let mut by = None;
    for pair in element.split(';') {
        let (k, v) = pair.split_once('=')?;
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "uri" => uri = v.parse::<SpiffeId>().ok(),
            "by" => by = v.parse::<SpiffeId>().ok(),
            _ => {}
        }
    }
    Some(Caller { id: uri?, by })
}

/// Why a call is refused before it reaches a provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `[[caller]]` entry matches.
    #[error("no gateway policy for caller {0}")]
    UnknownCaller(String),
    /// The model is not in the caller's list.
    #[error("caller {caller} may not use model {model:?} (allowed: {allowed})")]
    Model {
        /// The caller.
        caller: String,
        /// The model asked for.
        model: String,
        /// What it may use.
        allowed: String,
    },
    /// The request is larger than the caller may send.
    #[error("request of {size} bytes is over caller {caller}'s limit of {limit} bytes")]
    TooLarge {
        /// The caller.
        caller: String,
        /// Bytes sent.
        size: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// The token budget for the current window is spent.
    #[error(
        "caller {caller} has used {used} of {budget} tokens in this {window_secs} s window; it resets in {resets_in_secs} s"
    )]
    Budget {
        /// The caller.
        caller: String,
        /// Tokens used.
        used: u64,
        /// Tokens allowed.
        budget: u64,
        /// The window.
        window_secs: u64,
        /// Seconds until the window resets.
        resets_in_secs: u64,
    },
}

/// A resolved caller policy.
#[derive(Debug, Clone)]
pub struct CallerPolicy {
    /// The config entry's id, for messages and budget accounting.
    pub key: String,
    models: Vec<String>,
    budget: Option<u64>,
    window: Duration,
    /// The largest request body.
    pub max_request_bytes: usize,
}

impl CallerPolicy {
    /// Whether `model` is allowed.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == model)
    }
}

/// Every caller policy plus the budgets spent so far.
#[derive(Debug)]
pub struct Policies {
    callers: Vec<CallerConfig>,
    spent: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Policies {
    /// Policies from the config entries.
    pub fn new(callers: Vec<CallerConfig>) -> Self {
        Self {
            callers,
            spent: Mutex::new(HashMap::new()),
        }
    }

    /// The entry for `caller`: its exact ID or service name, else `*`.
    ///
    /// # Errors
    /// [`Refusal::UnknownCaller`].
    pub fn resolve(&self, caller: &Caller) -> Result<CallerPolicy, Refusal> {
        let td = caller.by.as_ref().map_or_else(
            || caller.id.trust_domain().clone(),
            |b| b.trust_domain().clone(),
        );
        let matches = |c: &CallerConfig| {
            SpiffeId::from_service_name(&td, &c.id).is_ok_and(|id| id == caller.id)
        };
        let entry = self
            .callers
            .iter()
            .find(|c| c.id != "*" && matches(c))
            .or_else(|| self.callers.iter().find(|c| c.id == "*"))
            .ok_or_else(|| Refusal::UnknownCaller(caller.id.to_string()))?;
        Ok(CallerPolicy {
            key: if entry.id == "*" {
                caller.id.to_string()
            } else {
                entry.id.clone()
            },
            models: entry.models.clone(),
            budget: entry.tokens_per_window,
            window: entry.window.unwrap_or(DEFAULT_WINDOW),
            max_request_bytes: entry.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
        })
    }

    /// Refuses when the caller's budget for the current window is already spent.
    ///
    /// # Errors
    /// [`Refusal::Budget`].
    pub fn check_budget(&self, p: &CallerPolicy) -> Result<(), Refusal> {
        let Some(budget) = p.budget else {
            return Ok(());
        };
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (start, used) = spent.entry(p.key.clone()).or_insert((now, 0));
        if now.duration_since(*start) >= p.window {
            *start = now;
            *used = 0;
        }
        if *used >= budget {
            let resets = p.window.saturating_sub(now.duration_since(*start));
            return Err(Refusal::Budget {
                caller: p.key.clone(),
                used: *used,
                budget,
                window_secs: p.window.as_secs(),
                resets_in_secs: resets.as_secs().max(1),
            });
        }
        Ok(())
    }

    /// Adds `tokens` to the caller's current window. A call that started inside the budget
    /// finishes even if it goes over; the next one is refused.
    pub fn spend(&self, p: &CallerPolicy, tokens: u64) {
        if p.budget.is_none() {
            return;
        }
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let entry = spent.entry(p.key.clone()).or_insert((Instant::now(), 0));
        entry.1 = entry.1.saturating_add(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(id: &str) -> Caller {
        Caller {
            id: id.parse().unwrap(),
            by: Some("spiffe://td/ns/default/sa/gateway".parse().unwrap()),
        }
    }

    fn entry(id: &str, models: &[&str], budget: Option<u64>) -> CallerConfig {
        CallerConfig {
            id: id.into(),
            models: models.iter().map(|m| (*m).into()).collect(),
            tokens_per_window: budget,
            window: None,
            max_request_bytes: Some(100),
        }
    }

    #[test]
    fn xfcc_is_read_from_the_nearest_element() {
        let c = parse_xfcc(
            "By=spiffe://td/ns/default/sa/gateway;URI=spiffe://td/ns/default/sa/executor",
        )
        .unwrap();
        assert_eq!(c.id.to_string(), "spiffe://td/ns/default/sa/executor");
        let c = parse_xfcc("URI=spiffe://x/evil,By=spiffe://td/g;URI=\"spiffe://td/a\"").unwrap();
        assert_eq!(c.id.to_string(), "spiffe://td/a");
        for bad in ["", "URI=", "URI=https://x", "garbage", "By=spiffe://td/g"] {
            assert!(parse_xfcc(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn exact_entry_beats_star_and_unknown_callers_are_refused() {
        let p = Policies::new(vec![
            entry("executor", &["small"], None),
            entry("*", &["*"], None),
        ]);
        let exec = p
            .resolve(&caller("spiffe://td/ns/default/sa/executor"))
            .unwrap();
        assert!(exec.allows_model("small") && !exec.allows_model("big"));
        let other = p
            .resolve(&caller("spiffe://td/ns/default/sa/other"))
            .unwrap();
        assert!(other.allows_model("big"));

        let strict = Policies::new(vec![entry("executor", &["small"], None)]);
        assert!(matches!(
            strict.resolve(&caller("spiffe://td/ns/default/sa/planner")),
            Err(Refusal::UnknownCaller(_))
        ));
        // Same name in another trust domain is another caller.
        assert!(
            strict
                .resolve(&caller("spiffe://elsewhere/ns/default/sa/executor"))
                .is_err()
        );
    }

    #[test]
    fn budget_refuses_once_spent() {
        let p = Policies::new(vec![entry("executor", &["*"], Some(10))]);
        let c = p
            .resolve(&caller("spiffe://td/ns/default/sa/executor"))
            .unwrap();
        assert!(p.check_budget(&c).is_ok());
        p.spend(&c, 7);
        assert!(p.check_budget(&c).is_ok());
        p.spend(&c, 7);
        let e = p.check_budget(&c).unwrap_err();
        assert!(
            matches!(
                e,
                Refusal::Budget {
                    used: 14,
                    budget: 10,
                    ..
                }
            ),
            "{e}"
        );
    }
}
