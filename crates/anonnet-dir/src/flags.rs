//! Earned flags (`docs/protocol.md` §14.4). An authority tests each relay's reachability
//! every period and keeps a [`RelayHistory`]; flags follow from it and from thresholds that
//! are configuration (real defaults in days; a testnet uses seconds).
//!
//! - Running: reachable in the last test.
//! - Valid: its descriptor verified and its NodeId proved by a QUIC handshake.
//! - Stable: weighted mean time between failures ≥ [`FlagThresholds::stable_mtbf`].
//! - Guard: Stable and Running, known for ≥ [`FlagThresholds::guard_min_known`], weighted
//!   fractional uptime ≥ [`FlagThresholds::guard_min_wfu`], measured bandwidth ≥ the lower
//!   of [`FlagThresholds::guard_min_bandwidth`] and the median of the measured relays.
//! - Exit: its descriptor's exit summary accepts some port.
//! - HSDir: Running, and up without interruption for ≥ [`FlagThresholds::hsdir_min_uptime`].
//!
//! Weighted figures decay by half every [`FlagThresholds::half_life`] seconds, so old
//! behaviour counts less than recent behaviour (Tor decays by 0.95 every 12 hours).

use crate::entry::RelayFlags;

/// Thresholds for earned flags, all in seconds except where said.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagThresholds {
    /// Weighted mean time between failures for Stable (default 5 days).
    pub stable_mtbf: u64,
    /// Time since first seen for Guard (default 8 days).
    pub guard_min_known: u64,
    /// Weighted fractional uptime for Guard, 0.0..=1.0 (default 0.98).
    pub guard_min_wfu: f64,
    /// Measured bandwidth (bytes per second) that always suffices for Guard (default
    /// 1 MB/s); below it a relay needs at least the median.
    pub guard_min_bandwidth: u32,
    /// Uninterrupted uptime for HSDir (default 96 hours).
    pub hsdir_min_uptime: u64,
    /// Half-life of the weighted figures (default 12 hours).
    pub half_life: u64,
}

impl Default for FlagThresholds {
    fn default() -> Self {
        FlagThresholds {
            stable_mtbf: 5 * 86_400,
            guard_min_known: 8 * 86_400,
            guard_min_wfu: 0.98,
            guard_min_bandwidth: 1_000_000,
            hsdir_min_uptime: 96 * 3600,
            half_life: 12 * 3600,
        }
    }
}

/// What one authority remembers of one relay's reachability (all times Unix seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct RelayHistory {
    /// When this authority first reached the relay.
    pub first_seen: u64,
    /// When the last test ran.
    pub last_test: u64,
    /// Whether the last test reached it.
    pub reachable: bool,
    /// Start of the current uninterrupted run (when `reachable`).
    pub up_since: u64,
    /// Decayed seconds observed up.
    pub weighted_up: f64,
    /// Decayed seconds observed at all.
    pub weighted_total: f64,
    /// Decayed count of up→down transitions.
    pub weighted_failures: f64,
}

impl RelayHistory {
    /// A history starting with a test at `now`.
    pub fn new(now: u64, reachable: bool) -> RelayHistory {
        RelayHistory {
            first_seen: now,
            last_test: now,
            reachable,
            up_since: now,
            weighted_up: 0.0,
            weighted_total: 0.0,
            weighted_failures: 0.0,
        }
    }

    /// Record a test at `now`: the time since the last test counts as up when the previous
    /// test found the relay up (the relay is assumed to keep its state between tests).
    /// A test older than the last one is ignored.
    pub fn record(&mut self, now: u64, reachable: bool, t: &FlagThresholds) {
        if now < self.last_test {
            return;
        }
        let elapsed = (now - self.last_test) as f64;
        let decay = if t.half_life == 0 {
            0.0
        } else {
            0.5f64.powf(elapsed / t.half_life as f64)
        };
        self.weighted_up *= decay;
        self.weighted_total *= decay;
        self.weighted_failures *= decay;
        self.weighted_total += elapsed;
        if self.reachable {
            self.weighted_up += elapsed;
        }
        if self.reachable && !reachable {
            self.weighted_failures += 1.0;
        }
        if !self.reachable && reachable {
            self.up_since = now;
        }
        self.reachable = reachable;
        self.last_test = now;
    }

