//! Who may use what: the caller's verified SPIFFE ID (from the proxy's
//! `x-forwarded-client-cert`) picks a `[[caller]]` entry, which lists models, a token budget
//! per window and the largest request. A caller with no entry is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentmesh_spiffe::SpiffeId;

use crate::config::{CallerConfig, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_WINDOW};
use crate::provider::Message;

/// Tokens a chat template adds around each message (role, separators): OpenAI's published
/// counting recipe uses 3 or 4 depending on the model; the larger is the bound.
pub const TOKENS_PER_MESSAGE: u64 = 4;
/// Tokens a chat template adds to prime the answer (OpenAI's recipe: 3).
pub const TOKENS_PER_REPLY: u64 = 3;

/// The most tokens a call can cost before a provider has counted them: every UTF-8 byte of
/// every forwarded string (role and content) as one token, plus the template's framing, plus
/// `max_completion`.
///
/// Bytes, not the four-characters-per-token rule used when a provider reports no usage:
/// that rule is an average for English and undercounts code, digits and most other scripts,
/// while no byte-level BPE or byte-fallback tokenizer (GPT, Llama, Gemma, Gemini) makes more
/// tokens than bytes. An over-estimate only holds budget until the call settles to the real
/// usage; an under-estimate would let concurrent calls overspend.
pub fn worst_case_tokens(messages: &[Message], max_completion: u64) -> u64 {
    let prompt: u64 = messages
        .iter()
        .map(|m| (m.role.len() + m.content.len()) as u64 + TOKENS_PER_MESSAGE)
        .sum();
    prompt
        .saturating_add(TOKENS_PER_REPLY)
        .saturating_add(max_completion)
}

pub use agentmesh_sdk::xfcc::{Caller, parse_xfcc};

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
    /// What is left of the budget is held by the caller's calls in flight.
    #[error(
        "caller {caller} has {in_flight} calls in flight holding {reserved} tokens and has used {used} of {budget}; this call may need {needed} tokens, which do not fit (the window resets in {resets_in_secs} s)"
    )]
    BudgetReserved {
        /// The caller.
        caller: String,
        /// This call's worst case.
        needed: u64,
        /// Tokens settled in the window.
        used: u64,
        /// Tokens held by calls in flight.
        reserved: u64,
        /// Calls in flight.
        in_flight: u32,
        /// Tokens allowed.
        budget: u64,
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

/// One caller's budget window: what settled calls spent and what calls in flight hold.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    /// Tokens of calls that finished in this window (their real usage).
    used: u64,
    /// Worst-case tokens held by calls still in flight.
    reserved: u64,
    /// Calls in flight.
    in_flight: u32,
}

/// A caller's budget as it stands: for tests, the inspector and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetUsage {
    /// Tokens settled in the current window.
    pub used: u64,
    /// Tokens held by calls in flight.
    pub reserved: u64,
    /// Calls in flight.
    pub in_flight: u32,
}

/// Every caller policy plus the budgets spent so far.
#[derive(Debug)]
pub struct Policies {
    callers: Vec<CallerConfig>,
    windows: Mutex<HashMap<String, Window>>,
}

impl Policies {
    /// Policies from the config entries.
    pub fn new(callers: Vec<CallerConfig>) -> Self {
        Self {
            callers,
            windows: Mutex::new(HashMap::new()),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The caller's window, restarted when its time is up. Reservations of calls in flight
    /// survive a restart: those calls settle into the new window.
    fn window<'m>(
        map: &'m mut HashMap<String, Window>,
        p: &CallerPolicy,
        now: Instant,
    ) -> &'m mut Window {
        let w = map.entry(p.key.clone()).or_insert(Window {
            start: now,
            used: 0,
            reserved: 0,
            in_flight: 0,
        });
        if now.duration_since(w.start) >= p.window {
            w.start = now;
            w.used = 0;
        }
        w
    }

    fn spent_refusal(p: &CallerPolicy, w: &Window, budget: u64, now: Instant) -> Refusal {
        let resets = p.window.saturating_sub(now.duration_since(w.start));
        Refusal::Budget {
            caller: p.key.clone(),
            used: w.used,
            budget,
            window_secs: p.window.as_secs(),
            resets_in_secs: resets.as_secs().max(1),
        }
    }

    /// Refuses when the caller's budget for the current window is already spent. A cheap
    /// early refusal before DLP; [`Policies::reserve`] is what holds the budget.
    ///
    /// # Errors
    /// [`Refusal::Budget`].
    pub fn check_budget(&self, p: &CallerPolicy) -> Result<(), Refusal> {
        let Some(budget) = p.budget else {
            return Ok(());
        };
        let now = Instant::now();
        let mut map = self.lock();
        let w = Self::window(&mut map, p, now);
        if w.used >= budget {
            return Err(Self::spent_refusal(p, w, budget, now));
        }
        Ok(())
    }

