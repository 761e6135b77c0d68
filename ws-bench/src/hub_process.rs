//! Starting and stopping the hub under test as a child process, for the scenarios that
//! restart it (S9) or need it fresh.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::load::socket_addr;

/// A hub started with `sh -c COMMAND` and `WS_HOST`/`WS_PORT` taken from the URL.
pub(crate) struct HubProcess {
    command: String,
    url: String,
    child: Option<Child>,
}

impl HubProcess {
    /// Starts the hub and waits until it accepts connections.
    pub(crate) async fn start(command: &str, url: &str) -> Result<Self> {
        let mut hub = Self {
            command: command.to_owned(),
            url: url.to_owned(),
            child: None,
        };
        hub.spawn().await?;
        Ok(hub)
    }

    async fn spawn(&mut self) -> Result<()> {
        let addr = socket_addr(&self.url)?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {}", self.command))
            .env("WS_HOST", addr.ip().to_string())
            .env("WS_PORT", addr.port().to_string())
            .env("WS_MAX_CONNECTIONS", "100000")
            .env("WS_RATE_LIMIT", "1000000000")
            .env("WS_RATE_LIMIT_BURST", "1000000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.command))?;
        self.child = Some(child);
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("the hub did not start listening on {addr}")
    }

    /// Stops the hub with SIGTERM (graceful: close 1001 to every client) and waits for it.
    pub(crate) async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await?;
            }
            tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .context("the hub did not exit")??;
        }
        Ok(())
    }

    /// Starts it again.
    pub(crate) async fn restart(&mut self) -> Result<()> {
        self.spawn().await
    }
}
