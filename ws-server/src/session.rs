//! One connection: the task that owns its socket from the upgrade to the close.
//!
//! A single task waits on the connection's [`Outbox`] (which also carries the slow-consumer
//! cut and shutdown), inbound frames, the ping timer and the idle deadline, alternating which
//! of output and input it looks at first. Replies to the client's own frames (`Pong`,
//! `Subscribed`, `Error`) are written at once by this task, so they never wait behind queued
//! publications and are never dropped; publications are drained from the outbox in batches
//! and written with one flush.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes, error::CapacityError};
use tracing::{debug, info, warn};
use ws_protocol::{WsMessage, close, codes};

use crate::channel::is_valid_name;
use crate::connections::ConnectionId;
use crate::frame::Frame;
use crate::outbox::{Outbox, OutboxState, Outgoing};
use crate::server::Shared;

/// How long the hub tries to deliver its close frame and wait for the client's reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// A write buffer grown past this by a large batch is released afterwards, so that idle
/// connections hold no large buffers.
const MAX_KEPT_WRITE_BUFFER: usize = 64 * 1024;
/// How many bytes the hub reads and discards after closing, so that unread input does not
/// turn the close into a TCP reset that could destroy the close frame in flight.
const LINGER_BYTES: usize = 1 << 20;

/// Why a connection ends.
enum End {
    /// The client closed or the socket failed; nothing more can be sent.
    Gone(String),
    /// The server is shutting down: close 1001.
    Shutdown,
    /// The outbox overflowed under the `disconnect` policy: `Error`, then close 1008.
    SlowConsumer,
    /// A frame exceeded the maximum message size: close 1009.
    TooBig,
    /// Nothing arrived within the idle timeout: close 1000.
    Idle,
}

/// Upgrades `stream` and runs the connection to its end. Errors are logged, never returned.
pub(crate) async fn run(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let config = &shared.config;
    let upgrade = tokio_tungstenite::accept_async_with_config(stream, Some(shared.ws_config));
    let ws = tokio::select! {
        () = shared.token.cancelled() => return,
        result = tokio::time::timeout(config.handshake_timeout, upgrade) => match result {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "WebSocket upgrade failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "WebSocket upgrade timed out");
                return;
            }
        },
    };

    let id = shared.connections.next_id();
    let outbox = Arc::new(Outbox::new(
        config.send_queue_size,
        config.slow_consumer_policy,
    ));
    shared.connections.insert(id, outbox.clone());
    if shared.token.is_cancelled() {
        // Shutdown began while this connection was upgrading: close it like the others.
        outbox.close();
    }
    info!(connection = %id, %peer, "connection opened");

    let mut session = Session {
        shared: shared.clone(),
        id,
        ws,
        outbox,
        subscriptions: HashSet::new(),
        batch: VecDeque::new(),
        lagged: Vec::new(),
        last_seen: Instant::now(),
        signal_pending: false,
        out: Vec::new(),
    };
    let end = session.run().await;
    session.leave_channels();
    shared.connections.remove(id);
    session.close(&end).await;
    info!(connection = %id, %peer, reason = %end, "connection closed");
}

/// What woke the connection's task.
enum Wake {
    /// The outbox has frames, or was closed or overflowed.
    Outbox,
    /// A frame (or the end) from the client.
    Frame(Option<Result<Message, WsError>>),
    /// Time to ping the client.
    Ping,
    /// The idle deadline passed.
    Idle,
}

struct Session {
    shared: Arc<Shared>,
    id: ConnectionId,
    ws: WebSocketStream<TcpStream>,
    /// Queued frames, and the one signal for publications, overflow and shutdown.
    outbox: Arc<Outbox>,
    subscriptions: HashSet<Arc<str>>,
    batch: VecDeque<Outgoing>,
    lagged: Vec<(Arc<str>, u64)>,
    last_seen: Instant,
    /// The outbox signalled while a write was in progress: drain it next.
    signal_pending: bool,
    /// The bytes of one batch of queued frames, written with one call.
    out: Vec<u8>,
}

