//! What happens when providers fail (threat-pipeline's "gateway unavailable: retry" and
//! "provider API error: fall back"): each attempt is bounded by the provider's timeout;
//! timeouts, connection errors and 5xx are retried with exponential backoff and full jitter;
//! then the model's next provider is tried. A circuit breaker per provider stops sending to one
//! that keeps failing: after `circuit_failures` consecutive failed attempts it is skipped for
//! `circuit_cooldown`, then one request probes it (half-open) and its outcome closes or
//! reopens the circuit. Every path ends in an answer or an error; nothing waits unbounded.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{self, ProviderConfig};
use crate::provider::{ChatRequest, ChatResponse, Message, Provider, ProviderError};

/// Retry, timeout and circuit settings of one provider, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Extra attempts after the first.
    pub retries: u32,
    /// Backoff base.
    pub retry_backoff: Duration,
    /// Backoff cap.
    pub retry_backoff_max: Duration,
    /// Consecutive failures that open the circuit; 0 disables it.
    pub circuit_failures: u32,
    /// How long an open circuit skips the provider.
    pub circuit_cooldown: Duration,
}

impl Policy {
    /// The settings of `cfg`, defaults where it sets none.
    pub fn from_config(cfg: &ProviderConfig) -> Self {
        Self {
            timeout: cfg.timeout.unwrap_or(config::DEFAULT_TIMEOUT),
            connect_timeout: cfg
                .connect_timeout
                .unwrap_or(config::DEFAULT_CONNECT_TIMEOUT),
            retries: cfg.retries.unwrap_or(config::DEFAULT_RETRIES),
            retry_backoff: cfg.retry_backoff.unwrap_or(config::DEFAULT_RETRY_BACKOFF),
            retry_backoff_max: cfg
                .retry_backoff_max
                .unwrap_or(config::DEFAULT_RETRY_BACKOFF_MAX),
            circuit_failures: cfg
                .circuit_failures
                .unwrap_or(config::DEFAULT_CIRCUIT_FAILURES),
            circuit_cooldown: cfg
                .circuit_cooldown
                .unwrap_or(config::DEFAULT_CIRCUIT_COOLDOWN),
        }
    }

    /// The delay before retry number `retry` (0 for the first), given `unit` in [0, 1):
    /// "full jitter", a uniform pick below the exponential ceiling, so that callers who
    /// failed together do not all come back together.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let ceiling = self
            .retry_backoff
            .saturating_mul(2u32.saturating_pow(retry.min(31)))
            .min(self.retry_backoff_max);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A uniform number in [0, 1) from the system's CSPRNG (ring's, already a dependency).
fn unit_random() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

// === impl Breaker ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        failures: u32,
    },
    /// One probe is in flight.
    HalfOpen {
        failures: u32,
    },
}

/// A circuit breaker for one provider. Time is passed in, so tests drive it without waiting.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// Why the breaker refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip {
    /// The consecutive failures that opened the circuit.
    pub failures: u32,
    /// Until the next probe; zero while a probe is in flight.
    pub retry_in: Duration,
}

/// Permission for one attempt. Settle it with the outcome; a probe dropped unsettled (its
/// caller went away) lets the next request probe instead, so the circuit never sticks
/// half-open.
#[derive(Debug)]
#[must_use = "settle the permit with the attempt's outcome"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures (0: never) for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an attempt may go out at `now`.
    ///
    /// # Errors
    /// [`Skip`] while the circuit is open, or half-open with its probe in flight.
    pub fn admit(&self, now: Instant) -> Result<Permit<'_>, Skip> {
        let permit = |probe| Permit {
            breaker: self,
            probe,
            settled: false,
        };
        if self.threshold == 0 {
            return Ok(permit(false));
        }
        let mut state = self.state();
        match *state {
            State::Closed { .. } => Ok(permit(false)),
            State::Open { until, failures } if now >= until => {
                *state = State::HalfOpen { failures };
                Ok(permit(true))
            }
            State::Open { until, failures } => Err(Skip {
                failures,
                retry_in: round_up(until - now),
            }),
            State::HalfOpen { failures } => Err(Skip {
                failures,
                retry_in: Duration::ZERO,
            }),
        }
    }

    /// Whether the circuit is open or half-open.
    #[cfg(test)]
    fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }
}

impl Permit<'_> {
    /// Records the attempt's outcome: `healthy` when the provider answered (even with a
    /// 4xx), not when it timed out, failed to connect, sent a 5xx or garbage.
    pub fn settle(mut self, healthy: bool, now: Instant) {
        self.settled = true;
        let b = self.breaker;
        if b.threshold == 0 {
            return;
        }
        let mut state = b.state();
        *state = match (*state, self.probe, healthy) {
            (State::HalfOpen { .. }, true, true) => State::Closed { failures: 0 },
            (State::HalfOpen { failures }, true, false) => State::Open {
                until: now + b.cooldown,
                failures: failures.saturating_add(1),
            },
            (State::Closed { .. }, false, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false, false) => {
                let failures = failures.saturating_add(1);
                if failures >= b.threshold {
                    tracing::warn!(failures, cooldown = %humantime::format_duration(b.cooldown), "provider circuit opened");
                    State::Open {
                        until: now + b.cooldown,
                        failures,
                    }
                } else {
                    State::Closed { failures }
                }
            }
            // An attempt admitted before the circuit opened: the state already says enough.
            (other, _, _) => other,
        };
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut state = self.breaker.state();
            if let State::HalfOpen { failures } = *state {
                *state = State::Open {
                    until: Instant::now(),
                    failures,
                };
            }
        }
    }
}

