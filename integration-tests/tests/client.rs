//! Our client against our hub (and against plain servers), over real sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use integration_tests::proxy::TcpProxy;
use integration_tests::{RawClient, eventually, spawn_server, within};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use ws_client::{ConnectionState, Error, Event, OutboundFrame, WebSocketClient};
use ws_protocol::WsMessage;
use ws_server::WebSocketServer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tick {
    n: u64,
}

fn fast_client(addr: SocketAddr) -> ws_client::ClientBuilder {
    WebSocketClient::builder()
        .url(format!("ws://{addr}"))
        .reconnect_interval(Duration::from_millis(50))
        .max_reconnect_delay(Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(2))
}

async fn wait_for_state(
    client: &WebSocketClient,
    what: &str,
    wanted: impl Fn(&ConnectionState) -> bool,
) -> Result<()> {
    let mut changes = client.state_changes();
    within(what, async {
        while let Some(state) = changes.next().await {
            if wanted(&state) {
                return;
            }
        }
    })
    .await
}

/// The next publication, skipping connection events.
async fn next_publication(client: &WebSocketClient) -> Result<(String, u64, ws_protocol::Payload)> {
    loop {
        match within("event", client.next_event()).await? {
            Some(Event::Publication { channel, seq, data }) => return Ok((channel, seq, data)),
            Some(Event::Connected { .. } | Event::Disconnected { .. }) => {}
            other => bail!("expected a publication, got {other:?}"),
        }
    }
}

/// A client reaching `server` through a [`TcpProxy`], with a heartbeat fast enough to notice
/// a frozen proxy within half a second.
async fn behind_a_proxy(server: &WebSocketServer) -> Result<(TcpProxy, WebSocketClient)> {
    let proxy = TcpProxy::start(server.local_addr()).await?;
    let client = fast_client(proxy.addr())
        .ping_interval(Duration::from_millis(100))
        .pong_timeout(Duration::from_millis(300))
        .build()
        .await?;
    Ok((proxy, client))
}

#[tokio::test]
async fn connects_and_receives_a_broadcast() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let client = WebSocketClient::connect(format!("ws://{}", server.local_addr())).await?;
    assert_eq!(client.state(), ConnectionState::Connected);
    eventually("the hub sees the client", || server.connection_count() == 1).await?;
    server.broadcast(&Tick { n: 7 })?;
    assert_eq!(
        within("receive", client.receive::<Tick>()).await??,
        Some(Tick { n: 7 })
    );
    Ok(())
}

#[tokio::test]
async fn subscribes_and_receives_publications_in_order() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let client = WebSocketClient::connect(format!("ws://{}", server.local_addr())).await?;
    within("subscribe", client.subscribe(["ticks"])).await??;
    // Subscribed means in effect: a publish right now reaches us.
    for n in 0..100 {
        assert_eq!(
            server.publish("ticks", &Tick { n }).await?.recipients,
            Some(1)
        );
    }
    for n in 0..100 {
        let (channel, seq, data) = next_publication(&client).await?;
        assert_eq!((channel.as_str(), seq), ("ticks", n + 1));
        assert_eq!(data.decode::<Tick>()?, Tick { n });
    }
    client.unsubscribe(["ticks"]).await?;
    eventually("the channel is gone", || server.channel_count() == 0).await?;
    Ok(())
}

