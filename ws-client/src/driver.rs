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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc::OwnedPermit;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use ws_protocol::{ChannelPosition, Position, WsMessage, close};

use crate::backoff::Backoff;
use crate::buffer::{Outbound, OutboundBuffer, Pending};
use crate::combined_state::CombinedState;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::heartbeat::{Beat, Heartbeat};
use crate::link::{Link, Socket, open};
use crate::metrics::Counters;
use crate::rotation::{Rotation, Step, Successor};
use crate::sequencer::{Arrival, Asked};
use crate::settings::Settings;
use crate::state::ConnectionState;

/// How long the client waits for the server's close reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most frames decoded ahead of the arrival queue while resubscribing.
const MAX_STASH: usize = 4096;
/// The most arrivals decoded ahead of room in the arrival queue while serving. A little
/// read-ahead lets control replies (such as the `Subscribed` a `subscribe` call waits for)
/// through while the application is not reading yet; beyond it the socket is not read, so
/// the server sees backpressure.
const READ_AHEAD: usize = 64;

/// A request from a handle (or the sequencer) to a connection task.
pub(crate) enum Command {
    Subscribe {
        channels: Vec<String>,
        done: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        channels: Vec<String>,
        done: oneshot::Sender<Result<()>>,
    },
    /// Ask the hub for `channel`'s publications after `since` (a gap).
    Fill {
        channel: String,
        since: Position,
    },
    Close {
        done: oneshot::Sender<()>,
    },
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

/// A `subscribe` call waiting for the hub's `Subscribed` (or its refusal).
struct PendingSubscribe {
    channels: Vec<String>,
    /// The channels it added to the subscriptions (not subscribed before).
    added: Vec<String>,
    done: oneshot::Sender<Result<()>>,
}

/// Where this connection stands in a channel: the epoch it subscribed in and the highest
/// `seq` it received.
struct LegPosition {
    epoch: Arc<str>,
    seq: u64,
}

/// One connection's task. See the module documentation.
pub(crate) struct Driver {
    leg: usize,
    url: String,
    settings: Arc<Settings>,
    commands: mpsc::Receiver<Command>,
    buffer: Arc<OutboundBuffer>,
    arrivals: mpsc::Sender<Arrival>,
    state: Arc<CombinedState>,
    counters: Arc<Counters>,
    token: CancellationToken,
    subscriptions: BTreeSet<String>,
    pending: Vec<PendingSubscribe>,
    batch: VecDeque<Pending>,
    /// Decoded, waiting for room in the arrival queue.
    out: VecDeque<Arrival>,
    /// Whether the last connection was to our hub.
    hub: bool,
    /// Whether this connection counts as up in the metrics.
    up: bool,
    /// A hub-level `Ping` arrived and its `Pong` is still to be written.
    owe_pong: bool,
    /// The server's close asked to wait this long before reconnecting ("retry after N ms").
    retry_hint: Option<Duration>,
    positions: HashMap<String, LegPosition>,
    /// What each outstanding `Subscribe` asked for, by channel.
    asked: HashMap<String, Asked>,
}

/// Everything a [`Driver`] is built from.
pub(crate) struct DriverParts {
    pub(crate) leg: usize,
    pub(crate) url: String,
    pub(crate) settings: Arc<Settings>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) buffer: Arc<OutboundBuffer>,
    pub(crate) arrivals: mpsc::Sender<Arrival>,
    pub(crate) state: Arc<CombinedState>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) token: CancellationToken,
}

