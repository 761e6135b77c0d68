//! [`Acks`]: the publications and requests waiting for the hub's answer, shared by every
//! connection of the client.
//!
//! An acknowledged publication carries an `id` and an idempotency `key` made from this client
//! instance and the `id`. Until its `Published` arrives its frame is kept here: if the
//! connection it went out on dies, the frame is queued again and sent after the reconnect (or
//! on another connection); the key makes the hub publish it once however many times it is
//! sent. A request is never sent twice: if its connection dies before the reply, it fails
//! with [`Error::OutcomeUnknown`].

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Serialize, Serializer};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use ws_protocol::Payload;

use crate::error::{Error, Result};

/// A publication waiting for its `Published`.
#[derive(Debug)]
struct PendingPublish {
    done: oneshot::Sender<Result<u64>>,
    /// The connection it was last written to and the whole `Publish` frame (shared with the
    /// write, not copied), to send again if that connection dies; `None` while it waits in
    /// the buffer.
    sent: Option<(usize, Utf8Bytes)>,
    /// When its caller stops waiting.
    deadline: Instant,
}

/// A request waiting for its `Reply`.
#[derive(Debug)]
struct PendingRequest {
    done: oneshot::Sender<Result<Payload>>,
    /// The connection it was written to; `None` until then.
    sent_on: Option<usize>,
}

/// The publications waiting, in `id` order (so that frames sent again keep their order):
/// publication `id` is slot `id - first`. Publication ids are handed out under the lock that
/// makes their slot, so slots are only ever added at the back; a request's id leaves an
/// empty slot. The front slot is never empty.
#[derive(Debug, Default)]
struct Publishes {
    first: u64,
    slots: VecDeque<Option<PendingPublish>>,
    len: usize,
}

impl Publishes {
    fn len(&self) -> usize {
        self.len
    }

    /// Adds publication `id`, newer than every one held.
    fn push(&mut self, id: u64, pending: PendingPublish) {
        if self.slots.is_empty() {
            self.first = id;
        }
        let index = usize::try_from(id.saturating_sub(self.first)).unwrap_or(usize::MAX);
        while self.slots.len() < index {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(pending));
        self.len += 1;
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut PendingPublish> {
        let index = usize::try_from(id.checked_sub(self.first)?).ok()?;
        self.slots.get_mut(index)?.as_mut()
    }

    fn remove(&mut self, id: u64) -> Option<PendingPublish> {
        let index = usize::try_from(id.checked_sub(self.first)?).ok()?;
        let pending = self.slots.get_mut(index)?.take()?;
        self.len -= 1;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first += 1;
        }
        Some(pending)
    }

    /// The oldest publication held.
    fn oldest(&self) -> Option<&PendingPublish> {
        self.slots.front()?.as_ref()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut PendingPublish)> {
        let first = self.first;
        (first..)
            .zip(self.slots.iter_mut())
            .filter_map(|(id, slot)| Some((id, slot.as_mut()?)))
    }

    fn take_all(&mut self) -> impl Iterator<Item = PendingPublish> {
        self.len = 0;
        std::mem::take(&mut self.slots).into_iter().flatten()
    }
}

#[derive(Debug, Default)]
struct Waiting {
    publishes: Publishes,
    requests: HashMap<u64, PendingRequest>,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Acks {
    /// This client instance, in every idempotency key it makes.
    instance: String,
    next_id: AtomicU64,
    waiting: Mutex<Waiting>,
}

impl Default for Acks {
    fn default() -> Self {
        Self {
            instance: format!("{:016x}", fastrand::u64(..)),
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(Waiting::default()),
        }
    }
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh `id`.
    pub(crate) fn next(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The idempotency key of publication `id`: this instance and the `id`.
    pub(crate) fn key(&self, id: u64) -> Key<'_> {
        Key {
            instance: &self.instance,
            id,
        }
    }

