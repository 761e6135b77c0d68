//! [`WebSocketConfig`]: the `WS_*` environment variables shared by the client and the hub.

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// What the hub does when a subscriber's outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Send `Error { code: "slow_consumer" }`, then close with 1008. The default: a trading
    /// client must not silently miss prices.
    #[default]
    Disconnect,
    /// Drop the oldest queued publications and tell the client how many with `Lagged`.
    DropOldest,
    /// Keep only the newest queued publication per key (the `WS_CONFLATE_KEY` field of the
    /// publication's data, such as a price's `symbol`) and tell the client how many were
    /// replaced with `Conflated`. A full queue with nothing to conflate (no queued
    /// publication with the same channel and key) is cut as with `Disconnect`.
    Conflate,
}

impl FromStr for SlowConsumerPolicy {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disconnect" => Ok(Self::Disconnect),
            "drop_oldest" => Ok(Self::DropOldest),
            "conflate" => Ok(Self::Conflate),
            _ => Err("expected `disconnect`, `drop_oldest` or `conflate`"),
        }
    }
}

/// A secret setting: its `Debug` never shows the value, so configurations can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the code that needs it (never for logs).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Settings of the client and the hub, loaded from `WS_*` environment variables.
///
/// Every field has a default (below, and in `.env.example`); a variable set to an empty string
/// counts as unset. Durations are given in seconds and may have a fraction (`0.5`).
///
/// ```
/// use std::time::Duration;
/// use ws_protocol::WebSocketConfig;
///
/// let config = WebSocketConfig::from_vars([("WS_PORT", "9000"), ("WS_PING_INTERVAL", "15")])?;
/// assert_eq!(config.port, 9000);
/// assert_eq!(config.ping_interval, Duration::from_secs(15));
///
/// let error = WebSocketConfig::from_vars([("WS_PORT", "abc")]).unwrap_err();
/// assert!(error.to_string().contains("WS_PORT"));
/// assert!(error.to_string().contains("abc"));
/// # Ok::<(), ws_protocol::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WebSocketConfig {
    /// `WS_HOST`: the address the hub listens on. Default `0.0.0.0`.
    pub host: String,
    /// `WS_PORT`: the port the hub listens on (0 picks a free one). Default `8080`.
    pub port: u16,
    /// `WS_RECONNECT_INTERVAL`: the first delay of the client's exponential backoff (after
    /// the quick first retry that follows a drop of an established connection). Default 1 s.
    pub reconnect_interval: Duration,
    /// `WS_MAX_RECONNECT_DELAY`: the cap of the client's doubling reconnect delay. Default 60 s.
    pub max_reconnect_delay: Duration,
    /// `WS_MAX_RECONNECT_ATTEMPTS`: failed reconnects before the client gives up. Default:
    /// unset, retry forever.
    pub max_reconnect_attempts: Option<u32>,
    /// `WS_PING_INTERVAL`: how often each side sends a protocol ping. Default 30 s.
    pub ping_interval: Duration,
    /// `WS_PONG_TIMEOUT`: the client declares the connection dead when nothing arrives this
    /// long after a ping. Default 10 s.
    pub pong_timeout: Duration,
    /// `WS_CONNECT_TIMEOUT`: the client's limit for TCP + TLS + WebSocket handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// `WS_MESSAGE_BUFFER_SIZE`: messages the client queues while disconnected. Default 1000.
    pub message_buffer_size: usize,
    /// `WS_IDLE_TIMEOUT`: the hub closes a connection from which nothing (not even a pong)
    /// arrived for this long. Default 90 s (three missed pings).
    pub idle_timeout: Duration,
    /// `WS_HANDSHAKE_TIMEOUT`: the hub drops a TCP connection that has not completed the
    /// WebSocket upgrade within this time. Default 10 s.
    pub handshake_timeout: Duration,
    /// `WS_MAX_MESSAGE_SIZE`: the largest frame, in bytes, the hub accepts; larger ones are
    /// answered with close 1009. Default 65536 (64 KiB).
    pub max_message_size: usize,
    /// `WS_SEND_QUEUE_SIZE`: messages the hub queues for one connection before the slow-consumer
    /// policy applies. Default 1024.
    pub send_queue_size: usize,
    /// `WS_SEND_QUEUE_BYTES`: bytes of frames the hub queues for one connection before the
    /// slow-consumer policy applies, whatever their count (a frame shared with other
    /// subscribers counts in full for each). Default 16 MiB.
    pub send_queue_bytes: usize,
    /// `WS_WRITE_TIMEOUT`: a write to a connection that makes no progress (the client neither
    /// reads nor closes) for this long ends the connection as a slow consumer, whatever the
    /// policy. Default 30 s.
    pub write_timeout: Duration,
    /// `WS_SLOW_CONSUMER_POLICY`: `disconnect` (default), `drop_oldest` or `conflate`; see
    /// [`SlowConsumerPolicy`].
    pub slow_consumer_policy: SlowConsumerPolicy,
    /// `WS_MAX_CONNECTIONS`: connections the hub holds at once; further upgrades get HTTP 503.
    /// Default 0: as many as the process may open files (the hub raises its open-file limit
    /// to the hard limit and keeps 64 descriptors for itself), said in the log at start.
    pub max_connections: usize,
    /// `WS_MAX_PENDING_UPGRADES`: TCP connections that have not finished their WebSocket
    /// upgrade, held at once; further ones are closed at once, so that sockets that never
    /// upgrade cannot take the places of `WS_MAX_CONNECTIONS`. Default 1024.
    pub max_pending_upgrades: usize,
    /// `WS_JWT_SECRET`: HS256 secret for JWTs, at least 32 bytes (RFC 7518 asks for a key as
    /// long as the hash). With neither this nor `WS_JWT_PUBLIC_KEY`, the
    /// hub runs open (anyone may do anything). Default: unset.
    pub jwt_secret: Option<Secret>,
    /// `WS_JWT_PUBLIC_KEY`: path of a PEM public key for RS256 or ES256 JWTs. Default: unset.
    pub jwt_public_key: Option<String>,
    /// `WS_JWT_ALGORITHM`: `RS256` or `ES256`, for `WS_JWT_PUBLIC_KEY`. Default `RS256`.
    pub jwt_algorithm: String,
    /// `WS_AUTH_TIMEOUT`: a connection without a token at the upgrade must send
    /// `Authenticate` within this time, or it is closed with 1008. Default 5 s.
    pub auth_timeout: Duration,
    /// `WS_MAX_SUBSCRIPTIONS`: channels one connection may subscribe to. Default 100.
    pub max_subscriptions: usize,
    /// `WS_RATE_LIMIT`: control frames (everything but `Publish`: subscribes, unsubscribes,
    /// pings, authentication, malformed frames) per second one connection may send, on
    /// average. Default 1000.
    pub rate_limit: f64,
    /// `WS_RATE_LIMIT_BURST`: control frames a connection may send at once above the rate.
    /// Excess frames get `Error { code: "rate_limited" }`; a burst's worth of them in a row
    /// closes the connection with 1008. Default 2000.
    pub rate_limit_burst: u32,
    /// `WS_PUBLISH_RATE_LIMIT`: `Publish` frames per second one connection may send, on
    /// average; 0 means no limit. Default 0: a publisher at market rates is never refused,
    /// because what a publication costs the hub is already bounded (each connection gets a
    /// fair share of the runtime, each subscriber a bounded queue, each channel a bounded
    /// history).
    pub publish_rate_limit: f64,
    /// `WS_PUBLISH_RATE_LIMIT_BURST`: publications above `WS_PUBLISH_RATE_LIMIT` accepted at
    /// once; refused ones get `rate_limited`, a burst's worth in a row closes with 1008.
    /// Default 0: twice the rate.
    pub publish_rate_limit_burst: u32,
    /// `WS_ALLOWED_ORIGINS`: comma-separated `Origin`s whose browsers may connect (others get
    /// HTTP 403); clients that send no `Origin` (not browsers) are not affected. Default:
    /// empty, any origin.
    pub allowed_origins: Vec<String>,
    /// `WS_TLS_CERT`: PEM certificate chain file; with `WS_TLS_KEY` the hub serves `wss://`.
    /// Default: unset (plain `ws://`).
    pub tls_cert: Option<String>,
    /// `WS_TLS_KEY`: PEM private key file for `WS_TLS_CERT`. Default: unset.
    pub tls_key: Option<String>,
    /// `WS_ADMIN_ADDR`: `host:port` of the operators' HTTP endpoints (`/health`, `/metrics`),
    /// kept off the public port. Default: unset (no admin HTTP).
    pub admin_addr: Option<String>,
    /// `WS_DRAIN_WINDOW`: on SIGTERM or Ctrl-C the hub stops accepting, turns `/health` to
    /// 503 and closes its clients in batches spread over this window. Default 5 s.
    pub drain_window: Duration,
    /// `WS_HISTORY_SIZE`: publications the hub keeps per channel for recovery after a
    /// reconnect or a gap (0: no history). Default 256.
    pub history_size: usize,
    /// `WS_HISTORY_TTL`: how long a publication stays recoverable. Default 60 s.
    pub history_ttl: Duration,
    /// `WS_HISTORY_MAX_BYTES`: bytes of history the hub keeps over all channels; past it the
    /// oldest publications are forgotten first (a recovery from before them then says
    /// `recovered: false`). Default 64 MiB.
    pub history_max_bytes: usize,
    /// `WS_MAX_CHANNELS`: channels the hub holds at once (with subscribers or history); past
    /// it the channels held only for their history are forgotten, least recently published
    /// first, and a subscribe that needs a new channel when none can be forgotten is refused
    /// (`unavailable`). Default 100000.
    pub max_channels: usize,
    /// `WS_RECONNECT_HINT`: the delay the hub's 1012 close asks clients to wait before
    /// reconnecting ("retry after N ms"). Default 1 s.
    pub reconnect_hint: Duration,
    /// `WS_CONFLATE_KEY`: the top-level field of a publication's data that names what it is
    /// about (policy `conflate` keeps the newest per channel and key). Default `symbol`.
    pub conflate_key: String,
    /// `WS_REDIS_URL`: `redis://host:port/db` of the Redis that hubs share channels through
    /// (publications, `seq`, history). Default: unset (the hub's embedded broker; nothing
    /// about Redis is needed).
    pub redis_url: Option<String>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".to_owned(),
            port: 8080,
            reconnect_interval: Duration::from_secs(1),
            max_reconnect_delay: Duration::from_secs(60),
            max_reconnect_attempts: None,
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            message_buffer_size: 1000,
            idle_timeout: Duration::from_secs(90),
            handshake_timeout: Duration::from_secs(10),
            max_message_size: 64 * 1024,
            send_queue_size: 1024,
            send_queue_bytes: 16 * 1024 * 1024,
            write_timeout: Duration::from_secs(30),
            slow_consumer_policy: SlowConsumerPolicy::Disconnect,
            max_connections: 0,
            max_pending_upgrades: 1024,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_algorithm: "RS256".to_owned(),
            auth_timeout: Duration::from_secs(5),
            max_subscriptions: 100,
            rate_limit: 1000.0,
            rate_limit_burst: 2000,
            publish_rate_limit: 0.0,
            publish_rate_limit_burst: 0,
            allowed_origins: Vec::new(),
            tls_cert: None,
            tls_key: None,
            admin_addr: None,
            drain_window: Duration::from_secs(5),
            history_size: 256,
            history_ttl: Duration::from_secs(60),
            history_max_bytes: 64 * 1024 * 1024,
            max_channels: 100_000,
            reconnect_hint: Duration::from_secs(1),
            conflate_key: "symbol".to_owned(),
            redis_url: None,
        }
    }
}

