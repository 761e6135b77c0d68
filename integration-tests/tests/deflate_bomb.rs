//! A decompression bomb against the hub (its own test binary, so that the process's memory
//! is the hub's and this test's alone): 32 MiB of spaces, a few KiB compressed, gets close
//! 1009 once the inflated bytes pass `WS_MAX_MESSAGE_SIZE`, with the process's peak memory
//! growing by less than 64 MiB, and the hub goes on serving other connections.

use anyhow::{Result, ensure};
use integration_tests::deflate_client::{DeflateClient, bomb, status_kib};
use integration_tests::{RawClient, spawn_server};
use ws_server::WebSocketServer;

#[tokio::test]
async fn thirty_two_mib_of_spaces_get_1009_with_memory_bounded() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let addr = server.local_addr();
    let payload = bomb(32 << 20)?;
    ensure!(
        payload.len() < 64 * 1024,
        "{} bytes compressed",
        payload.len()
    );
    let mut bystander = RawClient::connect(addr).await?;
    bystander.subscribe(&["calm"]).await?;

    let mut attacker =
        DeflateClient::connect(addr, Some("permessage-deflate; client_max_window_bits")).await?;
    attacker.recv_text().await?;
    let before = status_kib("VmRSS")?;
    attacker.send_frame(0xc1, &payload).await?;
    let code = loop {
        let frame = attacker.recv().await?;
        if frame.opcode == 0x8 {
            ensure!(frame.payload.len() >= 2);
            break u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
        }
    };
    assert_eq!(code, 1009, "close 1009: the message is too big");
    let peak = status_kib("VmHWM")?;
    ensure!(
        peak.saturating_sub(before) < 64 * 1024,
        "peak memory grew by {} KiB",
        peak.saturating_sub(before)
    );

    bystander.still_served("calm").await
}