/// Whole seconds (or milliseconds under a second), rounded up, for messages.
fn round_up(d: Duration) -> Duration {
    if d >= Duration::from_secs(1) {
        Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
    } else {
        Duration::from_millis(
            d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000)),
        )
    }
}

// === impl Upstream ===

/// A provider with its retry policy and circuit breaker.
#[derive(Debug)]
pub struct Upstream {
    /// The provider.
    pub provider: Provider,
    /// Its settings.
    pub policy: Policy,
    breaker: Breaker,
}

impl Upstream {
    /// Wraps `provider` with `policy`.
    pub fn new(provider: Provider, policy: Policy) -> Self {
        Self {
            breaker: Breaker::new(policy.circuit_failures, policy.circuit_cooldown),
            provider,
            policy,
        }
    }

    /// Asks this provider, retrying what is worth retrying. `attempts` counts what was sent.
    async fn call(
        &self,
        req: &ChatRequest,
        attempts: &mut u32,
    ) -> Result<ChatResponse, ProviderError> {
        let name = &self.provider.name;
        let mut last = None;
        for retry in 0..=self.policy.retries {
            let permit = match self.breaker.admit(Instant::now()) {
                Ok(p) => p,
                // Report what actually went wrong in this call if anything did; the open
                // circuit is only why it stopped.
                Err(skip) => {
                    return Err(last.unwrap_or(ProviderError::CircuitOpen {
                        provider: name.clone(),
                        failures: skip.failures,
                        retry_in: skip.retry_in,
                    }));
                }
            };
            *attempts += 1;
            let result = self.provider.chat(req).await;
            match result {
                Ok(answer) => {
                    permit.settle(true, Instant::now());
                    return Ok(answer);
                }
                Err(e) => {
                    permit.settle(!e.counts_against_circuit(), Instant::now());
                    if !e.is_retryable() || retry == self.policy.retries {
                        return Err(e);
                    }
                    let delay = self.policy.backoff(retry, unit_random());
                    tracing::warn!(provider = %name, attempt = retry + 1, error = %e, delay = %humantime::format_duration(delay), "provider attempt failed; retrying");
                    tokio::time::sleep(delay).await;
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ProviderError::CircuitOpen {
            provider: name.clone(),
            failures: 0,
            retry_in: Duration::ZERO,
        }))
    }
}

/// A provider that failed, and how many attempts it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The last error.
    pub error: ProviderError,
    /// Attempts sent to it (0 when its circuit was open).
    pub attempts: u32,
}

/// An answer and how it was obtained.
#[derive(Debug, Clone)]
pub struct Served {
    /// The answer.
    pub response: ChatResponse,
    /// The provider that answered.
    pub provider: String,
    /// Attempts sent, over all providers.
    pub attempts: u32,
    /// Providers tried before, which failed.
    pub failed: Vec<String>,
}

/// No provider of a model answered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct FailoverError {
    /// The model as the caller named it.
    pub model: String,
    /// Each provider's failure, in order.
    pub failures: Vec<Failure>,
}

impl FailoverError {
    /// Whether no provider was even tried: every one is circuit-open (a 503), as opposed to
    /// providers that were tried and failed (a 502).
    pub fn unavailable(&self) -> bool {
        !self.failures.is_empty()
            && self.failures.iter().all(|f| {
                matches!(
                    f.error,
                    ProviderError::CircuitOpen { .. } | ProviderError::KeyUnavailable { .. }
                )
            })
    }

    /// Attempts sent, over all providers.
    pub fn attempts(&self) -> u32 {
        self.failures.iter().map(|f| f.attempts).sum()
    }

    /// The names of the providers that failed.
    pub fn providers(&self) -> Vec<String> {
        self.failures
            .iter()
            .map(|f| provider_of(&f.error).to_owned())
            .collect()
    }

    fn describe(&self) -> String {
        if self.failures.is_empty() {
            return format!("no provider is configured for model {:?}", self.model);
        }
        let what = if self.unavailable() {
            "no provider is available"
        } else {
            "no provider answered"
        };
        let each: Vec<String> = self
            .failures
            .iter()
            .map(|f| match f.attempts {
                0 | 1 => f.error.to_string(),
                n => format!("{} (after {n} attempts)", f.error),
            })
            .collect();
        format!("{what} for model {:?}: {}", self.model, each.join("; "))
    }
}