impl Driver {
    pub(crate) fn new(parts: DriverParts) -> Self {
        let DriverParts {
            leg,
            url,
            settings,
            commands,
            buffer,
            arrivals,
            state,
            counters,
            token,
        } = parts;
        Self {
            leg,
            url,
            settings,
            commands,
            buffer,
            arrivals,
            state,
            counters,
            token,
            subscriptions: BTreeSet::new(),
            pending: Vec::new(),
            batch: VecDeque::new(),
            out: VecDeque::new(),
            hub: false,
            up: false,
            owe_pong: false,
            retry_hint: None,
            positions: HashMap::new(),
            asked: HashMap::new(),
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
        self.state.set(self.leg, state);
    }

    /// Runs the connection from its first attempt (`first`, made by the builder) to its end.
    pub(crate) async fn run(mut self, first: std::result::Result<Link, String>) {
        let mut backoff = self.new_backoff();
        let mut attempt = 0u32;
        let mut reconnected = false;
        let (mut link, mut last_error) = match first {
            Ok(link) => (Some(link), String::new()),
            Err(error) if self.settings.auto_reconnect => (None, error),
            Err(error) => return self.fail(format!("connect failed: {error}")),
        };
        loop {
            let mut hint = None;
            let mut quick = false;
            if let Some(opened) = link.take() {
                let connected_at = Instant::now();
                let ended = self.serve(opened, reconnected).await;
                if std::mem::take(&mut self.up) {
                    self.counters.disconnected();
                }
                let reason = match ended {
                    Ended::Closed => {
                        return self.finish(ConnectionState::Disconnected, Error::Closed);
                    }
                    Ended::Fatal(reason) => return self.fail(reason),
                    Ended::Retry(reason) => reason,
                };
                Counters::add(&self.counters.errors, 1);
                if !self.settings.auto_reconnect {
                    return self.fail(format!("connection lost: {reason}"));
                }
                warn!(url = %self.url, connection = self.leg, %reason, "connection lost; reconnecting");
                self.lifecycle(Event::Disconnected {
                    connection: self.leg,
                    reason: reason.clone(),
                });
                if connected_at.elapsed() >= self.settings.healthy_after {
                    // An established connection dropped: retry soon, then back off.
                    backoff = self.new_backoff();
                    attempt = 0;
                    quick = true;
                }
                last_error = reason;
                hint = self.retry_hint.take();
            }
            // A hinted wait (the server's 1012 close) replaces the first backoff delay,
            // jittered over [hint, 2 × hint] so that clients come back spread out.
            let next = match hint {
                Some(hint) => Some(hint + hint.mul_f64(fastrand::f64())),
                None if quick => {
                    let window = self.settings.first_retry_window;
                    Some(window / 4 + (window - window / 4).mul_f64(fastrand::f64()))
                }
                None => backoff.next(),
            };
            let Some(delay) = next else {
                return self.fail(format!(
                    "gave up after {attempt} reconnect attempts; last error: {last_error}"
                ));
            };
            attempt += 1;
            self.set_state(ConnectionState::Reconnecting { attempt });
            debug!(attempt, ?delay, "waiting before reconnecting");
            let sleep = tokio::time::sleep(delay);
            if self.idle_until(sleep).await.is_none() {
                return self.finish(ConnectionState::Disconnected, Error::Closed);
            }
            let settings = self.settings.clone();
            let url = self.url.clone();
            let opening = open(&settings, &url);
            match self.idle_until(opening).await {
                None => return self.finish(ConnectionState::Disconnected, Error::Closed),
                Some(Ok(opened)) => {
                    Counters::add(&self.counters.reconnects, 1);
                    reconnected = true;
                    link = Some(opened);
                }
                Some(Err(error)) => {
                    debug!(attempt, %error, "reconnect attempt failed");
                    Counters::add(&self.counters.errors, 1);
                    last_error = error;
                }
            }
        }
    }

    /// Awaits `fut` while serving commands as a disconnected client would; `None` if the
    /// client was closed meanwhile.
    async fn idle_until<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                () = self.token.cancelled() => return None,
                command = self.commands.recv() => match command {
                    None => return None,
                    Some(Command::Close { done }) => {
                        let _ = done.send(());
                        return None;
                    }
                    Some(Command::Subscribe { channels, done }) => {
                        if !self.hub {
                            let _ = done.send(Err(not_a_hub()));
                            continue;
                        }
                        self.add_pending(channels, done);
                    }
                    Some(Command::Unsubscribe { channels, done }) => {
                        for channel in &channels {
                            self.subscriptions.remove(channel);
                            self.positions.remove(channel);
                        }
                        let _ = done.send(Ok(()));
                    }
                    // Another connection may fill it; otherwise the gap times out.
                    Some(Command::Fill { channel, .. }) => {
                        debug!(%channel, "gap fill asked of a connection that is down");
                    }
                },
                output = &mut fut => return Some(output),
            }
        }
    }

    fn lifecycle(&self, event: Event) {
        // Lifecycle events are advisory (the state and metrics always tell the same); they
        // are not worth stalling the connection for an application that does not read them.
        if self.arrivals.try_send(Arrival::Event(event)).is_err() {
            debug!("event queue full; lifecycle event not queued");
        }
    }

    fn fail(self, reason: String) {
        warn!(url = %self.url, connection = self.leg, %reason, "connection failed");
        let error = Error::Failed(reason.clone());
        self.finish(ConnectionState::Failed { reason }, error);
    }

    fn finish(mut self, state: ConnectionState, error: Error) {
        for pending in self.pending.drain(..) {
            let _ = pending.done.send(Err(error.clone()));
        }
        self.set_state(state);
    }

    /// Restores subscriptions (or sends the application's on-connect frames), then serves the
    /// connection until it ends.
    async fn serve(&mut self, link: Link, reconnected: bool) -> Ended {
        let Link { mut ws, hub, early } = link;
        self.hub = hub.is_some();
        let restored = match hub {
            Some(_) => self.resubscribe(&mut ws).await,
            None => self.send_on_connect(&mut ws).await,
        };
        if let Err(ended) = restored {
            return ended;
        }
        if let Some(frame) = early {
            self.decode(frame, &mut Heartbeat::disabled());
        }
        self.up = true;
        self.counters.connected();
        self.set_state(ConnectionState::Connected);
        info!(url = %self.url, connection = self.leg, connection_id = ?hub, reconnected, "connected");
        self.lifecycle(Event::Connected {
            connection: self.leg,
            connection_id: hub,
            reconnected,
        });

        let settings = self.settings.clone();
        let mut heartbeat = Heartbeat::new(
            settings.ping_interval,
            settings.pong_timeout,
            settings.stale_timeout,
            Instant::now(),
        );
        let mut rotation = Rotation::new(settings.max_connection_age, Instant::now());
        let mut permit: Option<OwnedPermit<Arrival>> = None;
        let mut close_frame: Option<CloseFrame> = None;
        loop {
            // Hand over what was decoded before reading more.
            if permit.is_some() && !self.out.is_empty() {
                if let (Some(p), Some(arrival)) = (permit.take(), self.out.pop_front()) {
                    p.send(arrival);
                }
                continue;
            }
            let expecting_data = !self.hub || !self.subscriptions.is_empty();
            let reading = self.out.len() < READ_AHEAD;
            let deadline = heartbeat.deadline(expecting_data, reading);
            tokio::select! {
                biased;
                () = self.token.cancelled() => return self.close(&mut ws).await,
                command = self.commands.recv() => match command {
                    None => return self.close(&mut ws).await,
                    Some(Command::Close { done }) => {
                        let ended = self.close(&mut ws).await;
                        let _ = done.send(());
                        return ended;
                    }
                    Some(command) => if let Err(ended) = self.command(&mut ws, command).await {
                        return ended;
                    },
                },
                () = self.buffer.ready() => if let Err(ended) = self.write_buffered(&mut ws).await {
                    return ended;
                },
                reserved = self.arrivals.clone().reserve_owned(), if permit.is_none() => match reserved {
                    Ok(p) => {
                        heartbeat.resume(Instant::now());
                        permit = Some(p);
                    }
                    // The receiver lives as long as the handles: they are all gone.
                    Err(_) => return self.close(&mut ws).await,
                },
                frame = ws.next(), if reading => match frame {
                    Some(Ok(Message::Close(frame))) => {
                        heartbeat.on_frame();
                        close_frame = frame;
                    }
                    Some(Ok(frame)) => {
                        self.decode(frame, &mut heartbeat);
                        if std::mem::take(&mut self.owe_pong)
                            && let Err(ended) = self.write_now(&mut ws, WsMessage::Pong.to_json()).await {
                                return ended;
                            }
                    }
                    end @ (Some(Err(_)) | None) => {
                        let why = match end {
                            Some(Err(error)) => error.to_string(),
                            _ => "the server closed the connection".to_owned(),
                        };
                        self.retry_hint = close_frame.as_ref().and_then(|f| close::retry_after(&f.reason));
                        return ended_by(close_frame.as_ref(), &why);
                    }
                },
                step = rotation.next(reading), if rotation.is_on() => {
                    if let Some(successor) = self.rotate(step, &mut rotation).await {
                        let mut old = std::mem::replace(&mut ws, successor);
                        // The new connection has caught up: the old one may go.
                        let goodbye = CloseFrame { code: CloseCode::Normal, reason: "rotated".into() };
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, old.send(Message::Close(Some(goodbye)))).await;
                        heartbeat = Heartbeat::new(
                            settings.ping_interval,
                            settings.pong_timeout,
                            settings.stale_timeout,
                            Instant::now(),
                        );
                        close_frame = None;
                        Counters::add(&self.counters.rotations, 1);
                        rotation = Rotation::new(settings.max_connection_age, Instant::now());
                        info!(url = %self.url, connection = self.leg, "connection rotated");
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    match heartbeat.poll(Instant::now(), expecting_data, reading) {
                        Some(Beat::Ping(nonce)) => {
                            let ping = Message::Ping(nonce.to_be_bytes().to_vec().into());
                            if let Err(e) = ws.send(ping).await {
                                return Ended::Retry(format!("ping failed: {e}"));
                            }
                        }
                        Some(Beat::Dead) => {
                            return Ended::Retry(format!(
                                "no frame within {:?} of a ping (dead connection)",
                                settings.pong_timeout
                            ));
                        }
                        Some(Beat::Stale) => {
                            return Ended::Retry(format!(
                                "no data for {:?} (stale feed)",
                                settings.stale_timeout.unwrap_or_default()
                            ));
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// Moves a rotation on by one step; returns the new socket once it has caught up.
    async fn rotate(&mut self, step: Step, rotation: &mut Rotation) -> Option<Socket> {
        let retry_later = |rotation: &mut Rotation, settings: &Settings| {
            *rotation = Rotation::Due(Instant::now() + settings.reconnect_interval);
        };
        match step {
            Step::Start => {
                let (settings, url) = (self.settings.clone(), self.url.clone());
                rotation.open(async move { open(&settings, &url).await });
                None
            }
            Step::Opened(opened) => {
                let link = match *opened {
                    Ok(link) => link,
                    Err(error) => {
                        warn!(url = %self.url, %error, "rotation: the new connection failed; retrying later");
                        retry_later(rotation, &self.settings);
                        return None;
                    }
                };
                let Link { mut ws, hub, .. } = link;
                if hub.is_none() || self.subscriptions.is_empty() {
                    // Nothing to catch up with (or no way to tell, on a plain server): the
                    // new connection takes over once its on-connect frames are sent.
                    if hub.is_none() && self.send_on_connect(&mut ws).await.is_err() {
                        retry_later(rotation, &self.settings);
                        return None;
                    }
                    return Some(ws);
                }
                let (frame, since) = self.resubscribe_frame();
                if let Err(error) = ws.send(Message::text(frame)).await {
                    warn!(%error, "rotation: resubscribe failed; retrying later");
                    retry_later(rotation, &self.settings);
                    return None;
                }
                *rotation = Rotation::CatchingUp(Box::new(Successor {
                    ws,
                    targets: None,
                    reached: since.into_iter().map(|(c, p)| (c, p.seq)).collect(),
                    deadline: Instant::now() + self.settings.connect_timeout,
                }));
                None
            }
            Step::Frame(Some(Ok(Message::Text(text)))) => {
                let Rotation::CatchingUp(successor) = rotation else {
                    return None;
                };
                if let Ok(WsMessage::Subscribed {
                    channels,
                    positions,
                }) = WsMessage::from_json(text.as_str())
                {
                    successor.targets =
                        Some(positions.iter().map(|(c, p)| (c.clone(), p.seq)).collect());
                    self.on_subscribed(&channels, positions);
                } else {
                    self.decode(Message::Text(text), &mut Heartbeat::disabled());
                    if let Some(Arrival::Publication { channel, seq, .. }) = self.out.back() {
                        let reached = successor.reached.entry(channel.clone()).or_default();
                        *reached = (*reached).max(*seq);
                    }
                    if std::mem::take(&mut self.owe_pong) {
                        let _ = successor
                            .ws
                            .send(Message::text(WsMessage::Pong.to_json()))
                            .await;
                    }
                }
                if !successor.caught_up() {
                    return None;
                }
                let Rotation::CatchingUp(successor) = std::mem::replace(rotation, Rotation::Off)
                else {
                    return None;
                };
                Some(successor.ws)
            }
            Step::Frame(Some(Ok(_))) => None,
            Step::Frame(end) => {
                warn!(?end, "rotation: the new connection ended; retrying later");
                retry_later(rotation, &self.settings);
                None
            }
            Step::TimedOut => {
                warn!("rotation: the new connection did not catch up in time; retrying later");
                retry_later(rotation, &self.settings);
                None
            }
        }
    }

    /// The `Subscribe` restoring every subscription, with this connection's positions.
    fn resubscribe_frame(&mut self) -> (String, BTreeMap<String, Position>) {
        let channels: Vec<String> = self.subscriptions.iter().cloned().collect();
        let since: BTreeMap<String, Position> = channels
            .iter()
            .filter_map(|c| {
                self.positions.get(c).map(|p| {
                    let position = Position {
                        epoch: p.epoch.to_string(),
                        seq: p.seq,
                    };
                    (c.clone(), position)
                })
            })
            .collect();
        for channel in &channels {
            let asked = if since.contains_key(channel) {
                Asked::Resumed
            } else {
                Asked::Fresh
            };
            self.asked.insert(channel.clone(), asked);
        }
        let frame = WsMessage::Subscribe {
            channels,
            since: since.clone(),
        }
        .to_json();
        (frame, since)
    }

    /// Sends `Subscribe` for every channel and waits for `Subscribed`, decoding other frames.
    async fn resubscribe(&mut self, ws: &mut Socket) -> std::result::Result<(), Ended> {
        if self.subscriptions.is_empty() {
            return Ok(());
        }
        // Ask for what was missed since the last publication seen on each channel.
        let (frame, _) = self.resubscribe_frame();
        let timeout = self.settings.connect_timeout;
        let token = self.token.clone();
        let exchange = async {
            ws.send(Message::text(frame))
                .await
                .map_err(|e| e.to_string())?;
            let mut heartbeat = Heartbeat::disabled();
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        match WsMessage::from_json(text.as_str()) {
                            Ok(WsMessage::Subscribed {
                                channels,
                                positions,
                            }) => return Ok((channels, positions)),
                            Ok(WsMessage::Error {
                                code,
                                message,
                                channels,
                            }) if !channels.is_empty() => {
                                self.refused(&channels, &code, &message);
                                return Err(format!(
                                    "the hub refused the resubscribe: {code}: {message}"
                                ));
                            }
                            _ => {}
                        }
                        if self.out.len() >= MAX_STASH {
                            return Err("too many frames before Subscribed".to_owned());
                        }
                        self.decode(Message::Text(text), &mut heartbeat);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the server closed the connection".to_owned()),
                }
            }
        };
        let (channels, positions) = tokio::select! {
            () = token.cancelled() => return Err(Ended::Closed),
            result = tokio::time::timeout(timeout, exchange) => match result {
                Err(_) => return Err(Ended::Retry(format!("no Subscribed within {timeout:?}"))),
                Ok(Err(e)) => return Err(Ended::Retry(format!("resubscribe failed: {e}"))),
                Ok(Ok(confirmed)) => confirmed,
            },
        };
        Counters::add(&self.counters.messages_sent, 1);
        self.on_subscribed(&channels, positions);
        Ok(())
    }

    async fn send_on_connect(&mut self, ws: &mut Socket) -> std::result::Result<(), Ended> {
        for frame in &self.settings.on_connect {
            ws.feed(Message::text(frame.clone()))
                .await
                .map_err(|e| Ended::Retry(format!("on-connect frame failed: {e}")))?;
            Counters::add(&self.counters.messages_sent, 1);
        }
        ws.flush()
            .await
            .map_err(|e| Ended::Retry(format!("on-connect frames failed: {e}")))
    }

    /// Takes in a `Subscribed`: remembers where each channel stands (a recovered position
    /// keeps counting from what was seen, as the replay follows), tells the sequencer, and
    /// resolves the `subscribe` calls it confirms.
    fn on_subscribed(&mut self, channels: &[String], positions: BTreeMap<String, ChannelPosition>) {
        for (channel, position) in positions {
            let asked = self.asked.remove(&channel).unwrap_or(Asked::Fresh);
            if !self.subscriptions.contains(&channel) {
                continue;
            }
            let keep = position.recovered
                && self
                    .positions
                    .get(&channel)
                    .is_some_and(|p| *p.epoch == position.epoch);
            if !keep {
                self.positions.insert(
                    channel.clone(),
                    LegPosition {
                        epoch: Arc::from(position.epoch.as_str()),
                        seq: position.seq,
                    },
                );
            }
            self.out.push_back(Arrival::Position {
                leg: self.leg,
                channel,
                position,
                asked,
            });
        }
        self.confirm(channels);
    }

    /// Remembers a `subscribe` call until the hub answers it.
    fn add_pending(&mut self, channels: Vec<String>, done: oneshot::Sender<Result<()>>) {
        let added = channels
            .iter()
            .filter(|c| !self.subscriptions.contains(*c))
            .cloned()
            .collect();
        self.subscriptions.extend(channels.iter().cloned());
        self.pending.push(PendingSubscribe {
            channels,
            added,
            done,
        });
    }

    /// The hub refused a `Subscribe` of `channels`: the `subscribe` calls it answers fail with
    /// the hub's reason, and the channels they added are dropped.
    fn refused(&mut self, channels: &[String], code: &str, message: &str) {
        let mut i = 0;
        while i < self.pending.len() {
            if !self.pending[i]
                .channels
                .iter()
                .any(|c| channels.contains(c))
            {
                i += 1;
                continue;
            }
            let pending = self.pending.remove(i);
            for channel in &pending.added {
                self.subscriptions.remove(channel);
                self.positions.remove(channel);
                self.asked.remove(channel);
            }
            let reason = format!("the hub refused: {code}: {message}");
            let _ = pending.done.send(Err(Error::Subscribe(reason)));
        }
    }

    /// Resolves every pending `subscribe` whose channels the hub confirmed.
    fn confirm(&mut self, confirmed: &[String]) {
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i]
                .channels
                .iter()
                .all(|c| confirmed.contains(c))
            {
                let pending = self.pending.remove(i);
                let _ = pending.done.send(Ok(()));
            } else {
                i += 1;
            }
        }
    }

    async fn command(
        &mut self,
        ws: &mut Socket,
        command: Command,
    ) -> std::result::Result<(), Ended> {
        match command {
            Command::Subscribe { channels, done } => {
                if !self.hub {
                    let _ = done.send(Err(not_a_hub()));
                    return Ok(());
                }
                for channel in &channels {
                    self.asked.insert(channel.clone(), Asked::Fresh);
                }
                let frame = WsMessage::Subscribe {
                    channels: channels.clone(),
                    since: BTreeMap::new(),
                }
                .to_json();
                self.add_pending(channels, done);
                self.write_now(ws, frame).await
            }
            Command::Unsubscribe { channels, done } => {
                for channel in &channels {
                    self.subscriptions.remove(channel);
                    self.positions.remove(channel);
                }
                let _ = done.send(Ok(()));
                if !self.hub {
                    return Ok(());
                }
                self.write_now(ws, WsMessage::Unsubscribe { channels }.to_json())
                    .await
            }
            Command::Fill { channel, since } => {
                if !self.hub || !self.subscriptions.contains(&channel) {
                    return Ok(());
                }
                debug!(%channel, since = since.seq, "asking the hub to fill a gap");
                self.asked.insert(channel.clone(), Asked::Fill);
                let frame = WsMessage::Subscribe {
                    channels: vec![channel.clone()],
                    since: BTreeMap::from([(channel, since)]),
                }
                .to_json();
                self.write_now(ws, frame).await
            }
            Command::Close { done } => {
                let _ = done.send(());
                Ok(())
            }
        }
    }

    async fn write_now(&self, ws: &mut Socket, text: String) -> std::result::Result<(), Ended> {
        let bytes = text.len() as u64;
        ws.send(Message::text(text))
            .await
            .map_err(|e| Ended::Retry(format!("write failed: {e}")))?;
        Counters::add(&self.counters.messages_sent, 1);
        Counters::add(&self.counters.bytes_sent, bytes);
        Ok(())
    }

    /// Writes everything buffered with one flush. Frames not handed to the socket when it
    /// fails go back to the front of the buffer.
    async fn write_buffered(&mut self, ws: &mut Socket) -> std::result::Result<(), Ended> {
        let expired = self.buffer.take(&mut self.batch);
        if expired > 0 {
            warn!(
                expired,
                "dropped buffered frames older than the maximum buffer age"
            );
            Counters::add(&self.counters.expired, expired as u64);
            self.lifecycle(Event::Expired { count: expired });
        }
        let (mut count, mut bytes) = (0u64, 0u64);
        let batch = &mut self.batch;
        let write = async {
            while let Some(pending) = batch.pop_front() {
                let len = pending.frame.len() as u64;
                let message = match &pending.frame {
                    Outbound::Text(text) => Message::text(text.clone()),
                    Outbound::Binary(bytes) => Message::binary(bytes.clone()),
                };
                if let Err(e) = ws.feed(message).await {
                    batch.push_front(pending);
                    return Err(e);
                }
                count += 1;
                bytes += len;
            }
            ws.flush().await
        };
        let stall = self.settings.pong_timeout;
        let result = tokio::select! {
            () = self.token.cancelled() => Ok(()),
            result = tokio::time::timeout(stall, write) => match result {
                Ok(written) => written.map_err(|e| e.to_string()),
                Err(_) => Err(format!("the server did not take our frames for {stall:?}")),
            },
        };
        Counters::add(&self.counters.messages_sent, count);
        Counters::add(&self.counters.bytes_sent, bytes);
        self.buffer.requeue_front(&mut self.batch);
        result.map_err(|e| Ended::Retry(format!("write failed: {e}")))
    }

    /// Turns one frame into arrivals for the sequencer, or handles it here.
    fn decode(&mut self, frame: Message, heartbeat: &mut Heartbeat) {
        let now = Instant::now();
        let arrival = match frame {
            Message::Text(text) => {
                Counters::add(&self.counters.messages_received, 1);
                Counters::add(&self.counters.bytes_received, text.len() as u64);
                if !self.hub {
                    heartbeat.on_data(now);
                    self.out
                        .push_back(Arrival::Event(Event::Message(text.as_str().to_owned())));
                    return;
                }
                match WsMessage::from_json(text.as_str()) {
                    Ok(WsMessage::Publication { channel, seq, data }) => {
                        heartbeat.on_data(now);
                        let epoch = self.positions.get_mut(&channel).map(|p| {
                            p.seq = p.seq.max(seq);
                            p.epoch.clone()
                        });
                        Arrival::Publication {
                            leg: self.leg,
                            epoch,
                            channel,
                            seq,
                            data,
                        }
                    }
                    Ok(WsMessage::Subscribed {
                        channels,
                        positions,
                    }) => {
                        heartbeat.on_frame();
                        return self.on_subscribed(&channels, positions);
                    }
                    Ok(WsMessage::Lagged { channel, missed }) => {
                        heartbeat.on_frame();
                        Arrival::Event(Event::Lagged { channel, missed })
                    }
                    Ok(WsMessage::Conflated { channel, skipped }) => {
                        heartbeat.on_frame();
                        Arrival::Conflated {
                            leg: self.leg,
                            channel,
                            skipped,
                        }
                    }
                    Ok(WsMessage::Error {
                        code,
                        message,
                        channels,
                    }) => {
                        heartbeat.on_frame();
                        Counters::add(&self.counters.errors, 1);
                        warn!(%code, %message, "server error");
                        if !channels.is_empty() {
                            self.refused(&channels, &code, &message);
                        }
                        Arrival::Event(Event::ServerError { code, message })
                    }
                    Ok(WsMessage::Ping) => {
                        heartbeat.on_frame();
                        self.owe_pong = true;
                        return;
                    }
                    Ok(
                        WsMessage::Unsubscribed { .. }
                        | WsMessage::Pong
                        | WsMessage::Connected { .. }
                        | WsMessage::Authenticated { .. },
                    ) => {
                        heartbeat.on_frame();
                        return;
                    }
                    // Anything else (a broadcast PriceUpdate, foreign JSON) is the application's.
                    _ => {
                        heartbeat.on_data(now);
                        Arrival::Event(Event::Message(text.as_str().to_owned()))
                    }
                }
            }
            Message::Binary(bytes) => {
                Counters::add(&self.counters.messages_received, 1);
                Counters::add(&self.counters.bytes_received, bytes.len() as u64);
                heartbeat.on_data(now);
                Arrival::Event(Event::Binary(bytes.to_vec()))
            }
            Message::Pong(payload) => {
                if let Some(rtt) = heartbeat.on_pong(&payload, now) {
                    self.counters.set_rtt(rtt);
                }
                return;
            }
            Message::Ping(_) | Message::Close(_) | Message::Frame(_) => {
                heartbeat.on_frame();
                return;
            }
        };
        self.out.push_back(arrival);
    }

    /// Sends Close 1000 and waits briefly for the server's reply.
    async fn close(&mut self, ws: &mut Socket) -> Ended {
        let goodbye = async {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "client closing".into(),
            };
            ws.send(Message::Close(Some(frame))).await?;
            while let Some(Ok(_)) = ws.next().await {}
            Ok::<_, WsError>(())
        };
        if let Ok(Err(error)) = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await {
            debug!(%error, "close handshake failed");
        }
        Ended::Closed
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
