//! `Publish`: the channel and the permission are checked here; the task hands the
//! publication to the broker ([`Step::Publish`]) and answers a refusal with
//! [`refusal_of_publication`].

use tokio::sync::oneshot;
use ws_protocol::{
    Payload, WsMessage, codes, excerpt, invalid_channel_name, is_valid_channel_name,
};

use super::super::core::{Core, Step, reply};
use crate::broker::BrokerError;
use crate::channel::Published;

impl Core {
    /// A `Publish` of `data` on `channel`.
    pub(crate) fn publish(&mut self, channel: String, data: Payload) -> Step {
        if !is_valid_channel_name(&channel) {
            reply(WsMessage::error(
                codes::INVALID_CHANNEL,
                invalid_channel_name(&channel),
            ))
        } else if !self.grant.as_ref().is_some_and(|g| g.may_publish(&channel)) {
            reply(WsMessage::error(
                codes::FORBIDDEN,
                format!("not allowed to publish on {}", excerpt(&channel)),
            ))
        } else {
            Step::Publish { channel, data }
        }
    }
}

/// The `Error` frame (as JSON) reporting a publication the broker refused, if it was.
pub(crate) fn refusal_of_publication(
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
