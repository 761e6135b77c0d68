//! Request/reply: a client's `Request { id, method, data }` goes to the application embedding
//! the hub as a [`Request`], and what the application answers goes back as `Reply { id, data }`
//! or `Error { id, code, message }`.
//!
//! The connection does not wait for the answer: each request has a small task (owned by the
//! hub, ended at shutdown) that waits for it at most `WS_REQUEST_TIMEOUT` and queues the
//! answer to the connection like any frame the hub sends it. No answer in time is
//! `Error { code: "timeout" }`; a request dropped unanswered is `Error { code: "unavailable" }`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use ws_protocol::{Payload, WsMessage, codes};

use crate::connections::ConnectionId;
use crate::error::Result;
use crate::frame::Frame;
use crate::hub::Hub;
use crate::outbox::{Outbox, Outgoing};

/// One request of a client, for the application to answer with [`reply`](Self::reply) or
/// [`fail`](Self::fail). Dropping it unanswered tells the client
/// `Error { code: "unavailable" }`.
#[derive(Debug)]
pub struct Request {
    /// What is asked, such as `orders.place`.
    pub method: String,
    /// The request's data, as the client sent it.
    pub data: Payload,
    /// The connection that asked.
    pub connection: ConnectionId,
    /// The subject (`sub`) of the connection's token, if it has one.
    pub subject: Option<String>,
    answer: oneshot::Sender<Answer>,
}

/// What the application answered.
#[derive(Debug)]
enum Answer {
    Reply(Payload),
    Fail { code: String, message: String },
}

impl Request {
    /// Answers with `Reply { id, data }`, `data` serialized as JSON.
    ///
    /// # Errors
    /// [`ServerError::Encode`](crate::ServerError::Encode) if `data` cannot be serialized;
    /// the request is then answered with `Error { code: "unavailable" }`.
    pub fn reply<T: Serialize + ?Sized>(self, data: &T) -> Result<()> {
        let payload = Payload::from_value(data)?;
        let _ = self.answer.send(Answer::Reply(payload));
        Ok(())
    }

    /// Answers with `Error { id, code, message }`: the application refused the request.
    /// `code` is the application's own (snake_case by convention).
    pub fn fail(self, code: impl Into<String>, message: impl Into<String>) {
        let _ = self.answer.send(Answer::Fail {
            code: code.into(),
            message: message.into(),
        });
    }
}

/// The stream of client requests, from [`WebSocketServer::requests`](crate::WebSocketServer::requests).
///
/// The queue behind it is bounded (the `incoming_capacity` of the builder): a request that
/// finds it full is answered `Error { code: "unavailable" }` at once, so that a slow
/// application never stalls the connections. While no `Requests` exists, requests are
/// answered `Error { code: "unsupported" }`.
#[derive(Debug)]
pub struct Requests {
    pub(crate) rx: mpsc::Receiver<Request>,
}

impl Requests {
    /// The next request; `None` once the server has shut down or another `Requests`
    /// replaced this one.
    pub async fn recv(&mut self) -> Option<Request> {
        self.rx.recv().await
    }
}

impl Stream for Requests {
    type Item = Request;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Hands a client's request `id` to the application and arranges for its answer to be
/// queued to `outbox`. Returns the frame (JSON) to answer at once instead, when there is no
/// application to ask or it cannot take the request now.
pub(crate) fn ask(
    hub: &Arc<Hub>,
    outbox: &Arc<Outbox>,
    connection: ConnectionId,
    subject: Option<String>,
    id: u64,
    method: String,
    data: Payload,
) -> Option<String> {
    let Some(sender) = hub.request_sender() else {
        let refusal = WsMessage::error(
            codes::UNSUPPORTED,
            format!("this hub has no application answering requests (method {method:?})"),
        );
        return Some(refusal.with_id(Some(id)).to_json());
    };
    let (answer, answered) = oneshot::channel();
    let request = Request {
        method,
        data,
        connection,
        subject,
        answer,
    };
    if sender.try_send(request).is_err() {
        let busy = WsMessage::error(
            codes::UNAVAILABLE,
            "the application has too many requests waiting; retry later",
        );
        return Some(busy.with_id(Some(id)).to_json());
    }
    let deadline = hub.config.request_timeout;
    let (token, outbox) = (hub.token.clone(), outbox.clone());
    hub.spawn(async move {
        let answered = tokio::select! {
            () = token.cancelled() => return,
            answered = tokio::time::timeout(deadline, answered) => answered,
        };
        let frame = match answered {
            Ok(Ok(Answer::Reply(data))) => WsMessage::Reply { id, data },
            Ok(Ok(Answer::Fail { code, message })) => {
                WsMessage::error(&code, message).with_id(Some(id))
            }
            Ok(Err(_)) => WsMessage::error(
                codes::UNAVAILABLE,
                "the application dropped the request without answering",
            )
            .with_id(Some(id)),
            Err(_) => WsMessage::error(
                codes::TIMEOUT,
                format!(
                    "no answer within {deadline:?} (WS_REQUEST_TIMEOUT); the outcome is unknown"
                ),
            )
            .with_id(Some(id)),
        };
        // A connection that is gone or cut as a slow consumer gets nothing, as for any frame.
        outbox.push(Outgoing::direct(Frame::text(&frame.to_json())));
    });
    None
}
