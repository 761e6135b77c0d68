//! `Publish`: the channel, the permission and the idempotency key are checked here; the task
//! hands the publication to the broker ([`Step::Publish`]) and answers its outcome with
//! [`publication_outcome`]: `Published` for a publication with an `id`, an `Error` (with
//! the `id`) for a refusal.

use tokio::sync::oneshot;
use ws_protocol::{
    MAX_IDEMPOTENCY_KEY_LEN, Payload, WsMessage, codes, encode_published, excerpt,
    invalid_channel_name, is_valid_channel_name,
};

use super::super::core::{Core, Step, reply};
use crate::broker::BrokerError;
use crate::channel::Published;

impl Core {
    /// A `Publish` of `data` on `channel`, answered with `id` if it has one, published at
    /// most once per `key`.
    pub(crate) fn publish(
        &mut self,
        channel: String,
        data: Payload,
        id: Option<u64>,
        key: Option<String>,
        ack_range: bool,
    ) -> Step {
        let refusal = if !is_valid_channel_name(&channel) {
            WsMessage::error(codes::INVALID_CHANNEL, invalid_channel_name(&channel))
        } else if !self.grant.as_ref().is_some_and(|g| g.may_publish(&channel)) {
            WsMessage::error(
                codes::FORBIDDEN,
                format!("not allowed to publish on {}", excerpt(&channel)),
            )
        } else if let Some(bad) = key
            .as_deref()
            .filter(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN)
        {
            WsMessage::error(
                codes::BAD_REQUEST,
                format!(
                    "an idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes, not {}",
                    bad.len()
                ),
            )
        } else {
            return Step::Publish {
                channel,
                data,
                id,
                key,
                ack_range,
            };
        };
        reply(refusal.with_id(id))
    }
}

/// What to answer (as JSON) once the broker is done with a publication on `channel`: with an
/// `id`, `Published` or an `Error` carrying it; without, only a refusal.
pub(crate) fn publication_outcome(
    channel: &str,
    id: Option<u64>,
    outcome: Result<Result<Published, BrokerError>, oneshot::error::RecvError>,
) -> Option<String> {
    let error = match outcome {
        Ok(Ok(published)) => {
            return Some(encode_published(
                id?,
                channel,
                published.seq,
                published.duplicate,
                1,
            ));
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => "the broker stopped".to_owned(),
    };
    let error = WsMessage::error(
        codes::UNAVAILABLE,
        format!("not published on {}: {error}", excerpt(channel)),
    );
    Some(error.with_id(id).to_json())
}
