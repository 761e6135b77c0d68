//! Rotation (`max_connection_age`): a new connection is opened beside the old one, resumes
//! every subscription from the old one's positions, and takes over once it has caught up.

use futures_util::SinkExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::warn;
use ws_protocol::WsMessage;

use super::Driver;
use super::arrival::Arrival;
use super::decode::{Inbound, decode};
use crate::heartbeat::Heartbeat;
use crate::link::{Link, Socket, open};
use crate::rotation::{Rotation, Step, Successor};
use crate::settings::Settings;

impl Driver {
    /// Moves a rotation on by one step; returns the new socket once it has caught up.
    pub(super) async fn rotate(&mut self, step: Step, rotation: &mut Rotation) -> Option<Socket> {
        let retry_later = |rotation: &mut Rotation, settings: &Settings| {
            *rotation = Rotation::Due(Instant::now() + settings.reconnect_interval);
        };
        match step {
            Step::Start => {
                let (settings, url) = (self.settings.clone(), self.url.clone());
                rotation.open(async move { open(&settings, &url).await });
                None
            }
            Step::Opened(opened) => {
                let link = match *opened {
                    Ok(link) => link,
                    Err(error) => {
                        warn!(url = %self.url, %error, "rotation: the new connection failed; retrying later");
                        retry_later(rotation, &self.settings);
                        return None;
                    }
                };
                let Link { mut ws, hub, .. } = link;
                if hub.is_none() || self.subscriptions.is_empty() {
                    // Nothing to catch up with (or no way to tell, on a plain server): the
                    // new connection takes over once its on-connect frames are sent.
                    if hub.is_none() && self.send_on_connect(&mut ws).await.is_err() {
                        retry_later(rotation, &self.settings);
                        return None;
                    }
                    return Some(ws);
                }
                let (frame, since) = self.subscriptions.resubscribe();
                if let Err(error) = ws.send(Message::text(frame)).await {
                    warn!(%error, "rotation: resubscribe failed; retrying later");
                    retry_later(rotation, &self.settings);
                    return None;
                }
                *rotation = Rotation::CatchingUp(Box::new(Successor {
                    ws,
                    targets: None,
                    reached: since.into_iter().map(|(c, p)| (c, p.seq)).collect(),
                    deadline: Instant::now() + self.settings.connect_timeout,
                }));
                None
            }
            Step::Frame(Some(Ok(Message::Text(text)))) => {
                let Rotation::CatchingUp(successor) = rotation else {
                    return None;
                };
                if let Inbound::Subscribed {
                    channels,
                    positions,
                } = decode(Message::Text(text.clone()), true, false)
                {
                    successor.targets =
                        Some(positions.iter().map(|(c, p)| (c.clone(), p.seq)).collect());
                    self.subscriptions.on_subscribed(
                        self.connection,
                        &channels,
                        positions,
                        &mut self.out,
                    );
                } else {
                    let at = successor.ws.last_read();
                    self.receive(Message::Text(text), at, &mut Heartbeat::disabled());
                    if let Some(Arrival::Publication { channel, seq, .. }) = self.out.back() {
                        let reached = successor.reached.entry(channel.clone()).or_default();
                        *reached = (*reached).max(*seq);
                    }
                    if std::mem::take(&mut self.owe_pong) {
                        let _ = successor
                            .ws
                            .send(Message::text(WsMessage::Pong.to_json()))
                            .await;
                    }
                }
                if !successor.caught_up() {
                    return None;
                }
                let Rotation::CatchingUp(successor) = std::mem::replace(rotation, Rotation::Off)
                else {
                    return None;
                };
                Some(successor.ws)
            }
            Step::Frame(Some(Ok(_))) => None,
            Step::Frame(end) => {
                warn!(?end, "rotation: the new connection ended; retrying later");
                retry_later(rotation, &self.settings);
                None
            }
            Step::TimedOut => {
                warn!("rotation: the new connection did not catch up in time; retrying later");
                retry_later(rotation, &self.settings);
                None
            }
        }
    }
}
