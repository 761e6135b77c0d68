//! `ws-cli status`: the hub's health and key metrics, read from its admin address
//! (`WS_ADMIN_ADDR`: `GET /health`, `GET /metrics`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of a response read.
const MAX_RESPONSE: u64 = 4 << 20;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The metrics shown, with their labels.
const SHOWN: [(&str, &str); 9] = [
    ("ws_connections", "connections"),
    ("ws_subscriptions", "subscriptions"),
    ("ws_channels", "channels"),
    ("ws_publications_total", "publications"),
    ("ws_frames_out_total", "frames out"),
    ("ws_bytes_out_total", "bytes out"),
    ("ws_slow_consumer_disconnects_total", "slow consumers cut"),
    ("ws_auth_failures_total", "auth failures"),
    ("ws_draining", "draining"),
];

/// `ws-cli status ADMIN_URL`
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The hub's admin address: http://HOST:PORT (its `WS_ADMIN_ADDR`).
    admin_url: String,
}

/// Prints the table; fails if the hub is not healthy.
pub(crate) async fn run(args: &StatusArgs) -> Result<ExitCode> {
    let authority = args
        .admin_url
        .strip_prefix("http://")
        .context("the admin URL must start with http://")?
        .trim_end_matches('/');
    let (health_status, health) = get(authority, "/health").await?;
    let (_, metrics) = get(authority, "/metrics").await?;
    println!("{:<20} {}", "hub", args.admin_url);
    println!("{:<20} {} {}", "health", health_status, health.trim());
    for (name, label) in SHOWN {
        let value = metrics
            .lines()
            .find_map(|line| {
                let (metric, value) = line.split_once(' ')?;
                (metric == name).then(|| value.trim())
            })
            .unwrap_or("-");
        println!("{label:<20} {value}");
    }
    Ok(if health_status == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `GET path` on `authority`: the status code and the body.
async fn get(authority: &str, path: &str) -> Result<(u16, String)> {
    let request = async {
        let mut stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot reach {authority}"))?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE)
            .read_to_end(&mut response)
            .await?;
        Ok::<_, anyhow::Error>(response)
    };
    let response = tokio::time::timeout(TIMEOUT, request)
        .await
        .with_context(|| format!("{authority}{path} did not answer within {TIMEOUT:?}"))??;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{authority}{path}: not an HTTP response");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{authority}{path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}
