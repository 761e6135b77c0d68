//! What the client sends: frames as they are, publications (acknowledged or not) and
//! requests.

use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use ws_protocol::Payload;

use super::WebSocketClient;
use crate::acks::Key;
use crate::buffer::OutboundFrame;
use crate::driver::Command;
use crate::error::{Error, Result};

impl WebSocketClient {
    /// Queues `message` as one JSON text frame. It is written at once when connected, or
    /// after the next reconnect (and resubscribe), in order. There is no acknowledgement: a
    /// frame already handed to the socket when the connection dies may be lost with it; frames
    /// not yet handed over go back to the buffer and are sent after the reconnect.
    ///
    /// # Errors
    /// [`Error::BufferFull`] at once when the buffer is full (the frame is given back);
    /// [`Error::Failed`] or [`Error::Closed`] when the client has ended;
    /// [`Error::Encode`] if `message` cannot be serialized.
    pub async fn send<T: Serialize + ?Sized>(&self, message: &T) -> Result<()> {
        self.send_text(serde_json::to_string(message)?).await
    }

    /// Queues one text frame as it is.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_text(&self, text: impl Into<String>) -> Result<()> {
        self.usable()?;
        self.shared
            .buffer
            .push_frame(OutboundFrame::Text(text.into()))
            .map_err(Error::BufferFull)
    }

    /// Queues one binary frame, like [`send`](Self::send) (for servers that are not our hub;
    /// the hub answers binary frames with an error).
    ///
    /// # Errors
    /// [`Error::BufferFull`] at once when the buffer is full (the frame is given back);
    /// [`Error::Failed`] or [`Error::Closed`] when the client has ended.
    pub async fn send_binary(&self, bytes: impl Into<Vec<u8>>) -> Result<()> {
        self.usable()?;
        self.shared
            .buffer
            .push_frame(OutboundFrame::Binary(bytes.into()))
            .map_err(Error::BufferFull)
    }

    /// Publishes `data` on a hub channel and returns its `seq` once the hub has acknowledged
    /// it (with Redis: once Redis has appended it). Nothing is lost or doubled on the way:
    /// the `Publish` carries an `id` and an idempotency key made from this client and a
    /// counter, and if the connection dies before the acknowledgement the frame is sent again
    /// after the reconnect (or on another connection) and published once. Many publishes may
    /// be in flight at once (call it from several tasks, or join the futures): they are sent
    /// in order, pipelined. Unacknowledged publications count against the outbound buffer.
    ///
    /// # Errors
    /// [`Error::BufferFull`] at once when the buffer (with what awaits acknowledgement) is
    /// full; [`Error::Refused`] when the hub refused it (not published: a forbidden channel,
    /// a rate limit, Redis unreachable, …); [`Error::OutcomeUnknown`] or
    /// [`Error::NotSent`] when no acknowledgement came within
    /// [`publish_timeout`](crate::ClientBuilder::publish_timeout) (publishing again with the
    /// same data is not deduplicated: it gets a new key); [`Error::Encode`],
    /// [`Error::Failed`], [`Error::Closed`] as for [`send`](Self::send).
    pub async fn publish<T: Serialize + ?Sized>(&self, channel: &str, data: &T) -> Result<u64> {
        self.usable()?;
        let acks = &self.shared.acks;
        let now = Instant::now();
        let (id, answer, waiting) = acks.expect_published(now + self.shared.publish_timeout);
        let encoded = serde_json::to_string(&PublishRef {
            channel,
            data,
            id: Some(id),
            key: Some(acks.key(id)),
            ack_range: true,
        });
        let frame = match encoded {
            Ok(frame) => frame,
            Err(e) => {
                let _ = acks.give_up(id, "publication");
                return Err(e.into());
            }
        };
        if let Err(unsent) =
            self.shared
                .buffer
                .push(OutboundFrame::Text(frame), Some(id), waiting, now)
        {
            let _ = acks.give_up(id, "publication");
            return Err(Error::BufferFull(unsent));
        }
        // No timer of its own: the client's deadline sweep (`Acks::expire`) answers it.
        match answer.await {
            Ok(outcome) => outcome,
            Err(_) => Err(self.ended_error()),
        }
    }

    /// Publishes `data` on a hub channel without waiting for an acknowledgement (a plain
    /// `Publish` frame), queued like [`send`](Self::send): the fastest way, for data where a
    /// publication lost with a dying connection does not matter.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn publish_unacknowledged<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<()> {
        let frame = PublishRef {
            channel,
            data,
            id: None,
            key: None,
            ack_range: false,
        };
        self.send(&frame).await
    }

    /// Publishes data that is already JSON text, without re-encoding it, acknowledged like
    /// [`publish`](Self::publish).
    ///
    /// # Errors
    /// As [`publish`](Self::publish); [`Error::Decode`] if `json` is not one JSON value.
    pub async fn publish_json(&self, channel: &str, json: &str) -> Result<u64> {
        let raw: &RawValue = serde_json::from_str(json).map_err(|e| Error::Decode {
            text: json.to_owned(),
            reason: e.to_string(),
        })?;
        self.publish(channel, raw).await
    }

    /// Asks the application embedding the hub (`method`, `data`) and returns its reply's
    /// data. A request is sent once, when connected, and never again by itself: it may be an
    /// order.
    ///
    /// # Errors
    /// [`Error::Refused`] with the application's (or the hub's) code when it refused;
    /// [`Error::OutcomeUnknown`] when no reply came within `timeout` or the connection was
    /// lost after sending it (it may or may not have been acted on: check before asking
    /// again); [`Error::NotSent`] when it could not be sent within `timeout`;
    /// [`Error::Encode`], [`Error::Failed`], [`Error::Closed`] as for [`send`](Self::send).
    pub async fn request<T: Serialize + ?Sized>(
        &self,
        method: &str,
        data: &T,
        timeout: Duration,
    ) -> Result<Payload> {
        #[derive(Serialize)]
        #[serde(tag = "type", rename = "Request")]
        struct RequestRef<'a, T: ?Sized> {
            id: u64,
            method: &'a str,
            data: &'a T,
        }
        self.usable()?;
        let acks = &self.shared.acks;
        let id = acks.next();
        let frame = serde_json::to_string(&RequestRef { id, method, data })?;
        let answer = acks.expect_reply(id);
        // One connection carries it: the first that takes the command.
        let mut sent = false;
        for connection in &self.shared.connections {
            let command = Command::Request {
                id,
                frame: frame.clone(),
            };
            if connection.send(command).await.is_ok() {
                sent = true;
                break;
            }
        }
        if !sent {
            let _ = acks.give_up(id, "request");
            return Err(self.ended_error());
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(self.ended_error()),
            Err(_) => Err(acks.give_up(id, "request")),
        }
    }
}

/// A `Publish` frame, written without copying `data` into an intermediate value.
#[derive(Serialize)]
#[serde(tag = "type", rename = "Publish")]
struct PublishRef<'a, T: ?Sized> {
    channel: &'a str,
    data: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<Key<'a>>,
    /// The hub may acknowledge it with the ones next to it in one `Published`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ack_range: bool,
}
