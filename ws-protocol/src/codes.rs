//! The stable `code` values of [`WsMessage::Error`](crate::WsMessage::Error).

/// The frame is not valid JSON, has no `type`, lacks a field its type needs, is binary, or
/// is a `Publish` whose data not every subscriber could parse (nested more than 64 levels,
/// a number out of a 64-bit float's range).
pub const BAD_REQUEST: &str = "bad_request";
/// The frame's `type` is not one the hub knows.
pub const UNKNOWN_TYPE: &str = "unknown_type";
/// The frame is larger than the hub's maximum message size (the hub then closes with 1009).
pub const MESSAGE_TOO_LARGE: &str = "message_too_large";
/// The connection could not keep up with its publications (the hub then closes with 1008).
pub const SLOW_CONSUMER: &str = "slow_consumer";
/// The frame is valid but this hub does not act on it (for example a `PriceUpdate` sent to
/// a hub that has no application reading client messages).
pub const UNSUPPORTED: &str = "unsupported";
/// A channel name is empty or too long.
pub const INVALID_CHANNEL: &str = "invalid_channel";
/// The connection's grant does not allow this subscribe or publish; nothing changed.
pub const FORBIDDEN: &str = "forbidden";
/// The hub requires authentication first (`Authenticate`), or the token was refused.
pub const UNAUTHORIZED: &str = "unauthorized";
/// The connection sends frames faster than its rate limit; the frame was not acted on.
pub const RATE_LIMITED: &str = "rate_limited";
/// The subscribe would exceed the hub's subscriptions per connection; nothing changed.
pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";
/// The hub cannot reach the broker its hubs share (Redis), or a subscribe needs a new
/// channel while the hub holds `WS_MAX_CHANNELS` channels that all have subscribers: the
/// publish or subscribe was not done; retry later.
pub const UNAVAILABLE: &str = "unavailable";
/// A `Request` got no answer from the application within its deadline; the outcome is
/// unknown to the hub (the application may still act on it).
pub const TIMEOUT: &str = "timeout";
