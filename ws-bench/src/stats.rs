//! What a run measured: counters shared by every connection, the latency histogram, and the
//! report printed as a table and written as JSON.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Counters and the latency histogram, shared by every subscriber.
pub(crate) struct Shared {
    /// Publications received by all subscribers.
    pub deliveries: AtomicU64,
    /// Publications that never arrived, seen as gaps in a publisher's sequence.
    pub gaps: AtomicU64,
    /// Publications that arrived out of order or twice.
    pub reordered: AtomicU64,
    /// Subscribers whose connection ended before the run did.
    pub disconnected: AtomicU64,
    /// One-way latency in nanoseconds.
    latency: Mutex<Histogram<u64>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    /// Empty counters; latencies from 1 µs to 60 s at 3 significant digits.
    #[allow(clippy::expect_used)] // constant bounds, checked by every run
    pub(crate) fn new() -> Self {
        Self {
            deliveries: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            latency: Mutex::new(
                Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
                    .expect("constant, valid bounds"),
            ),
        }
    }

    /// Adds a batch of latencies (ns) recorded by one subscriber.
    pub(crate) fn record(&self, batch: &mut Vec<u64>) {
        if batch.is_empty() {
            return;
        }
        self.deliveries
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut hist = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        for &ns in batch.iter() {
            hist.saturating_record(ns.max(1_000));
        }
        batch.clear();
    }

    /// Latency percentiles in microseconds.
    pub(crate) fn latency_us(&self) -> Latency {
        let hist = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let at = |q: f64| hist.value_at_quantile(q) as f64 / 1_000.0;
        Latency {
            samples: hist.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: hist.max() as f64 / 1_000.0,
        }
    }
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    /// Samples recorded.
    pub samples: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// Everything one run reports.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// A name for the run (scenario and server).
    pub label: String,
    /// Subscribers that read.
    pub subscribers: usize,
    /// Subscribers that never read.
    pub non_readers: usize,
    /// Publishers.
    pub publishers: usize,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Target rate (messages/s over all publishers); 0 = as fast as the window allows.
    pub target_rate: f64,
    /// Seconds of publishing.
    pub duration_s: f64,
    /// Seconds until every subscriber was connected (and subscribed).
    pub connect_s: f64,
    /// Messages published.
    pub published: u64,
    /// Messages published per second.
    pub publish_rate: f64,
    /// Deliveries received.
    pub deliveries: u64,
    /// Deliveries per second over the publishing window.
    pub deliveries_per_s: f64,
    /// Deliveries expected but not received by the end of the drain (reading subscribers).
    pub lost: u64,
    /// Gaps seen in sequences (a subset of `lost` that was overtaken by later messages).
    pub gaps: u64,
    /// Deliveries out of order or duplicated.
    pub reordered: u64,
    /// Reading subscribers whose connection ended early.
    pub disconnected: u64,
    /// Seconds from the publisher's stop until every reading subscriber had everything
    /// (or the drain timeout).
    pub drain_s: f64,
    /// One-way latency.
    pub latency_us: Latency,
    /// Server RSS before the subscribers connected, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Server RSS once every subscriber was connected, KiB.
    pub server_rss_connected_kib: Option<u64>,
    /// Server RSS at the end of the run, KiB.
    pub server_rss_end_kib: Option<u64>,
    /// Server memory per connection, KiB: (connected - before) / connections.
    pub server_kib_per_connection: Option<f64>,
    /// Server CPU during publishing, in cores.
    pub server_cpu_cores: Option<f64>,
    /// Server CPU time per delivery, nanoseconds (CPU cores / deliveries per second).
    pub server_ns_per_delivery: Option<f64>,
}

impl Report {
    /// The report as a readable table.
    pub(crate) fn table(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        let l = &self.latency_us;
        format!(
            "== {label}\n\
             subscribers        {subs} (+{non} non-reading), publishers {pubs}, payload {size} B, rate {rate}\n\
             connect everyone   {connect:.3} s\n\
             published          {published} ({publish_rate:.0}/s over {dur:.1} s)\n\
             deliveries         {deliveries} ({dps:.0}/s)\n\
             lost               {lost} (gaps {gaps}, reordered {reordered}, disconnected {disc})\n\
             drain              {drain:.3} s\n\
             latency us         p50 {p50:.0}  p90 {p90:.0}  p99 {p99:.0}  p99.9 {p999:.0}  max {max:.0}\n\
             server RSS KiB     before {b}  connected {c}  end {e}  per connection {per}\n\
             server CPU         {cpu}, {per_delivery} ns per delivery\n",
            label = self.label,
            subs = self.subscribers,
            non = self.non_readers,
            pubs = self.publishers,
            size = self.payload_bytes,
            rate = if self.target_rate > 0.0 {
                format!("{}/s", self.target_rate)
            } else {
                "max (windowed)".to_owned()
            },
            connect = self.connect_s,
            published = self.published,
            publish_rate = self.publish_rate,
            dur = self.duration_s,
            deliveries = self.deliveries,
            dps = self.deliveries_per_s,
            lost = self.lost,
            gaps = self.gaps,
            reordered = self.reordered,
            disc = self.disconnected,
            drain = self.drain_s,
            p50 = l.p50,
            p90 = l.p90,
            p99 = l.p99,
            p999 = l.p999,
            max = l.max,
            b = opt(self.server_rss_before_kib),
            c = opt(self.server_rss_connected_kib),
            e = opt(self.server_rss_end_kib),
            per = self
                .server_kib_per_connection
                .map_or("-".to_owned(), |v| format!("{v:.2}")),
            cpu = self
                .server_cpu_cores
                .map_or("-".to_owned(), |v| format!("{:.0} % of a core", v * 100.0)),
            per_delivery = self
                .server_ns_per_delivery
                .map_or("-".to_owned(), |v| format!("{v:.0}")),
        )
    }
}
