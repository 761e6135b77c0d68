//! `wss://` served by the hub from `WS_TLS_CERT` / `WS_TLS_KEY`, with our client trusting a
//! certificate generated in the test.

use anyhow::Result;
use integration_tests::{spawn_server, within};
use ws_client::{Error, WebSocketClient};
use ws_protocol::WebSocketConfig;
use ws_server::ServerBuilder;

#[tokio::test]
async fn the_hub_serves_wss_and_our_client_trusts_a_private_root() -> Result<()> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let dir = std::env::temp_dir().join(format!("ws-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    let config = WebSocketConfig::from_vars([
        ("WS_TLS_CERT", cert.to_string_lossy().into_owned()),
        ("WS_TLS_KEY", key.to_string_lossy().into_owned()),
    ])?;
    let server = spawn_server(ServerBuilder::from_config(config)).await?;
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
        .add_root_certificate(certified.cert.pem().as_bytes())
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
    let _ = std::fs::remove_dir_all(dir);
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
