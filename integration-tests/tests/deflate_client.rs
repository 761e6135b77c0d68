//! ws-client's permessage-deflate (`ClientBuilder::compression`) over real sockets: against
//! the hub, large publications cross the wire compressed (counted by a relay in between) and
//! reach the application intact; against a server that sends a decompression bomb, the
//! client stops at its `max_message_size`, with memory bounded, and reconnects. (On
//! tokio-tungstenite, whatever `WS_CLIENT_TRANSPORT` says: sockudo-ws's client cannot offer
//! compression, and the builder refuses the two together.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, ensure};
use integration_tests::deflate_client::{bomb, status_kib};
use integration_tests::proxy::TcpProxy;
use integration_tests::{RawClient, eventually, spawn_server, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use ws_client::{ServerProtocol, Transport, WebSocketClient};
use ws_server::WebSocketServer;

/// A 50-level order book in Binance's depth format (about 4 KB of JSON).
fn order_book(n: u32) -> serde_json::Value {
    let side = |sign: f64| {
        (0..50)
            .map(|level| {
                serde_json::json!([
                    format!("{:.8}", 187.42 + sign * f64::from(level) * 0.01),
                    format!("{:.8}", f64::from((level * 37 + n * 11) % 800) * 0.125)
                ])
            })
            .collect::<Vec<_>>()
    };
    serde_json::json!({"symbol": "SOL-USDC", "seq": n, "bids": side(-1.0), "asks": side(1.0)})
}

/// A client (compressing or not) reads `count` order books from a hub through a relay; the
/// bytes the relay carried to it meanwhile.
async fn books_through(compression: bool, count: u32) -> Result<u64> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let relay = TcpProxy::start(server.local_addr()).await?;
    let client = within(
        "connect",
        WebSocketClient::builder()
            .url(format!("ws://{}", relay.addr()))
            .compression(compression)
            // Compression needs tokio-tungstenite, whatever WS_CLIENT_TRANSPORT says.
            .transport(Transport::Tungstenite)
            .build(),
    )
    .await??;
    client.subscribe(["book"]).await?;
    let mut publisher = RawClient::connect(server.local_addr()).await?;
    let before = relay.bytes_to_clients();
    for n in 0..count {
        publisher
            .publish("book", &serde_json::to_string(&order_book(n))?)
            .await?;
    }
    for n in 0..count {
        let got: Option<serde_json::Value> = within("a book", client.receive()).await??;
        ensure!(got == Some(order_book(n)), "book {n} arrived intact");
    }
    client.close().await;
    Ok(relay.bytes_to_clients() - before)
}

#[tokio::test]
async fn publications_cross_compressed_and_arrive_intact() -> Result<()> {
    let plain = books_through(false, 20).await?;
    let compressed = books_through(true, 20).await?;
    ensure!(
        compressed * 100 < plain * 40,
        "compression cut the bytes by at least 60 %: {compressed} of {plain}"
    );
    Ok(())
}

/// An unmasked server frame with first byte `first`.
fn server_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![first];
    if payload.len() < 126 {
        frame.push(payload.len() as u8);
    } else if let Ok(short) = u16::try_from(payload.len()) {
        frame.push(126);
        frame.extend_from_slice(&short.to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    frame.extend_from_slice(payload);
    frame
}

#[tokio::test]
async fn a_bomb_stops_at_the_clients_limit_and_it_reconnects() -> Result<()> {
    // A server that agrees to compression and sends, in the same write as its answer, a
    // small compressed greeting and then 32 MiB of spaces compressed.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}", listener.local_addr()?);
    let payload = Arc::new(bomb(32 << 20)?);
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n")
                    && tcp.read(&mut byte).await.is_ok_and(|n| n == 1)
                {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let Some(key) = head.lines().find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("sec-websocket-key")
                        .then_some(value)
                }) else {
                    return;
                };
                if !head.contains("permessage-deflate") {
                    return;
                }
                let mut out = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: {}\r\n\r\n",
                    derive_accept_key(key.trim().as_bytes()),
                    "permessage-deflate; server_no_context_takeover"
                )
                .into_bytes();
                let mut hello = Vec::new();
                ws_protocol::deflate::Compressor::new()
                    .compress(b"{\"hello\":\"inflated\"}", &mut hello);
                out.extend(server_frame(0xc1, &hello));
                out.extend(server_frame(0xc1, &payload));
                let _ = tcp.write_all(&out).await;
                let mut sink = [0u8; 1024];
                while tcp.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            });
        }
    });
    let before = status_kib("VmRSS")?;
    let client = within(
        "connect",
        WebSocketClient::builder()
            .url(url)
            .protocol(ServerProtocol::Raw)
            .compression(true)
            .transport(Transport::Tungstenite)
            .max_message_size(1 << 20)
            .build(),
    )
    .await??;
    let hello: Option<serde_json::Value> = within("the greeting", client.receive()).await??;
    assert_eq!(hello, Some(serde_json::json!({"hello": "inflated"})));
    eventually("a reconnect after the bomb", || {
        accepted.load(Ordering::SeqCst) >= 2
    })
    .await?;
    let grown = status_kib("VmHWM")?.saturating_sub(before);
    // Inflating it all would take 32 MiB; the limit is 1 MiB.
    ensure!(grown < 16 * 1024, "peak memory grew by {grown} KiB");
    client.close().await;
    Ok(())
}
