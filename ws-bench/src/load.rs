//! A load run: connect the subscribers (bounded concurrency, spread over source addresses),
//! publish for a while, let the deliveries drain, and report.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cold_channels::ColdChannels;
use crate::process::{CpuMark, rss_kib};
use crate::publisher::Publisher;
use crate::stats::{Report, Shared};
use crate::subscriber::{Progress, Protocol, Subscriber, WindowWait};

/// Settings of one load run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LoadArgs {
    /// The server, `ws://HOST:PORT`.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// What the server speaks.
    #[arg(long, value_enum, default_value = "hub")]
    pub protocol: Protocol,
    /// Where publishers connect, when not to `--url` (another hub of a cluster).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Subscribers that read.
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Subscribers that subscribe and then never read.
    #[arg(long, default_value_t = 0)]
    pub non_readers: usize,
    /// Publishers (0: only connect and measure memory).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Messages per second over all publishers; 0: as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages each publisher may have in flight (default 100 at max rate, none at a fixed
    /// rate; 0: no window).
    #[arg(long)]
    pub window: Option<u64>,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait after publishing for the deliveries to arrive.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Source addresses 127.0.0.2, 127.0.0.3, … to spread subscribers over (0: the default).
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// The hub channel.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Cold channels `cold:0…` the subscribers' hub follows besides the bench channel
    /// (subscribed 100 per connection before the run).
    #[arg(long, default_value_t = 0)]
    pub cold_channels: usize,
    /// Publications per second over the cold channels, round robin, on the publishers' hub
    /// (default: one per cold channel per second).
    #[arg(long)]
    pub cold_rate: Option<f64>,
    /// Publish on the cold channels without subscribing to them: the same publications
    /// through Redis, but no hub follows them (what the publications cost, apart from
    /// following them).
    #[arg(long)]
    pub cold_unfollowed: bool,
    /// The server's pid, to report its memory and CPU.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// A name for the run.
    #[arg(long, default_value = "run")]
    pub label: String,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Parses `ws://host:port[/]` into a socket address.
pub(crate) fn socket_addr(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("{url}: only ws:// URLs are supported by the bench"))?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    let mut addrs = std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .with_context(|| format!("cannot resolve {host_port}"))?;
    addrs
        .next()
        .with_context(|| format!("no address for {host_port}"))
}

