//! The standalone hub: `cargo run --release -p ws-server`, configured by `WS_*` variables
//! (see `.env.example`), logging with `RUST_LOG` (default `info`). Ctrl-C or SIGTERM shuts it
//! down gracefully.

use std::process::ExitCode;

use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;
use ws_server::{ServerBuilder, WebSocketConfig};

/// What `--help` prints.
const HELP: &str = "\
ws-server: the fan-out hub of the ws toolkit.

Usage: ws-server [--check | --help | --version]

  (no option)  run the hub; Ctrl-C or SIGTERM drains and stops it
  --check      load and validate the configuration, print it, and exit
               (0: valid, 2: invalid)
  --help       print this help
  --version    print the version

Configuration comes from WS_* environment variables and a .env file in the current
directory (the environment wins); every variable and its default is in .env.example and
the README. Without WS_JWT_SECRET or WS_JWT_PUBLIC_KEY the hub is open to anyone.
Logs go to stderr; RUST_LOG sets the level (default info).
";

/// What the command line asks for.
enum Mode {
    Run,
    Check,
}

fn main() -> ExitCode {
    let mode = match std::env::args().nth(1).as_deref() {
        None => Mode::Run,
        Some("--check") => Mode::Check,
        Some("--help" | "-h") => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Some("--version" | "-V") => {
            println!("ws-server {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("ws-server: unknown argument {other:?}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    // One core (a pinned hub): a single-threaded scheduler, no work-stealing machinery.
    // Otherwise one worker per core; TOKIO_WORKER_THREADS overrides the count.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = if cores == 1 && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(mode)),
        Err(e) => {
            eprintln!("cannot start the Tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mode: Mode) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    for (name, closest) in WebSocketConfig::unknown_variables_in_env() {
        match closest {
            Some(known) => warn!("{name} is not a variable the hub reads (did you mean {known}?)"),
            None => warn!("{name} is not a variable the hub reads; see .env.example"),
        }
    }
    let config = match WebSocketConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    info!("configuration:\n{}", describe(&config));
    if let Mode::Check = mode {
        println!("configuration valid");
        return ExitCode::SUCCESS;
    }
    let mut config = config;
    config.max_connections = connection_limit(config.max_connections);
    let tls = config.tls_cert.is_some();
    let server = match ServerBuilder::from_config(config).bind_configured().await {
        Ok(server) => server,
        Err(e) => {
            error!("cannot start the hub: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if tls { "wss" } else { "ws" };
    info!("hub ready on {scheme}://{}", server.local_addr());

    wait_for_signal().await;
    info!(
        connections = server.connection_count(),
        "signal received, closing connections"
    );
    let window = server.config().drain_window;
    server.drain(window).await;
    ExitCode::SUCCESS
}

/// The configuration, one `WS_*` variable per line (secrets hidden).
fn describe(config: &WebSocketConfig) -> String {
    let text = format!("{config:#?}");
    // `{:#?}` gives one field per line, except values that span several (`Some(Secret(***))`,
    // a list): those lines are joined back onto their field's.
    let mut fields: Vec<(String, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        let continues = line.starts_with("        ")
            || (line.starts_with("    ") && line.trim().starts_with([')', ']', '}']));
        match fields.last_mut() {
            Some((_, pieces)) if continues => pieces.push(line.trim()),
            _ if line.starts_with("    ") => {
                if let Some((field, value)) = line.trim().split_once(": ") {
                    fields.push((field.to_uppercase(), vec![value]));
                }
            }
            _ => {}
        }
    }
    fields
        .iter()
        .map(|(field, pieces)| format!("  WS_{field} = {}", hide_password(&one_line(pieces))))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `value` with the password of each URL in it (`redis://user:password@host`) shown as
/// `***` (a list of cluster nodes has several).
fn hide_password(value: &str) -> String {
    let mut shown = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(scheme_end) = rest.find("://").map(|i| i + 3) {
        let (head, tail) = rest.split_at(scheme_end);
        shown.push_str(head);
        let end = tail.find(['/', '"', ',', ' ', ']']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rsplit_once('@') {
            Some((user_info, host)) => {
                match user_info.split_once(':') {
                    Some((user, _password)) => {
                        shown.push_str(user);
                        shown.push_str(":***");
                    }
                    None => shown.push_str(user_info),
                }
                shown.push('@');
                shown.push_str(host);
            }
            None => shown.push_str(authority),
        }
        rest = &tail[end..];
    }
    shown.push_str(rest);
    shown
}

/// The pieces of a multi-line `{:#?}` value on one line: `Some(`, `Secret(***),`, `),` make
/// `Some(Secret(***))`; `[`, `"a",`, `"b",`, `],` make `["a", "b"]`.
fn one_line(pieces: &[&str]) -> String {
    let mut value = String::new();
    for piece in pieces {
        if piece.starts_with([')', ']', '}']) {
            while value.ends_with([',', ' ']) {
                value.pop();
            }
        } else if !value.is_empty() && !value.ends_with(['(', '[', '{']) {
            value.push(' ');
        }
        value.push_str(piece);
    }
    value.trim_end_matches(',').to_owned()
}

/// Resolves on Ctrl-C, or on SIGTERM where there is one.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                return;
            }
            Err(e) => error!("cannot listen for SIGTERM: {e}"),
        }
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        error!("cannot listen for Ctrl-C: {e}");
        std::future::pending::<()>().await;
    }
}

/// Descriptors kept for the hub's own files (listeners, Redis, admin, logs) when the
/// connection limit follows the open-file limit.
const RESERVED_FILES: u64 = 64;

/// The connection limit for `WS_MAX_CONNECTIONS` (`configured`, 0 when unset). Every
/// connection is a file descriptor, so the open-file limit is first raised to its hard limit;
/// unset, the limit follows it (less what the hub keeps for itself), and a configured limit
/// above it is warned about.
fn connection_limit(configured: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            warn!(%error, "cannot raise the open-file limit; using the current one");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let may_open =
        usize::try_from(limit.saturating_sub(RESERVED_FILES).max(1)).unwrap_or(usize::MAX);
    if configured == 0 {
        info!(
            connections = may_open,
            open_file_limit = limit,
            "accepting up to {may_open} connections: WS_MAX_CONNECTIONS is unset, so the limit \
             follows the open-file limit ({limit}) less {RESERVED_FILES} kept for the hub's own files"
        );
        return may_open;
    }
    if configured > may_open {
        warn!(
            open_file_limit = limit,
            max_connections = configured,
            "the open-file limit is below WS_MAX_CONNECTIONS; raise the hard limit (ulimit -Hn)"
        );
    }
    configured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_is_one_line_per_variable_with_secrets_hidden() {
        let config = WebSocketConfig::from_vars([
            ("WS_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("WS_API_KEY", "fedcba9876543210"),
            ("WS_ALLOWED_ORIGINS", "https://a.example,https://b.example"),
            ("WS_REDIS_URL", "redis://hub:redis-pass@10.0.0.7:6379/0"),
        ])
        .unwrap();
        let text = describe(&config);
        assert!(
            text.contains("  WS_JWT_SECRET = Some(Secret(***))"),
            "{text}"
        );
        assert!(text.contains("  WS_API_KEY = Some(Secret(***))"), "{text}");
        assert!(
            text.contains(r#"  WS_ALLOWED_ORIGINS = ["https://a.example", "https://b.example"]"#),
            "{text}"
        );
        assert!(text.contains("  WS_PORT = 8080"), "{text}");
        assert!(
            text.contains(r#"  WS_REDIS_URL = Some("redis://hub:***@10.0.0.7:6379/0")"#),
            "{text}"
        );
        assert!(!text.contains("redis-pass"), "{text}");
        let nodes = WebSocketConfig::from_vars([(
            "WS_REDIS_CLUSTER_NODES",
            "redis://:p1@10.0.0.1:7000,redis://u:p2@10.0.0.2:7000/,redis://10.0.0.3:7000",
        )])
        .unwrap();
        let text = describe(&nodes);
        assert!(
            text.contains(r#"  WS_REDIS_CLUSTER_NODES = ["redis://:***@10.0.0.1:7000", "redis://u:***@10.0.0.2:7000/", "redis://10.0.0.3:7000"]"#),
            "{text}"
        );
        assert!(!text.contains("0123456789abcdef") && !text.contains("fedcba9876543210"));
        assert!(text.lines().all(|line| line.starts_with("  WS_")), "{text}");
    }
}