#[tokio::test]
async fn reconnects_after_server_restart_resubscribes_and_flushes_the_buffer_in_order() -> Result<()>
{
    let server = spawn_server(WebSocketServer::builder()).await?;
    let addr = server.local_addr();
    let client = fast_client(addr).build().await?;
    client.subscribe(["prices"]).await?;

    within("shutdown", server.shutdown()).await?;
    drop(server);
    wait_for_state(&client, "reconnecting", |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await?;
    // Sent while the hub is down: buffered, then delivered first, in order.
    for n in 0..20 {
        client
            .send(&WsMessage::AccountUpdate {
                pubkey: "k".into(),
                lamports: n,
                slot: n,
                timestamp: 0,
            })
            .await?;
    }

    let server = WebSocketServer::bind(addr).await?;
    let mut incoming = server.incoming();
    for n in 0..20 {
        let (_, message) = within("buffered message", incoming.recv())
            .await?
            .expect("a message");
        assert!(
            matches!(message, WsMessage::AccountUpdate { lamports, .. } if lamports == n),
            "{message:?}"
        );
    }
    // The subscription came back by itself.
    eventually("resubscribed", || server.channel_count() == 1).await?;
    server.publish("prices", &Tick { n: 1 }).await?;
    // A restarted hub has lost its history: the client says so before the new publications.
    let mut unrecovered = false;
    let data = loop {
        match within("event", client.next_event())
            .await?
            .expect("an event")
        {
            Event::Publication { data, .. } => break data,
            Event::Unrecovered { channel, .. } => {
                assert_eq!(channel, "prices");
                unrecovered = true;
            }
            Event::Connected { .. } | Event::Disconnected { .. } => {}
            other => bail!("unexpected {other:?}"),
        }
    };
    assert!(unrecovered, "the lost history was not reported");
    assert_eq!(data.decode::<Tick>()?, Tick { n: 1 });
    let metrics = client.metrics();
    assert_eq!(metrics.reconnects, 1);
    assert!(metrics.messages_sent >= 21, "{metrics:?}");
    assert_eq!(client.state(), ConnectionState::Connected);
    Ok(())
}

#[tokio::test]
async fn a_full_buffer_refuses_at_once_and_gives_the_message_back() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let client = fast_client(server.local_addr())
        .message_buffer_size(3)
        .reconnect_interval(Duration::from_secs(30))
        .max_reconnect_delay(Duration::from_secs(30))
        .build()
        .await?;
    within("shutdown", server.shutdown()).await?;
    wait_for_state(&client, "reconnecting", |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await?;
    for n in 0..3 {
        client.send(&Tick { n }).await?;
    }
    match client.send(&Tick { n: 3 }).await {
        Err(Error::BufferFull(OutboundFrame::Text(text))) => assert_eq!(text, r#"{"n":3}"#),
        other => bail!("expected BufferFull, got {other:?}"),
    }
    assert_eq!(client.metrics().buffered, 3);
    Ok(())
}

#[tokio::test]
async fn a_frozen_proxy_is_detected_by_the_heartbeat_and_replaced() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let (proxy, client) = behind_a_proxy(&server).await?;
    client.subscribe(["feed"]).await?;
    proxy.freeze_existing();
    wait_for_state(&client, "reconnecting", |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await?;
    wait_for_state(&client, "connected again", |s| {
        *s == ConnectionState::Connected
    })
    .await?;
    assert!(proxy.connections() >= 2);
    // The new connection carries the restored subscription. The frozen one may still count as
    // a subscriber on the hub until its idle timeout, so wait for one that delivers.
    eventually("a subscriber per connection", || {
        server.channel_count() == 1
    })
    .await?;
    server.publish("feed", &Tick { n: 9 }).await?;
    assert_eq!(
        within("receive", client.receive::<Tick>()).await??,
        Some(Tick { n: 9 })
    );
    eventually("a measured round trip", || {
        client.metrics().last_rtt.is_some()
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn max_reconnect_attempts_ends_in_failed() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let client = fast_client(server.local_addr())
        .max_reconnect_attempts(2)
        .build()
        .await?;
    within("shutdown", server.shutdown()).await?;
    drop(server);
    wait_for_state(&client, "failed", |s| {
        matches!(s, ConnectionState::Failed { .. })
    })
    .await?;
    match client.state() {
        ConnectionState::Failed { reason } => {
            assert!(reason.contains("2 reconnect attempts"), "{reason}");
        }
        other => bail!("{other:?}"),
    }
    assert!(matches!(
        within("receive", client.receive::<Tick>()).await?,
        Err(Error::Failed(_))
    ));
    assert!(matches!(
        client.send(&Tick { n: 0 }).await,
        Err(Error::Failed(_))
    ));
    assert!(matches!(
        client.subscribe(["x"]).await,
        Err(Error::Failed(_))
    ));
    Ok(())
}

#[tokio::test]
async fn jittered_reconnect_delays_differ_between_clients_and_stay_within_bounds() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let addr = server.local_addr();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(
            fast_client(addr)
                .reconnect_interval(Duration::from_millis(400))
                .max_reconnect_delay(Duration::from_millis(400))
                .build()
                .await?,
        );
    }
    eventually("all connected", || server.connection_count() == 8).await?;
    let before = tokio::time::Instant::now();
    within("shutdown", server.shutdown()).await?;
    drop(server);
    // Take the port back with a plain listener that records when each attempt arrives.
    let listener = TcpListener::bind(addr).await?;
    let mut offsets = Vec::new();
    within("first attempts", async {
        while offsets.len() < 8 {
            if let Ok((socket, _)) = listener.accept().await {
                offsets.push(before.elapsed());
                drop(socket);
            }
        }
    })
    .await?;
    // Each first delay is drawn from [200 ms, 400 ms] after the client saw the close.
    for offset in &offsets {
        assert!(*offset >= Duration::from_millis(200), "{offsets:?}");
        assert!(*offset <= Duration::from_millis(400 + 1000), "{offsets:?}");
    }
    let spread = offsets.iter().max().copied().unwrap_or_default()
        - offsets.iter().min().copied().unwrap_or_default();
    assert!(
        spread >= Duration::from_millis(20),
        "attempts not spread: {offsets:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_established_connection_that_drops_is_retried_within_the_first_retry_window()
-> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let addr = server.local_addr();
    // The backoff alone would wait 2.5 to 5 s before the first retry.
    let client = WebSocketClient::builder()
        .url(format!("ws://{addr}"))
        .reconnect_interval(Duration::from_secs(5))
        .backoff_reset_after(Duration::from_millis(100))
        .build()
        .await?;
    eventually("connected", || server.connection_count() == 1).await?;
    tokio::time::sleep(Duration::from_millis(150)).await; // established: up past 100 ms
    let before = tokio::time::Instant::now();
    within("shutdown", server.shutdown()).await?;
    drop(server);
    let listener = TcpListener::bind(addr).await?;
    within("first retry", listener.accept()).await??;
    let waited = before.elapsed();
    assert!(
        waited < Duration::from_millis(250 + 1000),
        "first retry after {waited:?}, not within the 250 ms window"
    );
    drop(client);
    Ok(())
}

#[tokio::test]
async fn a_strategy_skips_foreign_payloads_and_keeps_receiving_prices() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let client = WebSocketClient::connect(format!("ws://{}", server.local_addr())).await?;
    client.subscribe(["prices:SOL-USDC"]).await?;
    // Anyone may publish on the channel, such as the README's Python snippet: no `type`.
    server
        .publish("prices:SOL-USDC", &serde_json::json!({ "price": 187.42 }))
        .await?;
    let price: WsMessage = serde_json::from_str(
        r#"{"type":"PriceUpdate","input_mint":"SOL","output_mint":"USDC","price":187.5,"volume":3,"timestamp":1}"#,
    )?;
    server.publish("prices:SOL-USDC", &price).await?;
    // The README's strategy loop.
    let mut skipped = 0;
    let received = within("a price after a foreign payload", async {
        loop {
            match client.receive::<WsMessage>().await {
                Ok(Some(WsMessage::PriceUpdate { price, .. })) => return Ok(price),
                Ok(other) => bail!("unexpected {other:?}"),
                Err(Error::Decode { .. }) => skipped += 1,
                Err(fatal) => return Err(fatal.into()),
            }
        }
    })
    .await??;
    assert_eq!(received, 187.5);
    assert_eq!(skipped, 1);
    Ok(())
}

#[tokio::test]
async fn two_tasks_share_one_client() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let client = WebSocketClient::connect(format!("ws://{}", server.local_addr())).await?;
    client.subscribe(["loop"]).await?;
    let sender = client.clone();
    let sending = tokio::spawn(async move {
        for n in 0..500 {
            loop {
                match sender.publish("loop", &Tick { n }).await {
                    Ok(_) => break,
                    Err(Error::BufferFull(_)) => tokio::task::yield_now().await,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    });
    for n in 0..500 {
        assert_eq!(
            within("receive", client.receive::<Tick>()).await??,
            Some(Tick { n })
        );
    }
    within("sender", sending).await???;
    assert!(client.metrics().messages_received >= 500);
    Ok(())
}

#[tokio::test]
async fn close_sends_1000_and_leaves_no_task_running() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    eventually("server idle", || server.connection_count() == 0).await?;
    let runtime = tokio::runtime::Handle::current().metrics();
    let baseline = runtime.num_alive_tasks();
    let client = WebSocketClient::connect(format!("ws://{}", server.local_addr())).await?;
    client.subscribe(["x"]).await?;
    let other = client.clone();
    within("close", client.close()).await?;
    assert_eq!(client.state(), ConnectionState::Disconnected);
    within("the event stream to end", async {
        while other.next_event().await.is_some() {}
    })
    .await?;
    assert!(matches!(other.send(&1).await, Err(Error::Closed)));
    assert_eq!(within("receive", other.receive::<Tick>()).await??, None);
    eventually("the hub saw the close", || server.connection_count() == 0).await?;
    eventually("no client task is left", || {
        runtime.num_alive_tasks() <= baseline
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_policy_close_is_not_retried() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            if let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await {
                let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: 1008.into(),
                    reason: "forbidden".into(),
                };
                let _ = ws.send(Message::Close(Some(frame))).await;
                while ws.next().await.is_some() {}
            }
        }
    });
    let client = fast_client(addr)
        .protocol(ws_client::ServerProtocol::Raw)
        .build()
        .await?;
    wait_for_state(&client, "failed", |s| {
        matches!(s, ConnectionState::Failed { .. })
    })
    .await?;
    match client.state() {
        ConnectionState::Failed { reason } => assert!(reason.contains("1008"), "{reason}"),
        other => bail!("{other:?}"),
    }
    assert_eq!(client.metrics().reconnects, 0);
    Ok(())
}

#[tokio::test]
async fn a_server_that_drops_at_once_does_not_cause_a_tight_loop() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = accepted_tx.send(());
            if let Ok(ws) = tokio_tungstenite::accept_async(socket).await {
                drop(ws);
            }
        }
    });
    let client = WebSocketClient::builder()
        .url(format!("ws://{addr}"))
        .protocol(ws_client::ServerProtocol::Raw)
        .reconnect_interval(Duration::from_millis(50))
        .max_reconnect_delay(Duration::from_millis(400))
        .build()
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut count = 0;
    while accepted.try_recv().is_ok() {
        count += 1;
    }
    // 50, 100, 200, 400, 400 ms … (each jittered to half or more): at most about 12 in 1.5 s.
    assert!((3..=15).contains(&count), "{count} connections in 1.5 s");
    drop(client);
    Ok(())
}