    /// Publications waiting for their acknowledgement.
    #[cfg(test)]
    pub(crate) fn unacknowledged(&self) -> usize {
        self.lock().publishes.len()
    }

    /// A fresh publication `id`, waiting for its acknowledgement until `deadline` (see
    /// [`Acks::expire`]); also returns how many other publications wait.
    pub(crate) fn expect_published(
        &self,
        deadline: Instant,
    ) -> (u64, oneshot::Receiver<Result<u64>>, usize) {
        let (done, answer) = oneshot::channel();
        let pending = PendingPublish {
            done,
            sent: None,
            deadline,
        };
        let mut waiting = self.lock();
        // Under the lock, so that ids reach `push` in order.
        let id = self.next();
        let others = waiting.publishes.len();
        waiting.publishes.push(id, pending);
        (id, answer, others)
    }

    /// Waits for the reply to request `id`.
    pub(crate) fn expect_reply(&self, id: u64) -> oneshot::Receiver<Result<Payload>> {
        let (done, answer) = oneshot::channel();
        let pending = PendingRequest {
            done,
            sent_on: None,
        };
        self.lock().requests.insert(id, pending);
        answer
    }

    /// Whether request `id` still waits (its caller may have given up).
    pub(crate) fn is_waiting(&self, id: u64) -> bool {
        self.lock().requests.contains_key(&id)
    }

    /// Publication `id`, whose frame is `frame`, was written to `connection`.
    pub(crate) fn published_on(&self, id: u64, connection: usize, frame: &Utf8Bytes) {
        if let Some(pending) = self.lock().publishes.get_mut(id) {
            pending.sent = Some((connection, frame.clone()));
        }
    }

    /// Request `id` was written to `connection`.
    pub(crate) fn requested_on(&self, id: u64, connection: usize) {
        if let Some(pending) = self.lock().requests.get_mut(&id) {
            pending.sent_on = Some(connection);
        }
    }

    /// The caller stopped waiting for `id` (its timeout): the error to give it, which says
    /// whether the frame had been sent.
    pub(crate) fn give_up(&self, id: u64, what: &str) -> Error {
        let mut waiting = self.lock();
        let sent = match waiting.publishes.remove(id) {
            Some(pending) => pending.sent.is_some(),
            None => waiting
                .requests
                .remove(&id)
                .is_some_and(|pending| pending.sent_on.is_some()),
        };
        unanswered(sent, what)
    }

    /// The hub acknowledged publications `id` to `id + count - 1` as `seq` to
    /// `seq + count - 1`; `false` if nobody waited for any of them.
    pub(crate) fn published(&self, id: u64, seq: u64, count: u64) -> bool {
        let mut waiting = self.lock();
        let mut answered = false;
        // No more than the ids held, whatever the count says.
        let count = count.min(waiting.publishes.slots.len() as u64);
        for n in 0..count {
            let (Some(id), Some(seq)) = (id.checked_add(n), seq.checked_add(n)) else {
                break;
            };
            if let Some(pending) = waiting.publishes.remove(id) {
                let _ = pending.done.send(Ok(seq));
                answered = true;
            }
        }
        answered
    }

    /// The application replied to request `id`; `false` if nobody waits for it.
    pub(crate) fn replied(&self, id: u64, data: Payload) -> bool {
        let Some(pending) = self.lock().requests.remove(&id) else {
            return false;
        };
        let _ = pending.done.send(Ok(data));
        true
    }

    /// The hub or the application refused `id`; `false` if nobody waits for it.
    pub(crate) fn refused(&self, id: u64, code: &str, message: &str) -> bool {
        let mut waiting = self.lock();
        let error = Error::Refused {
            code: code.to_owned(),
            message: message.to_owned(),
        };
        if let Some(pending) = waiting.publishes.remove(id) {
            let _ = pending.done.send(Err(error));
            return true;
        }
        if let Some(pending) = waiting.requests.remove(&id) {
            let _ = pending.done.send(Err(error));
            return true;
        }
        false
    }

