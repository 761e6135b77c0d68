//! The registry's unit tests: fan-out order, subscribe and forget, history and recovery,
//! the hub-wide bounds, and concurrency without deadlocks.

use std::collections::VecDeque;

use ws_protocol::{Payload, SlowConsumerPolicy};

use super::*;

fn outbox() -> Arc<Outbox> {
    Arc::new(Outbox::new(16, 16, SlowConsumerPolicy::Disconnect))
}

fn texts(outbox: &Outbox) -> Vec<String> {
    let mut batch = VecDeque::new();
    outbox.take(&mut batch, &mut Vec::new(), usize::MAX);
    batch
        .iter()
        .map(|o| o.frame().payload().to_owned())
        .collect()
}

#[test]
fn publications_reach_only_subscribers_with_consecutive_seq() {
    let channels = Channels::default();
    let (a, b) = (outbox(), outbox());
    channels
        .subscribe("x", ConnectionId(1), &a, None, None)
        .unwrap();
    channels
        .subscribe("y", ConnectionId(2), &b, None, None)
        .unwrap();
    let data = Payload::from_json("1").unwrap();
    assert_eq!(
        channels.publish("x", data.as_str()),
        Published {
            duplicate: Default::default(),
            seq: 1,
            recipients: Some(1)
        }
    );
    assert_eq!(
        channels.publish("x", data.as_str()),
        Published {
            duplicate: Default::default(),
            seq: 2,
            recipients: Some(1)
        }
    );
    assert_eq!(
        texts(&a),
        [
            r#"{"type":"Publication","channel":"x","seq":1,"data":1}"#,
            r#"{"type":"Publication","channel":"x","seq":2,"data":1}"#
        ]
    );
    assert!(texts(&b).is_empty());
}