/// A plain server that writes numbered frames as fast as the client takes them: under such
/// a flood the client reads burst after burst without going back to everything else its
/// connection does, so this checks that what the application sends still goes out while the
/// flood goes on, and that the flood arrives whole and in order.
#[tokio::test]
async fn a_flood_from_a_plain_server_does_not_hold_back_what_the_application_sends() -> Result<()> {
    const FLOOD: u64 = 5_000_000;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (heard_tx, heard_rx) = tokio::sync::oneshot::channel();
    let flooder = tokio::spawn(async move {
        let (socket, _) = listener.accept().await?;
        let (mut sink, mut stream) = tokio_tungstenite::accept_async(socket).await?.split();
        let sent = AtomicU64::new(0);
        // Until every frame went out or the client left.
        let flood = async {
            for n in 0..FLOOD {
                if sink.feed(Message::text(n.to_string())).await.is_err() {
                    return;
                }
                sent.store(n + 1, Ordering::Relaxed);
                if n % 64 == 63 && sink.flush().await.is_err() {
                    return;
                }
            }
            let _ = sink.flush().await;
        };
        // Tells how many frames had gone out when the application's frame came in.
        let heard = async {
            let mut heard_tx = Some(heard_tx);
            while let Some(Ok(frame)) = stream.next().await {
                if let Message::Text(text) = frame
                    && text.as_str() == "order"
                    && let Some(tx) = heard_tx.take()
                {
                    let _ = tx.send(sent.load(Ordering::Relaxed));
                }
            }
        };
        tokio::join!(flood, heard);
        anyhow::Ok(())
    });
    let client = WebSocketClient::builder()
        .url(format!("ws://{addr}"))
        .build()
        .await?;
    let mut next = 0u64;
    let mut read = |count: u64| {
        let client = client.clone();
        let start = next;
        next += count;
        async move {
            for n in start..start + count {
                let got = within("a flooded frame", client.receive::<u64>()).await??;
                if got != Some(n) {
                    bail!("expected frame {n}, got {got:?}");
                }
            }
            anyhow::Ok(())
        }
    };
    // The flood is on (the client has read what the socket and its queue held), then the
    // application sends while it goes on reading.
    read(20_000).await?;
    client.send_text("order").await?;
    let reading = tokio::spawn(read(20_000));
    let sent_then = within("the application's frame at the server", heard_rx).await??;
    within("reading on", reading).await???;
    assert!(
        sent_then < FLOOD,
        "the frame came in only after the flood ended ({sent_then} frames)"
    );
    client.close().await;
    within("the flooder", flooder).await???;
    Ok(())
}

