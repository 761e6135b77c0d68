//! The connection task: the one owner of the socket, the reconnect loop, the subscription set
//! and the delivery of events to the application.
//!
//! It `select!`s over the client's cancellation token, commands from the handles, the
//! outbound buffer, room in the event queue, inbound frames and the heartbeat deadline. It
//! reads from the socket only while the event queue has room for what it reads: when the
//! application stops reading, the client stops reading too (the server then sees
//! backpressure), and the heartbeat does not take that pause for a dead connection.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::OwnedPermit;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as TungsteniteConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use ws_protocol::{ChannelPosition, Position, WsMessage, close};

use crate::backoff::Backoff;
use crate::buffer::{OutboundBuffer, Pending};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::heartbeat::{Beat, Heartbeat};
use crate::metrics::Counters;
use crate::settings::{ServerProtocol, Settings};
use crate::state::ConnectionState;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long `Auto` waits for a first frame to tell our hub from another server.
const DETECT_WINDOW: Duration = Duration::from_secs(1);
/// How long the client waits for the server's close reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most non-`Subscribed` frames kept aside while resubscribing.
const MAX_STASH: usize = 4096;

/// A request from a handle to the connection task.
pub(crate) enum Command {
    Subscribe {
        channels: Vec<String>,
        done: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        channels: Vec<String>,
        done: oneshot::Sender<Result<()>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// An open connection, before the connection task takes it over.
pub(crate) struct Link {
    ws: Socket,
    /// The hub's connection id; `None` when the server is not our hub.
    hub: Option<u64>,
    /// A first frame read while telling a plain server from our hub.
    early: Option<Message>,
}

/// Opens one connection: TCP, TLS, upgrade, then tells our hub from another server.
pub(crate) async fn open(settings: &Settings) -> std::result::Result<Link, String> {
    let mut request = settings
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    for (name, value) in &settings.headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let config = TungsteniteConfig::default()
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_message_size))
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(64 * 1024 + 2 * settings.max_message_size)
        .read_buffer_size(64 * 1024);
    let connector = settings.tls.clone().map(Connector::Rustls);
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector);
    let (mut ws, _) = tokio::time::timeout(settings.connect_timeout, connecting)
        .await
        .map_err(|_| format!("timed out after {:?}", settings.connect_timeout))?
        .map_err(|e| e.to_string())?;

    let window = match settings.protocol {
        ServerProtocol::Raw => {
            return Ok(Link {
                ws,
                hub: None,
                early: None,
            });
        }
        ServerProtocol::Hub => settings.connect_timeout,
        ServerProtocol::Auto => settings.connect_timeout.min(DETECT_WINDOW),
    };
    let first = loop {
        match tokio::time::timeout(window, ws.next()).await {
            Err(_) => break None,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(frame))) => break Some(frame),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("the server closed the connection at once".to_owned()),
        }
    };
    if let Some(Message::Text(text)) = &first {
        if let Ok(WsMessage::Connected { connection_id, .. }) = WsMessage::from_json(text.as_str())
        {
            return Ok(Link {
                ws,
                hub: Some(connection_id),
                early: None,
            });
        }
    }
    match settings.protocol {
        ServerProtocol::Hub => Err(format!(
            "the server did not start with a Connected frame (got {first:?}); is it a ws hub?"
        )),
        _ => Ok(Link {
            ws,
            hub: None,
            early: first,
        }),
    }
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

/// The connection task. See the module documentation.
pub(crate) struct Driver {
    pub(crate) settings: Arc<Settings>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) buffer: Arc<OutboundBuffer>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) token: CancellationToken,
    pub(crate) subscriptions: BTreeSet<String>,
    pub(crate) pending: Vec<(Vec<String>, oneshot::Sender<Result<()>>)>,
    pub(crate) batch: VecDeque<Pending>,
    /// Whether the last connection was to our hub.
    pub(crate) hub: bool,
    /// A hub-level `Ping` arrived and its `Pong` is still to be written.
    pub(crate) owe_pong: bool,
    /// The server's close asked to wait this long before reconnecting ("retry after N ms").
    pub(crate) retry_hint: Option<Duration>,
    /// The last position seen per subscribed hub channel, for recovery and deduplication.
    pub(crate) positions: HashMap<String, Position>,
    /// A gap noticed while decoding, reported before the publication that revealed it.
    pub(crate) gap: Option<Event>,
}

