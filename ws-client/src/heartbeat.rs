//! [`Heartbeat`]: when to ping, when the connection is dead, and when the feed is stale.
//!
//! Pure logic over `Instant`s, driven by the connection task:
//! - a protocol ping goes out every `interval`;
//! - once a ping is out, if no frame at all (pong or anything else) arrives within `timeout`,
//!   the connection is dead (half-open TCP, frozen proxy);
//! - separately, if a staleness timeout is set and data is expected, no data for that long
//!   means the feed stalled.

use std::time::Duration;

use tokio::time::Instant;

/// What the connection task must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Beat {
    /// Send a protocol ping carrying this nonce.
    Ping(u64),
    /// Nothing arrived within the pong timeout after a ping.
    Dead,
    /// No data arrived within the staleness timeout.
    Stale,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    stale_after: Option<Duration>,
    next_ping: Instant,
    /// When the unanswered ping went out, and its nonce.
    awaiting: Option<(Instant, u64)>,
    last_data: Instant,
    nonce: u64,
}

impl Heartbeat {
    pub(crate) fn new(
        interval: Duration,
        timeout: Duration,
        stale_after: Option<Duration>,
        now: Instant,
    ) -> Self {
        Self {
            interval,
            timeout,
            stale_after,
            next_ping: now + interval,
            awaiting: None,
            last_data: now,
            nonce: 0,
        }
    }

    /// A heartbeat that never fires, for phases where the caller checks liveness otherwise.
    pub(crate) fn disabled() -> Self {
        let far = Duration::from_secs(86_400 * 365);
        Self::new(far, far, None, Instant::now())
    }

    /// The next instant at which [`poll`](Self::poll) has something to say. While not
    /// `reading` (the application is not keeping up), only pings are due.
    pub(crate) fn deadline(&self, expecting_data: bool, reading: bool) -> Instant {
        let mut deadline = self.next_ping;
        if !reading {
            return deadline;
        }
        if let Some((sent, _)) = self.awaiting {
            deadline = deadline.min(sent + self.timeout);
        }
        if let (true, Some(stale)) = (expecting_data, self.stale_after) {
            deadline = deadline.min(self.last_data + stale);
        }
        deadline
    }

    /// Any frame arrived: the connection is alive.
    pub(crate) fn on_frame(&mut self) {
        self.awaiting = None;
    }

    /// Data (a publication, or any frame from a non-hub server) arrived.
    pub(crate) fn on_data(&mut self, now: Instant) {
        self.awaiting = None;
        self.last_data = now;
    }

    /// A pong arrived; returns the round trip if it answers the last ping.
    pub(crate) fn on_pong(&mut self, payload: &[u8], now: Instant) -> Option<Duration> {
        let rtt = match self.awaiting {
            Some((sent, nonce)) if payload == nonce.to_be_bytes() => Some(now - sent),
            _ => None,
        };
        self.awaiting = None;
        rtt
    }

    /// Reading was paused (the application was not reading); start the clocks afresh so the
    /// pause is not taken for a dead connection.
    pub(crate) fn resume(&mut self, now: Instant) {
        if let Some((_, nonce)) = self.awaiting {
            self.awaiting = Some((now, nonce));
        }
        self.last_data = self.last_data.max(now);
    }

    /// What is due at `now`, if anything.
    pub(crate) fn poll(
        &mut self,
        now: Instant,
        expecting_data: bool,
        reading: bool,
    ) -> Option<Beat> {
        if let (true, Some((sent, _))) = (reading, self.awaiting)
            && now >= sent + self.timeout
        {
            return Some(Beat::Dead);
        }
        if let (true, true, Some(stale)) = (reading, expecting_data, self.stale_after)
            && now >= self.last_data + stale
        {
            return Some(Beat::Stale);
        }
        if now >= self.next_ping {
            self.next_ping = now + self.interval;
            self.nonce += 1;
            if self.awaiting.is_none() {
                self.awaiting = Some((now, self.nonce));
            } else if let Some((sent, _)) = self.awaiting {
                // Keep the first unanswered ping's time: the timeout counts from it.
                self.awaiting = Some((sent, self.nonce));
            }
            return Some(Beat::Ping(self.nonce));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn pings_every_interval_while_frames_arrive() {
        let mut hb = Heartbeat::new(10 * S, 3 * S, None, Instant::now());
        assert_eq!(hb.poll(Instant::now(), false, true), None);
        tokio::time::advance(10 * S).await;
        assert_eq!(hb.poll(Instant::now(), false, true), Some(Beat::Ping(1)));
        tokio::time::advance(S).await;
        let rtt = hb.on_pong(&1u64.to_be_bytes(), Instant::now());
        assert_eq!(rtt, Some(S));
        tokio::time::advance(9 * S).await;
        assert_eq!(hb.poll(Instant::now(), false, true), Some(Beat::Ping(2)));
        tokio::time::advance(2 * S).await;
        hb.on_frame();
        tokio::time::advance(5 * S).await;
        assert_eq!(hb.poll(Instant::now(), false, true), None);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_a_ping_is_death() {
        let mut hb = Heartbeat::new(10 * S, 3 * S, None, Instant::now());
        tokio::time::advance(10 * S).await;
        assert_eq!(hb.poll(Instant::now(), false, true), Some(Beat::Ping(1)));
        assert_eq!(hb.deadline(false, true), Instant::now() + 3 * S);
        tokio::time::advance(3 * S).await;
        assert_eq!(hb.poll(Instant::now(), false, true), Some(Beat::Dead));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_is_not_death() {
        let mut hb = Heartbeat::new(10 * S, 3 * S, None, Instant::now());
        tokio::time::advance(10 * S).await;
        assert_eq!(hb.poll(Instant::now(), false, true), Some(Beat::Ping(1)));
        tokio::time::advance(60 * S).await;
        // Not reading: only the next ping is due, never death.
        assert_ne!(hb.poll(Instant::now(), false, false), Some(Beat::Dead));
        hb.resume(Instant::now());
        assert_ne!(hb.poll(Instant::now(), false, true), Some(Beat::Dead));
    }

    #[tokio::test(start_paused = true)]
    async fn no_data_while_expecting_it_is_a_stale_feed() {
        let mut hb = Heartbeat::new(100 * S, 3 * S, Some(5 * S), Instant::now());
        tokio::time::advance(4 * S).await;
        hb.on_data(Instant::now());
        tokio::time::advance(4 * S).await;
        assert_eq!(hb.poll(Instant::now(), true, true), None);
        tokio::time::advance(S).await;
        assert_eq!(hb.poll(Instant::now(), true, true), Some(Beat::Stale));
        // Not expecting data (nothing subscribed): never stale.
        assert_eq!(hb.poll(Instant::now(), false, true), None);
    }
}