/// The smallest `WS_MAX_MESSAGE_SIZE` accepted: enough for every control frame.
const MIN_MESSAGE_SIZE: usize = 256;
/// The longest duration any variable accepts.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The largest count (connections, queue entries, channels) any variable accepts.
const MAX_COUNT: usize = 10_000_000;
/// The shortest `WS_JWT_SECRET` accepted: 256 bits, the length of HS256's hash.
const MIN_SECRET_LEN: usize = 32;

impl WebSocketConfig {
    /// Loads the configuration from the process environment, with a `.env` file in the current
    /// directory (if there is one) filling in variables the environment does not set.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable and its value when one does not parse or is out of
    /// range, or when `.env` exists but cannot be read.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut vars: Vec<(String, String)> = match dotenvy::dotenv_iter() {
            Ok(iter) => iter
                .collect::<Result<_, _>>()
                .map_err(|e| ConfigError::DotEnv(e.to_string()))?,
            Err(e) if e.not_found() => Vec::new(),
            Err(e) => return Err(ConfigError::DotEnv(e.to_string())),
        };
        // The process environment wins over `.env`: later pairs override earlier ones.
        vars.extend(std::env::vars());
        Self::from_vars(vars)
    }

    /// Loads the configuration from the given `(name, value)` pairs; names without the `WS_`
    /// prefix are ignored, and a later pair overrides an earlier one.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable and its value when one does not parse or is out of
    /// range.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, value) in vars {
            let (name, value) = (name.into(), value.into());
            if !name.starts_with("WS_") {
                continue;
            }
            pairs.retain(|(n, _)| *n != name);
            if !value.is_empty() {
                pairs.push((name, value));
            }
        }
        for (name, value) in &pairs {
            check_number(name, value)?;
        }
        let env: EnvVars =
            envy::from_iter(pairs).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        env.into_config()
    }
}

