//! The rule for channel names, shared by the hub (which refuses bad names with
//! `invalid_channel`) and the client (which refuses them before sending).

use crate::message::excerpt;

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_NAME_LEN: usize = 256;

/// Whether `name` is a valid channel name: 1 to [`MAX_CHANNEL_NAME_LEN`] bytes of UTF-8.
///
/// ```
/// use ws_protocol::is_valid_channel_name;
///
/// assert!(is_valid_channel_name("prices:SOL-USDC"));
/// assert!(!is_valid_channel_name(""));
/// assert!(!is_valid_channel_name(&"x".repeat(257)));
/// ```
pub fn is_valid_channel_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_CHANNEL_NAME_LEN
}

/// What is wrong with an invalid channel name, quoting at most its beginning.
pub fn invalid_channel_name(name: &str) -> String {
    format!(
        "invalid channel name {}: must be 1 to {MAX_CHANNEL_NAME_LEN} bytes",
        excerpt(name)
    )
}