#[tokio::test]
async fn a_plain_server_gets_its_own_subscribe_frame_after_every_reconnect() -> Result<()> {
    // A venue-like server: waits for {"op":"subscribe"}, sends three raw JSON ticks, then drops
    // the connection; it serves two connections.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let venue = tokio::spawn(async move {
        for round in 0..2u64 {
            let (socket, _) = listener.accept().await?;
            let mut ws = tokio_tungstenite::accept_async(socket).await?;
            let first = within("subscribe frame", ws.next()).await?;
            match first {
                Some(Ok(Message::Text(text)))
                    if serde_json::from_str::<serde_json::Value>(text.as_str())?
                        == serde_json::json!({"op": "subscribe", "args": ["SOL-USDC"]}) => {}
                other => bail!("round {round}: expected the subscribe frame, got {other:?}"),
            }
            for i in 0..3 {
                ws.send(Message::text(serde_json::to_string(&Tick {
                    n: round * 3 + i,
                })?))
                .await?;
            }
            ws.close(None).await?;
        }
        anyhow::Ok(())
    });
    let client = WebSocketClient::builder()
        .url(format!("ws://{addr}"))
        .on_connect(&serde_json::json!({"op": "subscribe", "args": ["SOL-USDC"]}))
        .reconnect_interval(Duration::from_millis(50))
        .build()
        .await?;
    for n in 0..6 {
        assert_eq!(
            within("receive", client.receive::<Tick>()).await??,
            Some(Tick { n })
        );
    }
    within("venue", venue).await???;
    assert!(matches!(
        client.subscribe(["x"]).await,
        Err(Error::Subscribe(_))
    ));
    assert!(client.metrics().reconnects >= 1);
    Ok(())
}

