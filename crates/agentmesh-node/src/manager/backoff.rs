//! How long the manager's loops wait before retrying the server.

use std::time::Duration;

use super::random_fraction;

/// The longest wait between retries while the server is unreachable.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Exponential backoff with jitter, capped at [`MAX_BACKOFF`].
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub(crate) fn next(&mut self) -> Duration {
        let base = Duration::from_millis(200) * 2u32.saturating_pow(self.attempt.min(10));
        self.attempt += 1;
        let capped = base.min(MAX_BACKOFF);
        capped.mul_f64(0.5 + random_fraction() * 0.5)
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}
