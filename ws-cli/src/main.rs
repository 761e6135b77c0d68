//! `ws-cli`: the toolkit from a terminal, built on `ws-client`.
//!
//! - `ws-cli subscribe URL CHANNEL...`: each publication as one JSON line on stdout;
//!   connections, reconnects, gaps and unrecovered channels on stderr.
//! - `ws-cli publish URL CHANNEL [DATA]`: DATA, or each line of stdin, published and
//!   acknowledged; progress and a summary on stderr.
//! - `ws-cli status ADMIN_URL`: the hub's health and key metrics as a small table.
//!
//! `--token` (or `WS_TOKEN`) sends a JWT to hubs that require one; `--proxy` connects
//! through a proxy (else the shell's `https_proxy`/`http_proxy`/`all_proxy`/`no_proxy`).
//! Files: this one (the command line), `connect.rs` (the client every command builds),
//! `subscribe.rs`, `publish.rs`, `status.rs`.

mod connect;
mod publish;
mod status;
mod subscribe;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The ws toolkit from a terminal.
#[derive(Debug, Parser)]
#[command(name = "ws-cli", version, about)]
struct Cli {
    /// A JWT for hubs that require one (sent as `Authorization: Bearer …`).
    #[arg(long, global = true, env = "WS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Connect through this proxy: http://host:port (CONNECT), socks5://host:port or
    /// socks5h://host:port (the proxy resolves names), with user:password@ before the host
    /// if it needs them. Without it, https_proxy (wss://), http_proxy (ws://), all_proxy
    /// and no_proxy are followed, as curl does.
    #[arg(long, global = true, value_name = "URL")]
    proxy: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints each publication of CHANNEL... as one JSON line.
    Subscribe(subscribe::SubscribeArgs),
    /// Publishes DATA, or each line of stdin, to CHANNEL.
    Publish(publish::PublishArgs),
    /// Prints a hub's health and key metrics from its admin address.
    Status(status::StatusArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ws-cli: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let reach = connect::Reach {
        token: cli.token.as_deref(),
        proxy: cli.proxy.as_deref(),
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Subscribe(args) => subscribe::run(args, reach).await,
            Command::Publish(args) => publish::run(args, reach).await,
            Command::Status(args) => status::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ws-cli: {error:#}");
            ExitCode::FAILURE
        }
    }
}
