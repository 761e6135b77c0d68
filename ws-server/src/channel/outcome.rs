//! What the registry answers: a publication's [`Published`], and why one could not be taken.

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The publication's `seq` in its channel; 0 when nothing kept or received it.
    pub seq: u64,
    /// How many subscribers on this hub it was queued to; `None` with the Redis broker, where
    /// every hub delivers it as it reads it back from Redis.
    pub recipients: Option<usize>,
    /// The publication carried an idempotency key seen within `WS_IDEMPOTENCY_WINDOW`: it
    /// was not published again, and `seq` is the first one's.
    pub duplicate: bool,
}

impl Published {
    /// A publication that got `seq`, queued to `recipients` subscribers here (`None`: every
    /// hub delivers it as it reads it back from Redis).
    pub(crate) fn new(seq: u64, recipients: Option<usize>) -> Self {
        Self {
            seq,
            recipients,
            duplicate: false,
        }
    }

    /// A repeated key: nothing was published; `seq` is the first publication's.
    pub(crate) fn duplicate_of(seq: u64) -> Self {
        Self {
            seq,
            recipients: None,
            duplicate: true,
        }
    }
}

/// Why the registry could not take a keyed publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishRefused {
    /// `WS_IDEMPOTENCY_MAX_KEYS` keys are held: the key could not be remembered.
    KeysFull(usize),
    /// No room for the channel that would remember the key.
    ChannelsFull(usize),
}

impl std::fmt::Display for PublishRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::KeysFull(n) => write!(
                f,
                "the hub holds its maximum of {n} idempotency keys (WS_IDEMPOTENCY_MAX_KEYS), \
                 all for other channels; retry once older keys expire"
            ),
            Self::ChannelsFull(n) => ChannelsFull(*n).fmt(f),
        }
    }
}

/// The hub holds `WS_MAX_CHANNELS` channels, all with subscribers: no new one fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelsFull(pub(crate) usize);

impl std::fmt::Display for ChannelsFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the hub holds its maximum of {} channels (WS_MAX_CHANNELS), all with subscribers",
            self.0
        )
    }
}
