//! Pieces the examples share: a synthetic price source, the clock, and Ctrl-C.
//!
//! The examples themselves are `price_feed.rs`, `strategy.rs` and `aggregator.rs` beside this
//! folder; run them with `cargo run --example NAME`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ws_protocol::WsMessage;

/// The mint of wrapped SOL.
pub const SOL_MINT: &str = "So11111111111111111111111111111111111111112";
/// The mint of USDC.
pub const USDC_MINT: &str = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v";
/// The channel the examples publish SOL-USDC prices on.
pub const SOL_USDC_CHANNEL: &str = "prices:SOL-USDC";
/// The hub the examples connect to unless told otherwise.
pub const DEFAULT_HUB: &str = "ws://127.0.0.1:8080";

/// The current Unix time in milliseconds.
pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A random walk of SOL-USDC prices, one `PriceUpdate` per call.
#[derive(Debug)]
pub struct SyntheticPrices {
    price: f64,
    rng: fastrand::Rng,
}

impl Default for SyntheticPrices {
    fn default() -> Self {
        Self {
            price: 187.0,
            rng: fastrand::Rng::new(),
        }
    }
}

impl SyntheticPrices {
    /// The next price: a step of at most ±0.1 %, stamped with the current time.
    pub fn next_update(&mut self) -> WsMessage {
        self.price *= 1.0 + (self.rng.f64() - 0.5) * 0.002;
        WsMessage::PriceUpdate {
            input_mint: SOL_MINT.to_owned(),
            output_mint: USDC_MINT.to_owned(),
            price: (self.price * 10_000.0).round() / 10_000.0,
            volume: self.rng.u64(1..5_000),
            timestamp: unix_millis(),
        }
    }
}

/// The value of `--name VALUE` among the command-line arguments.
pub fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == name {
            return args.next();
        }
    }
    None
}

/// Every value given as `--name VALUE`, in order.
pub fn args(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == name {
            found.extend(args.next());
        }
    }
    found
}

/// The period between messages for a rate in messages per second (at least 1).
pub fn period(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate.max(1.0))
}

/// Logs to stderr with `RUST_LOG` (default `warn`), so the examples' own output stays readable.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
