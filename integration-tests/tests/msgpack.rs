//! MessagePack over the `ws-toolkit.msgpack` subprotocol, against the hub over real sockets:
//! the upgrade agrees on it, every frame both ways is a binary MessagePack frame with the
//! JSON protocol's shapes, and MessagePack and JSON subscribers share a channel.

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use integration_tests::{RawClient, spawn_server, within};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use ws_protocol::{Encoding, Payload, WsMessage, codes};
use ws_server::WebSocketServer;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upgrades with `offer` as `Sec-WebSocket-Protocol`; the socket and the subprotocol the hub
/// answered with.
async fn connect_offering(
    addr: std::net::SocketAddr,
    offer: &str,
) -> Result<(Socket, Option<String>)> {
    let mut request = format!("ws://{addr}").into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_str(offer)?);
    let (ws, response) = within("upgrade", tokio_tungstenite::connect_async(request)).await??;
    let agreed = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()?;
    Ok((ws, agreed))
}

/// The next protocol message on a MessagePack connection: it must come as a binary frame.
async fn recv_msgpack(ws: &mut Socket) -> Result<WsMessage> {
    loop {
        let frame = within("a frame", ws.next())
            .await?
            .context("connection ended")??;
        match frame {
            Message::Binary(bytes) => return Ok(WsMessage::from_msgpack(&bytes)?),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => bail!("expected a binary MessagePack frame, got {other:?}"),
        }
    }
}

async fn send_msgpack(ws: &mut Socket, message: &WsMessage) -> Result<()> {
    within("send", ws.send(Message::binary(message.to_msgpack()))).await??;
    Ok(())
}

#[tokio::test]
async fn a_msgpack_subscriber_and_a_json_subscriber_share_a_channel() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let addr = server.local_addr();

    let (mut packed, agreed) =
        connect_offering(addr, "ws-toolkit.msgpack, ws-toolkit.json").await?;
    assert_eq!(agreed.as_deref(), Some(Encoding::MessagePack.subprotocol()));
    assert!(
        matches!(
            recv_msgpack(&mut packed).await?,
            WsMessage::Connected { .. }
        ),
        "Connected comes first, as MessagePack"
    );
    send_msgpack(
        &mut packed,
        &WsMessage::Subscribe {
            channels: vec!["book:SOL-USDC".into()],
            since: Default::default(),
            rewind: None,
        },
    )
    .await?;
    assert!(matches!(
        recv_msgpack(&mut packed).await?,
        WsMessage::Subscribed { .. }
    ));

    let mut json = RawClient::connect(addr).await?;
    json.subscribe(&["book:SOL-USDC"]).await?;

    // A MessagePack publisher (the same connection) and a JSON one.
    let book = r#"{"bids":[[187.02,12.5],[187.01,3]],"asks":[[187.05,1]],"ts":1796136376384}"#;
    send_msgpack(
        &mut packed,
        &WsMessage::Publish {
            channel: "book:SOL-USDC".into(),
            data: Payload::from_json(book)?,
            id: None,
            key: None,
            ack_range: false,
        },
    )
    .await?;
    json.publish("book:SOL-USDC", r#"{"last":187.03}"#).await?;

    let expected: [(u64, serde_json::Value); 2] = [
        (1, serde_json::from_str(book)?),
        (2, serde_json::json!({"last": 187.03})),
    ];
    for (seq, data) in &expected {
        match recv_msgpack(&mut packed).await? {
            WsMessage::Publication {
                channel,
                seq: got,
                data: got_data,
            } => {
                assert_eq!((channel.as_str(), got), ("book:SOL-USDC", *seq));
                assert_eq!(&got_data.decode::<serde_json::Value>()?, data);
            }
            other => bail!("expected a Publication, got {other:?}"),
        }
        match json.recv().await? {
            WsMessage::Publication {
                seq: got,
                data: got_data,
                ..
            } => {
                assert_eq!(got, *seq);
                assert_eq!(&got_data.decode::<serde_json::Value>()?, data);
            }
            other => bail!("expected a Publication, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_offer_the_hub_does_not_know_gets_no_subprotocol_and_json_stays_the_default()
-> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    // The hub names no subprotocol; a client that required one fails the upgrade itself
    // (RFC 6455, 4.1), as tungstenite does.
    let error = connect_offering(server.local_addr(), "chat")
        .await
        .expect_err("no subprotocol in the answer");
    assert!(error.to_string().contains("no subprotocol"), "{error}");
    // Offering nothing: JSON text frames, as always.
    let mut json = RawClient::connect(server.local_addr()).await?;
    json.send(&WsMessage::Ping).await?;
    assert_eq!(json.recv().await?, WsMessage::Pong);
    Ok(())
}

#[tokio::test]
async fn a_bad_msgpack_frame_is_answered_and_the_connection_goes_on() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let (mut ws, _) = connect_offering(server.local_addr(), "ws-toolkit.msgpack").await?;
    recv_msgpack(&mut ws).await?;
    // A binary value inside: JSON cannot carry it.
    within(
        "send",
        ws.send(Message::binary(vec![
            0x81u8, 0xa4, b't', b'y', b'p', b'e', 0xc4, 0x00,
        ])),
    )
    .await??;
    match recv_msgpack(&mut ws).await? {
        WsMessage::Error { code, message, .. } => {
            assert_eq!(code, codes::BAD_REQUEST);
            assert!(message.contains("binary value"), "{message}");
        }
        other => bail!("expected an Error, got {other:?}"),
    }
    send_msgpack(&mut ws, &WsMessage::Ping).await?;
    assert_eq!(recv_msgpack(&mut ws).await?, WsMessage::Pong);
    Ok(())
}
