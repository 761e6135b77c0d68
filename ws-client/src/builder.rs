//! [`ClientBuilder`]: every setting of the client, then `build().await`.
//!
//! One concept kept whole (over 500 lines): one short setter per setting, each next to its
//! documentation, then `build`, which wires the connections' tasks together.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use ws_protocol::{Encoding, WebSocketConfig};

use crate::acks::Acks;
use crate::buffer::OutboundBuffer;
use crate::client::{ClientParts, Inbox, WebSocketClient};
use crate::combined_state::CombinedState;
use crate::driver::{Driver, DriverParts};
use crate::epochs::Epochs;
use crate::error::{Error, Result};
use crate::feed::{FeedSequencer, SequenceBy};
use crate::link::open;
use crate::metrics::Counters;
use crate::proxy::{ProxyChoice, ProxyRoute};
use crate::sequencer::{DEFAULT_GAP_TIMEOUT, Sequencer};
use crate::settings::{ServerProtocol, Settings};
use crate::state::ConnectionState;
use crate::tls;
use crate::transport::Transport;

/// Default for [`ClientBuilder::backoff_reset_after`].
pub const DEFAULT_BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// Default for [`ClientBuilder::first_retry_window`].
pub(crate) const DEFAULT_FIRST_RETRY_WINDOW: Duration = Duration::from_millis(250);
/// Default for [`ClientBuilder::max_buffer_age`].
pub const DEFAULT_MAX_BUFFER_AGE: Duration = Duration::from_secs(30);
/// Default for [`ClientBuilder::event_capacity`].
pub const DEFAULT_EVENT_CAPACITY: usize = 4096;
/// Default for [`ClientBuilder::max_message_size`]: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Default for [`ClientBuilder::publish_timeout`]: as long as a frame may wait in the
/// outbound buffer, plus time for the hub to answer.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(35);

/// Builds a [`WebSocketClient`]; start from [`WebSocketClient::builder`].
///
/// Defaults come from the `WS_*` environment variables (and a `.env` file), read by
/// [`WebSocketConfig::from_env`], with the documented default for each one unset; a setter
/// called on the builder wins over the environment. An invalid variable makes
/// [`build`](Self::build) fail with [`Error::InvalidConfig`] naming it.
/// [`from_config`](Self::from_config) starts from a given configuration instead.
///
/// ```no_run
/// use std::time::Duration;
/// use ws_client::WebSocketClient;
///
/// # async fn demo() -> ws_client::Result<()> {
/// let client = WebSocketClient::builder()
///     .url("ws://127.0.0.1:8080")
///     .auto_reconnect(true)
///     .reconnect_interval(Duration::from_millis(500))
///     .max_reconnect_delay(Duration::from_secs(10))
///     .max_reconnect_attempts(None)
///     .ping_interval(Duration::from_secs(5))
///     .pong_timeout(Duration::from_secs(3))
///     .message_buffer_size(10_000)
///     .header("x-strategy", "mean-reversion")
///     .connect_timeout(Duration::from_secs(5))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct ClientBuilder {
    urls: Vec<String>,
    redundancy: Option<usize>,
    max_connection_age: Option<Duration>,
    gap_timeout: Duration,
    sequence_by: SequenceBy,
    rewind: Option<u64>,
    publish_timeout: Duration,
    headers: Vec<(String, String)>,
    auto_reconnect: bool,
    reconnect_interval: Duration,
    max_reconnect_delay: Duration,
    max_reconnect_attempts: Option<u32>,
    backoff_reset_after: Duration,
    first_retry_window: Duration,
    ping_interval: Duration,
    pong_timeout: Duration,
    stale_timeout: Option<Duration>,
    connect_timeout: Duration,
    message_buffer_size: usize,
    max_buffer_age: Option<Duration>,
    event_capacity: usize,
    max_message_size: usize,
    protocol: ServerProtocol,
    on_connect: Vec<String>,
    roots: Vec<CertificateDer<'static>>,
    transport: Transport,
    encoding: Encoding,
    compression: bool,
    proxy: ProxyChoice,
    deferred: Option<Error>,
}

