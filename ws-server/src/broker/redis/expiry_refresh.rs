//! [`ExpiryRefresh`]: which publications refresh their channel's keys' expiry. A channel's
//! keys expire after a day without publications or subscribers (`IDLE_EXPIRY`); refreshing
//! them on every publication cost three `PEXPIRE`s, a fifth of the publish script, so a hub
//! asks for it on a channel's first publication in each [`EXPIRY_REFRESH`] period only. The
//! keys then expire between `IDLE_EXPIRY - 2 × EXPIRY_REFRESH` and `IDLE_EXPIRY` after the
//! last publication (the script always sets the expiry of a channel it creates).

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

/// How often a hub refreshes the expiry of a channel it keeps publishing on.
pub(super) const EXPIRY_REFRESH: Duration = Duration::from_secs(60);
/// The most channels remembered as refreshed in one period; past it, publications on
/// channels not remembered refresh every time (correct, only dearer).
const TRACKED: usize = 65_536;

/// See the module documentation. Owned by the publish loop.
#[derive(Debug)]
pub(super) struct ExpiryRefresh {
    /// Channels refreshed in the current period.
    refreshed: HashSet<String>,
    period_started: Instant,
}

impl ExpiryRefresh {
    /// Nothing refreshed yet.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            refreshed: HashSet::new(),
            period_started: now,
        }
    }

    /// Whether a publication on `channel` at `now` refreshes its keys' expiry.
    pub(super) fn due(&mut self, channel: &str, now: Instant) -> bool {
        if now.duration_since(self.period_started) >= EXPIRY_REFRESH {
            self.refreshed.clear();
            self.period_started = now;
        }
        if self.refreshed.contains(channel) {
            return false;
        }
        if self.refreshed.len() < TRACKED {
            self.refreshed.insert(channel.to_owned());
        }
        true
    }

    /// The refresh of `channel` did not reach Redis (its pipeline failed): the next
    /// publication asks again.
    pub(super) fn failed(&mut self, channel: &str) {
        self.refreshed.remove(channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_is_refreshed_once_a_period_and_again_after_a_failure() {
        let start = Instant::now();
        let mut refresh = ExpiryRefresh::new(start);
        assert!(refresh.due("a", start));
        assert!(!refresh.due("a", start + Duration::from_secs(1)));
        assert!(refresh.due("b", start + Duration::from_secs(1)));
        refresh.failed("b");
        assert!(refresh.due("b", start + Duration::from_secs(2)));
        assert!(!refresh.due("b", start + Duration::from_secs(3)));
        // A new period: each channel once more.
        let later = start + EXPIRY_REFRESH;
        assert!(refresh.due("a", later));
        assert!(!refresh.due("a", later));
    }

    #[test]
    fn past_the_bound_channels_are_refreshed_every_time() {
        let now = Instant::now();
        let mut refresh = ExpiryRefresh::new(now);
        for i in 0..TRACKED {
            assert!(refresh.due(&format!("c{i}"), now));
        }
        assert!(refresh.due("one more", now));
        assert!(refresh.due("one more", now));
        assert!(!refresh.due("c0", now));
    }
}
