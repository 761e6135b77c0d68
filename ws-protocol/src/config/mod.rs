//! [`WebSocketConfig`]: the `WS_*` environment variables shared by the client and the hub.
//!
//! This file holds the settings and their defaults; `env.rs` reads them from the process
//! environment and `.env` (the only I/O of this crate), `variables.rs` knows every variable
//! and the kind of value it takes, and `validate.rs` checks the ranges.

use std::str::FromStr;
use std::time::Duration;

mod env;
mod validate;
mod variables;

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

/// Which WebSocket implementation `ws-client` uses for its connections
/// (`WS_CLIENT_TRANSPORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientTransport {
    /// tokio-tungstenite, the default.
    #[default]
    Tungstenite,
    /// sockudo-ws: needs `ws-client` built with its `sockudo` feature (a client built
    /// without it refuses the setting rather than silently using tungstenite).
    Sockudo,
}

impl FromStr for ClientTransport {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tungstenite" => Ok(Self::Tungstenite),
            "sockudo" => Ok(Self::Sockudo),
            _ => Err("expected `tungstenite` or `sockudo`"),
        }
    }
}

/// Whether the hub agrees to permessage-deflate (RFC 7692) when a client offers it
/// (`WS_COMPRESSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Agreed when offered (browsers and Python's `websockets` offer it by default): each
    /// publication of at least [`COMPRESS_AT_LEAST`](crate::deflate::COMPRESS_AT_LEAST)
    /// bytes is compressed once and the same bytes go to every subscriber that agreed. The
    /// default.
    #[default]
    On,
    /// Never agreed: every connection goes uncompressed.
    Off,
}

impl FromStr for Compression {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err("expected `on` or `off`"),
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
    /// `WS_CLIENT_TRANSPORT`: `tungstenite` (default) or `sockudo`; see [`ClientTransport`].
    pub client_transport: ClientTransport,
    /// `WS_IDLE_TIMEOUT`: the hub closes a connection from which nothing (not even a pong)
    /// arrived for this long. Default 90 s (three missed pings).
    pub idle_timeout: Duration,
    /// `WS_HANDSHAKE_TIMEOUT`: the hub drops a TCP connection that has not completed the
    /// WebSocket upgrade within this time. Default 10 s.
    pub handshake_timeout: Duration,
    /// `WS_MAX_MESSAGE_SIZE`: the largest frame, in bytes, the hub accepts; larger ones are
    /// answered with close 1009. Default 65536 (64 KiB).
    pub max_message_size: usize,
    /// `WS_COMPRESSION`: [`Compression`]. Default `on`.
    pub compression: Compression,
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
    /// Default 0: as many as the process may open files. The `ws-server` binary raises its
    /// open-file limit to the hard limit and keeps 64 descriptors for itself, said in the log
    /// at start; an application embedding the hub keeps its own open-file limit.
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
    /// `WS_API_KEY`: opens the HTTP publish API (`POST /publish`, `POST /broadcast`) on the
    /// public port too, to requests with `Authorization: apikey <key>`; at least 16 bytes.
    /// Default: unset (the API only on `WS_ADMIN_ADDR`).
    pub api_key: Option<Secret>,
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
    /// `WS_IDEMPOTENCY_WINDOW`: how long the hub remembers a `Publish`'s idempotency `key`,
    /// so that the same key on the same channel is not published twice. Default 120 s.
    pub idempotency_window: Duration,
    /// `WS_IDEMPOTENCY_MAX_KEYS`: idempotency keys the hub remembers at once over all
    /// channels (with Redis: per channel, in Redis); past it a channel's oldest keys are
    /// forgotten first, and a keyed `Publish` is refused (`unavailable`) only when other
    /// channels hold every key. Default 100000.
    pub idempotency_max_keys: usize,
    /// `WS_REQUEST_TIMEOUT`: how long the hub waits for the embedding application to answer
    /// a client's `Request` before answering `Error { code: "timeout" }`. Default 10 s.
    pub request_timeout: Duration,
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
    /// `WS_REDIS_CLUSTER_NODES`: comma-separated `redis://host:port` seed nodes of a Redis
    /// Cluster to share channels through, instead of `WS_REDIS_URL` (one of the two at
    /// most). A channel's keys share one hash slot, so each channel lives on one shard.
    /// Default: empty.
    pub redis_cluster_nodes: Vec<String>,
    /// `WS_REDIS_WAIT_REPLICAS`: a publication is acknowledged to its publisher only once
    /// this many replicas of its Redis primary have it (Redis `WAIT`, up to 1 s; fewer in
    /// time and the publication is answered `unavailable`, to be retried with its
    /// idempotency key). Redis replicates asynchronously: where a primary can fail over to a
    /// replica (Redis Cluster, Sentinel), 1 or more keeps a failover from losing an
    /// acknowledged publication. Default 0 (acknowledged when the primary has it).
    pub redis_wait_replicas: usize,
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
            client_transport: ClientTransport::Tungstenite,
            idle_timeout: Duration::from_secs(90),
            handshake_timeout: Duration::from_secs(10),
            max_message_size: 64 * 1024,
            compression: Compression::On,
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
            api_key: None,
            drain_window: Duration::from_secs(5),
            history_size: 256,
            history_ttl: Duration::from_secs(60),
            history_max_bytes: 64 * 1024 * 1024,
            max_channels: 100_000,
            idempotency_window: Duration::from_secs(120),
            idempotency_max_keys: 100_000,
            request_timeout: Duration::from_secs(10),
            reconnect_hint: Duration::from_secs(1),
            conflate_key: "symbol".to_owned(),
            redis_url: None,
            redis_cluster_nodes: Vec::new(),
            redis_wait_replicas: 0,
        }
    }
}

impl WebSocketConfig {
    /// `host:port`, ready for `bind`.
    pub fn bind_address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::env::EnvVars;
    use super::variables::VARIABLES;
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
            ("WS_CLIENT_TRANSPORT", "sockudo"),
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
        assert_eq!(config.client_transport, ClientTransport::Sockudo);
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
            ("WS_CLIENT_TRANSPORT", "fastest"),
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
    fn an_api_key_is_secret_and_at_least_16_bytes() {
        let config =
            WebSocketConfig::from_vars([("WS_API_KEY", "00112233445566778899aabb")]).unwrap();
        assert_eq!(
            config.api_key.as_ref().map(Secret::expose),
            Some("00112233445566778899aabb")
        );
        assert!(!format!("{config:?}").contains("00112233445566778899aabb"));
        let error = WebSocketConfig::from_vars([("WS_API_KEY", "short-key")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("WS_API_KEY"), "{error}");
        assert!(error.contains("at least 16 bytes"), "{error}");
        assert!(!error.contains("short-key"), "the key leaks: {error}");
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
        use serde::Deserialize;
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
        let example = include_str!("../../../.env.example");
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
