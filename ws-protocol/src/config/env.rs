//! Reading the configuration: from the process environment and a `.env` file
//! ([`WebSocketConfig::from_env`], the only I/O of this crate) or from given pairs
//! ([`WebSocketConfig::from_vars`]).

use std::time::Duration;

use serde::Deserialize;

use super::variables::check_number;
use super::{Secret, WebSocketConfig};
use crate::error::ConfigError;

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

/// The variables as envy sees them. envy names a variable that fails to parse by its full
/// name only when the fields carry the `ws_` prefix, hence this private mirror.
#[derive(Deserialize)]
pub(super) struct EnvVars {
    ws_host: Option<String>,
    ws_port: Option<u16>,
    ws_reconnect_interval: Option<f64>,
    ws_max_reconnect_delay: Option<f64>,
    ws_max_reconnect_attempts: Option<u32>,
    ws_ping_interval: Option<f64>,
    ws_pong_timeout: Option<f64>,
    ws_connect_timeout: Option<f64>,
    ws_message_buffer_size: Option<usize>,
    ws_client_transport: Option<String>,
    ws_idle_timeout: Option<f64>,
    ws_handshake_timeout: Option<f64>,
    ws_max_message_size: Option<usize>,
    ws_compression: Option<String>,
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
    ws_api_key: Option<String>,
    ws_drain_window: Option<f64>,
    ws_history_size: Option<usize>,
    ws_history_ttl: Option<f64>,
    ws_history_max_bytes: Option<usize>,
    ws_max_channels: Option<usize>,
    ws_idempotency_window: Option<f64>,
    ws_idempotency_max_keys: Option<usize>,
    ws_request_timeout: Option<f64>,
    ws_reconnect_hint: Option<f64>,
    ws_conflate_key: Option<String>,
    ws_redis_url: Option<String>,
    ws_redis_cluster_nodes: Option<String>,
    ws_redis_wait_replicas: Option<usize>,
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
            client_transport: match self.ws_client_transport {
                None => d.client_transport,
                Some(value) => value.parse().map_err(|reason| ConfigError::OutOfRange {
                    variable: "WS_CLIENT_TRANSPORT",
                    value,
                    reason,
                })?,
            },
            idle_timeout: secs("WS_IDLE_TIMEOUT", self.ws_idle_timeout)?.unwrap_or(d.idle_timeout),
            handshake_timeout: secs("WS_HANDSHAKE_TIMEOUT", self.ws_handshake_timeout)?
                .unwrap_or(d.handshake_timeout),
            max_message_size: self.ws_max_message_size.unwrap_or(d.max_message_size),
            compression: match self.ws_compression {
                None => d.compression,
                Some(value) => value.parse().map_err(|reason| ConfigError::OutOfRange {
                    variable: "WS_COMPRESSION",
                    value,
                    reason,
                })?,
            },
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
            allowed_origins: comma_separated(self.ws_allowed_origins),
            tls_cert: self.ws_tls_cert,
            tls_key: self.ws_tls_key,
            admin_addr: self.ws_admin_addr,
            api_key: self.ws_api_key.map(Secret),
            drain_window: secs("WS_DRAIN_WINDOW", self.ws_drain_window)?.unwrap_or(d.drain_window),
            history_size: self.ws_history_size.unwrap_or(d.history_size),
            history_ttl: secs("WS_HISTORY_TTL", self.ws_history_ttl)?.unwrap_or(d.history_ttl),
            history_max_bytes: self.ws_history_max_bytes.unwrap_or(d.history_max_bytes),
            max_channels: self.ws_max_channels.unwrap_or(d.max_channels),
            idempotency_window: secs("WS_IDEMPOTENCY_WINDOW", self.ws_idempotency_window)?
                .unwrap_or(d.idempotency_window),
            idempotency_max_keys: self
                .ws_idempotency_max_keys
                .unwrap_or(d.idempotency_max_keys),
            request_timeout: secs("WS_REQUEST_TIMEOUT", self.ws_request_timeout)?
                .unwrap_or(d.request_timeout),
            reconnect_hint: secs("WS_RECONNECT_HINT", self.ws_reconnect_hint)?
                .unwrap_or(d.reconnect_hint),
            conflate_key: self.ws_conflate_key.unwrap_or(d.conflate_key),
            redis_url: self.ws_redis_url.filter(|url| !url.trim().is_empty()),
            redis_cluster_nodes: comma_separated(self.ws_redis_cluster_nodes),
            redis_wait_replicas: self.ws_redis_wait_replicas.unwrap_or(d.redis_wait_replicas),
        };
        config.validate()?;
        Ok(config)
    }
}

/// The items of a comma-separated list, trimmed, empty ones left out.
fn comma_separated(list: Option<String>) -> Vec<String> {
    list.map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
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
