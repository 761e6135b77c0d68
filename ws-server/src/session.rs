//! One connection: the task that owns its socket from the upgrade to the close.
//!
//! A single task waits on the connection's [`Outbox`] (which also carries the slow-consumer
//! cut and shutdown), inbound frames, the ping timer and the idle deadline, alternating which
//! of output and input it looks at first. Replies to the client's own frames (`Pong`,
//! `Subscribed`, `Error`) are written at once by this task, so they never wait behind queued
//! publications and are never dropped; publications are drained from the outbox in batches
//! and written with one flush.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use futures_util::future::Either;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes, error::CapacityError};
use tracing::{debug, warn};
use ws_protocol::{Payload, Position, WsMessage, close, codes, excerpt, invalid_channel_name};

use crate::auth::Grant;
use crate::broker::{BrokerError, Submission};
use crate::channel::Published;
use crate::connections::ConnectionId;
use crate::frame::Frame;
use crate::metrics::HubMetrics;
use crate::outbox::{Notice, NoticeKind, Outbox, OutboxState, Outgoing};
use crate::rate_limit::{RateLimit, Verdict};
use crate::read_ahead::ReadAhead;
use crate::server::Shared;
use crate::upgrade_request;
use ws_protocol::is_valid_channel_name as is_valid_name;

/// Publications of one connection that may travel to the broker at once (pipelined); the
/// next waits for the oldest.
const MAX_PUBLISHING: usize = 256;

/// How long the hub tries to deliver its close frame and wait for the client's reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// A write buffer grown past this by a large batch is released afterwards, so that idle
/// connections hold no large buffers.
const MAX_KEPT_WRITE_BUFFER: usize = 64 * 1024;
/// At most this many bytes of queued frames are taken for one write (one more frame may
/// pass it), so that the buffer a batch is copied into stays small whatever is queued.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// How many bytes the hub reads and discards after closing, so that unread input does not
/// turn the close into a TCP reset that could destroy the close frame in flight.
const LINGER_BYTES: usize = 1 << 20;

/// Why a connection ends.
enum End {
    /// The client closed or the socket failed; nothing more can be sent.
    Gone(String),
    /// The server is shutting down: close 1001.
    Shutdown,
    /// The server drains before a restart: close 1012 with a reconnect hint.
    Restart,
    /// The outbox overflowed under the `disconnect` policy: `Error`, then close 1008.
    SlowConsumer,
    /// A write made no progress for `WS_WRITE_TIMEOUT` (the client neither reads nor
    /// closes): treated as a slow consumer under any policy.
    Stalled,
    /// A frame exceeded the maximum message size: close 1009.
    TooBig,
    /// Nothing arrived within the idle timeout: close 1000.
    Idle,
    /// Authentication failed or never came: `Error`, then close 1008.
    Unauthorized(String),
    /// The token expired: close 1008.
    Expired,
    /// The connection kept sending past its rate limit: close 1008.
    Abuse,
    /// The client broke the WebSocket protocol: close 1002 (1007 for invalid UTF-8).
    Protocol { code: u16, why: String },
}

