//! [`Incoming`]: the frames clients send that the hub does not handle itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;
use ws_protocol::WsMessage;

use crate::connections::ConnectionId;

/// The stream of application frames (`PriceUpdate`, `AccountUpdate`) that clients send to the
/// hub, with the id of the connection that sent each. Obtained from
/// [`WebSocketServer::incoming`](crate::WebSocketServer::incoming).
///
/// The queue behind it is bounded: when the application falls behind, the sending
/// connections stop being read (TCP pushes back on those clients only); nothing is dropped.
/// While no `Incoming` exists, clients that send such frames get
/// `Error { code: "unsupported" }` instead.
#[derive(Debug)]
pub struct Incoming {
    pub(crate) rx: mpsc::Receiver<(ConnectionId, WsMessage)>,
}

impl Incoming {
    /// The next frame; `None` once the server has shut down or another `Incoming` replaced
    /// this one.
    pub async fn recv(&mut self) -> Option<(ConnectionId, WsMessage)> {
        self.rx.recv().await
    }
}

impl Stream for Incoming {
    type Item = (ConnectionId, WsMessage);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
