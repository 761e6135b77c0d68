//! The hub over real sockets, driven by a plain tokio-tungstenite client.

use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use integration_tests::{RawClient, eventually, spawn_server, within};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use ws_protocol::{Payload, SlowConsumerPolicy, WsMessage, close, codes};
use ws_server::{Published, WebSocketServer};

fn publication(message: WsMessage) -> Result<(String, u64, Payload)> {
    match message {
        WsMessage::Publication { channel, seq, data } => Ok((channel, seq, data)),
        other => bail!("expected a Publication, got {other:?}"),
    }
}

#[tokio::test]
async fn the_first_frame_is_connected_with_distinct_ids() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let a = RawClient::connect(server.local_addr()).await?;
    let b = RawClient::connect(server.local_addr()).await?;
    assert_ne!(a.connection_id, b.connection_id);
    eventually("two connections", || server.connection_count() == 2).await?;
    Ok(())
}

#[tokio::test]
async fn publications_reach_only_subscribers_in_order_with_consecutive_seq() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let addr = server.local_addr();
    let mut prices = RawClient::connect(addr).await?;
    let mut accounts = RawClient::connect(addr).await?;
    let mut bystander = RawClient::connect(addr).await?;
    let mut publisher = RawClient::connect(addr).await?;
    prices.subscribe(&["prices:SOL-USDC"]).await?;
    accounts.subscribe(&["accounts"]).await?;

    for i in 0..200 {
        publisher
            .publish("prices:SOL-USDC", &format!(r#"{{"i":{i}}}"#))
            .await?;
    }
    for i in 0..200u64 {
        let (channel, seq, data) = publication(prices.recv().await?)?;
        assert_eq!(channel, "prices:SOL-USDC");
        assert_eq!(seq, i + 1);
        assert_eq!(data.as_str(), format!(r#"{{"i":{i}}}"#));
    }
    // The other two received nothing of it: their next frame is the answer to something else.
    publisher.publish("accounts", r#""a""#).await?;
    assert_eq!(publication(accounts.recv().await?)?.1, 1);
    bystander.send(&WsMessage::Ping).await?;
    assert_eq!(bystander.recv().await?, WsMessage::Pong);
    publisher.send(&WsMessage::Ping).await?;
    assert_eq!(publisher.recv().await?, WsMessage::Pong);
    Ok(())
}

#[tokio::test]
async fn the_server_publishes_and_broadcasts() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let mut a = RawClient::connect(server.local_addr()).await?;
    let mut b = RawClient::connect(server.local_addr()).await?;
    a.subscribe(&["news"]).await?;
    eventually("both connected", || server.connection_count() == 2).await?;

    let sent = server
        .publish("news", &serde_json::json!({"headline": "up"}))
        .await?;
    assert_eq!(
        sent,
        Published {
            duplicate: Default::default(),
            seq: 1,
            recipients: Some(1)
        }
    );
    let (_, seq, data) = publication(a.recv().await?)?;
    assert_eq!((seq, data.as_str()), (1, r#"{"headline":"up"}"#));

    let price = WsMessage::PriceUpdate {
        input_mint: "SOL".into(),
        output_mint: "USDC".into(),
        price: 101.5,
        volume: 3,
        timestamp: 1,
    };
    assert_eq!(server.broadcast(&price)?, 2);
    assert_eq!(a.recv().await?, price);
    assert_eq!(b.recv().await?, price);
    // Nobody receives it now, but the channel's history keeps it (seq 1) for recovery.
    assert_eq!(
        server.publish("nobody-listens", &1).await?,
        Published {
            duplicate: Default::default(),
            seq: 1,
            recipients: Some(0)
        }
    );
    Ok(())
}

#[tokio::test]
async fn pings_get_pongs_at_both_levels() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let mut client = RawClient::connect(server.local_addr()).await?;
    client.send_text(r#"{"type":"Ping"}"#).await?;
    assert_eq!(client.recv().await?, WsMessage::Pong);
    within("ping", client.ws.send(Message::Ping(b"hello"[..].into()))).await??;
    match client.next_frame().await? {
        Message::Pong(payload) => assert_eq!(&payload[..], b"hello"),
        other => bail!("expected a protocol pong, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_lives_on() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let mut client = RawClient::connect(server.local_addr()).await?;
    for (frame, code, names) in [
        ("{not json", codes::BAD_REQUEST, "malformed"),
        (r#"{"channels":[]}"#, codes::BAD_REQUEST, "type"),
        (r#"{"type":"Teleport"}"#, codes::UNKNOWN_TYPE, "Teleport"),
        (r#"{"type":"Subscribe"}"#, codes::BAD_REQUEST, "channels"),
        (
            r#"{"type":"Subscribe","channels":[""]}"#,
            codes::INVALID_CHANNEL,
            "channel",
        ),
        (
            r#"{"type":"Publication","channel":"a","seq":1,"data":1}"#,
            codes::UNSUPPORTED,
            "Publication",
        ),
        (
            r#"{"type":"PriceUpdate","input_mint":"A","output_mint":"B","price":1.0,"volume":1,"timestamp":1}"#,
            codes::UNSUPPORTED,
            "PriceUpdate",
        ),
    ] {
        client.send_text(frame).await?;
        match client.recv().await? {
            WsMessage::Error {
                code: got, message, ..
            } => {
                assert_eq!(got, code, "{frame}: {message}");
                assert!(message.contains(names), "{frame}: {message}");
            }
            other => bail!("{frame}: expected Error, got {other:?}"),
        }
    }
    within("binary", client.ws.send(Message::binary(vec![1, 2, 3]))).await??;
    assert!(
        matches!(client.recv().await?, WsMessage::Error { code, .. } if code == codes::BAD_REQUEST)
    );
    client.subscribe(&["still-works"]).await?;
    assert_eq!(server.connection_count(), 1);
    Ok(())
}

#[tokio::test]
async fn an_oversized_frame_gets_close_1009() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().max_message_size(1024)).await?;
    let mut bystander = RawClient::connect(server.local_addr()).await?;
    bystander.subscribe(&["x"]).await?;
    let mut client = RawClient::connect(server.local_addr()).await?;
    client
        .send_text(&format!(
            r#"{{"type":"Publish","channel":"x","data":"{}"}}"#,
            "a".repeat(4096)
        ))
        .await?;
    let frame = client
        .close_frame()
        .await?
        .expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), close::MESSAGE_TOO_BIG);
    assert!(frame.reason.contains("1024"), "{}", frame.reason);
    // Nothing of it was published, and the other connection is untouched.
    server.publish("x", &"after").await?;
    assert_eq!(publication(bystander.recv().await?)?.1, 1);
    eventually("the oversized connection is gone", || {
        server.connection_count() == 1
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_slow_consumer_is_cut_while_a_fast_one_receives_everything() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().send_queue_size(64)).await?;
    let addr = server.local_addr();
    let mut fast = RawClient::connect(addr).await?;
    let mut slow = RawClient::connect_with_small_receive_buffer(addr).await?;
    fast.subscribe(&["feed"]).await?;
    slow.subscribe(&["feed"]).await?;

    let payload = "x".repeat(1000);
    let total = 20_000u64;
    let mut slow_cut_after = None;
    for chunk in 0..total / 50 {
        for _ in 0..50 {
            server.publish("feed", &payload).await?;
        }
        // The fast reader keeps up with every chunk before the next is published.
        for i in 0..50 {
            assert_eq!(publication(fast.recv().await?)?.1, chunk * 50 + i + 1);
        }
        if slow_cut_after.is_none() && server.connection_count() == 1 {
            slow_cut_after = Some((chunk + 1) * 50);
        }
    }
    let cut_after = slow_cut_after.expect("the slow consumer was cut");
    assert!(cut_after < total, "cut after {cut_after}");

    // The slow client, reading at last, finds its stream ended; if the hub's goodbye got
    // through, it says slow_consumer and 1008.
    let mut frames = 0u64;
    let ended = within("the slow stream to end", async {
        loop {
            match slow.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    if let Ok(WsMessage::Error { code, .. }) = WsMessage::from_json(text.as_str()) {
                        assert_eq!(code, codes::SLOW_CONSUMER);
                    }
                    frames += 1;
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    assert_eq!(u16::from(frame.code), close::POLICY_VIOLATION);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    })
    .await;
    ended?;
    assert!(frames < total, "the slow client got {frames} frames");
    Ok(())
}

#[tokio::test]
async fn a_cut_slow_consumer_that_reads_again_gets_whole_frames_then_the_error_and_1008()
-> Result<()> {
    let server = spawn_server(WebSocketServer::builder().send_queue_size(8)).await?;
    let mut slow = RawClient::connect_with_small_receive_buffer(server.local_addr()).await?;
    slow.subscribe(&["feed"]).await?;
    // Fill its socket and its queue while it does not read, until the hub cuts it.
    let payload = "x".repeat(3000);
    within("the cut", async {
        for _ in 0..100_000 {
            if server.connection_count() == 0 {
                return Ok(());
            }
            server.publish("feed", &payload).await?;
            tokio::task::yield_now().await;
        }
        bail!("never cut")
    })
    .await??;
    // Reading again within the hub's close timeout: every frame arrives whole (the hub
    // finishes a frame it had half written), in order, then the error and the close.
    let (mut expected_seq, mut error_seen) = (1u64, false);
    let close = within("the goodbye", async {
        loop {
            match slow.ws.next().await {
                Some(Ok(Message::Text(text))) => match WsMessage::from_json(text.as_str())? {
                    WsMessage::Publication { seq, .. } if !error_seen => {
                        assert_eq!(seq, expected_seq);
                        expected_seq += 1;
                    }
                    WsMessage::Error { code, .. } => {
                        assert_eq!(code, codes::SLOW_CONSUMER);
                        error_seen = true;
                    }
                    other => bail!("unexpected {other:?}"),
                },
                Some(Ok(Message::Close(frame))) => return Ok(frame),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the stream broke after seq {expected_seq}: {e}"),
                None => bail!("no close frame"),
            }
        }
    })
    .await??;
    assert!(error_seen, "the slow_consumer error came first");
    assert_eq!(
        close.map(|f| u16::from(f.code)),
        Some(close::POLICY_VIOLATION)
    );
    Ok(())
}

#[tokio::test]
async fn drop_oldest_tells_the_client_how_many_it_missed() -> Result<()> {
    let server = spawn_server(
        WebSocketServer::builder()
            .send_queue_size(16)
            .slow_consumer_policy(SlowConsumerPolicy::DropOldest),
    )
    .await?;
    let mut slow = RawClient::connect_with_small_receive_buffer(server.local_addr()).await?;
    slow.subscribe(&["feed"]).await?;
    let total = 5_000u64;
    let payload = "y".repeat(1000);
    for _ in 0..total {
        server.publish("feed", &payload).await?;
        tokio::task::yield_now().await;
    }
    // Every publication is either delivered, in seq order, or counted in a Lagged frame.
    let (mut delivered, mut missed, mut last_seq) = (0u64, 0u64, 0u64);
    while delivered + missed < total {
        match slow.recv().await? {
            WsMessage::Publication { seq, .. } => {
                assert!(seq > last_seq, "seq {seq} after {last_seq}");
                last_seq = seq;
                delivered += 1;
            }
            WsMessage::Lagged { channel, missed: n } => {
                assert_eq!(channel, "feed");
                missed += n;
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered + missed, total);
    assert!(
        missed > 0,
        "nothing was dropped; the test did not fill the queue"
    );
    assert_eq!(last_seq, total);
    assert_eq!(server.connection_count(), 1);
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_every_client_with_1001() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let mut a = RawClient::connect(server.local_addr()).await?;
    let mut b = RawClient::connect(server.local_addr()).await?;
    a.subscribe(&["x"]).await?;
    within("shutdown", server.shutdown()).await?;
    for client in [&mut a, &mut b] {
        let frame = client
            .close_frame()
            .await?
            .expect("a close frame with a code");
        assert_eq!(frame.code, CloseCode::Away);
    }
    assert_eq!(server.connection_count(), 0);
    assert_eq!(server.channel_count(), 0);
    assert!(RawClient::connect(server.local_addr()).await.is_err());
    Ok(())
}

#[tokio::test]
async fn unsubscribe_and_disconnect_leave_no_residue() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let mut a = RawClient::connect(server.local_addr()).await?;
    let mut b = RawClient::connect(server.local_addr()).await?;
    a.subscribe(&["one", "two"]).await?;
    b.subscribe(&["two"]).await?;
    assert_eq!(server.channel_count(), 2);
    a.send(&WsMessage::Unsubscribe {
        channels: vec!["one".into()],
    })
    .await?;
    assert_eq!(
        a.recv().await?,
        WsMessage::Unsubscribed {
            channels: vec!["one".into()]
        }
    );
    assert_eq!(server.channel_count(), 1);
    assert_eq!(server.publish("one", &1).await?.recipients, Some(0));
    drop(a);
    eventually("a's subscriptions are gone", || {
        server.subscription_count() == 1
    })
    .await?;
    drop(b);
    eventually("everything is gone", || {
        server.connection_count() == 0 && server.channel_count() == 0
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() -> Result<()> {
    let server = spawn_server(
        WebSocketServer::builder()
            .idle_timeout(Duration::from_millis(300))
            .ping_interval(Duration::from_secs(60)),
    )
    .await?;
    let mut client = RawClient::connect(server.local_addr()).await?;
    let frame = client
        .close_frame()
        .await?
        .expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), close::NORMAL);
    assert_eq!(frame.reason.as_str(), "idle timeout");
    Ok(())
}

#[tokio::test]
async fn the_hub_pings_and_a_pong_keeps_the_connection_alive() -> Result<()> {
    let server = spawn_server(
        WebSocketServer::builder()
            .idle_timeout(Duration::from_millis(400))
            .ping_interval(Duration::from_millis(100)),
    )
    .await?;
    let mut client = RawClient::connect(server.local_addr()).await?;
    // Reading lets tungstenite answer each ping; well past the idle timeout we are still open.
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    while tokio::time::Instant::now() < deadline {
        if let Ok(frame) = tokio::time::timeout_at(deadline, client.next_frame()).await {
            match frame? {
                Message::Ping(_) => pings += 1,
                other => bail!("unexpected {other:?}"),
            }
        }
    }
    assert!(pings >= 5, "{pings} pings");
    assert_eq!(server.connection_count(), 1);
    Ok(())
}

#[tokio::test]
async fn the_application_receives_client_messages() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let mut incoming = server.incoming();
    let mut client = RawClient::connect(server.local_addr()).await?;
    let update = WsMessage::AccountUpdate {
        pubkey: "k".into(),
        lamports: 1,
        slot: 2,
        timestamp: 3,
    };
    client.send(&update).await?;
    let (from, message) = within("incoming", incoming.recv())
        .await?
        .expect("a message");
    assert_eq!(from.get(), client.connection_id);
    assert_eq!(message, update);
    server.send_to(from, &WsMessage::Pong)?;
    assert_eq!(client.recv().await?, WsMessage::Pong);
    drop(incoming);
    client.send(&update).await?;
    assert!(
        matches!(client.recv().await?, WsMessage::Error { code, .. } if code == codes::UNSUPPORTED)
    );
    Ok(())
}

#[tokio::test]
async fn upgrades_past_the_connection_limit_get_503() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().max_connections(1)).await?;
    let _first = RawClient::connect(server.local_addr()).await?;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}", server.local_addr())).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
        }
        other => bail!("expected HTTP 503, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn dropping_the_last_handle_closes_every_client() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let mut client = RawClient::connect(server.local_addr()).await?;
    client.subscribe(&["x"]).await?;
    let clone = server.clone();
    drop(server);
    // A clone keeps it running.
    client.send(&WsMessage::Ping).await?;
    assert_eq!(client.recv().await?, WsMessage::Pong);
    drop(clone);
    let frame = client
        .close_frame()
        .await?
        .expect("a close frame with a code");
    assert_eq!(frame.code, CloseCode::Away);
    Ok(())
}

#[tokio::test]
async fn history_is_bounded_under_a_flood_and_replays_only_what_it_holds() -> Result<()> {
    let server =
        spawn_server(WebSocketServer::builder().history(100, Duration::from_secs(60))).await?;
    let mut first = RawClient::connect(server.local_addr()).await?;
    first
        .send(&WsMessage::Subscribe {
            rewind: None,
            channels: vec!["flood".into()],
            since: Default::default(),
        })
        .await?;
    let epoch = match first.recv().await? {
        WsMessage::Subscribed { positions, .. } => positions["flood"].epoch.clone(),
        other => bail!("expected Subscribed, got {other:?}"),
    };
    for n in 0..10_000 {
        server.publish("flood", &n).await?;
    }
    let ask = |seq: u64| WsMessage::Subscribe {
        rewind: None,
        channels: vec!["flood".into()],
        since: [(
            "flood".to_owned(),
            ws_protocol::Position {
                epoch: epoch.clone(),
                seq,
            },
        )]
        .into(),
    };
    // Too far back: only the last 100 are kept.
    let mut late = RawClient::connect(server.local_addr()).await?;
    late.send(&ask(1)).await?;
    match late.recv().await? {
        WsMessage::Subscribed { positions, .. } => {
            assert_eq!(
                (positions["flood"].seq, positions["flood"].recovered),
                (10_000, false)
            );
        }
        other => bail!("expected Subscribed, got {other:?}"),
    }
    // Within reach: exactly the 50 missed, in order, then live ones.
    let mut recovering = RawClient::connect(server.local_addr()).await?;
    recovering.send(&ask(9_950)).await?;
    assert!(
        matches!(recovering.recv().await?, WsMessage::Subscribed { positions, .. } if positions["flood"].recovered)
    );
    for seq in 9_951..=10_000 {
        assert_eq!(publication(recovering.recv().await?)?.1, seq);
    }
    server.publish("flood", &"live").await?;
    assert_eq!(publication(recovering.recv().await?)?.1, 10_001);
    // Already subscribed, a client that noticed a gap asks again: the hub replays from
    // there (the client drops what it already has), and the subscription stays one.
    let subscriptions = server.subscription_count();
    recovering.send(&ask(9_990)).await?;
    match recovering.recv().await? {
        WsMessage::Subscribed { positions, .. } => {
            assert_eq!(
                (positions["flood"].seq, positions["flood"].recovered),
                (10_001, true)
            );
        }
        other => bail!("expected Subscribed, got {other:?}"),
    }
    for seq in 9_991..=10_001 {
        assert_eq!(publication(recovering.recv().await?)?.1, seq);
    }
    assert_eq!(server.subscription_count(), subscriptions);
    Ok(())
}