/// Upgrades `stream` and runs the connection to its end. Errors are logged, never returned.
/// `upgrading` is the connection's place among the pending upgrades, given back once the
/// upgrade is done; the upgrade takes a place among the open connections instead.
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    upgrading: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = &shared.config;
    let mut stream = ReadAhead::new(stream);
    // The upgrade checks the Origin, the connection limit and any token, and leaves the
    // grant of an accepted token and the connection's place here; without a token the
    // connection must authenticate with a frame.
    let mut grant = None;
    let mut slot = None;
    let upgrade = async {
        // The request is checked first, so that a malformed one gets a status that says why.
        let head = stream.peek_head(upgrade_request::MAX_HEAD).await?;
        if let Err(refusal) = upgrade_request::check(head) {
            debug!(%peer, status = refusal.status, "upgrade request refused");
            refusal.write(&mut stream).await;
            return Err(WsError::Http(Box::default()));
        }
        #[allow(clippy::result_large_err)] // tungstenite's callback signature
        let check = |request: &Request, response: Response| {
            admit(&shared, request, response, &mut grant, &mut slot)
        };
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(shared.ws_config)).await
    };
    // Boxed: the handshake's state is large and only lives until the upgrade, so it is not
    // kept in every idle connection's task.
    let upgrade = Box::pin(tokio::time::timeout(config.handshake_timeout, upgrade));
    let ws = tokio::select! {
        () = shared.token.cancelled() => return,
        result = upgrade => match result {
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
    drop(upgrading);
    let Some(_slot) = slot else {
        // admit() gives a slot to every upgrade it accepts.
        return;
    };

    let id = shared.connections.next_id();
    let outbox = Arc::new(
        Outbox::new(
            config.send_queue_size,
            config.history_size,
            config.slow_consumer_policy,
        )
        .with_max_bytes(config.send_queue_bytes),
    );
    shared.connections.insert(id, outbox.clone());
    if shared.token.is_cancelled() {
        // Shutdown began while this connection was upgrading: close it like the others.
        outbox.close();
    }
    debug!(connection = %id, %peer, "connection opened");
    HubMetrics::add(&shared.metrics.connections_total, 1);

    let mut session = Session {
        shared: shared.clone(),
        id,
        ws,
        outbox,
        subscriptions: HashSet::new(),
        batch: VecDeque::new(),
        notices: Vec::new(),
        last_seen: Instant::now(),
        signal_pending: false,
        publishing: VecDeque::new(),
        out: Vec::new(),
        out_sent: AtomicUsize::new(0),
        deadline: None,
        next_ping: after(Instant::now(), config.ping_interval),
        idle_check: after(Instant::now(), config.idle_timeout),
        rate: RateLimit::new(config.rate_limit, config.rate_limit_burst),
        publish_rate: RateLimit::new_or_unlimited(
            config.publish_rate_limit,
            config.publish_rate_limit_burst,
        ),
        grant: None,
    };
    session.set_grant(grant);
    let end = session.run().await;
    match &end {
        End::SlowConsumer | End::Stalled => {
            HubMetrics::add(&shared.metrics.slow_consumer_disconnects, 1);
        }
        End::Unauthorized(_) => HubMetrics::add(&shared.metrics.auth_failures, 1),
        _ => {}
    }
    session.leave_channels();
    // Boxed like the upgrade: only an ending connection needs the close's state.
    Box::pin(session.close(&end)).await;
    if matches!(end, End::SlowConsumer) {
        warn!(connection = %id, %peer, "slow consumer cut: its queue was full (WS_SEND_QUEUE_SIZE {} messages, WS_SEND_QUEUE_BYTES {} bytes)", shared.config.send_queue_size, shared.config.send_queue_bytes);
    } else if matches!(end, End::Stalled) {
        warn!(connection = %id, %peer, "slow consumer cut: a write made no progress for {:?} (WS_WRITE_TIMEOUT)", shared.config.write_timeout);
    } else {
        debug!(connection = %id, %peer, reason = %end, "connection closed");
    }
}

/// What a client's frame calls for, decided without I/O by [`Session::on_frame`].
enum Next {
    /// Nothing to write.
    Nothing,
    /// Write this reply (JSON) at once.
    Reply(String),
    /// Conformance testing: write the frame back.
    Echo(Message),
    /// Hand a publication to the broker.
    Publish { channel: String, data: Payload },
    /// A rare command whose work awaits; its state is boxed while it runs.
    Slow(Slow),
}

/// The rare commands of [`Next::Slow`].
enum Slow {
    /// Subscribe (through the broker, which may have to attach the channels first).
    Subscribe {
        channels: Vec<String>,
        since: BTreeMap<String, Position>,
    },
    /// Check a token sent in an `Authenticate` frame.
    Authenticate(String),
    /// Hand an application frame to the embedding application.
    Forward(WsMessage),
}

/// What woke the connection's task.
enum Wake {
    /// The outbox has frames, or was closed or overflowed.
    Outbox,
    /// A frame (or the end) from the client.
    Frame(Option<Result<Message, WsError>>),
    /// The ping, idle or deadline timer fired.
    Timer,
    /// The oldest pipelined publication is done (or refused).
    Published(Result<Result<Published, BrokerError>, oneshot::error::RecvError>),
}

struct Session<S> {
    shared: Arc<Shared>,
    id: ConnectionId,
    ws: WebSocketStream<S>,
    /// Queued frames, and the one signal for publications, overflow and shutdown.
    outbox: Arc<Outbox>,
    subscriptions: HashSet<Arc<str>>,
    batch: VecDeque<Outgoing>,
    notices: Vec<Notice>,
    last_seen: Instant,
    /// The outbox signalled while a write was in progress: drain it next.
    signal_pending: bool,
    /// Publications handed to the broker and not yet done, oldest first (Redis broker).
    publishing: VecDeque<(String, oneshot::Receiver<Result<Published, BrokerError>>)>,
    /// The bytes of one batch of queued frames, written with one call.
    out: Vec<u8>,
    /// How much of `out` the socket took. Short of `out.len()` only when a write was cut off
    /// (a slow consumer, shutdown): the close then finishes it first, so that no frame is
    /// left half written in front of the goodbye. Atomic only so that the write timeout can
    /// watch it move while the write holds it.
    out_sent: AtomicUsize,
    /// When the connection must have authenticated, or when its token expires.
    deadline: Option<Instant>,
    /// When to ping the client next.
    next_ping: Instant,
    /// When to look whether the connection has been silent for the idle timeout.
    idle_check: Instant,
    /// Control frames allowed (everything but publications).
    rate: RateLimit,
    /// Publications allowed.
    publish_rate: RateLimit,
    /// What the connection may do; `None` until it authenticates. Shared: the open hub's
    /// grant is one for every connection.
    grant: Option<Arc<Grant>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn run(&mut self) -> End {
        // (An echo server for conformance testing speaks only when spoken to.)
        if !self.shared.echo {
            let connected = WsMessage::Connected {
                connection_id: self.id.0,
                server_time: crate::server::unix_millis(),
            };
            if let Err(end) = self.send_text(connected.to_json()).await {
                return end;
            }
        }
        // One timer for the ping, the idle check and the authentication or expiry deadline:
        // it is set to whichever comes first.
        let timer = tokio::time::sleep_until(self.next_wake());
        tokio::pin!(timer);
        // Alternates which of queued output and inbound frames is looked at first, so that
        // neither can starve the other.
        let mut output_first = true;

        loop {
            let wake = if std::mem::take(&mut self.signal_pending) {
                Wake::Outbox
            } else {
                output_first = !output_first;
                let (outbox, ws) = (&self.outbox, &mut self.ws);
                let publishing = &mut self.publishing;
                let mut timer = timer.as_mut();
                std::future::poll_fn(|cx| {
                    if let Some((_, reply)) = publishing.front_mut()
                        && let Poll::Ready(outcome) = Pin::new(reply).poll(cx)
                    {
                        return Poll::Ready(Wake::Published(outcome));
                    }
                    if output_first && outbox.poll_ready(cx).is_ready() {
                        return Poll::Ready(Wake::Outbox);
                    }
                    if let Poll::Ready(frame) = ws.poll_next_unpin(cx) {
                        return Poll::Ready(Wake::Frame(frame));
                    }
                    if !output_first && outbox.poll_ready(cx).is_ready() {
                        return Poll::Ready(Wake::Outbox);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Timer);
                    }
                    Poll::Pending
                })
                .await
            };
            let step = match wake {
                Wake::Outbox => self.write_queued().await,
                Wake::Frame(Some(Ok(message))) => {
                    self.last_seen = Instant::now();
                    // Each arm has one await, so that the task's state is the largest of them
                    // rather than their sum.
                    let step = match self.on_frame(message) {
                        Ok(Next::Nothing) => Ok(()),
                        Ok(Next::Reply(text)) => self.send_text(text).await,
                        Ok(Next::Echo(message)) => self.write_now(message).await,
                        Ok(Next::Publish { channel, data }) => {
                            match self.publish(channel, data).await {
                                Some(refusal) => self.send_text(refusal).await,
                                None => Ok(()),
                            }
                        }
                        Ok(Next::Slow(command)) => Box::pin(self.slow(command)).await,
                        Err(end) => Err(end),
                    };
                    // Frames already buffered are read without touching the socket, so a
                    // publisher's burst would never yield: spend the task's cooperative
                    // budget so that subscribers get to drain between its publications.
                    tokio::task::consume_budget().await;
                    step
                }
                Wake::Published(outcome) => match self.publishing.pop_front() {
                    Some((channel, _)) => match refusal_of_publication(&channel, outcome) {
                        Some(text) => self.send_text(text).await,
                        None => Ok(()),
                    },
                    None => Ok(()),
                },
                Wake::Frame(Some(Err(error))) => Err(read_error(error)),
                Wake::Frame(None) => Err(End::Gone("connection closed by client".to_owned())),
                Wake::Timer => self.on_timer().await,
            };
            if let Err(end) = step {
                return end;
            }
            // A new grant may have moved the deadline.
            let wake_at = self.next_wake();
            if timer.deadline() != wake_at {
                timer.as_mut().reset(wake_at);
            }
        }
    }

    /// When the connection's one timer must fire next.
    fn next_wake(&self) -> Instant {
        let at = self.next_ping.min(self.idle_check);
        self.deadline.map_or(at, |deadline| deadline.min(at))
    }

    /// The timer fired: end at a passed deadline or after silence, or ping the client.
    async fn on_timer(&mut self) -> Result<(), End> {
        let now = Instant::now();
        if self.deadline.is_some_and(|deadline| deadline <= now) {
            return Err(match self.grant {
                None => End::Unauthorized("no Authenticate frame in time".to_owned()),
                Some(_) => End::Expired,
            });
        }
        let config = &self.shared.config;
        if self.idle_check <= now {
            let idle_after = config.idle_timeout;
            if now.duration_since(self.last_seen) >= idle_after {
                return Err(End::Idle);
            }
            self.idle_check = after(self.last_seen, idle_after);
        }
        if self.next_ping <= now {
            self.next_ping = after(now, config.ping_interval);
            return self.write_now(Message::Ping(Default::default())).await;
        }
        Ok(())
    }

    /// Why the outbox stopped the connection, if it did.
    fn outbox_end(&self) -> Option<End> {
        match self.outbox.state() {
            OutboxState::Open => None,
            OutboxState::Overflowed => Some(End::SlowConsumer),
            OutboxState::Closed => Some(End::Shutdown),
            OutboxState::Restart => Some(End::Restart),
        }
    }

    /// Drives `fut` (a write) to completion unless the outbox says the connection must stop
    /// first: a write blocked on a client that does not read must not outlive the decision to
    /// cut it, nor delay shutdown. A write that makes no progress for `timeout` (`progress`,
    /// when given, counts the bytes it has written so far) ends the connection as stalled.
    async fn guarded<T>(
        outbox: &Outbox,
        signal_pending: &mut bool,
        timeout: Duration,
        progress: Option<&AtomicUsize>,
        fut: impl Future<Output = Result<T, WsError>>,
    ) -> Result<T, End> {
        tokio::pin!(fut);
        // Created only once the write has to wait: a write that completes at once (nearly
        // all of them) costs no timer.
        let mut stall: Option<(Pin<Box<tokio::time::Sleep>>, usize)> = None;
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
                    OutboxState::Restart => return Poll::Ready(Err(End::Restart)),
                }
            }
            let written = progress.map_or(0, |p| p.load(Ordering::Relaxed));
            match &mut stall {
                None => stall = Some((Box::pin(tokio::time::sleep(timeout)), written)),
                Some((timer, seen)) if *seen != written => {
                    timer.as_mut().reset(after(Instant::now(), timeout));
                    *seen = written;
                }
                Some(_) => {}
            }
            if let Some((timer, _)) = &mut stall
                && timer.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(End::Stalled));
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
            shared,
            ..
        } = self;
        let timeout = shared.config.write_timeout;
        Self::guarded(outbox, signal_pending, timeout, None, ws.send(message)).await
    }

    /// Writes one reply (JSON) at once, ahead of queued publications.
    async fn send_text(&mut self, text: String) -> Result<(), End> {
        HubMetrics::add(&self.shared.metrics.frames_out, 1);
        HubMetrics::add(&self.shared.metrics.bytes_out, text.len() as u64);
        self.write_now(Message::text(text)).await
    }

    /// Writes everything queued in the outbox, then flushes once.
    async fn write_queued(&mut self) -> Result<(), End> {
        let (state, more) = self
            .outbox
            .take(&mut self.batch, &mut self.notices, WRITE_BATCH_BYTES);
        if state != OutboxState::Open {
            return Err(self.outbox_end().unwrap_or(End::Shutdown));
        }
        if more {
            // What did not fit in this batch goes in the next one.
            self.signal_pending = true;
        }
        let Self {
            ws,
            outbox,
            batch,
            notices,
            signal_pending,
            out,
            out_sent,
            shared,
            ..
        } = self;
        out.clear();
        out_sent.store(0, Ordering::Relaxed);
        let frames = batch.len() + notices.len();
        for notice in notices.drain(..) {
            let channel = notice.channel.to_string();
            let notice = match notice.kind {
                NoticeKind::Lagged => WsMessage::Lagged {
                    channel,
                    missed: notice.count,
                },
                NoticeKind::Conflated => WsMessage::Conflated {
                    channel,
                    skipped: notice.count,
                },
            };
            out.extend_from_slice(Frame::text(&notice.to_json()).as_bytes());
        }
        for item in batch.drain(..) {
            out.extend_from_slice(item.frame().as_bytes());
        }
        let metrics = &shared.metrics;
        HubMetrics::add(&metrics.frames_out, frames as u64);
        HubMetrics::add(&metrics.bytes_out, out.len() as u64);
        let progress = &*out_sent;
        let write = async {
            // Frames written by tungstenite (a pong it queued while reading) go first, so that
            // frames stay whole and in order; then the pre-encoded frames go out in one write.
            ws.flush().await?;
            write_counted(ws.get_mut(), out, progress).await
        };
        let timeout = shared.config.write_timeout;
        let result = Self::guarded(outbox, signal_pending, timeout, Some(progress), write).await;
        if result.is_ok() && out.capacity() > MAX_KEPT_WRITE_BUFFER {
            *out = Vec::new();
        }
        result
    }

    /// Decides what a client's frame calls for, without I/O.
    fn on_frame(&mut self, message: Message) -> Result<Next, End> {
        if self.shared.echo {
            // Conformance testing: data frames go back as they came.
            return Ok(match message {
                message @ (Message::Text(_) | Message::Binary(_)) => Next::Echo(message),
                _ => Next::Nothing,
            });
        }
        match message {
            Message::Text(text) => self.on_text(&text),
            Message::Binary(bytes) => {
                let metrics = &self.shared.metrics;
                HubMetrics::add(&metrics.frames_in, 1);
                HubMetrics::add(&metrics.bytes_in, bytes.len() as u64);
                if let Some(refused) = self.control_budget("control frames")? {
                    return Ok(refused);
                }
                Ok(reply(WsMessage::error(
                    codes::BAD_REQUEST,
                    "binary frames are not supported; send JSON text frames",
                )))
            }
            // tungstenite answers pings itself, but they draw on the control budget like any
            // frame: a ping flood is closed like any other.
            // Refused pings get no `Error`: a client that pings is not reading text replies.
            Message::Ping(_) => {
                self.control_budget("control frames")?;
                Ok(Next::Nothing)
            }
            // Pongs and close handshakes need nothing here.
            Message::Pong(_) | Message::Close(_) | Message::Frame(_) => Ok(Next::Nothing),
        }
    }

    /// Counts one control frame: `None` to act on it, `Some` with what to do instead (an
    /// answer, or nothing while a flood is being refused), or the end of a flood.
    fn control_budget(&mut self, what: &str) -> Result<Option<Next>, End> {
        let limit = self.shared.config.rate_limit;
        let verdict = self.rate.check(self.last_seen);
        self.rate_refusal(verdict, limit, what)
    }

    /// The publications per second this connection may send (0: no limit).
    fn publish_limit(&self) -> f64 {
        self.grant
            .as_ref()
            .and_then(|g| g.publish_rate)
            .map_or(self.shared.config.publish_rate_limit, f64::from)
    }

    /// What a rate limit's verdict calls for (see [`RateLimit::check`]).
    fn rate_refusal(&self, verdict: Verdict, limit: f64, what: &str) -> Result<Option<Next>, End> {
        match verdict {
            Verdict::Allow => Ok(None),
            Verdict::Refuse(answer) => {
                HubMetrics::add(&self.shared.metrics.frames_refused, 1);
                Ok(Some(match answer {
                    None => Next::Nothing,
                    Some(1) => reply(WsMessage::error(
                        codes::RATE_LIMITED,
                        format!("more than {limit} {what} per second; this frame was not acted on"),
                    )),
                    Some(n) => reply(WsMessage::error(
                        codes::RATE_LIMITED,
                        format!(
                            "more than {limit} {what} per second; this frame and {} before it \
                             were not acted on",
                            n - 1
                        ),
                    )),
                }))
            }
            Verdict::Abuse => Err(End::Abuse),
        }
    }

    fn on_text(&mut self, text: &Utf8Bytes) -> Result<Next, End> {
        let metrics = &self.shared.metrics;
        HubMetrics::add(&metrics.frames_in, 1);
        HubMetrics::add(&metrics.bytes_in, text.len() as u64);
        let decoded = WsMessage::from_json(text.as_str());
        // Publications and everything else (subscribe churn, pings, malformed frames) draw on
        // separate budgets, so that a publisher at market rates is never refused because of
        // a limit meant for control traffic.
        let refused = match &decoded {
            Ok(WsMessage::Publish { .. }) => {
                let verdict = self.publish_rate.check(self.last_seen);
                let limit = self.publish_limit();
                self.rate_refusal(verdict, limit, "publications")?
            }
            _ => self.control_budget("control frames")?,
        };
        if let Some(refused) = refused {
            return Ok(refused);
        }
        let message = match decoded {
            Ok(message) => message,
            Err(error) => {
                debug!(connection = %self.id, %error, "rejected frame");
                return Ok(reply(WsMessage::error(error.code(), error.to_string())));
            }
        };
        if let WsMessage::Authenticate { token } = message {
            return Ok(Next::Slow(Slow::Authenticate(token)));
        }
        if self.grant.is_none() && !matches!(message, WsMessage::Ping | WsMessage::Pong) {
            return Ok(reply(WsMessage::error(
                codes::UNAUTHORIZED,
                "authenticate first: send {\"type\":\"Authenticate\",\"token\":\"...\"}",
            )));
        }
        Ok(match message {
            WsMessage::Ping => reply(WsMessage::Pong),
            WsMessage::Pong => Next::Nothing,
            WsMessage::Subscribe { channels, since } => {
                Next::Slow(Slow::Subscribe { channels, since })
            }
            WsMessage::Unsubscribe { channels } => {
                for channel in &channels {
                    if self.subscriptions.remove(channel.as_str()) {
                        self.shared.channels.unsubscribe(channel, self.id);
                        HubMetrics::add_signed(&self.shared.metrics.subscriptions, -1);
                        // Nothing of it is delivered after the Unsubscribed reply.
                        self.outbox.purge(channel);
                    }
                }
                reply(WsMessage::Unsubscribed { channels })
            }
            WsMessage::Publish { channel, data } => {
                if !is_valid_name(&channel) {
                    reply(invalid_channel(&channel))
                } else if !self.grant.as_ref().is_some_and(|g| g.may_publish(&channel)) {
                    reply(WsMessage::error(
                        codes::FORBIDDEN,
                        format!("not allowed to publish on {}", excerpt(&channel)),
                    ))
                } else {
                    Next::Publish { channel, data }
                }
            }
            message @ (WsMessage::PriceUpdate { .. } | WsMessage::AccountUpdate { .. }) => {
                Next::Slow(Slow::Forward(message))
            }
            other => reply(WsMessage::error(
                codes::UNSUPPORTED,
                format!(
                    "{} frames are sent by the hub, not by clients",
                    other.kind()
                ),
            )),
        })
    }

    /// Runs a rare command; boxed by the caller so that the state of its awaits is allocated
    /// while it runs, not carried by every idle connection's task.
    async fn slow(&mut self, command: Slow) -> Result<(), End> {
        match command {
            Slow::Subscribe { channels, since } => self.subscribe(channels, since).await,
            Slow::Authenticate(token) => self.authenticate(token).await,
            Slow::Forward(message) => self.forward(message).await,
        }
    }

    /// Hands a publication to the broker, and returns the `Error` to write if it was refused.
    /// The embedded broker publishes at once; with Redis a publication travels pipelined and
    /// its outcome is looked at when it arrives, in order.
    async fn publish(&mut self, channel: String, data: Payload) -> Option<String> {
        let submitted = match self.shared.submit(&channel, data.as_raw()) {
            Either::Left(done) => done.into_inner(),
            Either::Right(later) => later.await,
        };
        drop(data);
        match submitted {
            Ok(Submission::Done(_)) => None,
            Ok(Submission::Queued(reply)) => {
                self.publishing.push_back((channel, reply));
                if self.publishing.len() <= MAX_PUBLISHING {
                    return None;
                }
                let (channel, reply) = self.publishing.pop_front()?;
                refusal_of_publication(&channel, reply.await)
            }
            Err(error) => refusal_of_publication(&channel, Ok(Err(error))),
        }
    }

    async fn subscribe(
        &mut self,
        channels: Vec<String>,
        since: BTreeMap<String, Position>,
    ) -> Result<(), End> {
        if let Some((code, message)) = self.refusal(&channels).await {
            let error = WsMessage::subscribe_refused(code, message, &channels);
            return self.send_text(error.to_json()).await;
        }
        let mut positions = BTreeMap::new();
        let mut added: Vec<Arc<str>> = Vec::new();
        for channel in &channels {
            let subscribed =
                self.shared
                    .channels
                    .subscribe(channel, self.id, &self.outbox, since.get(channel));
            let (key, position) = match subscribed {
                Ok(subscribed) => subscribed,
                Err(full) => {
                    // All or nothing, like every other refusal of a Subscribe.
                    for key in added {
                        self.subscriptions.remove(&key);
                        self.shared.channels.unsubscribe(&key, self.id);
                        self.outbox.purge(&key);
                        HubMetrics::add_signed(&self.shared.metrics.subscriptions, -1);
                    }
                    let message = format!("{full}; nothing changed");
                    let error =
                        WsMessage::subscribe_refused(codes::UNAVAILABLE, message, &channels);
                    return self.send_text(error.to_json()).await;
                }
            };
            if self.subscriptions.insert(key.clone()) {
                HubMetrics::add(&self.shared.metrics.subscriptions, 1);
                added.push(key);
            }
            positions.insert(channel.clone(), position);
        }
        // In effect now: a publication from anyone after this point is queued for us, and is
        // written after this reply.
        let subscribed = WsMessage::Subscribed {
            channels,
            positions,
        };
        self.send_text(subscribed.to_json()).await
    }

    /// Why a `Subscribe` of `channels` is refused, if it is; with Redis, the channels new to
    /// this hub are attached meanwhile (their position and recent history come from Redis,
    /// so the subscribe recovers as on one hub).
    async fn refusal(&mut self, channels: &[String]) -> Option<(&'static str, String)> {
        if let Some(bad) = channels.iter().find(|c| !is_valid_name(c)) {
            return Some((codes::INVALID_CHANNEL, invalid_channel_name(bad)));
        }
        let grant = self.grant.as_ref();
        if let Some(bad) = channels
            .iter()
            .find(|c| !grant.is_some_and(|g| g.may_subscribe(c)))
        {
            let message = format!("not allowed to subscribe to {}", excerpt(bad));
            return Some((codes::FORBIDDEN, message));
        }
        let new = channels
            .iter()
            .filter(|c| !self.subscriptions.contains(c.as_str()))
            .collect::<HashSet<_>>()
            .len();
        let limit = self.shared.config.max_subscriptions;
        if self.subscriptions.len() + new > limit {
            let message = format!("at most {limit} subscriptions per connection; nothing changed");
            return Some((codes::TOO_MANY_SUBSCRIPTIONS, message));
        }
        for channel in channels {
            let shared = &self.shared;
            if let Err(error) = shared.broker.attach(&shared.channels, channel).await {
                let message = format!(
                    "not subscribed to {}: {error}; nothing changed",
                    excerpt(channel)
                );
                return Some((codes::UNAVAILABLE, message));
            }
        }
        None
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
            return self.send_text(error.to_json()).await;
        }
        Ok(())
    }

    /// Takes a new grant (or none, before authentication) and sets the deadline it implies.
    fn set_grant(&mut self, grant: Option<Arc<Grant>>) {
        let config = &self.shared.config;
        // Saturating: a deadline too far away to represent is no deadline.
        let at = match &grant {
            None => Instant::now().checked_add(config.auth_timeout),
            Some(grant) => grant.expires_at.and_then(|at| {
                let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                Instant::now().checked_add(left)
            }),
        };
        self.deadline = at;
        if let Some(rate) = grant.as_ref().and_then(|g| g.publish_rate) {
            // The token's own publication budget replaces the hub's.
            self.publish_rate = RateLimit::new_or_unlimited(f64::from(rate), 0);
        }
        self.grant = grant;
    }

    /// Checks a token sent in an `Authenticate` frame.
    async fn authenticate(&mut self, token: String) -> Result<(), End> {
        let Some(authenticator) = self.shared.authenticator.clone() else {
            // An open hub: there is nothing to check, the connection may already do anything.
            return self
                .send_text(
                    WsMessage::Authenticated {
                        user_id: String::new(),
                    }
                    .to_json(),
                )
                .await;
        };
        match authenticator.authenticate(&token) {
            Ok(grant) => {
                let user_id = grant.user_id.clone().unwrap_or_default();
                debug!(connection = %self.id, %user_id, "authenticated");
                self.set_grant(Some(Arc::new(grant)));
                self.send_text(WsMessage::Authenticated { user_id }.to_json())
                    .await?;
                // A new token replaces the old one's permissions: subscriptions it no longer
                // allows end now, and the client is told which.
                let withdrawn = self.withdraw_forbidden();
                if withdrawn.is_empty() {
                    return Ok(());
                }
                let error = WsMessage::subscribe_refused(
                    codes::FORBIDDEN,
                    "the new token does not allow these channels: unsubscribed",
                    &withdrawn,
                );
                self.send_text(error.to_json()).await
            }
            Err(e) => Err(End::Unauthorized(e.to_string())),
        }
    }

    /// Ends the subscriptions the current grant does not allow; returns their channels.
    fn withdraw_forbidden(&mut self) -> Vec<String> {
        let Some(grant) = self.grant.clone() else {
            return Vec::new();
        };
        let mut withdrawn: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|channel| !grant.may_subscribe(channel))
            .map(|channel| channel.to_string())
            .collect();
        withdrawn.sort();
        for channel in &withdrawn {
            self.subscriptions.remove(channel.as_str());
            self.shared.channels.unsubscribe(channel, self.id);
            HubMetrics::add_signed(&self.shared.metrics.subscriptions, -1);
            self.outbox.purge(channel);
        }
        withdrawn
    }

    /// Sends what the ending calls for, then waits briefly for the client's close reply.
    async fn close(&mut self, end: &End) {
        let frames: Vec<Message> = match end {
            End::Gone(_) => return,
            End::Shutdown => vec![close_frame(close::GOING_AWAY, "server shutting down")],
            End::Restart => {
                let hint = self.shared.config.reconnect_hint.as_millis();
                vec![close_frame(
                    close::SERVICE_RESTART,
                    &format!("service restart; {}{hint} ms", close::RETRY_AFTER_PREFIX),
                )]
            }
            End::Idle => vec![close_frame(close::NORMAL, "idle timeout")],
            End::Unauthorized(why) => vec![
                Message::text(WsMessage::error(codes::UNAUTHORIZED, why.clone()).to_json()),
                close_frame(close::POLICY_VIOLATION, "unauthorized"),
            ],
            End::Expired => vec![close_frame(close::POLICY_VIOLATION, "token expired")],
            End::Abuse => vec![close_frame(close::POLICY_VIOLATION, "rate limit exceeded")],
            End::Protocol { code, why } => vec![close_frame(*code, why)],
            End::TooBig => {
                let limit = self.shared.config.max_message_size;
                vec![close_frame(
                    close::MESSAGE_TOO_BIG,
                    &format!("message too large: the limit is {limit} bytes"),
                )]
            }
            End::SlowConsumer | End::Stalled => vec![
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
        // After an oversized frame the parser cannot go on; a flood would keep the close
        // reply behind its frames. Either way, the hub does not wait for the reply: it ends
        // its side (FIN) and drains the raw socket for a while, so that closing it does not
        // send a TCP reset that could destroy the close frame in flight.
        let linger = matches!(end, End::TooBig | End::Abuse);
        let Self {
            ws, out, out_sent, ..
        } = self;
        let goodbye = async {
            // A batch the cut interrupted is finished first: its frames were queued before
            // the cut, and a half-written one would turn the goodbye into garbage.
            ws.flush().await?;
            write_counted(ws.get_mut(), out, out_sent).await?;
            for frame in frames {
                ws.feed(frame).await?;
            }
            ws.flush().await?;
            if linger {
                ws.get_mut().shutdown().await?;
            } else {
                // Wait for the client's close reply; tungstenite ends the stream after it.
                while let Some(Ok(_)) = ws.next().await {}
            }
            Ok::<_, WsError>(())
        };
        if let Ok(Err(error)) = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await {
            debug!(connection = %self.id, %error, "close handshake failed");
        }
        if linger {
            let tcp = self.ws.get_mut();
            let mut sink = vec![0u8; 8192];
            let mut drained = 0;
            let drain = async {
                while drained < LINGER_BYTES {
                    match tcp.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => drained += n,
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
        }
    }
}

impl<S> Session<S> {
    /// Leaves every channel and the connection registry. Runs on every end, also when the
    /// task unwinds from a panic (through `Drop`), and does nothing the second time.
    fn leave_channels(&mut self) {
        let left = self.subscriptions.len() as i64;
        HubMetrics::add_signed(&self.shared.metrics.subscriptions, -left);
        for channel in self.subscriptions.drain() {
            self.shared.channels.unsubscribe(&channel, self.id);
        }
        self.shared.connections.remove(self.id);
    }
}

impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        self.leave_channels();
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gone(why) => f.write_str(why),
            Self::Shutdown => f.write_str("server shutting down"),
            Self::Restart => f.write_str("server restarting"),
            Self::SlowConsumer => f.write_str("slow consumer"),
            Self::Stalled => f.write_str("slow consumer (write timeout)"),
            Self::TooBig => f.write_str("message too large"),
            Self::Idle => f.write_str("idle timeout"),
            Self::Unauthorized(why) => write!(f, "unauthorized: {why}"),
            Self::Expired => f.write_str("token expired"),
            Self::Abuse => f.write_str("rate limit exceeded"),
            Self::Protocol { code, why } => write!(f, "protocol error ({code}): {why}"),
        }
    }
}

