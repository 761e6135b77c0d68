//! One connection: the task that owns its socket from the upgrade to the close.
//!
//! A single task waits on the connection's [`Outbox`] (which also carries the slow-consumer
//! cut and shutdown), inbound frames, the ping timer and the idle deadline, alternating which
//! of output and input it looks at first. Replies to the client's own frames (`Pong`,
//! `Subscribed`, `Error`) are written at once by this task, so they never wait behind queued
//! publications and are never dropped; publications are drained from the outbox in batches
//! and written with one flush.
//!
//! Files: this one (the upgrade and the task's loop, its timer), `admission.rs` (what an
//! upgrade must bring), `commands.rs` (what each client frame calls for), `writer.rs`
//! (replies, batches, the write guard and its timeout), `ending.rs` (why a connection ends
//! and the close handshake).

mod admission;
mod commands;
mod ending;
mod writer;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, warn};
use ws_protocol::{Payload, Position, WsMessage};

use crate::auth::Grant;
use crate::broker::BrokerError;
use crate::channel::Published;
use crate::connections::ConnectionId;
use crate::metrics::HubMetrics;
use crate::outbox::{Notice, Outbox, OutboxState, Outgoing};
use crate::rate_limit::RateLimit;
use crate::read_ahead::ReadAhead;
use crate::server::Shared;
use crate::upgrade_request;

use self::admission::admit;
use self::commands::refusal_of_publication;
use self::ending::{End, read_error};

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
