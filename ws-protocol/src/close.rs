//! The WebSocket close codes the hub sends, and how a client should react to each.
//!
//! | code | constant | sent when | client reaction |
//! |---|---|---|---|
//! | 1000 | [`NORMAL`] | the peer closes on purpose, or the hub closes an idle connection | reconnect only if it still wants data |
//! | 1001 | [`GOING_AWAY`] | the hub shuts down | reconnect with backoff |
//! | 1002 | [`PROTOCOL_ERROR`] | the peer broke the WebSocket protocol (a bad frame) | fix the sender |
//! | 1007 | [`INVALID_PAYLOAD`] | a text frame was not valid UTF-8, or a compressed message not valid deflate data | fix the sender |
//! | 1008 | [`POLICY_VIOLATION`] | slow consumer, authentication, rate-limit flood | do not retry blindly |
//! | 1009 | [`MESSAGE_TOO_BIG`] | a frame exceeded the hub's maximum message size (for a compressed message: inflated, or still compressed) | fix the sender |
//! | 1012 | [`SERVICE_RESTART`] | the hub restarts | reconnect with backoff |
//!
//! [`INTERNAL_ERROR`] (1011) and [`TRY_AGAIN_LATER`] (1013) are never sent by the hub; they are
//! named for clients of other servers that send them.

/// 1000: normal closure.
pub const NORMAL: u16 = 1000;
/// 1001: the endpoint is going away (hub shutdown).
pub const GOING_AWAY: u16 = 1001;
/// 1008: the peer broke a policy (slow consumer, forbidden action).
pub const POLICY_VIOLATION: u16 = 1008;
/// 1002: the peer broke the WebSocket protocol (a bad frame).
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1007: a text frame was not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1009: a message was larger than the receiver accepts.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1011: the server met an unexpected condition. Not sent by the hub.
pub const INTERNAL_ERROR: u16 = 1011;
/// 1012: the service is restarting.
pub const SERVICE_RESTART: u16 = 1012;
/// 1013: the service is overloaded; try again later. Not sent by the hub.
pub const TRY_AGAIN_LATER: u16 = 1013;

/// The words before a reconnect hint in a close reason: `"service restart; retry after 1000 ms"`.
pub const RETRY_AFTER_PREFIX: &str = "retry after ";

/// The reconnect hint in a close reason, if it has one.
///
/// ```
/// use std::time::Duration;
/// use ws_protocol::close;
/// assert_eq!(close::retry_after("service restart; retry after 250 ms"), Some(Duration::from_millis(250)));
/// assert_eq!(close::retry_after("server shutting down"), None);
/// ```
pub fn retry_after(reason: &str) -> Option<std::time::Duration> {
    let rest = &reason[reason.find(RETRY_AFTER_PREFIX)? + RETRY_AFTER_PREFIX.len()..];
    let millis: u64 = rest.split(" ms").next()?.trim().parse().ok()?;
    Some(std::time::Duration::from_millis(millis))
}

/// Whether a client should reconnect (with backoff) after the server closed with `code`.
///
/// Policy violations and oversized messages would only repeat, so they are not retried;
/// everything else (going away, restart, overload, internal errors, unknown codes) is.
///
/// ```
/// use ws_protocol::close;
/// assert!(close::is_retryable(close::GOING_AWAY));
/// assert!(!close::is_retryable(close::POLICY_VIOLATION));
/// ```
pub fn is_retryable(code: u16) -> bool {
    !matches!(code, POLICY_VIOLATION | MESSAGE_TOO_BIG)
}