impl Default for ClientBuilder {
    /// The builder of [`WebSocketClient::builder`]: settings from the `WS_*` environment.
    fn default() -> Self {
        match WebSocketConfig::from_env() {
            Ok(config) => Self::from_config(&config),
            Err(error) => {
                let mut builder = Self::from_config(&WebSocketConfig::default());
                builder.deferred = Some(Error::InvalidConfig(error.to_string()));
                builder
            }
        }
    }
}

impl ClientBuilder {
    /// Starts from a loaded configuration: `WS_RECONNECT_INTERVAL`, `WS_MAX_RECONNECT_DELAY`,
    /// `WS_MAX_RECONNECT_ATTEMPTS`, `WS_PING_INTERVAL`, `WS_PONG_TIMEOUT`,
    /// `WS_CONNECT_TIMEOUT` and `WS_MESSAGE_BUFFER_SIZE`.
    pub fn from_config(config: &WebSocketConfig) -> Self {
        Self {
            urls: Vec::new(),
            redundancy: None,
            max_connection_age: None,
            gap_timeout: DEFAULT_GAP_TIMEOUT,
            sequence_by: SequenceBy::default(),
            rewind: None,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            headers: Vec::new(),
            auto_reconnect: true,
            reconnect_interval: config.reconnect_interval,
            max_reconnect_delay: config.max_reconnect_delay,
            max_reconnect_attempts: config.max_reconnect_attempts,
            backoff_reset_after: DEFAULT_BACKOFF_RESET_AFTER,
            first_retry_window: DEFAULT_FIRST_RETRY_WINDOW,
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            stale_timeout: None,
            connect_timeout: config.connect_timeout,
            message_buffer_size: config.message_buffer_size,
            max_buffer_age: Some(DEFAULT_MAX_BUFFER_AGE),
            event_capacity: DEFAULT_EVENT_CAPACITY,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            protocol: ServerProtocol::Auto,
            on_connect: Vec::new(),
            roots: Vec::new(),
            transport: Transport::default(),
            encoding: Encoding::Json,
            compression: false,
            proxy: ProxyChoice::Direct,
            deferred: None,
        }
        .transport_from(config.client_transport)
    }

    /// The transport `WS_CLIENT_TRANSPORT` names; one this build lacks is refused at `build`.
    fn transport_from(mut self, transport: ws_protocol::ClientTransport) -> Self {
        match Transport::named(transport) {
            Some(transport) => self.transport = transport,
            None => {
                self.deferred.get_or_insert(Error::InvalidConfig(
                    "WS_CLIENT_TRANSPORT=sockudo needs ws-client built with its `sockudo` feature"
                        .to_owned(),
                ));
            }
        }
        self
    }

    /// Takes every client setting of `config`, keeping the URL, headers and TLS roots.
    pub fn config(self, config: &WebSocketConfig) -> Self {
        let mut fresh = Self::from_config(config);
        Self {
            urls: self.urls,
            redundancy: self.redundancy,
            max_connection_age: self.max_connection_age,
            gap_timeout: self.gap_timeout,
            sequence_by: self.sequence_by,
            rewind: self.rewind,
            publish_timeout: self.publish_timeout,
            headers: self.headers,
            roots: self.roots,
            on_connect: self.on_connect,
            protocol: self.protocol,
            proxy: self.proxy,
            deferred: self.deferred.or(fresh.deferred.take()),
            ..fresh
        }
    }

