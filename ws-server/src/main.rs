//! The standalone hub: `cargo run --release -p ws-server`, configured by `WS_*` variables
//! (see `.env.example`), logging with `RUST_LOG` (default `info`). Ctrl-C or SIGTERM shuts it
//! down gracefully.

use std::process::ExitCode;

use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;
use ws_server::{ServerBuilder, WebSocketConfig};

fn main() -> ExitCode {
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
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("cannot start the Tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let config = match WebSocketConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    info!(?config, "configuration loaded");
    // Every connection is a file descriptor: take the whole hard limit.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (limit as usize) < config.max_connections + 64 => warn!(
            limit,
            max_connections = config.max_connections,
            "the open-file limit is below WS_MAX_CONNECTIONS; raise the hard limit (ulimit -Hn)"
        ),
        Ok(limit) => info!(limit, "open-file limit"),
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
    let server = match ServerBuilder::from_config(config).bind_configured().await {
        Ok(server) => server,
        Err(e) => {
            error!("cannot start the hub: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!("hub ready on ws://{}", server.local_addr());

    wait_for_signal().await;
    info!(
        connections = server.connection_count(),
        "signal received, closing connections"
    );
    let window = server.config().drain_window;
    server.drain(window).await;
    ExitCode::SUCCESS
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
