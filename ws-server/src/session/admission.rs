//! Admission: what an upgrade request must bring (an allowed `Origin`, a place among the
//! open connections, an acceptable token), decided in tungstenite's upgrade callback.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tracing::warn;

use crate::auth::Grant;
use crate::hub::Hub;
use crate::metrics::HubMetrics;

/// The upgrade callback: refuses foreign origins (403) and bad tokens (401), and records the
/// grant of a good one in `grant` (an open hub grants everything). Tokens come from
/// `?token=` or `Authorization: Bearer`.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
pub(super) fn admit(
    hub: &Hub,
    request: &Request,
    response: Response,
    grant: &mut Option<Arc<Grant>>,
    slot: &mut Option<OwnedSemaphorePermit>,
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, reason: &str| {
        let mut error = ErrorResponse::new(Some(reason.to_owned()));
        *error.status_mut() = status;
        error
    };
    let allowed = &hub.config.allowed_origins;
    if let Some(origin) = request.headers().get("origin") {
        let origin = origin.to_str().unwrap_or_default();
        if !allowed.is_empty() && !allowed.iter().any(|a| a == origin) {
            warn!(%origin, "upgrade from a foreign origin refused");
            return Err(refuse(StatusCode::FORBIDDEN, "origin not allowed"));
        }
    }
    // The connection limit counts upgraded connections only: sockets that never finish an
    // upgrade are bounded by WS_MAX_PENDING_UPGRADES instead.
    match hub.connection_slots.clone().try_acquire_owned() {
        Ok(permit) => *slot = Some(permit),
        Err(_) => {
            warn!(
                limit = hub.config.max_connections,
                "connection limit reached (WS_MAX_CONNECTIONS)"
            );
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection limit reached; retry later",
            ));
        }
    }
    let Some(authenticator) = &hub.authenticator else {
        *grant = Some(hub.open_grant.clone());
        return Ok(response);
    };
    let from_query = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(percent_decode)
    });
    let from_header = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let Some(token) = from_header.or(from_query) else {
        return Ok(response);
    };
    match authenticator.authenticate(&token) {
        Ok(granted) => {
            *grant = Some(Arc::new(granted));
            Ok(response)
        }
        Err(e) => {
            warn!(reason = %e, "upgrade with a refused token");
            HubMetrics::add(&hub.metrics.auth_failures, 1);
            Err(refuse(
                StatusCode::UNAUTHORIZED,
                &format!("unauthorized: {e}"),
            ))
        }
    }
}

/// Decodes `%XX` escapes of a query parameter (JWTs rarely need them, but clients may escape).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(byte) = u8::from_str_radix(hex, 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding_never_panics() {
        assert_eq!(percent_decode("a%2Eb"), "a.b");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%é1"), "%é1");
    }
}
