//! The client every command builds: the URL, the token, and whether the server is the hub.

use anyhow::{Context, Result};
use ws_client::{ServerProtocol, WebSocketClient};

/// Connects to `url` (settings from the `WS_*` environment, as any `ws-client`), sending
/// `token` as a bearer token if given; `raw` for a server that is not the hub.
pub(crate) async fn connect(url: &str, token: Option<&str>, raw: bool) -> Result<WebSocketClient> {
    let mut builder = WebSocketClient::builder().url(url).protocol(if raw {
        ServerProtocol::Raw
    } else {
        ServerProtocol::Hub
    });
    if let Some(token) = token {
        builder = builder.header("Authorization", format!("Bearer {token}"));
    }
    builder
        .build()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}
