//! Authentication, permissions and limits of the hub, each with a test that fails without it.

use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use integration_tests::{RawClient, eventually, sign_hs256, spawn_server, unix_now, within};
use jsonwebtoken::{EncodingKey, Header, encode};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use ws_protocol::{WebSocketConfig, WsMessage, close, codes};
use ws_server::{JwtAuthenticator, ServerBuilder, WebSocketServer};

const SECRET: &[u8] = b"test-secret";

fn token(sub: &str, exp: u64, channels: &[&str], publish: &[&str]) -> String {
    let claims =
        serde_json::json!({"sub": sub, "exp": exp, "channels": channels, "publish": publish});
    sign_hs256(SECRET, &claims)
}

fn secured() -> ServerBuilder {
    WebSocketServer::builder().authenticator(JwtAuthenticator::hs256(SECRET))
}

/// The HTTP status of a refused upgrade.
async fn refused_status(request: impl IntoClientRequest + Unpin) -> Result<u16> {
    match tokio_tungstenite::connect_async(request).await {
        Err(WsError::Http(response)) => Ok(response.status().as_u16()),
        Ok(_) => bail!("the upgrade was accepted"),
        Err(other) => bail!("unexpected error {other}"),
    }
}

async fn connect_url(url: String) -> Result<RawClient> {
    RawClient::connect_url(url).await
}

async fn expect_error(client: &mut RawClient, code: &str) -> Result<String> {
    match client.recv().await? {
        WsMessage::Error {
            code: got, message, ..
        } if got == code => Ok(message),
        other => bail!("expected Error {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_in_the_query_grants_exactly_its_channels() -> Result<()> {
    let server = spawn_server(secured()).await?;
    let t = token("alice", unix_now() + 60, &["prices:*"], &["prices:*"]);
    let mut client = connect_url(format!("ws://{}/?token={t}", server.local_addr())).await?;
    client.subscribe(&["prices:SOL-USDC"]).await?;
    client
        .send(&WsMessage::Subscribe {
            rewind: None,
            channels: vec!["prices:BONK".into(), "orders:alice".into()],
            since: Default::default(),
        })
        .await?;
    let message = expect_error(&mut client, codes::FORBIDDEN).await?;
    assert!(message.contains("orders:alice"), "{message}");
    assert_eq!(
        server.channel_count(),
        1,
        "a forbidden subscribe changes nothing"
    );
    client.publish("orders:x", "1").await?;
    expect_error(&mut client, codes::FORBIDDEN).await?;
    client.publish("prices:SOL-USDC", "2").await?;
    assert!(matches!(
        client.recv().await?,
        WsMessage::Publication { seq: 1, .. }
    ));
    Ok(())
}

#[tokio::test]
async fn a_private_channel_is_open_only_to_its_subject_via_bearer_header() -> Result<()> {
    let server = spawn_server(secured()).await?;
    let t = token("alice", unix_now() + 60, &["orders:{sub}"], &[]);
    let mut request = format!("ws://{}/", server.local_addr()).into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {t}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    let mut client = RawClient {
        ws,
        connection_id: 0,
    };
    assert!(matches!(client.recv().await?, WsMessage::Connected { .. }));
    client.subscribe(&["orders:alice"]).await?;
    client
        .send(&WsMessage::Subscribe {
            rewind: None,
            channels: vec!["orders:bob".into()],
            since: Default::default(),
        })
        .await?;
    expect_error(&mut client, codes::FORBIDDEN).await?;
    Ok(())
}

#[tokio::test]
async fn bad_and_expired_tokens_are_refused_at_the_upgrade() -> Result<()> {
    let server = spawn_server(secured()).await?;
    let addr = server.local_addr();
    let forged = encode(
        &Header::default(),
        &serde_json::json!({"sub": "eve", "exp": unix_now() + 60, "channels": ["*"]}),
        &EncodingKey::from_secret(b"wrong"),
    )?;
    assert_eq!(
        refused_status(format!("ws://{addr}/?token={forged}")).await?,
        401
    );
    let expired = token("alice", unix_now() - 10, &["*"], &[]);
    assert_eq!(
        refused_status(format!("ws://{addr}/?token={expired}")).await?,
        401
    );
    assert_eq!(
        refused_status(format!("ws://{addr}/?token=not.a.jwt")).await?,
        401
    );
    assert_eq!(server.connection_count(), 0);
    Ok(())
}

#[tokio::test]
async fn an_authenticate_frame_opens_a_connection_that_had_no_token() -> Result<()> {
    let server = spawn_server(secured()).await?;
    let mut client = RawClient::connect(server.local_addr()).await?;
    client
        .send(&WsMessage::Subscribe {
            rewind: None,
            channels: vec!["prices:x".into()],
            since: Default::default(),
        })
        .await?;
    expect_error(&mut client, codes::UNAUTHORIZED).await?;
    let t = token("bob", unix_now() + 60, &["prices:*"], &[]);
    client.send(&WsMessage::Authenticate { token: t }).await?;
    assert_eq!(
        client.recv().await?,
        WsMessage::Authenticated {
            user_id: "bob".into()
        }
    );
    client.subscribe(&["prices:x"]).await?;
    Ok(())
}

#[tokio::test]
async fn no_authentication_in_time_closes_with_1008() -> Result<()> {
    let server = spawn_server(secured().auth_timeout(Duration::from_millis(300))).await?;
    let mut client = RawClient::connect(server.local_addr()).await?;
    expect_error(&mut client, codes::UNAUTHORIZED).await?;
    let frame = client
        .close_frame()
        .await?
        .expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), close::POLICY_VIOLATION);
    Ok(())
}

