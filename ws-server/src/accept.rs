//! The accept loop: takes each TCP connection, bounds the sockets still upgrading
//! (`WS_MAX_PENDING_UPGRADES`), runs the TLS handshake when configured, and spawns the
//! connection's task.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::hub::Hub;
use crate::metrics::HubMetrics;
use crate::session;

/// How long the accept loop pauses after an accept error (such as running out of file
/// descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts connections on `listener` until the hub stops accepting.
pub(crate) async fn accept_loop(hub: Arc<Hub>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        let accepted = tokio::select! {
            () = hub.accepting.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%error, "accept failed; pausing");
                tokio::select! {
                    () = hub.token.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let Ok(upgrading) = hub.upgrading.clone().try_acquire_owned() else {
            // Too many sockets are upgrading (or pretending to): this one is told so in one
            // non-blocking write and closed, costing no task and no wait.
            HubMetrics::add(&hub.metrics.upgrades_refused, 1);
            debug!(%peer, limit = hub.config.max_pending_upgrades, "too many pending upgrades (WS_MAX_PENDING_UPGRADES)");
            let _ = stream.try_write(crate::upgrade_request::BUSY);
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let task_hub = hub.clone();
        // Two task types: a plain connection's task does not carry the size of a TLS
        // session (rustls' state is kilobytes) in every idle connection.
        match tls.clone() {
            None => hub.spawn(session::run(task_hub, stream, peer, upgrading)),
            Some(tls) => hub.spawn(async move {
                let handshake =
                    tokio::time::timeout(task_hub.config.handshake_timeout, tls.accept(stream));
                match Box::pin(handshake).await {
                    Ok(Ok(stream)) => session::run(task_hub, stream, peer, upgrading).await,
                    Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            }),
        }
    }
    debug!("accept loop ended");
}