/// What kind of value a numeric variable takes, for an error that says what was expected.
#[derive(Clone, Copy)]
enum Number {
    /// A TCP port.
    Port,
    /// A duration in seconds, with an optional fraction.
    Seconds,
    /// A whole number (bytes, messages, connections, ...).
    Count,
    /// A non-negative number per second, with an optional fraction.
    PerSecond,
}

/// Every variable the toolkit reads, and the kind of number it takes (`None`: text).
const VARIABLES: &[(&str, Option<Number>)] = &[
    ("WS_HOST", None),
    ("WS_PORT", Some(Number::Port)),
    ("WS_RECONNECT_INTERVAL", Some(Number::Seconds)),
    ("WS_MAX_RECONNECT_DELAY", Some(Number::Seconds)),
    ("WS_MAX_RECONNECT_ATTEMPTS", Some(Number::Count)),
    ("WS_PING_INTERVAL", Some(Number::Seconds)),
    ("WS_PONG_TIMEOUT", Some(Number::Seconds)),
    ("WS_CONNECT_TIMEOUT", Some(Number::Seconds)),
    ("WS_MESSAGE_BUFFER_SIZE", Some(Number::Count)),
    ("WS_IDLE_TIMEOUT", Some(Number::Seconds)),
    ("WS_HANDSHAKE_TIMEOUT", Some(Number::Seconds)),
    ("WS_MAX_MESSAGE_SIZE", Some(Number::Count)),
    ("WS_SEND_QUEUE_SIZE", Some(Number::Count)),
    ("WS_SEND_QUEUE_BYTES", Some(Number::Count)),
    ("WS_WRITE_TIMEOUT", Some(Number::Seconds)),
    ("WS_SLOW_CONSUMER_POLICY", None),
    ("WS_MAX_CONNECTIONS", Some(Number::Count)),
    ("WS_MAX_PENDING_UPGRADES", Some(Number::Count)),
    ("WS_JWT_SECRET", None),
    ("WS_JWT_PUBLIC_KEY", None),
    ("WS_JWT_ALGORITHM", None),
    ("WS_AUTH_TIMEOUT", Some(Number::Seconds)),
    ("WS_MAX_SUBSCRIPTIONS", Some(Number::Count)),
    ("WS_RATE_LIMIT", Some(Number::PerSecond)),
    ("WS_RATE_LIMIT_BURST", Some(Number::Count)),
    ("WS_PUBLISH_RATE_LIMIT", Some(Number::PerSecond)),
    ("WS_PUBLISH_RATE_LIMIT_BURST", Some(Number::Count)),
    ("WS_ALLOWED_ORIGINS", None),
    ("WS_TLS_CERT", None),
    ("WS_TLS_KEY", None),
    ("WS_ADMIN_ADDR", None),
    ("WS_DRAIN_WINDOW", Some(Number::Seconds)),
    ("WS_HISTORY_SIZE", Some(Number::Count)),
    ("WS_HISTORY_TTL", Some(Number::Seconds)),
    ("WS_HISTORY_MAX_BYTES", Some(Number::Count)),
    ("WS_MAX_CHANNELS", Some(Number::Count)),
    ("WS_RECONNECT_HINT", Some(Number::Seconds)),
    ("WS_CONFLATE_KEY", None),
    ("WS_REDIS_URL", None),
];

