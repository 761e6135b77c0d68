//! What the client receives: events (stamped, one or many at a time) and messages decoded
//! as the application's types, taken through the sequencer on the application's side of
//! the arrival queue.

use std::collections::VecDeque;

use futures_util::lock::MutexGuard;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::WebSocketClient;
use crate::arrival_queue::ArrivalReceiver;
use crate::driver::Command;
use crate::driver::arrival::{Arrival, Batch};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::sequencer::Sequencer;
use crate::stamped::Stamped;

/// Batches of arrivals taken into the sequencer at once when the application waits for an
/// event.
const BATCHES_AT_ONCE: usize = 4;

/// The application's side of the arrival queue: the sequencer runs here, in `next_event`.
pub(crate) struct Inbox {
    pub(crate) arrivals: ArrivalReceiver,
    /// Batches taken from the queue at once (at most [`BATCHES_AT_ONCE`]), kept for its
    /// allocation.
    pub(crate) batch: Vec<Batch>,
    /// Arrivals taken from the queue, not yet through the sequencer: it takes them one at a
    /// time, as the application asks for events (bounded by the batches taken at once).
    pub(crate) taken: VecDeque<std::vec::IntoIter<Arrival>>,
    /// When they were taken (the sequencer's "now" for them).
    pub(crate) taken_at: Instant,
    pub(crate) sequencer: Sequencer,
    /// Every connection has ended and what was held has been let go.
    pub(crate) finished: bool,
}

impl WebSocketClient {
    /// The next event: publications, other messages, connection changes, lag and expiry
    /// reports. `None` once the client has ended and every event was taken.
    pub async fn next_event(&self) -> Option<Event> {
        self.next_stamped().await.map(|stamped| stamped.event)
    }

    /// The next event as [`next_event`](Self::next_event) gives it, with the connection
    /// that delivered it and the instant its frame was read from the socket (for
    /// publications and messages): for measuring latency, or which connection of a race
    /// wins.
    pub async fn next_stamped(&self) -> Option<Stamped> {
        let mut inbox = self.inbox().await;
        loop {
            if let Some(event) = self.ready(&mut inbox) {
                return Some(event);
            }
            if inbox.finished {
                return None;
            }
            self.wait(&mut inbox).await;
        }
    }

    /// Waits for the next event, then appends it and every further event ready now, up to
    /// `limit` in all, to `into`, as [`next_stamped`](Self::next_stamped) gives them and in
    /// the same order: one call per burst of a busy feed rather than one per event (as
    /// `tokio::sync::mpsc::Receiver::recv_many`). Returns how many it appended; 0 once the
    /// client has ended and every event was taken, or when `limit` is 0. Like
    /// `next_stamped`, safe to cancel (in a `select!`): events leave the client only in the
    /// call that returns them.
    ///
    /// ```no_run
    /// # async fn run(client: ws_client::WebSocketClient) {
    /// let mut events = Vec::with_capacity(64);
    /// while client.next_stamped_many(&mut events, 64).await > 0 {
    ///     for stamped in events.drain(..) {
    ///         let waited = stamped.received_at.map(|at| at.elapsed());
    ///         println!("{:?} after {waited:?} in the client", stamped.event);
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn next_stamped_many(&self, into: &mut Vec<Stamped>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        let mut inbox = self.inbox().await;
        let mut count = 0;
        loop {
            while count < limit {
                let Inbox {
                    taken, sequencer, ..
                } = &mut *inbox;
                if let Some(arrivals) = taken.front_mut() {
                    count += sequencer.accept_messages(arrivals, into, limit - count);
                    if count == limit {
                        break;
                    }
                }
                match self.ready(&mut inbox) {
                    Some(event) => {
                        into.push(event);
                        count += 1;
                    }
                    None => break,
                }
            }
            if count > 0 || inbox.finished {
                return count;
            }
            self.wait(&mut inbox).await;
        }
    }

