//! `Subscribe`: checked at once (names, permission, the per-connection limit), then, once the
//! task has attached the channels to the broker, all subscribed or none.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use ws_protocol::{
    Position, WsMessage, codes, excerpt, invalid_channel_name, is_valid_channel_name,
};

use super::super::core::{Core, Step, reply};
use crate::hub::{AttachError, Attached, Replay};

/// A `Subscribe` that passed the checks, waiting for its channels to be attached.
pub(crate) struct SubscribeRequest {
    /// The channels, as the client named them.
    pub(crate) channels: Vec<String>,
    /// Where the client's copy of each channel ends, for the replay of what followed.
    since: BTreeMap<String, Position>,
    /// How many of the latest publications to replay for channels without a `since`.
    rewind: Option<u64>,
}

impl Core {
    /// A `Subscribe`: refused at once if a check fails, otherwise the channels must be
    /// attached first ([`Step::Subscribe`]).
    pub(crate) fn subscribe_request(
        &mut self,
        channels: Vec<String>,
        since: BTreeMap<String, Position>,
        rewind: Option<u64>,
    ) -> Step {
        if let Some((code, message)) = self.refusal(&channels) {
            return reply(WsMessage::subscribe_refused(code, message, &channels));
        }
        Step::Subscribe(SubscribeRequest {
            channels,
            since,
            rewind,
        })
    }

    /// Subscribes to the channels of `request` once [`Hub::attach`](crate::hub::Hub::attach)
    /// is done: all of them, or, if one cannot be attached or held, none.
    pub(crate) fn subscribe(
        &mut self,
        request: SubscribeRequest,
        attached: Result<Attached, AttachError>,
    ) -> Step {
        let SubscribeRequest {
            channels,
            since,
            rewind,
        } = request;
        let attached = match attached {
            Ok(attached) => attached,
            Err(AttachError { channel, error }) => {
                let message = format!(
                    "not subscribed to {}: {error}; nothing changed",
                    excerpt(&channel)
                );
                return reply(WsMessage::subscribe_refused(
                    codes::UNAVAILABLE,
                    message,
                    &channels,
                ));
            }
        };
        let mut positions = BTreeMap::new();
        let mut added: Vec<Arc<str>> = Vec::new();
        for channel in &channels {
            let new = !self.subscriptions.contains(channel.as_str());
            let subscribed = self.hub.subscribe(
                &attached,
                channel,
                self.id,
                &self.outbox,
                Replay {
                    since: since.get(channel),
                    rewind,
                },
                new,
            );
            let (key, position) = match subscribed {
                Ok(subscribed) => subscribed,
                Err(full) => {
                    // All or nothing, like every other refusal of a Subscribe.
                    for key in added {
                        self.subscriptions.remove(&key);
                        self.hub.unsubscribe(&key, self.id, &self.outbox);
                    }
                    let message = format!("{full}; nothing changed");
                    return reply(WsMessage::subscribe_refused(
                        codes::UNAVAILABLE,
                        message,
                        &channels,
                    ));
                }
            };
            if self.subscriptions.insert(key.clone()) {
                added.push(key);
            }
            positions.insert(channel.clone(), position);
        }
        // In effect now: a publication from anyone after this point is queued for us, and is
        // written after this reply.
        reply(WsMessage::Subscribed {
            channels,
            positions,
        })
    }

    /// Why a `Subscribe` of `channels` is refused before anything is attached, if it is.
    fn refusal(&self, channels: &[String]) -> Option<(&'static str, String)> {
        if let Some(bad) = channels.iter().find(|c| !is_valid_channel_name(c)) {
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
        let limit = self.hub.config.max_subscriptions;
        if self.subscriptions.len() + new > limit {
            let message = format!("at most {limit} subscriptions per connection; nothing changed");
            return Some((codes::TOO_MANY_SUBSCRIPTIONS, message));
        }
        None
    }
}
