//! [`Track`]: what the sequencer knows of one hub channel: its epoch, the last `seq`
//! delivered, the publications held behind an open gap, the hub's conflation cover per
//! connection, and, while connections race, when the latest winners arrived.

use std::collections::{BTreeMap, VecDeque};

use tokio::time::Instant;
use ws_protocol::Payload;

use crate::feed::RECENT;

/// One hub channel as the sequencer follows it.
pub(super) struct Track {
    pub(super) epoch: String,
    pub(super) delivered: u64,
    /// Publications after a gap, by `seq`, with the connection that brought them and when.
    pub(super) held: BTreeMap<u64, (Payload, usize, Instant)>,
    /// Per connection: publications the hub said it conflated and not yet skipped over.
    pub(super) conflated: Vec<u64>,
    /// When the open gap was noticed.
    pub(super) gap_since: Option<Instant>,
    /// With several connections: `(seq, when it arrived)` of the latest deliveries, to time
    /// the copies that lose.
    pub(super) recent: VecDeque<(u64, Instant)>,
}

impl Track {
    pub(super) fn new(epoch: String, delivered: u64) -> Self {
        Self {
            epoch,
            delivered,
            held: BTreeMap::new(),
            conflated: Vec::new(),
            gap_since: None,
            recent: VecDeque::new(),
        }
    }

    /// Notes when `seq`'s winning copy arrived (with several connections only).
    pub(super) fn remember(&mut self, racing: bool, seq: u64, at: Instant) {
        if !racing {
            return;
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, at));
    }

    /// When the winning copy of `seq` arrived, if it is still known.
    pub(super) fn won_at(&self, seq: u64) -> Option<Instant> {
        if let Some((_, _, at)) = self.held.get(&seq) {
            return Some(*at);
        }
        let index = self.recent.binary_search_by_key(&seq, |&(s, _)| s).ok()?;
        self.recent.get(index).map(|&(_, at)| at)
    }

    /// Whether a jump from the last delivered `seq` to `seq` on `connection` is covered by what the
    /// hub conflated there; if so, the cover is used up.
    pub(super) fn conflated_over(&mut self, connection: usize, seq: u64) -> bool {
        let jump = seq - self.delivered - 1;
        match self.conflated.get_mut(connection) {
            Some(budget) if *budget >= jump => {
                *budget -= jump;
                true
            }
            _ => false,
        }
    }
}
