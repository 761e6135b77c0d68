//! Memory and CPU of the server under test, read from `/proc/PID`.

use std::time::Instant;

/// Clock ticks per second of `/proc/PID/stat` CPU times (Linux's USER_HZ).
pub(crate) const TICKS_PER_SECOND: f64 = 100.0;

/// Resident memory of `pid` in KiB, if it can be read.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// User + system CPU time of `pid` in ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A CPU-time reading to compare with a later one.
pub(crate) struct CpuMark {
    ticks: u64,
    at: Instant,
}

impl CpuMark {
    /// Reads `pid`'s CPU time now.
    pub(crate) fn now(pid: u32) -> Option<Self> {
        Some(Self {
            ticks: cpu_ticks(pid)?,
            at: Instant::now(),
        })
    }

    /// The share of one core `pid` used since this mark (1.0 = one full core).
    pub(crate) fn share_since(&self, pid: u32) -> Option<f64> {
        let ticks = cpu_ticks(pid)?.saturating_sub(self.ticks) as f64;
        let secs = self.at.elapsed().as_secs_f64();
        (secs > 0.0).then(|| ticks / TICKS_PER_SECOND / secs)
    }
}
