//! The hand-written server: one task per connection, default tokio-tungstenite configuration,
//! a `tokio::sync::broadcast` channel, and a `send` (write + flush) per message. A receiver
//! that lags loses messages (`RecvError::Lagged`), as such servers do.

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

/// The broadcast channel's capacity.
const CAPACITY: usize = 1024;

/// Serves until the process ends.
pub(crate) async fn serve(listener: TcpListener) -> Result<()> {
    let (tx, _) = broadcast::channel::<(u64, Message)>(CAPACITY);
    let mut next_id = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        next_id += 1;
        let id = next_id;
        let tx = tx.clone();
        let mut rx = tx.subscribe();
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            loop {
                tokio::select! {
                    incoming = ws.next() => match incoming {
                        Some(Ok(message @ Message::Text(_))) => {
                            let _ = tx.send((id, message));
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    outgoing = rx.recv() => match outgoing {
                        Ok((from, message)) => {
                            if from != id && ws.send(message).await.is_err() {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        });
    }
}
