//! A connected socket: restore the subscriptions (or send the on-connect frames), then the
//! select loop until the connection ends, and what each command and each inbound frame
//! calls for.

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, info, warn};
use ws_protocol::{WsMessage, close};

use super::arrival::Arrival;
use super::decode::{Inbound, application_text, decode};
use super::{CLOSE_TIMEOUT, Command, Driver, Ended, ended_by, not_a_hub};
use crate::event::Event;
use crate::heartbeat::{Beat, Heartbeat};
use crate::link::{Link, Socket};
use crate::metrics::Counters;
use crate::rotation::Rotation;
use crate::state::ConnectionState;

/// The most frames decoded ahead of the arrival queue while resubscribing.
const MAX_STASH: usize = 4096;
/// The most arrivals decoded ahead of room in the arrival queue while serving. A little
/// read-ahead lets control replies (such as the `Subscribed` a `subscribe` call waits for)
/// through while the application is not reading yet; beyond it the socket is not read, so
/// the server sees backpressure.
pub(super) const READ_AHEAD: usize = 64;
impl Driver {
    /// Restores subscriptions (or sends the application's on-connect frames), then serves the
    /// connection until it ends.
    pub(super) async fn serve(&mut self, link: Link, reconnected: bool) -> Ended {
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
            self.receive(frame, ws.last_read(), &mut Heartbeat::disabled());
        }
        self.up = true;
        self.counters.connected();
        self.set_state(ConnectionState::Connected);
        info!(url = %self.url, connection = self.connection, connection_id = ?hub, reconnected, transport = ?self.settings.transport, "connected");
        self.lifecycle(Event::Connected {
            connection: self.connection,
            connection_id: hub,
            reconnected,
        });
        // Requests made while disconnected go out now, if their callers still wait.
        for (id, frame) in std::mem::take(&mut self.requests) {
            if let Err(ended) = self.command(&mut ws, Command::Request { id, frame }).await {
                return ended;
            }
        }

