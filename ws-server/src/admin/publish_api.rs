//! The HTTP publish API of the admin address: `POST /publish` and `POST /broadcast`, for data
//! utilities that publish without holding a WebSocket open.
//!
//! `POST /publish` takes `{"channel":..,"data":..,"key"?:..}` and answers `{"seq":N}` (with
//! `"duplicate":true` for a key seen within `WS_IDEMPOTENCY_WINDOW`), or an array of such
//! items, published in order, answered by an array with one result per item. `POST
//! /broadcast` sends its body (any JSON value) as it is to every open connection and answers
//! `{"connections":N}`. Refusals are `{"error":{"code":..,"message":..}}` with the protocol's
//! error codes.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use ws_protocol::{MAX_IDEMPOTENCY_KEY_LEN, check_portable_data, codes, is_valid_channel_name};

use crate::frame::Frame;
use crate::hub::Hub;
use crate::outbox::Outgoing;

/// The most items one `POST /publish` may carry.
pub(super) const MAX_BATCH: usize = 1000;

/// An HTTP answer: the status line's code and reason, and a JSON body.
pub(super) struct Answer {
    pub(super) status: &'static str,
    pub(super) body: String,
}

impl Answer {
    /// A refusal: `{"error":{"code":..,"message":..}}` with `status`.
    pub(super) fn refused(status: &'static str, code: &str, message: &str) -> Self {
        Self {
            status,
            body: serde_json::json!({"error": {"code": code, "message": message}}).to_string(),
        }
    }
}

/// One publication of a request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    key: Option<Cow<'a, str>>,
}

/// A refusal: its HTTP status, code and message.
struct Refusal {
    status: &'static str,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: "400 Bad Request",
            code,
            message: message.into(),
        }
    }

    fn answer(self) -> Answer {
        Answer::refused(self.status, self.code, &self.message)
    }

    /// The refusal as one item's result in a batch.
    fn json(self) -> String {
        self.answer().body
    }
}

/// `POST /publish` with `body`.
pub(super) async fn publish(hub: &Hub, body: &[u8]) -> Answer {
    let Ok(text) = std::str::from_utf8(body) else {
        return Refusal::bad(codes::BAD_REQUEST, "the body is not UTF-8").answer();
    };
    if text.trim_start().starts_with('[') {
        let items: Vec<&RawValue> = match serde_json::from_str(text) {
            Ok(items) => items,
            Err(e) => {
                return Refusal::bad(codes::BAD_REQUEST, format!("not a JSON array: {e}")).answer();
            }
        };
        if items.len() > MAX_BATCH {
            return Refusal::bad(
                codes::MESSAGE_TOO_LARGE,
                format!("{} items: at most {MAX_BATCH} per request", items.len()),
            )
            .answer();
        }
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            results.push(match one(hub, item.get()).await {
                Ok(result) => result,
                Err(refusal) => refusal.json(),
            });
        }
        return Answer {
            status: "200 OK",
            body: format!("[{}]", results.join(",")),
        };
    }
    match one(hub, text).await {
        Ok(body) => Answer {
            status: "200 OK",
            body,
        },
        Err(refusal) => refusal.answer(),
    }
}

/// Publishes one item; its result as JSON.
async fn one(hub: &Hub, json: &str) -> Result<String, Refusal> {
    let item: Item<'_> = serde_json::from_str(json).map_err(|e| {
        Refusal::bad(
            codes::BAD_REQUEST,
            format!("expected {{\"channel\":..,\"data\":..,\"key\"?:..}}: {e}"),
        )
    })?;
    if !is_valid_channel_name(&item.channel) {
        return Err(Refusal::bad(
            codes::INVALID_CHANNEL,
            format!("invalid channel name {:?}: 1 to 256 bytes", item.channel),
        ));
    }
    let limit = hub.config.max_message_size;
    if item.data.get().len() > limit {
        return Err(Refusal {
            status: "413 Payload Too Large",
            code: codes::MESSAGE_TOO_LARGE,
            message: format!(
                "data of {} bytes: the limit is {limit}",
                item.data.get().len()
            ),
        });
    }
    check_portable_data(item.data.get()).map_err(|why| Refusal::bad(codes::BAD_REQUEST, why))?;
    if let Some(key) = &item.key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN)
    {
        return Err(Refusal::bad(
            codes::BAD_REQUEST,
            format!(
                "an idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes, not {}",
                key.len()
            ),
        ));
    }
    match hub
        .publish(&item.channel, item.data.get(), item.key.as_deref())
        .await
    {
        Ok(published) if published.duplicate => {
            Ok(format!(r#"{{"seq":{},"duplicate":true}}"#, published.seq))
        }
        Ok(published) => Ok(format!(r#"{{"seq":{}}}"#, published.seq)),
        Err(e) => Err(Refusal {
            status: "503 Service Unavailable",
            code: codes::UNAVAILABLE,
            message: e.to_string(),
        }),
    }
}

/// `POST /broadcast` with `body`.
pub(super) fn broadcast(hub: &Hub, body: &[u8]) -> Answer {
    let Ok(text) = std::str::from_utf8(body) else {
        return Refusal::bad(codes::BAD_REQUEST, "the body is not UTF-8").answer();
    };
    if let Err(e) = serde_json::from_str::<&RawValue>(text) {
        return Refusal::bad(codes::BAD_REQUEST, format!("not one JSON value: {e}")).answer();
    }
    if text.len() > hub.config.max_message_size {
        return Refusal {
            status: "413 Payload Too Large",
            code: codes::MESSAGE_TOO_LARGE,
            message: format!(
                "{} bytes: the limit is {}",
                text.len(),
                hub.config.max_message_size
            ),
        }
        .answer();
    }
    let connections = hub
        .connections
        .broadcast(&Outgoing::direct(Frame::text(text.trim())));
    Answer {
        status: "200 OK",
        body: format!(r#"{{"connections":{connections}}}"#),
    }
}
