//! permessage-deflate on the hub over real sockets, with a client written frame by frame
//! (`DeflateClient`): the upgrade agrees when offered (and not with `WS_COMPRESSION=off`), a
//! large publication reaches a compressing subscriber compressed and intact beside a plain
//! one, short frames go uncompressed, compressed frames from the client are inflated, and
//! broken compressed data ends only its own connection with the close code that names it.

use anyhow::{Result, bail, ensure};
use integration_tests::deflate_client::DeflateClient;
use integration_tests::{RawClient, spawn_server};

use ws_protocol::{Compression, WsMessage};
use ws_server::WebSocketServer;

/// The hub's answer.
const CLIENT_ANSWER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// What Chrome and Python's websockets offer.
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// A 50-level order book as JSON (about 3 KB).
fn order_book(n: u32) -> String {
    let levels = |side: f64| {
        (0..50)
            .map(|i| {
                format!(
                    "[{:.2},{:.4}]",
                    187.42 + side * f64::from(i) * 0.01,
                    1.5 + f64::from((i * 7 + n) % 13) * 0.25
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{{"symbol":"SOL-USDC","seq":{n},"bids":[{}],"asks":[{}]}}"#,
        levels(-1.0),
        levels(1.0)
    )
}

async fn subscribed(client: &mut DeflateClient, channel: &str, compress: bool) -> Result<()> {
    let (hello, frame) = client.recv_text().await?;
    ensure!(hello.contains(r#""type":"Connected""#), "{hello}");
    ensure!(!frame.compressed, "a short frame goes uncompressed");
    let subscribe = format!(r#"{{"type":"Subscribe","channels":["{channel}"]}}"#);
    client.send_text(&subscribe, compress).await?;
    let (answer, _) = client.recv_text().await?;
    ensure!(answer.contains(r#""type":"Subscribed""#), "{answer}");
    Ok(())
}

#[tokio::test]
async fn large_publications_reach_a_deflate_subscriber_compressed_and_intact() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let addr = server.local_addr();
    let mut packed = DeflateClient::connect(addr, Some(BROWSER_OFFER)).await?;
    assert_eq!(packed.extensions.as_deref(), Some(CLIENT_ANSWER));
    // Its Subscribe comes compressed: the hub inflates it.
    subscribed(&mut packed, "book", true).await?;
    let mut plain = RawClient::connect(addr).await?;
    plain.subscribe(&["book"]).await?;
    let mut publisher = RawClient::connect(addr).await?;

    for n in 0..3 {
        let book = order_book(n);
        publisher.publish("book", &book).await?;
        let (text, frame) = packed.recv_text().await?;
        ensure!(frame.compressed, "a 3 KB publication goes compressed");
        ensure!(
            frame.wire_len * 100 < text.len() * 40,
            "deflate cut the bytes by at least 60 %: {} of {}",
            frame.wire_len,
            text.len()
        );
        // The same frame the plain subscriber reads, byte for byte.
        let plain_text = match plain.next_frame().await? {
            tokio_tungstenite::tungstenite::Message::Text(text) => text.to_string(),
            other => bail!("expected text, got {other:?}"),
        };
        assert_eq!(text, plain_text);
        match WsMessage::from_json(&text)? {
            WsMessage::Publication { data, .. } => assert_eq!(data.as_raw().get(), book),
            other => bail!("expected a Publication, got {other:?}"),
        }
    }
    // A short publication goes uncompressed.
    publisher.publish("book", r#"{"p":1}"#).await?;
    let (text, frame) = packed.recv_text().await?;
    ensure!(!frame.compressed && text.contains(r#"{"p":1}"#), "{text}");
    plain.recv().await?;

    // A large publication sent compressed by the deflate client reaches the plain subscriber.
    let publish = format!(
        r#"{{"type":"Publish","channel":"book","data":{}}}"#,
        order_book(9)
    );
    packed.send_text(&publish, true).await?;
    match plain.recv().await? {
        WsMessage::Publication { data, .. } => assert_eq!(data.as_raw().get(), order_book(9)),
        other => bail!("expected a Publication, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn with_compression_off_nothing_is_agreed_or_compressed() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().compression(Compression::Off)).await?;
    let addr = server.local_addr();
    let mut client = DeflateClient::connect(addr, Some(BROWSER_OFFER)).await?;
    assert_eq!(client.extensions, None);
    subscribed(&mut client, "book", false).await?;
    let mut publisher = RawClient::connect(addr).await?;
    publisher.publish("book", &order_book(1)).await?;
    let (text, frame) = client.recv_text().await?;
    ensure!(!frame.compressed && text.contains("SOL-USDC"));
    Ok(())
}

#[tokio::test]
async fn a_small_server_window_compresses_only_what_fits_in_it() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let addr = server.local_addr();
    let offer = "permessage-deflate; server_max_window_bits=10";
    let mut client = DeflateClient::connect(addr, Some(offer)).await?;
    let expected = format!("{CLIENT_ANSWER}; server_max_window_bits=10");
    assert_eq!(client.extensions.as_deref(), Some(expected.as_str()));
    subscribed(&mut client, "book", false).await?;
    let mut publisher = RawClient::connect(addr).await?;
    // 3 KB: longer than the 1 KiB window, uncompressed; 600 bytes: compressed.
    publisher.publish("book", &order_book(1)).await?;
    let (_, frame) = client.recv_text().await?;
    ensure!(
        !frame.compressed,
        "a message longer than the window goes uncompressed"
    );
    let medium = format!(r#"{{"levels":"{}"}}"#, "187.42,1.5;".repeat(50));
    publisher.publish("book", &medium).await?;
    let (text, frame) = client.recv_text().await?;
    ensure!(frame.compressed && text.contains(&medium), "{text}");
    Ok(())
}

/// The close code of the hub's close frame, skipping anything before it.
async fn close_code(client: &mut DeflateClient) -> Result<u16> {
    loop {
        let frame = client.recv().await?;
        if frame.opcode == 0x8 {
            ensure!(frame.payload.len() >= 2, "a close code");
            return Ok(u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
        }
    }
}

#[tokio::test]
async fn broken_compressed_frames_end_only_their_connection_with_a_named_code() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let addr = server.local_addr();
    let mut bystander = RawClient::connect(addr).await?;
    bystander.subscribe(&["calm"]).await?;

    // Not deflate data: 1007.
    let mut corrupt = DeflateClient::connect(addr, Some(BROWSER_OFFER)).await?;
    corrupt.recv_text().await?;
    corrupt.send_frame(0xc1, &[0xff, 0xff, 0xff, 0xff]).await?;
    assert_eq!(close_code(&mut corrupt).await?, 1007);
    // RSV1 on a continuation frame: 1002.
    let mut broken = DeflateClient::connect(addr, Some(BROWSER_OFFER)).await?;
    broken.recv_text().await?;
    broken.send_frame(0x41, &[0x4a, 0x04, 0x00]).await?;
    broken.send_frame(0xc0, &[0x00]).await?;
    assert_eq!(close_code(&mut broken).await?, 1002);
    // Compressed frames without the agreement: tungstenite refuses RSV1, 1002.
    let mut unagreed = DeflateClient::connect(addr, None).await?;
    unagreed.recv_text().await?;
    unagreed.send_text(&order_book(1), true).await?;
    assert_eq!(close_code(&mut unagreed).await?, 1002);

    bystander.still_served("calm").await
}