        let settings = self.settings.clone();
        let mut heartbeat = Heartbeat::new(
            settings.ping_interval,
            settings.pong_timeout,
            settings.stale_timeout,
            Instant::now(),
        );
        let mut rotation = Rotation::new(settings.max_connection_age, Instant::now());
        let mut close_frame: Option<CloseFrame> = None;
        loop {
            // Hand over what was decoded before reading more, as far as the queue has room
            // (else room is waited for below: the application is behind).
            if !self.hand_over_now() {
                // The receiver lives as long as the handles: they are all gone.
                return self.close(&mut ws).await;
            }
            let expecting_data = self.expecting_data();
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
                room = self.arrivals.room(), if !self.out.is_empty() => match room {
                    Ok(()) => heartbeat.resume(Instant::now()),
                    // The receiver lives as long as the handles: they are all gone.
                    Err(_) => return self.close(&mut ws).await,
                },
                frame = ws.next(), if reading => {
                    let read = self.read_bursts(&mut ws, frame, &mut heartbeat, &mut close_frame, &mut rotation);
                    if let Err(ended) = read.await {
                        return ended;
                    }
                },
                step = rotation.next(reading), if rotation.is_on() => {
                    if let Some(successor) = self.rotate(step, &mut rotation).await {
                        let mut old = std::mem::replace(&mut ws, successor);
                        // Answers to what went out on the old socket will not be read: its
                        // publications go out again on the new one, its requests fail.
                        self.buffer.requeue_acked(self.acks.connection_lost(self.connection));
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
                        info!(url = %self.url, connection = self.connection, "connection rotated");
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

    /// Whether data is expected on the connection (for the heartbeat's stale check): always
    /// from a plain server, from the hub while subscribed.
    pub(super) fn expecting_data(&self) -> bool {
        !self.hub || !self.subscriptions.is_empty()
    }

    /// Hands what was decoded to the application while its queue has room (counting what
    /// was received first, so the metrics never lag what the application has); `false` if
    /// the application is gone.
    pub(super) fn hand_over_now(&mut self) -> bool {
        self.report_received();
        self.out.is_empty() || self.arrivals.hand_over(&mut self.out).is_ok()
    }

    /// Takes in what the socket gave: a frame, or its end. A hub `Ping` leaves a `Pong` owed
    /// (`owe_pong`) for the caller to write: this stays synchronous, the path of every frame.
    pub(super) fn on_frame(
        &mut self,
        ws: &Socket,
        frame: Option<Result<Message, WsError>>,
        heartbeat: &mut Heartbeat,
        close_frame: &mut Option<CloseFrame>,
    ) -> Result<(), Ended> {
        match frame {
            Some(Ok(Message::Close(frame))) => {
                heartbeat.on_frame();
                *close_frame = frame;
                Ok(())
            }
            Some(Ok(frame)) => {
                self.receive(frame, ws.last_read(), heartbeat);
                Ok(())
            }
            end @ (Some(Err(_)) | None) => {
                let why = match end {
                    Some(Err(error)) => error.to_string(),
                    _ => "the server closed the connection".to_owned(),
                };
                self.retry_hint = close_frame
                    .as_ref()
                    .and_then(|f| close::retry_after(&f.reason));
                Err(ended_by(close_frame.as_ref(), &why))
            }
        }
    }

    /// Sends `Subscribe` for every channel and waits for `Subscribed`, decoding other frames.
    async fn resubscribe(&mut self, ws: &mut Socket) -> Result<(), Ended> {
        if self.subscriptions.is_empty() {
            return Ok(());
        }
        // Ask for what was missed since the last publication seen on each channel.
        let (frame, _) = self.subscriptions.resubscribe();
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
                        match decode(Message::Text(text.clone()), true, false) {
                            Inbound::Subscribed {
                                channels,
                                positions,
                            } => return Ok((channels, positions)),
                            Inbound::Error {
                                code,
                                message,
                                channels,
                                ..
                            } if !channels.is_empty() => {
                                self.subscriptions.refused(&channels, &code, &message);
                                return Err(format!(
                                    "the hub refused the resubscribe: {code}: {message}"
                                ));
                            }
                            _ => {}
                        }
                        if self.out.len() >= MAX_STASH {
                            return Err("too many frames before Subscribed".to_owned());
                        }
                        self.receive(Message::Text(text), ws.last_read(), &mut heartbeat);
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
        let out = &mut self.out;
        self.subscriptions
            .on_subscribed(self.connection, &channels, positions, out);
        Ok(())
    }

    pub(super) async fn send_on_connect(&mut self, ws: &mut Socket) -> Result<(), Ended> {
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

    async fn command(&mut self, ws: &mut Socket, command: Command) -> Result<(), Ended> {
        match command {
            Command::Subscribe {
                channels,
                rewind,
                since,
                done,
            } => {
                if !self.hub {
                    let _ = done.send(Err(not_a_hub()));
                    return Ok(());
                }
                match self
                    .subscriptions
                    .subscribe(channels, rewind, since, done, true)
                {
                    Some(frame) => self.write_now(ws, frame).await,
                    None => Ok(()),
                }
            }
            Command::Unsubscribe { channels, done } => {
                self.subscriptions.unsubscribe(&channels);
                let _ = done.send(Ok(()));
                if !self.hub {
                    return Ok(());
                }
                self.write_now(ws, WsMessage::Unsubscribe { channels }.to_json())
                    .await
            }
            Command::Fill { channel, since } => {
                if !self.hub {
                    return Ok(());
                }
                let (name, from) = (channel.clone(), since.seq);
                match self.subscriptions.fill(channel, since) {
                    Some(frame) => {
                        debug!(channel = %name, since = from, "asking the hub to fill a gap");
                        self.write_now(ws, frame).await
                    }
                    None => Ok(()),
                }
            }
            Command::Request { id, frame } => {
                if !self.acks.is_waiting(id) {
                    return Ok(());
                }
                // Marked sent before the write: a write that fails midway may have reached
                // the hub, so the request must not be sent again.
                self.acks.requested_on(id, self.connection);
                self.write_now(ws, frame).await
            }
            Command::Close { done } => {
                let _ = done.send(());
                Ok(())
            }
        }
    }

    /// Takes in one frame: turns it into arrivals for the sequencer, or acts on it here (a
    /// `Subscribed` resolves calls, a refusal fails them, a hub `Ping` is owed a `Pong`), and
    /// tells the heartbeat what arrived. `now` is when the frame arrived (the socket's latest
    /// read), its stamp.
    pub(super) fn receive(&mut self, frame: Message, now: Instant, heartbeat: &mut Heartbeat) {
        if let Message::Text(_) | Message::Binary(_) = &frame {
            self.unreported.0 += 1;
            self.unreported.1 += frame.len() as u64;
        }
        if !self.hub
            && let Message::Text(text) = frame
        {
            // A plain server's text, the bulk of a feed: what `decode` says of it, without
            // the trip through its classification.
            let text = application_text(text, self.settings.transport.shares_text());
            return self.message(Event::Message(text), now, heartbeat);
        }
        let arrival = match decode(frame, self.hub, self.settings.transport.shares_text()) {
            Inbound::Publication { channel, seq, data } => {
                heartbeat.on_data(now);
                let epoch = self.subscriptions.on_publication(&channel, seq);
                Arrival::Publication {
                    connection: self.connection,
                    epoch,
                    channel,
                    seq,
                    data,
                    received_at: now,
                }
            }
            Inbound::Subscribed {
                channels,
                positions,
            } => {
                heartbeat.on_frame();
                let out = &mut self.out;
                return self.subscriptions.on_subscribed(
                    self.connection,
                    &channels,
                    positions,
                    out,
                );
            }
            Inbound::Lagged { channel, missed } => {
                heartbeat.on_frame();
                Arrival::Event(Event::Lagged { channel, missed })
            }
            Inbound::Conflated { channel, skipped } => {
                heartbeat.on_frame();
                Arrival::Conflated {
                    connection: self.connection,
                    channel,
                    skipped,
                }
            }
            Inbound::Error {
                code,
                message,
                id: Some(id),
                ..
            } if self.acks.refused(id, &code, &message) => {
                heartbeat.on_frame();
                return;
            }
            Inbound::Published { id, seq, count } => {
                heartbeat.on_frame();
                self.acks.published(id, seq, count);
                return;
            }
            Inbound::Reply { id, data } => {
                heartbeat.on_frame();
                self.acks.replied(id, data);
                return;
            }
            Inbound::Error {
                code,
                message,
                channels,
                ..
            } => {
                heartbeat.on_frame();
                Counters::add(&self.counters.errors, 1);
                warn!(%code, %message, "server error");
                if !channels.is_empty() {
                    self.subscriptions.refused(&channels, &code, &message);
                }
                Arrival::Event(Event::ServerError { code, message })
            }
            Inbound::Ping => {
                heartbeat.on_frame();
                self.owe_pong = true;
                return;
            }
            Inbound::Control | Inbound::WebSocketControl => {
                heartbeat.on_frame();
                return;
            }
            Inbound::Text(text) => return self.message(Event::Message(text), now, heartbeat),
            Inbound::Binary(bytes) => {
                return self.message(Event::Binary(bytes.to_vec()), now, heartbeat);
            }
            Inbound::WebSocketPong(payload) => {
                if let Some(rtt) = heartbeat.on_pong(&payload, now) {
                    self.counters.set_rtt(rtt);
                }
                return;
            }
        };
        self.out.push_back(arrival);
    }

    /// A text or binary frame that is the application's as it is (not part of the hub's
    /// protocol): data for the heartbeat, an arrival for the sequencer.
    fn message(&mut self, event: Event, now: Instant, heartbeat: &mut Heartbeat) {
        heartbeat.on_data(now);
        self.out.push_back(Arrival::Message {
            connection: self.connection,
            event,
            received_at: now,
        });
    }

    /// Sends Close 1000 and waits briefly for the server's reply.
    pub(super) async fn close(&mut self, ws: &mut Socket) -> Ended {
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
