//! The client through real proxy servers (`microsocks` for SOCKS5, `tinyproxy` for HTTP
//! `CONNECT`): publications flow through the tunnel (killing the proxy cuts the
//! connection, so it really went through it), `wss://` checks the hub's certificate
//! through the tunnel, and a wrong password, missing credentials, a proxy that refuses the
//! destination and a proxy that is not there each fail `build` with an error that says so.

use anyhow::{Context, Result, ensure};
use integration_tests::proxy_servers::{HttpProxy, Socks5Server};
use integration_tests::self_signed::SelfSignedTls;
use integration_tests::{spawn_server, within};
use ws_client::{Error, Event, WebSocketClient};
use ws_server::{ServerBuilder, WebSocketServer};

const USER: (&str, &str) = ("strategy", "s3cret-pass");
const WRONG: (&str, &str) = ("strategy", "not-the-pass");

/// Builds a client of `url` through `proxy`; the error's reason if it fails.
async fn build(url: &str, proxy: &str) -> Result<std::result::Result<WebSocketClient, String>> {
    let built = within(
        "the client to build",
        WebSocketClient::builder()
            .url(url)
            .proxy(proxy)
            .max_reconnect_attempts(0)
            .build(),
    )
    .await?;
    Ok(built.map_err(|error| match error {
        Error::Connect { reason, .. } => reason,
        other => format!("not a connect error: {other}"),
    }))
}

/// Builds a client of `url` through `proxy`, which must work.
async fn connected(url: &str, proxy: &str) -> Result<WebSocketClient> {
    build(url, proxy).await?.map_err(anyhow::Error::msg)
}

/// Builds a client of `url` through `proxy`, which must fail (`what` says why it must);
/// the reason.
async fn refused(url: &str, proxy: &str, what: &str) -> Result<String> {
    match build(url, proxy).await? {
        Ok(_) => anyhow::bail!("{what}"),
        Err(reason) => Ok(reason),
    }
}

/// Subscribes `client`, publishes from the hub and expects it back.
async fn round_trip(client: &WebSocketClient, server: &WebSocketServer) -> Result<()> {
    client.subscribe(["proxied"]).await?;
    server
        .publish("proxied", &serde_json::json!({"price": 187.42}))
        .await?;
    let got: serde_json::Value = within("a publication through the proxy", client.receive())
        .await??
        .context("a message")?;
    ensure!(got == serde_json::json!({"price": 187.42}), "{got}");
    Ok(())
}