    /// Request `id` could not be sent: `why`.
    pub(crate) fn not_sent(&self, id: u64, why: String) {
        if let Some(pending) = self.lock().requests.remove(&id) {
            let _ = pending.done.send(Err(Error::NotSent(why)));
        }
    }

    /// Publication `id` was dropped from the outbound buffer for its age, never sent.
    pub(crate) fn expired(&self, id: u64) {
        if let Some(pending) = self.lock().publishes.remove(id) {
            let error =
                Error::NotSent("the publication waited past the buffer's maximum age".to_owned());
            let _ = pending.done.send(Err(error));
        }
    }

    /// `connection` died: the publications written to it and not acknowledged, oldest first,
    /// to send again (their keys keep them from being published twice); the requests written
    /// to it fail, their outcome unknown.
    pub(crate) fn connection_lost(&self, connection: usize) -> Vec<(u64, Utf8Bytes)> {
        let mut waiting = self.lock();
        let resend = waiting
            .publishes
            .iter_mut()
            .filter_map(|(id, pending)| match pending.sent.take() {
                Some((on, frame)) if on == connection => Some((id, frame)),
                other => {
                    pending.sent = other;
                    None
                }
            })
            .collect();
        let lost: Vec<u64> = waiting
            .requests
            .iter()
            .filter(|(_, pending)| pending.sent_on == Some(connection))
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some(pending) = waiting.requests.remove(&id) {
                let error = Error::OutcomeUnknown(
                    "the connection was lost before the reply; the request may or may not have \
                     been acted on, and is not sent again"
                        .to_owned(),
                );
                let _ = pending.done.send(Err(error));
            }
        }
        resend
    }

    /// Fails the publications whose deadline passed by `now`, as
    /// [`give_up`](Self::give_up) would: one sweep for all of them rather than a timer each.
    /// Publications are kept in `id` order, which is the order of their deadlines.
    pub(crate) fn expire(&self, now: Instant) {
        let mut waiting = self.lock();
        while let Some(oldest) = waiting.publishes.oldest() {
            if oldest.deadline > now {
                break;
            }
            let first = waiting.publishes.first;
            let Some(pending) = waiting.publishes.remove(first) else {
                break;
            };
            let error = unanswered(pending.sent.is_some(), "publication");
            let _ = pending.done.send(Err(error));
        }
    }

    /// The client ended: everything waiting fails with `error`.
    pub(crate) fn fail_all(&self, error: &Error) {
        let mut waiting = self.lock();
        for pending in waiting.publishes.take_all() {
            let _ = pending.done.send(Err(error.clone()));
        }
        for (_, pending) in waiting.requests.drain() {
            let _ = pending.done.send(Err(error.clone()));
        }
    }
}

/// An idempotency key, `<instance>-<id>`, serialized as a JSON string without a `String` of
/// its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key<'a> {
    instance: &'a str,
    id: u64,
}

impl Serialize for Key<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        // 16 hex digits, a dash and at most 20 decimal ones.
        let mut key = [0u8; 64];
        let mut digits = itoa::Buffer::new();
        let id = digits.format(self.id).as_bytes();
        let instance = self.instance.as_bytes();
        let len = instance.len() + 1 + id.len();
        let Some(out) = key.get_mut(..len) else {
            return serializer.collect_str(&format_args!("{}-{}", self.instance, self.id));
        };
        let (head, tail) = out.split_at_mut(instance.len());
        head.copy_from_slice(instance);
        if let Some((dash, rest)) = tail.split_first_mut() {
            *dash = b'-';
            rest.copy_from_slice(id);
        }
        // ASCII: hex digits, a dash and decimal digits.
        match std::str::from_utf8(out) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => serializer.collect_str(&format_args!("{}-{}", self.instance, self.id)),
        }
    }
}

