//! `Publish`: the channel, the permission and the idempotency key are checked here; the task
//! hands the publication to the broker ([`Step::Publish`]) and answers its outcome with
//! [`publication_outcome`]: `Published` for a publication with an `id`, an `Error` (with
//! the `id`) for a refusal.
//!
//! A `Publish` in the canonical form (what every serde-derived client writes) is read in
//! place ([`PublishRef`]): its channel, data and key stay in the frame they came in
//! ([`PublishBody::InFrame`]), so the hub's every publication costs no decode into a
//! [`WsMessage`], no copy and no allocation before the one frame all subscribers share.

use std::ops::Range;

use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use ws_protocol::{
    MAX_IDEMPOTENCY_KEY_LEN, Payload, PublishRef, WsMessage, codes, encode_published, excerpt,
    invalid_channel_name, is_valid_channel_name,
};

use super::super::core::{Core, Step, reply};
use crate::broker::BrokerError;
use crate::channel::Published;

/// A publication's channel, data and idempotency key: in the frame they came in, or
/// decoded.
#[derive(Debug)]
pub(crate) enum PublishBody {
    /// Read in place: each is a range of the frame's text.
    InFrame {
        /// The frame's text.
        frame: Utf8Bytes,
        /// Where the channel is.
        channel: Range<u32>,
        /// Where the data is (one valid, portable JSON value).
        data: Range<u32>,
        /// Where the key is, if there is one.
        key: Option<Range<u32>>,
    },
    /// Decoded by the general decoder.
    Decoded {
        /// The channel.
        channel: String,
        /// The data.
        data: Payload,
        /// The key.
        key: Option<String>,
    },
}

impl PublishBody {
    /// The parts of `publish`, read from `frame`'s text, kept in place; `None` if a part
    /// lies beyond what a `u32` counts (a frame of 4 GiB, which a hub never takes whole).
    pub(crate) fn in_frame(frame: &Utf8Bytes, publish: &PublishRef<'_>) -> Option<Self> {
        let text = frame.as_str();
        let span = |part: &str| -> Option<Range<u32>> {
            let start = (part.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
            let end = start + part.len();
            (end <= text.len()).then_some(u32::try_from(start).ok()?..u32::try_from(end).ok()?)
        };
        Some(Self::InFrame {
            frame: frame.clone(),
            channel: span(publish.channel)?,
            data: span(publish.data)?,
            key: match publish.key {
                Some(key) => Some(span(key)?),
                None => None,
            },
        })
    }

    /// The channel.
    pub(crate) fn channel(&self) -> &str {
        match self {
            Self::InFrame { frame, channel, .. } => part(frame, channel),
            Self::Decoded { channel, .. } => channel,
        }
    }

    /// The data: one valid, portable JSON value.
    pub(crate) fn data(&self) -> &str {
        match self {
            Self::InFrame { frame, data, .. } => part(frame, data),
            Self::Decoded { data, .. } => data.as_str(),
        }
    }

    /// The idempotency key.
    pub(crate) fn key(&self) -> Option<&str> {
        match self {
            Self::InFrame { frame, key, .. } => key.as_ref().map(|key| part(frame, key)),
            Self::Decoded { key, .. } => key.as_deref(),
        }
    }
}

/// The part of `frame`'s text at `range` (made by [`PublishBody::in_frame`], so always
/// there).
fn part<'a>(frame: &'a Utf8Bytes, range: &Range<u32>) -> &'a str {
    frame
        .as_str()
        .get(range.start as usize..range.end as usize)
        .unwrap_or_default()
}

impl Core {
    /// A `Publish` of `body`, answered with `id` if it has one, published at most once per
    /// key.
    pub(crate) fn publish(&mut self, body: PublishBody, id: Option<u64>, ack_range: bool) -> Step {
        let channel = body.channel();
        let refusal = if !is_valid_channel_name(channel) {
            WsMessage::error(codes::INVALID_CHANNEL, invalid_channel_name(channel))
        } else if !self.grant.as_ref().is_some_and(|g| g.may_publish(channel)) {
            WsMessage::error(
                codes::FORBIDDEN,
                format!("not allowed to publish on {}", excerpt(channel)),
            )
        } else if let Some(bad) = body
            .key()
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
                body,
                id,
                ack_range,
                at: self.last_seen,
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
