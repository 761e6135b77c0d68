//! What a subscribe replays from a channel's history before live publications: after
//! `since`, the start of a new epoch, or the last `rewind` publications.

use std::sync::Arc;

use ws_protocol::Position;

use super::state::ChannelState;
use crate::outbox::Outbox;

/// Queues to `outbox` what a subscriber asks to have replayed, from `state`'s history, under
/// the channel's lock (so nothing is missed or repeated at the seam with live publications).
/// Returns `(recovered, replay_from)` for its position:
///
/// - with `since` in the current epoch: what followed it, if the history still reaches back
///   that far (`recovered`);
/// - with `since` in another epoch (the hub restarted, or Redis lost the channel): not
///   recovered, but if the history still holds the new epoch from its first `seq`, all of it
///   (`replay_from: 1`), so that nothing the new epoch accepted is lost;
/// - without `since`, with `rewind: n`: the last `n` publications the history still holds
///   (`replay_from` the first of them).
pub(super) fn replay(
    state: &ChannelState,
    name: &Arc<str>,
    outbox: &Outbox,
    since: Option<&Position>,
    rewind: Option<u64>,
) -> (bool, Option<u64>) {
    let entries = &state.history.entries;
    let oldest = entries.front().map_or(state.seq + 1, |(seq, _, _)| *seq);
    // History seqs are consecutive, so the first one to replay is an index.
    let queue_from = |first: u64| {
        let skip = usize::try_from(first.saturating_sub(oldest)).unwrap_or(usize::MAX);
        outbox.push_replay(
            name,
            entries
                .range(skip.min(entries.len())..)
                .map(|(_, _, frame)| frame.clone()),
        )
    };
    match (since, rewind) {
        (Some(position), _) if *position.epoch == *state.epoch => {
            let reachable = position.seq <= state.seq && oldest <= position.seq + 1;
            (reachable && queue_from(position.seq + 1), None)
        }
        (Some(_), _) => {
            let from_start = oldest == 1 && !entries.is_empty();
            if from_start && queue_from(1) {
                (false, Some(1))
            } else {
                (false, None)
            }
        }
        (None, Some(n)) if n > 0 && !entries.is_empty() => {
            let first = state.seq.saturating_sub(n).saturating_add(1).max(oldest);
            if queue_from(first) {
                (true, Some(first))
            } else {
                (true, None)
            }
        }
        (None, _) => (true, None),
    }
}
