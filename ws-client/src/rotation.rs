//! [`Rotation`]: make-before-break replacement of a connection that reached its maximum age.
//!
//! When the connection is old enough a new one is opened beside it; it resubscribes with the
//! positions seen so far (so the hub replays what came after them), and both are read while
//! the new one catches up: once it has delivered up to the positions the hub announced in its
//! `Subscribed`, the old one is closed. The sequencer drops the copies both delivered, so the
//! application sees neither a gap nor a duplicate. If the new connection cannot be opened or
//! does not catch up in time it is dropped and the rotation is tried again later; the old
//! connection serves on meanwhile.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::link::{Link, Socket};

type Opening = Pin<Box<dyn Future<Output = Result<Link, String>> + Send>>;

/// The new connection while it catches up.
pub(crate) struct Successor {
    pub(crate) ws: Socket,
    /// The `seq` each channel must reach (from the successor's `Subscribed`); `None` until
    /// it arrives.
    pub(crate) targets: Option<HashMap<String, u64>>,
    /// The highest `seq` the successor delivered per channel (the resubscribe's positions
    /// to start with).
    pub(crate) reached: HashMap<String, u64>,
    /// When it must have caught up.
    pub(crate) deadline: Instant,
}

impl Successor {
    /// Whether every channel reached its target.
    pub(crate) fn caught_up(&self) -> bool {
        self.targets.as_ref().is_some_and(|targets| {
            targets
                .iter()
                .all(|(channel, target)| self.reached.get(channel).copied().unwrap_or(0) >= *target)
        })
    }
}

/// Where a rotation stands.
pub(crate) enum Rotation {
    /// Connections are not rotated.
    Off,
    /// The next rotation starts then.
    Due(Instant),
    /// The new connection is being opened.
    Opening(Opening),
    /// The new connection is catching up.
    CatchingUp(Box<Successor>),
}

/// What a rotation needs from the connection task.
pub(crate) enum Step {
    /// Time to open the new connection.
    Start,
    /// The new connection opened, or failed to.
    Opened(Box<Result<Link, String>>),
    /// A frame (or the end) from the new connection.
    Frame(Option<Result<Message, WsError>>),
    /// The new connection did not catch up in time.
    TimedOut,
}

impl Rotation {
    /// A rotation due `max_age` from `now`, or none.
    pub(crate) fn new(max_age: Option<Duration>, now: Instant) -> Self {
        match max_age {
            Some(age) => Self::Due(now + age),
            None => Self::Off,
        }
    }

    /// Whether connections are rotated at all.
    pub(crate) fn is_on(&self) -> bool {
        !matches!(self, Self::Off)
    }

    /// Whether the rotation needs no attention at `now`: off, or not due yet (an opening or
    /// catching-up rotation always needs the connection task's select loop).
    pub(crate) fn is_quiet(&self, now: Instant) -> bool {
        match self {
            Self::Off => true,
            Self::Due(at) => now < *at,
            Self::Opening(_) | Self::CatchingUp(_) => false,
        }
    }

    /// Resolves when the rotation needs attention. The new connection is read only while
    /// `reading` (the application keeps up).
    pub(crate) async fn next(&mut self, reading: bool) -> Step {
        match self {
            Self::Off => std::future::pending().await,
            Self::Due(at) => {
                tokio::time::sleep_until(*at).await;
                Step::Start
            }
            Self::Opening(opening) => Step::Opened(Box::new(opening.await)),
            Self::CatchingUp(successor) => {
                let deadline = successor.deadline;
                tokio::select! {
                    frame = successor.ws.next(), if reading => Step::Frame(frame),
                    () = tokio::time::sleep_until(deadline) => Step::TimedOut,
                }
            }
        }
    }

    /// Starts opening with `opening`.
    pub(crate) fn open<F>(&mut self, opening: F)
    where
        F: Future<Output = Result<Link, String>> + Send + 'static,
    {
        *self = Self::Opening(Box::pin(opening));
    }
}
