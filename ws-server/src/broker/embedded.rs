//! [`EmbeddedBroker`]: the hub alone, in process: a publication is sequenced and fanned out
//! under its channel's lock, at once.

use std::future::ready;

use futures_util::future::Either;
use tokio::time::Instant;

use super::{Broker, BrokerError, BrokerFuture, BrokerStatus, Submission};
use crate::channel::Channels;
use crate::metrics::HubMetrics;

/// One publication in this many has its fan-out timed for the metrics: reading the clock
/// twice on every publication would cost a publisher at a million frames a second.
const FANOUT_SAMPLE: u64 = 16;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct EmbeddedBroker;

impl Broker for EmbeddedBroker {
    fn submit<'a>(
        &'a self,
        channels: &'a Channels,
        metrics: &'a HubMetrics,
        channel: &'a str,
        data: &'a str,
        key: Option<&'a str>,
        now: Instant,
    ) -> BrokerFuture<'a, Submission> {
        let n = metrics
            .publications
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let published = if n & (FANOUT_SAMPLE - 1) != 0 {
            channels.publish_keyed(channel, data, key, now)
        } else {
            let started = std::time::Instant::now();
            let published = channels.publish_keyed(channel, data, key, now);
            if let Ok(published) = &published
                && published.recipients.is_some_and(|r| r > 0)
            {
                metrics.observe_fanout(started.elapsed());
            }
            published
        };
        let outcome = published
            .map(Submission::Done)
            .map_err(|refused| BrokerError::Unavailable(refused.to_string()));
        Either::Left(ready(outcome))
    }

    fn attach<'a>(&'a self, _channels: &'a Channels, _channel: &'a str) -> BrokerFuture<'a, ()> {
        Either::Left(ready(Ok(())))
    }

    fn sweep(&self, _channels: &Channels) {}

    fn status(&self) -> BrokerStatus {
        BrokerStatus {
            kind: "embedded",
            up: true,
            outages: 0,
            following: None,
        }
    }
}