    /// The server: `ws://host:port/path` or `wss://…`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls = vec![url.into()];
        self
    }

    /// Several servers, for redundant connections: hubs that share their channels (a
    /// cluster), so that a channel's `seq` is the same on each. Connection `i` goes to
    /// `urls[i % urls.len()]`; without [`redundancy`](Self::redundancy) there is one
    /// connection per URL.
    pub fn urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Keep `n` connections open at once (default: one per URL) and deliver each hub
    /// publication once, from whichever connection brings it first; later copies are
    /// dropped by `(channel, seq)`. Each connection reconnects on its own, and the client
    /// delivers as long as one is up. [`Metrics::wins`](crate::Metrics::wins) shows which
    /// connection won how often. With a server that is not the hub, say how its messages
    /// are numbered with [`sequence_by`](Self::sequence_by); without it every connection's
    /// messages are delivered.
    pub fn redundancy(mut self, n: usize) -> Self {
        self.redundancy = Some(n);
        self
    }

    /// Replace each connection once it has been up this long (venues force this, say every
    /// 24 hours), make-before-break: a new connection is opened and resubscribed with
    /// recovery, and the old one is closed once the new one has caught up, so the
    /// application sees no gap and no duplicate. Default: never.
    pub fn max_connection_age(mut self, age: impl Into<Option<Duration>>) -> Self {
        self.max_connection_age = age.into();
        self
    }

    /// How long a gap in a channel's publications is held open, waiting for the hub's
    /// history or another connection to fill it, before the application gets
    /// [`Event::Gap`](crate::Event::Gap) and delivery goes on (default
    /// [`DEFAULT_GAP_TIMEOUT`]).
    pub fn gap_timeout(mut self, timeout: Duration) -> Self {
        self.gap_timeout = timeout;
        self
    }

    /// For a feed that is not our hub (an exchange's or a sequencer's own WebSocket): `f`
    /// finds each text frame's stream key and sequence number, borrowed from the frame, and
    /// with [`redundancy`](Self::redundancy) the first copy of each `(key, seq)` is
    /// delivered and later copies dropped ([`Metrics`](crate::Metrics) counts them and how
    /// much earlier the winner was). A jump in a key's numbers is held for the
    /// [`gap_timeout`](Self::gap_timeout), for a copy from another connection to fill it,
    /// then reported as [`Event::Gap`](crate::Event::Gap); numbers that start again lower
    /// on a connection (the feed began a new session) are reported as
    /// [`Event::Unrecovered`](crate::Event::Unrecovered) and delivery goes on. Frames `f`
    /// gives `None` for pass as they are. Memory per key is bounded: the last `seq`, and at
    /// most 1,024 messages held behind a gap.
    ///
    /// ```no_run
    /// # async fn demo() -> ws_client::Result<()> {
    /// // {"stream":"btcusdt@depth","data":{...},"u":123456}
    /// let client = ws_client::WebSocketClient::builder()
    ///     .url("wss://feed.example/ws")
    ///     .redundancy(3)
    ///     .sequence_by(|frame: &str| {
    ///         let stream = frame.split("\"stream\":\"").nth(1)?.split('"').next()?;
    ///         let seq = frame.rsplit("\"u\":").next()?.trim_end_matches('}').parse().ok()?;
    ///         Some((stream, seq))
    ///     })
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn sequence_by<F>(mut self, f: F) -> Self
    where
        F: Fn(&str) -> Option<(&str, u64)> + Send + Sync + 'static,
    {
        self.sequence_by.text = Some(Arc::new(f));
        self
    }

    /// [`sequence_by`](Self::sequence_by) for a feed of binary frames.
    pub fn sequence_by_binary<F>(mut self, f: F) -> Self
    where
        F: Fn(&[u8]) -> Option<(&[u8], u64)> + Send + Sync + 'static,
    {
        self.sequence_by.binary = Some(Arc::new(f));
        self
    }

    /// Every [`subscribe`](WebSocketClient::subscribe) asks the hub for the last `n`
    /// publications it still holds of each channel before live ones (a strategy gets the
    /// current price at once), unless the call says otherwise
    /// ([`subscribe_with_rewind`](WebSocketClient::subscribe_with_rewind)). Default: none.
    pub fn rewind(mut self, n: u64) -> Self {
        self.rewind = Some(n);
        self
    }

    /// How long [`publish`](WebSocketClient::publish) waits for the hub's acknowledgement,
    /// reconnects included, before failing with [`Error::OutcomeUnknown`] (or
    /// [`Error::NotSent`] if it never went out). Default [`DEFAULT_PUBLISH_TIMEOUT`].
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Reconnect automatically when the connection is lost (default `true`). Without it, a
    /// lost connection puts the client in `Failed`.
    pub fn auto_reconnect(mut self, enabled: bool) -> Self {
        self.auto_reconnect = enabled;
        self
    }

    /// The first reconnect delay (`WS_RECONNECT_INTERVAL`, default 5 s); it doubles after each
    /// failed attempt. Every delay `d` is jittered into `[d/2, d]`.
    pub fn reconnect_interval(mut self, interval: Duration) -> Self {
        self.reconnect_interval = interval;
        self
    }

    /// The cap of the reconnect delay (`WS_MAX_RECONNECT_DELAY`, default 60 s).
    pub fn max_reconnect_delay(mut self, delay: Duration) -> Self {
        self.max_reconnect_delay = delay;
        self
    }

    /// Failed attempts in a row before the client gives up and enters `Failed`
    /// (`WS_MAX_RECONNECT_ATTEMPTS`; default `None`, retry forever).
    pub fn max_reconnect_attempts(mut self, attempts: impl Into<Option<u32>>) -> Self {
        self.max_reconnect_attempts = attempts.into();
        self
    }

    /// How long a connection must stay up before the backoff starts again from the first
    /// delay (default 10 s), so a server that accepts and drops at once is not hammered.
    pub fn backoff_reset_after(mut self, healthy: Duration) -> Self {
        self.backoff_reset_after = healthy;
        self
    }

    /// How soon the first retry comes after a connection that had been up for
    /// [`backoff_reset_after`](Self::backoff_reset_after) drops: a random delay in
    /// `[window/4, window]` (default 250 ms), spread so that the clients of a restarted hub do
    /// not all return at once. The exponential backoff from `reconnect_interval` applies to
    /// the attempts after it. A hub's 1012 close with a retry hint uses the hint instead.
    pub fn first_retry_window(mut self, window: Duration) -> Self {
        self.first_retry_window = window;
        self
    }

    /// Protocol ping period (`WS_PING_INTERVAL`, default 30 s).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// After a ping, if no frame at all arrives within this time the connection is taken as
    /// dead and replaced (`WS_PONG_TIMEOUT`, default 10 s). Also the longest the server may
    /// leave our writes unaccepted.
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = timeout;
        self
    }

    /// If set: subscribed (or, on a plain server, connected) but no data for this long means
    /// the feed stalled, and the connection is replaced. Default: off.
    pub fn stale_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.stale_timeout = timeout.into();
        self
    }

    /// Which WebSocket implementation carries the connections (`WS_CLIENT_TRANSPORT`;
    /// default tokio-tungstenite, whatever the features; `Transport::Sockudo` needs the
    /// `sockudo` feature).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// How messages to and from the hub are written (default [`Encoding::Json`]).
    ///
    /// [`Encoding::MessagePack`] asks the hub for the `ws-toolkit.msgpack` subprotocol in
    /// every upgrade: frames cross the wire as MessagePack, smaller than their JSON (see
    /// docs/PROTOCOL.md), and the application sees no difference: [`receive`] and the events
    /// give the same values, a message's `data` as JSON. A server that does not agree to the
    /// subprotocol fails the upgrade with a connection error that says so (no silent fall
    /// back to JSON), so only ask a ws-toolkit hub for it.
    ///
    /// [`receive`]: crate::WebSocketClient::receive
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Whether to offer permessage-deflate (RFC 7692) in every upgrade (default off).
    ///
    /// A server that agrees (the hub does unless `WS_COMPRESSION=off`) sends large messages
    /// compressed: an order book crosses the wire in about a third of its bytes (see
    /// docs/BENCHMARKS.md, S13), which pays over a WAN; on a LAN the inflating costs more
    /// than the bytes saved. Each message is inflated on its own, capped at
    /// [`max_message_size`](Self::max_message_size): a larger one ends the connection (it
    /// reconnects) without being inflated further. The client sends its own messages
    /// uncompressed. A server that does not agree leaves the connection uncompressed. Needs
    /// the default transport: sockudo-ws's client cannot offer extensions, and `build`
    /// refuses the two together.
    pub fn compression(mut self, enabled: bool) -> Self {
        self.compression = enabled;
        self
    }

    /// Limit for TCP + TLS + WebSocket handshake, and for the hub's `Subscribed` answer after
    /// a reconnect (`WS_CONNECT_TIMEOUT`, default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Frames `send` and `publish` may queue, connected or not (`WS_MESSAGE_BUFFER_SIZE`,
    /// default 1000). When full, `send` fails at once with [`Error::BufferFull`].
    pub fn message_buffer_size(mut self, frames: usize) -> Self {
        self.message_buffer_size = frames;
        self
    }

    /// Queued frames older than this are dropped unsent and reported as
    /// [`Event::Expired`](crate::Event::Expired) (default 30 s; `None`: never).
    pub fn max_buffer_age(mut self, age: impl Into<Option<Duration>>) -> Self {
        self.max_buffer_age = age.into();
        self
    }

    /// Received events queued for the application (default 4096). When the application falls
    /// this far behind, the client stops reading the socket until it catches up.
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events;
        self
    }

    /// The largest frame accepted from the server (default 16 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// An HTTP header for the upgrade request (for example an API key). An invalid name or
    /// value makes `build` fail.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Which protocol the server speaks (default [`ServerProtocol::Auto`]).
    pub fn protocol(mut self, protocol: ServerProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// A frame to send after every (re)connect to a server that is not our hub, such as its
    /// own subscribe or auth message; frames go out in the order registered, before anything
    /// buffered. Registering one makes a client with [`ServerProtocol::Auto`] treat the
    /// server as [`ServerProtocol::Raw`] without waiting to tell.
    ///
    /// # Panics
    /// Never; a value that cannot be serialized makes `build` fail.
    pub fn on_connect<T: Serialize + ?Sized>(mut self, frame: &T) -> Self {
        match serde_json::to_string(frame) {
            Ok(text) => self.on_connect.push(text),
            Err(e) => self.deferred = Some(Error::from(e)),
        }
        self
    }

    /// Connects through a proxy: `http://[user:password@]host:port` (HTTP `CONNECT`, with
    /// basic auth), `socks5://[user:password@]host:port` (SOCKS5; the server's name resolved
    /// by the client) or `socks5h://…` (resolved by the proxy). A `wss://` connection's TLS
    /// runs through the tunnel to the server, whose certificate is checked as without a proxy.
    /// Replaces [`proxy_from_env`](Self::proxy_from_env); an invalid URL makes `build` fail
    /// (without repeating the URL, which may hold a password).
    ///
    /// ```no_run
    /// # async fn demo() -> ws_client::Result<()> {
    /// let client = ws_client::WebSocketClient::builder()
    ///     .url("wss://feed.example.com/ws")
    ///     .proxy("socks5h://strategy:secret@10.0.0.5:1080")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = ProxyChoice::Url(url.into());
        self
    }

    /// Takes the proxy from the conventional environment variables, read by `build`:
    /// `https_proxy` for `wss://` URLs, `http_proxy` for `ws://`, `all_proxy` for either
    /// when those are unset (each in lower case, else upper case), with the hosts of
    /// `no_proxy` (names with their subdomains, IP addresses, CIDR ranges, `*`) reached
    /// directly. Not the default: a strategy's route to its feed does not change because a
    /// shell exported a proxy for something else. Replaces [`proxy`](Self::proxy).
    pub fn proxy_from_env(mut self) -> Self {
        self.proxy = ProxyChoice::Env;
        self
    }

    /// Trusts one more root certificate (PEM, possibly several, or one DER certificate) for
    /// `wss://`, besides the platform's roots: for tests and private deployments.
    pub fn add_root_certificate(mut self, certificate: &[u8]) -> Self {
        match tls::parse_certificates(certificate) {
            Ok(certs) => self.roots.extend(certs),
            Err(e) => self.deferred = Some(e),
        }
        self
    }

    pub(crate) fn settings(&mut self) -> Result<Settings> {
        if let Some(error) = self.deferred.take() {
            return Err(error);
        }
        if self.urls.is_empty() {
            return Err(Error::InvalidConfig("no URL given".to_owned()));
        }
        let mut secure = false;
        for url in &self.urls {
            let parsed = url::Url::parse(url)
                .map_err(|e| Error::InvalidConfig(format!("invalid URL {url:?}: {e}")))?;
            match parsed.scheme() {
                "ws" => {}
                "wss" => secure = true,
                other => {
                    return Err(Error::InvalidConfig(format!(
                        "unsupported URL scheme {other:?} in {url:?}: use ws:// or wss://"
                    )));
                }
            }
        }
        let tls = if secure {
            Some(tls::client_config(&self.roots)?)
        } else {
            None
        };
        if self.redundancy == Some(0) {
            return Err(Error::InvalidConfig(
                "redundancy must be at least 1".to_owned(),
            ));
        }
        if self.compression && self.transport != Transport::Tungstenite {
            return Err(Error::InvalidConfig(
                "compression needs the tungstenite transport: sockudo-ws's client cannot offer permessage-deflate".to_owned(),
            ));
        }
        if self.max_connection_age.is_some_and(|d| d.is_zero()) || self.gap_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "max_connection_age and gap_timeout must be greater than 0".to_owned(),
            ));
        }
        let proxy = ProxyRoute::from_choice(&self.proxy).map_err(Error::InvalidConfig)?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in std::mem::take(&mut self.headers) {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| Error::InvalidConfig(format!("invalid header name {name:?}: {e}")))?;
            let value = HeaderValue::try_from(value.as_str()).map_err(|e| {
                Error::InvalidConfig(format!("invalid value for header {name}: {e}"))
            })?;
            headers.push((name, value));
        }
        let positive = [
            ("reconnect_interval", self.reconnect_interval),
            ("ping_interval", self.ping_interval),
            ("pong_timeout", self.pong_timeout),
            ("connect_timeout", self.connect_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(Error::InvalidConfig(format!(
                    "{name} must be greater than 0"
                )));
            }
        }
        if self.stale_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidConfig(
                "stale_timeout must be greater than 0".to_owned(),
            ));
        }
        Ok(Settings {
            headers,
            max_connection_age: self.max_connection_age,
            auto_reconnect: self.auto_reconnect,
            reconnect_interval: self.reconnect_interval,
            max_reconnect_delay: self.max_reconnect_delay,
            max_reconnect_attempts: self.max_reconnect_attempts,
            healthy_after: self.backoff_reset_after,
            first_retry_window: self.first_retry_window,
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
            stale_timeout: self.stale_timeout,
            connect_timeout: self.connect_timeout,
            event_capacity: self.event_capacity.max(1),
            max_message_size: self.max_message_size,
            protocol: match self.protocol {
                ServerProtocol::Auto if !self.on_connect.is_empty() => ServerProtocol::Raw,
                protocol => protocol,
            },
            on_connect: std::mem::take(&mut self.on_connect),
            tls,
            transport: self.transport,
            encoding: self.encoding,
            compression: self.compression,
            proxy,
        })
    }

    /// Connects, then returns the client; from then on it reconnects by itself. With several
    /// connections it returns once one is up; the others keep trying in the background.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad URL, header or setting; [`Error::Connect`] if no
    /// first connection succeeds (refused, timed out, TLS, upgrade, or a `Hub` server that
    /// does not greet with `Connected`).
    pub async fn build(mut self) -> Result<WebSocketClient> {
        let settings = Arc::new(self.settings()?);
        let connections = self.redundancy.unwrap_or(self.urls.len());
        let urls: Vec<String> = (0..connections)
            .map(|i| self.urls[i % self.urls.len()].clone())
            .collect();
        let opened =
            futures_util::future::join_all(urls.iter().map(|url| open(&settings, url))).await;
        if let Some(reason) = opened
            .iter()
            .all(std::result::Result::is_err)
            .then(|| opened.iter().find_map(|r| r.as_ref().err()).cloned())
            .flatten()
        {
            return Err(Error::Connect {
                url: urls[0].clone(),
                reason,
            });
        }
        let (state, state_rx) = CombinedState::new(connections);
        let state = Arc::new(state);
        let (arrivals_tx, arrivals) = crate::arrival_queue::arrival_queue(settings.event_capacity);
        let buffer = Arc::new(OutboundBuffer::new(
            self.message_buffer_size,
            self.max_buffer_age,
        ));
        let counters = Arc::new(Counters::new(connections));
        let acks = Arc::new(Acks::default());
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut commands = Vec::with_capacity(connections);
        for (connection, (url, first)) in urls.into_iter().zip(opened).enumerate() {
            // Nothing to restore on a first connection: it is in effect now.
            if first.is_ok() {
                state.set(connection, ConnectionState::Connected);
            }
            let (commands_tx, commands_rx) = mpsc::channel(64);
            commands.push(commands_tx);
            let driver = Driver::new(DriverParts {
                connection,
                url,
                settings: settings.clone(),
                commands: commands_rx,
                buffer: buffer.clone(),
                arrivals: arrivals_tx.clone(),
                state: state.clone(),
                counters: counters.clone(),
                token: token.child_token(),
                acks: acks.clone(),
                rewind: self.rewind,
            });
            tracker.spawn(driver.run(first));
        }
        // One sweep for every acknowledged publication's deadline, rather than a timer each.
        let sweep = token.child_token();
        tracker.spawn(expire_publications(
            acks.clone(),
            self.publish_timeout,
            sweep.clone(),
        ));
        tracker.close();
        let epochs = Arc::new(Epochs::default());
        let inbox = Inbox {
            arrivals,
            batch: Vec::new(),
            taken: VecDeque::new(),
            taken_at: Instant::now(),
            sequencer: Sequencer::new(
                self.gap_timeout,
                counters.clone(),
                self.sequence_by.is_set().then(|| {
                    FeedSequencer::new(self.sequence_by.clone(), self.gap_timeout, counters.clone())
                }),
                epochs.clone(),
            ),
            finished: false,
        };
        Ok(WebSocketClient::new(ClientParts {
            connections: commands,
            inbox,
            buffer,
            acks,
            publish_timeout: self.publish_timeout,
            state: state_rx,
            counters,
            epochs,
            token,
            sweep,
            tracker,
        }))
    }
}

