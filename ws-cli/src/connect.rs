//! The client every command builds: the URL, the token, the proxy, and whether the server is
//! the hub.

use anyhow::{Context, Result};
use ws_client::{ServerProtocol, WebSocketClient};

/// How to reach the server: the command line's global options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reach<'a> {
    /// A JWT, sent as a bearer token.
    pub(crate) token: Option<&'a str>,
    /// A proxy URL; without it, the proxy of the conventional environment variables.
    pub(crate) proxy: Option<&'a str>,
}

/// Connects to `url` (settings from the `WS_*` environment, as any `ws-client`) as `reach`
/// says; `raw` for a server that is not the hub.
pub(crate) async fn connect(url: &str, reach: Reach<'_>, raw: bool) -> Result<WebSocketClient> {
    let mut builder = WebSocketClient::builder().url(url).protocol(if raw {
        ServerProtocol::Raw
    } else {
        ServerProtocol::Hub
    });
    builder = match reach.proxy {
        Some(proxy) => builder.proxy(proxy),
        // A terminal tool follows the shell's proxy settings, as curl does.
        None => builder.proxy_from_env(),
    };
    if let Some(token) = reach.token {
        builder = builder.header("Authorization", format!("Bearer {token}"));
    }
    builder
        .build()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}