impl Session {
    async fn run(&mut self) -> End {
        let connected = WsMessage::Connected {
            connection_id: self.id.0,
            server_time: crate::server::unix_millis(),
        };
        if let Err(end) = self.send_now(&connected).await {
            return end;
        }
        let config = &self.shared.config;
        let (ping_every, idle_after) = (config.ping_interval, config.idle_timeout);
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let idle = tokio::time::sleep(idle_after);
        tokio::pin!(idle);
        // Alternates which of queued output and inbound frames is looked at first, so that
        // neither can starve the other.
        let mut output_first = true;

        loop {
            let wake = if std::mem::take(&mut self.signal_pending) {
                Wake::Outbox
            } else {
                output_first = !output_first;
                let (outbox, ws) = (&self.outbox, &mut self.ws);
                std::future::poll_fn(|cx| {
                    if output_first && outbox.poll_ready(cx).is_ready() {
                        return Poll::Ready(Wake::Outbox);
                    }
                    if let Poll::Ready(frame) = ws.poll_next_unpin(cx) {
                        return Poll::Ready(Wake::Frame(frame));
                    }
                    if !output_first && outbox.poll_ready(cx).is_ready() {
                        return Poll::Ready(Wake::Outbox);
                    }
                    if ping.poll_tick(cx).is_ready() {
                        return Poll::Ready(Wake::Ping);
                    }
                    if idle.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Idle);
                    }
                    Poll::Pending
                })
                .await
            };
            let step = match wake {
                Wake::Outbox => self.write_queued().await,
                Wake::Frame(Some(Ok(message))) => {
                    self.last_seen = Instant::now();
                    let step = self.on_frame(message).await;
                    // Frames already buffered are read without touching the socket, so a
                    // publisher's burst would never yield: spend the task's cooperative
                    // budget so that subscribers get to drain between its publications.
                    tokio::task::consume_budget().await;
                    step
                }
                Wake::Frame(Some(Err(error))) => Err(read_error(error)),
                Wake::Frame(None) => Err(End::Gone("connection closed by client".to_owned())),
                Wake::Ping => self.write_now(Message::Ping(Default::default())).await,
                Wake::Idle => {
                    if self.last_seen.elapsed() >= idle_after {
                        Err(End::Idle)
                    } else {
                        idle.as_mut().reset(self.last_seen + idle_after);
                        Ok(())
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Why the outbox stopped the connection, if it did.
    fn outbox_end(&self) -> Option<End> {
        match self.outbox.state() {
            OutboxState::Open => None,
            OutboxState::Overflowed => Some(End::SlowConsumer),
            OutboxState::Closed => Some(End::Shutdown),
        }
    }

    /// Drives `fut` (a write) to completion unless the outbox says the connection must stop
    /// first: a write blocked on a client that does not read must not outlive the decision to
    /// cut it, nor delay shutdown.
    async fn guarded<T>(
        outbox: &Outbox,
        signal_pending: &mut bool,
        fut: impl Future<Output = Result<T, WsError>>,
    ) -> Result<T, End> {
        tokio::pin!(fut);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(|e| End::Gone(format!("write failed: {e}"))));
            }
            // Poll until Pending, so that the waker stays registered for the next signal.
            while outbox.poll_ready(cx).is_ready() {
                *signal_pending = true;
                match outbox.state() {
                    OutboxState::Open => {}
                    OutboxState::Overflowed => return Poll::Ready(Err(End::SlowConsumer)),
                    OutboxState::Closed => return Poll::Ready(Err(End::Shutdown)),
                }
            }
            Poll::Pending
        })
        .await
    }

    async fn write_now(&mut self, message: Message) -> Result<(), End> {
        let Self {
            ws,
            outbox,
            signal_pending,
            ..
        } = self;
        Self::guarded(outbox, signal_pending, ws.send(message)).await
    }

    async fn send_now(&mut self, message: &WsMessage) -> Result<(), End> {
        self.write_now(Message::text(message.to_json())).await
    }

    /// Writes everything queued in the outbox, then flushes once.
    async fn write_queued(&mut self) -> Result<(), End> {
        if self.outbox.take(&mut self.batch, &mut self.lagged) != OutboxState::Open {
            return Err(self.outbox_end().unwrap_or(End::Shutdown));
        }
        let Self {
            ws,
            outbox,
            batch,
            lagged,
            signal_pending,
            out,
            ..
        } = self;
        out.clear();
        for (channel, missed) in lagged.drain(..) {
            let notice = WsMessage::Lagged {
                channel: channel.to_string(),
                missed,
            };
            out.extend_from_slice(Frame::text(&notice.to_json()).as_bytes());
        }
        for item in batch.drain(..) {
            out.extend_from_slice(item.frame.as_bytes());
        }
        let write = async {
            // Frames written by tungstenite (a pong it queued while reading) go first, so that
            // frames stay whole and in order; then the pre-encoded frames go out in one write.
            ws.flush().await?;
            ws.get_mut().write_all(out).await.map_err(WsError::Io)
        };
        let result = Self::guarded(outbox, signal_pending, write).await;
        if out.capacity() > MAX_KEPT_WRITE_BUFFER {
            *out = Vec::new();
        }
        result
    }

    async fn on_frame(&mut self, message: Message) -> Result<(), End> {
        match message {
            Message::Text(text) => self.on_text(text).await,
            Message::Binary(_) => {
                let error = WsMessage::error(
                    codes::BAD_REQUEST,
                    "binary frames are not supported; send JSON text frames",
                );
                self.send_now(&error).await
            }
            // tungstenite answers pings itself; pongs and close handshakes need nothing here.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => Ok(()),
        }
    }

    async fn on_text(&mut self, text: Utf8Bytes) -> Result<(), End> {
        let message = match WsMessage::from_json(text.as_str()) {
            Ok(message) => message,
            Err(error) => {
                debug!(connection = %self.id, %error, "rejected frame");
                return self
                    .send_now(&WsMessage::error(error.code(), error.to_string()))
                    .await;
            }
        };
        match message {
            WsMessage::Ping => self.send_now(&WsMessage::Pong).await,
            WsMessage::Pong => Ok(()),
            WsMessage::Subscribe { channels } => self.subscribe(channels).await,
            WsMessage::Unsubscribe { channels } => {
                for channel in &channels {
                    if self.subscriptions.remove(channel.as_str()) {
                        self.shared.channels.unsubscribe(channel, self.id);
                        // Nothing of it is delivered after the Unsubscribed reply.
                        self.outbox.purge(channel);
                    }
                }
                self.send_now(&WsMessage::Unsubscribed { channels }).await
            }
            WsMessage::Publish { channel, data } => {
                if !is_valid_name(&channel) {
                    return self.send_now(&invalid_channel(&channel)).await;
                }
                self.shared.channels.publish(&channel, data.as_raw());
                Ok(())
            }
            message @ (WsMessage::PriceUpdate { .. } | WsMessage::AccountUpdate { .. }) => {
                self.forward(message).await
            }
            other => {
                let error = WsMessage::error(
                    codes::UNSUPPORTED,
                    format!(
                        "{} frames are sent by the hub, not by clients",
                        other.kind()
                    ),
                );
                self.send_now(&error).await
            }
        }
    }

    async fn subscribe(&mut self, channels: Vec<String>) -> Result<(), End> {
        if let Some(bad) = channels.iter().find(|c| !is_valid_name(c)) {
            return self.send_now(&invalid_channel(bad)).await;
        }
        for channel in &channels {
            if !self.subscriptions.contains(channel.as_str()) {
                let key = self
                    .shared
                    .channels
                    .subscribe(channel, self.id, &self.outbox);
                self.subscriptions.insert(key);
            }
        }
        // In effect now: a publication from anyone after this point is queued for us, and is
        // written after this reply.
        self.send_now(&WsMessage::Subscribed { channels }).await
    }

    /// Hands an application frame to the application, waiting while its queue is full.
    async fn forward(&mut self, message: WsMessage) -> Result<(), End> {
        let kind = message.kind();
        let sender = self.shared.incoming_sender();
        let refused = match sender {
            None => true,
            Some(sender) => tokio::select! {
                () = self.shared.token.cancelled() => return Err(End::Shutdown),
                sent = sender.send((self.id, message)) => sent.is_err(),
            },
        };
        if refused {
            let error = WsMessage::error(
                codes::UNSUPPORTED,
                format!("this hub has no application reading {kind} frames; use Publish"),
            );
            return self.send_now(&error).await;
        }
        Ok(())
    }

    fn leave_channels(&mut self) {
        for channel in self.subscriptions.drain() {
            self.shared.channels.unsubscribe(&channel, self.id);
        }
    }

    /// Sends what the ending calls for, then waits briefly for the client's close reply.
    async fn close(&mut self, end: &End) {
        let frames: Vec<Message> = match end {
            End::Gone(_) => return,
            End::Shutdown => vec![close_frame(close::GOING_AWAY, "server shutting down")],
            End::Idle => vec![close_frame(close::NORMAL, "idle timeout")],
            End::TooBig => {
                let limit = self.shared.config.max_message_size;
                vec![close_frame(
                    close::MESSAGE_TOO_BIG,
                    &format!("message too large: the limit is {limit} bytes"),
                )]
            }
            End::SlowConsumer => vec![
                Message::text(
                    WsMessage::error(
                        codes::SLOW_CONSUMER,
                        "the connection fell too far behind its publications",
                    )
                    .to_json(),
                ),
                close_frame(close::POLICY_VIOLATION, "slow consumer"),
            ],
        };
        let too_big = matches!(end, End::TooBig);
        let ws = &mut self.ws;
        let goodbye = async {
            for frame in frames {
                ws.feed(frame).await?;
            }
            ws.flush().await?;
            if !too_big {
                // Wait for the client's close reply; tungstenite ends the stream after it.
                while let Some(Ok(_)) = ws.next().await {}
            }
            Ok::<_, WsError>(())
        };
        if let Ok(Err(error)) = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await {
            debug!(connection = %self.id, %error, "close handshake failed");
        }
        if too_big {
            // The rest of the oversized frame is still unread, and the frame parser cannot go
            // on after it: drain the raw socket so that closing it does not send a TCP reset
            // that could destroy the close frame in flight.
            let tcp = self.ws.get_mut();
            let mut sink = vec![0u8; 8192];
            let mut drained = 0;
            let linger = async {
                while drained < LINGER_BYTES {
                    match tcp.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => drained += n,
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, linger).await;
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gone(why) => f.write_str(why),
            Self::Shutdown => f.write_str("server shutting down"),
            Self::SlowConsumer => f.write_str("slow consumer"),
            Self::TooBig => f.write_str("message too large"),
            Self::Idle => f.write_str("idle timeout"),
        }
    }
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

fn invalid_channel(channel: &str) -> WsMessage {
    WsMessage::error(
        codes::INVALID_CHANNEL,
        format!(
            "invalid channel name {channel:?}: must be 1 to {} bytes",
            crate::channel::MAX_CHANNEL_NAME_LEN
        ),
    )
}

fn read_error(error: WsError) -> End {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            warn!(size, max_size, "frame over the maximum message size");
            End::TooBig
        }
        other => End::Gone(format!("read failed: {other}")),
    }
}
