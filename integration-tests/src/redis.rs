//! [`RedisServer`]: a real `redis-server` on a free loopback port, for the tests of hubs that
//! share channels through Redis.
//!
//! Without `redis-server` installed, [`RedisServer::start`] returns `None` after printing why
//! (the test then passes without testing anything), unless `WS_REQUIRE_REDIS=1` (as CI sets),
//! which makes it a failure.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::within;

/// A `redis-server` child process without persistence; killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    addr: SocketAddr,
    child: Option<Child>,
}

/// Whether `tools` (`redis-server`, `redis-cli`) are installed. Without them it prints
/// `SKIPPED` (to the process's stderr itself, not through `eprintln!`, which the test harness
/// captures: a skip must show in the normal `cargo test` output) and answers `false`, unless
/// `WS_REQUIRE_REDIS=1`, which makes it an error.
///
/// # Errors
/// If a tool is missing while `WS_REQUIRE_REDIS=1`.
pub fn installed(tools: &[&str]) -> Result<bool> {
    let installed = tools.iter().all(|tool| {
        std::process::Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !installed {
        if std::env::var("WS_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
            bail!(
                "{tools:?} not installed and WS_REQUIRE_REDIS=1: apt-get install -y redis-server"
            );
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {}: redis-server is not installed (apt-get install -y redis-server); \
             set WS_REQUIRE_REDIS=1 to make this a failure",
            std::thread::current().name().unwrap_or("a Redis test")
        );
    }
    Ok(installed)
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1.
    ///
    /// # Errors
    /// If it does not start, or is not installed while `WS_REQUIRE_REDIS=1`.
    pub async fn start() -> Result<Option<Self>> {
        if !installed(&["redis-server"])? {
            return Ok(None);
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
        };
        server.spawn().await?;
        Ok(Some(server))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.addr.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        within("redis-server to answer PING", async {
            loop {
                if self.ping().await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Sends one inline command (words separated by spaces) and returns the first line of
    /// the reply (`:42`, `+OK`, `$5`, `-ERR …`).
    ///
    /// # Errors
    /// If the server cannot be reached or does not answer within the test timeout.
    pub async fn query(&self, command: &str) -> Result<String> {
        within(&format!("redis-server to answer {command}"), async {
            let mut stream = TcpStream::connect(self.addr).await?;
            stream
                .write_all(format!("{command}\r\n").as_bytes())
                .await?;
            let mut reply = Vec::new();
            let mut byte = [0u8; 1];
            while !reply.ends_with(b"\r\n") {
                stream.read_exact(&mut byte).await?;
                reply.push(byte[0]);
            }
            reply.truncate(reply.len() - 2);
            Ok(String::from_utf8_lossy(&reply).into_owned())
        })
        .await?
    }

    async fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(self.addr).await else {
            return false;
        };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").await.is_ok()
            && stream.read_exact(&mut reply).await.is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Kills the server (its data is gone: no persistence).
    ///
    /// # Errors
    /// If the process cannot be killed.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts it again on the same port, empty.
    ///
    /// # Errors
    /// If it does not start.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn().await
    }
}
