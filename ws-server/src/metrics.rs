//! [`HubMetrics`]: the hub's counters, rendered in Prometheus text format for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::channel::ChannelUsage;

/// Upper bounds (seconds) of the fan-out time histogram.
const FANOUT_BUCKETS: [f64; 10] = [1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 1e-1];

/// Counters updated on the hot path with relaxed atomics.
#[derive(Debug, Default)]
pub(crate) struct HubMetrics {
    pub(crate) frames_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) publications: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
    pub(crate) slow_consumer_disconnects: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    /// Inbound frames refused by a rate limit.
    pub(crate) frames_refused: AtomicU64,
    /// TCP connections closed at once because `WS_MAX_PENDING_UPGRADES` were upgrading.
    pub(crate) upgrades_refused: AtomicU64,
    fanout_buckets: [AtomicU64; FANOUT_BUCKETS.len()],
    fanout_count: AtomicU64,
    fanout_sum_ns: AtomicU64,
}

impl HubMetrics {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` (possibly negative) to a gauge.
    pub(crate) fn add_signed(gauge: &AtomicU64, n: i64) {
        if n >= 0 {
            gauge.fetch_add(n.unsigned_abs(), Ordering::Relaxed);
        } else {
            gauge.fetch_sub(n.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Records how long one publication took to queue to every subscriber.
    pub(crate) fn observe_fanout(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = FANOUT_BUCKETS.iter().position(|&upper| secs <= upper) {
            self.fanout_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.fanout_count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.fanout_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the gauges the caller reads.
    pub(crate) fn render(&self, gauges: &Gauges) -> String {
        let Gauges {
            connections,
            pending_upgrades,
            channels,
            usage:
                ChannelUsage {
                    held: channels_held,
                    history_bytes,
                    evicted_publications,
                    evicted_channels,
                    idempotency_keys,
                    idempotency_refused,
                    idempotency_evicted,
                },
            draining,
        } = *gauges;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "ws_connections",
            "gauge",
            "Open WebSocket connections.",
            connections as u64,
        );
        metric(
            "ws_channels",
            "gauge",
            "Channels with at least one subscriber.",
            channels as u64,
        );
        metric(
            "ws_channels_held",
            "gauge",
            "Channels held, with subscribers or only history (bounded by WS_MAX_CHANNELS).",
            channels_held as u64,
        );
        metric(
            "ws_history_bytes",
            "gauge",
            "Bytes of history over all channels (bounded by WS_HISTORY_MAX_BYTES).",
            history_bytes as u64,
        );
        metric(
            "ws_history_evicted_total",
            "counter",
            "Publications forgotten, oldest first, to keep history within WS_HISTORY_MAX_BYTES.",
            evicted_publications,
        );
        metric(
            "ws_channels_evicted_total",
            "counter",
            "Channels held only for history forgotten to stay within WS_MAX_CHANNELS.",
            evicted_channels,
        );
        metric(
            "ws_idempotency_keys",
            "gauge",
            "Idempotency keys remembered (bounded by WS_IDEMPOTENCY_MAX_KEYS and WS_IDEMPOTENCY_WINDOW; embedded broker).",
            idempotency_keys as u64,
        );
        metric(
            "ws_idempotency_refused_total",
            "counter",
            "Keyed publications refused because WS_IDEMPOTENCY_MAX_KEYS keys were remembered, all for other channels.",
            idempotency_refused,
        );
        metric(
            "ws_idempotency_evicted_total",
            "counter",
            "Idempotency keys forgotten before WS_IDEMPOTENCY_WINDOW ended, oldest of their channel first, to stay within WS_IDEMPOTENCY_MAX_KEYS.",
            idempotency_evicted,
        );
        metric(
            "ws_pending_upgrades",
            "gauge",
            "TCP connections still upgrading (bounded by WS_MAX_PENDING_UPGRADES).",
            pending_upgrades as u64,
        );
        metric(
            "ws_upgrades_refused_total",
            "counter",
            "TCP connections closed at once because WS_MAX_PENDING_UPGRADES were upgrading.",
            get(&self.upgrades_refused),
        );
        metric(
            "ws_subscriptions",
            "gauge",
            "Subscriptions over all connections.",
            get(&self.subscriptions),
        );
        metric(
            "ws_draining",
            "gauge",
            "1 while the hub drains for shutdown.",
            u64::from(draining),
        );
        metric(
            "ws_connections_total",
            "counter",
            "Connections accepted since start.",
            get(&self.connections_total),
        );
        metric(
            "ws_frames_in_total",
            "counter",
            "Text frames received from clients.",
            get(&self.frames_in),
        );
        metric(
            "ws_bytes_in_total",
            "counter",
            "Payload bytes received from clients.",
            get(&self.bytes_in),
        );
        metric(
            "ws_frames_out_total",
            "counter",
            "Frames written to clients.",
            get(&self.frames_out),
        );
        metric(
            "ws_bytes_out_total",
            "counter",
            "Bytes written to clients.",
            get(&self.bytes_out),
        );
        metric(
            "ws_publications_total",
            "counter",
            "Publications fanned out.",
            get(&self.publications),
        );
        metric(
            "ws_slow_consumer_disconnects_total",
            "counter",
            "Connections cut because their queue overflowed.",
            get(&self.slow_consumer_disconnects),
        );
        metric(
            "ws_auth_failures_total",
            "counter",
            "Refused or missing tokens.",
            get(&self.auth_failures),
        );
        metric(
            "ws_frames_refused_total",
            "counter",
            "Inbound frames refused by a rate limit (WS_RATE_LIMIT, WS_PUBLISH_RATE_LIMIT).",
            get(&self.frames_refused),
        );
        let name = "ws_fanout_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to queue one publication to every subscriber (sampled, 1 publication in 16).\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (upper, bucket) in FANOUT_BUCKETS.iter().zip(&self.fanout_buckets) {
            cumulative += get(bucket);
            let _ = writeln!(out, "{name}_bucket{{le=\"{upper}\"}} {cumulative}");
        }
        let count = get(&self.fanout_count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", get(&self.fanout_sum_ns) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

/// The figures `/metrics` reads from elsewhere than the counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Gauges {
    pub(crate) connections: usize,
    pub(crate) pending_upgrades: usize,
    pub(crate) channels: usize,
    /// The channel registry's figures.
    pub(crate) usage: ChannelUsage,
    pub(crate) draining: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let metrics = HubMetrics::default();
        HubMetrics::add(&metrics.frames_in, 3);
        metrics.observe_fanout(Duration::from_micros(3));
        metrics.observe_fanout(Duration::from_millis(2));
        let text = metrics.render(&Gauges {
            connections: 5,
            channels: 2,
            usage: ChannelUsage {
                history_bytes: 1234,
                ..ChannelUsage::default()
            },
            ..Gauges::default()
        });
        assert!(text.contains("ws_history_bytes 1234\n"));
        assert!(text.contains("ws_connections 5\n"));
        assert!(text.contains("ws_frames_in_total 3\n"));
        assert!(
            text.contains("ws_fanout_seconds_bucket{le=\"0.000005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("ws_fanout_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("ws_fanout_seconds_count 2\n"));
    }
}
