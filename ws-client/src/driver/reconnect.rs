//! The reconnect loop: serve a connection until it ends, then wait (backoff with jitter, or
//! the server's hint) and open the next one, serving commands as a disconnected client would
//! meanwhile.

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Command, Driver, Ended, not_a_hub};
use crate::error::Error;
use crate::event::Event;
use crate::link::{Link, open};
use crate::metrics::Counters;
use crate::state::ConnectionState;

impl Driver {
    /// Runs the connection from its first attempt (`first`, made by the builder) to its end.
    pub(crate) async fn run(mut self, first: Result<Link, String>) {
        let mut backoff = self.new_backoff();
        let mut attempt = 0u32;
        let mut reconnected = false;
        let (mut link, mut last_error) = match first {
            Ok(link) => (Some(link), String::new()),
            Err(error) if self.settings.auto_reconnect => (None, error),
            Err(error) => return self.fail(format!("connect failed: {error}")),
        };
        loop {
            let mut hint = None;
            let mut quick = false;
            if let Some(opened) = link.take() {
                let connected_at = Instant::now();
                let ended = self.serve(opened, reconnected).await;
                // Publications written to the lost socket and not acknowledged go out again
                // (their keys keep them from being published twice); its requests fail.
                self.buffer
                    .requeue_acked(self.acks.connection_lost(self.connection));
                if std::mem::take(&mut self.up) {
                    self.counters.disconnected();
                }
                let reason = match ended {
                    Ended::Closed => {
                        return self.finish(ConnectionState::Disconnected, Error::Closed);
                    }
                    Ended::Fatal(reason) => return self.fail(reason),
                    Ended::Retry(reason) => reason,
                };
                Counters::add(&self.counters.errors, 1);
                if !self.settings.auto_reconnect {
                    return self.fail(format!("connection lost: {reason}"));
                }
                warn!(url = %self.url, connection = self.connection, %reason, "connection lost; reconnecting");
                self.lifecycle(Event::Disconnected {
                    connection: self.connection,
                    reason: reason.clone(),
                });
                if connected_at.elapsed() >= self.settings.healthy_after {
                    // An established connection dropped: retry soon, then back off.
                    backoff = self.new_backoff();
                    attempt = 0;
                    quick = true;
                }
                last_error = reason;
                hint = self.retry_hint.take();
            }
            // A hinted wait (the server's 1012 close) replaces the first backoff delay,
            // jittered over [hint, 2 × hint] so that clients come back spread out.
            let next = match hint {
                Some(hint) => Some(hint + hint.mul_f64(fastrand::f64())),
                None if quick => {
                    let window = self.settings.first_retry_window;
                    Some(window / 4 + (window - window / 4).mul_f64(fastrand::f64()))
                }
                None => backoff.next(),
            };
            let Some(delay) = next else {
                return self.fail(format!(
                    "gave up after {attempt} reconnect attempts; last error: {last_error}"
                ));
            };
            attempt += 1;
            self.set_state(ConnectionState::Reconnecting { attempt });
            debug!(attempt, ?delay, "waiting before reconnecting");
            let sleep = tokio::time::sleep(delay);
            if self.idle_until(sleep).await.is_none() {
                return self.finish(ConnectionState::Disconnected, Error::Closed);
            }
            let settings = self.settings.clone();
            let url = self.url.clone();
            let opening = open(&settings, &url);
            match self.idle_until(opening).await {
                None => return self.finish(ConnectionState::Disconnected, Error::Closed),
                Some(Ok(opened)) => {
                    Counters::add(&self.counters.reconnects, 1);
                    reconnected = true;
                    link = Some(opened);
                }
                Some(Err(error)) => {
                    debug!(attempt, %error, "reconnect attempt failed");
                    Counters::add(&self.counters.errors, 1);
                    last_error = error;
                }
            }
        }
    }

    /// Awaits `fut` while serving commands as a disconnected client would; `None` if the
    /// client was closed meanwhile.
    async fn idle_until<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                () = self.token.cancelled() => return None,
                command = self.commands.recv() => match command {
                    None => return None,
                    Some(Command::Close { done }) => {
                        let _ = done.send(());
                        return None;
                    }
                    Some(Command::Subscribe { channels, rewind, since, done }) => {
                        if !self.hub {
                            let _ = done.send(Err(not_a_hub()));
                            continue;
                        }
                        // Sent with the resubscribe after the reconnect.
                        self.subscriptions.subscribe(channels, rewind, since, done, false);
                    }
                    // Sent once connected, if its caller still waits.
                    Some(Command::Request { id, frame }) => self.requests.push((id, frame)),
                    Some(Command::Unsubscribe { channels, done }) => {
                        self.subscriptions.unsubscribe(&channels);
                        let _ = done.send(Ok(()));
                    }
                    // Another connection may fill it; otherwise the gap times out.
                    Some(Command::Fill { channel, .. }) => {
                        debug!(%channel, "gap fill asked of a connection that is down");
                    }
                },
                output = &mut fut => return Some(output),
            }
        }
    }
}
