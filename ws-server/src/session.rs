//! One connection: the task that owns its socket from the upgrade to the close.
//!
//! A single task `select!`s over the cancellation token, the connection's [`Outbox`], inbound
//! frames, the ping timer and the idle deadline. Replies to the client's own frames (`Pong`,
//! `Subscribed`, `Error`) are written at once by this task, so they never wait behind queued
//! publications and are never dropped; publications are drained from the outbox in batches
//! and written with one flush.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes, error::CapacityError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use ws_protocol::{WsMessage, close, codes};

use crate::channel::is_valid_name;
use crate::connections::ConnectionId;
use crate::outbox::{Outbox, OutboxState, Outgoing};
use crate::server::Shared;

/// How long the hub tries to deliver its close frame and wait for the client's reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
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
    let token = shared.token.child_token();
    let outbox = Arc::new(Outbox::new(
        config.send_queue_size,
        config.slow_consumer_policy,
        token.clone(),
    ));
    shared.connections.insert(id, outbox.clone());
    info!(connection = %id, %peer, "connection opened");

    let mut session = Session {
        shared: shared.clone(),
        id,
        ws,
        outbox,
        token,
        subscriptions: HashSet::new(),
        batch: VecDeque::new(),
        lagged: Vec::new(),
        last_seen: Instant::now(),
    };
    let end = session.run().await;
    session.leave_channels();
    shared.connections.remove(id);
    session.close(&end).await;
    info!(connection = %id, %peer, reason = %end, "connection closed");
}

struct Session {
    shared: Arc<Shared>,
    id: ConnectionId,
    ws: WebSocketStream<TcpStream>,
    outbox: Arc<Outbox>,
    /// Cancelled on server shutdown (it is a child of the server's token) or on overflow.
    token: CancellationToken,
    subscriptions: HashSet<Arc<str>>,
    batch: VecDeque<Outgoing>,
    lagged: Vec<(Arc<str>, u64)>,
    last_seen: Instant,
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

        loop {
            let step = tokio::select! {
                biased;
                () = self.token.cancelled() => Err(self.cancelled_reason()),
                () = self.outbox.ready() => self.write_queued().await,
                frame = self.ws.next() => match frame {
                    Some(Ok(message)) => {
                        self.last_seen = Instant::now();
                        self.on_frame(message).await
                    }
                    Some(Err(error)) => Err(read_error(error)),
                    None => Err(End::Gone("connection closed by client".to_owned())),
                },
                _ = ping.tick() => self.write_now(Message::Ping(Default::default())).await,
                () = &mut idle => {
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

    fn cancelled_reason(&self) -> End {
        if self.outbox.overflowed() {
            End::SlowConsumer
        } else {
            End::Shutdown
        }
    }

    /// Runs `fut` unless the connection is cancelled first.
    async fn or_cancelled<T>(
        token: &CancellationToken,
        fut: impl Future<Output = Result<T, WsError>>,
    ) -> Result<T, End> {
        tokio::select! {
            // The real reason is worked out by the main loop's cancellation branch.
            () = token.cancelled() => Err(End::Shutdown),
            result = fut => result.map_err(|e| End::Gone(format!("write failed: {e}"))),
        }
    }

    async fn write_now(&mut self, message: Message) -> Result<(), End> {
        match Self::or_cancelled(&self.token, self.ws.send(message)).await {
            Err(End::Shutdown) => Err(self.cancelled_reason()),
            other => other,
        }
    }

    async fn send_now(&mut self, message: &WsMessage) -> Result<(), End> {
        self.write_now(Message::text(message.to_json())).await
    }

    /// Writes everything queued in the outbox, then flushes once.
    async fn write_queued(&mut self) -> Result<(), End> {
        if self.outbox.take(&mut self.batch, &mut self.lagged) == OutboxState::Overflowed {
            return Err(End::SlowConsumer);
        }
        let Self {
            ws,
            token,
            batch,
            lagged,
            subscriptions,
            ..
        } = self;
        let write = async {
            for (channel, missed) in lagged.drain(..) {
                let notice = WsMessage::Lagged {
                    channel: channel.to_string(),
                    missed,
                };
                ws.feed(Message::text(notice.to_json())).await?;
            }
            while let Some(item) = batch.pop_front() {
                // Publications queued before an unsubscribe are not delivered after it.
                if let Some(channel) = &item.channel {
                    if !subscriptions.contains(channel) {
                        continue;
                    }
                }
                ws.feed(Message::Text(item.text)).await?;
            }
            ws.flush().await
        };
        let result = Self::or_cancelled(token, write).await;
        self.batch.clear();
        match result {
            Err(End::Shutdown) => Err(self.cancelled_reason()),
            other => other,
        }
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
                () = self.token.cancelled() => return Err(self.cancelled_reason()),
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
