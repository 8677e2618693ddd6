//! Link congestion control: quinn's BBR with its window held to what the link uses
//! (docs/protocol.md §8.1, links' congestion control).
//!
//! quinn-proto 0.11.19's BBR never leaves startup while the sender is application-limited,
//! and in startup it adds every acknowledged byte to its window. A relay link is nearly
//! always application-limited (the circuits' own windows decide what is sent, §6.4), so the
//! window grows without end: 40–140 MB after a 64 MiB download on the `broadband` WAN
//! testnet. quinn paces at the window per round trip, so such a window disables pacing;
//! each circuit SENDME then releases its 100 cells at once, and the bursts overflow
//! buffers on the path (on the emulated WAN 2.4–3.6 % of the link's packets were lost with
//! the emulator's own loss switched off, 0.3 % with CUBIC's paced window). Every loss
//! stalls the circuit's in-order stream for a link round trip, which the circuit's Vegas
//! reads as queueing.
//!
//! [`CappedBbrConfig`] builds BBR, and [`CappedWindow`] caps the window it reports at
//! [`CAP_GAIN_PCT`] % of the most bytes the link had in flight over the last one to two
//! round trips (the "validated" window of RFC 7661, new-CWV), never below BBR's initial
//! window: the link may still grow what it sends by that share every round trip, and
//! quinn paces at 1.25 × the window per round trip, so at most about 1.4 × the rate in
//! use. The cap was twice the bytes in flight until 2026-12-07; pacing at 2.5 × the rate
//! let each burst of cells (a circuit `SENDME`, or the cells released when a lost packet
//! is repaired upstream) overflow a 100 ms queue on the `broadband` WAN testnet: up to
//! 270 KB lost in one round trip on one link with the emulator's own loss switched off.
//!
//! [`CappedWindow`] also passes a loss on to BBR only when the link lost more than 2 % of
//! the bytes it sent over the last one to two round trips (BBRv2's `loss_thresh`), or on
//! persistent congestion. quinn's BBR (v1) answers every loss with a round trip of packet
//! conservation, its window cut to what is in flight: on a relay link that is often a
//! small part of the path's capacity, because a circuit's cells come in bursts as its
//! `SENDME`s return. On the `broadband` WAN testnet (0.1 % loss per host link) the relay
//! links' windows fell as low as 83 KB while they carried 3.9 MB/s over 95 ms, and cells
//! waited in quinn's send buffer, which the circuits' Vegas read as queueing. Random
//! loss below 2 % is not congestion that a smaller window would relieve; above it, or
//! when quinn declares persistent congestion, BBR hears every loss as before.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Losses reach the inner controller only when more than one byte in this many sent over
/// the last one to two round trips was lost (50: 2 %, BBRv2's `loss_thresh`), or on
/// persistent congestion.
pub const LOSS_THRESHOLD_INV: u64 = 50;

/// The cap on the window, in percent of the most bytes in flight over the last one to two
/// round trips (docs/protocol.md §8.1). On the `broadband` WAN testnet one download ran at
/// 5.65 MB/s with 110 % and 5.17 with 125 % (stream windows of up to 8,000 cells), 4.93
/// with 200 % (4,000; seeds 204–208, 10 runs each; docs/performance.md).
pub const CAP_GAIN_PCT: u64 = 110;

/// The factory of [`CappedWindow`]-wrapped BBR for [`quinn::TransportConfig::congestion_controller_factory`].
#[derive(Debug, Clone, Default)]
pub struct CappedBbrConfig {
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for CappedBbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(CappedWindow::new(
            self.bbr.clone().build(now, current_mtu),
            now,
        ))
    }
}

