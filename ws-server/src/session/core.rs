//! [`Core`]: one connection's protocol state, without I/O.
//!
//! The core is fed what happened (a frame read from the client, the timer firing, the
//! outcome of work it asked for) together with the current time, consults the [`Hub`], and
//! returns a [`Step`]: what the task around it must do (write a reply, hand a publication to
//! the broker, attach channels, forward a frame to the application) or the [`End`] of the
//! connection. It never reads or writes a socket and never reads the clock, so every
//! decision can be tested without sockets on paused time (see the tests at the bottom).
//!
//! Each command has its own file under `command/`; this file holds the state, the dispatch,
//! the timer and the rate budgets.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::debug;
use ws_protocol::{
    DecodeError, Encoding, Payload, PublishRef, WsMessage, codes, json_to_msgpack, msgpack_to_json,
};

use super::command::publish::PublishBody;
use super::command::subscribe::SubscribeRequest;
use super::ending::End;
use crate::auth::Grant;
use crate::connections::ConnectionId;
use crate::hub::Hub;
use crate::metrics::HubMetrics;
use crate::outbox::{Outbox, OutboxState};
use crate::rate_limit::{RateLimit, Verdict};

/// What the task around a [`Core`] must do next.
pub(crate) enum Step {
    /// Nothing to write.
    Nothing,
    /// Write this reply (JSON) at once, ahead of queued publications.
    Reply(String),
    /// Write these replies (JSON) at once, in order.
    Replies(Vec<String>),
    /// Write a WebSocket ping.
    Ping,
    /// Conformance testing: write the frame back.
    #[cfg(feature = "conformance")]
    Echo(Message),
    /// Hand a publication to the broker; its outcome is answered with
    /// [`publication_outcome`](super::command::publish::publication_outcome).
    Publish {
        /// The channel (checked), the data as the client sent it, and the idempotency key
        /// (checked).
        body: PublishBody,
        /// The client's `id`: answer `Published` (or an `Error`) with it.
        id: Option<u64>,
        /// The client accepts its `Published` in a run ([`WsMessage::Publish`]'s `ack_range`).
        ack_range: bool,
        /// When its frame was read.
        at: Instant,
    },
    /// Attach the channels to the broker ([`Hub::attach`]), then give the outcome to
    /// [`Core::subscribe`].
    Subscribe(SubscribeRequest),
    /// Hand an application frame to the application; if it cannot take it, answer with
    /// [`Core::forward_refused`].
    Forward(WsMessage),
    /// Ask the application (see `requests.rs`); its answer is queued to the connection.
    Request {
        /// The client's `id`.
        id: u64,
        /// What is asked.
        method: String,
        /// The request's data.
        data: Payload,
    },
}

/// One connection's protocol state. See the module documentation.
pub(crate) struct Core {
    pub(super) hub: Arc<Hub>,
    pub(super) id: ConnectionId,
    /// Where the connection's publications are queued, and the one signal for overflow and
    /// shutdown.
    pub(super) outbox: Arc<Outbox>,
    /// The channels this connection is subscribed to.
    pub(super) subscriptions: HashSet<Arc<str>>,
    /// When the client last sent a frame.
    pub(super) last_seen: Instant,
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
    pub(super) grant: Option<Arc<Grant>>,
    /// How the connection's messages are written (agreed in the upgrade).
    pub(super) encoding: Encoding,
    /// If the connection agreed to permessage-deflate, the largest window the hub may use
    /// (a power of two): queued frames go compressed where that pays and their length keeps
    /// within it (replies never are: they are short).
    pub(super) deflate_window: Option<u8>,
}

impl Core {
    /// The state of a connection that was just upgraded at `now`, with the grant of the token
    /// its upgrade brought (or of the open hub); `None`: it must authenticate with a frame.
    pub(crate) fn new(
        hub: Arc<Hub>,
        id: ConnectionId,
        outbox: Arc<Outbox>,
        grant: Option<Arc<Grant>>,
        now: Instant,
    ) -> Self {
        let config = &hub.config;
        let mut core = Self {
            id,
            outbox,
            subscriptions: HashSet::new(),
            last_seen: now,
            deadline: None,
            next_ping: after(now, config.ping_interval),
            idle_check: after(now, config.idle_timeout),
            rate: RateLimit::new(config.rate_limit, config.rate_limit_burst),
            publish_rate: RateLimit::new_or_unlimited(
                config.publish_rate_limit,
                config.publish_rate_limit_burst,
            ),
            grant: None,
            encoding: Encoding::Json,
            deflate_window: None,
            hub,
        };
        core.set_grant(grant, now);
        core
    }