/// Checks that a numeric variable holds a number of its kind, so that the error names the
/// variable, the value and what was expected (rather than the parser's "invalid digit").
fn check_number(name: &str, value: &str) -> Result<(), ConfigError> {
    let Some((variable, Some(kind))) = VARIABLES.iter().find(|(known, _)| *known == name) else {
        return Ok(());
    };
    let value = value.trim();
    let (ok, reason) = match kind {
        Number::Port => (
            value.parse::<u16>().is_ok(),
            "expected a port number from 0 to 65535",
        ),
        Number::Count => (
            value.parse::<u32>().is_ok() || value.parse::<usize>().is_ok(),
            "expected a whole number (0 or more, no unit)",
        ),
        Number::Seconds => (
            value
                .parse::<f64>()
                .is_ok_and(|v| v.is_finite() && v >= 0.0),
            "expected a number of seconds (0 or more, a fraction allowed, no unit)",
        ),
        Number::PerSecond => (
            value
                .parse::<f64>()
                .is_ok_and(|v| v.is_finite() && v >= 0.0),
            "expected a number per second (0 or more, a fraction allowed)",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            variable,
            value: value.to_owned(),
            reason,
        })
    }
}

impl WebSocketConfig {
    /// The `WS_*` names among `names` that the toolkit does not read (a misspelling such as
    /// `WS_PROT`), each with the known name it most resembles, if one is close.
    ///
    /// ```
    /// use ws_protocol::WebSocketConfig;
    ///
    /// let unknown = WebSocketConfig::unknown_variables(["WS_PROT", "WS_PORT", "PATH"]);
    /// assert_eq!(unknown, [("WS_PROT".to_owned(), Some("WS_PORT"))]);
    /// ```
    pub fn unknown_variables<I, K>(names: I) -> Vec<(String, Option<&'static str>)>
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        let mut unknown: Vec<(String, Option<&'static str>)> = Vec::new();
        for name in names {
            let name = name.into();
            if !name.starts_with("WS_")
                || VARIABLES.iter().any(|(known, _)| *known == name)
                || unknown.iter().any(|(seen, _)| *seen == name)
            {
                continue;
            }
            let closest = VARIABLES
                .iter()
                .map(|(known, _)| (edit_distance(&name, known), *known))
                .min()
                .filter(|(distance, _)| *distance <= 3)
                .map(|(_, known)| known);
            unknown.push((name, closest));
        }
        unknown
    }

    /// The `WS_*` names in the environment and `.env` that the toolkit does not read; see
    /// [`Self::unknown_variables`].
    pub fn unknown_variables_in_env() -> Vec<(String, Option<&'static str>)> {
        let mut names: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .collect();
        if let Ok(iter) = dotenvy::dotenv_iter() {
            names.extend(iter.filter_map(Result::ok).map(|(name, _)| name));
        }
        Self::unknown_variables(names)
    }
}

/// Levenshtein distance between two short ASCII names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The variables as envy sees them. envy names a variable that fails to parse by its full
/// name only when the fields carry the `ws_` prefix, hence this private mirror.
#[derive(Deserialize)]
struct EnvVars {
    ws_host: Option<String>,
    ws_port: Option<u16>,
    ws_reconnect_interval: Option<f64>,
    ws_max_reconnect_delay: Option<f64>,
    ws_max_reconnect_attempts: Option<u32>,
    ws_ping_interval: Option<f64>,
    ws_pong_timeout: Option<f64>,
    ws_connect_timeout: Option<f64>,
    ws_message_buffer_size: Option<usize>,
    ws_idle_timeout: Option<f64>,
    ws_handshake_timeout: Option<f64>,
    ws_max_message_size: Option<usize>,
    ws_send_queue_size: Option<usize>,
    ws_send_queue_bytes: Option<usize>,
    ws_write_timeout: Option<f64>,
    ws_slow_consumer_policy: Option<String>,
    ws_max_connections: Option<usize>,
    ws_max_pending_upgrades: Option<usize>,
    ws_jwt_secret: Option<String>,
    ws_jwt_public_key: Option<String>,
    ws_jwt_algorithm: Option<String>,
    ws_auth_timeout: Option<f64>,
    ws_max_subscriptions: Option<usize>,
    ws_rate_limit: Option<f64>,
    ws_rate_limit_burst: Option<u32>,
    ws_publish_rate_limit: Option<f64>,
    ws_publish_rate_limit_burst: Option<u32>,
    ws_allowed_origins: Option<String>,
    ws_tls_cert: Option<String>,
    ws_tls_key: Option<String>,
    ws_admin_addr: Option<String>,
    ws_drain_window: Option<f64>,
    ws_history_size: Option<usize>,
    ws_history_ttl: Option<f64>,
    ws_history_max_bytes: Option<usize>,
    ws_max_channels: Option<usize>,
    ws_reconnect_hint: Option<f64>,
    ws_conflate_key: Option<String>,
    ws_redis_url: Option<String>,
}

impl EnvVars {
    fn into_config(self) -> Result<WebSocketConfig, ConfigError> {
        let d = WebSocketConfig::default();
        let config = WebSocketConfig {
            host: self.ws_host.unwrap_or(d.host),
            port: self.ws_port.unwrap_or(d.port),
            reconnect_interval: secs("WS_RECONNECT_INTERVAL", self.ws_reconnect_interval)?
                .unwrap_or(d.reconnect_interval),
            max_reconnect_delay: secs("WS_MAX_RECONNECT_DELAY", self.ws_max_reconnect_delay)?
                .unwrap_or(d.max_reconnect_delay),
            max_reconnect_attempts: self.ws_max_reconnect_attempts,
            ping_interval: secs("WS_PING_INTERVAL", self.ws_ping_interval)?
                .unwrap_or(d.ping_interval),
            pong_timeout: secs("WS_PONG_TIMEOUT", self.ws_pong_timeout)?.unwrap_or(d.pong_timeout),
            connect_timeout: secs("WS_CONNECT_TIMEOUT", self.ws_connect_timeout)?
                .unwrap_or(d.connect_timeout),
            message_buffer_size: self.ws_message_buffer_size.unwrap_or(d.message_buffer_size),
            idle_timeout: secs("WS_IDLE_TIMEOUT", self.ws_idle_timeout)?.unwrap_or(d.idle_timeout),
            handshake_timeout: secs("WS_HANDSHAKE_TIMEOUT", self.ws_handshake_timeout)?
                .unwrap_or(d.handshake_timeout),
            max_message_size: self.ws_max_message_size.unwrap_or(d.max_message_size),
            send_queue_size: self.ws_send_queue_size.unwrap_or(d.send_queue_size),
            send_queue_bytes: self.ws_send_queue_bytes.unwrap_or(d.send_queue_bytes),
            write_timeout: secs("WS_WRITE_TIMEOUT", self.ws_write_timeout)?
                .unwrap_or(d.write_timeout),
            slow_consumer_policy: match self.ws_slow_consumer_policy {
                None => d.slow_consumer_policy,
                Some(value) => value.parse().map_err(|reason| ConfigError::OutOfRange {
                    variable: "WS_SLOW_CONSUMER_POLICY",
                    value,
                    reason,
                })?,
            },
            max_connections: self.ws_max_connections.unwrap_or(d.max_connections),
            max_pending_upgrades: self
                .ws_max_pending_upgrades
                .unwrap_or(d.max_pending_upgrades),
            jwt_secret: self.ws_jwt_secret.map(Secret),
            jwt_public_key: self.ws_jwt_public_key,
            jwt_algorithm: self.ws_jwt_algorithm.unwrap_or(d.jwt_algorithm),
            auth_timeout: secs("WS_AUTH_TIMEOUT", self.ws_auth_timeout)?.unwrap_or(d.auth_timeout),
            max_subscriptions: self.ws_max_subscriptions.unwrap_or(d.max_subscriptions),
            rate_limit: self.ws_rate_limit.unwrap_or(d.rate_limit),
            rate_limit_burst: self.ws_rate_limit_burst.unwrap_or(d.rate_limit_burst),
            publish_rate_limit: self.ws_publish_rate_limit.unwrap_or(d.publish_rate_limit),
            publish_rate_limit_burst: self
                .ws_publish_rate_limit_burst
                .unwrap_or(d.publish_rate_limit_burst),
            allowed_origins: self
                .ws_allowed_origins
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|o| !o.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            tls_cert: self.ws_tls_cert,
            tls_key: self.ws_tls_key,
            admin_addr: self.ws_admin_addr,
            drain_window: secs("WS_DRAIN_WINDOW", self.ws_drain_window)?.unwrap_or(d.drain_window),
            history_size: self.ws_history_size.unwrap_or(d.history_size),
            history_ttl: secs("WS_HISTORY_TTL", self.ws_history_ttl)?.unwrap_or(d.history_ttl),
            history_max_bytes: self.ws_history_max_bytes.unwrap_or(d.history_max_bytes),
            max_channels: self.ws_max_channels.unwrap_or(d.max_channels),
            reconnect_hint: secs("WS_RECONNECT_HINT", self.ws_reconnect_hint)?
                .unwrap_or(d.reconnect_hint),
            conflate_key: self.ws_conflate_key.unwrap_or(d.conflate_key),
            redis_url: self.ws_redis_url.filter(|url| !url.trim().is_empty()),
        };
        config.validate()?;
        Ok(config)
    }
}

impl WebSocketConfig {
    /// Checks the ranges that parsing alone does not: positive intervals and sizes.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] naming the first variable out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("WS_RECONNECT_INTERVAL", self.reconnect_interval),
            ("WS_MAX_RECONNECT_DELAY", self.max_reconnect_delay),
            ("WS_PING_INTERVAL", self.ping_interval),
            ("WS_PONG_TIMEOUT", self.pong_timeout),
            ("WS_CONNECT_TIMEOUT", self.connect_timeout),
            ("WS_IDLE_TIMEOUT", self.idle_timeout),
            ("WS_HANDSHAKE_TIMEOUT", self.handshake_timeout),
            ("WS_WRITE_TIMEOUT", self.write_timeout),
            ("WS_AUTH_TIMEOUT", self.auth_timeout),
        ];
        for (variable, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::OutOfRange {
                    variable,
                    value: "0".to_owned(),
                    reason: "must be greater than 0 seconds",
                });
            }
        }
        // Upper bounds: values that parse but that no deployment means, and that would
        // overflow the hub's arithmetic (an instant a billion years away, a buffer of 2^63
        // bytes) if let through.
        let durations = [
            ("WS_RECONNECT_INTERVAL", self.reconnect_interval),
            ("WS_MAX_RECONNECT_DELAY", self.max_reconnect_delay),
            ("WS_PING_INTERVAL", self.ping_interval),
            ("WS_PONG_TIMEOUT", self.pong_timeout),
            ("WS_CONNECT_TIMEOUT", self.connect_timeout),
            ("WS_IDLE_TIMEOUT", self.idle_timeout),
            ("WS_HANDSHAKE_TIMEOUT", self.handshake_timeout),
            ("WS_WRITE_TIMEOUT", self.write_timeout),
            ("WS_AUTH_TIMEOUT", self.auth_timeout),
            ("WS_DRAIN_WINDOW", self.drain_window),
            ("WS_HISTORY_TTL", self.history_ttl),
            ("WS_RECONNECT_HINT", self.reconnect_hint),
        ];
        for (variable, value) in durations {
            if value > MAX_DURATION {
                return Err(ConfigError::OutOfRange {
                    variable,
                    value: format!("{}", value.as_secs_f64()),
                    reason: "must be at most 31536000 seconds (365 days)",
                });
            }
        }
        let ceilings = [
            (
                "WS_MAX_MESSAGE_SIZE",
                self.max_message_size,
                1 << 30,
                "must be at most 1073741824 bytes (1 GiB)",
            ),
            (
                "WS_SEND_QUEUE_SIZE",
                self.send_queue_size,
                MAX_COUNT,
                "must be at most 10000000",
            ),
            (
                "WS_SEND_QUEUE_BYTES",
                self.send_queue_bytes,
                1 << 40,
                "must be at most 1099511627776 bytes (1 TiB)",
            ),
            (
                "WS_MESSAGE_BUFFER_SIZE",
                self.message_buffer_size,
                MAX_COUNT,
                "must be at most 10000000",
            ),
            (
                "WS_MAX_CONNECTIONS",
                self.max_connections,
                MAX_COUNT,
                "must be at most 10000000 (0: as many as the process may open)",
            ),
            (
                "WS_MAX_PENDING_UPGRADES",
                self.max_pending_upgrades,
                MAX_COUNT,
                "must be at most 10000000",
            ),
            (
                "WS_MAX_SUBSCRIPTIONS",
                self.max_subscriptions,
                MAX_COUNT,
                "must be at most 10000000",
            ),
            (
                "WS_HISTORY_SIZE",
                self.history_size,
                MAX_COUNT,
                "must be at most 10000000",
            ),
            (
                "WS_HISTORY_MAX_BYTES",
                self.history_max_bytes,
                1 << 40,
                "must be at most 1099511627776 bytes (1 TiB)",
            ),
            (
                "WS_MAX_CHANNELS",
                self.max_channels,
                MAX_COUNT,
                "must be at most 10000000",
            ),
        ];
        for (variable, value, max, reason) in ceilings {
            if value > max {
                return Err(ConfigError::OutOfRange {
                    variable,
                    value: value.to_string(),
                    reason,
                });
            }
        }
        for (variable, value) in [
            ("WS_RATE_LIMIT", self.rate_limit),
            ("WS_PUBLISH_RATE_LIMIT", self.publish_rate_limit),
        ] {
            if value > 1e9 {
                return Err(ConfigError::OutOfRange {
                    variable,
                    value: value.to_string(),
                    reason: "must be at most 1000000000 per second",
                });
            }
        }
        if let Some(secret) = &self.jwt_secret
            && secret.expose().len() < MIN_SECRET_LEN
        {
            return Err(ConfigError::OutOfRange {
                variable: "WS_JWT_SECRET",
                value: format!("({} bytes, not shown)", secret.expose().len()),
                reason: "must be at least 32 bytes: a shorter HS256 secret can be guessed \
                         offline from any token (RFC 7518, section 3.2); use e.g. \
                         `openssl rand -hex 32`",
            });
        }
        let counts = [
            (
                "WS_SEND_QUEUE_SIZE",
                self.send_queue_size,
                1,
                "must be at least 1",
            ),
            (
                "WS_SEND_QUEUE_BYTES",
                self.send_queue_bytes,
                MIN_MESSAGE_SIZE,
                "must be at least 256 bytes",
            ),
            (
                "WS_MAX_PENDING_UPGRADES",
                self.max_pending_upgrades,
                1,
                "must be at least 1",
            ),
            (
                "WS_MAX_CHANNELS",
                self.max_channels,
                1,
                "must be at least 1",
            ),
            (
                "WS_MAX_SUBSCRIPTIONS",
                self.max_subscriptions,
                1,
                "must be at least 1",
            ),
            (
                "WS_RATE_LIMIT_BURST",
                self.rate_limit_burst as usize,
                1,
                "must be at least 1",
            ),
            (
                "WS_MAX_MESSAGE_SIZE",
                self.max_message_size,
                MIN_MESSAGE_SIZE,
                "must be at least 256 bytes",
            ),
        ];
        for (variable, value, min, reason) in counts {
            if value < min {
                return Err(ConfigError::OutOfRange {
                    variable,
                    value: value.to_string(),
                    reason,
                });
            }
        }
        if !(self.rate_limit.is_finite() && self.rate_limit > 0.0) {
            return Err(ConfigError::OutOfRange {
                variable: "WS_RATE_LIMIT",
                value: self.rate_limit.to_string(),
                reason: "must be a positive number of frames per second",
            });
        }
        if !(self.publish_rate_limit.is_finite() && self.publish_rate_limit >= 0.0) {
            return Err(ConfigError::OutOfRange {
                variable: "WS_PUBLISH_RATE_LIMIT",
                value: self.publish_rate_limit.to_string(),
                reason: "must be 0 (no limit) or a positive number of publications per second",
            });
        }
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError::OutOfRange {
                variable: "WS_REDIS_URL",
                value: url.clone(),
                reason: "must be a redis:// URL",
            });
        }
        if self.conflate_key.trim().is_empty() {
            return Err(ConfigError::OutOfRange {
                variable: "WS_CONFLATE_KEY",
                value: self.conflate_key.clone(),
                reason: "must name a field of the publications' data",
            });
        }
        if !matches!(self.jwt_algorithm.as_str(), "RS256" | "ES256") {
            return Err(ConfigError::OutOfRange {
                variable: "WS_JWT_ALGORITHM",
                value: self.jwt_algorithm.clone(),
                reason: "must be RS256 or ES256",
            });
        }
        Ok(())
    }

    /// `host:port`, ready for `bind`.
    pub fn bind_address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Converts seconds (with an optional fraction) into a `Duration`, naming the variable when