#[tokio::test]
async fn wss_with_a_custom_root_certificate() -> Result<()> {
    use std::sync::Arc;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let cert_pem = certified.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(anyhow::Error::msg)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                let _ = ws.send(Message::text(r#"{"n":42}"#)).await;
                while ws.next().await.is_some() {}
            });
        }
    });
    let url = format!("wss://localhost:{port}");
    // Without the root, the certificate is refused.
    assert!(matches!(
        WebSocketClient::connect(url.clone()).await,
        Err(Error::Connect { .. })
    ));
    let client = WebSocketClient::builder()
        .url(url)
        .add_root_certificate(cert_pem.as_bytes())
        .build()
        .await?;
    assert_eq!(
        within("receive", client.receive::<Tick>()).await??,
        Some(Tick { n: 42 })
    );
    Ok(())
}

#[tokio::test]
async fn server_errors_and_the_publish_path_round_trip() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let mut watcher = RawClient::connect(server.local_addr()).await?;
    watcher.subscribe(&["book"]).await?;
    let client = WebSocketClient::connect(format!("ws://{}", server.local_addr())).await?;
    client.publish_json("book", r#"{"bid":1.5}"#).await?;
    match watcher.recv().await? {
        WsMessage::Publication { data, .. } => assert_eq!(data.as_str(), r#"{"bid":1.5}"#),
        other => bail!("{other:?}"),
    }
    client.send_text("{broken").await?;
    loop {
        match within("event", client.next_event())
            .await?
            .expect("an event")
        {
            Event::ServerError { code, .. } => {
                assert_eq!(code, "bad_request");
                break;
            }
            Event::Connected { .. } => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_stale_feed_is_replaced() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let client = fast_client(server.local_addr())
        .stale_timeout(Duration::from_millis(300))
        .build()
        .await?;
    client.subscribe(["quiet"]).await?;
    // Nothing is published: the feed counts as stalled and the connection is replaced.
    eventually("a reconnect", || client.metrics().reconnects >= 1).await?;
    loop {
        match within("event", client.next_event())
            .await?
            .expect("an event")
        {
            Event::Disconnected { reason, .. } => {
                assert!(reason.contains("stale"), "{reason}");
                break;
            }
            Event::Connected { .. } => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    // After the replacement the subscription is back and data flows.
    eventually("resubscribed", || server.channel_count() == 1).await?;
    server.publish("quiet", &Tick { n: 1 }).await?;
    assert_eq!(
        within("receive", client.receive::<Tick>()).await??,
        Some(Tick { n: 1 })
    );
    Ok(())
}

#[tokio::test]
async fn buffered_messages_past_their_age_are_dropped_and_reported() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let addr = server.local_addr();
    let client = fast_client(addr)
        .max_buffer_age(Duration::from_secs(1))
        .build()
        .await?;
    within("shutdown", server.shutdown()).await?;
    drop(server);
    wait_for_state(&client, "reconnecting", |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await?;
    client
        .send(&WsMessage::AccountUpdate {
            pubkey: "stale".into(),
            lamports: 0,
            slot: 0,
            timestamp: 0,
        })
        .await?;
    // Older than the limit by the time the hub returns; the next one is not (reconnect
    // attempts come at most 200 ms apart).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client
        .send(&WsMessage::AccountUpdate {
            pubkey: "fresh".into(),
            lamports: 0,
            slot: 0,
            timestamp: 0,
        })
        .await?;

    let server = WebSocketServer::bind(addr).await?;
    let mut incoming = server.incoming();
    let (_, message) = within("the fresh message", incoming.recv())
        .await?
        .expect("a message");
    assert!(
        matches!(&message, WsMessage::AccountUpdate { pubkey, .. } if pubkey == "fresh"),
        "{message:?}"
    );
    loop {
        match within("event", client.next_event())
            .await?
            .expect("an event")
        {
            Event::Expired { count } => {
                assert_eq!(count, 1);
                break;
            }
            Event::Connected { .. } | Event::Disconnected { .. } => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(client.metrics().expired, 1);
    Ok(())
}

#[tokio::test]
async fn a_cut_connection_recovers_every_publication_exactly_once_in_order() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let (proxy, client) = behind_a_proxy(&server).await?;
    client.subscribe(["book"]).await?;
    // Publish 200 while the connection is frozen and replaced part-way through.
    let publisher = {
        let server = server.clone();
        tokio::spawn(async move {
            for n in 0..200u64 {
                server.publish("book", &Tick { n }).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.freeze_existing();
    within("publisher", publisher).await???;
    let mut next = 0u64;
    while next < 200 {
        match within("event", client.next_event())
            .await?
            .expect("an event")
        {
            Event::Publication { seq, data, .. } => {
                assert_eq!(seq, next + 1, "out of order or duplicated");
                assert_eq!(data.decode::<Tick>()?, Tick { n: next });
                next += 1;
            }
            Event::Connected { .. } | Event::Disconnected { .. } => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    assert!(
        client.metrics().reconnects >= 1,
        "the connection was not replaced"
    );
    Ok(())
}
