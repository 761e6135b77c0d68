//! Reading what the socket has: the connection's select loop calls `read_bursts` when a frame
//! is ready, and it takes in that frame and every one already read after it (a burst), up to
//! the read-ahead; under load, burst after burst while nothing else is due, bounded, before
//! the loop looks at its commands, buffer and timers again.

use std::task::{Context, Poll, Waker};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use ws_protocol::WsMessage;

use super::serve::READ_AHEAD;
use super::{Driver, Ended};
use crate::heartbeat::Heartbeat;
use crate::link::Socket;
use crate::rotation::Rotation;

/// A burst of reads shorter than this means frames arrive one at a time: the next burst's
/// first frame is handed over before the socket is read again.
const SHORT_BURST: usize = 4;
/// The most bursts read one after the other without a pass of the select loop, while nothing
/// else is due.
const HOT_BURSTS: usize = 8;
/// Between bursts, when this many arrivals wait in the queue, the connection's task lets the
/// application run before it reads on, so that it takes them while they are still in the
/// CPU's cache: on one thread it would otherwise run only once the queue is full (4,096
/// arrivals by default, about 400 KiB written before the first is read). S12: +3 % msg/s.
const YIELD_AT: usize = 256;

/// What the socket gave: a frame, or its end.
type Read = Option<Result<Message, WsError>>;

/// Why [`Driver::take_frames`] stopped.
enum Pause {
    /// The burst is over: the read-ahead is full, or nothing more was read.
    Done,
    /// A hub `Ping` is owed a `Pong`.
    Pong,
    /// The first frame of a slow stream: hand it over and let the application run.
    HandOver,
    /// The connection ended.
    Ended(Ended),
}

impl Driver {
    /// Takes in `first` and the bursts after it. Under load the socket holds more: it reads
    /// on, burst after burst, while nothing else is due and the application keeps up,
    /// without a pass of the select (its wake-up and timer registrations cost more than a
    /// burst's hand-over), at most [`HOT_BURSTS`] of them. `Err` when the connection ended
    /// or the application is gone. (`rotation` is only looked at: borrowed mutably because
    /// it may hold an opening's future, which is `Send` but not `Sync`.)
    pub(super) async fn read_bursts(
        &mut self,
        ws: &mut Socket,
        first: Read,
        heartbeat: &mut Heartbeat,
        close_frame: &mut Option<CloseFrame>,
        rotation: &mut Rotation,
    ) -> Result<(), Ended> {
        self.burst(ws, first, heartbeat, close_frame).await?;
        for _ in 1..HOT_BURSTS {
            if !self.hand_over_now() {
                return Err(self.close(ws).await);
            }
            if self.arrivals.waiting() >= YIELD_AT {
                tokio::task::yield_now().await;
            }
            let last_read = ws.last_read();
            let quiet = self.out.is_empty()
                && self.commands.is_empty()
                && self.buffer.is_empty()
                && heartbeat.deadline(self.expecting_data(), true) > last_read
                && rotation.is_quiet(last_read)
                && !self.token.is_cancelled();
            if !quiet {
                break;
            }
            let Some(frame) = ready_frame(ws) else {
                break;
            };
            self.burst(ws, frame, heartbeat, close_frame).await?;
        }
        Ok(())
    }

    /// Takes in `first` and every frame already read after it, up to the read-ahead: one
    /// pass of the select loop per burst rather than per frame. `Err` when the connection
    /// ended (what the burst brought is handed over first, if the queue has room).
    async fn burst(
        &mut self,
        ws: &mut Socket,
        first: Read,
        heartbeat: &mut Heartbeat,
        close_frame: &mut Option<CloseFrame>,
    ) -> Result<(), Ended> {
        let mut burst = 0;
        let mut next = Some(first);
        while let Some(frame) = next {
            match self.take_frames(ws, frame, heartbeat, close_frame, &mut burst) {
                Pause::Done => break,
                Pause::Ended(ended) => {
                    // What this burst brought goes to the application now if it can, not
                    // only after a reconnect that may never come.
                    self.hand_over_now();
                    return Err(ended);
                }
                Pause::Pong => {
                    self.owe_pong = false;
                    if let Err(ended) = self.write_now(ws, WsMessage::Pong.to_json()).await {
                        self.hand_over_now();
                        return Err(ended);
                    }
                }
                Pause::HandOver => {
                    if !self.hand_over_now() {
                        return Err(self.close(ws).await);
                    }
                    tokio::task::yield_now().await;
                }
            }
            next = self.next_in_burst(ws);
        }
        self.last_burst = burst;
        Ok(())
    }

    /// The synchronous part of a burst (no frame is kept across an `await`, so none is
    /// copied in and out of the task's state): takes in `first` and the frames already read
    /// after it, until the read-ahead is full, nothing more is read, or something needs the
    /// caller (a `Pong` to write, the first frame of a slow stream to hand over at once, the
    /// end). `burst` counts the frames.
    fn take_frames(
        &mut self,
        ws: &mut Socket,
        first: Read,
        heartbeat: &mut Heartbeat,
        close_frame: &mut Option<CloseFrame>,
        burst: &mut usize,
    ) -> Pause {
        let mut frame = first;
        loop {
            if let Err(ended) = self.on_frame(ws, frame, heartbeat, close_frame) {
                return Pause::Ended(ended);
            }
            *burst += 1;
            if self.owe_pong {
                return Pause::Pong;
            }
            if *burst == 1 && self.last_burst < SHORT_BURST && !self.out.is_empty() {
                // Frames come one at a time: the first goes to the application before the
                // socket is read again (a read that finds nothing costs a system call), so an
                // application waiting for it runs now, not after that. Under load, bursts go
                // over whole.
                return Pause::HandOver;
            }
            match self.next_in_burst(ws) {
                Some(next) => frame = next,
                None => return Pause::Done,
            }
        }
    }

    /// The next frame of this burst: one the socket has already read, while the read-ahead
    /// has room; `None` when it has none ready or the read-ahead is full.
    fn next_in_burst(&self, ws: &mut Socket) -> Option<Read> {
        if self.out.len() < READ_AHEAD {
            ready_frame(ws)
        } else {
            None
        }
    }
}

/// The frame the socket has ready now, if any, without waiting: a poll with a waker that does
/// nothing (the select loop polls with the task's own before the task sleeps).
fn ready_frame(ws: &mut Socket) -> Option<Read> {
    match ws.poll_next_unpin(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(frame) => Some(frame),
        Poll::Pending => None,
    }
}
