//! [`Settings`]: everything the builder decided, shared read-only with the connection task.

use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

/// Which protocol the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ServerProtocol {
    /// Decide per connection from the first frame: `Connected` means our hub; anything else
    /// (or nothing within a second) means a plain server. The default.
    #[default]
    Auto,
    /// Our hub: the first frame must be `Connected`; subscriptions are restored with
    /// `Subscribe` after every reconnect.
    Hub,
    /// Any other server: every text frame is a message for the application, and the frames
    /// registered with [`on_connect`](crate::ClientBuilder::on_connect) are sent after every
    /// (re)connect.
    Raw,
}

#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) max_connection_age: Option<Duration>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) auto_reconnect: bool,
    pub(crate) reconnect_interval: Duration,
    pub(crate) max_reconnect_delay: Duration,
    pub(crate) max_reconnect_attempts: Option<u32>,
    pub(crate) healthy_after: Duration,
    pub(crate) first_retry_window: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) stale_timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) event_capacity: usize,
    pub(crate) max_message_size: usize,
    pub(crate) protocol: ServerProtocol,
    pub(crate) on_connect: Vec<String>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) transport: crate::transport::Transport,
    pub(crate) encoding: ws_protocol::Encoding,
    pub(crate) compression: bool,
    /// Which connections go through a proxy.
    pub(crate) proxy: crate::proxy::ProxyRoute,
}
