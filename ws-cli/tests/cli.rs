//! `ws-cli` end to end: the binary against a hub on 127.0.0.1:0 (the hub's library in this
//! process, the CLI in its own): publish lines from stdin and read them back with
//! `--rewind` and resume after them with `--since`, follow a channel live, a token for a hub
//! that requires one, a SOCKS5 proxy (microsocks) from `--proxy` or the environment, and
//! the status table from the admin address.

use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use integration_tests::proxy_servers::Socks5Server;
use integration_tests::{sign_hs256, spawn_server, unix_now, within};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use ws_server::{JwtAuthenticator, WebSocketServer};

const SECRET: &[u8] = b"cli-test-secret-of-at-least-32-bytes";

fn cli(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ws-cli"));
    command
        .args(args)
        .env_remove("WS_TOKEN")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Waits for `child` to end; its exit success, stdout and stderr.
async fn finish(child: Child) -> Result<(bool, String, String)> {
    let output = within("ws-cli to finish", child.wait_with_output()).await??;
    Ok((
        output.status.success(),
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

#[tokio::test]
async fn publish_from_stdin_then_read_back_with_rewind() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder()).await?;
    let url = format!("ws://{}", server.local_addr());
    let mut publisher = cli(&["publish", &url, "prices:SOL-USDC"]).spawn()?;
    let mut stdin = publisher.stdin.take().context("stdin")?;
    stdin
        .write_all(b"{\"price\":187.42}\n\n{\"price\":187.43}\nnot json\n")
        .await?;
    drop(stdin);
    let (ok, _, stderr) = finish(publisher).await?;
    ensure!(ok, "publish failed: {stderr}");
    ensure!(
        stderr.contains("published 3, refused 0, seqs 1 to 3"),
        "{stderr}"
    );

    let reader = cli(&[
        "subscribe",
        &url,
        "prices:SOL-USDC",
        "--rewind",
        "3",
        "--count",
        "3",
    ])
    .spawn()?;
    let (ok, stdout, stderr) = finish(reader).await?;
    ensure!(ok, "subscribe failed: {stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"channel": "prices:SOL-USDC", "seq": 1, "data": {"price": 187.42}}),
            serde_json::json!({"channel": "prices:SOL-USDC", "seq": 2, "data": {"price": 187.43}}),
            serde_json::json!({"channel": "prices:SOL-USDC", "seq": 3, "data": "not json"}),
        ]
    );

    // At exit it says how to resume; resuming replays what came after, and only that.
    let resume = stderr
        .lines()
        .find_map(|line| line.strip_prefix("to resume: --since '"))
        .and_then(|rest| rest.strip_suffix('\''))
        .with_context(|| format!("no resume hint in {stderr}"))?;
    ensure!(
        resume.starts_with("prices:SOL-USDC=") && resume.ends_with(":3"),
        "{resume}"
    );
    for n in 4..=5 {
        server
            .publish("prices:SOL-USDC", &serde_json::json!({"n": n}))
            .await?;
    }
    let resumed = cli(&["subscribe", &url, "--since", resume, "--count", "2"]).spawn()?;
    let (ok, stdout, stderr) = finish(resumed).await?;
    ensure!(ok, "subscribe --since failed: {stderr}");
    let seqs: Vec<u64> = stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).map(|v| v["seq"].as_u64()))
        .collect::<Result<Option<_>, _>>()?
        .context("seqs")?;
    assert_eq!(seqs, vec![4, 5]);
    let bad = cli(&["subscribe", &url, "--since", "prices:SOL-USDC=41"]).spawn()?;
    let (ok, _, stderr) = finish(bad).await?;
    ensure!(!ok && stderr.contains("CHANNEL=EPOCH:SEQ"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn the_proxy_comes_from_the_option_or_the_environment() -> Result<()> {
    let user = ("cli", "proxy-pass");
    let Some(proxy) = Socks5Server::start(Some(user)).await? else {
        return Ok(());
    };
    let server = spawn_server(WebSocketServer::builder()).await?;
    server
        .publish("prices:SOL-USDC", &serde_json::json!({"price": 1}))
        .await?;
    let url = format!("ws://{}", server.local_addr());
    let args = [
        "subscribe",
        &url,
        "prices:SOL-USDC",
        "--rewind",
        "1",
        "--count",
        "1",
    ];
    // From the environment, as curl reads it: the wrong password shows it is used.
    let mut wrong = cli(&args);
    wrong.env("ALL_PROXY", proxy.url(Some((user.0, "wrong")), false));
    let (ok, _, stderr) = finish(wrong.spawn()?).await?;
    ensure!(
        !ok && stderr.contains("refused the user name and password"),
        "{stderr}"
    );
    let mut right = cli(&args);
    right.env("all_proxy", proxy.url(Some(user), true));
    let (ok, stdout, stderr) = finish(right.spawn()?).await?;
    ensure!(ok && stdout.contains(r#""seq":1"#), "{stdout} {stderr}");
    // no_proxy exempts the hub: the wrong proxy is not used.
    let mut exempt = cli(&args);
    exempt
        .env("ALL_PROXY", proxy.url(Some((user.0, "wrong")), false))
        .env("NO_PROXY", "127.0.0.1");
    let (ok, _, stderr) = finish(exempt.spawn()?).await?;
    ensure!(ok, "{stderr}");
    // The option wins over the environment.
    let mut option = cli(&[&args[..], &["--proxy", &proxy.url(Some(user), false)]].concat());
    option.env("ALL_PROXY", "http://127.0.0.1:9");
    let (ok, stdout, stderr) = finish(option.spawn()?).await?;
    ensure!(ok && stdout.contains(r#""seq":1"#), "{stdout} {stderr}");
    Ok(())
}

/// Spawns `ws-cli subscribe` and waits until it says it is subscribed.
async fn subscribed(args: &[&str]) -> Result<(Child, tokio::process::ChildStderr)> {
    let mut child = cli(args).spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        let n = within("ws-cli to subscribe", lines.read_line(&mut line)).await??;
        ensure!(n > 0, "ws-cli ended before subscribing");
        if line.starts_with("subscribed:") {
            break;
        }
    }
    Ok((child, lines.into_inner()))
}

#[tokio::test]
async fn a_live_channel_is_printed_line_by_line_with_a_token() -> Result<()> {
    let server =
        spawn_server(WebSocketServer::builder().authenticator(JwtAuthenticator::hs256(SECRET)))
            .await?;
    let url = format!("ws://{}", server.local_addr());
    let claims = serde_json::json!({"sub": "cli", "exp": unix_now() + 600, "channels": ["trades:*"], "publish": []});
    let token = sign_hs256(SECRET, &claims);

    // Without the token the hub closes the connection (1008 unauthorized), and the CLI
    // says so.
    let refused = cli(&["subscribe", &url, "trades:BTC", "--count", "1"]).spawn()?;
    let (ok, _, stderr) = finish(refused).await?;
    ensure!(!ok && stderr.contains("unauthorized"), "{stderr}");

    let (child, _stderr) = subscribed(&[
        "subscribe",
        &url,
        "trades:BTC",
        "--count",
        "2",
        "--token",
        &token,
    ])
    .await?;
    server
        .publish("trades:BTC", &serde_json::json!({"px": 1}))
        .await?;
    server
        .publish("trades:BTC", &serde_json::json!({"px": 2}))
        .await?;
    let mut stdout = String::new();
    let mut child = child;
    let mut out = child.stdout.take().context("stdout")?;
    within("two lines", out.read_to_string(&mut stdout)).await??;
    let status = within("exit", child.wait()).await??;
    ensure!(status.success());
    assert_eq!(
        stdout,
        "{\"channel\":\"trades:BTC\",\"seq\":1,\"data\":{\"px\":1}}\n{\"channel\":\"trades:BTC\",\"seq\":2,\"data\":{\"px\":2}}\n"
    );
    Ok(())
}

#[tokio::test]
async fn status_prints_health_and_metrics() -> Result<()> {
    let server = spawn_server(WebSocketServer::builder().admin_addr("127.0.0.1:0")).await?;
    let admin = server.admin_addr().context("admin address")?;
    // One subscriber, so the table has something to show.
    let (_child, _stderr) = subscribed(&[
        "subscribe",
        &format!("ws://{}", server.local_addr()),
        "book",
    ])
    .await?;
    let status = cli(&["status", &format!("http://{admin}")]).spawn()?;
    let (ok, stdout, stderr) = finish(status).await?;
    ensure!(ok, "status failed: {stderr}");
    let row = |label: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(label))
            .map(|l| l[label.len()..].trim().to_owned())
    };
    assert_eq!(
        row("health").as_deref().map(|h| h.starts_with("200")),
        Some(true),
        "{stdout}"
    );
    assert_eq!(row("connections").as_deref(), Some("1"), "{stdout}");
    assert_eq!(row("subscriptions").as_deref(), Some("1"), "{stdout}");
    Ok(())
}