/// The upgrade callback: refuses foreign origins (403) and bad tokens (401), and records the
/// grant of a good one in `grant` (an open hub grants everything). Tokens come from
/// `?token=` or `Authorization: Bearer`.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn admit(
    shared: &Shared,
    request: &Request,
    response: Response,
    grant: &mut Option<Arc<Grant>>,
    slot: &mut Option<OwnedSemaphorePermit>,
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, reason: &str| {
        let mut error = ErrorResponse::new(Some(reason.to_owned()));
        *error.status_mut() = status;
        error
    };
    let allowed = &shared.config.allowed_origins;
    if let Some(origin) = request.headers().get("origin") {
        let origin = origin.to_str().unwrap_or_default();
        if !allowed.is_empty() && !allowed.iter().any(|a| a == origin) {
            warn!(%origin, "upgrade from a foreign origin refused");
            return Err(refuse(StatusCode::FORBIDDEN, "origin not allowed"));
        }
    }
    // The connection limit counts upgraded connections only: sockets that never finish an
    // upgrade are bounded by WS_MAX_PENDING_UPGRADES instead.
    match shared.connection_slots.clone().try_acquire_owned() {
        Ok(permit) => *slot = Some(permit),
        Err(_) => {
            warn!(
                limit = shared.config.max_connections,
                "connection limit reached (WS_MAX_CONNECTIONS)"
            );
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection limit reached; retry later",
            ));
        }
    }
    let Some(authenticator) = &shared.authenticator else {
        *grant = Some(shared.open_grant.clone());
        return Ok(response);
    };
    let from_query = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(percent_decode)
    });
    let from_header = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let Some(token) = from_header.or(from_query) else {
        return Ok(response);
    };
    match authenticator.authenticate(&token) {
        Ok(granted) => {
            *grant = Some(Arc::new(granted));
            Ok(response)
        }
        Err(e) => {
            warn!(reason = %e, "upgrade with a refused token");
            HubMetrics::add(&shared.metrics.auth_failures, 1);
            Err(refuse(
                StatusCode::UNAUTHORIZED,
                &format!("unauthorized: {e}"),
            ))
        }
    }
}

