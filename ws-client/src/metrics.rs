//! [`Metrics`]: counters of what the client did.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A snapshot of the client's counters, from [`WebSocketClient::metrics`](crate::WebSocketClient::metrics).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// Frames written (data and protocol frames the application sent, subscribes included).
    pub messages_sent: u64,
    /// Bytes of those frames' payloads.
    pub bytes_sent: u64,
    /// Text and binary frames received.
    pub messages_received: u64,
    /// Bytes of those frames' payloads.
    pub bytes_received: u64,
    /// Connections re-established after a loss.
    pub reconnects: u64,
    /// Connection failures and server `Error` frames.
    pub errors: u64,
    /// Buffered frames dropped unsent because they grew older than the maximum buffer age.
    pub expired: u64,
    /// Frames waiting in the outbound buffer now.
    pub buffered: usize,
    /// Round trip of the last answered protocol ping.
    pub last_rtt: Option<Duration>,
    /// How long the client has had a connection up without a break; `None` while none is.
    pub connected_for: Option<Duration>,
    /// Total time connected since the client was built.
    pub total_connected: Duration,
    /// Per connection (one, or [`redundancy`](crate::ClientBuilder::redundancy) of them):
    /// how many publications it delivered first. Copies that lost the race are dropped.
    pub wins: Vec<u64>,
    /// Connections replaced by make-before-break rotation
    /// ([`max_connection_age`](crate::ClientBuilder::max_connection_age)).
    pub rotations: u64,
    /// Connections up now.
    pub connections_up: usize,
    /// Copies dropped because another connection delivered them first (hub publications
    /// with [`redundancy`](crate::ClientBuilder::redundancy), and
    /// [`sequence_by`](crate::ClientBuilder::sequence_by) feeds).
    pub copies_dropped: u64,
    /// How much earlier the winning copy arrived than a dropped one, over the latest
    /// [`LEADS_KEPT`] dropped copies: median and 99th percentile (`None` before any).
    pub lead_p50: Option<Duration>,
    /// See [`lead_p50`](Self::lead_p50).
    pub lead_p99: Option<Duration>,
}

/// How many of the latest leads [`Metrics::lead_p50`] and [`Metrics::lead_p99`] look at.
pub const LEADS_KEPT: usize = 4096;

/// The live counters behind [`Metrics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) rotations: AtomicU64,
    wins: Vec<AtomicU64>,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) expired: AtomicU64,
    /// Microseconds; 0 while none was measured.
    pub(crate) last_rtt_micros: AtomicU64,
    times: Mutex<Times>,
    copies_dropped: AtomicU64,
    /// The latest leads of a winning copy over a dropped one, microseconds.
    leads: Mutex<VecDeque<u64>>,
}

#[derive(Debug, Default)]
struct Times {
    /// Connections up now; "connected" below means at least one.
    up: usize,
    connected_at: Option<Instant>,
    total: Duration,
}

impl Counters {
    /// Counters for a client of `connections` connections.
    pub(crate) fn new(connections: usize) -> Self {
        Self {
            wins: (0..connections).map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// How many connections the client has.
    pub(crate) fn connections(&self) -> usize {
        self.wins.len()
    }

    /// Connection `connection` delivered a publication first.
    pub(crate) fn won(&self, connection: usize) {
        if let Some(wins) = self.wins.get(connection) {
            wins.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A copy lost the race; `lead` is how much earlier the winner arrived, when known.
    pub(crate) fn copy_lost(&self, lead: Option<Duration>) {
        self.copies_dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(lead) = lead {
            let micros = u64::try_from(lead.as_micros()).unwrap_or(u64::MAX);
            let mut leads = self.leads.lock().unwrap_or_else(|p| p.into_inner());
            if leads.len() == LEADS_KEPT {
                leads.pop_front();
            }
            leads.push_back(micros);
        }
    }

    pub(crate) fn connected(&self) {
        let mut times = self.times.lock().unwrap_or_else(|p| p.into_inner());
        times.up += 1;
        if times.up == 1 {
            times.connected_at = Some(Instant::now());
        }
    }

    pub(crate) fn disconnected(&self) {
        let mut times = self.times.lock().unwrap_or_else(|p| p.into_inner());
        times.up = times.up.saturating_sub(1);
        if times.up == 0
            && let Some(at) = times.connected_at.take()
        {
            times.total += at.elapsed();
        }
    }

    pub(crate) fn set_rtt(&self, rtt: Duration) {
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        self.last_rtt_micros.store(micros, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, buffered: usize) -> Metrics {
        let times = self.times.lock().unwrap_or_else(|p| p.into_inner());
        let connected_for = times.connected_at.map(|at| at.elapsed());
        let rtt = self.last_rtt_micros.load(Ordering::Relaxed);
        let mut leads: Vec<u64> = self
            .leads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        leads.sort_unstable();
        let percentile = |p: usize| {
            let last = leads.len().checked_sub(1)?;
            leads
                .get(last * p / 100)
                .map(|&us| Duration::from_micros(us))
        };
        Metrics {
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            buffered,
            last_rtt: (rtt > 0).then(|| Duration::from_micros(rtt)),
            connected_for,
            total_connected: times.total + connected_for.unwrap_or_default(),
            wins: self
                .wins
                .iter()
                .map(|w| w.load(Ordering::Relaxed))
                .collect(),
            rotations: self.rotations.load(Ordering::Relaxed),
            connections_up: times.up,
            copies_dropped: self.copies_dropped.load(Ordering::Relaxed),
            lead_p50: percentile(50),
            lead_p99: percentile(99),
        }
    }
}
