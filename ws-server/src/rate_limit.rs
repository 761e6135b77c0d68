//! [`RateLimit`]: a token bucket per connection for inbound frames.

use tokio::time::Instant;

/// Allows `rate` frames per second on average and `burst` at once.
#[derive(Debug)]
pub(crate) struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    /// Frames refused in a row; reset by an allowed one.
    refused_in_a_row: u32,
}

/// What the limiter says about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Act on it.
    Allow,
    /// Refuse it (answer `rate_limited`).
    Refuse,
    /// Refused a whole burst in a row: close the connection.
    Abuse,
}

impl RateLimit {
    pub(crate) fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: Instant::now(),
            refused_in_a_row: 0,
        }
    }

    /// A limit on `rate` frames per second with `burst` at once; a `rate` of 0 allows
    /// everything, and a `burst` of 0 means twice the rate.
    pub(crate) fn new_or_unlimited(rate: f64, burst: u32) -> Self {
        let burst = match burst {
            0 => (rate * 2.0).clamp(1.0, f64::from(u32::MAX)) as u32,
            burst => burst,
        };
        Self::new(rate, burst)
    }

    /// Counts one frame that arrived at `now`.
    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        if self.rate <= 0.0 {
            return Verdict::Allow;
        }
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            return Verdict::Allow;
        }
        self.refused_in_a_row += 1;
        if f64::from(self.refused_in_a_row) >= self.burst {
            Verdict::Abuse
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_refuses_then_recovers_and_flags_abuse() {
        let mut limit = RateLimit::new(10.0, 3);
        assert_eq!(
            [
                limit.check(Instant::now()),
                limit.check(Instant::now()),
                limit.check(Instant::now())
            ],
            [Verdict::Allow; 3]
        );
        assert_eq!(limit.check(Instant::now()), Verdict::Refuse);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(limit.check(Instant::now()), Verdict::Allow);
        assert_eq!(limit.check(Instant::now()), Verdict::Refuse);
        assert_eq!(limit.check(Instant::now()), Verdict::Refuse);
        assert_eq!(limit.check(Instant::now()), Verdict::Abuse);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_of_zero_allows_everything_and_burst_zero_is_twice_the_rate() {
        let mut unlimited = RateLimit::new_or_unlimited(0.0, 0);
        for _ in 0..100_000 {
            assert_eq!(unlimited.check(Instant::now()), Verdict::Allow);
        }
        let mut limited = RateLimit::new_or_unlimited(5.0, 0);
        let allowed = (0..20)
            .filter(|_| limited.check(Instant::now()) == Verdict::Allow)
            .count();
        assert_eq!(allowed, 10);
    }
}
