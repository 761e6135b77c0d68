//! Application frames (`PriceUpdate`, `AccountUpdate`): the task hands them to the
//! application embedding the hub ([`Step::Forward`](super::super::core::Step::Forward));
//! a hub with no application reading them says so.

use ws_protocol::{WsMessage, codes};

use super::super::core::Core;

impl Core {
    /// The reply (JSON) to an application frame of `kind` that no application reads.
    pub(crate) fn forward_refused(&self, kind: &str) -> String {
        WsMessage::error(
            codes::UNSUPPORTED,
            format!("this hub has no application reading {kind} frames; use Publish"),
        )
        .to_json()
    }
}
