//! Opening a connection with tokio-tungstenite: its own TCP, TLS and upgrade.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as TungsteniteConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::settings::Settings;

/// TCP, TLS for `wss://` (with the settings' roots), the upgrade with the settings' headers.
pub(super) async fn connect(
    settings: &Settings,
    url: &str,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, String> {
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
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector)
            .await
            .map_err(|e| e.to_string())?;
    Ok(ws)
}
