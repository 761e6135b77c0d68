//! What each client frame calls for: decided without I/O where it can be ([`Session::on_frame`]
//! returns a [`Next`]), and the commands whose work awaits (subscribe, authenticate, forward,
//! publish through the broker).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::debug;
use ws_protocol::{
    Payload, Position, WsMessage, codes, excerpt, invalid_channel_name,
    is_valid_channel_name as is_valid_name,
};

use super::ending::End;
use super::{Next, Session, Slow, reply};
use crate::auth::Grant;
use crate::broker::{BrokerError, Submission};
use crate::channel::Published;
use crate::metrics::HubMetrics;
use crate::rate_limit::{RateLimit, Verdict};

/// The `Error` frame (as JSON) reporting a publication the broker refused, if it was.
pub(super) fn refusal_of_publication(
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

fn invalid_channel(channel: &str) -> WsMessage {
    WsMessage::error(codes::INVALID_CHANNEL, invalid_channel_name(channel))
}

/// Publications of one connection that may travel to the broker at once (pipelined); the
/// next waits for the oldest.
const MAX_PUBLISHING: usize = 256;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Decides what a client's frame calls for, without I/O.
    pub(super) fn on_frame(&mut self, message: Message) -> Result<Next, End> {
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
    pub(super) async fn slow(&mut self, command: Slow) -> Result<(), End> {
        match command {
            Slow::Subscribe { channels, since } => self.subscribe(channels, since).await,
            Slow::Authenticate(token) => self.authenticate(token).await,
            Slow::Forward(message) => self.forward(message).await,
        }
    }

    /// Hands a publication to the broker, and returns the `Error` to write if it was refused.
    /// The embedded broker publishes at once; with Redis a publication travels pipelined and
    /// its outcome is looked at when it arrives, in order.
    pub(super) async fn publish(&mut self, channel: String, data: Payload) -> Option<String> {
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
    pub(super) fn set_grant(&mut self, grant: Option<Arc<Grant>>) {
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
}
