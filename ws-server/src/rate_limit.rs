//! [`RateLimit`]: a token bucket per connection for inbound frames, with flood detection and
//! refusals answered sparingly.
//!
//! Frames beyond the bucket are refused. The first refusal is answered at once; while the
//! refusals go on, at most one answer per second follows (saying how many frames it covers),
//! so that a flood cannot make the hub spend a write on each of its frames. Refusals also
//! fill a second bucket that drains at the allowed rate: a connection that keeps sending
//! more than twice its rate fills it within a burst's worth of refusals and is closed.

use std::time::Duration;

use tokio::time::Instant;

/// How often a connection whose frames keep being refused is told so.
const ANSWER_EVERY: Duration = Duration::from_secs(1);

/// Allows `rate` frames per second on average and `burst` at once.
#[derive(Debug)]
pub(crate) struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    /// Refusals not yet drained at `rate`: a flood fills it faster than it drains.
    debt: f64,
    /// Frames refused since the last answer.
    unanswered: u64,
    /// When a refusal was last answered.
    answered_at: Option<Instant>,
}

/// What the limiter says about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Act on it.
    Allow,
    /// Refuse it. `Some(n)`: answer now, for this frame and the `n - 1` refused silently
    /// before it; `None`: refuse without an answer (one was sent within the last second).
    Refuse(Option<u64>),
    /// A flood: close the connection.
    Abuse,
}

impl RateLimit {
    pub(crate) fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: Instant::now(),
            debt: 0.0,
            unanswered: 0,
            answered_at: None,
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
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.at = now;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.debt = (self.debt - refill).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        self.debt += 1.0;
        if self.debt >= self.burst {
            return Verdict::Abuse;
        }
        self.unanswered += 1;
        let answer = self
            .answered_at
            .is_none_or(|at| now.duration_since(at) >= ANSWER_EVERY);
        if answer {
            self.answered_at = Some(now);
            Verdict::Refuse(Some(std::mem::take(&mut self.unanswered)))
        } else {
            Verdict::Refuse(None)
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(limit.check(Instant::now()), Verdict::Refuse(Some(1)));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(limit.check(Instant::now()), Verdict::Allow);
        assert_eq!(limit.check(Instant::now()), Verdict::Refuse(None));
        assert_eq!(limit.check(Instant::now()), Verdict::Refuse(None));
        assert_eq!(limit.check(Instant::now()), Verdict::Abuse);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_closed_even_when_tokens_refill_between_its_frames() {
        // 1,000/s allowed; a client sending 50 frames per millisecond (50,000/s) gets a
        // token back every millisecond, which used to reset the count of refusals in a row.
        let mut limit = RateLimit::new(1000.0, 2000);
        let mut answers = 0;
        let mut refused = 0u64;
        let mut closed_after = None;
        'flood: for ms in 0..10_000 {
            for _ in 0..50 {
                match limit.check(Instant::now()) {
                    Verdict::Allow => {}
                    Verdict::Refuse(answer) => {
                        refused += 1;
                        answers += usize::from(answer.is_some());
                    }
                    Verdict::Abuse => {
                        closed_after = Some(ms);
                        break 'flood;
                    }
                }
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let closed_after = closed_after.expect("the flood is closed");
        assert!(closed_after < 1000, "closed after {closed_after} ms");
        assert!(refused > 1000);
        assert!(answers <= 2, "{answers} answers for {refused} refusals");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_at_twice_the_rate_is_refused_but_not_closed_and_told_once_a_second() {
        let mut limit = RateLimit::new(100.0, 10);
        let mut answered = Vec::new();
        for _ in 0..2500 {
            // 200 frames a second for 25 s.
            for _ in 0..2 {
                match limit.check(Instant::now()) {
                    Verdict::Refuse(Some(n)) => answered.push(n),
                    Verdict::Abuse => panic!("closed at twice the rate"),
                    _ => {}
                }
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!((20..=27).contains(&answered.len()), "{answered:?}");
        assert!(answered[1..].iter().all(|n| *n > 50), "{answered:?}");
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
