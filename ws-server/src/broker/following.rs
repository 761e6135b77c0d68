//! [`Following`]: how a hub follows the channels it shares through Redis, for `/metrics`.

use std::fmt::Write;

/// How a hub follows the channels it shares through Redis.
#[derive(Debug, Clone)]
pub(crate) struct Following {
    /// Each shard (`host:port`) and whether its link is up.
    pub(crate) shards: Vec<(String, bool)>,
    /// Channels followed.
    pub(crate) channels: usize,
    /// Publications announced on them and not yet delivered by this hub.
    pub(crate) lag: u64,
    /// Publications delivered from their announcements, without reading the stream.
    pub(crate) carried: u64,
    /// Rounds that read the announced streams, and how many streams they read.
    pub(crate) rounds: u64,
    pub(crate) streams_read: u64,
    /// Rounds that read every followed stream, and how many streams they read.
    pub(crate) sweeps: u64,
    pub(crate) streams_swept: u64,
}

impl Following {
    /// The metrics of a hub that follows shared channels through Redis: each shard's link, the
    /// channels followed, how far behind the announced publications this hub is, and the
    /// follower's rounds (those reading the announced streams, and the periodic sweeps).
    pub(crate) fn render(&self) -> String {
        let mut text = String::from(
            "# HELP ws_broker_shard_up 1 while the link to this Redis shard is up.\n# TYPE ws_broker_shard_up gauge\n",
        );
        for (shard, up) in &self.shards {
            let _ = writeln!(
                text,
                "ws_broker_shard_up{{shard=\"{shard}\"}} {}",
                u8::from(*up)
            );
        }
        let _ = write!(
            text,
            "# HELP ws_broker_followed_channels Channels this hub follows in Redis (it has subscribers for them).\n\
             # TYPE ws_broker_followed_channels gauge\nws_broker_followed_channels {}\n\
             # HELP ws_broker_follow_lag Publications appended in Redis on followed channels and not yet delivered by this hub.\n\
             # TYPE ws_broker_follow_lag gauge\nws_broker_follow_lag {}\n\
             # HELP ws_broker_carried_total Publications delivered from the announcement that carried them, without reading the stream.\n\
             # TYPE ws_broker_carried_total counter\nws_broker_carried_total {}\n\
             # HELP ws_broker_follow_rounds_total Reads of the followed streams: of those announced as moved, and sweeps of all of them.\n\
             # TYPE ws_broker_follow_rounds_total counter\n\
             ws_broker_follow_rounds_total{{kind=\"moved\"}} {}\nws_broker_follow_rounds_total{{kind=\"sweep\"}} {}\n\
             # HELP ws_broker_streams_read_total Streams those rounds read.\n# TYPE ws_broker_streams_read_total counter\n\
             ws_broker_streams_read_total{{kind=\"moved\"}} {}\nws_broker_streams_read_total{{kind=\"sweep\"}} {}\n",
            self.channels,
            self.lag,
            self.carried,
            self.rounds,
            self.sweeps,
            self.streams_read,
            self.streams_swept,
        );
        text
    }
}
