//! [`open`]: one connection (TCP, TLS, upgrade), and whether the server is our hub.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use ws_protocol::WsMessage;

use crate::settings::{ServerProtocol, Settings};
pub(crate) use crate::transport::Socket;
use crate::transport::connect;

/// How long `Auto` waits for a first frame to tell our hub from another server.
const DETECT_WINDOW: Duration = Duration::from_secs(1);

/// An open connection, before the connection task takes it over.
pub(crate) struct Link {
    pub(crate) ws: Socket,
    /// The hub's connection id; `None` when the server is not our hub.
    pub(crate) hub: Option<u64>,
    /// A first frame read while telling a plain server from our hub.
    pub(crate) early: Option<Message>,
}

/// Opens one connection: TCP, TLS, upgrade, then tells our hub from another server.
pub(crate) async fn open(settings: &Settings, url: &str) -> Result<Link, String> {
    let mut ws = tokio::time::timeout(settings.connect_timeout, connect(settings, url))
        .await
        .map_err(|_| format!("timed out after {:?}", settings.connect_timeout))??;

    let window = match settings.protocol {
        ServerProtocol::Raw => {
            return Ok(Link {
                ws,
                hub: None,
                early: None,
            });
        }
        ServerProtocol::Hub => settings.connect_timeout,
        ServerProtocol::Auto => settings.connect_timeout.min(DETECT_WINDOW),
    };
    let first = loop {
        match tokio::time::timeout(window, ws.next()).await {
            Err(_) => break None,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(frame))) => break Some(frame),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("the server closed the connection at once".to_owned()),
        }
    };
    if let Some(Message::Text(text)) = &first
        && let Ok(WsMessage::Connected { connection_id, .. }) = WsMessage::from_json(text.as_str())
    {
        return Ok(Link {
            ws,
            hub: Some(connection_id),
            early: None,
        });
    }
    match settings.protocol {
        ServerProtocol::Hub => Err(format!(
            "the server did not start with a Connected frame (got {first:?}); is it a ws hub?"
        )),
        _ => Ok(Link {
            ws,
            hub: None,
            early: first,
        }),
    }
}
