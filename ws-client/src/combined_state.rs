//! [`CombinedState`]: the client's [`ConnectionState`] made from the state of each of its
//! connections.
//!
//! The client is `Connected` while any connection is; otherwise `Reconnecting` while any
//! connection is trying again (with the fewest attempts among them), `Connecting` before the
//! first connection, `Failed` once every connection has given up, and `Disconnected` after
//! `close()`.

use std::sync::Mutex;

use tokio::sync::watch;

use crate::state::ConnectionState;

/// Each connection's state and the combined one. See the module documentation.
#[derive(Debug)]
pub(crate) struct CombinedState {
    each: Mutex<Vec<ConnectionState>>,
    combined: watch::Sender<ConnectionState>,
}

impl CombinedState {
    /// `connections` connections, all `Connecting`.
    pub(crate) fn new(connections: usize) -> (Self, watch::Receiver<ConnectionState>) {
        let (combined, receiver) = watch::channel(ConnectionState::Connecting);
        let each = Mutex::new(vec![ConnectionState::Connecting; connections]);
        (Self { each, combined }, receiver)
    }

    /// Connection `connection` is now in `state`.
    pub(crate) fn set(&self, connection: usize, state: ConnectionState) {
        let mut each = self.each.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = each.get_mut(connection) {
            *slot = state;
        }
        let combined = combine(&each);
        self.combined.send_if_modified(|now| {
            let changed = *now != combined;
            *now = combined;
            changed
        });
    }
}

fn combine(each: &[ConnectionState]) -> ConnectionState {
    use ConnectionState as S;
    if each.contains(&S::Connected) {
        return S::Connected;
    }
    let attempts = each.iter().filter_map(|s| match s {
        S::Reconnecting { attempt } => Some(*attempt),
        _ => None,
    });
    if let Some(attempt) = attempts.min() {
        return S::Reconnecting { attempt };
    }
    if each.contains(&S::Connecting) {
        return S::Connecting;
    }
    let reasons: Vec<&str> = each
        .iter()
        .filter_map(|s| match s {
            S::Failed { reason } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    match reasons.as_slice() {
        [] => S::Disconnected,
        _ if reasons.len() < each.len() => S::Disconnected,
        [reason] => S::Failed {
            reason: (*reason).to_owned(),
        },
        _ => S::Failed {
            reason: format!(
                "every connection failed: {}",
                reasons
                    .iter()
                    .enumerate()
                    .map(|(i, r)| format!("[{i}] {r}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectionState as S;

    fn failed(reason: &str) -> S {
        S::Failed {
            reason: reason.into(),
        }
    }

    #[test]
    fn any_connection_up_is_connected_and_all_failed_is_failed() {
        assert_eq!(combine(&[S::Connecting, S::Connected]), S::Connected);
        assert_eq!(
            combine(&[
                S::Reconnecting { attempt: 3 },
                failed("x"),
                S::Reconnecting { attempt: 1 }
            ]),
            S::Reconnecting { attempt: 1 }
        );
        assert_eq!(combine(&[failed("x")]), failed("x"));
        assert_eq!(
            combine(&[failed("x"), failed("y")]),
            failed("every connection failed: [0] x; [1] y")
        );
        assert_eq!(combine(&[failed("x"), S::Disconnected]), S::Disconnected);
    }

    #[test]
    fn watchers_see_only_changes_of_the_combined_state() {
        let (state, mut rx) = CombinedState::new(2);
        rx.mark_unchanged();
        state.set(0, S::Connected);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        state.set(1, S::Connected);
        state.set(1, S::Reconnecting { attempt: 1 });
        assert!(!rx.has_changed().unwrap());
        assert_eq!(*rx.borrow(), S::Connected);
    }
}
