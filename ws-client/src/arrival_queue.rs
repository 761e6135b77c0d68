//! The bounded queue between a client's connections and the application: arrivals travel in
//! batches (one queue operation per burst of reads, not per frame) but are counted one by
//! one, so that at most `capacity` arrivals wait whatever the sizes of the batches.
//!
//! When it is full a connection stops handing over (and, past its read-ahead, stops reading:
//! the server sees backpressure) until the application takes some; a lifecycle event that
//! finds it full is dropped (the state and metrics tell the same). The application's side
//! gives the room back as it takes batches out.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use crate::driver::arrival::{Arrival, Batch};

/// Makes a queue for `capacity` arrivals (at least 1).
pub(crate) fn arrival_queue(capacity: usize) -> (ArrivalSender, ArrivalReceiver) {
    // Places are taken a batch at a time with a `u32` count: no more of them than that.
    let most = Semaphore::MAX_PERMITS.min(usize::try_from(u32::MAX).unwrap_or(usize::MAX));
    let capacity = capacity.clamp(1, most);
    // Every batch holds at least one arrival, so the channel never holds more batches than
    // there is room for arrivals: the semaphore is the bound that matters.
    let (batches, taken) = mpsc::channel(capacity);
    let room = Arc::new(Semaphore::new(capacity));
    (
        ArrivalSender {
            batches,
            room: room.clone(),
            capacity,
        },
        ArrivalReceiver {
            batches: taken,
            room,
        },
    )
}

/// A connection's end of the queue.
#[derive(Clone)]
pub(crate) struct ArrivalSender {
    batches: mpsc::Sender<Batch>,
    /// One permit per arrival that may still be queued.
    room: Arc<Semaphore>,
    /// How many arrivals the queue holds at most.
    capacity: usize,
}

/// The application's end of the queue.
pub(crate) struct ArrivalReceiver {
    batches: mpsc::Receiver<Batch>,
    room: Arc<Semaphore>,
}

/// The application is gone (its end of the queue was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone;

impl ArrivalSender {
    /// Hands over as many of `out` (from the front) as there is room for, in one batch.
    pub(crate) fn hand_over(&self, out: &mut VecDeque<Arrival>) -> Result<(), Gone> {
        if self.batches.is_closed() {
            return Err(Gone);
        }
        let fits = out.len().min(self.room.available_permits());
        if fits == 0 {
            return Ok(());
        }
        // Another connection may have taken the room meanwhile: then nothing now.
        let Ok(permits) = self
            .room
            .try_acquire_many(u32::try_from(fits).unwrap_or(u32::MAX))
        else {
            return Ok(());
        };
        permits.forget();
        let batch: Batch = if fits == out.len() {
            // All of it, as it usually is: the whole buffer moves, and nothing is copied
            // while its arrivals start at the front of its allocation, as they do in a
            // fresh buffer pushed at the back only.
            Vec::from(std::mem::replace(out, VecDeque::with_capacity(fits)))
        } else {
            out.drain(..fits).collect()
        };
        match self.batches.try_send(batch) {
            Ok(()) => Ok(()),
            // Not while every batch holds a place (see `arrival_queue`); if it ever did, the
            // batch waits for the next hand-over rather than being lost.
            Err(mpsc::error::TrySendError::Full(batch)) => {
                for arrival in batch.into_iter().rev() {
                    out.push_front(arrival);
                }
                self.room.add_permits(fits);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Gone),
        }
    }

    /// How many arrivals wait in the queue (from every connection), not yet taken by the
    /// application.
    pub(crate) fn waiting(&self) -> usize {
        self.capacity.saturating_sub(self.room.available_permits())
    }

    /// Queues one arrival if there is room; `false` if it was not queued.
    pub(crate) fn offer(&self, arrival: Arrival) -> bool {
        let Ok(permit) = self.room.try_acquire() else {
            return false;
        };
        permit.forget();
        let queued = self.batches.try_send(vec![arrival]).is_ok();
        if !queued {
            self.room.add_permits(1);
        }
        queued
    }

    /// Waits until there is room for at least one arrival.
    pub(crate) async fn room(&self) -> Result<(), Gone> {
        // The permit goes back at once: this only waits; `hand_over` takes the room.
        self.room.acquire().await.map(drop).map_err(|_| Gone)
    }
}

impl ArrivalReceiver {
    /// Waits for batches, takes up to `limit` of them into `into`, and gives their room
    /// back; 0 once every connection's end is gone and nothing is left.
    pub(crate) async fn take(&mut self, into: &mut Vec<Batch>, limit: usize) -> usize {
        let before = into.len();
        let taken = self.batches.recv_many(into, limit).await;
        let arrivals: usize = into[before..].iter().map(Vec::len).sum();
        self.room.add_permits(arrivals);
        taken
    }
}

impl Drop for ArrivalReceiver {
    fn drop(&mut self) {
        // Wakes connections waiting for room: the application will not take any more.
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn arrivals(n: usize) -> VecDeque<Arrival> {
        (0..n)
            .map(|i| Arrival::Event(Event::Message(i.to_string().into())))
            .collect()
    }

    #[tokio::test]
    async fn at_most_capacity_arrivals_wait_whatever_the_batches() {
        let (sender, mut receiver) = arrival_queue(10);
        // Ten batches of one fill it as ten arrivals, not as ten batches of up to 64.
        for _ in 0..10 {
            let mut one = arrivals(1);
            sender.hand_over(&mut one).unwrap();
            assert!(one.is_empty());
        }
        let mut more = arrivals(5);
        sender.hand_over(&mut more).unwrap();
        assert_eq!(more.len(), 5, "nothing fits in a full queue");
        assert!(!sender.offer(Arrival::Event(Event::Message("late".into()))));

        // Taking four batches gives four places back: four of the five go, in order.
        let mut taken = Vec::new();
        assert_eq!(receiver.take(&mut taken, 4).await, 4);
        sender.hand_over(&mut more).unwrap();
        assert_eq!(more.len(), 1);
        taken.clear();
        assert_eq!(receiver.take(&mut taken, 100).await, 7);
        let last: Vec<Arrival> = taken.pop().unwrap();
        assert_eq!(last.len(), 4);
        assert!(matches!(&last[0], Arrival::Event(Event::Message(t)) if t == "0"));
    }

    #[tokio::test]
    async fn a_waiting_connection_learns_that_the_application_is_gone() {
        let (sender, receiver) = arrival_queue(1);
        sender.hand_over(&mut arrivals(1)).unwrap();
        let waiting = tokio::spawn({
            let sender = sender.clone();
            async move { sender.room().await }
        });
        drop(receiver);
        assert_eq!(waiting.await.unwrap(), Err(Gone));
        assert_eq!(sender.hand_over(&mut arrivals(1)), Err(Gone));
    }
}
