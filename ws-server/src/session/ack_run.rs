//! A run of acknowledgements: the `Published` answers of consecutive publications of one
//! channel, sent as one frame with a `count` when the client asked with `ack_range`.
//!
//! A publisher that pipelines many acknowledged publications would otherwise get one frame
//! back per publication, as many frames out as in. The run grows while each publication is
//! the next `id` and the next `seq` of the same channel and not a duplicate; anything else
//! (another channel, a gap in either number, a duplicate, a refusal, any other reply) sends
//! the run first, so that no answer overtakes another. The run goes out when it holds
//! [`MAX_RUN`] publications (the publisher's window must keep moving while it sends), else
//! when the task has nothing more to read or writes queued publications (the moments the
//! replies are flushed), and before the close.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use ws_protocol::encode_published;

use super::Session;
use super::command::publish::publication_outcome;
use super::ending::End;
use crate::broker::BrokerError;
use crate::channel::Published;

/// The longest run: then it is written out at once.
const MAX_RUN: u64 = 128;

/// Consecutive publications answered as one `Published`.
#[derive(Debug)]
pub(super) struct AckRun {
    channel: String,
    first_id: u64,
    first_seq: u64,
    count: u64,
}

impl AckRun {
    /// Whether publication `id` of `channel`, published as `seq`, is the run's next.
    fn extends(&self, channel: &str, id: u64, seq: u64) -> bool {
        self.channel == channel
            && self.first_id.checked_add(self.count) == Some(id)
            && self.first_seq.checked_add(self.count) == Some(seq)
    }

    /// The run's `Published` frame.
    pub(super) fn into_text(self) -> String {
        encode_published(
            self.first_id,
            &self.channel,
            self.first_seq,
            false,
            self.count,
        )
    }
}

/// How a publication with an `id` asked to be answered.
#[derive(Debug, Clone, Copy)]
pub(super) struct Answer {
    pub(super) id: Option<u64>,
    /// The client accepts the answer in a run (`ack_range`).
    pub(super) ranged: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Answers a publication on `channel` once the broker is done with it: added to the run
    /// when it may be, otherwise (after the run) as [`publication_outcome`] says.
    pub(super) async fn answer_publication(
        &mut self,
        channel: String,
        answer: Answer,
        outcome: Result<Result<Published, BrokerError>, oneshot::error::RecvError>,
    ) -> Result<(), End> {
        if answer.ranged
            && let (Some(id), Ok(Ok(published))) = (answer.id, &outcome)
            && !published.duplicate
        {
            let seq = published.seq;
            if let Some(run) = &mut self.ack_run
                && run.extends(&channel, id, seq)
            {
                run.count += 1;
                if run.count < MAX_RUN {
                    return Ok(());
                }
                // The publisher waits for these to send more: out now, not when the hub
                // has read everything (a publisher that keeps sending would stall).
                return self.flush_replies().await;
            }
            self.send_ack_run().await?;
            self.ack_run = Some(Box::new(AckRun {
                channel,
                first_id: id,
                first_seq: seq,
                count: 1,
            }));
            // Sent, at the latest, when the task would flush its replies.
            self.unflushed = true;
            return Ok(());
        }
        match publication_outcome(&channel, answer.id, outcome) {
            Some(text) => self.send_text(text).await,
            None => Ok(()),
        }
    }

    /// Sends the run of acknowledgements, if there is one.
    pub(super) async fn send_ack_run(&mut self) -> Result<(), End> {
        match self.ack_run.take() {
            Some(run) => self.send_reply(run.into_text()).await,
            None => Ok(()),
        }
    }
}