    /// Weighted fractional uptime, 0.0..=1.0 (1.0 before any time was observed).
    pub fn wfu(&self) -> f64 {
        if self.weighted_total <= 0.0 {
            1.0
        } else {
            self.weighted_up / self.weighted_total
        }
    }

    /// Weighted mean time between failures (seconds): observed up time per failure, the
    /// current run counting as one.
    pub fn mtbf(&self) -> f64 {
        self.weighted_up / (self.weighted_failures + 1.0)
    }

    /// The flags this history earns at `now`. `exit` says whether the descriptor's summary
    /// accepts some port; `measured` is the relay's measured bandwidth and `median` the
    /// median over measured relays (bytes per second).
    pub fn flags(
        &self,
        now: u64,
        t: &FlagThresholds,
        exit: bool,
        measured: u32,
        median: u32,
    ) -> RelayFlags {
        let mut f = RelayFlags::VALID;
        if exit {
            f.insert(RelayFlags::EXIT);
        }
        if !self.reachable {
            return f;
        }
        f.insert(RelayFlags::RUNNING);
        let run = now.saturating_sub(self.up_since);
        let stable = t.stable_mtbf == 0 || (run > 0 && self.mtbf() >= t.stable_mtbf as f64);
        if stable {
            f.insert(RelayFlags::STABLE);
        }
        let known = now.saturating_sub(self.first_seen);
        let fast = measured > 0 && measured >= t.guard_min_bandwidth.min(median);
        if stable && known >= t.guard_min_known && self.wfu() >= t.guard_min_wfu && fast {
            f.insert(RelayFlags::GUARD);
        }
        if run >= t.hsdir_min_uptime {
            f.insert(RelayFlags::HSDIR);
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> FlagThresholds {
        FlagThresholds {
            stable_mtbf: 10,
            guard_min_known: 20,
            guard_min_wfu: 0.9,
            guard_min_bandwidth: 1000,
            hsdir_min_uptime: 15,
            half_life: 3600,
        }
    }

    #[test]
    fn flags_are_earned_by_uptime() {
        let t = quick();
        let mut h = RelayHistory::new(0, true);
        let f = h.flags(0, &t, false, 5000, 5000);
        assert!(f.contains(RelayFlags::RUNNING) && f.contains(RelayFlags::VALID));
        assert!(!f.contains(RelayFlags::STABLE) && !f.contains(RelayFlags::GUARD));
        for s in (5..=30).step_by(5) {
            h.record(s, true, &t);
        }
        let f = h.flags(30, &t, true, 5000, 5000);
        for want in [
            RelayFlags::STABLE,
            RelayFlags::GUARD,
            RelayFlags::HSDIR,
            RelayFlags::EXIT,
        ] {
            assert!(f.contains(want), "{:?}", f.names());
        }
    }

    #[test]
    fn a_new_relay_gets_no_guard_however_fast_it_claims_to_be() {
        let t = quick();
        let mut h = RelayHistory::new(100, true);
        h.record(110, true, &t);
        let f = h.flags(110, &t, false, u32::MAX, 1000);
        assert!(!f.contains(RelayFlags::GUARD));
    }

    #[test]
    fn slow_relays_and_flapping_relays_lose_guard_and_running() {
        let t = quick();
        let mut h = RelayHistory::new(0, true);
        for s in (5..=40).step_by(5) {
            h.record(s, true, &t);
        }
        // Below both the absolute floor and the median: no Guard.
        assert!(!h.flags(40, &t, false, 10, 5000).contains(RelayFlags::GUARD));
        h.record(45, false, &t);
        let f = h.flags(45, &t, false, 5000, 5000);
        assert!(!f.contains(RelayFlags::RUNNING) && !f.contains(RelayFlags::GUARD));
        assert!(f.contains(RelayFlags::VALID));
        h.record(50, true, &t);
        // Back up: Running again, but the uninterrupted run restarted (no HSDir yet).
        let f = h.flags(50, &t, false, 5000, 5000);
        assert!(f.contains(RelayFlags::RUNNING) && !f.contains(RelayFlags::HSDIR));
        assert!(h.wfu() < 1.0);
    }
}