/// the number is negative, not finite, or too large.
fn secs(variable: &'static str, value: Option<f64>) -> Result<Option<Duration>, ConfigError> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s).map_err(|_| ConfigError::OutOfRange {
                variable,
                value: s.to_string(),
                reason: "must be a non-negative number of seconds",
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let config = WebSocketConfig::from_vars(Vec::<(String, String)>::new()).unwrap();
        assert_eq!(config, WebSocketConfig::default());
        assert_eq!(config.bind_address(), "0.0.0.0:8080");
        assert_eq!(config.reconnect_interval, Duration::from_secs(1));
        assert_eq!(config.ping_interval, Duration::from_secs(30));
        assert_eq!(config.message_buffer_size, 1000);
        assert_eq!(config.max_reconnect_attempts, None);
    }

    #[test]
    fn every_variable_is_read() {
        let config = WebSocketConfig::from_vars([
            ("WS_HOST", "127.0.0.1"),
            ("WS_PORT", "0"),
            ("WS_RECONNECT_INTERVAL", "0.25"),
            ("WS_MAX_RECONNECT_DELAY", "8"),
            ("WS_MAX_RECONNECT_ATTEMPTS", "3"),
            ("WS_PING_INTERVAL", "2"),
            ("WS_PONG_TIMEOUT", "1"),
            ("WS_CONNECT_TIMEOUT", "4"),
            ("WS_MESSAGE_BUFFER_SIZE", "10"),
            ("WS_IDLE_TIMEOUT", "6"),
            ("WS_HANDSHAKE_TIMEOUT", "3"),
            ("WS_MAX_MESSAGE_SIZE", "4096"),
            ("WS_SEND_QUEUE_SIZE", "16"),
            ("WS_SLOW_CONSUMER_POLICY", "drop_oldest"),
            ("WS_MAX_CONNECTIONS", "5"),
            ("WS_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("WS_JWT_PUBLIC_KEY", "/keys/pub.pem"),
            ("WS_JWT_ALGORITHM", "ES256"),
            ("WS_AUTH_TIMEOUT", "2"),
            ("WS_MAX_SUBSCRIPTIONS", "7"),
            ("WS_RATE_LIMIT", "50"),
            ("WS_RATE_LIMIT_BURST", "60"),
            ("WS_ALLOWED_ORIGINS", "https://a.example, https://b.example"),
            ("OTHER", "ignored"),
        ])
        .unwrap();
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.port, 0);
        assert_eq!(config.reconnect_interval, Duration::from_millis(250));
        assert_eq!(config.max_reconnect_delay, Duration::from_secs(8));
        assert_eq!(config.max_reconnect_attempts, Some(3));
        assert_eq!(config.ping_interval, Duration::from_secs(2));
        assert_eq!(config.pong_timeout, Duration::from_secs(1));
        assert_eq!(config.connect_timeout, Duration::from_secs(4));
        assert_eq!(config.message_buffer_size, 10);
        assert_eq!(config.idle_timeout, Duration::from_secs(6));
        assert_eq!(config.handshake_timeout, Duration::from_secs(3));
        assert_eq!(config.max_message_size, 4096);
        assert_eq!(config.send_queue_size, 16);
        assert_eq!(config.slow_consumer_policy, SlowConsumerPolicy::DropOldest);
        assert_eq!(config.max_connections, 5);
        assert_eq!(
            config.jwt_secret.as_ref().map(Secret::expose),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert!(
            !format!("{config:?}").contains("0123456789abcdef0123456789abcdef"),
            "the secret leaks into Debug"
        );
        assert_eq!(config.jwt_public_key.as_deref(), Some("/keys/pub.pem"));
        assert_eq!(config.jwt_algorithm, "ES256");
        assert_eq!(config.auth_timeout, Duration::from_secs(2));
        assert_eq!(config.max_subscriptions, 7);
        assert_eq!(config.rate_limit, 50.0);
        assert_eq!(config.rate_limit_burst, 60);
        assert_eq!(
            config.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn invalid_values_name_the_variable_and_the_value() {
        for (name, value) in [
            ("WS_PORT", "abc"),
            ("WS_PORT", "70000"),
            ("WS_PING_INTERVAL", "soon"),
            ("WS_PING_INTERVAL", "-1"),
            ("WS_PING_INTERVAL", "0"),
            ("WS_MAX_RECONNECT_ATTEMPTS", "-2"),
            ("WS_MESSAGE_BUFFER_SIZE", "many"),
            ("WS_SLOW_CONSUMER_POLICY", "panic"),
            ("WS_MAX_MESSAGE_SIZE", "10"),
            ("WS_SEND_QUEUE_SIZE", "0"),
            ("WS_RATE_LIMIT", "0"),
            ("WS_JWT_ALGORITHM", "HS512"),
            ("WS_MAX_SUBSCRIPTIONS", "0"),
        ] {
            let error = WebSocketConfig::from_vars([(name, value)])
                .unwrap_err()
                .to_string();
            assert!(error.contains(name), "{name}={value}: {error}");
            assert!(
                error.contains(value.trim_start_matches('-')),
                "{name}={value}: {error}"
            );
        }
    }

    #[test]
    fn invalid_numbers_say_what_was_expected() {
        let error = WebSocketConfig::from_vars([("WS_PORT", "80a")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("WS_PORT=80a"), "{error}");
        assert!(error.contains("0 to 65535"), "{error}");
        assert!(!error.contains("invalid digit"), "{error}");
        let error = WebSocketConfig::from_vars([("WS_PING_INTERVAL", "30s")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("number of seconds"), "{error}");
        let error = WebSocketConfig::from_vars([("WS_SEND_QUEUE_SIZE", "1k")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("whole number"), "{error}");
    }

    #[test]
    fn misspelled_variables_are_found_with_a_suggestion() {
        let unknown = WebSocketConfig::unknown_variables([
            "WS_PROT",
            "WS_HISTORY_SIZE",
            "WS_COMPLETELY_DIFFERENT_THING",
            "HOME",
            "WS_PROT",
        ]);
        assert_eq!(
            unknown,
            [
                ("WS_PROT".to_owned(), Some("WS_PORT")),
                ("WS_COMPLETELY_DIFFERENT_THING".to_owned(), None),
            ]
        );
    }

    /// The field names of [`EnvVars`], as serde sees them.
    fn env_var_fields() -> &'static [&'static str] {
        use serde::de::{self, Deserializer, Visitor};
        struct Fields(&'static [&'static str]);
        impl<'de> Deserializer<'de> for &mut Fields {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("only structs"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0 = fields;
                Err(de::Error::custom("fields recorded"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf
                option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut fields = Fields(&[]);
        let _ = EnvVars::deserialize(&mut fields);
        fields.0
    }

    #[test]
    fn every_variable_read_is_known_and_every_known_one_is_read() {
        let read: Vec<String> = env_var_fields().iter().map(|f| f.to_uppercase()).collect();
        assert_eq!(read.len(), VARIABLES.len());
        for name in &read {
            assert!(
                VARIABLES.iter().any(|(known, _)| known == name),
                "{name} is read but missing from VARIABLES (the hub would warn it is unknown)"
            );
        }
    }

    #[test]
    fn every_documented_variable_is_known() {
        let example = include_str!("../../.env.example");
        for line in example.lines() {
            let line = line.trim_start_matches("# ").trim();
            if let Some((name, _)) = line.split_once('=')
                && name.starts_with("WS_")
            {
                assert!(
                    WebSocketConfig::unknown_variables([name]).is_empty(),
                    "{name} is in .env.example but not known"
                );
            }
        }
    }

    #[test]
    fn empty_values_count_as_unset_and_later_values_win() {
        let config = WebSocketConfig::from_vars([
            ("WS_PORT", "1"),
            ("WS_PORT", "2"),
            ("WS_MAX_RECONNECT_ATTEMPTS", ""),
        ])
        .unwrap();
        assert_eq!(config.port, 2);
        assert_eq!(config.max_reconnect_attempts, None);
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let config = WebSocketConfig::from_vars([("WS_HOST", "::1"), ("WS_PORT", "9")]).unwrap();
        assert_eq!(config.bind_address(), "[::1]:9");
    }
}
