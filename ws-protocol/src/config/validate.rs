//! The ranges the configuration must keep: positive intervals, sizes and counts that the hub's
//! arithmetic can hold, a JWT secret long enough.

use std::time::Duration;

use super::WebSocketConfig;
use crate::error::ConfigError;

/// The smallest `WS_MAX_MESSAGE_SIZE` accepted: enough for every control frame.
const MIN_MESSAGE_SIZE: usize = 256;
/// The longest duration any variable accepts.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The largest count (connections, queue entries, channels) any variable accepts.
const MAX_COUNT: usize = 10_000_000;
/// The shortest `WS_JWT_SECRET` accepted: 256 bits, the length of HS256's hash.
const MIN_SECRET_LEN: usize = 32;
/// The shortest `WS_API_KEY` accepted: 128 bits of hex.
const MIN_API_KEY_LEN: usize = 16;

impl WebSocketConfig {
    /// Checks the ranges that parsing alone does not: positive intervals and sizes.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] naming the first variable out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Every duration: at most MAX_DURATION (a value that parses but that no deployment
        // means, and that would overflow the hub's arithmetic, such as an instant a billion
        // years away); the intervals and timeouts also more than zero. `true`: must be
        // positive.
        let durations = [
            ("WS_RECONNECT_INTERVAL", self.reconnect_interval, true),
            ("WS_MAX_RECONNECT_DELAY", self.max_reconnect_delay, true),
            ("WS_PING_INTERVAL", self.ping_interval, true),
            ("WS_PONG_TIMEOUT", self.pong_timeout, true),
            ("WS_CONNECT_TIMEOUT", self.connect_timeout, true),
            ("WS_IDLE_TIMEOUT", self.idle_timeout, true),
            ("WS_HANDSHAKE_TIMEOUT", self.handshake_timeout, true),
            ("WS_WRITE_TIMEOUT", self.write_timeout, true),
            ("WS_AUTH_TIMEOUT", self.auth_timeout, true),
            ("WS_DRAIN_WINDOW", self.drain_window, false),
            ("WS_HISTORY_TTL", self.history_ttl, false),
            ("WS_IDEMPOTENCY_WINDOW", self.idempotency_window, false),
            ("WS_REQUEST_TIMEOUT", self.request_timeout, true),
            ("WS_RECONNECT_HINT", self.reconnect_hint, false),
        ];
        for (variable, value, positive) in durations {
            if positive && value.is_zero() {
                return Err(ConfigError::OutOfRange {
                    variable,
                    value: "0".to_owned(),
                    reason: "must be greater than 0 seconds",
                });
            }
            if value > MAX_DURATION {
                return Err(ConfigError::OutOfRange {
                    variable,
                    value: format!("{}", value.as_secs_f64()),
                    reason: "must be at most 31536000 seconds (365 days)",
                });
            }
        }
        // Upper bounds on sizes and counts, for the same reason (a buffer of 2^63 bytes).
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
            (
                "WS_IDEMPOTENCY_MAX_KEYS",
                self.idempotency_max_keys,
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
        if let Some(key) = &self.api_key
            && key.expose().len() < MIN_API_KEY_LEN
        {
            return Err(ConfigError::OutOfRange {
                variable: "WS_API_KEY",
                value: format!("({} bytes, not shown)", key.expose().len()),
                reason: "must be at least 16 bytes; use e.g. `openssl rand -hex 16`",
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
        if let Some(node) = self
            .redis_cluster_nodes
            .iter()
            .find(|node| !(node.starts_with("redis://") || node.starts_with("rediss://")))
        {
            return Err(ConfigError::OutOfRange {
                variable: "WS_REDIS_CLUSTER_NODES",
                value: node.clone(),
                reason: "must be comma-separated redis:// URLs",
            });
        }
        if self.redis_url.is_some() && !self.redis_cluster_nodes.is_empty() {
            return Err(ConfigError::OutOfRange {
                variable: "WS_REDIS_CLUSTER_NODES",
                value: self.redis_cluster_nodes.join(","),
                reason: "cannot be set with WS_REDIS_URL: one Redis or one Redis Cluster",
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
}