/// A congestion controller (quinn's BBR here) whose window is capped at [`CAP_GAIN_PCT`] %
/// of the most bytes in flight in the current and the previous period of one smoothed
/// round trip (so over the last one to two round trips), at least its initial window
/// (bytes), and which hears of losses only above [`LOSS_THRESHOLD_INV`]'s rate over the
/// same two periods, or on persistent congestion. See the module doc.
pub struct CappedWindow {
    inner: Box<dyn Controller>,
    /// The smallest cap (bytes): BBR's initial window.
    floor: u64,
    /// Bytes in flight now, as last told by quinn plus what was sent since (bytes).
    in_flight: u64,
    /// Most bytes in flight in the current round-trip period.
    current_max: u64,
    /// Most bytes in flight in the period before.
    previous_max: u64,
    period_start: Instant,
    /// quinn's smoothed round trip: the length of a period.
    srtt: Duration,
    /// Bytes sent in the current period (`[0]`) and the one before (`[1]`).
    sent: [u64; 2],
    /// Bytes declared lost in the current period (`[0]`) and the one before (`[1]`).
    lost: [u64; 2],
}

impl CappedWindow {
    /// Wrap `inner`, created at `now`. Until quinn reports a round trip, a period lasts
    /// 100 ms.
    pub fn new(inner: Box<dyn Controller>, now: Instant) -> CappedWindow {
        CappedWindow {
            floor: inner.initial_window(),
            inner,
            in_flight: 0,
            current_max: 0,
            previous_max: 0,
            period_start: now,
            srtt: Duration::from_millis(100),
            sent: [0; 2],
            lost: [0; 2],
        }
    }

    fn cap(&self) -> u64 {
        (self
            .current_max
            .max(self.previous_max)
            .saturating_mul(CAP_GAIN_PCT)
            / 100)
            .max(self.floor)
    }

    fn note_in_flight(&mut self, now: Instant) {
        if now.saturating_duration_since(self.period_start) >= self.srtt {
            self.previous_max = self.current_max;
            self.current_max = 0;
            self.period_start = now;
            self.sent = [0, self.sent[0]];
            self.lost = [0, self.lost[0]];
        }
        self.current_max = self.current_max.max(self.in_flight);
    }
}

