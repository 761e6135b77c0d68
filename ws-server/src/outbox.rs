//! [`Outbox`]: one connection's bounded queue of outgoing publications and broadcasts.
//!
//! Publishers push without waiting (a short mutex, no await); the connection's task takes
//! everything queued at once and writes it with a single flush. When the queue is full the
//! connection's [`SlowConsumerPolicy`] decides: `Disconnect` marks the outbox overflowed and
//! cancels the connection, `DropOldest` drops the oldest entry and counts it per channel so
//! the client can be told with `Lagged`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use ws_protocol::SlowConsumerPolicy;

/// The channel name under which dropped broadcasts are reported in `Lagged`.
pub(crate) const BROADCAST_LAG_CHANNEL: &str = "*";

/// One encoded frame waiting to be written.
#[derive(Clone)]
pub(crate) struct Outgoing {
    /// The channel of a publication; `None` for broadcasts and direct sends.
    pub(crate) channel: Option<Arc<str>>,
    /// The encoded frame, shared with every other recipient.
    pub(crate) text: Utf8Bytes,
}

/// What [`Outbox::take`] found besides the queued frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboxState {
    /// Open; keep writing.
    Open,
    /// The queue overflowed under the `Disconnect` policy: the connection must be cut.
    Overflowed,
}

struct Inner {
    queue: VecDeque<Outgoing>,
    /// Publications dropped under `DropOldest`, per channel, not yet reported.
    lagged: Vec<(Arc<str>, u64)>,
    overflowed: bool,
}

/// A connection's bounded outbound queue. See the module documentation.
pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    ready: Notify,
    capacity: usize,
    policy: SlowConsumerPolicy,
    /// Cancelled when the queue overflows under `Disconnect`, so the connection stops even
    /// while it is blocked writing to a socket that does not drain.
    cut: CancellationToken,
}

impl Outbox {
    pub(crate) fn new(capacity: usize, policy: SlowConsumerPolicy, cut: CancellationToken) -> Self {
        Self {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                lagged: Vec::new(),
                overflowed: false,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
            policy,
            cut,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters more than losing the connection, so a poisoned lock is used as is.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item` without waiting. Returns `false` if it was refused because the connection
    /// is being cut as a slow consumer.
    pub(crate) fn push(&self, item: Outgoing) -> bool {
        let mut inner = self.lock();
        if inner.overflowed {
            return false;
        }
        if inner.queue.len() >= self.capacity {
            match self.policy {
                SlowConsumerPolicy::DropOldest => {
                    if let Some(dropped) = inner.queue.pop_front() {
                        let channel = dropped
                            .channel
                            .unwrap_or_else(|| Arc::from(BROADCAST_LAG_CHANNEL));
                        match inner.lagged.iter_mut().find(|(c, _)| *c == channel) {
                            Some((_, missed)) => *missed += 1,
                            None => inner.lagged.push((channel, 1)),
                        }
                    }
                }
                _ => {
                    inner.overflowed = true;
                    drop(inner);
                    self.cut.cancel();
                    return false;
                }
            }
        }
        let was_empty = inner.queue.is_empty();
        inner.queue.push_back(item);
        drop(inner);
        if was_empty {
            // The writer drains the whole queue whenever it wakes, so only the transition from
            // empty needs a wake-up; `notify_one` keeps a permit if the writer is busy.
            self.ready.notify_one();
        }
        true
    }

    /// Waits until something is queued.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Moves everything queued into `batch` and every lag count into `lagged`.
    pub(crate) fn take(
        &self,
        batch: &mut VecDeque<Outgoing>,
        lagged: &mut Vec<(Arc<str>, u64)>,
    ) -> OutboxState {
        let mut inner = self.lock();
        if inner.overflowed {
            return OutboxState::Overflowed;
        }
        std::mem::swap(&mut inner.queue, batch);
        lagged.append(&mut inner.lagged);
        OutboxState::Open
    }

    /// Whether the queue overflowed under the `Disconnect` policy.
    pub(crate) fn overflowed(&self) -> bool {
        self.lock().overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(channel: &str, text: &str) -> Outgoing {
        Outgoing {
            channel: Some(Arc::from(channel)),
            text: Utf8Bytes::from(text),
        }
    }

    type Drained = (Vec<String>, Vec<(Arc<str>, u64)>, OutboxState);

    fn drain(outbox: &Outbox) -> Drained {
        let (mut batch, mut lagged) = (VecDeque::new(), Vec::new());
        let state = outbox.take(&mut batch, &mut lagged);
        let texts = batch.iter().map(|o| o.text.as_str().to_owned()).collect();
        (texts, lagged, state)
    }

    #[test]
    fn disconnect_policy_cuts_when_full_and_refuses_more() {
        let cut = CancellationToken::new();
        let outbox = Outbox::new(2, SlowConsumerPolicy::Disconnect, cut.clone());
        assert!(outbox.push(item("a", "1")));
        assert!(outbox.push(item("a", "2")));
        assert!(!cut.is_cancelled());
        assert!(!outbox.push(item("a", "3")));
        assert!(cut.is_cancelled());
        assert!(outbox.overflowed());
        assert!(!outbox.push(item("a", "4")));
        assert_eq!(drain(&outbox).2, OutboxState::Overflowed);
    }

    #[test]
    fn drop_oldest_policy_keeps_the_newest_and_counts_per_channel() {
        let cut = CancellationToken::new();
        let outbox = Outbox::new(2, SlowConsumerPolicy::DropOldest, cut.clone());
        for (channel, text) in [("a", "1"), ("b", "2"), ("a", "3"), ("a", "4")] {
            assert!(outbox.push(item(channel, text)));
        }
        assert!(outbox.push(Outgoing {
            channel: None,
            text: Utf8Bytes::from("5")
        }));
        assert!(!cut.is_cancelled());
        let (texts, lagged, state) = drain(&outbox);
        assert_eq!(state, OutboxState::Open);
        assert_eq!(texts, ["4", "5"]);
        assert_eq!(lagged, vec![(Arc::from("a"), 2), (Arc::from("b"), 1)]);
        let (texts, lagged, _) = drain(&outbox);
        assert!(texts.is_empty() && lagged.is_empty());
    }

    #[tokio::test]
    async fn a_push_into_an_empty_queue_wakes_the_writer() {
        let outbox = Outbox::new(4, SlowConsumerPolicy::Disconnect, CancellationToken::new());
        assert!(outbox.push(item("a", "1")));
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.ready())
            .await
            .expect("woken");
        assert_eq!(drain(&outbox).0, ["1"]);
    }
}
