//! A decompression bomb against the hub (its own test binary, so that the process's memory
//! is the hub's and this test's alone): 32 MiB of spaces, a few KiB compressed, gets close
//! 1009 once the inflated bytes pass `WS_MAX_MESSAGE_SIZE`, with the process's peak memory
//! growing by less than 64 MiB, and the hub goes on serving other connections.

use anyhow::{Context, Result, ensure};
use flate2::{Compress, Compression, FlushCompress};
use integration_tests::deflate_client::DeflateClient;
use integration_tests::{RawClient, spawn_server};
use ws_server::WebSocketServer;

/// A field of /proc/self/status in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("a number")?
        .parse()?)
}

/// `total` bytes of spaces deflated at the best level, as a permessage-deflate payload,
/// made a MiB at a time.
fn bomb(total: usize) -> Result<Vec<u8>> {
    let mut deflate = Compress::new(Compression::best(), false);
    let chunk = vec![b' '; 1 << 20];
    let mut out = Vec::with_capacity(64 * 1024);
    for _ in 0..total / chunk.len() {
        let before = deflate.total_in();
        while deflate.total_in() - before < chunk.len() as u64 {
            let at = usize::try_from(deflate.total_in() - before)?;
            out.reserve(4096);
            deflate.compress_vec(&chunk[at..], &mut out, FlushCompress::None)?;
        }
    }
    loop {
        out.reserve(4096);
        deflate.compress_vec(&[], &mut out, FlushCompress::Sync)?;
        if out.ends_with(&[0, 0, 0xff, 0xff]) {
            break;
        }
    }
    out.truncate(out.len() - 4);
    Ok(out)
}

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
