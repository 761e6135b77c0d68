//! [`Backoff`]: the delays between reconnect attempts, the same for the client's connections
//! and the hub's link to Redis.
//!
//! backon's exponential builder does the arithmetic (start, doubling, cap, attempt limit).
//! Its own jitter adds up to 100 % on top of the delay, which would break the cap, so the
//! jitter here is "equal jitter" applied to each delay `d`: a uniform draw from `[d/2, d]`.
//! Every delay, the first one too, is therefore randomized and never exceeds the cap.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The reconnect delays: exponential from `initial`, doubling up to `max`, each jittered into
/// `[d/2, d]`, ending after `max_attempts` if set.
#[derive(Debug)]
pub struct Backoff {
    inner: ExponentialBackoff,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Delays starting at `initial`, doubling up to `max`, at most `max_attempts` of them
    /// (`None`: without end).
    pub fn new(initial: Duration, max: Duration, max_attempts: Option<u32>) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(initial)
            .with_max_delay(max.max(initial))
            .with_factor(2.0);
        let builder = match max_attempts {
            Some(n) => builder.with_max_times(n as usize),
            None => builder.without_max_times(),
        };
        Self {
            inner: builder.build(),
            rng: fastrand::Rng::new(),
        }
    }

    #[cfg(test)]
    fn with_seed(mut self, seed: u64) -> Self {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.inner.next()?;
        let half = delay / 2;
        Some(half + half.mul_f64(self.rng.f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_up_to_the_cap_and_stays_within_bounds() {
        let delays: Vec<Duration> = Backoff::new(S, 8 * S, Some(6)).with_seed(7).collect();
        assert_eq!(delays.len(), 6);
        let bases = [1, 2, 4, 8, 8, 8];
        for (delay, base) in delays.iter().zip(bases) {
            let base = base * S;
            assert!(
                *delay >= base / 2 && *delay <= base,
                "{delay:?} outside [{:?}, {base:?}]",
                base / 2
            );
        }
    }

    #[test]
    fn without_a_limit_it_never_ends() {
        assert_eq!(Backoff::new(S, 2 * S, None).take(1000).count(), 1000);
    }

    #[test]
    fn zero_attempts_means_no_retry() {
        assert_eq!(Backoff::new(S, S, Some(0)).next(), None);
    }

    #[test]
    fn the_first_delay_is_jittered_too() {
        let firsts: std::collections::HashSet<Duration> = (0..50)
            .filter_map(|seed| Backoff::new(S, S, None).with_seed(seed).next())
            .collect();
        assert!(
            firsts.len() > 40,
            "only {} distinct first delays",
            firsts.len()
        );
    }
}
