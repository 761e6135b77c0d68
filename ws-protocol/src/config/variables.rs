//! Every `WS_*` variable the toolkit reads and the kind of value it takes: for errors that
//! say what was expected, and for the warning about names it does not read.

use super::WebSocketConfig;
use crate::error::ConfigError;

/// What kind of value a numeric variable takes, for an error that says what was expected.
#[derive(Clone, Copy)]
pub(super) enum Number {
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
pub(super) const VARIABLES: &[(&str, Option<Number>)] = &[
    ("WS_HOST", None),
    ("WS_PORT", Some(Number::Port)),
    ("WS_RECONNECT_INTERVAL", Some(Number::Seconds)),
    ("WS_MAX_RECONNECT_DELAY", Some(Number::Seconds)),
    ("WS_MAX_RECONNECT_ATTEMPTS", Some(Number::Count)),
    ("WS_PING_INTERVAL", Some(Number::Seconds)),
    ("WS_PONG_TIMEOUT", Some(Number::Seconds)),
    ("WS_CONNECT_TIMEOUT", Some(Number::Seconds)),
    ("WS_MESSAGE_BUFFER_SIZE", Some(Number::Count)),
    ("WS_CLIENT_TRANSPORT", None),
    ("WS_IDLE_TIMEOUT", Some(Number::Seconds)),
    ("WS_HANDSHAKE_TIMEOUT", Some(Number::Seconds)),
    ("WS_MAX_MESSAGE_SIZE", Some(Number::Count)),
    ("WS_COMPRESSION", None),
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
    ("WS_API_KEY", None),
    ("WS_DRAIN_WINDOW", Some(Number::Seconds)),
    ("WS_HISTORY_SIZE", Some(Number::Count)),
    ("WS_HISTORY_TTL", Some(Number::Seconds)),
    ("WS_HISTORY_MAX_BYTES", Some(Number::Count)),
    ("WS_MAX_CHANNELS", Some(Number::Count)),
    ("WS_IDEMPOTENCY_WINDOW", Some(Number::Seconds)),
    ("WS_IDEMPOTENCY_MAX_KEYS", Some(Number::Count)),
    ("WS_REQUEST_TIMEOUT", Some(Number::Seconds)),
    ("WS_RECONNECT_HINT", Some(Number::Seconds)),
    ("WS_CONFLATE_KEY", None),
    ("WS_REDIS_URL", None),
    ("WS_REDIS_CLUSTER_NODES", None),
    ("WS_REDIS_WAIT_REPLICAS", Some(Number::Count)),
];

/// Checks that a numeric variable holds a number of its kind, so that the error names the
/// variable, the value and what was expected (rather than the parser's "invalid digit").
pub(super) fn check_number(name: &str, value: &str) -> Result<(), ConfigError> {
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
