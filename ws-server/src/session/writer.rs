//! Writing to the client: replies at once (ahead of queued publications), queued frames in
//! batches of at most 256 KiB with one system call each, and every write guarded: it stops
//! when the outbox says the connection must end, and a write that makes no progress for
//! `WS_WRITE_TIMEOUT` ends the connection as stalled.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use ws_protocol::{Encoding, WsMessage};

use super::Session;
use super::core::after;
use super::ending::End;
use crate::frame::Frame;
use crate::metrics::HubMetrics;
use crate::outbox::{NoticeKind, Outbox, OutboxState};

/// A write buffer grown past this by a large batch is released afterwards, so that idle
/// connections hold no large buffers.
const MAX_KEPT_WRITE_BUFFER: usize = 64 * 1024;

/// At most this many bytes of queued frames are taken for one write (one more frame may
/// pass it), so that the buffer a batch is copied into stays small whatever is queued.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Writes `out[*sent..]`, counting in `sent` what the socket took, so that a write dropped
/// halfway can be finished later.
pub(super) async fn write_counted<W: AsyncWrite + Unpin>(
    socket: &mut W,
    out: &[u8],
    sent: &AtomicUsize,
) -> Result<(), WsError> {
    loop {
        let from = sent.load(Ordering::Relaxed);
        if from >= out.len() {
            return Ok(());
        }
        match socket.write(&out[from..]).await {
            Ok(0) => return Err(WsError::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => sent.store(from + n, Ordering::Relaxed),
            Err(e) => return Err(WsError::Io(e)),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Drives `fut` (a write) to completion unless the outbox says the connection must stop
    /// first: a write blocked on a client that does not read must not outlive the decision to
    /// cut it, nor delay shutdown. A write that makes no progress for `timeout` (`progress`,
    /// when given, counts the bytes it has written so far) ends the connection as stalled.
    async fn guarded<T>(
        outbox: &Outbox,
        signal_pending: &mut bool,
        timeout: Duration,
        progress: Option<&AtomicUsize>,
        fut: impl Future<Output = Result<T, WsError>>,
    ) -> Result<T, End> {
        tokio::pin!(fut);
        // Created only once the write has to wait: a write that completes at once (nearly
        // all of them) costs no timer.
        let mut stall: Option<(Pin<Box<tokio::time::Sleep>>, usize)> = None;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(|e| End::Gone(format!("write failed: {e}"))));
            }
            // Poll until Pending, so that the waker stays registered for the next signal.
            while outbox.poll_ready(cx).is_ready() {
                *signal_pending = true;
                match outbox.state() {
                    OutboxState::Open => {}
                    OutboxState::Overflowed => return Poll::Ready(Err(End::SlowConsumer)),
                    OutboxState::Closed => return Poll::Ready(Err(End::Shutdown)),
                    OutboxState::Restart => return Poll::Ready(Err(End::Restart)),
                }
            }
            let written = progress.map_or(0, |p| p.load(Ordering::Relaxed));
            match &mut stall {
                None => stall = Some((Box::pin(tokio::time::sleep(timeout)), written)),
                Some((timer, seen)) if *seen != written => {
                    timer.as_mut().reset(after(Instant::now(), timeout));
                    *seen = written;
                }
                Some(_) => {}
            }
            if let Some((timer, _)) = &mut stall
                && timer.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(End::Stalled));
            }
            Poll::Pending
        })
        .await
    }

    pub(super) async fn write_now(&mut self, message: Message) -> Result<(), End> {
        let Self {
            ws,
            core,
            signal_pending,
            ..
        } = self;
        let timeout = core.hub.config.write_timeout;
        Self::guarded(
            &core.outbox,
            signal_pending,
            timeout,
            None,
            ws.send(message),
        )
        .await
    }

    /// Writes one reply (JSON) ahead of queued publications. It is flushed with the other
    /// replies of a burst before the task waits for anything ([`Wake::Flush`]), or before the
    /// next batch of publications, so that a publisher's acknowledgements cost one system
    /// call per burst rather than one each.
    ///
    /// [`Wake::Flush`]: super::Wake::Flush
    pub(super) async fn send_text(&mut self, text: String) -> Result<(), End> {
        // A run of acknowledgements goes first: no answer overtakes another. (Boxed: only
        // publishers that ask for runs have one, and every idle connection's task would
        // otherwise carry room for this await.)
        if self.ack_run.is_some() {
            Box::pin(self.send_ack_run()).await?;
        }
        self.send_reply(text).await
    }

    /// Writes one reply, as [`send_text`](Self::send_text) does, without looking at the run
    /// of acknowledgements.
    pub(super) async fn send_reply(&mut self, text: String) -> Result<(), End> {
        let message = self.core.message(text);
        let metrics = &self.core.hub.metrics;
        HubMetrics::add(&metrics.frames_out, 1);
        HubMetrics::add(&metrics.bytes_out, message.len() as u64);
        let Self {
            ws,
            core,
            signal_pending,
            unflushed,
            ..
        } = self;
        *unflushed = true;
        let timeout = core.hub.config.write_timeout;
        let feed = ws.feed(message);
        Self::guarded(&core.outbox, signal_pending, timeout, None, feed).await
    }

    /// Flushes the replies written since the last flush, the run of acknowledgements last.
    pub(super) async fn flush_replies(&mut self) -> Result<(), End> {
        if self.ack_run.is_some() {
            Box::pin(self.send_ack_run()).await?;
        }
        let Self {
            ws,
            core,
            signal_pending,
            unflushed,
            ..
        } = self;
        *unflushed = false;
        let timeout = core.hub.config.write_timeout;
        Self::guarded(&core.outbox, signal_pending, timeout, None, ws.flush()).await
    }

    /// Writes everything queued in the outbox, then flushes once (with the replies and the
    /// run of acknowledgements written before it).
    pub(super) async fn write_queued(&mut self) -> Result<(), End> {
        if self.ack_run.is_some() {
            // The flush below must not leave it behind.
            Box::pin(self.send_ack_run()).await?;
        }
        let (state, more) =
            self.core
                .outbox
                .take(&mut self.batch, &mut self.notices, WRITE_BATCH_BYTES);
        if state != OutboxState::Open {
            return Err(self.core.outbox_end().unwrap_or(End::Shutdown));
        }
        if more {
            // What did not fit in this batch goes in the next one.
            self.signal_pending = true;
        }
        let Self {
            ws,
            core,
            batch,
            notices,
            signal_pending,
            out,
            out_sent,
            unflushed,
            ..
        } = self;
        // The flush below sends the replies written since the last one too.
        *unflushed = false;
        out.clear();
        out_sent.store(0, Ordering::Relaxed);
        let frames = batch.len() + notices.len();
        for notice in notices.drain(..) {
            let channel = notice.channel.to_string();
            let notice = match notice.kind {
                NoticeKind::Lagged => WsMessage::Lagged {
                    channel,
                    missed: notice.count,
                },
                NoticeKind::Conflated => WsMessage::Conflated {
                    channel,
                    skipped: notice.count,
                },
            };
            let frame = match core.encoding {
                Encoding::MessagePack => Frame::binary(&notice.to_msgpack()),
                _ => Frame::text(&notice.to_json()),
            };
            out.extend_from_slice(frame.as_bytes());
        }
        for item in batch.drain(..) {
            out.extend_from_slice(item.frame_in(core.encoding, core.deflate_window).as_bytes());
        }
        let metrics = &core.hub.metrics;
        HubMetrics::add(&metrics.frames_out, frames as u64);
        HubMetrics::add(&metrics.bytes_out, out.len() as u64);
        let progress = &*out_sent;
        let write = async {
            // Frames written by tungstenite (a pong it queued while reading) go first, so that
            // frames stay whole and in order; then the pre-encoded frames go out in one write.
            ws.flush().await?;
            write_counted(ws.get_mut(), out, progress).await
        };
        let timeout = core.hub.config.write_timeout;
        let result =
            Self::guarded(&core.outbox, signal_pending, timeout, Some(progress), write).await;
        if result.is_ok() && out.capacity() > MAX_KEPT_WRITE_BUFFER {
            *out = Vec::new();
        }
        result
    }
}
