//! Writing to the socket: a reply or command frame at once, and the outbound buffer in one
//! flush, with what the socket did not take put back in front.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tracing::warn;

use super::{Driver, Ended};
use crate::event::Event;
use crate::link::Socket;
use crate::metrics::Counters;

impl Driver {
    pub(super) async fn write_now(&self, ws: &mut Socket, text: String) -> Result<(), Ended> {
        let bytes = text.len() as u64;
        ws.send(Message::text(text))
            .await
            .map_err(|e| Ended::Retry(format!("write failed: {e}")))?;
        Counters::add(&self.counters.messages_sent, 1);
        Counters::add(&self.counters.bytes_sent, bytes);
        Ok(())
    }

    /// Writes everything buffered with one flush. Frames not handed to the socket when it
    /// fails go back to the front of the buffer.
    pub(super) async fn write_buffered(&mut self, ws: &mut Socket) -> Result<(), Ended> {
        let mut expired_acks = Vec::new();
        let expired = self.buffer.take(&mut self.batch, &mut expired_acks);
        for id in expired_acks {
            self.acks.expired(id);
        }
        if expired > 0 {
            warn!(
                expired,
                "dropped buffered frames older than the maximum buffer age"
            );
            Counters::add(&self.counters.expired, expired as u64);
            self.lifecycle(Event::Expired { count: expired });
        }
        let (mut count, mut bytes) = (0u64, 0u64);
        let batch = &mut self.batch;
        let (acks, connection) = (&self.acks, self.connection);
        let write = async {
            while let Some(pending) = batch.pop_front() {
                let len = pending.frame.len() as u64;
                // A reference count, not a copy: the frame goes back to the buffer if the
                // write fails.
                if let Err(e) = ws.feed(pending.frame.clone()).await {
                    batch.push_front(pending);
                    return Err(e);
                }
                if let (Some(id), Message::Text(frame)) = (pending.ack, &pending.frame) {
                    acks.published_on(id, connection, frame);
                }
                count += 1;
                bytes += len;
            }
            ws.flush().await
        };
        let stall = self.settings.pong_timeout;
        let result = tokio::select! {
            () = self.token.cancelled() => Ok(()),
            result = tokio::time::timeout(stall, write) => match result {
                Ok(written) => written.map_err(|e| e.to_string()),
                Err(_) => Err(format!("the server did not take our frames for {stall:?}")),
            },
        };
        Counters::add(&self.counters.messages_sent, count);
        Counters::add(&self.counters.bytes_sent, bytes);
        self.buffer.requeue_front(&mut self.batch);
        result.map_err(|e| Ended::Retry(format!("write failed: {e}")))
    }
}
