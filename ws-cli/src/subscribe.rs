//! `ws-cli subscribe`: each publication as one JSON line on stdout, everything else that
//! happens on stderr.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use ws_client::{Event, WebSocketClient};
use ws_protocol::Position;

use crate::connect::{Reach, connect};

/// `ws-cli subscribe URL CHANNEL...`
#[derive(Debug, clap::Args)]
pub(crate) struct SubscribeArgs {
    /// The hub (or, with --raw, any server): ws:// or wss://.
    url: String,
    /// The channels to follow (none with --raw).
    channels: Vec<String>,
    /// Start with the latest N publications of each channel (from the hub's history).
    #[arg(long, value_name = "N")]
    rewind: Option<u64>,
    /// Resume CHANNEL after publication SEQ of EPOCH (as printed at exit): the hub replays
    /// what its history holds after it. Repeatable; the channel need not be listed again.
    #[arg(long, value_name = "CHANNEL=EPOCH:SEQ", value_parser = parse_since)]
    since: Vec<(String, Position)>,
    /// The server is not the hub: print every message as it comes, one per line.
    #[arg(long)]
    raw: bool,
    /// Print a one-line summary (rate, total, round trip, reconnects) on stderr each second.
    #[arg(long)]
    stats: bool,
    /// Exit after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// Follows the channels until Ctrl-C, `--count` messages, or the client gives up.
pub(crate) async fn run(args: &SubscribeArgs, reach: Reach<'_>) -> Result<ExitCode> {
    if !args.raw && args.channels.is_empty() && args.since.is_empty() {
        bail!("name at least one channel (or use --raw for a server that is not the hub)");
    }
    if args.raw && !args.since.is_empty() {
        bail!("--since needs the hub (not --raw)");
    }
    let client = connect(&args.url, reach, args.raw).await?;
    let mut last_seen = BTreeMap::new();
    if !args.raw {
        if !args.since.is_empty() {
            client.subscribe_since(args.since.iter().cloned()).await?;
            for (channel, position) in &args.since {
                last_seen.insert(channel.clone(), position.seq);
            }
        }
        let plain: Vec<&String> = args
            .channels
            .iter()
            .filter(|c| !args.since.iter().any(|(s, _)| s == *c))
            .collect();
        if !plain.is_empty() {
            match args.rewind {
                Some(n) => client.subscribe_with_rewind(plain, n).await?,
                None => client.subscribe(plain).await?,
            }
        }
        let mut all: Vec<&str> = args.channels.iter().map(String::as_str).collect();
        all.extend(
            args.since
                .iter()
                .map(|(c, _)| c.as_str())
                .filter(|c| !args.channels.iter().any(|p| p == c)),
        );
        eprintln!("subscribed: {}", all.join(", "));
    }
    let outcome = follow(&client, args, &mut last_seen).await;
    resume_hint(&client, &last_seen);
    client.close().await;
    outcome
}

/// `CHANNEL=EPOCH:SEQ`.
fn parse_since(text: &str) -> Result<(String, Position), String> {
    let usage = || format!("{text:?}: expected CHANNEL=EPOCH:SEQ (as printed at exit)");
    let (channel, rest) = text.rsplit_once('=').ok_or_else(usage)?;
    let (epoch, seq) = rest.rsplit_once(':').ok_or_else(usage)?;
    let seq = seq.parse().map_err(|_| usage())?;
    if channel.is_empty() || epoch.is_empty() {
        return Err(usage());
    }
    Ok((
        channel.to_owned(),
        Position {
            epoch: epoch.to_owned(),
            seq,
        },
    ))
}

/// On stderr, the `--since` options that resume where this run stopped.
fn resume_hint(client: &WebSocketClient, last_seen: &BTreeMap<String, u64>) {
    let options: Vec<String> = last_seen
        .iter()
        .filter_map(|(channel, seq)| {
            let epoch = client.epoch(channel)?;
            Some(format!("--since '{channel}={epoch}:{seq}'"))
        })
        .collect();
    if !options.is_empty() {
        eprintln!("to resume: {}", options.join(" "));
    }
}

async fn follow(
    client: &WebSocketClient,
    args: &SubscribeArgs,
    last_seen: &mut BTreeMap<String, u64>,
) -> Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0u64;
    let mut last_second = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            return Ok(ExitCode::SUCCESS);
        }
        let event = tokio::select! {
            event = client.next_event() => event,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = tick.tick(), if args.stats => {
                let metrics = client.metrics();
                let rtt = metrics
                    .last_rtt
                    .map_or_else(|| "-".to_owned(), |rtt| format!("{:.1} ms", rtt.as_secs_f64() * 1e3));
                eprintln!(
                    "{} msg/s, {printed} in all, round trip {rtt}, {} reconnects",
                    printed - last_second,
                    metrics.reconnects
                );
                last_second = printed;
                continue;
            }
        };
        let Some(event) = event else {
            bail!("the client gave up ({:?})", client.state());
        };
        let line = match event {
            Event::Publication { channel, seq, data } => {
                let line = format!(
                    r#"{{"channel":{},"seq":{seq},"data":{}}}"#,
                    serde_json::to_string(&channel)?,
                    data.as_raw().get()
                );
                last_seen.insert(channel, seq);
                Some(line)
            }
            Event::Message(text) => Some(text.to_string()),
            Event::Binary(bytes) => Some(format!(
                r#"{{"binary":"{}"}}"#,
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )),
            other => {
                if let Event::Unrecovered { channel, seq, .. } = &other {
                    // Delivery goes on after `seq`, in the new epoch.
                    last_seen.insert(channel.clone(), *seq);
                }
                report(&other);
                None
            }
        };
        if let Some(line) = line {
            writeln!(stdout, "{line}")?;
            stdout.flush()?;
            printed += 1;
        }
    }
}

/// What is not a message, on stderr.
fn report(event: &Event) {
    match event {
        Event::Connected {
            connection,
            connection_id,
            reconnected,
        } => {
            let id = connection_id.map_or_else(String::new, |id| format!(", hub id {id}"));
            let what = if *reconnected {
                "reconnected"
            } else {
                "connected"
            };
            eprintln!("{what} (connection {connection}{id})");
        }
        Event::Disconnected { connection, reason } => {
            eprintln!("disconnected (connection {connection}): {reason}; reconnecting");
        }
        Event::Gap {
            channel,
            expected,
            received,
        } => eprintln!(
            "gap on {channel}: publications {expected} to {} could not be had",
            received.saturating_sub(1)
        ),
        Event::Unrecovered {
            channel,
            epoch,
            seq,
        } => eprintln!(
            "unrecovered {channel}: the hub could not replay what was missed (epoch {epoch}, delivery goes on after seq {seq}); take a fresh snapshot"
        ),
        Event::Lagged { channel, missed } => {
            eprintln!("lagged on {channel}: the hub dropped {missed}; asking its history");
        }
        Event::Conflated { channel, skipped } => {
            eprintln!("conflated on {channel}: {skipped} replaced by newer values");
        }
        Event::Expired { count } => eprintln!("{count} buffered outbound frames expired"),
        Event::ServerError { code, message } => eprintln!("hub error {code}: {message}"),
        other => eprintln!("{other:?}"),
    }
}