    /// The same connection, speaking `encoding` (JSON unless the upgrade agreed otherwise),
    /// with its queued frames compressed within `deflate_window` if it agreed to that.
    pub(crate) fn speaking(mut self, encoding: Encoding, deflate_window: Option<u8>) -> Self {
        self.encoding = encoding;
        self.deflate_window = deflate_window;
        self
    }

    /// A message for this connection, from its JSON: a text frame, or the same message as
    /// a MessagePack binary frame.
    pub(crate) fn message(&self, json: String) -> Message {
        match self.encoding {
            Encoding::MessagePack => Message::binary(json_to_msgpack(&json).unwrap_or_default()),
            _ => Message::text(json),
        }
    }

    /// The `Connected` frame the connection opens with.
    pub(crate) fn greeting(&self) -> String {
        WsMessage::Connected {
            connection_id: self.id.get(),
            server_time: unix_millis(),
        }
        .to_json()
    }

    /// Decides what a client's frame, read at `now`, calls for.
    pub(crate) fn on_message(&mut self, message: Message, now: Instant) -> Result<Step, End> {
        self.last_seen = now;
        #[cfg(feature = "conformance")]
        if self.hub.echo {
            // Conformance testing: data frames go back as they came.
            return Ok(match message {
                message @ (Message::Text(_) | Message::Binary(_)) => Step::Echo(message),
                _ => Step::Nothing,
            });
        }
        match message {
            Message::Text(text) => self.on_text(text.as_str(), text.len(), Some(&text)),
            Message::Binary(bytes) => {
                let refusal = if self.encoding == Encoding::MessagePack {
                    match msgpack_to_json(&bytes) {
                        Ok(json) => return self.on_text(&json, bytes.len(), None),
                        Err(error) => WsMessage::error(error.code(), error.to_string()),
                    }
                } else {
                    WsMessage::error(
                        codes::BAD_REQUEST,
                        "binary frames are not supported; send JSON text frames (or agree on the ws-toolkit.msgpack subprotocol in the upgrade)",
                    )
                };
                let metrics = &self.hub.metrics;
                HubMetrics::add(&metrics.frames_in, 1);
                HubMetrics::add(&metrics.bytes_in, bytes.len() as u64);
                if let Some(refused) = self.control_budget()? {
                    return Ok(refused);
                }
                Ok(reply(refusal))
            }
            // tungstenite answers pings itself, but they draw on the control budget like any
            // frame: a ping flood is closed like any other.
            // Refused pings get no `Error`: a client that pings is not reading text replies.
            Message::Ping(_) => {
                self.control_budget()?;
                Ok(Step::Nothing)
            }
            // Pongs and close handshakes need nothing here.
            Message::Pong(_) | Message::Close(_) | Message::Frame(_) => Ok(Step::Nothing),
        }
    }

