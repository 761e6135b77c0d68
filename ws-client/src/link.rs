//! [`open`]: one connection (TCP, TLS, upgrade), and whether the server is our hub.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as TungsteniteConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use ws_protocol::WsMessage;

use crate::settings::{ServerProtocol, Settings};

/// A client WebSocket, plain or TLS.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

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
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    for (name, value) in &settings.headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let config = TungsteniteConfig::default()
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_message_size))
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(64 * 1024 + 2 * settings.max_message_size)
        .read_buffer_size(64 * 1024);
    let connector = settings.tls.clone().map(Connector::Rustls);
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector);
    let (mut ws, _) = tokio::time::timeout(settings.connect_timeout, connecting)
        .await
        .map_err(|_| format!("timed out after {:?}", settings.connect_timeout))?
        .map_err(|e| e.to_string())?;

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
