//! The `ws-server` binary, run as a newcomer would: configured by `WS_*` variables, stopped by
//! a signal.

// Helpers outside `#[test]` functions: a binary that cannot start fails the test.
#![allow(clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_ws-server");
const WAIT: Duration = Duration::from_secs(20);

/// Starts the binary with `vars` and returns it with a channel of its log lines (stderr).
fn spawn_hub(vars: &[(&str, &str)]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut command = Command::new(BINARY);
    command
        .env("WS_HOST", "127.0.0.1")
        .env("WS_PORT", "0")
        .env("WS_DRAIN_WINDOW", "0.2")
        .env("NO_COLOR", "1");
    for (name, value) in vars {
        command.env(name, value);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let logs = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(logs).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

#[test]
fn an_invalid_variable_is_rejected_naming_it() {
    let output = Command::new(BINARY)
        .env("WS_PORT", "abc")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("WS_PORT") && text.contains("abc"), "{text}");
}

#[test]
fn the_hub_starts_serves_and_stops_on_sigterm() {
    let (mut child, lines) = spawn_hub(&[("RUST_LOG", "info,ws_server::session=debug")]);
    let next_matching = |needle: &str| -> String {
        loop {
            let line = lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    };
    let ready = next_matching("hub ready on ws://");
    let addr = ready
        .rsplit("ws://")
        .next()
        .expect("an address")
        .trim()
        .to_owned();

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        use futures_util::StreamExt;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
            .await
            .expect("the hub accepts");
        let first = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a first frame");
        let text = first
            .expect("a frame")
            .expect("no error")
            .into_text()
            .expect("text");
        assert!(text.contains(r#""type":"Connected""#), "{text}");
    });
    next_matching("connection opened");

    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(killed.expect("kill runs").success());
    next_matching("hub stopped");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the hub did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tokens_never_reach_the_logs_even_at_trace_level() {
    let secret = "binary-test-secret-of-thirty-two-bytes";
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 60;
    let claims = serde_json::json!({"sub": "alice", "exp": exp, "channels": ["*"]});
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a token");
    let bad = format!("{good}tampered");
    let (mut child, lines) = spawn_hub(&[("WS_JWT_SECRET", secret), ("RUST_LOG", "trace")]);
    let mut seen = Vec::new();
    let addr = loop {
        let line = lines.recv_timeout(WAIT).expect("the hub logs its address");
        seen.push(line.clone());
        if let Some(addr) = line
            .rsplit("ws://")
            .next()
            .filter(|_| line.contains("hub ready"))
        {
            break addr.trim().to_owned();
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let accepted = tokio_tungstenite::connect_async(format!("ws://{addr}/?token={good}")).await;
        assert!(accepted.is_ok(), "a good token is accepted");
        let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/?token={bad}")).await;
        assert!(refused.is_err(), "a tampered token is refused");
    });
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(killed.expect("kill runs").success());
    let status = child.wait().expect("the hub exits");
    assert!(status.success(), "{status}");
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
        seen.push(line);
    }
    let all = seen.join("\n");
    assert!(
        all.contains("refused token"),
        "the refusal is logged: {all}"
    );
    assert!(
        !all.contains(&good[good.len() - 20..]),
        "a token leaked into the logs"
    );
    assert!(!all.contains(secret), "the secret leaked into the logs");
}

/// Runs the binary to its end with `args` and `vars`; returns its exit code, stdout and stderr.
fn run_to_end(args: &[&str], vars: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(BINARY);
    command.args(args).env("NO_COLOR", "1").env("WS_PORT", "0");
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = command.output().expect("the binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_and_version_print_and_exit_without_starting_a_hub() {
    let (code, stdout, _) = run_to_end(&["--help"], &[]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("--check") && stdout.contains("WS_"),
        "{stdout}"
    );
    let (code, stdout, _) = run_to_end(&["--version"], &[]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
    let (code, _, stderr) = run_to_end(&["--serve-forever"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unknown argument"), "{stderr}");
}

#[test]
fn check_validates_the_configuration_and_warns_about_unknown_variables() {
    let (code, stdout, stderr) = run_to_end(&["--check"], &[("WS_PROT", "9001")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("configuration valid"), "{stdout}");
    assert!(
        stderr.contains("WS_PROT") && stderr.contains("did you mean WS_PORT"),
        "{stderr}"
    );
    assert!(
        stderr.contains("WS_SEND_QUEUE_SIZE = 1024"),
        "one variable per line: {stderr}"
    );
    let (code, stdout, stderr) = run_to_end(&["--check"], &[("WS_PING_INTERVAL", "30s")]);
    assert_eq!(code, Some(2));
    assert!(!stdout.contains("valid"), "{stdout}");
    assert!(
        stderr.contains("WS_PING_INTERVAL=30s") && stderr.contains("number of seconds"),
        "{stderr}"
    );
}

#[test]
fn an_address_in_use_names_the_address_and_the_variables() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = taken.local_addr().expect("an address").port().to_string();
    let (code, _, stderr) =
        run_to_end(&[], &[("WS_HOST", "127.0.0.1"), ("WS_PORT", port.as_str())]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("WS_PORT"),
        "{stderr}"
    );
}

#[test]
fn a_tls_hub_says_wss_when_ready() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    let dir = std::env::temp_dir().join(format!("ws-binary-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("cert written");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("key written");
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let (mut child, lines) = spawn_hub(&[
        ("RUST_LOG", "info"),
        ("WS_TLS_CERT", cert.as_ref()),
        ("WS_TLS_KEY", key.as_ref()),
    ]);
    let ready = loop {
        let line = lines
            .recv_timeout(WAIT)
            .expect("the hub logs that it is ready");
        if line.contains("hub ready") {
            break line;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ready.contains("hub ready on wss://"), "{ready}");
}

#[test]
fn values_that_would_overflow_the_hub_are_refused_at_start_naming_the_range() {
    for (variable, value, range) in [
        ("WS_PING_INTERVAL", "1e19", "at most 31536000 seconds"),
        ("WS_AUTH_TIMEOUT", "1e19", "at most 31536000 seconds"),
        (
            "WS_MAX_MESSAGE_SIZE",
            "9223372036854775808",
            "at most 1073741824",
        ),
        (
            "WS_MAX_CONNECTIONS",
            "18446744073709551615",
            "at most 10000000",
        ),
        (
            "WS_HISTORY_MAX_BYTES",
            "18446744073709551615",
            "at most 1099511627776",
        ),
    ] {
        let (code, _, stderr) = run_to_end(&["--check"], &[(variable, value)]);
        assert_eq!(code, Some(2), "{variable}={value}: {stderr}");
        assert!(
            stderr.contains(variable) && stderr.contains(range),
            "{variable}={value}: {stderr}"
        );
    }
}

#[test]
fn a_short_jwt_secret_is_refused_without_showing_it() {
    let (code, _, stderr) = run_to_end(&["--check"], &[("WS_JWT_SECRET", "hunter2")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("WS_JWT_SECRET") && stderr.contains("at least 32 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the secret is shown: {stderr}");
    let (code, _, stderr) = run_to_end(
        &["--check"],
        &[("WS_JWT_SECRETS", "0123456789abcdef0123456789abcdef")],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("WS_JWT_SECRETS") && stderr.contains("did you mean WS_JWT_SECRET"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_redis_is_reported_at_error_level_once() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let (mut child, lines) = spawn_hub(&[("WS_REDIS_URL", url.as_str()), ("RUST_LOG", "info")]);
    let mut reports = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("cannot reach Redis") => {
                assert!(line.contains("ERROR"), "{line}");
                reports += 1;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(reports, 1, "one report for the outage, not one per retry");
}

#[test]
fn the_admin_port_does_not_spin_when_file_descriptors_run_out() {
    // A hub with few descriptors: connections to the admin port use them all up, and its
    // accept loop must wait rather than retry at once (it used to take a whole core).
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -n 48 && exec {BINARY}"))
        .env("WS_HOST", "127.0.0.1")
        .env("WS_PORT", "0")
        .env("WS_ADMIN_ADDR", admin.to_string())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn().expect("the binary starts");
    let mut held = Vec::new();
    let started = std::time::Instant::now();
    while held.len() < 200 && started.elapsed() < WAIT {
        match std::net::TcpStream::connect(admin) {
            Ok(stream) => held.push(stream),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    // With the descriptors gone, measure the hub's CPU time over two seconds.
    let cpu = || -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", child.id())).expect("the hub runs");
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: f64 =
            fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
        ticks / 100.0
    };
    let before = cpu();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu() - before;
    let _ = child.kill();
    let _ = child.wait();
    assert!(held.len() >= 48, "only {} admin connections", held.len());
    assert!(
        used < 0.5,
        "the hub used {used:.2} s of CPU in 2 s with no descriptors left"
    );
}

/// The address in the binary's "hub ready on ws://..." line.
fn ready_address(lines: &mpsc::Receiver<String>) -> String {
    loop {
        let line = lines.recv_timeout(WAIT).expect("the hub logs its address");
        if line.contains("hub ready on ws://") {
            return line
                .rsplit("ws://")
                .next()
                .expect("an address")
                .trim()
                .to_owned();
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to the hub and reads past its `Connected`.
async fn connect(addr: &str) -> Socket {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .expect("the hub accepts");
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["type"], "Connected", "{connected}");
    ws
}

/// The next text frame as JSON, within [`WAIT`].
async fn next_json(ws: &mut Socket) -> serde_json::Value {
    use futures_util::StreamExt;
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the connection stays open")
            .expect("no error");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

/// Sends `value` as one text frame.
async fn send_json(ws: &mut Socket, value: serde_json::Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        value.to_string(),
    ))
    .await
    .expect("the frame is sent");
}

/// Issue 15's restart seam, from outside: the hub process is killed with SIGKILL (no drain, no
/// goodbye), another takes its port and accepts five prices before the subscriber comes back
/// with its old position. The subscriber is told its old epoch is lost and then gets all five.
#[test]
fn after_kill_9_a_subscriber_gets_all_the_restarted_hub_accepted_before_it_came_back() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (mut first, lines) = spawn_hub(&[("RUST_LOG", "info")]);
    let addr = ready_address(&lines);
    let port = addr.rsplit(':').next().expect("a port").to_owned();
    let (epoch, seq) = runtime.block_on(async {
        let mut ws = connect(&addr).await;
        send_json(
            &mut ws,
            serde_json::json!({"type": "Subscribe", "channels": ["prices"]}),
        )
        .await;
        let subscribed = next_json(&mut ws).await;
        assert_eq!(subscribed["type"], "Subscribed", "{subscribed}");
        let epoch = subscribed["positions"]["prices"]["epoch"]
            .as_str()
            .expect("an epoch")
            .to_owned();
        for n in 1..=3 {
            send_json(
                &mut ws,
                serde_json::json!({"type": "Publish", "channel": "prices", "data": n}),
            )
            .await;
        }
        let mut seq = 0;
        while seq < 3 {
            let publication = next_json(&mut ws).await;
            assert_eq!(publication["type"], "Publication", "{publication}");
            seq = publication["seq"].as_u64().expect("a seq");
        }
        (epoch, seq)
    });
    first.kill().expect("SIGKILL is sent");
    first.wait().expect("the hub is gone");

    let (mut second, lines) = spawn_hub(&[("RUST_LOG", "info"), ("WS_PORT", port.as_str())]);
    let again = ready_address(&lines);
    assert_eq!(again, addr, "the new hub took the same port");
    runtime.block_on(async {
        let mut publisher = connect(&addr).await;
        for n in 1..=5 {
            send_json(
                &mut publisher,
                serde_json::json!({"type": "Publish", "channel": "prices", "data": 100 + n, "id": n}),
            )
            .await;
            let published = next_json(&mut publisher).await;
            assert_eq!(published["type"], "Published", "{published}");
            assert_eq!(published["seq"], n, "{published}");
        }
        let mut subscriber = connect(&addr).await;
        send_json(
            &mut subscriber,
            serde_json::json!({
                "type": "Subscribe",
                "channels": ["prices"],
                "since": {"prices": {"epoch": epoch, "seq": seq}},
            }),
        )
        .await;
        let subscribed = next_json(&mut subscriber).await;
        let position = &subscribed["positions"]["prices"];
        assert_eq!(position["recovered"], false, "{subscribed}");
        assert_ne!(position["epoch"].as_str(), Some(epoch.as_str()));
        assert_eq!(position["replay_from"], 1, "{subscribed}");
        for n in 1..=5u64 {
            let publication = next_json(&mut subscriber).await;
            assert_eq!(publication["type"], "Publication", "{publication}");
            assert_eq!(publication["seq"], n, "{publication}");
            assert_eq!(publication["data"], 100 + n, "{publication}");
        }
    });
    second.kill().expect("SIGKILL is sent");
    second.wait().expect("the hub is gone");
}