    /// Takes in one message as JSON `text` (from a frame of `len` bytes).
    /// A text frame (`frame`: the one read, when `text` is its text rather than a
    /// conversion): a canonical `Publish` is read in place, anything else decoded.
    fn on_text(&mut self, text: &str, len: usize, frame: Option<&Utf8Bytes>) -> Result<Step, End> {
        let metrics = &self.hub.metrics;
        HubMetrics::add(&metrics.frames_in, 1);
        HubMetrics::add(&metrics.bytes_in, len as u64);
        let in_place = frame.and_then(|frame| {
            let publish = PublishRef::parse(frame.as_str())?;
            Some((
                PublishBody::in_frame(frame, &publish)?,
                publish.id,
                publish.ack_range,
            ))
        });
        let decoded = match in_place {
            Some((body, id, ack_range)) => Decoded::Publish(body, id, ack_range),
            None => Decoded::Message(WsMessage::from_json(text)),
        };
        // Publications and everything else (subscribe churn, pings, malformed frames) draw on
        // separate budgets, so that a publisher at market rates is never refused because of
        // a limit meant for control traffic.
        let publish_id = match &decoded {
            Decoded::Publish(_, id, _) | Decoded::Message(Ok(WsMessage::Publish { id, .. })) => {
                Some(*id)
            }
            Decoded::Message(_) => None,
        };
        let refused = match publish_id {
            Some(_) => {
                let verdict = self.publish_rate.check(self.last_seen);
                let limit = self.publish_limit();
                self.rate_refusal(verdict, limit, "publications")?
            }
            _ => self.control_budget()?,
        };
        if let Some(refused) = refused {
            // A publication with an `id` is answered one by one, so that its sender learns
            // the fate of each.
            if let Some(Some(id)) = publish_id {
                let error = WsMessage::error(
                    codes::RATE_LIMITED,
                    format!(
                        "more than {} publications per second; this one was not published",
                        self.publish_limit()
                    ),
                );
                return Ok(reply(error.with_id(Some(id))));
            }
            return Ok(refused);
        }
        let message = match decoded {
            Decoded::Publish(body, id, ack_range) => {
                if self.grant.is_none() {
                    return Ok(unauthenticated(id));
                }
                return Ok(self.publish(body, id, ack_range));
            }
            Decoded::Message(Ok(message)) => message,
            Decoded::Message(Err(error)) => {
                debug!(connection = %self.id, %error, "rejected frame");
                // A refused `Publish` or `Request` is answered with its `id` where it can be
                // read, so that the client's pending call ends with the refusal.
                let error = WsMessage::error(error.code(), error.to_string());
                return Ok(reply(error.with_id(refused_frame_id(text))));
            }
        };
        if let WsMessage::Authenticate { token } = message {
            return self.authenticate(&token, self.last_seen);
        }
        if self.grant.is_none() && !matches!(message, WsMessage::Ping | WsMessage::Pong) {
            return Ok(unauthenticated(request_id(&message)));
        }
        Ok(match message {
            WsMessage::Ping => reply(WsMessage::Pong),
            WsMessage::Pong => Step::Nothing,
            WsMessage::Subscribe {
                channels,
                since,
                rewind,
            } => self.subscribe_request(channels, since, rewind),
            WsMessage::Unsubscribe { channels } => self.unsubscribe(channels),
            WsMessage::Publish {
                channel,
                data,
                id,
                key,
                ack_range,
            } => self.publish(PublishBody::Decoded { channel, data, key }, id, ack_range),
            message @ (WsMessage::PriceUpdate { .. } | WsMessage::AccountUpdate { .. }) => {
                Step::Forward(message)
            }
            WsMessage::Request { id, method, data } => Step::Request { id, method, data },
            other => reply(WsMessage::error(
                codes::UNSUPPORTED,
                format!(
                    "{} frames are sent by the hub, not by clients",
                    other.kind()
                ),
            )),
        })
    }

    /// When the task must call [`on_timer`](Self::on_timer) next: the earliest of the ping,
    /// the idle check and the authentication or expiry deadline.
    pub(crate) fn next_wake(&self) -> Instant {
        let at = self.next_ping.min(self.idle_check);
        self.deadline.map_or(at, |deadline| deadline.min(at))
    }

    /// The timer fired at `now`: end at a passed deadline or after silence, or ping the client.
    pub(crate) fn on_timer(&mut self, now: Instant) -> Result<Step, End> {
        if self.deadline.is_some_and(|deadline| deadline <= now) {
            return Err(match self.grant {
                None => End::Unauthorized("no Authenticate frame in time".to_owned()),
                Some(_) => End::Expired,
            });
        }
        let config = &self.hub.config;
        if self.idle_check <= now {
            let idle_after = config.idle_timeout;
            if now.duration_since(self.last_seen) >= idle_after {
                return Err(End::Idle);
            }
            self.idle_check = after(self.last_seen, idle_after);
        }
        if self.next_ping <= now {
            self.next_ping = after(now, config.ping_interval);
            return Ok(Step::Ping);
        }
        Ok(Step::Nothing)
    }

