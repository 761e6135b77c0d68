//! [`Outbox`]: one connection's bounded queue of outgoing publications and broadcasts, and
//! the one signal that wakes the connection's task.
//!
//! Publishers push without waiting (a short mutex, no await); the connection's task takes
//! everything queued at once and writes it with a single flush. When the queue is full the
//! connection's [`SlowConsumerPolicy`] decides: `Disconnect` marks the outbox overflowed (the
//! connection is then cut), `DropOldest` drops the oldest entry and counts it per channel so
//! the client can be told with `Lagged`. Shutdown closes every outbox, which wakes its task
//! through the same signal, so the task's hot loop watches one waker and no lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use ws_protocol::SlowConsumerPolicy;

use crate::frame::Frame;

/// The channel name under which dropped broadcasts are reported in `Lagged`.
pub(crate) const BROADCAST_LAG_CHANNEL: &str = "*";

/// One encoded frame waiting to be written.
#[derive(Clone)]
pub(crate) struct Outgoing {
    /// The channel of a publication; `None` for broadcasts and direct sends.
    pub(crate) channel: Option<Arc<str>>,
    /// The encoded frame, shared with every other recipient.
    pub(crate) frame: Frame,
}

/// What [`Outbox::take`] found besides the queued frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboxState {
    /// Open; keep writing.
    Open,
    /// The queue overflowed under the `Disconnect` policy: the connection must be cut.
    Overflowed,
    /// The server is shutting down: the connection must close.
    Closed,
    /// The server drains before a restart: close with 1012 and a reconnect hint.
    Restart,
}

struct Inner {
    queue: VecDeque<Outgoing>,
    /// Publications dropped under `DropOldest`, per channel, not yet reported.
    lagged: Vec<(Arc<str>, u64)>,
    state: OutboxState,
}

/// A connection's bounded outbound queue. See the module documentation.
pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    signaled: AtomicBool,
    waker: AtomicWaker,
    capacity: usize,
    policy: SlowConsumerPolicy,
}

