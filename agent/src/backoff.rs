//! Jittered exponential backoff, shared by the link (reconnecting to the hub) and
//! the applier (waiting for a kind that a CRD just applied to be served).

use std::time::Duration;

/// Jittered exponential backoff: each delay is drawn uniformly from
/// [delay/2, delay], doubling up to the cap, so agents that lost the hub together
/// do not return together.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
        }
    }

    /// The next delay, given a random value in [0, 1).
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let delay = self.current.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0));
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// After a session worked, starts again from the initial delay.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// A random value in [0, 1) for [`Backoff::next_delay`]; 0 when the system has no
/// randomness to give, which only loses the jitter.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests;