impl Driver {
    fn new_backoff(&self) -> Backoff {
        let s = &self.settings;
        Backoff::new(
            s.reconnect_interval,
            s.max_reconnect_delay,
            s.max_reconnect_attempts,
        )
    }

    /// Runs the client from its first connection to its end.
    pub(crate) async fn run(mut self, first: Link) {
        let mut link = first;
        let mut backoff = self.new_backoff();
        let mut attempt = 0u32;
        let mut reconnected = false;
        loop {
            let connected_at = Instant::now();
            let ended = self.serve(link, reconnected).await;
            self.counters.disconnected();
            let reason = match ended {
                Ended::Closed => return self.finish(ConnectionState::Disconnected, Error::Closed),
                Ended::Fatal(reason) => return self.fail(reason),
                Ended::Retry(reason) => reason,
            };
            Counters::add(&self.counters.errors, 1);
            if !self.settings.auto_reconnect {
                return self.fail(format!("connection lost: {reason}"));
            }
            warn!(url = %self.settings.url, %reason, "connection lost; reconnecting");
            self.lifecycle(Event::Disconnected {
                reason: reason.clone(),
            });
            if connected_at.elapsed() >= self.settings.healthy_after {
                backoff = self.new_backoff();
                attempt = 0;
            }
            let mut last_error = reason;
            let mut hint = self.retry_hint.take();
            link = loop {
                // A hinted wait (the server's 1012 close) replaces the first backoff delay,
                // jittered over [hint, 2 × hint] so that clients come back spread out.
                let next = match hint.take() {
                    Some(hint) => Some(hint + hint.mul_f64(fastrand::f64())),
                    None => backoff.next(),
                };
                let Some(delay) = next else {
                    return self.fail(format!(
                        "gave up after {attempt} reconnect attempts; last error: {last_error}"
                    ));
                };
                attempt += 1;
                self.state
                    .send_replace(ConnectionState::Reconnecting { attempt });
                debug!(attempt, ?delay, "waiting before reconnecting");
                let sleep = tokio::time::sleep(delay);
                if self.idle_until(sleep).await.is_none() {
                    return self.finish(ConnectionState::Disconnected, Error::Closed);
                }
                let settings = self.settings.clone();
                let opening = open(&settings);
                match self.idle_until(opening).await {
                    None => return self.finish(ConnectionState::Disconnected, Error::Closed),
                    Some(Ok(link)) => break link,
                    Some(Err(error)) => {
                        debug!(attempt, %error, "reconnect attempt failed");
                        Counters::add(&self.counters.errors, 1);
                        last_error = error;
                    }
                }
            };
            Counters::add(&self.counters.reconnects, 1);
            reconnected = true;
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
                        self.subscriptions.extend(channels.iter().cloned());
                        self.pending.push((channels, done));
                    }
                    Some(Command::Unsubscribe { channels, done }) => {
                        for channel in &channels {
                            self.subscriptions.remove(channel);
                        }
                        let _ = done.send(Ok(()));
                    }
                },
                output = &mut fut => return Some(output),
            }
        }
    }

    fn lifecycle(&self, event: Event) {
        // Lifecycle events are advisory (the state and metrics always tell the same); they
        // are not worth stalling the connection for an application that does not read them.
        if self.events.try_send(event).is_err() {
            debug!("event queue full; lifecycle event not queued");
        }
    }

    fn fail(self, reason: String) {
        warn!(url = %self.settings.url, %reason, "client failed");
        let error = Error::Failed(reason.clone());
        self.finish(ConnectionState::Failed { reason }, error);
    }

    fn finish(mut self, state: ConnectionState, error: Error) {
        for (_, done) in self.pending.drain(..) {
            let _ = done.send(Err(clone_error(&error)));
        }
        self.state.send_replace(state);
        self.token.cancel();
    }

    /// Restores subscriptions (or sends the application's on-connect frames), then serves the
    /// connection until it ends.
    async fn serve(&mut self, link: Link, reconnected: bool) -> Ended {
        let Link { mut ws, hub, early } = link;
        self.hub = hub.is_some();
        let mut stash = Vec::new();
        let restored = match hub {
            Some(_) => self.resubscribe(&mut ws, &mut stash).await,
            None => self.send_on_connect(&mut ws).await,
        };
        if let Err(ended) = restored {
            return ended;
        }
        if let Some(frame) = early {
            if let Some(event) = self.decode(frame, &mut Heartbeat::disabled()) {
                stash.push(event);
            }
        }
        self.counters.connected();
        self.state.send_replace(ConnectionState::Connected);
        info!(url = %self.settings.url, connection_id = ?hub, reconnected, "connected");
        self.lifecycle(Event::Connected {
            connection_id: hub,
            reconnected,
        });
        for event in stash {
            tokio::select! {
                () = self.token.cancelled() => return self.close(&mut ws).await,
                sent = self.events.send(event) => if sent.is_err() { return self.close(&mut ws).await },
            }
        }

        let settings = self.settings.clone();
        let mut heartbeat = Heartbeat::new(
            settings.ping_interval,
            settings.pong_timeout,
            settings.stale_timeout,
            Instant::now(),
        );
        let mut permit: Option<OwnedPermit<Event>> = None;
        let mut close_frame: Option<CloseFrame> = None;
        loop {
            let expecting_data = !self.hub || !self.subscriptions.is_empty();
            let reading = permit.is_some();
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
                reserved = self.events.clone().reserve_owned(), if permit.is_none() => match reserved {
                    Ok(p) => {
                        heartbeat.resume(Instant::now());
                        permit = Some(p);
                    }
                    // The receiver lives as long as the handles: they are all gone.
                    Err(_) => return self.close(&mut ws).await,
                },
                frame = ws.next(), if permit.is_some() => match frame {
                    Some(Ok(Message::Close(frame))) => {
                        heartbeat.on_frame();
                        close_frame = frame;
                    }
                    Some(Ok(frame)) => {
                        if let Some(event) = self.decode(frame, &mut heartbeat) {
                            if let Some(gap) = self.gap.take() {
                                let Some(p) = permit.take() else { continue };
                                // The gap goes first; the publication waits for room.
                                p.send(gap);
                                match self.events.clone().reserve_owned().await {
                                    Ok(p) => permit = Some(p),
                                    Err(_) => return self.close(&mut ws).await,
                                }
                            }
                            if let Some(p) = permit.take() {
                                p.send(event);
                            }
                        }
                        if std::mem::take(&mut self.owe_pong) {
                            if let Err(ended) = self.write_now(&mut ws, WsMessage::Pong.to_json()).await {
                                return ended;
                            }
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

    /// Sends `Subscribe` for every channel and waits for `Subscribed`, keeping other frames.
    async fn resubscribe(
        &mut self,
        ws: &mut Socket,
        stash: &mut Vec<Event>,
    ) -> std::result::Result<(), Ended> {
        if self.subscriptions.is_empty() {
            return Ok(());
        }
        let channels: Vec<String> = self.subscriptions.iter().cloned().collect();
        // Ask for what was missed since the last publication seen on each channel.
        let since: BTreeMap<String, Position> = channels
            .iter()
            .filter_map(|c| self.positions.get(c).map(|p| (c.clone(), p.clone())))
            .collect();
        let frame = WsMessage::Subscribe {
            channels,
            since: since.clone(),
        }
        .to_json();
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
                        if let Ok(WsMessage::Subscribed {
                            channels,
                            positions,
                        }) = WsMessage::from_json(text.as_str())
                        {
                            return Ok((channels, positions));
                        }
                        if let Some(event) = self.decode(Message::Text(text), &mut heartbeat) {
                            if stash.len() >= MAX_STASH {
                                return Err("too many frames before Subscribed".to_owned());
                            }
                            stash.extend(self.gap.take());
                            stash.push(event);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the server closed the connection".to_owned()),
                }
            }
        };
        let confirmed = tokio::select! {
            () = token.cancelled() => return Err(Ended::Closed),
            result = tokio::time::timeout(timeout, exchange) => match result {
                Err(_) => return Err(Ended::Retry(format!("no Subscribed within {timeout:?}"))),
                Ok(Err(e)) => return Err(Ended::Retry(format!("resubscribe failed: {e}"))),
                Ok(Ok(confirmed)) => confirmed,
            },
        };
        let (confirmed, positions) = confirmed;
        Counters::add(&self.counters.messages_sent, 1);
        for (channel, position) in positions {
            if since.contains_key(&channel) && !position.recovered {
                warn!(%channel, "missed publications could not be recovered");
                stash.insert(
                    0,
                    Event::Unrecovered {
                        channel: channel.clone(),
                        epoch: position.epoch.clone(),
                        seq: position.seq,
                    },
                );
            }
            self.track(&channel, position);
        }
        self.confirm(&confirmed);
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

    /// Remembers where a channel stands after a `Subscribed`: a recovered position keeps
    /// counting from what was seen (the replay follows); anything else starts from the hub's.
    fn track(&mut self, channel: &str, position: ChannelPosition) {
        if !self.subscriptions.contains(channel) {
            return;
        }
        let keep = position.recovered
            && self
                .positions
                .get(channel)
                .is_some_and(|p| p.epoch == position.epoch);
        if !keep {
            self.positions.insert(
                channel.to_owned(),
                Position {
                    epoch: position.epoch,
                    seq: position.seq,
                },
            );
        }
    }

    /// Resolves every pending `subscribe` whose channels the hub confirmed.
    fn confirm(&mut self, confirmed: &[String]) {
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].0.iter().all(|c| confirmed.contains(c)) {
                let (_, done) = self.pending.swap_remove(i);
                let _ = done.send(Ok(()));
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
                self.subscriptions.extend(channels.iter().cloned());
                let frame = WsMessage::Subscribe {
                    channels: channels.clone(),
                    since: Default::default(),
                }
                .to_json();
                self.pending.push((channels, done));
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
                let len = pending.text.len() as u64;
                if let Err(e) = ws.feed(Message::text(pending.text.clone())).await {
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

    /// Turns one frame into an event for the application, or handles it here.
    fn decode(&mut self, frame: Message, heartbeat: &mut Heartbeat) -> Option<Event> {
        let now = Instant::now();
        match frame {
            Message::Text(text) => {
                Counters::add(&self.counters.messages_received, 1);
                Counters::add(&self.counters.bytes_received, text.len() as u64);
                if !self.hub {
                    heartbeat.on_data(now);
                    return Some(Event::Message(text.as_str().to_owned()));
                }
                match WsMessage::from_json(text.as_str()) {
                    Ok(WsMessage::Publication { channel, seq, data }) => {
                        heartbeat.on_data(now);
                        if let Some(last) = self.positions.get_mut(&channel) {
                            if seq <= last.seq {
                                // Seen already (replayed across a reconnect): drop it.
                                return None;
                            }
                            let expected = last.seq + 1;
                            last.seq = seq;
                            if seq > expected {
                                self.gap = Some(Event::Gap {
                                    channel: channel.clone(),
                                    expected,
                                    received: seq,
                                });
                            }
                        }
                        Some(Event::Publication { channel, seq, data })
                    }
                    Ok(WsMessage::Subscribed {
                        channels,
                        positions,
                    }) => {
                        heartbeat.on_frame();
                        for (channel, position) in positions {
                            self.track(&channel, position);
                        }
                        self.confirm(&channels);
                        None
                    }
                    Ok(WsMessage::Lagged { channel, missed }) => {
                        heartbeat.on_frame();
                        Some(Event::Lagged { channel, missed })
                    }
                    Ok(WsMessage::Error { code, message }) => {
                        heartbeat.on_frame();
                        Counters::add(&self.counters.errors, 1);
                        warn!(%code, %message, "server error");
                        Some(Event::ServerError { code, message })
                    }
                    Ok(WsMessage::Ping) => {
                        heartbeat.on_frame();
                        self.owe_pong = true;
                        None
                    }
                    Ok(
                        WsMessage::Unsubscribed { .. }
                        | WsMessage::Pong
                        | WsMessage::Connected { .. }
                        | WsMessage::Authenticated { .. },
                    ) => {
                        heartbeat.on_frame();
                        None
                    }
                    // Anything else (a broadcast PriceUpdate, foreign JSON) is the application's.
                    _ => {
                        heartbeat.on_data(now);
                        Some(Event::Message(text.as_str().to_owned()))
                    }
                }
            }
            Message::Binary(bytes) => {
                Counters::add(&self.counters.messages_received, 1);
                Counters::add(&self.counters.bytes_received, bytes.len() as u64);
                heartbeat.on_data(now);
                Some(Event::Binary(bytes.to_vec()))
            }
            Message::Pong(payload) => {
                if let Some(rtt) = heartbeat.on_pong(&payload, now) {
                    self.counters.set_rtt(rtt);
                }
                None
            }
            Message::Ping(_) | Message::Close(_) | Message::Frame(_) => {
                heartbeat.on_frame();
                None
            }
        }
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

fn clone_error(error: &Error) -> Error {
    match error {
        Error::Failed(reason) => Error::Failed(reason.clone()),
        _ => Error::Closed,
    }
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