    /// Holds `worst_case` tokens of the caller's budget for one call until it settles
    /// ([`Reservation::settle`]) or is dropped (released: a failed call costs nothing).
    ///
    /// A call is admitted when its worst case fits beside what is spent and reserved. So
    /// that one call larger than what is left can still run (as before reservations: a call
    /// that starts inside the budget finishes), a call is also admitted when the budget is
    /// not yet spent and no other call of this caller is in flight. Concurrent calls
    /// therefore never spend more than the budget plus one call.
    ///
    /// # Errors
    /// [`Refusal::Budget`] when the window is spent, [`Refusal::BudgetReserved`] when calls
    /// in flight hold what is left.
    pub fn reserve(&self, p: &CallerPolicy, worst_case: u64) -> Result<Reservation<'_>, Refusal> {
        let Some(budget) = p.budget else {
            return Ok(Reservation {
                policies: self,
                key: None,
                tokens: 0,
            });
        };
        let now = Instant::now();
        let mut map = self.lock();
        let w = Self::window(&mut map, p, now);
        if w.used >= budget {
            return Err(Self::spent_refusal(p, w, budget, now));
        }
        let fits = w.used.saturating_add(w.reserved).saturating_add(worst_case) <= budget;
        if !fits && w.in_flight > 0 {
            let resets = p.window.saturating_sub(now.duration_since(w.start));
            return Err(Refusal::BudgetReserved {
                caller: p.key.clone(),
                needed: worst_case,
                used: w.used,
                reserved: w.reserved,
                in_flight: w.in_flight,
                budget,
                resets_in_secs: resets.as_secs().max(1),
            });
        }
        w.reserved = w.reserved.saturating_add(worst_case);
        w.in_flight += 1;
        Ok(Reservation {
            policies: self,
            key: Some(p.key.clone()),
            tokens: worst_case,
        })
    }

    /// Where the budget of the caller whose policy key is `key` stands; none before its
    /// first call or when it has no budget.
    pub fn usage(&self, key: &str) -> Option<BudgetUsage> {
        self.lock().get(key).map(|w| BudgetUsage {
            used: w.used,
            reserved: w.reserved,
            in_flight: w.in_flight,
        })
    }

    fn finish(&self, key: &str, reserved: u64, used: u64) {
        let mut map = self.lock();
        if let Some(w) = map.get_mut(key) {
            w.reserved = w.reserved.saturating_sub(reserved);
            w.in_flight = w.in_flight.saturating_sub(1);
            w.used = w.used.saturating_add(used);
        }
    }
}

/// Tokens held for one call in flight. [`Reservation::settle`] charges the real usage;
/// dropping it unsettled (an error, a refusal, a caller that went away) releases the hold.
#[derive(Debug)]
#[must_use = "a reservation is released when dropped; settle it with the real usage"]
pub struct Reservation<'a> {
    policies: &'a Policies,
    /// None when the caller has no budget.
    key: Option<String>,
    tokens: u64,
}

impl Reservation<'_> {
    /// Replaces the hold with `used`, the call's real prompt plus completion tokens.
    pub fn settle(mut self, used: u64) {
        if let Some(key) = self.key.take() {
            self.policies.finish(&key, self.tokens, used);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.policies.finish(&key, self.tokens, 0);
        }
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
        p.reserve(&c, 7).unwrap().settle(7);
        assert!(p.check_budget(&c).is_ok());
        // Alone and inside the budget: admitted although its worst case does not fit.
        p.reserve(&c, 7).unwrap().settle(7);
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
        assert!(matches!(p.reserve(&c, 1), Err(Refusal::Budget { .. })));
    }

    #[test]
    fn concurrent_reservations_stop_at_the_budget() {
        let p = Policies::new(vec![entry("executor", &["*"], Some(1000))]);
        let c = p
            .resolve(&caller("spiffe://td/ns/default/sa/executor"))
            .unwrap();
        // Fifty calls in flight at once, each possibly 100 tokens: ten fit.
        let held: Vec<_> = (0..50).filter_map(|_| p.reserve(&c, 100).ok()).collect();
        assert_eq!(held.len(), 10);
        let e = p.reserve(&c, 100).unwrap_err();
        assert!(
            matches!(
                e,
                Refusal::BudgetReserved {
                    reserved: 1000,
                    in_flight: 10,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("10 calls in flight holding 1000 tokens"),
            "{e}"
        );
        for r in held {
            r.settle(60);
        }
        assert_eq!(
            p.usage(&c.key),
            Some(BudgetUsage {
                used: 600,
                reserved: 0,
                in_flight: 0
            })
        );
    }

    #[test]
    fn a_dropped_reservation_releases_its_hold() {
        let p = Policies::new(vec![entry("executor", &["*"], Some(100))]);
        let c = p
            .resolve(&caller("spiffe://td/ns/default/sa/executor"))
            .unwrap();
        let r = p.reserve(&c, 80).unwrap();
        assert!(p.reserve(&c, 80).is_err(), "80 + 80 do not fit in 100");
        drop(r);
        assert_eq!(
            p.usage(&c.key),
            Some(BudgetUsage {
                used: 0,
                reserved: 0,
                in_flight: 0
            })
        );
        assert!(p.reserve(&c, 80).is_ok());
    }

    #[test]
    fn the_worst_case_counts_every_byte_and_the_completion_cap() {
        let m = |role: &str, content: &str| Message {
            role: role.into(),
            content: content.into(),
        };
        // "user" 4 + "héllo" 6 bytes + 4 framing, + 3 priming, + 100.
        assert_eq!(worst_case_tokens(&[m("user", "héllo")], 100), 117);
        assert_eq!(
            worst_case_tokens(&[m("system", ""), m("user", "")], 0),
            6 + 4 + 4 + 4 + 3
        );
        assert_eq!(worst_case_tokens(&[m("user", "x")], u64::MAX), u64::MAX);
    }

    #[test]
    fn no_budget_means_no_accounting() {
        let p = Policies::new(vec![entry("executor", &["*"], None)]);
        let c = p
            .resolve(&caller("spiffe://td/ns/default/sa/executor"))
            .unwrap();
        for _ in 0..3 {
            p.reserve(&c, u64::MAX).unwrap().settle(u64::MAX);
        }
        assert_eq!(p.usage(&c.key), None);
    }
}
