//! [`OutboundBuffer`]: the bounded queue of frames waiting to be written.
//!
//! Every `send` and `publish` goes through it, connected or not. While connected, the
//! connection task drains it in batches (one flush per batch); while disconnected it keeps up
//! to its capacity, and after a reconnect (and resubscribe) its frames go out first, in order.
//! When it is full a send is refused at once and the frame is given back to the caller.
//! Frames older than the maximum age are never written: they are counted and reported.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// A frame the client sends: queued in the outbound buffer, or given back in
/// [`Error::BufferFull`](crate::Error::BufferFull) when the buffer had no room for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundFrame {
    /// A text frame (JSON for the hub).
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

impl OutboundFrame {
    /// The frame's payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Binary(bytes) => bytes.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<OutboundFrame> for Message {
    fn from(frame: OutboundFrame) -> Self {
        match frame {
            OutboundFrame::Text(text) => Message::text(text),
            OutboundFrame::Binary(bytes) => Message::binary(bytes),
        }
    }
}

/// One frame waiting to be written: the message itself, whose text or bytes are shared (not
/// copied) with the write and, for an acknowledged publication, with what awaits its
/// acknowledgement.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) frame: Message,
    pub(crate) queued_at: Instant,
    /// The `id` of an acknowledged publication (see `acks.rs`).
    pub(crate) ack: Option<u64>,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct OutboundBuffer {
    queue: Mutex<VecDeque<Pending>>,
    capacity: usize,
    max_age: Option<Duration>,
    ready: Notify,
}

impl OutboundBuffer {
    pub(crate) fn new(capacity: usize, max_age: Option<Duration>) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            max_age,
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Pending>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame`, or gives it back if the buffer is full.
    pub(crate) fn push_frame(&self, frame: OutboundFrame) -> Result<(), OutboundFrame> {
        self.push(frame, None, 0, Instant::now())
    }

    /// Queues `frame`, the acknowledged publication `ack` if given, or gives it back if the
    /// buffer is full counting `waiting` more (publications sent and not yet acknowledged).
    pub(crate) fn push(
        &self,
        frame: OutboundFrame,
        ack: Option<u64>,
        waiting: usize,
        now: Instant,
    ) -> Result<(), OutboundFrame> {
        let mut queue = self.lock();
        if queue.len() + waiting >= self.capacity {
            return Err(frame);
        }
        let was_empty = queue.is_empty();
        queue.push_back(Pending {
            frame: frame.into(),
            queued_at: now,
            ack,
        });
        drop(queue);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Waits until something is queued.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Moves every frame still young enough into `batch`, in order; returns how many were
    /// dropped for their age, and adds to `expired` the acknowledged publications among them.
    pub(crate) fn take(&self, batch: &mut VecDeque<Pending>, expired: &mut Vec<u64>) -> usize {
        let mut queue = self.lock();
        std::mem::swap(&mut *queue, batch);
        drop(queue);
        let Some(max_age) = self.max_age else {
            return 0;
        };
        let now = Instant::now();
        let before = batch.len();
        batch.retain(|p| {
            let young = now.duration_since(p.queued_at) <= max_age;
            if !young && let Some(id) = p.ack {
                expired.push(id);
            }
            young
        });
        before - batch.len()
    }

    /// Queues acknowledged publications to send again (their connection was lost) at the
    /// front, oldest first, whatever the capacity: they were accepted already.
    pub(crate) fn requeue_acked(&self, frames: Vec<(u64, Utf8Bytes)>) {
        if frames.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut queue = self.lock();
        for (id, frame) in frames.into_iter().rev() {
            queue.push_front(Pending {
                frame: Message::Text(frame),
                queued_at: now,
                ack: Some(id),
            });
        }
        drop(queue);
        self.ready.notify_one();
    }

    /// Puts frames that could not be written back at the front, ahead of newer ones. They may
    /// exceed the capacity for a while; new sends are refused until it drains.
    pub(crate) fn requeue_front(&self, batch: &mut VecDeque<Pending>) {
        if batch.is_empty() {
            return;
        }
        let mut queue = self.lock();
        while let Some(pending) = batch.pop_back() {
            queue.push_front(pending);
        }
        drop(queue);
        self.ready.notify_one();
    }

    /// Frames waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no frame waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> OutboundFrame {
        OutboundFrame::Text(s.to_owned())
    }

    fn texts(batch: &VecDeque<Pending>) -> Vec<&str> {
        batch
            .iter()
            .map(|p| p.frame.to_text().unwrap_or("<binary>"))
            .collect()
    }

    #[test]
    fn a_full_buffer_gives_the_frame_back() {
        let buffer = OutboundBuffer::new(2, None);
        assert_eq!(buffer.push_frame(text("a")), Ok(()));
        assert_eq!(buffer.push_frame(text("b")), Ok(()));
        assert_eq!(buffer.push_frame(text("c")), Err(text("c")));
        let mut batch = VecDeque::new();
        assert_eq!(buffer.take(&mut batch, &mut Vec::new()), 0);
        assert_eq!(texts(&batch), ["a", "b"]);
        assert_eq!(buffer.push_frame(text("c")), Ok(()));
    }

    #[test]
    fn requeued_frames_go_out_before_newer_ones() {
        let buffer = OutboundBuffer::new(4, None);
        buffer.push_frame(text("1")).unwrap();
        buffer.push_frame(text("2")).unwrap();
        let mut batch = VecDeque::new();
        buffer.take(&mut batch, &mut Vec::new());
        buffer.push_frame(text("3")).unwrap();
        buffer.requeue_front(&mut batch);
        let mut again = VecDeque::new();
        buffer.take(&mut again, &mut Vec::new());
        assert_eq!(texts(&again), ["1", "2", "3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_past_the_maximum_age_are_dropped_and_counted() {
        let buffer = OutboundBuffer::new(8, Some(Duration::from_secs(5)));
        buffer.push_frame(text("old")).unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        buffer.push_frame(text("young")).unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut batch = VecDeque::new();
        assert_eq!(buffer.take(&mut batch, &mut Vec::new()), 1);
        assert_eq!(texts(&batch), ["young"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_push_wakes_the_writer() {
        let buffer = OutboundBuffer::new(8, None);
        buffer.push_frame(text("a")).unwrap();
        tokio::time::timeout(Duration::from_secs(1), buffer.ready())
            .await
            .unwrap();
    }
}
