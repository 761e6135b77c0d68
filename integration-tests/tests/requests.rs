//! Request/reply through the hub (issue 15): a client's `Request` reaches the application
//! embedding the hub, whose answer comes back as `Reply` or `Error` with the same `id`; no
//! application, no answer in time, or a dropped request each get an `Error` naming it.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use integration_tests::{RawClient, spawn_server, within};
use ws_protocol::{Payload, WsMessage, codes};
use ws_server::ServerBuilder;

fn request(id: u64, method: &str, data: &str) -> WsMessage {
    WsMessage::Request {
        id,
        method: method.to_owned(),
        data: Payload::from_json(data).unwrap_or_else(|e| panic!("{data}: {e}")),
    }
}

#[tokio::test]
async fn requests_are_answered_by_the_application_or_refused_by_name() -> Result<()> {
    let hub =
        spawn_server(ServerBuilder::default().request_timeout(Duration::from_millis(300))).await?;
    let mut client = RawClient::connect(hub.local_addr()).await?;

    // No application takes requests yet.
    client.send(&request(1, "orders.place", "{}")).await?;
    match within("an answer", client.recv()).await?? {
        WsMessage::Error {
            code, id: Some(1), ..
        } if code == codes::UNSUPPORTED => {}
        other => bail!("expected unsupported for id 1, got {other:?}"),
    }

    let mut requests = hub.requests();
    let application = tokio::spawn(async move {
        let mut unanswered = Vec::new();
        while let Some(request) = requests.recv().await {
            match request.method.as_str() {
                "echo" => {
                    let data: serde_json::Value =
                        serde_json::from_str(request.data.as_raw().get())?;
                    let from = request.connection.get();
                    request.reply(&serde_json::json!({"echo": data, "from": from}))?;
                }
                "refuse" => request.fail("insufficient_funds", "not enough SOL"),
                "drop" => drop(request),
                // Never answered: held until the end, so the client gets a timeout.
                _ => unanswered.push(request),
            }
        }
        anyhow::Ok(())
    });

    client.send(&request(2, "echo", r#"{"qty":5}"#)).await?;
    match within("a reply", client.recv()).await?? {
        WsMessage::Reply { id: 2, data } => {
            let data: serde_json::Value = serde_json::from_str(data.as_raw().get())?;
            ensure!(data["echo"]["qty"] == 5, "{data}");
        }
        other => bail!("expected Reply id 2, got {other:?}"),
    }
    client.send(&request(3, "refuse", "null")).await?;
    match within("a refusal", client.recv()).await?? {
        WsMessage::Error {
            code,
            message,
            id: Some(3),
            ..
        } => {
            ensure!(code == "insufficient_funds" && message == "not enough SOL");
        }
        other => bail!("expected the application's error for id 3, got {other:?}"),
    }
    client.send(&request(4, "drop", "null")).await?;
    match within("a dropped request", client.recv()).await?? {
        WsMessage::Error {
            code, id: Some(4), ..
        } if code == codes::UNAVAILABLE => {}
        other => bail!("expected unavailable for id 4, got {other:?}"),
    }
    drop(application);
    Ok(())
}

#[tokio::test]
async fn a_request_nobody_answers_in_time_is_a_timeout() -> Result<()> {
    let hub =
        spawn_server(ServerBuilder::default().request_timeout(Duration::from_millis(200))).await?;
    let mut requests = hub.requests();
    let mut client = RawClient::connect(hub.local_addr()).await?;
    client.send(&request(9, "slow", "null")).await?;
    // The application takes the request and holds it past the deadline.
    let held = within("the request", requests.recv()).await?;
    match within("a timeout", client.recv()).await?? {
        WsMessage::Error {
            code,
            message,
            id: Some(9),
            ..
        } if code == codes::TIMEOUT => {
            ensure!(message.contains("outcome is unknown"), "{message}");
        }
        other => bail!("expected timeout for id 9, got {other:?}"),
    }
    // A late answer goes nowhere (the client was told) and breaks nothing.
    if let Some(late) = held {
        late.reply(&1)?;
    }
    client.send(&WsMessage::Ping).await?;
    ensure!(matches!(
        within("a pong", client.recv()).await??,
        WsMessage::Pong
    ));
    Ok(())
}
