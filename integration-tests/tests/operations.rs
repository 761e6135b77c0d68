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