#[test]
fn the_last_unsubscribe_removes_the_channel() {
    let channels = Channels::default();
    let (a, b) = (outbox(), outbox());
    channels
        .subscribe("x", ConnectionId(1), &a, None, None)
        .unwrap();
    channels
        .subscribe("x", ConnectionId(2), &b, None, None)
        .unwrap();
    channels
        .subscribe("x", ConnectionId(2), &b, None, None)
        .unwrap();
    channels.unsubscribe("x", ConnectionId(1));
    assert_eq!(channels.len(), 1);
    let data = Payload::from_json("2").unwrap();
    assert_eq!(channels.publish("x", data.as_str()).recipients, Some(1));
    assert!(texts(&a).is_empty());
    assert_eq!(texts(&b).len(), 1);
    channels.unsubscribe("x", ConnectionId(2));
    assert_eq!(channels.len(), 0);
    let data = Payload::from_json("1").unwrap();
    assert_eq!(
        channels.publish("x", data.as_str()),
        Published {
            duplicate: Default::default(),
            seq: 0,
            recipients: Some(0)
        }
    );
    assert_eq!(channels.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_subscribe_with_since_replays_exactly_what_was_missed() {
    let channels = Channels::new(HistoryLimits::per_channel(3, Duration::from_secs(10)), None);
    let a = outbox();
    let data = Payload::from_json("0").unwrap();
    let (_, start) = channels
        .subscribe("x", ConnectionId(1), &a, None, None)
        .unwrap();
    assert_eq!((start.seq, start.recovered), (0, true));
    for _ in 0..5 {
        channels.publish("x", data.as_str());
    }
    texts(&a);
    channels.unsubscribe("x", ConnectionId(1));
    assert_eq!(channels.len(), 0, "no subscriber");
    // History holds 3..=5: from 3 on is recoverable, from 1 is not.
    let since = Position {
        epoch: start.epoch.clone(),
        seq: 2,
    };
    let (_, position) = channels
        .subscribe("x", ConnectionId(1), &a, Some(&since), None)
        .unwrap();
    assert_eq!((position.seq, position.recovered), (5, true));
    assert_eq!(texts(&a).len(), 3);
    channels.unsubscribe("x", ConnectionId(1));
    let too_old = Position {
        epoch: start.epoch.clone(),
        seq: 1,
    };
    let (_, position) = channels
        .subscribe("x", ConnectionId(1), &a, Some(&too_old), None)
        .unwrap();
    assert!(!position.recovered);
    assert!(texts(&a).is_empty());
    channels.unsubscribe("x", ConnectionId(1));
    let other_epoch = Position {
        epoch: "elsewhere".into(),
        seq: 4,
    };
    let (_, position) = channels
        .subscribe("x", ConnectionId(1), &a, Some(&other_epoch), None)
        .unwrap();
    assert!(!position.recovered);
    channels.unsubscribe("x", ConnectionId(1));
    // Once the history expires the channel is forgotten, and a new epoch begins.
    tokio::time::advance(Duration::from_secs(11)).await;
    channels.sweep();
    let (_, fresh) = channels
        .subscribe("x", ConnectionId(1), &a, None, None)
        .unwrap();
    assert_ne!(fresh.epoch, start.epoch);
    assert_eq!(fresh.seq, 0);
}

#[test]
fn concurrent_subscribes_unsubscribes_publishes_and_sweeps_do_not_deadlock() {
    let channels = Arc::new(Channels::new(
        HistoryLimits::per_channel(8, Duration::ZERO),
        None,
    ));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let channels = channels.clone();
            std::thread::spawn(move || {
                let outbox = Arc::new(Outbox::new(
                    1 << 16,
                    1 << 16,
                    SlowConsumerPolicy::DropOldest,
                ));
                let data = Payload::from_json("1").unwrap();
                for i in 0..3000u64 {
                    let name = format!("c{}", i % 5);
                    match (i + t) % 4 {
                        0 => {
                            channels
                                .subscribe(&name, ConnectionId(t), &outbox, None, None)
                                .unwrap();
                        }
                        1 => channels.unsubscribe(&name, ConnectionId(t)),
                        2 => {
                            channels.publish(&name, data.as_str());
                        }
                        _ => channels.sweep(),
                    }
                }
                for c in 0..5 {
                    channels.unsubscribe(&format!("c{c}"), ConnectionId(t));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(2));
    channels.sweep();
    assert_eq!(channels.len(), 0);
    assert_eq!(channels.usage().held, 0, "idle channels were not forgotten");
    assert_eq!(channels.usage().history_bytes, 0);
}

fn bounded(size: usize, max_bytes: usize, max_channels: usize) -> Channels {
    Channels::new(
        HistoryLimits {
            size,
            ttl: Duration::from_secs(60),
            max_bytes,
            max_channels,
            key_window: Duration::from_secs(120),
            max_keys: 1000,
        },
        None,
    )
}

#[test]
fn history_over_all_channels_stays_within_its_bytes_oldest_forgotten_first() {
    let channels = bounded(100, 20_000, 1_000_000);
    let data = Payload::from_json(format!("\"{}\"", "x".repeat(100))).unwrap();
    // 1,000 channels nobody subscribes to, one publication each (~250 bytes with the
    // entry's cost): far past 20,000 bytes.
    for i in 0..1000 {
        assert_eq!(channels.publish(&format!("c{i}"), data.as_str()).seq, 1);
    }
    let usage = channels.usage();
    assert!(usage.history_bytes <= 20_000, "{usage:?}");
    assert!(usage.evicted_publications > 900, "{usage:?}");
    assert!(
        usage.held < 100,
        "channels without history are forgotten: {usage:?}"
    );
    // The newest survive; the oldest are gone, and a recovery from them says so.
    assert!(channels.position("c999").is_some());
    assert!(channels.position("c0").is_none());
    let a = outbox();
    let since = Position {
        epoch: "any".into(),
        seq: 0,
    };
    let (_, position) = channels
        .subscribe("c0", ConnectionId(1), &a, Some(&since), None)
        .unwrap();
    assert!(!position.recovered);

    // A channel with a subscriber keeps its history while others can give theirs up.
    let channels = bounded(100, 20_000, 1_000_000);
    let b = outbox();
    let (_, start) = channels
        .subscribe("watched", ConnectionId(2), &b, None, None)
        .unwrap();
    for _ in 0..20 {
        channels.publish("watched", data.as_str());
    }
    for i in 0..1000 {
        channels.publish(&format!("c{i}"), data.as_str());
    }
    // (From 10: the test outbox replays at most 16.)
    let since = Position {
        epoch: start.epoch,
        seq: 10,
    };
    let (_, position) = channels
        .subscribe("watched", ConnectionId(3), &outbox(), Some(&since), None)
        .unwrap();
    assert!(
        position.recovered,
        "the watched channel's history was evicted: {position:?} {:?}",
        channels.usage()
    );
    assert!(channels.usage().history_bytes <= 20_000);
}

#[test]
fn past_the_channel_bound_history_only_channels_go_first_and_subscribed_ones_stay() {
    let channels = bounded(10, usize::MAX, 100);
    let data = Payload::from_json("1").unwrap();
    let a = outbox();
    channels
        .subscribe("kept", ConnectionId(1), &a, None, None)
        .unwrap();
    for i in 0..1000 {
        channels.publish(&format!("c{i}"), data.as_str());
    }
    let usage = channels.usage();
    assert!(usage.held <= 100, "{usage:?}");
    assert!(usage.evicted_channels >= 900, "{usage:?}");
    assert!(channels.position("kept").is_some());
    assert!(channels.position("c999").is_some(), "the newest stays");
    assert!(channels.position("c0").is_none(), "the oldest went");

    // When every channel has a subscriber, a new one is refused rather than evicting.
    let full = bounded(10, usize::MAX, 2);
    full.subscribe("a", ConnectionId(1), &a, None, None)
        .unwrap();
    full.subscribe("b", ConnectionId(1), &a, None, None)
        .unwrap();
    assert_eq!(
        full.subscribe("c", ConnectionId(1), &a, None, None)
            .unwrap_err(),
        ChannelsFull(2)
    );
    assert_eq!(full.publish("c", data.as_str()).seq, 0);
    assert_eq!(full.publish("a", data.as_str()).seq, 1);
}

#[test]
fn a_sweep_stuck_on_one_channel_holds_up_no_other_shard() {
    // One channel's lock is held (a long fan-out, say) while the sweep reaches it: the
    // sweep waits, holding only that channel's shard. Subscribing elsewhere, publishing
    // and unsubscribing must go on meanwhile; a sweep that held one lock over every
    // channel stalled them all (548 ms when 4,000 connections closed).
    let channels = Arc::new(Channels::new(
        HistoryLimits::per_channel(8, Duration::from_secs(60)),
        None,
    ));
    let a = outbox();
    channels
        .subscribe("busy", ConnectionId(1), &a, None, None)
        .unwrap();
    let busy = channels.channel("busy").unwrap();
    let busy_shard = (0..SHARDS)
        .find(|&i| Channels::read(&channels.shards[i]).contains_key("busy"))
        .unwrap();
    let held = busy.lock();
    let sweeper = {
        let channels = channels.clone();
        std::thread::spawn(move || channels.sweep_shard(busy_shard, true))
    };
    std::thread::sleep(Duration::from_millis(20));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = {
        let channels = channels;
        std::thread::spawn(move || {
            let b = outbox();
            let data = Payload::from_json("1").unwrap();
            for i in 0..200 {
                let name = format!("other:{i}");
                if std::ptr::eq(channels.shard_of(&name), &channels.shards[busy_shard]) {
                    continue;
                }
                channels
                    .subscribe(&name, ConnectionId(2), &b, None, None)
                    .unwrap();
                channels.publish(&name, data.as_str());
                channels.unsubscribe(&name, ConnectionId(2));
            }
            let _ = done_tx.send(());
        })
    };
    let went_on = done_rx.recv_timeout(Duration::from_secs(10)).is_ok();
    drop(held);
    sweeper.join().unwrap();
    worker.join().unwrap();
    assert!(went_on, "the other shards waited for the stuck sweep");
}
