//! [`Driver`]: the task behind one of the client's connections: the one owner of its socket,
//! its reconnect loop, its subscriptions and its rotation.
//!
//! It `select!`s over the client's cancellation token, commands from the handles, the shared
//! outbound buffer, room in the arrival queue, inbound frames, the rotation and the heartbeat
//! deadline. It reads from the socket only while little of what it read is still waiting for
//! room in the arrival queue: when the application stops reading, the client soon stops
//! reading too (the server then sees backpressure), and the heartbeat does not take that
//! pause for a dead connection.
//! What it reads goes to the [`Sequencer`](crate::sequencer::Sequencer), which orders and
//! deduplicates across connections.
//!
//! Files: this one (the task's state and how it ends), `reconnect.rs` (the reconnect loop),
//! `serve.rs` (the select loop of a connected socket and what each command and frame calls
//! for), `rotate.rs` (replacing an old connection without a gap), `writes.rs` (writing to the
//! socket), `subscriptions.rs` (the subscription set, pending calls and positions),
//! `decode.rs` (what an inbound frame is) and `arrival.rs` (what the sequencer is handed).

pub(crate) mod arrival;
mod burst;
mod decode;
mod reconnect;
mod rotate;
mod serve;
mod subscriptions;
mod writes;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use ws_protocol::backoff::Backoff;
use ws_protocol::{Position, close};

use self::arrival::Arrival;
use self::subscriptions::Subscriptions;
use crate::acks::Acks;
use crate::arrival_queue::ArrivalSender;
use crate::buffer::{OutboundBuffer, Pending};
use crate::combined_state::CombinedState;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::metrics::Counters;
use crate::settings::Settings;
use crate::state::ConnectionState;

/// How long the client waits for the server's close reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A request from a handle (or the sequencer) to a connection task.
pub(crate) enum Command {
    /// Subscribe to `channels` (with the last `rewind` publications first, if given);
    /// answered once the hub confirms or refuses.
    Subscribe {
        channels: Vec<String>,
        rewind: Option<u64>,
        /// Positions to start from, for channels not yet subscribed.
        since: BTreeMap<String, Position>,
        done: oneshot::Sender<Result<()>>,
    },
    /// Unsubscribe from `channels`; answered at once.
    Unsubscribe {
        channels: Vec<String>,
        done: oneshot::Sender<Result<()>>,
    },
    /// Send request `id` (its whole frame) now if connected, or once connected; never again.
    Request { id: u64, frame: String },
    /// Ask the hub for `channel`'s publications after `since` (a gap).
    Fill { channel: String, since: Position },
    /// Close the connection; answered once it is closed.
    Close { done: oneshot::Sender<()> },
}

/// How a served connection ended.
enum Ended {
    /// `close()`, cancellation, or every handle dropped: stop for good.
    Closed,
    /// Lost; reconnect with backoff.
    Retry(String),
    /// The server refused for good (close 1008 or 1009): do not retry.
    Fatal(String),
}

/// One connection's task. See the module documentation.
pub(crate) struct Driver {
    /// Which of the client's connections this is (0 without redundancy).
    connection: usize,
    url: String,
    settings: Arc<Settings>,
    commands: mpsc::Receiver<Command>,
    buffer: Arc<OutboundBuffer>,
    arrivals: ArrivalSender,
    state: Arc<CombinedState>,
    counters: Arc<Counters>,
    token: CancellationToken,
    /// Publications and requests waiting for an answer, shared by every connection.
    acks: Arc<Acks>,
    /// Requests to send once connected.
    requests: Vec<(u64, String)>,
    subscriptions: Subscriptions,
    batch: VecDeque<Pending>,
    /// Decoded, waiting for room in the arrival queue.
    out: VecDeque<Arrival>,
    /// Data frames and their payload bytes received but not yet added to the shared
    /// counters: added once per burst of reads (see `hand_over_now`), not per frame.
    unreported: (u64, u64),
    /// Frames the last burst of reads brought (see `SHORT_BURST` in `burst.rs`).
    last_burst: usize,
    /// Whether the last connection was to our hub.
    hub: bool,
    /// Whether this connection counts as up in the metrics.
    up: bool,
    /// A hub-level `Ping` arrived and its `Pong` is still to be written.
    owe_pong: bool,
    /// The server's close asked to wait this long before reconnecting ("retry after N ms").
    retry_hint: Option<Duration>,
}