/// Runs the load and returns its report.
pub(crate) async fn run(args: &LoadArgs) -> Result<Report> {
    let addr = socket_addr(&args.url)?;
    let shared = Arc::new(Shared::new());
    let stop = CancellationToken::new();
    let window_wait = Arc::new(WindowWait {
        wanted: AtomicU64::new(u64::MAX),
        ..Default::default()
    });
    let publishers = args.publishers.max(1);
    let total = args.subscribers + args.non_readers;

    let publish_addr = match &args.publish_url {
        Some(url) => socket_addr(url)?,
        None => addr,
    };
    let cold = if args.cold_channels > 0 {
        let rate = args.cold_rate.unwrap_or(args.cold_channels as f64);
        let followed = !args.cold_unfollowed;
        eprintln!(
            "{} {} cold channels, {rate} publications/s over them",
            if followed {
                "following"
            } else {
                "not following"
            },
            args.cold_channels
        );
        Some(ColdChannels::start(addr, publish_addr, args.cold_channels, rate, followed).await?)
    } else {
        None
    };

    let rss_before = args.server_pid.and_then(rss_kib);
    let connect_started = Instant::now();
    let slots = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (ready_tx, mut ready_rx) =
        tokio::sync::mpsc::channel::<Option<Arc<Progress>>>(total.max(1));
    let mut tasks = JoinSet::new();
    for i in 0..total {
        let source = (args.sources > 0 && addr.ip().is_loopback() && addr.is_ipv4()).then(|| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                2 + (i % usize::from(args.sources)) as u8,
            ))
        });
        let subscriber = Subscriber {
            addr,
            source,
            protocol: args.protocol,
            channel: args.channel.clone(),
            reads: i < args.subscribers,
        };
        let (shared, stop, slots, ready, window_wait) = (
            shared.clone(),
            stop.clone(),
            slots.clone(),
            ready_tx.clone(),
            window_wait.clone(),
        );
        let (connected, failed) = (connected.clone(), failed.clone());
        tasks.spawn(async move {
            let permit = slots.acquire_owned().await;
            let link = subscriber.connect().await;
            drop(permit);
            let (stream, buf) = match link {
                Ok(link) => link,
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let _ = ready.send(None).await;
                    return Err(e);
                }
            };
            connected.fetch_add(1, Ordering::Relaxed);
            let progress = Arc::new(Progress::new(publishers));
            let _ = ready.send(subscriber.reads.then(|| progress.clone())).await;
            drop(ready);
            subscriber
                .run(stream, buf, shared, progress, window_wait, stop)
                .await
        });
    }
    drop(ready_tx);
    let mut progress = Vec::with_capacity(args.subscribers);
    let mut answered = 0;
    let mut last_print = Instant::now();
    while answered < total {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(p)) => {
                answered += 1;
                progress.extend(p);
            }
            Ok(None) => break,
            Err(_) => bail!("connecting stalled at {answered} of {total}"),
        }
        if last_print.elapsed() > Duration::from_secs(1) {
            eprintln!("connecting: {answered}/{total}");
            last_print = Instant::now();
        }
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    let failures = failed.load(Ordering::Relaxed);
    if failures > 0 {
        eprintln!("warning: {failures} of {total} subscribers failed to connect");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = args.server_pid.and_then(rss_kib);
    let progress = Arc::new(progress);

    let duration = Duration::from_secs_f64(args.duration.max(0.0));
    let mut published_counts = Vec::new();
    let cpu = args.server_pid.and_then(CpuMark::now);
    let publish_started = Instant::now();
    let window = match (args.window, args.rate > 0.0) {
        (Some(0), _) => None,
        (Some(w), _) => Some(w),
        (None, true) => None,
        (None, false) => Some(100),
    };
    let mut publisher_tasks = JoinSet::new();
    if args.publishers > 0 {
        for id in 0..args.publishers {
            let publisher = Publisher {
                id: id as u32,
                addr: publish_addr,
                protocol: args.protocol,
                channel: args.channel.clone(),
                size: args.size,
                rate: (args.rate > 0.0).then(|| args.rate / args.publishers as f64),
                window,
            };
            let count = Arc::new(AtomicU64::new(0));
            published_counts.push(count.clone());
            let (progress, window_wait, stop) =
                (progress.clone(), window_wait.clone(), stop.clone());
            publisher_tasks.spawn(async move {
                publisher
                    .run(duration, progress, window_wait, count, stop)
                    .await
            });
        }
        // Progress line while publishing.
        let mut last = 0u64;
        while publish_started.elapsed() < duration {
            tokio::time::sleep(Duration::from_secs(1).min(duration)).await;
            let now = shared.deliveries.load(Ordering::Relaxed);
            let published: u64 = published_counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum();
            eprintln!(
                "{:>5.1} s  published {published:>10}  deliveries {now:>12}  ({:>10}/s)  connected {}",
                publish_started.elapsed().as_secs_f64(),
                now - last,
                connected.load(Ordering::Relaxed)
            );
            last = now;
        }
    }
    let publish_s = publish_started
        .elapsed()
        .as_secs_f64()
        .min(args.duration.max(0.0))
        .max(1e-9);
    let delivered_in_window = shared.deliveries.load(Ordering::Relaxed);
    let server_cpu = match (args.server_pid, cpu) {
        (Some(pid), Some(mark)) => mark.share_since(pid),
        _ => None,
    };

    // Drain: wait until every reading subscriber has every publisher's last message.
    let drain_started = Instant::now();
    let published: Vec<u64> = published_counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let drain_deadline = drain_started + Duration::from_secs_f64(args.drain_timeout);
    loop {
        let done = progress.iter().all(|p| {
            published
                .iter()
                .enumerate()
                .all(|(i, &n)| p.last[i].load(Ordering::Relaxed) >= n)
        });
        if done || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    let rss_end = args.server_pid.and_then(rss_kib);
    stop.cancel();
    while let Some(done) = publisher_tasks.join_next().await {
        if let Ok(Err(e)) = done {
            eprintln!("publisher failed: {e:#}");
        }
    }
    while tasks.join_next().await.is_some() {}
    if let Some(cold) = cold
        && let Err(e) = cold.stop().await
    {
        eprintln!("cold channels failed: {e:#}");
    }

    let published_total: u64 = published.iter().sum();
    let deliveries = shared.deliveries.load(Ordering::Relaxed);
    let expected = published_total * progress.len() as u64;
    let per_connection = match (rss_before, rss_connected) {
        (Some(b), Some(c)) if total > 0 => Some((c.saturating_sub(b)) as f64 / total as f64),
        _ => None,
    };
    Ok(Report {
        label: args.label.clone(),
        subscribers: args.subscribers,
        non_readers: args.non_readers,
        publishers: args.publishers,
        payload_bytes: args.size,
        target_rate: args.rate,
        duration_s: publish_s,
        connect_s,
        published: published_total,
        publish_rate: published_total as f64 / publish_s,
        deliveries,
        deliveries_per_s: delivered_in_window as f64 / publish_s,
        lost: expected.saturating_sub(deliveries),
        gaps: shared.gaps.load(Ordering::Relaxed),
        reordered: shared.reordered.load(Ordering::Relaxed),
        disconnected: shared.disconnected.load(Ordering::Relaxed),
        drain_s,
        latency_us: shared.latency_us(),
        server_rss_before_kib: rss_before,
        server_rss_connected_kib: rss_connected,
        server_rss_end_kib: rss_end,
        server_kib_per_connection: per_connection,
        server_cpu_cores: server_cpu,
        server_ns_per_delivery: server_cpu
            .filter(|_| delivered_in_window > 0)
            .map(|cores| cores * 1e9 * publish_s / delivered_in_window as f64),
    })
}