    /// Why the outbox stopped the connection, if it did.
    pub(crate) fn outbox_end(&self) -> Option<End> {
        match self.outbox.state() {
            OutboxState::Open => None,
            OutboxState::Overflowed => Some(End::SlowConsumer),
            OutboxState::Closed => Some(End::Shutdown),
            OutboxState::Restart => Some(End::Restart),
        }
    }

    /// Takes a new grant (or none, before authentication) at `now` and sets the deadline it
    /// implies.
    pub(super) fn set_grant(&mut self, grant: Option<Arc<Grant>>, now: Instant) {
        let config = &self.hub.config;
        // Saturating: a deadline too far away to represent is no deadline.
        let at = match &grant {
            None => now.checked_add(config.auth_timeout),
            Some(grant) => grant.expires_at.and_then(|at| {
                let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                now.checked_add(left)
            }),
        };
        self.deadline = at;
        if let Some(rate) = grant.as_ref().and_then(|g| g.publish_rate) {
            // The token's own publication budget replaces the hub's.
            self.publish_rate = RateLimit::new_or_unlimited(f64::from(rate), 0);
        }
        self.grant = grant;
    }

    /// Counts one control frame: `None` to act on it, `Some` with what to do instead (an
    /// answer, or nothing while a flood is being refused), or the end of a flood.
    fn control_budget(&mut self) -> Result<Option<Step>, End> {
        let limit = self.hub.config.rate_limit;
        let verdict = self.rate.check(self.last_seen);
        self.rate_refusal(verdict, limit, "control frames")
    }

    /// The publications per second this connection may send (0: no limit).
    fn publish_limit(&self) -> f64 {
        self.grant
            .as_ref()
            .and_then(|g| g.publish_rate)
            .map_or(self.hub.config.publish_rate_limit, f64::from)
    }

    /// What a rate limit's verdict calls for (see [`RateLimit::check`]).
    fn rate_refusal(&self, verdict: Verdict, limit: f64, what: &str) -> Result<Option<Step>, End> {
        match verdict {
            Verdict::Allow => Ok(None),
            Verdict::Refuse(answer) => {
                HubMetrics::add(&self.hub.metrics.frames_refused, 1);
                Ok(Some(match answer {
                    None => Step::Nothing,
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

    /// Leaves every channel and the connection registry. Runs on every end, also when the
    /// task unwinds from a panic (through `Drop`), and does nothing the second time.
    pub(crate) fn leave(&mut self) {
        self.hub.leave(self.subscriptions.drain(), self.id);
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.leave();
    }
}

/// `at + duration`, saturating at about 30 years from `at` instead of overflowing (a
/// configured duration can be as large as `Duration::MAX`).
pub(super) fn after(at: Instant, duration: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    at.checked_add(duration.min(FAR)).unwrap_or(at)
}

/// The current Unix time in milliseconds.
fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A text frame as read: a `Publish` read in place (its body, `id` and `ack_range`), or
/// what the general decoder made of it.
enum Decoded {
    Publish(PublishBody, Option<u64>, bool),
    Message(Result<WsMessage, DecodeError>),
}

/// The answer to a frame (answered with `id`) from a connection that must authenticate
/// first.
fn unauthenticated(id: Option<u64>) -> Step {
    let error = WsMessage::error(
        codes::UNAUTHORIZED,
        "authenticate first: send {\"type\":\"Authenticate\",\"token\":\"...\"}",
    );
    reply(error.with_id(id))
}

/// The `id` of a `Publish` or `Request` that the decoder refused (for its data, say), read
/// without the rest of the frame; `None` when the frame is not JSON enough to tell (or
/// nests deeper than serde_json reads, 128 levels).
fn refused_frame_id(text: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
        id: Option<u64>,
    }
    let head: Head<'_> = serde_json::from_str(text).ok()?;
    match head.kind.as_deref() {
        Some("Publish" | "Request") => head.id,
        _ => None,
    }
}

/// The `id` a client frame asks to be answered with, if any.
fn request_id(message: &WsMessage) -> Option<u64> {
    match message {
        WsMessage::Publish { id, .. } => *id,
        WsMessage::Request { id, .. } => Some(*id),
        _ => None,
    }
}

/// A reply, as the JSON to write.
pub(super) fn reply(message: WsMessage) -> Step {
    Step::Reply(message.to_json())
}

#[cfg(test)]
mod tests;