impl Controller for CappedWindow {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.in_flight = self.in_flight.saturating_add(bytes);
        self.note_in_flight(now);
        self.sent[0] = self.sent[0].saturating_add(bytes);
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.srtt = rtt.get().max(Duration::from_millis(1));
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.in_flight = in_flight;
        self.note_in_flight(now);
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.note_in_flight(now);
        self.lost[0] = self.lost[0].saturating_add(lost_bytes);
        let lost = self.lost[0].saturating_add(self.lost[1]);
        let sent_bytes = self.sent[0].saturating_add(self.sent[1]);
        if is_persistent_congestion || lost.saturating_mul(LOSS_THRESHOLD_INV) > sent_bytes {
            self.inner
                .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().min(self.cap())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(CappedWindow {
            inner: self.inner.clone_box(),
            floor: self.floor,
            in_flight: self.in_flight,
            current_max: self.current_max,
            previous_max: self.previous_max,
            period_start: self.period_start,
            srtt: self.srtt,
            sent: self.sent,
            lost: self.lost,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A controller with a fixed window (bytes) and a 12,000-byte initial window: with
    /// 100 MiB, one whose window has run away, as quinn's BBR's does on a busy link. It
    /// counts the congestion events it hears in `.1`.
    struct Fixed(u64, Arc<std::sync::atomic::AtomicU64>);

    fn fixed(window: u64) -> Box<Fixed> {
        Box::new(Fixed(window, Arc::default()))
    }

    impl Controller for Fixed {
        fn on_congestion_event(&mut self, _: Instant, _: Instant, _: bool, _: u64) {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn on_mtu_update(&mut self, _: u16) {}
        fn window(&self) -> u64 {
            self.0
        }
        fn clone_box(&self) -> Box<dyn Controller> {
            Box::new(Fixed(self.0, self.1.clone()))
        }
        fn initial_window(&self) -> u64 {
            12_000
        }
        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    }

    const RUNAWAY: u64 = 100 << 20;

    /// One 100 ms period in which `packets` packets of 1,200 bytes go out and are then all
    /// acknowledged.
    fn period(c: &mut CappedWindow, now: &mut Instant, packets: u64) {
        for pn in 0..packets {
            c.on_sent(*now, 1_200, pn);
        }
        *now += Duration::from_millis(100);
        c.on_end_acks(*now, 0, true, Some(packets));
    }

    /// The cap for `packets` packets of 1,200 bytes in flight (bytes).
    fn capped(packets: u64) -> u64 {
        packets * 1_200 * CAP_GAIN_PCT / 100
    }

    #[test]
    fn the_window_follows_what_the_link_has_in_flight() {
        let mut now = Instant::now();
        let mut c = CappedWindow::new(fixed(RUNAWAY), now);
        // Nothing sent yet: the initial window, not the runaway one.
        assert_eq!(c.window(), 12_000);
        // 50 packets in flight per round trip: a little more than that, so pacing stays
        // near the rate.
        period(&mut c, &mut now, 50);
        assert_eq!(c.window(), capped(50));
        // A sender with more to send may grow by the cap's share every round trip.
        period(&mut c, &mut now, capped(50) / 1_200);
        assert_eq!(c.window(), capped(capped(50) / 1_200));
        period(&mut c, &mut now, 200);
        assert_eq!(c.window(), capped(200));
        // While a period runs, the one before still counts.
        c.on_sent(now, 1_200, 0);
        assert_eq!(c.window(), capped(200));
        c.on_end_acks(now, 0, true, Some(0));
        // Once it sends less, the cap follows within two round trips, down to the floor.
        period(&mut c, &mut now, 20);
        assert_eq!(c.window(), capped(20));
        period(&mut c, &mut now, 2);
        period(&mut c, &mut now, 2);
        assert_eq!(c.window(), 12_000);
        assert_eq!(c.metrics().congestion_window, 12_000);
    }

    #[test]
    fn a_smaller_inner_window_is_kept() {
        // The cap only ever lowers the inner window: BBR's own limits (startup, recovery,
        // PROBE_RTT) still apply when they are smaller.
        let mut now = Instant::now();
        let mut c = CappedWindow::new(fixed(30_000), now);
        period(&mut c, &mut now, 50);
        assert_eq!(c.cap(), capped(50));
        assert_eq!(c.window(), 30_000);
        assert_eq!(c.metrics().congestion_window, 30_000);
    }

    #[test]
    fn random_loss_below_two_percent_does_not_reach_the_inner_controller() {
        let mut now = Instant::now();
        let inner = fixed(RUNAWAY);
        let heard = inner.1.clone();
        let mut c = CappedWindow::new(inner, now);
        let heard = move || heard.load(std::sync::atomic::Ordering::Relaxed);
        // A round trip of 100 packets of 1,200 bytes; one lost: 1 %.
        period(&mut c, &mut now, 100);
        c.on_congestion_event(now, now, false, 1_200);
        assert_eq!(heard(), 0);
        // 100 more sent in the next period, and a second and third loss: 3 of 200
        // packets over the two periods, 1.5 %.
        for pn in 100..200 {
            c.on_sent(now, 1_200, pn);
        }
        c.on_congestion_event(now, now, false, 1_200);
        c.on_congestion_event(now, now, false, 1_200);
        assert_eq!(heard(), 0);
        // Two more: 5 of 200, 2.5 %: BBR hears it.
        c.on_congestion_event(now, now, false, 2 * 1_200);
        assert_eq!(heard(), 1);
        // Two periods later the old losses no longer count.
        period(&mut c, &mut now, 100);
        period(&mut c, &mut now, 100);
        c.on_congestion_event(now, now, false, 1_200);
        assert_eq!(heard(), 1);
        // Persistent congestion always reaches it.
        c.on_congestion_event(now, now, true, 1_200);
        assert_eq!(heard(), 2);
    }
}
