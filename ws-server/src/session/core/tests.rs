//! The connection core without sockets, on paused time: each command's replies, the
//! authentication deadline and token expiry, the rate limits and their end, the idle and
//! ping timers, and the ends the outbox decides (slow consumer, drain, shutdown).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header, encode};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use ws_protocol::{SlowConsumerPolicy, WebSocketConfig, WsMessage, codes};

use super::{Core, Step};
use crate::auth::JwtAuthenticator;
use crate::hub::{Hub, HubOptions};
use crate::outbox::{Outbox, OutboxState};
use crate::session::command::publish::PublishBody;
use crate::session::ending::End;

const SECRET: &[u8] = b"a secret of at least thirty-two bytes for HS256";

fn hub(config: WebSocketConfig, jwt: bool) -> Arc<Hub> {
    let options = HubOptions {
        incoming_capacity: 16,
        authenticator: jwt.then(|| Arc::new(JwtAuthenticator::hs256(SECRET)) as _),
        #[cfg(feature = "conformance")]
        echo: false,
    };
    Arc::new(Hub::new(config, options).expect("valid configuration"))
}

/// A core for a new connection to `hub`, with the open hub's grant unless `jwt`.
fn connect(hub: &Arc<Hub>, jwt: bool) -> Core {
    let config = &hub.config;
    let outbox = Arc::new(Outbox::new(
        config.send_queue_size,
        config.history_size,
        config.slow_consumer_policy,
    ));
    let id = hub.connections.next_id();
    hub.connections.insert(id, outbox.clone());
    let grant = (!jwt).then(|| hub.open_grant.clone());
    Core::new(hub.clone(), id, outbox, grant, Instant::now())
}

fn text(frame: &str) -> Message {
    Message::text(frame.to_owned())
}

/// The one reply a step writes, decoded.
fn reply(step: Result<Step, End>) -> WsMessage {
    match step {
        Ok(Step::Reply(json)) => WsMessage::from_json(&json).expect("a reply the hub can read"),
        Ok(_) => panic!("expected one reply"),
        Err(end) => panic!("expected one reply, the connection ended: {end}"),
    }
}

fn error_code(message: &WsMessage) -> &str {
    match message {
        WsMessage::Error { code, .. } => code,
        other => panic!("expected an Error, got {}", other.kind()),
    }
}

/// Subscribes `core` to `channels` as the task would: attach, then subscribe.
async fn subscribe(core: &mut Core, channels: &[&str]) -> WsMessage {
    let frame = serde_json::json!({"type": "Subscribe", "channels": channels}).to_string();
    match core.on_message(text(&frame), Instant::now()) {
        Ok(Step::Subscribe(request)) => {
            let attached = core.hub.attach(&request.channels).await;
            reply(Ok(core.subscribe(request, attached)))
        }
        other => reply(other),
    }
}

