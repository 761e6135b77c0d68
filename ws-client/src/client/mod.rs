//! [`WebSocketClient`]: the handle strategies hold. This file: connecting, state, subscribing
//! and closing; `receiving.rs`: events, messages and the sequencer's side of the queue;
//! `sending.rs`: frames, publications and requests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::lock::Mutex;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use ws_protocol::{Position, invalid_channel_name, is_valid_channel_name};

mod receiving;
mod sending;

pub(crate) use receiving::Inbox;

use crate::acks::Acks;
use crate::buffer::OutboundBuffer;
use crate::builder::ClientBuilder;
use crate::driver::Command;
use crate::epochs::Epochs;
use crate::error::{Error, Result};
use crate::metrics::{Counters, Metrics};
use crate::state::{ConnectionState, StateChanges};

/// Everything a [`WebSocketClient`] is made of, from the builder.
pub(crate) struct ClientParts {
    pub(crate) connections: Vec<mpsc::Sender<Command>>,
    pub(crate) inbox: Inbox,
    pub(crate) buffer: Arc<OutboundBuffer>,
    pub(crate) acks: Arc<Acks>,
    pub(crate) publish_timeout: Duration,
    pub(crate) state: watch::Receiver<ConnectionState>,
    pub(crate) counters: Arc<Counters>,
    /// Each followed channel's epoch, kept by the sequencer.
    pub(crate) epochs: Arc<Epochs>,
    pub(crate) token: CancellationToken,
    /// Stops the deadline sweep of acknowledged publications (see `Acks::expire`).
    pub(crate) sweep: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

struct Shared {
    /// One command queue per connection.
    connections: Vec<mpsc::Sender<Command>>,
    /// Publications and requests waiting for an answer.
    acks: Arc<Acks>,
    publish_timeout: Duration,
    sweep: CancellationToken,
    /// Held by the one `next_event` call that runs the sequencer. futures' async mutex: an
    /// uncontended lock costs an atomic operation each way (tokio's also takes its waiter
    /// list's lock on every release, a cost paid per event).
    inbox: Mutex<Inbox>,
    /// Channels unsubscribed since the sequencer last looked, for it to forget.
    forgotten: std::sync::Mutex<Vec<String>>,
    /// Whether `forgotten` may hold something, so `next_event` takes no lock per event.
    any_forgotten: std::sync::atomic::AtomicBool,
    buffer: Arc<OutboundBuffer>,
    state: watch::Receiver<ConnectionState>,
    counters: Arc<Counters>,
    epochs: Arc<Epochs>,
    tracker: TaskTracker,
    /// Stops the connection task when the last handle is dropped.
    _guard: DropGuard,
}

/// A resilient WebSocket client.
///
/// Cheap to clone: every clone drives the same connection, so one task can send while another
/// receives. The connection task ends with [`close`](Self::close), or when the last clone is
/// dropped.
///
/// ```no_run
/// use ws_client::WebSocketClient;
/// use ws_protocol::WsMessage;
///
/// # async fn demo() -> ws_client::Result<()> {
/// let client = WebSocketClient::connect("ws://127.0.0.1:8080").await?;
/// client.subscribe(["prices:SOL-USDC"]).await?;
/// while let Some(update) = client.receive::<WsMessage>().await? {
///     tracing::info!(?update, "received");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WebSocketClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WebSocketClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketClient")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl WebSocketClient {
    pub(crate) fn new(parts: ClientParts) -> Self {
        let ClientParts {
            connections,
            inbox,
            buffer,
            acks,
            publish_timeout,
            state,
            counters,
            epochs,
            token,
            sweep,
            tracker,
        } = parts;
        Self {
            shared: Arc::new(Shared {
                connections,
                acks,
                publish_timeout,
                sweep,
                inbox: Mutex::new(inbox),
                forgotten: std::sync::Mutex::new(Vec::new()),
                any_forgotten: std::sync::atomic::AtomicBool::new(false),
                buffer,
                state,
                counters,
                epochs,
                tracker,
                _guard: token.drop_guard(),
            }),
        }
    }

