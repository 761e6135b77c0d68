//! One connection: the task that owns its socket from the upgrade to the close, around a
//! [`Core`] that decides everything without I/O.
//!
//! The task only reads, feeds, writes and waits. It waits on the connection's [`Outbox`]
//! (which also carries the slow-consumer cut and shutdown), inbound frames, the one timer the
//! core asks for, and the outcome of pipelined publications, alternating which of output and
//! input it looks at first. Each frame and each timer goes to the core with the time, and
//! the task does the [`Step`] it returns. Replies to the client's own frames (`Pong`,
//! `Subscribed`, `Error`) are written at once, so they never wait behind queued publications
//! and are never dropped; publications are drained from the outbox in batches and written
//! with one flush.
//!
//! Files: this one (the task's loop), `upgrade.rs` (the WebSocket upgrade, bounded in time),
//! `admission.rs` (what an upgrade must bring), `subprotocol.rs` (JSON or MessagePack, as the
//! upgrade agreed), `compression.rs` (permessage-deflate, if the upgrade agreed), `core.rs` (the connection's state and decisions, with unit tests in
//! `core/tests.rs`), `command/` (one file per client command), `writer.rs` (replies, batches,
//! the write guard and its timeout), `ending.rs` (why a connection ends and the close
//! handshake).

mod ack_run;
mod admission;
mod command;
mod compression;
mod core;
mod ending;
mod subprotocol;
mod upgrade;
mod writer;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::task::Poll;

use futures_util::StreamExt;
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, warn};
use ws_protocol::WsMessage;

use crate::broker::{BrokerError, Submission};
use crate::channel::Published;
use crate::hub::Hub;
use crate::metrics::HubMetrics;
use crate::outbox::{Notice, Outbox, Outgoing};

use self::ack_run::{AckRun, Answer};
use self::command::publish::PublishBody;
use self::command::subscribe::SubscribeRequest;
use self::core::{Core, Step};
use self::ending::{End, read_error};
use self::upgrade::{Upgraded, upgrade};

/// Upgrades `stream` and runs the connection to its end. Errors are logged, never returned.
/// `upgrading` is the connection's place among the pending upgrades, given back once the
/// upgrade is done; the upgrade takes a place among the open connections instead.
pub(crate) async fn run<S>(
    hub: Arc<Hub>,
    stream: S,
    peer: SocketAddr,
    upgrading: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = &hub.config;
    // Boxed: the handshake's state is large and only lives until the upgrade, so it is not
    // kept in every idle connection's task. (Destructured at once rather than kept in a
    // variable, which would keep its room in every idle connection's task.)
    let Some(Upgraded {
        ws,
        grant,
        slot: _slot,
        encoding,
        deflate_window,
    }) = Box::pin(upgrade(&hub, stream, peer, upgrading)).await
    else {
        return;
    };

    let id = hub.connections.next_id();
    let outbox = Arc::new(
        Outbox::new(
            config.send_queue_size,
            config.history_size,
            config.slow_consumer_policy,
        )
        .with_max_bytes(config.send_queue_bytes),
    );
    hub.connections.insert(id, outbox.clone());
    if hub.token.is_cancelled() {
        // Shutdown began while this connection was upgrading: close it like the others.
        outbox.close();
    }
    debug!(connection = %id, %peer, "connection opened");
    HubMetrics::add(&hub.metrics.connections_total, 1);

    let mut session = Session {
        core: Core::new(hub.clone(), id, outbox, grant, Instant::now())
            .speaking(encoding, deflate_window),
        ws,
        batch: VecDeque::new(),
        notices: Vec::new(),
        signal_pending: false,
        unflushed: false,
        publishing: VecDeque::new(),
        ack_run: None,
        out: Vec::new(),
        out_sent: AtomicUsize::new(0),
    };
    let end = session.run().await;
    match &end {
        End::SlowConsumer | End::Stalled => {
            HubMetrics::add(&hub.metrics.slow_consumer_disconnects, 1);
        }
        End::Unauthorized(_) => HubMetrics::add(&hub.metrics.auth_failures, 1),
        _ => {}
    }
    session.core.leave();
    // Boxed like the upgrade: only an ending connection needs the close's state.
    Box::pin(session.close(&end)).await;
    if matches!(end, End::SlowConsumer) {
        warn!(connection = %id, %peer, "slow consumer cut: its queue was full (WS_SEND_QUEUE_SIZE {} messages, WS_SEND_QUEUE_BYTES {} bytes)", hub.config.send_queue_size, hub.config.send_queue_bytes);
    } else if matches!(end, End::Stalled) {
        warn!(connection = %id, %peer, "slow consumer cut: a write made no progress for {:?} (WS_WRITE_TIMEOUT)", hub.config.write_timeout);
    } else {
        debug!(connection = %id, %peer, reason = %end, "connection closed");
    }
}

