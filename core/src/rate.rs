//! A token bucket: how many requests of one kind a socket may make, refilled at a steady rate.

use std::time::Duration;

use crate::Time;

/// Up to `burst` tokens, refilled at `rate` per second; each request takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Time,
}

impl TokenBucket {
    /// A full bucket at `now`. A `rate` or `burst` of zero is taken as one.
    #[must_use]
    pub fn new(rate: u32, burst: u32, now: Time) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&self, now: Time) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.rate).min(self.burst)
    }

    /// Takes a token at `now` if there is one.
    pub fn try_take(&mut self, now: Time) -> bool {
        self.tokens = self.refill(now);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is available at `now` (zero when one is).
    #[must_use]
    pub fn wait(&self, now: Time) -> Duration {
        let tokens = self.refill(now);
        if tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Time::from_millis(1000);
        let mut bucket = TokenBucket::new(10, 3, start);
        assert!(bucket.try_take(start));
        assert!(bucket.try_take(start));
        assert!(bucket.try_take(start));
        assert!(!bucket.try_take(start), "the burst is spent");
        assert_eq!(bucket.wait(start), Duration::from_millis(100));
        assert!(!bucket.try_take(start + Duration::from_millis(50)));
        assert!(bucket.try_take(start + Duration::from_millis(110)));
    }

    #[test]
    fn refill_stops_at_the_burst_and_time_never_runs_backwards() {
        let start = Time::from_millis(0);
        let mut bucket = TokenBucket::new(1000, 2, start);
        let later = start + Duration::from_secs(60);
        assert!(bucket.try_take(later));
        assert!(bucket.try_take(later));
        assert!(!bucket.try_take(later));
        assert!(!bucket.try_take(start), "an earlier time refills nothing");
    }
}
