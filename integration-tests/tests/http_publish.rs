//! The hub's HTTP publish API over real sockets, on its admin address and (with an API key)
//! on the public port: `POST /publish` (one item or a batch, idempotency keys) reaches
//! WebSocket subscribers, `POST /broadcast` every connection, and bad requests get the
//! protocol's error codes with proper HTTP statuses; the public port refuses requests
//! without the key.

use anyhow::{Context, Result, ensure};
use integration_tests::{RawClient, spawn_server, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ws_protocol::WsMessage;
use ws_server::WebSocketServer;

/// `POST path` with `body` (and any `extra` header lines); the status code and the body.
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
    extra: &str,
) -> Result<(u16, serde_json::Value)> {
    let mut stream = within("connect", TcpStream::connect(addr)).await??;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    within("the answer", stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8(response)?;
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("a status")?
        .parse()?;
    Ok((
        status,
        serde_json::from_str(body).with_context(|| format!("JSON body: {body}"))?,
    ))
}

#[tokio::test]
async fn publications_posted_reach_subscribers_in_order() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().admin_addr("127.0.0.1:0")).await?;
    let admin = server.admin_addr().context("admin address")?;
    let mut subscriber = RawClient::connect(server.local_addr()).await?;
    subscriber.subscribe(&["prices:SOL-USDC"]).await?;

    let (status, answer) = post(
        admin,
        "/publish",
        r#"{"channel":"prices:SOL-USDC","data":{"price":187.42}}"#,
        "",
    )
    .await?;
    assert_eq!((status, answer), (200, serde_json::json!({"seq": 1})));
    // A batch: one result per item, in order; a refusal does not stop the others.
    let batch = r#"[{"channel":"prices:SOL-USDC","data":1,"key":"k-1"},
                    {"channel":"","data":2},
                    {"channel":"prices:SOL-USDC","data":3},
                    {"channel":"prices:SOL-USDC","data":1,"key":"k-1"}]"#;
    let (status, answer) = post(admin, "/publish", batch, "Expect: 100-continue\r\n").await?;
    assert_eq!(status, 200);
    assert_eq!(answer[0], serde_json::json!({"seq": 2}));
    assert_eq!(answer[1]["error"]["code"], "invalid_channel");
    assert_eq!(answer[2], serde_json::json!({"seq": 3}));
    assert_eq!(answer[3], serde_json::json!({"seq": 2, "duplicate": true}));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match subscriber.recv().await? {
            WsMessage::Publication { seq, data, .. } => {
                seen.push((seq, data.as_raw().get().to_owned()));
            }
            other => anyhow::bail!("expected a Publication, got {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            (1, r#"{"price":187.42}"#.to_owned()),
            (2, "1".to_owned()),
            (3, "3".to_owned())
        ]
    );

    let (status, answer) = post(
        admin,
        "/broadcast",
        r#"{"type":"Notice","text":"halt"}"#,
        "",
    )
    .await?;
    assert_eq!((status, answer["connections"].as_u64()), (200, Some(1)));
    match subscriber.next_frame().await? {
        tokio_tungstenite::tungstenite::Message::Text(text) => {
            assert_eq!(text.as_str(), r#"{"type":"Notice","text":"halt"}"#);
        }
        other => anyhow::bail!("expected the broadcast, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_error_codes_and_statuses() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().admin_addr("127.0.0.1:0")).await?;
    let admin = server.admin_addr().context("admin address")?;
    for (body, status, code) in [
        ("not json", 400, "bad_request"),
        (r#"{"channel":"a"}"#, 400, "bad_request"),
        (r#"{"channel":"","data":1}"#, 400, "invalid_channel"),
        (r#"{"channel":"a","data":1e400}"#, 400, "bad_request"),
        (r#"{"channel":"a","data":1,"key":""}"#, 400, "bad_request"),
    ] {
        let (got, answer) = post(admin, "/publish", body, "").await?;
        ensure!(
            got == status && answer["error"]["code"] == code,
            "{body}: {got} {answer}"
        );
    }
    let big = format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(70_000));
    let (got, answer) = post(admin, "/publish", &big, "").await?;
    ensure!(
        got == 413 && answer["error"]["code"] == "message_too_large",
        "{got} {answer}"
    );
    // The body cap: refused from the Content-Length alone.
    let mut stream = TcpStream::connect(admin).await?;
    stream
        .write_all(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
        .await?;
    let mut response = String::new();
    within("the answer", stream.read_to_string(&mut response)).await??;
    ensure!(response.starts_with("HTTP/1.1 413"), "{response}");
    // No length: 411.
    let mut stream = TcpStream::connect(admin).await?;
    stream
        .write_all(b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await?;
    let mut response = String::new();
    within("the answer", stream.read_to_string(&mut response)).await??;
    ensure!(response.starts_with("HTTP/1.1 411"), "{response}");
    Ok(())
}

/// The public port's API key in these tests.
const API_KEY: &str = "0123456789abcdef0123";

#[tokio::test]
async fn the_public_port_takes_posts_with_the_api_key_only() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().api_key(API_KEY)).await?;
    let public = server.local_addr();
    let mut subscriber = RawClient::connect(public).await?;
    subscriber.subscribe(&["prices:SOL-USDC"]).await?;
    let item = r#"{"channel":"prices:SOL-USDC","data":{"price":187.42}}"#;

    for (extra, why) in [
        ("", "no Authorization"),
        (
            "Authorization: apikey 0123456789abcdef0124\r\n",
            "another key",
        ),
        (
            "Authorization: apikey 0123456789abcdef012\r\n",
            "a prefix of the key",
        ),
        (
            "Authorization: Bearer 0123456789abcdef0123\r\n",
            "another scheme",
        ),
    ] {
        let (status, answer) = post(public, "/publish", item, extra).await?;
        ensure!(
            status == 401 && answer["error"]["code"] == "unauthorized",
            "{why}: {status} {answer}"
        );
    }
    let authorized = format!("Authorization: apikey {API_KEY}\r\n");
    let (status, answer) = post(public, "/publish", item, &authorized).await?;
    assert_eq!((status, answer), (200, serde_json::json!({"seq": 1})));
    let (status, answer) = post(public, "/broadcast", r#"{"type":"Notice"}"#, &authorized).await?;
    assert_eq!(
        (status, answer),
        (200, serde_json::json!({"connections": 1}))
    );
    // Only the publication with the key was published; the broadcast came after it.
    match subscriber.recv().await? {
        WsMessage::Publication { seq, data, .. } => {
            assert_eq!((seq, data.as_raw().get()), (1, r#"{"price":187.42}"#));
        }
        other => anyhow::bail!("expected the Publication, got {other:?}"),
    }
    let notice = subscriber.next_frame().await?;
    assert_eq!(notice.to_text()?, r#"{"type":"Notice"}"#);
    // The port still upgrades WebSockets, and other POSTs are refused as before.
    RawClient::connect(public).await?;
    let (status, _) = post_raw(public, "POST / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    assert_eq!(status, 405);
    Ok(())
}

#[tokio::test]
async fn without_an_api_key_the_public_port_points_to_the_admin_address() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let (status, answer) = post(
        server.local_addr(),
        "/publish",
        r#"{"channel":"a","data":1}"#,
        &format!("Authorization: apikey {API_KEY}\r\n"),
    )
    .await?;
    ensure!(
        status == 403
            && answer["error"]["code"] == "forbidden"
            && answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("WS_ADMIN_ADDR")),
        "{status} {answer}"
    );
    Ok(())
}

/// Sends `request` as it is; the status code of the answer.
async fn post_raw(addr: std::net::SocketAddr, request: &str) -> Result<(u16, String)> {
    let mut stream = within("connect", TcpStream::connect(addr)).await??;
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    within("the answer", stream.read_to_string(&mut response)).await??;
    let status = response
        .split_whitespace()
        .nth(1)
        .context("a status")?
        .parse()?;
    Ok((status, response))
}
