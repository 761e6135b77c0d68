//! `Authenticate`: a token sent in a frame. A good one replaces the connection's grant (and
//! its deadline); subscriptions the new grant does not allow end at once. A bad one ends the
//! connection.

use std::sync::Arc;

use tokio::time::Instant;
use tracing::debug;
use ws_protocol::{WsMessage, codes};

use super::super::core::{Core, Step};
use super::super::ending::End;

impl Core {
    /// Checks `token`, received at `now`.
    pub(crate) fn authenticate(&mut self, token: &str, now: Instant) -> Result<Step, End> {
        let Some(authenticator) = self.hub.authenticator.clone() else {
            // An open hub: there is nothing to check, the connection may already do anything.
            let authenticated = WsMessage::Authenticated {
                user_id: String::new(),
            };
            return Ok(Step::Reply(authenticated.to_json()));
        };
        let grant = authenticator
            .authenticate(token)
            .map_err(|e| End::Unauthorized(e.to_string()))?;
        let user_id = grant.user_id.clone().unwrap_or_default();
        debug!(connection = %self.id, %user_id, "authenticated");
        self.set_grant(Some(Arc::new(grant)), now);
        let authenticated = WsMessage::Authenticated { user_id }.to_json();
        // A new token replaces the old one's permissions: subscriptions it no longer allows
        // end now, and the client is told which.
        let withdrawn = self.withdraw_forbidden();
        if withdrawn.is_empty() {
            return Ok(Step::Reply(authenticated));
        }
        let error = WsMessage::subscribe_refused(
            codes::FORBIDDEN,
            "the new token does not allow these channels: unsubscribed",
            &withdrawn,
        );
        Ok(Step::Replies(vec![authenticated, error.to_json()]))
    }
}