#[tokio::test]
async fn socks5_with_a_password_carries_the_connection() -> Result<()> {
    let Some(mut proxy) = Socks5Server::start(Some(USER)).await? else {
        return Ok(());
    };
    let server = spawn_server(WebSocketServer::builder()).await?;
    let url = format!("ws://localhost:{}", server.local_addr().port());
    for remote_dns in [false, true] {
        let client = connected(&url, &proxy.url(Some(USER), remote_dns)).await?;
        round_trip(&client, &server).await?;
        client.close().await;
    }
    // Through the proxy, for real: killing it ends the connection while the hub runs on.
    let client = connected(&url, &proxy.url(Some(USER), false)).await?;
    round_trip(&client, &server).await?;
    proxy.stop().await?;
    within("the cut to be seen", async {
        loop {
            match client.next_event().await {
                Some(Event::Disconnected { .. }) | None => return,
                Some(_) => {}
            }
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn socks5_refusals_say_what_was_wrong() -> Result<()> {
    let Some(proxy) = Socks5Server::start(Some(USER)).await? else {
        return Ok(());
    };
    let server = spawn_server(WebSocketServer::builder()).await?;
    let url = format!("ws://127.0.0.1:{}", server.local_addr().port());
    let reason = refused(
        &url,
        &proxy.url(Some(WRONG), false),
        "a wrong password must fail",
    )
    .await?;
    ensure!(
        reason.contains("refused the user name and password"),
        "{reason}"
    );
    ensure!(!reason.contains(WRONG.1), "the password leaks: {reason}");
    let reason = refused(&url, &proxy.url(None, false), "no credentials must fail").await?;
    ensure!(
        reason.contains("needs a user name and password"),
        "{reason}"
    );
    // The proxy cannot reach the destination: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let reason = refused(
        &format!("ws://{closed}"),
        &proxy.url(Some(USER), false),
        "an unreachable destination must fail",
    )
    .await?;
    ensure!(
        reason.contains("could not connect to") || reason.contains("could not reach"),
        "{reason}"
    );
    Ok(())
}

#[tokio::test]
async fn http_connect_with_basic_auth_carries_the_connection() -> Result<()> {
    let Some(proxy) = HttpProxy::start(Some(USER), None).await? else {
        return Ok(());
    };
    let server = spawn_server(WebSocketServer::builder()).await?;
    let url = format!("ws://127.0.0.1:{}", server.local_addr().port());
    let client = connected(&url, &proxy.url(Some(USER))).await?;
    round_trip(&client, &server).await?;
    client.close().await;

    let reason = refused(&url, &proxy.url(Some(WRONG)), "a wrong password must fail").await?;
    ensure!(
        reason.contains("refused the user name and password"),
        "{reason}"
    );
    ensure!(!reason.contains(WRONG.1), "the password leaks: {reason}");
    let reason = refused(&url, &proxy.url(None), "no credentials must fail").await?;
    ensure!(
        reason.contains("needs a user name and password"),
        "{reason}"
    );
    Ok(())
}

#[tokio::test]
async fn an_http_proxy_that_refuses_the_destination_or_is_not_there_is_named() -> Result<()> {
    // CONNECT allowed to port 443 only: the hub's port is refused (403).
    let Some(proxy) = HttpProxy::start(None, Some(443)).await? else {
        return Ok(());
    };
    let server = spawn_server(WebSocketServer::builder()).await?;
    let url = format!("ws://127.0.0.1:{}", server.local_addr().port());
    let reason = refused(&url, &proxy.url(None), "a refused CONNECT must fail").await?;
    ensure!(
        reason.contains("answered 403 to CONNECT 127.0.0.1:"),
        "{reason}"
    );
    let nothing = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let reason = refused(
        &url,
        &format!("http://{nothing}"),
        "a missing proxy must fail",
    )
    .await?;
    ensure!(
        reason.contains(&format!("proxy http://{nothing}")),
        "{reason}"
    );
    Ok(())
}

#[tokio::test]
async fn wss_through_a_proxy_checks_the_hubs_certificate() -> Result<()> {
    let Some(proxy) = HttpProxy::start(Some(USER), None).await? else {
        return Ok(());
    };
    let tls = SelfSignedTls::new("ws-proxy-tls")?;
    let server = spawn_server(ServerBuilder::from_config(tls.config.clone())).await?;
    let url = format!("wss://localhost:{}", server.local_addr().port());

    // The tunnel opens, then the hub's certificate is refused: no root trusts it.
    let reason = refused(
        &url,
        &proxy.url(Some(USER)),
        "an untrusted certificate must fail through the proxy too",
    )
    .await?;
    ensure!(reason.contains("TLS"), "{reason}");
    let client = within(
        "the client to build",
        WebSocketClient::builder()
            .url(&url)
            .proxy(proxy.url(Some(USER)))
            .add_root_certificate(tls.root_pem.as_bytes())
            .build(),
    )
    .await??;
    round_trip(&client, &server).await?;
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn an_invalid_proxy_url_fails_the_build_without_showing_it() -> Result<()> {
    let error = WebSocketClient::builder()
        .url("ws://127.0.0.1:1")
        .proxy("ftp://user:hunter2@proxy:21")
        .build()
        .await
        .err()
        .context("must fail")?;
    ensure!(matches!(error, Error::InvalidConfig(_)), "{error}");
    let text = error.to_string();
    ensure!(text.contains("unsupported proxy scheme"), "{text}");
    ensure!(!text.contains("hunter2"), "the password leaks: {text}");
    Ok(())
}

#[tokio::test]
async fn an_endless_answer_from_a_proxy_is_cut_off() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Not a real proxy: one that answers CONNECT with a status line that never ends.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let babbler = tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return 0usize;
        };
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request).await;
        let _ = stream.write_all(b"HTTP/1.1 200 ").await;
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        // Bounded: 64 MiB at most, and it stops as soon as the client hangs up.
        while sent < 64 << 20 && stream.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let reason = refused(
        "ws://127.0.0.1:9",
        &format!("http://{addr}"),
        "an endless answer must fail",
    )
    .await?;
    ensure!(reason.contains("longer than 16384 bytes"), "{reason}");
    let sent = within("the babbler to stop", babbler).await??;
    ensure!(
        sent < 64 << 20,
        "the client read on until the end: {sent} bytes"
    );
    Ok(())
}