impl Outbox {
    pub(crate) fn new(capacity: usize, policy: SlowConsumerPolicy) -> Self {
        Self {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                lagged: Vec::new(),
                state: OutboxState::Open,
            }),
            signaled: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            capacity: capacity.max(1),
            policy,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters more than losing the connection, so a poisoned lock is used as is.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn signal(&self) {
        self.signaled.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Queues `item` without waiting. Returns `false` if it was refused because the connection
    /// is being cut as a slow consumer or closed.
    pub(crate) fn push(&self, item: Outgoing) -> bool {
        let mut inner = self.lock();
        if inner.state != OutboxState::Open {
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
                    inner.state = OutboxState::Overflowed;
                    inner.queue.clear();
                    drop(inner);
                    self.signal();
                    return false;
                }
            }
        }
        let was_empty = inner.queue.is_empty();
        inner.queue.push_back(item);
        drop(inner);
        if was_empty {
            // The writer drains the whole queue whenever it wakes, so only the transition from
            // empty needs a wake-up.
            self.signal();
        }
        true
    }

    /// Closes the outbox for shutdown and wakes its connection.
    pub(crate) fn close(&self) {
        self.close_as(OutboxState::Closed);
    }

    /// Closes the outbox with `state` (`Closed` or `Restart`) and wakes its connection.
    pub(crate) fn close_as(&self, state: OutboxState) {
        let mut inner = self.lock();
        if inner.state == OutboxState::Open {
            inner.state = state;
        }
        drop(inner);
        self.signal();
    }

    /// Ready once something was queued (or the state changed) since the last time it was.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signaled.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.signaled.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Moves everything queued into `batch` and every lag count into `lagged`.
    pub(crate) fn take(
        &self,
        batch: &mut VecDeque<Outgoing>,
        lagged: &mut Vec<(Arc<str>, u64)>,
    ) -> OutboxState {
        let mut inner = self.lock();
        if inner.state != OutboxState::Open {
            return inner.state;
        }
        std::mem::swap(&mut inner.queue, batch);
        lagged.append(&mut inner.lagged);
        OutboxState::Open
    }

    /// The outbox's state.
    pub(crate) fn state(&self) -> OutboxState {
        self.lock().state
    }

    /// Drops queued publications of `channel` (after an unsubscribe, none may be delivered).
    pub(crate) fn purge(&self, channel: &str) {
        let mut inner = self.lock();
        inner
            .queue
            .retain(|item| item.channel.as_deref() != Some(channel));
        inner.lagged.retain(|(c, _)| &**c != channel);
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn item(channel: &str, text: &str) -> Outgoing {
        Outgoing {
            channel: Some(Arc::from(channel)),
            frame: Frame::text(text),
        }
    }

    type Drained = (Vec<String>, Vec<(Arc<str>, u64)>, OutboxState);

    fn drain(outbox: &Outbox) -> Drained {
        let (mut batch, mut lagged) = (VecDeque::new(), Vec::new());
        let state = outbox.take(&mut batch, &mut lagged);
        let texts = batch.iter().map(|o| o.frame.payload().to_owned()).collect();
        (texts, lagged, state)
    }

    fn ready(outbox: &Outbox) -> bool {
        outbox
            .poll_ready(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn disconnect_policy_cuts_when_full_and_refuses_more() {
        let outbox = Outbox::new(2, SlowConsumerPolicy::Disconnect);
        assert!(outbox.push(item("a", "1")));
        assert!(outbox.push(item("a", "2")));
        assert!(ready(&outbox));
        assert!(!outbox.push(item("a", "3")));
        assert!(ready(&outbox), "the overflow wakes the connection");
        assert_eq!(outbox.state(), OutboxState::Overflowed);
        assert!(!outbox.push(item("a", "4")));
        assert_eq!(drain(&outbox).2, OutboxState::Overflowed);
    }

    #[test]
    fn drop_oldest_policy_keeps_the_newest_and_counts_per_channel() {
        let outbox = Outbox::new(2, SlowConsumerPolicy::DropOldest);
        for (channel, text) in [("a", "1"), ("b", "2"), ("a", "3"), ("a", "4")] {
            assert!(outbox.push(item(channel, text)));
        }
        assert!(outbox.push(Outgoing {
            channel: None,
            frame: Frame::text("5")
        }));
        let (texts, lagged, state) = drain(&outbox);
        assert_eq!(state, OutboxState::Open);
        assert_eq!(texts, ["4", "5"]);
        assert_eq!(lagged, vec![(Arc::from("a"), 2), (Arc::from("b"), 1)]);
        let (texts, lagged, _) = drain(&outbox);
        assert!(texts.is_empty() && lagged.is_empty());
    }

    #[test]
    fn only_the_first_push_into_an_empty_queue_signals() {
        let outbox = Outbox::new(4, SlowConsumerPolicy::Disconnect);
        assert!(!ready(&outbox));
        assert!(outbox.push(item("a", "1")));
        assert!(outbox.push(item("a", "2")));
        assert!(ready(&outbox));
        assert!(!ready(&outbox));
        assert_eq!(drain(&outbox).0, ["1", "2"]);
        assert!(outbox.push(item("a", "3")));
        assert!(ready(&outbox));
    }

    #[test]
    fn close_and_purge() {
        let outbox = Outbox::new(4, SlowConsumerPolicy::Disconnect);
        assert!(outbox.push(item("a", "1")));
        assert!(outbox.push(item("b", "2")));
        outbox.purge("a");
        assert_eq!(drain(&outbox).0, ["2"]);
        outbox.close();
        assert!(ready(&outbox));
        assert!(!outbox.push(item("a", "3")));
        assert_eq!(drain(&outbox).2, OutboxState::Closed);
    }
}
