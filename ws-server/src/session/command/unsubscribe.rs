//! `Unsubscribe`: ends the subscriptions at once; nothing of those channels is delivered
//! after the `Unsubscribed` reply.

use ws_protocol::WsMessage;

use super::super::core::{Core, Step, reply};

impl Core {
    /// An `Unsubscribe` of `channels` (those not subscribed to are ignored).
    pub(crate) fn unsubscribe(&mut self, channels: Vec<String>) -> Step {
        for channel in &channels {
            if self.subscriptions.remove(channel.as_str()) {
                self.hub.unsubscribe(channel, self.id, &self.outbox);
            }
        }
        reply(WsMessage::Unsubscribed { channels })
    }

    /// Ends the subscriptions the current grant does not allow; returns their channels.
    pub(crate) fn withdraw_forbidden(&mut self) -> Vec<String> {
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
            self.hub.unsubscribe(channel, self.id, &self.outbox);
        }
        withdrawn
    }
}