    /// Connects to `url` with the default settings (auto-reconnect on).
    ///
    /// # Errors
    /// As [`ClientBuilder::build`].
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        ClientBuilder::default().url(url).build().await
    }

    /// A builder for every setting.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A builder configured from `WS_*` variables, loaded with
    /// [`WebSocketConfig::from_env`](ws_protocol::WebSocketConfig::from_env).
    pub fn from_config(config: &ws_protocol::WebSocketConfig) -> ClientBuilder {
        ClientBuilder::from_config(config)
    }

    /// The state now.
    pub fn state(&self) -> ConnectionState {
        self.shared.state.borrow().clone()
    }

    /// The state now and at every change.
    pub fn state_changes(&self) -> StateChanges {
        StateChanges {
            inner: WatchStream::new(self.shared.state.clone()),
        }
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> Metrics {
        self.shared.counters.snapshot(self.shared.buffer.len())
    }

    fn usable(&self) -> Result<()> {
        if let ConnectionState::Failed { reason } = &*self.shared.state.borrow() {
            return Err(Error::Failed(reason.clone()));
        }
        if self.shared.connections.iter().all(mpsc::Sender::is_closed) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Subscribes to hub channels; resolves once the hub confirms with `Subscribed`. The
    /// subscription is restored after every reconnect.
    ///
    /// # Errors
    /// [`Error::Subscribe`] for an empty or over-long name or a server that is not our hub;
    /// [`Error::Failed`] or [`Error::Closed`] when the client ends first.
    pub async fn subscribe<I, S>(&self, channels: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.subscribe_inner(channels, None).await
    }

    /// Subscribes like [`subscribe`](Self::subscribe), asking the hub first for the last
    /// `rewind` publications it still holds of each channel (they are delivered before live
    /// ones, with no gap and no duplicate at the seam): a strategy gets the current price at
    /// once.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub async fn subscribe_with_rewind<I, S>(&self, channels: I, rewind: u64) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.subscribe_inner(channels, Some(rewind)).await
    }

    /// Subscribes to hub channels from positions the application kept (the channel's
    /// [`epoch`](Self::epoch) and the last `seq` it handled, say from before a restart): the
    /// hub replays every publication after each position that its history still holds, then
    /// live ones, with no gap and no duplicate at the seam. Where the history no longer
    /// reaches back that far (or the epoch changed), an
    /// [`Event::Unrecovered`](crate::Event::Unrecovered) says so and delivery goes on from
    /// the hub's position. A channel already subscribed keeps its own position.
    ///
    /// ```no_run
    /// use ws_protocol::Position;
    /// # async fn demo(client: ws_client::WebSocketClient) -> ws_client::Result<()> {
    /// let kept = Position { epoch: "18ea5c7d2f0-0".to_owned(), seq: 41 };
    /// client.subscribe_since([("prices:SOL-USDC", kept)]).await?; // 42, 43, … follow
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub async fn subscribe_since<I, S>(&self, positions: I) -> Result<()>
    where
        I: IntoIterator<Item = (S, Position)>,
        S: Into<String>,
    {
        let since: BTreeMap<String, Position> = positions
            .into_iter()
            .map(|(channel, position)| (channel.into(), position))
            .collect();
        let channels: Vec<String> = since.keys().cloned().collect();
        self.subscribe_with(channels, None, since).await
    }

    /// The epoch of `channel`'s publications as delivered to the application: with the
    /// `seq` of the last one handled, the position to give
    /// [`subscribe_since`](Self::subscribe_since) later. `None` until the hub confirmed the
    /// subscription, and after an unsubscribe. It changes only with an
    /// [`Event::Unrecovered`](crate::Event::Unrecovered) (the channel's history was lost).
    pub fn epoch(&self, channel: &str) -> Option<String> {
        self.shared.epochs.get(channel)
    }

    async fn subscribe_inner<I, S>(&self, channels: I, rewind: Option<u64>) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let channels: Vec<String> = channels.into_iter().map(Into::into).collect();
        self.subscribe_with(channels, rewind, BTreeMap::new()).await
    }

    async fn subscribe_with(
        &self,
        channels: Vec<String>,
        rewind: Option<u64>,
        since: BTreeMap<String, Position>,
    ) -> Result<()> {
        if let Some(bad) = channels.iter().find(|c| !is_valid_channel_name(c)) {
            return Err(Error::Subscribe(invalid_channel_name(bad)));
        }
        self.usable()?;
        // Every connection subscribes; the first confirmation means publications flow.
        let mut replies = FuturesUnordered::new();
        for connection in &self.shared.connections {
            let (done, reply) = oneshot::channel();
            let command = Command::Subscribe {
                channels: channels.clone(),
                rewind,
                since: since.clone(),
                done,
            };
            if connection.send(command).await.is_ok() {
                replies.push(reply);
            }
        }
        let mut refused = None;
        while let Some(reply) = replies.next().await {
            match reply {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) => {
                    refused.get_or_insert(error);
                }
                Err(_) => {}
            }
        }
        Err(refused.unwrap_or_else(|| self.ended_error()))
    }

    /// Unsubscribes from hub channels; they are no longer restored after a reconnect.
    ///
    /// # Errors
    /// [`Error::Failed`] or [`Error::Closed`] when the client has ended.
    pub async fn unsubscribe<I, S>(&self, channels: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let channels: Vec<String> = channels.into_iter().map(Into::into).collect();
        self.usable()?;
        let mut sent = false;
        for connection in &self.shared.connections {
            let (done, reply) = oneshot::channel();
            let command = Command::Unsubscribe {
                channels: channels.clone(),
                done,
            };
            if connection.send(command).await.is_ok() && matches!(reply.await, Ok(Ok(()))) {
                sent = true;
            }
        }
        if !sent {
            return Err(self.ended_error());
        }
        self.shared
            .forgotten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(channels);
        self.shared
            .any_forgotten
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn ended_error(&self) -> Error {
        match &*self.shared.state.borrow() {
            ConnectionState::Failed { reason } => Error::Failed(reason.clone()),
            _ => Error::Closed,
        }
    }

    /// Sends Close 1000 on every connection, waits for their tasks to end, and ends every task of the
    /// client. Frames still buffered are not sent. Every clone sees the client closed.
    pub async fn close(&self) {
        let mut replies = Vec::new();
        for connection in &self.shared.connections {
            let (done, reply) = oneshot::channel();
            if connection.send(Command::Close { done }).await.is_ok() {
                replies.push(reply);
            }
        }
        for reply in replies {
            let _ = reply.await;
        }
        self.shared.sweep.cancel();
        self.shared.tracker.wait().await;
        self.shared.acks.fail_all(&Error::Closed);
    }
}
