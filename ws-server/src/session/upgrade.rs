//! The WebSocket upgrade of one accepted socket: the HTTP request checked first (a malformed
//! one gets a status that says why), then tungstenite's handshake with the admission checks
//! (`admission.rs`), all within `WS_HANDSHAKE_TIMEOUT` and given up at shutdown. A POST to the
//! HTTP publish API is answered instead of upgraded (`admin/public_port.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tracing::debug;
use ws_protocol::Encoding;
use ws_protocol::deflate::{FramesFrom, Inflater};

use super::admission::admit;
use super::compression;
use super::subprotocol::negotiate;
use crate::admin;
use crate::auth::Grant;
use crate::hub::Hub;
use crate::read_ahead::ReadAhead;
use crate::upgrade_request;

/// An upgraded connection.
pub(super) struct Upgraded<S> {
    /// The WebSocket, over a socket read in large chunks.
    pub(super) ws: WebSocketStream<ReadAhead<S>>,
    /// What the token of the upgrade allows (or the open hub's grant); `None`: the connection
    /// must authenticate with a frame.
    pub(super) grant: Option<Arc<Grant>>,
    /// The connection's place among the open connections (`WS_MAX_CONNECTIONS`).
    pub(super) slot: OwnedSemaphorePermit,
    /// How its messages are written (the subprotocol agreed in the upgrade).
    pub(super) encoding: Encoding,
    /// If it agreed to permessage-deflate (its reads then inflate): the largest window the
    /// hub may use, as a power of two.
    pub(super) deflate_window: Option<u8>,
}

/// Upgrades `stream` from `peer`; `None` (logged) if the upgrade failed, was refused, timed
/// out or the hub is shutting down. `upgrading`, the socket's place among the pending
/// upgrades, is given back when this returns: an upgraded connection takes a place among the
/// open connections instead.
pub(super) async fn upgrade<S>(
    hub: &Hub,
    stream: S,
    peer: SocketAddr,
    upgrading: OwnedSemaphorePermit,
) -> Option<Upgraded<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = ReadAhead::new(stream);
    let deadline = tokio::time::Instant::now() + hub.config.handshake_timeout;
    let head = tokio::select! {
        () = hub.token.cancelled() => return None,
        head = tokio::time::timeout_at(deadline, stream.peek_head(upgrade_request::MAX_HEAD)) => head,
    };
    if head.is_ok_and(|head| head.is_ok_and(admin::is_api_request)) {
        // Bounded by the admin requests' own timeouts, so that a publication under way is
        // answered rather than cut off. Boxed: the session's future, which every connection
        // holds, stays as small as it was.
        if let Err(error) = Box::pin(admin::answer_on_public_port(hub, &mut stream)).await {
            debug!(%peer, %error, "HTTP API request on the public port failed");
        }
        return None;
    }
    // The upgrade checks the Origin, the connection limit and any token, and leaves the
    // grant of an accepted token and the connection's place here.
    let mut grant = None;
    let mut slot = None;
    let mut encoding = Encoding::Json;
    let mut deflate_window = None;
    let handshake = async {
        let head = stream.peek_head(upgrade_request::MAX_HEAD).await?;
        if let Err(refusal) = upgrade_request::check(head) {
            debug!(%peer, status = refusal.status, "upgrade request refused");
            refusal.write(&mut stream).await;
            return Err(WsError::Http(Box::default()));
        }
        #[allow(clippy::result_large_err)] // tungstenite's callback signature
        let check = |request: &Request, response: Response| {
            let response = admit(hub, request, response, &mut grant, &mut slot)?;
            let (response, agreed) = negotiate(request, response);
            encoding = agreed;
            let (response, agreed) =
                compression::negotiate(hub.config.compression, request, response);
            deflate_window = agreed.map(|agreed| agreed.server_max_window_bits);
            Ok(response)
        };
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(hub.ws_config)).await
    };
    let mut ws = tokio::select! {
        () = hub.token.cancelled() => return None,
        result = tokio::time::timeout_at(deadline, handshake) => match result {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "WebSocket upgrade failed");
                return None;
            }
            Err(_) => {
                debug!(%peer, "WebSocket upgrade timed out");
                return None;
            }
        },
    };
    drop(upgrading);
    if deflate_window.is_some() {
        ws.get_mut().inflate(Inflater::new(
            FramesFrom::Client,
            hub.config.max_message_size,
        ));
    }
    // admit() gives a slot to every upgrade it accepts.
    let slot = slot?;
    Some(Upgraded {
        ws,
        grant,
        slot,
        encoding,
        deflate_window,
    })
}
