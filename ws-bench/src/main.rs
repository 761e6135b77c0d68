//! `ws-bench`: drives a hub (or a baseline server) over real sockets on loopback and reports
//! deliveries/s, latency percentiles, loss, connect time, and the server's memory and CPU.
//!
//!     ws-bench load --url ws://127.0.0.1:8080 --subscribers 1000 --server-pid $(pgrep ws-server)
//!     ws-bench serve naive --addr 127.0.0.1:9001
//!     ws-bench client-publish --url ws://127.0.0.1:8080
//!
//! docs/BENCHMARKS.md lists every scenario as a command.

mod baseline;
mod client_publish;
mod client_receive;
mod cold_channels;
mod encodings;
mod hub_process;
mod jitter;
mod load;
mod payload;
mod process;
mod publisher;
mod redundancy;
mod stats;
mod storm;
mod subscriber;
mod wire;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(version, about = "Load generator and baselines for the ws hub")]
struct Cli {
    /// Runtime worker threads for the bench itself (1: single-threaded).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Subscribers, publishers, a rate or a window: the general load (scenarios S1-S7).
    Load(load::LoadArgs),
    /// One ws-client publishing as fast as it can through the hub (scenario S8).
    ClientPublish(client_publish::ClientPublishArgs),
    /// Reconnect storm: our clients through a hub restart (scenario S9).
    Storm(storm::StormArgs),
    /// Delivery while each client's connection is cut now and then (scenario S10).
    Jitter(jitter::JitterArgs),
    /// Latency with 1, 2 or 3 redundant connections over delaying paths (scenario S11).
    Redundancy(redundancy::RedundancyArgs),
    /// One client reading as fast as a sender sends, or at a rate (scenario S12).
    ClientReceive(client_receive::ClientReceiveArgs),
    /// Bytes on the wire and hub CPU per delivery for each encoding and compression
    /// (scenario S13).
    Encodings(encodings::EncodingsArgs),
    /// Runs a baseline server.
    Serve {
        /// Which baseline.
        #[arg(value_enum)]
        kind: Baseline,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9001")]
        addr: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Baseline {
    /// tokio-tungstenite + tokio::sync::broadcast, one task per connection, defaults.
    Naive,
    /// Encode once, write the same bytes to every socket, batched writes.
    Raw,
    /// S12's sender: numbered frames to every reader, at `/?rate=N` or as fast as it can.
    Blast,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    raise_fd_limit();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Encodings(args) => {
                println!(
                    "== S13 encodings: {} subscribers, {} publications/s for {} s per wire",
                    args.subscribers, args.rate, args.duration
                );
                let reports = encodings::run(&args).await?;
                for report in &reports {
                    println!("{}", report.line());
                }
                write_json(args.json.as_deref(), &reports)?;
            }
            Command::Load(args) => {
                let report = load::run(&args).await?;
                println!("{}", report.table());
                write_json(args.json.as_deref(), &report)?;
            }
            Command::ClientReceive(args) => {
                let report = client_receive::run(&args).await?;
                println!(
                    "== S12 client receive ({:?}, rate {})\nreceived {} = {:.0}/s over {:.1} s, latency p50 {:.0} us p99 {:.0} us p99.9 {:.0} us",
                    report.reader,
                    report.rate,
                    report.received,
                    report.received_per_s,
                    report.duration_s,
                    report.latency_us.p50,
                    report.latency_us.p99,
                    report.latency_us.p999,
                );
                write_json(args.json.as_deref(), &report)?;
            }
            Command::ClientPublish(args) => {
                let report = client_publish::run(&args).await?;
                println!(
                    "== S8 client publish\nsent {} ({} BufferFull retries), received {} = {:.0}/s over {:.1} s, latency p50 {:.0} us p99 {:.0} us{}",
                    report.sent,
                    report.buffer_full,
                    report.received,
                    report.received_per_s,
                    report.duration_s,
                    report.latency_us.p50,
                    report.latency_us.p99,
                    if report.missed > 0 {
                        format!(
                            "\n{} publications never reached the measuring subscriber (cut as a slow consumer): the rate above does not measure the client",
                            report.missed
                        )
                    } else {
                        String::new()
                    }
                );
                write_json(args.json.as_deref(), &report)?;
            }
            Command::Storm(args) => {
                let report = storm::run(&args).await?;
                println!(
                    "== S9 reconnect storm\n{} clients: all back {:.3} s after the hub returned (median {:.3} s, missing {}), peak {:.0} reconnects/s",
                    report.clients, report.all_back_s, report.median_back_s, report.missing, report.peak_reconnects_per_s
                );
                write_json(args.json.as_deref(), &report)?;
            }
            Command::Jitter(args) => {
                let report = jitter::run(&args).await?;
                println!(
                    "== S10 delivery under jitter\n{} clients, {} published, {} cuts: {:.2} % delivered (worst client {:.1} %)",
                    report.clients, report.published, report.cuts, report.delivered_percent, report.worst_client_percent
                );
                write_json(args.json.as_deref(), &report)?;
            }
            Command::Redundancy(args) => {
                let report = redundancy::run(&args).await?;
                println!("== S11 redundancy\nconnections  p50 µs  p99 µs  p99.9 µs  max µs  wins");
                for run in &report.runs {
                    println!(
                        "{:>11}  {:>6}  {:>6}  {:>8}  {:>6}  {:?}",
                        run.legs, run.p50_us, run.p99_us, run.p999_us, run.max_us, run.wins
                    );
                }
                write_json(args.json.as_deref(), &report)?;
            }
            Command::Serve { kind, addr } => {
                let listener = TcpListener::bind(&addr).await?;
                eprintln!("baseline listening on ws://{}", listener.local_addr()?);
                match kind {
                    Baseline::Naive => baseline::naive::serve(listener).await?,
                    Baseline::Raw => baseline::raw::serve(listener).await?,
                    Baseline::Blast => baseline::blast::serve(listener).await?,
                }
            }
        }
        Ok(())
    })
}

/// Prints the report as one JSON line, and writes it to `path` when given.
fn write_json(path: Option<&std::path::Path>, report: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(report)?)?;
    }
    println!("{}", serde_json::to_string(report)?);
    Ok(())
}

/// Raises this process's open-file limit to its hard limit: every connection is a file
/// descriptor. The hard limit itself is the machine's (see docs/BENCHMARKS.md).
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < 200_000 => {
            eprintln!(
                "open-file limit: {limit} (connections beyond it fail; raise the hard limit to go further)"
            );
        }
        Ok(_) => {}
        Err(e) => eprintln!("cannot raise the open-file limit: {e}"),
    }
}