#[tokio::test]
async fn a_refused_authenticate_frame_closes_with_1008() -> Result<()> {
    let server = spawn_server(secured()).await?;
    let mut client = RawClient::connect(server.local_addr()).await?;
    client
        .send(&WsMessage::Authenticate {
            token: "garbage".into(),
        })
        .await?;
    let message = expect_error(&mut client, codes::UNAUTHORIZED).await?;
    assert!(
        !message.contains("garbage"),
        "the token is echoed: {message}"
    );
    let frame = client
        .close_frame()
        .await?
        .expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), close::POLICY_VIOLATION);
    Ok(())
}

#[tokio::test]
async fn a_token_expiring_mid_connection_closes_it() -> Result<()> {
    let server = spawn_server(secured()).await?;
    let t = token("alice", unix_now() + 2, &["*"], &[]);
    let mut client = connect_url(format!("ws://{}/?token={t}", server.local_addr())).await?;
    client.subscribe(&["x"]).await?;
    let frame = client
        .close_frame()
        .await?
        .expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), close::POLICY_VIOLATION);
    assert_eq!(frame.reason.as_str(), "token expired");
    Ok(())
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().max_subscriptions(2)).await?;
    let mut client = RawClient::connect(server.local_addr()).await?;
    client.subscribe(&["a", "b"]).await?;
    client.subscribe(&["a"]).await?;
    client
        .send(&WsMessage::Subscribe {
            rewind: None,
            channels: vec!["c".into()],
            since: Default::default(),
        })
        .await?;
    expect_error(&mut client, codes::TOO_MANY_SUBSCRIPTIONS).await?;
    assert_eq!(server.channel_count(), 2);
    Ok(())
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_cut_while_a_neighbour_receives_everything() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().rate_limit(20.0, 10)).await?;
    let mut neighbour = RawClient::connect(server.local_addr()).await?;
    neighbour.subscribe(&["feed"]).await?;
    let mut abuser = RawClient::connect(server.local_addr()).await?;
    for _ in 0..200 {
        if abuser
            .ws
            .feed(Message::text(r#"{"type":"Ping"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = abuser.ws.flush().await;
    for n in 0..100 {
        server.publish("feed", &n).await?;
    }
    let (mut pongs, mut limited) = (0, 0);
    let close = loop {
        match abuser.next_frame().await? {
            Message::Text(text) => match WsMessage::from_json(text.as_str())? {
                WsMessage::Pong => pongs += 1,
                WsMessage::Error { code, .. } if code == codes::RATE_LIMITED => limited += 1,
                other => bail!("unexpected {other:?}"),
            },
            Message::Close(frame) => break frame,
            _ => {}
        }
    };
    assert_eq!(pongs, 10, "the burst is served");
    assert!(limited >= 1, "excess frames are answered rate_limited");
    assert_eq!(
        close.map(|f| u16::from(f.code)),
        Some(close::POLICY_VIOLATION)
    );
    for n in 1..=100u64 {
        match neighbour.recv().await? {
            WsMessage::Publication { seq, .. } => assert_eq!(seq, n),
            other => bail!("neighbour got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn publications_are_not_refused_by_default_and_a_token_can_set_its_own_rate() -> Result<()> {
    let burst = 5_000u64;
    // Defaults: a publisher's burst far above WS_RATE_LIMIT_BURST (2,000) is all published.
    let open = spawn_server(WebSocketServer::builder()).await?;
    let mut subscriber = RawClient::connect(open.local_addr()).await?;
    subscriber.subscribe(&["feed"]).await?;
    let mut publisher = RawClient::connect(open.local_addr()).await?;
    for n in 0..burst {
        let frame = format!(r#"{{"type":"Publish","channel":"feed","data":{n}}}"#);
        publisher.ws.feed(Message::text(frame)).await?;
    }
    publisher.ws.flush().await?;
    for n in 1..=burst {
        match subscriber.recv().await? {
            WsMessage::Publication { seq, .. } => assert_eq!(seq, n),
            other => bail!("after {n}: {other:?}"),
        }
    }

    // A hub limiting publications to 10/s: a token without the claim is refused past the
    // burst, one with `publish_rate: 0` is not.
    let mut config = WebSocketConfig::default();
    config.publish_rate_limit = 10.0;
    let limited = spawn_server(
        ServerBuilder::from_config(config).authenticator(JwtAuthenticator::hs256(SECRET)),
    )
    .await?;
    let refused_of = |claims: serde_json::Value| {
        let addr = limited.local_addr();
        async move {
            let token = encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(SECRET),
            )?;
            let (mut ws, _) =
                tokio_tungstenite::connect_async(format!("ws://{addr}/?token={token}")).await?;
            for _ in 0..100 {
                ws.feed(Message::text(
                    r#"{"type":"Publish","channel":"p","data":1}"#,
                ))
                .await?;
            }
            ws.feed(Message::text(r#"{"type":"Ping"}"#)).await?;
            ws.flush().await?;
            // (refused, answered the Ping): a flood of refusals ends in close 1008 instead.
            let mut refused = 0;
            within("the pong or the close", async {
                while let Some(frame) = ws.next().await {
                    match frame? {
                        Message::Text(text) => match WsMessage::from_json(text.as_str())? {
                            WsMessage::Pong => return Ok::<_, anyhow::Error>((refused, true)),
                            WsMessage::Error { code, .. } if code == codes::RATE_LIMITED => {
                                refused += 1;
                            }
                            _ => {}
                        },
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                Ok((refused, false))
            })
            .await?
        }
    };
    let exp = unix_now() + 60;
    let plain = refused_of(serde_json::json!({"sub": "u", "exp": exp, "publish": ["*"]})).await?;
    assert!(
        plain.0 >= 1,
        "the hub's 10/s limit refuses a burst of 100: {plain:?}"
    );
    let trusted = refused_of(
        serde_json::json!({"sub": "feed", "exp": exp, "publish": ["*"], "publish_rate": 0}),
    )
    .await?;
    assert_eq!(
        trusted,
        (0, true),
        "the token's publish_rate 0 lifts the limit"
    );
    Ok(())
}

#[tokio::test]
async fn foreign_origins_are_refused_with_403() -> Result<()> {
    let server =
        spawn_server(WebSocketServer::builder().allowed_origins(["https://app.example"])).await?;
    let url = format!("ws://{}/", server.local_addr());
    let mut foreign = url.clone().into_client_request()?;
    foreign
        .headers_mut()
        .insert("origin", "https://evil.example".parse()?);
    assert_eq!(refused_status(foreign).await?, 403);
    let mut friendly = url.clone().into_client_request()?;
    friendly
        .headers_mut()
        .insert("origin", "https://app.example".parse()?);
    assert!(tokio_tungstenite::connect_async(friendly).await.is_ok());
    // Not a browser: no Origin header, not affected.
    assert!(tokio_tungstenite::connect_async(url).await.is_ok());
    Ok(())
}

#[tokio::test]
async fn es256_tokens_checked_with_a_public_key_file_from_ws_variables() -> Result<()> {
    let pair = rcgen::KeyPair::generate()?;
    let dir = std::env::temp_dir().join(format!("ws-auth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key_path = dir.join("es256.pub.pem");
    std::fs::write(&key_path, pair.public_key_pem())?;
    let key_path = key_path.to_string_lossy().into_owned();
    let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
    let vars = [
        ("WS_JWT_PUBLIC_KEY", key_path.as_str()),
        ("WS_JWT_ALGORITHM", "ES256"),
    ];
    public_key_tokens_are_checked(&vars, jsonwebtoken::Algorithm::ES256, &signing).await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// A hub configured by `vars` accepts a token signed with `signing` (its channel claim
/// included) and refuses an HS256 one.
async fn public_key_tokens_are_checked(
    vars: &[(&str, &str)],
    algorithm: jsonwebtoken::Algorithm,
    signing: &EncodingKey,
) -> Result<()> {
    let config = WebSocketConfig::from_vars(vars.iter().copied())?;
    let server = spawn_server(ServerBuilder::from_config(config)).await?;
    let claims = serde_json::json!({"sub": "carol", "exp": unix_now() + 60, "channels": ["c"]});
    let signed = encode(&Header::new(algorithm), &claims, signing)?;
    let mut client = connect_url(format!("ws://{}/?token={signed}", server.local_addr())).await?;
    client.subscribe(&["c"]).await?;
    let hs = token("carol", unix_now() + 60, &["c"], &[]);
    assert_eq!(
        refused_status(format!("ws://{}/?token={hs}", server.local_addr())).await?,
        401
    );
    eventually("one connection", || server.connection_count() == 1).await?;
    Ok(())
}

/// An application's own scheme: API keys looked up in a table.
struct ApiKeys;

impl ws_server::Authenticator for ApiKeys {
    fn authenticate(&self, token: &str) -> Result<ws_server::Grant, ws_server::AuthError> {
        match token {
            "key-desk-1" => Ok(ws_server::Grant::new(
                "desk-1",
                vec!["desk:{sub}:*".into()],
                vec![],
                None,
            )),
            _ => Err(ws_server::AuthError("unknown API key".into())),
        }
    }
}

#[tokio::test]
async fn an_application_can_plug_in_its_own_check() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().authenticator(ApiKeys)).await?;
    let addr = server.local_addr();
    assert_eq!(
        refused_status(format!("ws://{addr}/?token=key-other")).await?,
        401
    );
    let mut client = connect_url(format!("ws://{addr}/?token=key-desk-1")).await?;
    client.subscribe(&["desk:desk-1:fills"]).await?;
    client
        .send(&WsMessage::Subscribe {
            rewind: None,
            channels: vec!["desk:desk-2:fills".into()],
            since: Default::default(),
        })
        .await?;
    expect_error(&mut client, codes::FORBIDDEN).await?;
    Ok(())
}

/// A 2048-bit RSA key made for this test only with `openssl genrsa` (ring cannot generate RSA
/// keys); it protects nothing.
const RS256_PRIVATE: &str = include_str!("../fixtures/rs256-test-only.key.pem");

#[tokio::test]
async fn rs256_tokens_checked_with_the_default_algorithm() -> Result<()> {
    let key_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/rs256-test-only.pub.pem"
    );
    let signing = EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes())?;
    public_key_tokens_are_checked(
        &[("WS_JWT_PUBLIC_KEY", key_path)],
        jsonwebtoken::Algorithm::RS256,
        &signing,
    )
    .await
}

#[tokio::test]
async fn our_client_learns_at_once_that_a_subscribe_was_refused() -> Result<()> {
    let server = spawn_server(secured()).await?;
    let t = token("alice", unix_now() + 60, &["orders:{sub}"], &[]);
    let client = ws_client::WebSocketClient::builder()
        .url(format!("ws://{}/?token={t}", server.local_addr()))
        .build()
        .await?;
    within("allowed", client.subscribe(["orders:alice"])).await??;
    match within("refused", client.subscribe(["orders:alice", "orders:bob"])).await? {
        Err(ws_client::Error::Subscribe(reason)) => {
            assert!(
                reason.contains("forbidden") && reason.contains("orders:bob"),
                "{reason}"
            );
        }
        other => bail!("expected a refusal, got {other:?}"),
    }
    // The refused channel is not kept (nor restored after a reconnect); the allowed one is.
    assert_eq!(server.subscription_count(), 1);
    within("allowed again", client.subscribe(["orders:alice"])).await??;
    Ok(())
}
