//! Reconnect delays: doubling from a minimum to a cap, each jittered so that nodes that lost
//! the same backend at the same moment do not all come back at the same moment.

use std::time::Duration;

/// A capped exponential backoff with jitter drawn from a seeded generator (deterministic for
/// a given seed, so tests can replay it).
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    state: u64,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration, seed: u64) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            next: min,
            // xorshift needs a non-zero state.
            state: seed | 1,
        }
    }

    /// The next delay: between half and all of the current step, which then doubles up to
    /// the cap.
    pub(super) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let fraction = 0.5 + 0.5 * self.unit();
        step.mul_f64(fraction)
    }

    /// Back to the first step (after a success).
    pub(super) fn reset(&mut self) {
        self.next = self.min;
    }

    /// A uniform number in [0, 1) (xorshift64*).
    fn unit(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let bits = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        // 53 bits fit a f64 exactly.
        #[allow(clippy::cast_precision_loss)]
        let value = bits as f64 / (1_u64 << 53) as f64;
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap_with_jitter_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400), 7);
        let steps = [100, 200, 400, 400, 400];
        for step in steps {
            let delay = backoff.next_delay();
            let step = Duration::from_millis(step);
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} for step {step:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let mut a = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 42);
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 42);
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }
}