/// Writes `out[*sent..]`, counting in `sent` what the socket took, so that a write dropped
/// halfway can be finished later.
async fn write_counted<W: AsyncWrite + Unpin>(
    socket: &mut W,
    out: &[u8],
    sent: &AtomicUsize,
) -> Result<(), WsError> {
    loop {
        let from = sent.load(Ordering::Relaxed);
        if from >= out.len() {
            return Ok(());
        }
        match socket.write(&out[from..]).await {
            Ok(0) => return Err(WsError::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => sent.store(from + n, Ordering::Relaxed),
            Err(e) => return Err(WsError::Io(e)),
        }
    }
}

/// `at + duration`, saturating at about 30 years from `at` instead of overflowing (a
/// configured duration can be as large as `Duration::MAX`).
fn after(at: Instant, duration: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    at.checked_add(duration.min(FAR)).unwrap_or(at)
}

/// A reply, as the JSON to write.
fn reply(message: WsMessage) -> Next {
    Next::Reply(message.to_json())
}

/// The `Error` frame (as JSON) reporting a publication the broker refused, if it was.
fn refusal_of_publication(
    channel: &str,
    outcome: Result<Result<Published, BrokerError>, oneshot::error::RecvError>,
) -> Option<String> {
    let error = match outcome {
        Ok(Ok(_)) => return None,
        Ok(Err(error)) => error.to_string(),
        Err(_) => "the broker stopped".to_owned(),
    };
    let error = WsMessage::error(
        codes::UNAVAILABLE,
        format!("not published on {}: {error}", excerpt(channel)),
    );
    Some(error.to_json())
}

/// Decodes `%XX` escapes of a query parameter (JWTs rarely need them, but clients may escape).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(byte) = u8::from_str_radix(hex, 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A close frame; the reason is cut to the 123 bytes a close frame can carry.
fn close_frame(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason[..end].into(),
    }))
}

fn invalid_channel(channel: &str) -> WsMessage {
    WsMessage::error(codes::INVALID_CHANNEL, invalid_channel_name(channel))
}

fn read_error(error: WsError) -> End {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            warn!(size, max_size, "frame over the maximum message size");
            End::TooBig
        }
        WsError::Protocol(error) => End::Protocol {
            code: close::PROTOCOL_ERROR,
            why: error.to_string(),
        },
        WsError::Utf8(error) => End::Protocol {
            code: close::INVALID_PAYLOAD,
            why: format!("invalid UTF-8: {error}"),
        },
        other => End::Gone(format!("read failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding_never_panics() {
        assert_eq!(percent_decode("a%2Eb"), "a.b");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%é1"), "%é1");
    }
}