/// The error for a `what` whose answer did not come in time: its outcome is unknown if it
/// was `sent`, and it was not done otherwise.
fn unanswered(sent: bool, what: &str) -> Error {
    if sent {
        Error::OutcomeUnknown(format!("no answer to the {what} in time"))
    } else {
        Error::NotSent(format!(
            "the {what} could not be sent in time (not connected)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_resolve_once_and_go_out_again_after_a_lost_connection() {
        let acks = Acks::default();
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let (one, mut first, _) = acks.expect_published(later);
        // A request's id between them leaves an empty slot.
        let _request = acks.next();
        let (two, mut second, others) = acks.expect_published(later);
        assert_eq!(others, 1);
        let key = |id| serde_json::to_string(&acks.key(id)).unwrap();
        assert_ne!(key(one), key(two));
        assert_eq!(key(two), format!("\"{}-{two}\"", acks.instance));
        acks.published_on(one, 0, &"one".into());
        acks.published_on(two, 0, &"two".into());
        assert_eq!(acks.unacknowledged(), 2);
        assert!(acks.published(one, 41, 1));
        assert!(!acks.published(one, 41, 1), "answered once");
        assert_eq!(first.try_recv().unwrap().unwrap(), 41);
        assert_eq!(acks.connection_lost(1), []);
        assert_eq!(acks.connection_lost(0), [(two, Utf8Bytes::from("two"))]);
        assert!(
            second.try_recv().is_err(),
            "still waiting, to be sent again"
        );
        assert!(matches!(
            acks.give_up(two, "publication"),
            Error::NotSent(_)
        ));
    }

    #[test]
    fn publications_wait_in_id_order_whatever_order_they_are_answered_in() {
        let acks = Acks::default();
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let ids: Vec<u64> = (0..4)
            .map(|_| {
                let (id, _answer, _) = acks.expect_published(later);
                let _request = acks.next();
                id
            })
            .collect();
        for &id in &ids {
            acks.published_on(id, 0, &id.to_string().into());
        }
        assert!(acks.published(ids[1], 1, 1));
        assert!(acks.published(ids[0], 1, 1));
        assert!(!acks.published(ids[0], 1, 1));
        assert_eq!(acks.unacknowledged(), 2);
        let resend: Vec<u64> = acks
            .connection_lost(0)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(resend, [ids[2], ids[3]]);
        // Past the deadline, the oldest go first, and an emptied table takes new ones.
        acks.expire(later + std::time::Duration::from_secs(1));
        assert_eq!(acks.unacknowledged(), 0);
        let (id, _answer, others) = acks.expect_published(later);
        assert_eq!(others, 0);
        assert!(id > ids[3]);
        assert!(acks.published(id, 9, 1));
    }

    #[test]
    fn a_range_answers_each_publication_in_it_with_its_own_seq() {
        let acks = Acks::default();
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let mut answers: Vec<_> = (0..3)
            .map(|_| {
                let (id, answer, _) = acks.expect_published(later);
                (id, answer)
            })
            .collect();
        let first = answers[0].0;
        assert!(acks.published(first, 10, u64::MAX));
        for (n, (_, answer)) in answers.iter_mut().enumerate() {
            assert_eq!(answer.try_recv().unwrap().unwrap(), 10 + n as u64);
        }
        assert!(!acks.published(first, 10, 3), "answered once");
    }

    #[test]
    fn requests_are_never_sent_twice() {
        let acks = Acks::default();
        let id = acks.next();
        let mut reply = acks.expect_reply(id);
        acks.requested_on(id, 2);
        assert_eq!(acks.connection_lost(2), []);
        assert!(matches!(
            reply.try_recv().unwrap(),
            Err(Error::OutcomeUnknown(_))
        ));
        let id = acks.next();
        let mut refused = acks.expect_reply(id);
        assert!(acks.refused(id, "insufficient_funds", "no"));
        assert!(matches!(
            refused.try_recv().unwrap(),
            Err(Error::Refused { code, .. }) if code == "insufficient_funds"
        ));
    }
}