/// Fails acknowledged publications whose deadline passed, a few times per `timeout`, until
/// `token` is cancelled. Owned by the client's task tracker.
async fn expire_publications(acks: Arc<Acks>, timeout: Duration, token: CancellationToken) {
    let every = (timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => acks.expire(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "sockudo")]
    #[tokio::test]
    async fn compression_on_sockudo_is_refused_by_name() {
        let refused = ClientBuilder::default()
            .url("ws://127.0.0.1:9")
            .compression(true)
            .transport(Transport::Sockudo)
            .build()
            .await;
        let Err(Error::InvalidConfig(why)) = refused else {
            panic!("refused at build");
        };
        assert!(
            why.contains("compression needs the tungstenite transport"),
            "{why}"
        );
    }

    /// Runs `test` of this binary in a child process with `vars` set, and returns its output.
    fn in_child(test: &str, vars: &[(&str, &str)]) -> String {
        let exe = std::env::current_exe().unwrap();
        let mut command = std::process::Command::new(exe);
        command.args([test, "--exact", "--ignored", "--nocapture"]);
        for (name, value) in vars {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    #[test]
    #[ignore = "run by the_builder_reads_ws_variables_and_setters_win in a child process"]
    fn child_prints_its_builder() {
        let builder = ClientBuilder::default();
        println!("DEFAULT {builder:?}");
        let explicit = ClientBuilder::default().ping_interval(Duration::from_secs(3));
        println!("EXPLICIT {explicit:?}");
    }

    #[test]
    fn the_builder_reads_ws_variables_and_setters_win() {
        let out = in_child(
            "builder::tests::child_prints_its_builder",
            &[("WS_PING_INTERVAL", "7"), ("WS_MESSAGE_BUFFER_SIZE", "12")],
        );
        let default = out.lines().find(|l| l.starts_with("DEFAULT")).unwrap();
        assert!(default.contains("ping_interval: 7s"), "{default}");
        assert!(default.contains("message_buffer_size: 12"), "{default}");
        let explicit = out.lines().find(|l| l.starts_with("EXPLICIT")).unwrap();
        assert!(explicit.contains("ping_interval: 3s"), "{explicit}");
    }

    #[test]
    #[ignore = "run by an_invalid_ws_variable_fails_the_build_naming_it in a child process"]
    fn child_builds_a_client() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let built = runtime.block_on(ClientBuilder::default().url("ws://127.0.0.1:9").build());
        println!("BUILT {:?}", built.err());
    }

    #[test]
    fn an_invalid_ws_variable_fails_the_build_naming_it() {
        let out = in_child(
            "builder::tests::child_builds_a_client",
            &[("WS_PING_INTERVAL", "soon")],
        );
        assert!(
            out.contains("WS_PING_INTERVAL") && out.contains("soon"),
            "{out}"
        );
    }
}
