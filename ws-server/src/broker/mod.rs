//! [`Broker`]: where publications get their `seq` and how they reach every hub that has
//! subscribers for them. The fan-out to this hub's connections ([`Channels`]) is the same
//! whichever broker is used; only the broker differs:
//!
//! - [`EmbeddedBroker`] (the default): the hub is the only one; a publication takes its
//!   channel's lock, gets the next `seq` and is fanned out at once.
//! - [`RedisBroker`] (`WS_REDIS_URL`): hubs share channels through Redis; a publication gets
//!   its `seq` from Redis (once for the whole cluster) and is kept in a capped stream per
//!   channel, from which every hub with local subscribers reads it and fans it out.

mod embedded;
mod following;
mod redis;

use std::future::Ready;

use futures_util::future::{BoxFuture, Either};
use tokio::sync::oneshot;
use tokio::time::Instant;

pub(crate) use self::embedded::EmbeddedBroker;
pub(crate) use self::following::Following;
pub(crate) use self::redis::RedisBroker;
use crate::channel::{Channels, Published};
use crate::metrics::HubMetrics;

/// What a broker call resolves to: at once for the embedded broker (no allocation), after
/// a round trip for Redis.
pub(crate) type BrokerFuture<'a, T> =
    Either<Ready<Result<T, BrokerError>>, BoxFuture<'a, Result<T, BrokerError>>>;

/// Why a broker call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The shared broker cannot be reached; nothing was done.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
}

/// The broker's health, for `/health` and `/metrics`.
#[derive(Debug, Clone)]
pub(crate) struct BrokerStatus {
    /// `embedded` or `redis`.
    pub(crate) kind: &'static str,
    /// Whether it can be used now.
    pub(crate) up: bool,
    /// How many times it was lost.
    pub(crate) outages: u64,
    /// How this hub follows the shared channels (Redis).
    pub(crate) following: Option<Following>,
}

/// A publication handed to the broker.
pub(crate) enum Submission {
    /// Published already (embedded broker).
    Done(Published),
    /// Queued, in the order submitted; the result follows.
    Queued(oneshot::Receiver<Result<Published, BrokerError>>),
}

/// See the module documentation.
pub(crate) trait Broker: Send + Sync {
    /// Hands `data` (one valid, portable JSON value) on `channel` to the broker, at `now`
    /// (the time of the frame that brought it). A connection's publications are published in
    /// the order it submits them; it need not wait for one to be done before submitting the
    /// next (so a publisher's frames travel to Redis pipelined). With `key`, a key already
    /// published on the channel within the idempotency window is not published again (the
    /// result is a duplicate carrying the first `seq`), checked atomically with the publish.
    fn submit<'a>(
        &'a self,
        channels: &'a Channels,
        metrics: &'a HubMetrics,
        channel: &'a str,
        data: &'a str,
        key: Option<&'a str>,
        now: Instant,
    ) -> BrokerFuture<'a, Submission>;

    /// Makes sure `channel`'s publications reach this hub, with its recent history, before a
    /// connection here subscribes to it.
    fn attach<'a>(&'a self, channels: &'a Channels, channel: &'a str) -> BrokerFuture<'a, ()>;

    /// Stops receiving channels nobody on this hub subscribes to any more (after the
    /// registry's own sweep, once a second).
    fn sweep(&self, channels: &Channels);

    /// How the broker is doing.
    fn status(&self) -> BrokerStatus;
}