fn token(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .expect("a token")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[tokio::test(start_paused = true)]
async fn ping_is_answered_and_unknown_frames_are_refused_by_name() {
    let hub = hub(WebSocketConfig::default(), false);
    let mut core = connect(&hub, false);
    assert!(matches!(
        reply(core.on_message(text(r#"{"type":"Ping"}"#), Instant::now())),
        WsMessage::Pong
    ));
    let malformed = reply(core.on_message(text("{not json"), Instant::now()));
    assert_eq!(error_code(&malformed), codes::BAD_REQUEST);
    let unknown = reply(core.on_message(text(r#"{"type":"Teleport"}"#), Instant::now()));
    assert_eq!(error_code(&unknown), codes::UNKNOWN_TYPE);
    assert!(matches!(
        core.on_message(text(r#"{"type":"Pong"}"#), Instant::now()),
        Ok(Step::Nothing)
    ));
    let binary = core.on_message(Message::binary(vec![1, 2, 3]), Instant::now());
    assert_eq!(error_code(&reply(binary)), codes::BAD_REQUEST);
}

#[tokio::test(start_paused = true)]
async fn subscribe_queues_later_publications_and_unsubscribe_stops_them() {
    let hub = hub(WebSocketConfig::default(), false);
    let mut core = connect(&hub, false);
    let subscribed = subscribe(&mut core, &["prices:A", "prices:B"]).await;
    let WsMessage::Subscribed {
        channels,
        positions,
    } = subscribed
    else {
        panic!("expected Subscribed, got {}", subscribed.kind());
    };
    assert_eq!(channels, ["prices:A", "prices:B"]);
    assert_eq!(positions["prices:A"].seq, 0);
    assert_eq!(
        hub.metrics
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    let data = serde_json::value::RawValue::from_string("{\"p\":1}".to_owned()).unwrap();
    let published = hub
        .publish("prices:A", data.get(), None)
        .await
        .expect("published");
    assert_eq!(published.seq, 1);
    let (mut batch, mut notices) = (Default::default(), Vec::new());
    let (state, _) = core.outbox.take(&mut batch, &mut notices, usize::MAX);
    assert_eq!(state, OutboxState::Open);
    assert_eq!(batch.len(), 1);
    assert!(batch[0].frame().payload().contains("\"seq\":1"));

    let unsubscribed = reply(core.on_message(
        text(r#"{"type":"Unsubscribe","channels":["prices:A"]}"#),
        Instant::now(),
    ));
    assert!(matches!(unsubscribed, WsMessage::Unsubscribed { .. }));
    hub.publish("prices:A", data.get(), None)
        .await
        .expect("published");
    batch.clear();
    core.outbox.take(&mut batch, &mut notices, usize::MAX);
    assert!(
        batch.is_empty(),
        "nothing of an unsubscribed channel is queued"
    );
    assert_eq!(
        hub.metrics
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    core.leave();
    assert_eq!(
        hub.metrics
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(hub.connections.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn subscribe_refusals_change_nothing() {
    let mut config = WebSocketConfig::default();
    config.max_subscriptions = 2;
    let hub = hub(config, false);
    let mut core = connect(&hub, false);
    let empty = subscribe(&mut core, &["ok", ""]).await;
    assert_eq!(error_code(&empty), codes::INVALID_CHANNEL);
    let too_many = subscribe(&mut core, &["a", "b", "c"]).await;
    assert_eq!(error_code(&too_many), codes::TOO_MANY_SUBSCRIPTIONS);
    assert!(core.subscriptions.is_empty());
    assert!(matches!(
        subscribe(&mut core, &["a", "b"]).await,
        WsMessage::Subscribed { .. }
    ));
    // Subscribing again to what it has is not a new subscription.
    assert!(matches!(
        subscribe(&mut core, &["a"]).await,
        WsMessage::Subscribed { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn publish_checks_the_channel_and_hands_the_rest_to_the_task() {
    let hub = hub(WebSocketConfig::default(), false);
    let mut core = connect(&hub, false);
    let bad = core.on_message(
        text(r#"{"type":"Publish","channel":"","data":1}"#),
        Instant::now(),
    );
    assert_eq!(error_code(&reply(bad)), codes::INVALID_CHANNEL);
    // The canonical form is read in place, anything else decoded: the same publication.
    for (frame, in_place) in [
        (
            r#"{"type":"Publish","channel":"prices:A","data":{"p":2},"key":"k"}"#,
            true,
        ),
        (
            r#"{"type": "Publish", "channel": "prices:A", "data": {"p":2}, "key": "k"}"#,
            false,
        ),
        (
            r#"{"type":"Publish","channel":"prices:A","data":{"p":2e0},"key":"k"}"#,
            false,
        ),
    ] {
        let read_at = Instant::now();
        match core.on_message(text(frame), read_at) {
            Ok(Step::Publish { body, at, .. }) => {
                assert_eq!(body.channel(), "prices:A");
                assert!(body.data() == "{\"p\":2}" || body.data() == "{\"p\":2e0}");
                assert_eq!(body.key(), Some("k"));
                assert_eq!(
                    matches!(body, PublishBody::InFrame { .. }),
                    in_place,
                    "{frame}"
                );
                assert_eq!(at, read_at);
            }
            _ => panic!("expected a publication for the broker: {frame}"),
        }
    }
    // Checks hold in place too: a bad key, a bad channel.
    let long_key = format!(
        r#"{{"type":"Publish","channel":"prices:A","data":1,"id":4,"key":"{}"}}"#,
        "k".repeat(ws_protocol::MAX_IDEMPOTENCY_KEY_LEN + 1)
    );
    let refused = reply(core.on_message(text(&long_key), Instant::now()));
    assert_eq!(error_code(&refused), codes::BAD_REQUEST);
    assert!(matches!(refused, WsMessage::Error { id: Some(4), .. }));
    let long_channel = format!(
        r#"{{"type":"Publish","channel":"{}","data":1}}"#,
        "c".repeat(ws_protocol::MAX_CHANNEL_NAME_LEN + 1)
    );
    let bad = core.on_message(text(&long_channel), Instant::now());
    assert_eq!(error_code(&reply(bad)), codes::INVALID_CHANNEL);
    // Data the decoder refuses is answered with the publication's id where it can be read,
    // so that the client's pending publish ends with the refusal; unreadable JSON has none.
    for (frame, id) in [
        (
            r#"{"type":"Publish","channel":"p","data":{"px":1e400},"id":11}"#,
            Some(11),
        ),
        (
            r#"{"id":12,"data":[1e999],"channel":"p","type":"Publish"}"#,
            Some(12),
        ),
        (
            r#"{"type":"Publish","channel":"p","data":{"px":},"id":13}"#,
            None,
        ),
        (r#"{"type":"Subscribe","channels":[1],"id":14}"#, None),
    ] {
        match reply(core.on_message(text(frame), Instant::now())) {
            WsMessage::Error { code, id: got, .. } => {
                assert_eq!(code, codes::BAD_REQUEST, "{frame}");
                assert_eq!(got, id, "{frame}");
            }
            other => panic!("expected an error for {frame}, got {}", other.kind()),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_token_only_ping_is_served_until_the_auth_deadline_ends_it() {
    let mut config = WebSocketConfig::default();
    config.auth_timeout = Duration::from_secs(5);
    let hub = hub(config, true);
    let start = Instant::now();
    let mut core = connect(&hub, true);
    assert_eq!(core.next_wake(), start + Duration::from_secs(5));
    let refused = subscribe(&mut core, &["prices:A"]).await;
    assert_eq!(error_code(&refused), codes::UNAUTHORIZED);
    // A publication read in place is refused the same way, answered with its id.
    let publish = reply(core.on_message(
        text(r#"{"type":"Publish","channel":"prices:A","data":1,"id":9}"#),
        Instant::now(),
    ));
    assert_eq!(error_code(&publish), codes::UNAUTHORIZED);
    assert!(matches!(publish, WsMessage::Error { id: Some(9), .. }));
    assert!(matches!(
        reply(core.on_message(text(r#"{"type":"Ping"}"#), Instant::now())),
        WsMessage::Pong
    ));
    tokio::time::advance(Duration::from_secs(5)).await;
    match core.on_timer(Instant::now()) {
        Err(End::Unauthorized(why)) => assert!(why.contains("in time"), "{why}"),
        _ => panic!("the auth deadline must end the connection"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_grants_until_it_expires_and_a_bad_one_ends_the_connection() {
    let hub = hub(WebSocketConfig::default(), true);
    let mut core = connect(&hub, true);
    let claims =
        serde_json::json!({"sub": "alice", "exp": unix_now() + 60, "channels": ["prices:*"]});
    let frame = serde_json::json!({"type": "Authenticate", "token": token(claims)}).to_string();
    let authenticated = reply(core.on_message(text(&frame), Instant::now()));
    assert!(matches!(authenticated, WsMessage::Authenticated { user_id } if user_id == "alice"));
    assert!(matches!(
        subscribe(&mut core, &["prices:A"]).await,
        WsMessage::Subscribed { .. }
    ));
    let forbidden = subscribe(&mut core, &["orders:A"]).await;
    assert_eq!(error_code(&forbidden), codes::FORBIDDEN);

    // A new token that no longer allows the channel withdraws it, and says so.
    let narrower =
        serde_json::json!({"sub": "alice", "exp": unix_now() + 60, "channels": ["fills:*"]});
    let frame = serde_json::json!({"type": "Authenticate", "token": token(narrower)}).to_string();
    match core.on_message(text(&frame), Instant::now()) {
        Ok(Step::Replies(replies)) => {
            assert_eq!(replies.len(), 2);
            let withdrawn = WsMessage::from_json(&replies[1]).unwrap();
            assert_eq!(error_code(&withdrawn), codes::FORBIDDEN);
        }
        _ => panic!("expected Authenticated and the withdrawn channels"),
    }
    assert!(core.subscriptions.is_empty());

    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(core.next_wake() <= Instant::now());
    assert!(matches!(core.on_timer(Instant::now()), Err(End::Expired)));

    let frame = r#"{"type":"Authenticate","token":"not.a.token"}"#;
    assert!(matches!(
        core.on_message(text(frame), Instant::now()),
        Err(End::Unauthorized(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_control_frames_is_refused_then_ended_with_1008() {
    let mut config = WebSocketConfig::default();
    config.rate_limit = 10.0;
    config.rate_limit_burst = 10;
    let hub = hub(config, false);
    let mut core = connect(&hub, false);
    let mut refused = None;
    let mut ended = false;
    for n in 0..100_000 {
        match core.on_message(text(r#"{"type":"Ping"}"#), Instant::now()) {
            Ok(Step::Reply(json)) => {
                let message = WsMessage::from_json(&json).unwrap();
                if let WsMessage::Error { code, .. } = &message {
                    assert_eq!(code, codes::RATE_LIMITED);
                    refused.get_or_insert(n);
                }
            }
            Ok(_) => {}
            Err(End::Abuse) => {
                ended = true;
                break;
            }
            Err(end) => panic!("unexpected end: {end}"),
        }
    }
    assert_eq!(
        refused,
        Some(10),
        "the burst is served, the next frame refused"
    );
    assert!(ended, "a connection that keeps flooding is ended");
    // The flood's own budget is separate from publications': a publisher is not refused
    // because of control frames (checked on a fresh connection).
    let mut publisher = connect(&hub, false);
    for _ in 0..100 {
        let step = publisher.on_message(
            text(r#"{"type":"Publish","channel":"p","data":1}"#),
            Instant::now(),
        );
        assert!(matches!(step, Ok(Step::Publish { .. })));
    }
}

#[tokio::test(start_paused = true)]
async fn silence_ends_with_idle_and_the_timer_pings_meanwhile() {
    let mut config = WebSocketConfig::default();
    config.ping_interval = Duration::from_secs(10);
    config.idle_timeout = Duration::from_secs(25);
    let hub = hub(config, false);
    let mut core = connect(&hub, false);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(core.next_wake(), Instant::now());
    assert!(matches!(core.on_timer(Instant::now()), Ok(Step::Ping)));
    // A frame from the client resets the idle clock.
    core.on_message(Message::Pong(Default::default()), Instant::now())
        .map(|_| ())
        .unwrap_or_else(|end| panic!("{end}"));
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(matches!(core.on_timer(Instant::now()), Ok(Step::Ping)));
    tokio::time::advance(Duration::from_secs(15)).await;
    assert!(matches!(core.on_timer(Instant::now()), Err(End::Idle)));
}

#[tokio::test(start_paused = true)]
async fn the_outbox_decides_slow_consumer_drain_and_shutdown_ends() {
    let mut config = WebSocketConfig::default();
    config.send_queue_size = 4;
    config.slow_consumer_policy = SlowConsumerPolicy::Disconnect;
    let hub = hub(config, false);
    let mut core = connect(&hub, false);
    subscribe(&mut core, &["prices:A"]).await;
    assert!(core.outbox_end().is_none());
    let data = serde_json::value::RawValue::from_string("1".to_owned()).unwrap();
    for _ in 0..5 {
        hub.publish("prices:A", data.get(), None)
            .await
            .expect("published");
    }
    assert!(matches!(core.outbox_end(), Some(End::SlowConsumer)));

    let draining = connect(&hub, false);
    draining.outbox.close_as(OutboxState::Restart);
    assert!(matches!(draining.outbox_end(), Some(End::Restart)));
    let stopping = connect(&hub, false);
    hub.connections.close_all();
    assert!(matches!(stopping.outbox_end(), Some(End::Shutdown)));
}

#[tokio::test(start_paused = true)]
async fn application_frames_go_to_the_task_and_hub_frames_are_refused() {
    let hub = hub(WebSocketConfig::default(), false);
    let mut core = connect(&hub, false);
    let price = r#"{"type":"PriceUpdate","input_mint":"a","output_mint":"b","price":1.5,"volume":1,"timestamp":1}"#;
    assert!(matches!(
        core.on_message(text(price), Instant::now()),
        Ok(Step::Forward(WsMessage::PriceUpdate { .. }))
    ));
    let refused = WsMessage::from_json(&core.forward_refused("PriceUpdate")).unwrap();
    assert_eq!(error_code(&refused), codes::UNSUPPORTED);
    let subscribed = r#"{"type":"Subscribed","channels":[],"positions":{}}"#;
    let hubs_frame = reply(core.on_message(text(subscribed), Instant::now()));
    assert_eq!(error_code(&hubs_frame), codes::UNSUPPORTED);
}
