//! ws-client's `.encoding(Encoding::MessagePack)` against the hub over real sockets: the
//! upgrade agrees on `ws-toolkit.msgpack`, every frame the client writes is binary
//! MessagePack, publications and acknowledgements reach the application as with JSON (also
//! across a reconnect, resubscribed), and a server that does not agree is refused clearly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use integration_tests::proxy::TcpProxy;
use integration_tests::{RawClient, spawn_server, within};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use ws_client::{Encoding, Event, WebSocketClient};
use ws_protocol::WsMessage;
use ws_server::WebSocketServer;

#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
struct Book {
    bids: Vec<(f64, f64)>,
    asks: Vec<(f64, f64)>,
    venue: String,
}

fn book(n: u32) -> Book {
    Book {
        bids: (0..5).map(|i| (100.0 - f64::from(i + n), 1.5)).collect(),
        asks: (0..5).map(|i| (101.0 + f64::from(i + n), 2.0)).collect(),
        venue: "é-venue".into(),
    }
}

async fn msgpack_client(url: String) -> Result<WebSocketClient> {
    Ok(within(
        "connect",
        WebSocketClient::builder()
            .url(url)
            .encoding(Encoding::MessagePack)
            .build(),
    )
    .await??)
}

/// The next publication's channel, seq and data, skipping other events.
async fn next_publication(client: &WebSocketClient) -> Result<(String, u64, Book)> {
    loop {
        match within("a publication", client.next_event()).await? {
            Some(Event::Publication {
                channel, seq, data, ..
            }) => return Ok((channel, seq, data.decode()?)),
            Some(_) => continue,
            None => bail!("client ended"),
        }
    }
}

#[tokio::test]
async fn a_msgpack_client_subscribes_publishes_and_receives_beside_json() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let addr = server.local_addr();
    let client = msgpack_client(format!("ws://{addr}")).await?;
    client.subscribe(["book:BTC"]).await?;
    let mut json = RawClient::connect(addr).await?;
    json.subscribe(&["book:BTC"]).await?;

    // Published by the MessagePack client: acknowledged, seen by both as the same data.
    let seq = within("acknowledgement", client.publish("book:BTC", &book(1))).await??;
    assert_eq!(
        next_publication(&client).await?,
        ("book:BTC".into(), seq, book(1))
    );
    match within("json publication", json.recv()).await?? {
        WsMessage::Publication { seq: got, data, .. } => {
            ensure!(got == seq);
            ensure!(serde_json::from_str::<Book>(data.as_raw().get())? == book(1));
        }
        other => bail!("expected a Publication, got {other:?}"),
    }
    // Published by the JSON client: the MessagePack client's `receive` gives the same value.
    json.publish("book:BTC", &serde_json::to_string(&book(2))?)
        .await?;
    let received: Option<Book> = within("receive", client.receive()).await??;
    assert_eq!(received, Some(book(2)));
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn a_msgpack_client_resubscribes_after_a_cut_and_misses_nothing() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let proxy = TcpProxy::start(server.local_addr()).await?;
    let client = msgpack_client(format!("ws://{}", proxy.addr())).await?;
    client.subscribe(["book:ETH"]).await?;
    let mut publisher = RawClient::connect(server.local_addr()).await?;
    for n in 0..3 {
        publisher
            .publish("book:ETH", &serde_json::to_string(&book(n))?)
            .await?;
    }
    for n in 0..3 {
        assert_eq!(next_publication(&client).await?.2, book(n));
    }
    proxy.cut_existing();
    for n in 3..6 {
        publisher
            .publish("book:ETH", &serde_json::to_string(&book(n))?)
            .await?;
    }
    // Recovered with `since` over the new MessagePack connection: each once, in order.
    for n in 3..6 {
        let (_, seq, data) = next_publication(&client).await?;
        assert_eq!((seq, data), (u64::from(n) + 1, book(n)));
    }
    ensure!(proxy.connections() >= 2, "the cut made a second connection");
    client.close().await;
    Ok(())
}

/// A server that agrees to the subprotocol (or not, per `agree`) and reports whether every
/// data frame it read was binary MessagePack, after echoing each back.
async fn recording_server(agree: bool) -> Result<(String, Arc<AtomicBool>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}", listener.local_addr()?);
    let all_binary = Arc::new(AtomicBool::new(true));
    let seen = all_binary.clone();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        #[allow(clippy::result_large_err)] // tungstenite's callback type
        let callback = move |request: &Request, mut response: Response| {
            if agree && let Some(offer) = request.headers().get("sec-websocket-protocol") {
                response
                    .headers_mut()
                    .insert("sec-websocket-protocol", offer.clone());
            }
            Ok(response)
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
            return;
        };
        while let Some(Ok(frame)) = ws.next().await {
            match frame {
                Message::Binary(bytes) if ws_protocol::msgpack_to_json(&bytes).is_ok() => {}
                Message::Text(_) | Message::Binary(_) => seen.store(false, Ordering::SeqCst),
                _ => {}
            }
        }
    });
    Ok((url, all_binary))
}

#[tokio::test]
async fn what_the_client_writes_is_binary_msgpack_and_a_refusal_is_named() -> Result<()> {
    let (url, all_binary) = recording_server(true).await?;
    let client = within(
        "connect",
        WebSocketClient::builder()
            .url(url)
            .encoding(Encoding::MessagePack)
            .protocol(ws_client::ServerProtocol::Raw)
            .build(),
    )
    .await??;
    client.send(&WsMessage::Ping).await?;
    client.send(&book(7)).await?;
    client.close().await;
    ensure!(
        all_binary.load(Ordering::SeqCst),
        "every frame was MessagePack"
    );

    let (url, _) = recording_server(false).await?;
    let refused = within(
        "connect",
        WebSocketClient::builder()
            .url(url)
            .encoding(Encoding::MessagePack)
            .auto_reconnect(false)
            .build(),
    )
    .await?;
    let error = refused
        .err()
        .context("a server that does not agree is refused")?;
    ensure!(
        error
            .to_string()
            .contains("did not agree to the ws-toolkit.msgpack subprotocol"),
        "the error names the refusal: {error}"
    );
    Ok(())
}