fn provider_of(e: &ProviderError) -> &str {
    match e {
        ProviderError::Timeout { provider, .. }
        | ProviderError::Connection { provider, .. }
        | ProviderError::Status { provider, .. }
        | ProviderError::Malformed { provider, .. }
        | ProviderError::Refused { provider, .. }
        | ProviderError::KeyUnavailable { provider, .. }
        | ProviderError::CircuitOpen { provider, .. } => provider,
    }
}

/// Asks `upstreams` in order for a completion of `messages` for `model` (the caller's name;
/// a provider's `model` setting overrides it), until one answers.
///
/// # Errors
/// [`FailoverError`] with every provider's failure.
pub async fn failover(
    upstreams: &[&Upstream],
    model: &str,
    messages: &[Message],
) -> Result<Served, FailoverError> {
    let mut failures: Vec<Failure> = Vec::new();
    let mut total = 0;
    for up in upstreams {
        let req = ChatRequest {
            model: up
                .provider
                .model_override
                .clone()
                .unwrap_or_else(|| model.to_owned()),
            messages: messages.to_vec(),
        };
        let mut attempts = 0;
        match up.call(&req, &mut attempts).await {
            Ok(response) => {
                return Ok(Served {
                    response,
                    provider: up.provider.name.clone(),
                    attempts: total + attempts,
                    failed: failures
                        .iter()
                        .map(|f| provider_of(&f.error).to_owned())
                        .collect(),
                });
            }
            Err(error) => {
                tracing::warn!(provider = %up.provider.name, %error, "provider failed; trying the next");
                total += attempts;
                failures.push(Failure { error, attempts });
            }
        }
    }
    Err(FailoverError {
        model: model.to_owned(),
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            retries: 2,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_millis(350),
            circuit_failures: 3,
            circuit_cooldown: Duration::from_secs(30),
        }
    }

    #[test]
    fn backoff_grows_exponentially_under_its_cap_with_full_jitter() {
        let p = policy();
        let ceilings: Vec<u128> = (0..4)
            .map(|r| p.backoff(r, 0.999_999).as_millis())
            .collect();
        assert_eq!(ceilings, [99, 199, 349, 349]);
        for r in 0..40 {
            assert_eq!(p.backoff(r, 0.0), Duration::ZERO, "full jitter starts at 0");
        }
        let d = unit_random();
        assert!((0.0..1.0).contains(&d));
    }

    #[test]
    fn circuit_opens_after_n_failures_then_half_opens_for_one_probe() {
        let b = Breaker::new(3, Duration::from_secs(30));
        let t0 = Instant::now();
        for _ in 0..2 {
            b.admit(t0).unwrap().settle(false, t0);
        }
        // A success in between resets the count.
        b.admit(t0).unwrap().settle(true, t0);
        for _ in 0..3 {
            b.admit(t0).unwrap().settle(false, t0);
        }
        let skip = b.admit(t0 + Duration::from_millis(1500)).unwrap_err();
        assert_eq!(skip.failures, 3);
        assert_eq!(skip.retry_in, Duration::from_secs(29), "rounded up");

        // After the cooldown exactly one probe goes through.
        let later = t0 + Duration::from_secs(30);
        let probe = b.admit(later).unwrap();
        assert_eq!(b.admit(later).unwrap_err().retry_in, Duration::ZERO);
        probe.settle(false, later);
        assert!(
            b.admit(later + Duration::from_secs(29)).is_err(),
            "reopened"
        );

        let again = later + Duration::from_secs(30);
        b.admit(again).unwrap().settle(true, again);
        assert!(!b.is_open());
        b.admit(again).unwrap().settle(true, again);
    }

    #[test]
    fn a_probe_whose_caller_went_away_lets_the_next_request_probe() {
        let b = Breaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        b.admit(t0).unwrap().settle(false, t0);
        let later = t0 + Duration::from_secs(5);
        drop(b.admit(later).unwrap());
        assert!(b.admit(Instant::now() + Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn zero_threshold_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(5));
        let t0 = Instant::now();
        for _ in 0..100 {
            b.admit(t0).unwrap().settle(false, t0);
        }
        assert!(!b.is_open());
    }

    #[test]
    fn unavailable_only_when_every_provider_was_skipped() {
        let open = |p: &str| Failure {
            error: ProviderError::CircuitOpen {
                provider: p.into(),
                failures: 5,
                retry_in: Duration::from_secs(3),
            },
            attempts: 0,
        };
        let failed = Failure {
            error: ProviderError::Status {
                provider: "b".into(),
                status: 500,
                message: "boom".into(),
            },
            attempts: 3,
        };
        let e = FailoverError {
            model: "m".into(),
            failures: vec![open("a"), open("b")],
        };
        assert!(e.unavailable());
        assert!(
            e.to_string()
                .starts_with("no provider is available for model \"m\""),
            "{e}"
        );
        let e = FailoverError {
            model: "m".into(),
            failures: vec![open("a"), failed],
        };
        assert!(!e.unavailable());
        assert_eq!(e.attempts(), 3);
        assert_eq!(e.providers(), ["a", "b"]);
        assert!(
            e.to_string()
                .contains("answered HTTP 500: boom (after 3 attempts)"),
            "{e}"
        );
    }
}
