//! `wss://` served by the hub from `WS_TLS_CERT` / `WS_TLS_KEY`, with our client trusting a
//! certificate generated in the test.

use anyhow::Result;
use integration_tests::self_signed::SelfSignedTls;
use integration_tests::{spawn_server, within};
use ws_client::{Error, WebSocketClient};
use ws_protocol::WebSocketConfig;
use ws_server::ServerBuilder;

#[tokio::test]
async fn the_hub_serves_wss_and_our_client_trusts_a_private_root() -> Result<()> {
    let tls = SelfSignedTls::new("ws-tls-test")?;
    let server = spawn_server(ServerBuilder::from_config(tls.config.clone())).await?;
    let url = format!("wss://localhost:{}", server.local_addr().port());

    // Without the root the certificate is refused; plain ws:// gets no upgrade.
    assert!(matches!(
        WebSocketClient::connect(url.clone()).await,
        Err(Error::Connect { .. })
    ));
    let plain = format!("ws://127.0.0.1:{}", server.local_addr().port());
    assert!(WebSocketClient::connect(plain).await.is_err());

    let client = WebSocketClient::builder()
        .url(url)
        .add_root_certificate(tls.root_pem.as_bytes())
        .build()
        .await?;
    client.subscribe(["secure"]).await?;
    server
        .publish("secure", &serde_json::json!({"ok": true}))
        .await?;
    let got: serde_json::Value = within("receive", client.receive())
        .await??
        .expect("a message");
    assert_eq!(got, serde_json::json!({"ok": true}));
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn half_a_tls_configuration_is_an_error() -> Result<()> {
    let config = WebSocketConfig::from_vars([("WS_TLS_CERT", "/nonexistent.pem")])?;
    let error = ServerBuilder::from_config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("WS_TLS_KEY"), "{error}");
    let config = WebSocketConfig::from_vars([
        ("WS_TLS_CERT", "/nonexistent.pem"),
        ("WS_TLS_KEY", "/nonexistent.key"),
    ])?;
    let error = ServerBuilder::from_config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("WS_TLS_CERT=/nonexistent.pem"),
        "{error}"
    );
    Ok(())
}
