//! Real proxy servers for the client's proxy tests, from Debian's packages: [`Socks5Server`]
//! (`microsocks`) and [`HttpProxy`] (`tinyproxy`, HTTP `CONNECT`), each on a free loopback
//! port, killed when dropped.
//!
//! Without the program installed, `start` returns `None` after printing a visible
//! `SKIPPED` line (the test then passes without testing anything), unless
//! `WS_REQUIRE_PROXIES=1` (as CI sets, after installing both), which makes it a failure.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::within;

/// A user name and password.
pub type Credentials<'a> = (&'a str, &'a str);

/// `microsocks` on a free port of 127.0.0.1.
#[derive(Debug)]
pub struct Socks5Server {
    addr: SocketAddr,
    child: Child,
}

impl Socks5Server {
    /// Starts it, requiring `credentials` if given.
    ///
    /// # Errors
    /// If it does not start, or is not installed while `WS_REQUIRE_PROXIES=1`.
    pub async fn start(credentials: Option<Credentials<'_>>) -> Result<Option<Self>> {
        if !installed("microsocks", "microsocks")? {
            return Ok(None);
        }
        let addr = free_port()?;
        let port = addr.port().to_string();
        let mut args = vec!["-i", "127.0.0.1", "-p", &port];
        if let Some((user, password)) = credentials {
            args.extend(["-u", user, "-P", password]);
        }
        let child = Command::new("microsocks")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting microsocks")?;
        accepting(addr, "microsocks").await?;
        Ok(Some(Self { addr, child }))
    }

    /// `socks5://[user:password@]127.0.0.1:PORT` (or `socks5h://` with `remote_dns`).
    pub fn url(&self, credentials: Option<Credentials<'_>>, remote_dns: bool) -> String {
        let scheme = if remote_dns { "socks5h" } else { "socks5" };
        format!("{scheme}://{}{}", userinfo(credentials), self.addr)
    }

    /// Kills it: every tunnel through it ends.
    ///
    /// # Errors
    /// If the process cannot be killed.
    pub async fn stop(&mut self) -> Result<()> {
        Ok(self.child.kill().await?)
    }
}

/// `tinyproxy` (HTTP `CONNECT`) on a free port of 127.0.0.1.
#[derive(Debug)]
pub struct HttpProxy {
    addr: SocketAddr,
    _child: Child,
    config: PathBuf,
}

impl HttpProxy {
    /// Starts it, requiring `credentials` (basic auth) if given, and allowing `CONNECT` only
    /// to `allowed_port` if given (else to any port).
    ///
    /// # Errors
    /// If it does not start, or is not installed while `WS_REQUIRE_PROXIES=1`.
    pub async fn start(
        credentials: Option<Credentials<'_>>,
        allowed_port: Option<u16>,
    ) -> Result<Option<Self>> {
        if !installed("tinyproxy", "tinyproxy")? {
            return Ok(None);
        }
        let addr = free_port()?;
        let mut config = format!(
            "Port {}\nListen 127.0.0.1\nTimeout 30\nMaxClients 64\nLogLevel Critical\n",
            addr.port()
        );
        if let Some((user, password)) = credentials {
            config.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        if let Some(port) = allowed_port {
            config.push_str(&format!("ConnectPort {port}\n"));
        }
        let path = std::env::temp_dir().join(format!(
            "ws-tinyproxy-{}-{}.conf",
            std::process::id(),
            addr.port()
        ));
        std::fs::write(&path, config)?;
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting tinyproxy")?;
        accepting(addr, "tinyproxy").await?;
        Ok(Some(Self {
            addr,
            _child: child,
            config: path,
        }))
    }

    /// `http://[user:password@]127.0.0.1:PORT`.
    pub fn url(&self, credentials: Option<Credentials<'_>>) -> String {
        format!("http://{}{}", userinfo(credentials), self.addr)
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

fn userinfo(credentials: Option<Credentials<'_>>) -> String {
    credentials.map_or_else(String::new, |(user, password)| {
        format!("{user}:{password}@")
    })
}

/// Whether `program` is on the `PATH`; if not, a visible skip or (with
/// `WS_REQUIRE_PROXIES=1`) an error naming the package to install.
fn installed(program: &str, package: &str) -> Result<bool> {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if on_path {
        return Ok(true);
    }
    if std::env::var("WS_REQUIRE_PROXIES").is_ok_and(|v| v == "1") {
        bail!("{program} is not installed and WS_REQUIRE_PROXIES=1: apt-get install -y {package}");
    }
    // Written to the process's stderr itself, not through `eprintln!`, which the test harness
    // captures: a skip must show in the normal `cargo test` output.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {}: {program} is not installed (apt-get install -y {package}); set \
         WS_REQUIRE_PROXIES=1 to make this a failure",
        std::thread::current().name().unwrap_or("a proxy test")
    );
    Ok(false)
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Waits until `addr` accepts connections.
async fn accepting(addr: SocketAddr, what: &str) -> Result<()> {
    within(&format!("{what} to listen on {addr}"), async {
        while TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}