    /// The sequencer's side of the queue, held by one call at a time.
    async fn inbox(&self) -> MutexGuard<'_, Inbox> {
        // Without a wait when no other call holds it, as is usual.
        match self.shared.inbox.try_lock() {
            Some(inbox) => inbox,
            None => self.shared.inbox.lock().await,
        }
    }

    /// The next event ready without a wait, if any: one the sequencer holds, or the next
    /// arrival taken from the queue through it.
    #[inline]
    fn ready(&self, inbox: &mut Inbox) -> Option<Stamped> {
        let Inbox {
            taken,
            taken_at,
            sequencer,
            ..
        } = inbox;
        loop {
            let shared = &self.shared;
            // A load first: a swap is a locked instruction, paid per event otherwise.
            if shared
                .any_forgotten
                .load(std::sync::atomic::Ordering::Relaxed)
                && shared
                    .any_forgotten
                    .swap(false, std::sync::atomic::Ordering::Acquire)
            {
                let forgotten = std::mem::take(
                    &mut *shared.forgotten.lock().unwrap_or_else(|p| p.into_inner()),
                );
                for channel in forgotten {
                    sequencer.forget(&channel);
                }
            }
            for fill in sequencer.take_fills() {
                self.ask_fill(fill);
            }
            if let Some(event) = sequencer.pop() {
                return Some(event);
            }
            let arrival = loop {
                let arrivals = taken.front_mut()?;
                match arrivals.next() {
                    Some(arrival) => break arrival,
                    None => {
                        taken.pop_front();
                    }
                }
            };
            if let Some(event) = sequencer.accept_next(arrival, *taken_at) {
                return Some(event);
            }
            // It may have asked for a fill, or forgotten channels may have come in: look
            // again before the next.
        }
    }

    /// Waits for arrivals (a few bursts at once: one wait per burst or less) or the
    /// sequencer's next deadline, whichever comes first.
    async fn wait(&self, inbox: &mut Inbox) {
        let Inbox {
            arrivals,
            batch,
            taken,
            taken_at,
            sequencer,
            finished,
        } = inbox;
        let deadline = sequencer.deadline();
        tokio::select! {
            count = arrivals.take(batch, BATCHES_AT_ONCE) => if count == 0 {
                sequencer.finish();
                *finished = true;
            } else {
                *taken_at = Instant::now();
                taken.extend(batch.drain(..).map(Vec::into_iter));
            },
            () = sleep_until_some(deadline) => sequencer.expire(Instant::now()),
        }
    }

    /// Asks the connection that saw a gap, or failing that any other, to have it filled.
    fn ask_fill(&self, fill: crate::sequencer::FillRequest) {
        let connections = &self.shared.connections;
        let order = (0..connections.len()).map(|i| (fill.connection + i) % connections.len());
        for connection in order {
            let command = Command::Fill {
                channel: fill.channel.clone(),
                since: fill.since.clone(),
            };
            if connections[connection].try_send(command).is_ok() {
                return;
            }
        }
        tracing::debug!(channel = %fill.channel, "no connection could take a gap fill now");
    }

    /// The next message decoded as `T`: the `data` of a publication, or a whole text frame
    /// from a plain server (or broadcast by the hub). Other events are skipped; use
    /// [`next_event`](Self::next_event) to see them.
    ///
    /// # Errors
    /// [`Error::Decode`] if a message does not decode as `T` (it is given back; the next call
    /// goes on with the next message); [`Error::Failed`] once the client has given up.
    /// `Ok(None)` once it was closed.
    pub async fn receive<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        loop {
            let decoded = match self.next_event().await {
                None => {
                    return match self.ended_error() {
                        Error::Failed(reason) => Err(Error::Failed(reason)),
                        _ => Ok(None),
                    };
                }
                Some(Event::Publication { data, .. }) => data
                    .decode::<T>()
                    .map_err(|e| decode_error(data.as_str(), &e)),
                Some(Event::Message(text)) => {
                    serde_json::from_str(&text).map_err(|e| decode_error(&text, &e))
                }
                Some(Event::Binary(bytes)) => serde_json::from_slice(&bytes)
                    .map_err(|e| decode_error(&String::from_utf8_lossy(&bytes), &e)),
                Some(_) => continue,
            };
            return decoded.map(Some);
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn decode_error(text: &str, error: &serde_json::Error) -> Error {
    Error::Decode {
        text: text.to_owned(),
        reason: error.to_string(),
    }
}