/// What woke the connection's task.
enum Wake {
    /// The outbox has frames, or was closed or overflowed.
    Outbox,
    /// A frame (or the end) from the client.
    Frame(Option<Result<Message, WsError>>),
    /// The ping, idle or deadline timer fired.
    Timer,
    /// Replies were written since the last flush, and nothing else is ready.
    Flush,
    /// The oldest pipelined publication is done (or refused).
    Published(Result<Result<Published, BrokerError>, oneshot::error::RecvError>),
}

/// The connection's task: the socket, the write buffers, and the [`Core`] it feeds.
struct Session<S> {
    core: Core,
    ws: WebSocketStream<S>,
    batch: VecDeque<Outgoing>,
    notices: Vec<Notice>,
    /// The outbox signalled while a write was in progress: drain it next.
    signal_pending: bool,
    /// Replies were handed to the socket and not flushed yet (see [`Wake::Flush`]).
    unflushed: bool,
    /// Publications handed to the broker and not yet done, oldest first (Redis broker), with
    /// their channel and `id`.
    publishing: VecDeque<InFlight>,
    /// Acknowledgements waiting to go out as one `Published` (boxed: most connections never
    /// have one).
    ack_run: Option<Box<AckRun>>,
    /// The bytes of one batch of queued frames, written with one call.
    out: Vec<u8>,
    /// How much of `out` the socket took. Short of `out.len()` only when a write was cut off
    /// (a slow consumer, shutdown): the close then finishes it first, so that no frame is
    /// left half written in front of the goodbye. Atomic only so that the write timeout can
    /// watch it move while the write holds it.
    out_sent: AtomicUsize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn run(&mut self) -> End {
        // (An echo server for conformance testing speaks only when spoken to.)
        #[cfg(feature = "conformance")]
        let greet = !self.core.hub.echo;
        #[cfg(not(feature = "conformance"))]
        let greet = true;
        if greet && let Err(end) = self.send_text(self.core.greeting()).await {
            return end;
        }
        // One timer for the ping, the idle check and the authentication or expiry deadline:
        // it is set to whichever comes first.
        let timer = tokio::time::sleep_until(self.core.next_wake());
        tokio::pin!(timer);
        // Alternates which of queued output and inbound frames is looked at first, so that
        // neither can starve the other.
        let mut output_first = true;

        loop {
            let wake = if std::mem::take(&mut self.signal_pending) {
                Wake::Outbox
            } else {
                output_first = !output_first;
                let (outbox, ws) = (&self.core.outbox, &mut self.ws);
                let publishing = &mut self.publishing;
                let unflushed = self.unflushed;
                let mut timer = timer.as_mut();
                std::future::poll_fn(|cx| {
                    if let Some((_, _, reply)) = publishing.front_mut()
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
                    // Nothing more to read or write now: the replies written meanwhile go out
                    // before the task waits, in one system call.
                    if unflushed {
                        return Poll::Ready(Wake::Flush);
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
                    let step = match self.core.on_message(message, Instant::now()) {
                        Ok(step) => self.perform(step).await,
                        Err(end) => Err(end),
                    };
                    // Frames already buffered are read without touching the socket, so a
                    // publisher's burst would never yield: spend the task's cooperative
                    // budget so that subscribers get to drain between its publications.
                    tokio::task::consume_budget().await;
                    step
                }
                Wake::Published(outcome) => match self.publishing.pop_front() {
                    Some((channel, answer, _)) => {
                        Box::pin(self.answer_publication(channel, answer, outcome)).await
                    }
                    None => Ok(()),
                },
                Wake::Frame(Some(Err(error))) => Err(read_error(error)),
                Wake::Frame(None) => Err(End::Gone("connection closed by client".to_owned())),
                Wake::Flush => self.flush_replies().await,
                Wake::Timer => match self.core.on_timer(Instant::now()) {
                    Ok(step) => self.perform(step).await,
                    Err(end) => Err(end),
                },
            };
            if let Err(end) = step {
                return end;
            }
            // A new grant may have moved the deadline.
            let wake_at = self.core.next_wake();
            if timer.deadline() != wake_at {
                timer.as_mut().reset(wake_at);
            }
        }
    }

    /// Does what the core asked for. Each arm has one await, so that the task's state is the
    /// largest of them rather than their sum; the rare commands are boxed, so that the state
    /// of their awaits is allocated while they run, not carried by every idle connection.
    async fn perform(&mut self, step: Step) -> Result<(), End> {
        match step {
            Step::Nothing => Ok(()),
            Step::Reply(text) => self.send_text(text).await,
            Step::Ping => self.write_now(Message::Ping(Default::default())).await,
            #[cfg(feature = "conformance")]
            Step::Echo(message) => self.write_now(message).await,
            Step::Publish {
                body,
                id,
                ack_range,
                at,
            } => {
                let answer = Answer {
                    id,
                    ranged: ack_range,
                };
                self.publish(body, answer, at).await
            }
            Step::Replies(texts) => Box::pin(self.send_texts(texts)).await,
            Step::Subscribe(request) => Box::pin(self.subscribe(request)).await,
            Step::Forward(message) => Box::pin(self.forward(message)).await,
            Step::Request { id, method, data } => {
                let core = &self.core;
                let subject = core.grant.as_ref().and_then(|g| g.user_id.clone());
                let refused = crate::requests::ask(
                    &core.hub,
                    &core.outbox,
                    core.id,
                    subject,
                    id,
                    method,
                    data,
                );
                match refused {
                    Some(text) => self.send_text(text).await,
                    None => Ok(()),
                }
            }
        }
    }

    async fn send_texts(&mut self, texts: Vec<String>) -> Result<(), End> {
        for text in texts {
            self.send_text(text).await?;
        }
        Ok(())
    }

    /// Attaches the channels of a `Subscribe` to the broker, then lets the core subscribe.
    async fn subscribe(&mut self, request: SubscribeRequest) -> Result<(), End> {
        let attached = self.core.hub.attach(&request.channels).await;
        match self.core.subscribe(request, attached) {
            Step::Reply(text) => self.send_text(text).await,
            _ => Ok(()),
        }
    }

    /// Hands an application frame to the application, waiting while its queue is full.
    async fn forward(&mut self, message: WsMessage) -> Result<(), End> {
        let kind = message.kind();
        let hub = &self.core.hub;
        let refused = match hub.incoming_sender() {
            None => true,
            Some(sender) => tokio::select! {
                () = hub.token.cancelled() => return Err(End::Shutdown),
                sent = sender.send((self.core.id, message)) => sent.is_err(),
            },
        };
        if refused {
            let text = self.core.forward_refused(kind);
            return self.send_text(text).await;
        }
        Ok(())
    }

    /// Hands a publication to the broker and answers it (see [`Session::answer_publication`]).
    /// The embedded broker publishes at once; with Redis a publication travels pipelined and
    /// its outcome is answered when it arrives, in order.
    async fn publish(&mut self, body: PublishBody, answer: Answer, at: Instant) -> Result<(), End> {
        let hub = &self.core.hub;
        let submitted = match hub.submit(body.channel(), body.data(), body.key(), at) {
            Either::Left(done) => done.into_inner(),
            Either::Right(later) => later.await,
        };
        let (channel, answer, outcome) = match submitted {
            // Published without an `id`: nothing to answer (only an `id` or a refusal is).
            Ok(Submission::Done(_)) if answer.id.is_none() => return Ok(()),
            Ok(Submission::Done(published)) => {
                (body.channel().to_owned(), answer, Ok(Ok(published)))
            }
            Ok(Submission::Queued(reply)) => {
                let channel = body.channel().to_owned();
                self.publishing.push_back((channel, answer, reply));
                if self.publishing.len() <= MAX_PUBLISHING {
                    return Ok(());
                }
                let Some((channel, answer, reply)) = self.publishing.pop_front() else {
                    return Ok(());
                };
                (channel, answer, reply.await)
            }
            Err(error) => (body.channel().to_owned(), answer, Ok(Err(error))),
        };
        Box::pin(self.answer_publication(channel, answer, outcome)).await
    }
}

/// Publications of one connection that may travel to the broker at once (pipelined); the
/// next waits for the oldest.
const MAX_PUBLISHING: usize = 256;

/// A publication handed to the broker: its channel, how to answer it, and where its
/// outcome comes.
type InFlight = (
    String,
    Answer,
    oneshot::Receiver<Result<Published, BrokerError>>,
);
