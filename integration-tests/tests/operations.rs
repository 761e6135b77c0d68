//! The operators' HTTP surface: `/health` and `/metrics` on the admin address.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use integration_tests::{RawClient, eventually, spawn_server, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ws_protocol::WsMessage;
use ws_server::WebSocketServer;

async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    within("response", stream.read_to_string(&mut response)).await??;
    let status = response
        .split_whitespace()
        .nth(1)
        .context("status")?
        .parse()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn health_and_metrics_tell_what_the_hub_does() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().admin_addr("127.0.0.1:0")).await?;
    let admin = server.admin_addr().context("admin address")?;
    assert_eq!(get(admin, "/health").await?, (200, "ok\n".to_owned()));

    let mut a = RawClient::connect(server.local_addr()).await?;
    let mut b = RawClient::connect(server.local_addr()).await?;
    a.subscribe(&["x", "y"]).await?;
    b.subscribe(&["x"]).await?;
    b.publish("x", "1").await?;
    assert!(matches!(a.recv().await?, WsMessage::Publication { .. }));
    assert!(matches!(b.recv().await?, WsMessage::Publication { .. }));

    let (status, metrics) = get(admin, "/metrics").await?;
    assert_eq!(status, 200);
    assert_eq!(value(&metrics, "ws_connections"), Some(2.0), "{metrics}");
    assert_eq!(value(&metrics, "ws_channels"), Some(2.0));
    assert_eq!(value(&metrics, "ws_subscriptions"), Some(3.0));
    assert_eq!(value(&metrics, "ws_publications_total"), Some(1.0));
    assert!(value(&metrics, "ws_frames_in_total").unwrap_or(0.0) >= 3.0);
    assert!(value(&metrics, "ws_frames_out_total").unwrap_or(0.0) >= 6.0);
    assert_eq!(value(&metrics, "ws_fanout_seconds_count"), Some(1.0));
    assert_eq!(get(admin, "/nope").await?.0, 404);

    drop(a);
    eventually("a's subscriptions are released", || {
        server.channel_count() == 1
    })
    .await?;
    let (_, metrics) = get(admin, "/metrics").await?;
    assert_eq!(value(&metrics, "ws_subscriptions"), Some(1.0), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn drain_turns_health_503_and_spreads_1012_closes_with_a_hint() -> Result<()> {
    use std::time::Duration;
    let server = spawn_server(
        WebSocketServer::builder()
            .admin_addr("127.0.0.1:0")
            .reconnect_hint(Duration::from_millis(250)),
    )
    .await?;
    let admin = server.admin_addr().context("admin address")?;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(RawClient::connect(server.local_addr()).await?);
    }
    eventually("all connected", || server.connection_count() == 8).await?;
    let started = tokio::time::Instant::now();
    let draining = {
        let server = server.clone();
        tokio::spawn(async move { server.drain(Duration::from_millis(800)).await })
    };
    eventually("draining", || server.connection_count() < 8).await?;
    assert_eq!(
        get(admin, "/health").await?.0,
        503,
        "health during the drain"
    );
    assert!(
        RawClient::connect(server.local_addr()).await.is_err(),
        "no new connections while draining"
    );
    let mut arrivals = Vec::new();
    for client in &mut clients {
        let frame = client.close_frame().await?.context("a close frame")?;
        assert_eq!(u16::from(frame.code), ws_protocol::close::SERVICE_RESTART);
        assert_eq!(
            ws_protocol::close::retry_after(&frame.reason),
            Some(Duration::from_millis(250))
        );
        arrivals.push(started.elapsed());
    }
    within("drain", draining).await??;
    arrivals.sort();
    let spread = arrivals[arrivals.len() - 1] - arrivals[0];
    assert!(
        spread >= Duration::from_millis(400),
        "closes not spread: {arrivals:?}"
    );
    assert_eq!(server.connection_count(), 0);
    Ok(())
}

#[tokio::test]
async fn our_client_waits_for_the_hinted_delay_after_a_restart_close() -> Result<()> {
    use std::time::Duration;
    let server =
        spawn_server(WebSocketServer::builder().reconnect_hint(Duration::from_millis(400))).await?;
    let addr = server.local_addr();
    let client = ws_client::WebSocketClient::builder()
        .url(format!("ws://{addr}"))
        .reconnect_interval(Duration::from_millis(20))
        .build()
        .await?;
    let started = tokio::time::Instant::now();
    within("drain", server.drain(Duration::from_millis(10))).await?;
    drop(server);
    let _server = WebSocketServer::bind(addr).await?;
    let mut states = client.state_changes();
    within("reconnected", async {
        use futures_util::StreamExt;
        while let Some(state) = states.next().await {
            if state == ws_client::ConnectionState::Connected
                && started.elapsed() > Duration::from_millis(50)
            {
                break;
            }
        }
    })
    .await?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "reconnected after {took:?}, before the hint"
    );
    assert!(
        took <= Duration::from_millis(2000),
        "reconnected after {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_status_page_and_its_numbers() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().admin_addr("127.0.0.1:0")).await?;
    let admin = server.admin_addr().context("admin address")?;
    let (status, page) = get(admin, "/").await?;
    assert_eq!(status, 200);
    assert!(page.contains("/status.json") && page.contains("slow-consumer cuts"));
    let mut client = RawClient::connect(server.local_addr()).await?;
    client.subscribe(&["x"]).await?;
    server.publish("x", &1).await?;
    let (_, json) = get(admin, "/status.json").await?;
    let numbers: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(numbers["connections"], 1);
    assert_eq!(numbers["channels"], 1);
    assert_eq!(numbers["subscriptions"], 1);
    assert_eq!(numbers["publications"], 1);
    assert_eq!(numbers["draining"], false);
    Ok(())
}
