//! [`Epochs`]: the epoch of each channel the client follows, shared by the sequencer (which
//! learns them from the hub's `Subscribed`) and the application's handle
//! ([`WebSocketClient::epoch`](crate::WebSocketClient::epoch)). Written only when a channel
//! is first followed, changes epoch or is unsubscribed: never per publication.

use std::collections::HashMap;
use std::sync::Mutex;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Epochs(Mutex<HashMap<String, String>>);

impl Epochs {
    /// `channel` is now followed in `epoch`.
    pub(crate) fn set(&self, channel: &str, epoch: &str) {
        let mut epochs = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match epochs.get_mut(channel) {
            Some(known) if known == epoch => {}
            Some(known) => epoch.clone_into(known),
            None => {
                epochs.insert(channel.to_owned(), epoch.to_owned());
            }
        }
    }

    /// `channel`'s epoch, if it is followed.
    pub(crate) fn get(&self, channel: &str) -> Option<String> {
        let epochs = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        epochs.get(channel).cloned()
    }

    /// `channel` is no longer followed.
    pub(crate) fn remove(&self, channel: &str) {
        let mut epochs = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        epochs.remove(channel);
    }
}