/// Everything a [`Driver`] is built from.
pub(crate) struct DriverParts {
    pub(crate) connection: usize,
    pub(crate) url: String,
    pub(crate) settings: Arc<Settings>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) buffer: Arc<OutboundBuffer>,
    pub(crate) arrivals: ArrivalSender,
    pub(crate) state: Arc<CombinedState>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) token: CancellationToken,
    pub(crate) acks: Arc<Acks>,
    pub(crate) rewind: Option<u64>,
}

impl Driver {
    pub(crate) fn new(parts: DriverParts) -> Self {
        let DriverParts {
            connection,
            url,
            settings,
            commands,
            buffer,
            arrivals,
            state,
            counters,
            token,
            acks,
            rewind,
        } = parts;
        Self {
            connection,
            url,
            settings,
            commands,
            buffer,
            arrivals,
            state,
            counters,
            token,
            acks,
            requests: Vec::new(),
            subscriptions: Subscriptions::new(rewind),
            batch: VecDeque::new(),
            out: VecDeque::new(),
            unreported: (0, 0),
            last_burst: 0,
            hub: false,
            up: false,
            owe_pong: false,
            retry_hint: None,
        }
    }

    fn new_backoff(&self) -> Backoff {
        let s = &self.settings;
        Backoff::new(
            s.reconnect_interval,
            s.max_reconnect_delay,
            s.max_reconnect_attempts,
        )
    }

    fn set_state(&self, state: ConnectionState) {
        self.state.set(self.connection, state);
    }

    fn lifecycle(&self, event: Event) {
        // Lifecycle events are advisory (the state and metrics always tell the same); they
        // are not worth stalling the connection for an application that does not read them.
        if !self.arrivals.offer(Arrival::Event(event)) {
            debug!("event queue full; lifecycle event not queued");
        }
    }

    fn fail(self, reason: String) {
        warn!(url = %self.url, connection = self.connection, %reason, "connection failed");
        let error = Error::Failed(reason.clone());
        self.finish(ConnectionState::Failed { reason }, error);
    }

    /// Adds what was received since the last report to the shared counters.
    fn report_received(&mut self) {
        let (frames, bytes) = std::mem::take(&mut self.unreported);
        if frames > 0 {
            Counters::add(&self.counters.messages_received, frames);
            Counters::add(&self.counters.bytes_received, bytes);
        }
    }

    fn finish(mut self, state: ConnectionState, error: Error) {
        self.report_received();
        self.subscriptions.fail_pending(&error);
        for (id, _) in self.requests.drain(..) {
            self.acks
                .not_sent(id, format!("the connection ended: {error}"));
        }
        // Another connection may still send what this one had not got acknowledged.
        self.buffer
            .requeue_acked(self.acks.connection_lost(self.connection));
        self.set_state(state);
    }
}

fn not_a_hub() -> Error {
    Error::Subscribe(
        "the server does not speak the hub protocol; register on-connect frames instead".to_owned(),
    )
}

/// How a connection that ended with `error` (after `close`, if the server sent one) is treated.
fn ended_by(close: Option<&CloseFrame>, error: &str) -> Ended {
    match close {
        Some(frame) if !close::is_retryable(u16::from(frame.code)) => Ended::Fatal(format!(
            "the server closed with {} ({})",
            u16::from(frame.code),
            frame.reason
        )),
        Some(frame) => Ended::Retry(format!(
            "the server closed with {} ({})",
            u16::from(frame.code),
            frame.reason
        )),
        None => Ended::Retry(error.to_owned()),
    }
}
