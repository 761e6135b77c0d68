//! [`WebSocketClient`]: the handle strategies hold. This file: connecting, state, subscribing,
//! receiving and closing; `sending.rs`: frames, publications and requests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::lock::{Mutex, MutexGuard};
use futures_util::stream::FuturesUnordered;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use ws_protocol::{Position, invalid_channel_name, is_valid_channel_name};

mod sending;

use crate::acks::Acks;
use crate::arrival_queue::ArrivalReceiver;
use crate::buffer::OutboundBuffer;
use crate::builder::ClientBuilder;
use crate::driver::Command;
use crate::driver::arrival::{Arrival, Batch};
use crate::epochs::Epochs;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::metrics::{Counters, Metrics};
use crate::sequencer::Sequencer;
use crate::stamped::Stamped;
use crate::state::{ConnectionState, StateChanges};

/// Batches of arrivals taken into the sequencer at once when the application waits for an
/// event.
const BATCHES_AT_ONCE: usize = 4;

/// The application's side of the arrival queue: the sequencer runs here, in `next_event`.
pub(crate) struct Inbox {
    pub(crate) arrivals: ArrivalReceiver,
    /// Batches taken from the queue at once (at most [`BATCHES_AT_ONCE`]), kept for its
    /// allocation.
    pub(crate) batch: Vec<Batch>,
    /// Arrivals taken from the queue, not yet through the sequencer: it takes them one at a
    /// time, as the application asks for events (bounded by the batches taken at once).
    pub(crate) taken: VecDeque<std::vec::IntoIter<Arrival>>,
    /// When they were taken (the sequencer's "now" for them).
    pub(crate) taken_at: Instant,
    pub(crate) sequencer: Sequencer,
    /// Every connection has ended and what was held has been let go.
    pub(crate) finished: bool,
}

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
    /// reaches back that far (or the epoch changed), an [`Event::Unrecovered`] says so and
    /// delivery goes on from the hub's position. A channel already subscribed keeps its own
    /// position.
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
    /// [`Event::Unrecovered`] (the channel's history was lost).
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

    /// The next event: publications, other messages, connection changes, lag and expiry
    /// reports. `None` once the client has ended and every event was taken.
    pub async fn next_event(&self) -> Option<Event> {
        self.next_stamped().await.map(|stamped| stamped.event)
    }

    /// The next event as [`next_event`](Self::next_event) gives it, with the connection
    /// that delivered it and the instant its frame was read from the socket (for
    /// publications and messages): for measuring latency, or which connection of a race
    /// wins.
    pub async fn next_stamped(&self) -> Option<Stamped> {
        let mut inbox = self.inbox().await;
        loop {
            if let Some(event) = self.ready(&mut inbox) {
                return Some(event);
            }
            if inbox.finished {
                return None;
            }
            self.wait(&mut inbox).await;
        }
    }

    /// Waits for the next event, then appends it and every further event ready now, up to
    /// `limit` in all, to `into`, as [`next_stamped`](Self::next_stamped) gives them and in
    /// the same order: one call per burst of a busy feed rather than one per event (as
    /// `tokio::sync::mpsc::Receiver::recv_many`). Returns how many it appended; 0 once the
    /// client has ended and every event was taken, or when `limit` is 0. Like
    /// `next_stamped`, safe to cancel (in a `select!`): events leave the client only in the
    /// call that returns them.
    ///
    /// ```no_run
    /// # async fn run(client: ws_client::WebSocketClient) {
    /// let mut events = Vec::with_capacity(64);
    /// while client.next_stamped_many(&mut events, 64).await > 0 {
    ///     for stamped in events.drain(..) {
    ///         let waited = stamped.received_at.map(|at| at.elapsed());
    ///         println!("{:?} after {waited:?} in the client", stamped.event);
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn next_stamped_many(&self, into: &mut Vec<Stamped>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        let mut inbox = self.inbox().await;
        let mut count = 0;
        loop {
            while count < limit {
                let Inbox {
                    taken, sequencer, ..
                } = &mut *inbox;
                if let Some(arrivals) = taken.front_mut() {
                    count += sequencer.accept_messages(arrivals, into, limit - count);
                    if count == limit {
                        break;
                    }
                }
                match self.ready(&mut inbox) {
                    Some(event) => {
                        into.push(event);
                        count += 1;
                    }
                    None => break,
                }
            }
            if count > 0 || inbox.finished {
                return count;
            }
            self.wait(&mut inbox).await;
        }
    }

    /// The sequencer's side of the queue, held by one call at a time.
    async fn inbox(&self) -> MutexGuard<'_, Inbox> {
        // Without a wait when no other call holds it, as is usual.
        match self.shared.inbox.try_lock() {
            Some(inbox) => inbox,
            None => self.shared.inbox.lock().await,
        }
    }

    /// The next event ready without a wait, if any: one the sequencer holds, or the next
    /// arrival taken from the queue through it.
    #[inline]
    fn ready(&self, inbox: &mut Inbox) -> Option<Stamped> {
        let Inbox {
            taken,
            taken_at,
            sequencer,
            ..
        } = inbox;
        loop {
            let shared = &self.shared;
            // A load first: a swap is a locked instruction, paid per event otherwise.
            if shared
                .any_forgotten
                .load(std::sync::atomic::Ordering::Relaxed)
                && shared
                    .any_forgotten
                    .swap(false, std::sync::atomic::Ordering::Acquire)
            {
                let forgotten = std::mem::take(
                    &mut *shared.forgotten.lock().unwrap_or_else(|p| p.into_inner()),
                );
                for channel in forgotten {
                    sequencer.forget(&channel);
                }
            }
            for fill in sequencer.take_fills() {
                self.ask_fill(fill);
            }
            if let Some(event) = sequencer.pop() {
                return Some(event);
            }
            let arrival = loop {
                let arrivals = taken.front_mut()?;
                match arrivals.next() {
                    Some(arrival) => break arrival,
                    None => {
                        taken.pop_front();
                    }
                }
            };
            if let Some(event) = sequencer.accept_next(arrival, *taken_at) {
                return Some(event);
            }
            // It may have asked for a fill, or forgotten channels may have come in: look
            // again before the next.
        }
    }

    /// Waits for arrivals (a few bursts at once: one wait per burst or less) or the
    /// sequencer's next deadline, whichever comes first.
    async fn wait(&self, inbox: &mut Inbox) {
        let Inbox {
            arrivals,
            batch,
            taken,
            taken_at,
            sequencer,
            finished,
        } = inbox;
        let deadline = sequencer.deadline();
        tokio::select! {
            count = arrivals.take(batch, BATCHES_AT_ONCE) => if count == 0 {
                sequencer.finish();
                *finished = true;
            } else {
                *taken_at = Instant::now();
                taken.extend(batch.drain(..).map(Vec::into_iter));
            },
            () = sleep_until_some(deadline) => sequencer.expire(Instant::now()),
        }
    }

    /// Asks the connection that saw a gap, or failing that any other, to have it filled.
    fn ask_fill(&self, fill: crate::sequencer::FillRequest) {
        let connections = &self.shared.connections;
        let order = (0..connections.len()).map(|i| (fill.connection + i) % connections.len());
        for connection in order {
            let command = Command::Fill {
                channel: fill.channel.clone(),
                since: fill.since.clone(),
            };
            if connections[connection].try_send(command).is_ok() {
                return;
            }
        }
        tracing::debug!(channel = %fill.channel, "no connection could take a gap fill now");
    }

    /// The next message decoded as `T`: the `data` of a publication, or a whole text frame
    /// from a plain server (or broadcast by the hub). Other events are skipped; use
    /// [`next_event`](Self::next_event) to see them.
    ///
    /// # Errors
    /// [`Error::Decode`] if a message does not decode as `T` (it is given back; the next call
    /// goes on with the next message); [`Error::Failed`] once the client has given up.
    /// `Ok(None)` once it was closed.
    pub async fn receive<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        loop {
            let decoded = match self.next_event().await {
                None => {
                    return match self.ended_error() {
                        Error::Failed(reason) => Err(Error::Failed(reason)),
                        _ => Ok(None),
                    };
                }
                Some(Event::Publication { data, .. }) => data
                    .decode::<T>()
                    .map_err(|e| decode_error(data.as_str(), &e)),
                Some(Event::Message(text)) => {
                    serde_json::from_str(&text).map_err(|e| decode_error(&text, &e))
                }
                Some(Event::Binary(bytes)) => serde_json::from_slice(&bytes)
                    .map_err(|e| decode_error(&String::from_utf8_lossy(&bytes), &e)),
                Some(_) => continue,
            };
            return decoded.map(Some);
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

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn decode_error(text: &str, error: &serde_json::Error) -> Error {
    Error::Decode {
        text: text.to_owned(),
        reason: error.to_string(),
    }
}
