//! Flow control with authenticated SENDMEs (sans-IO). Spec: `docs/protocol.md` §6.4.
//!
//! Windows count `DATA` cells only, per circuit (both ends: the client and the exit) and
//! per stream, in each direction. The sender of `DATA` may have at most
//! [`CIRCUIT_WINDOW`] cells unacknowledged on a circuit and [`STREAM_WINDOW`] on a stream.
//! The receiver sends a circuit `SENDME` after every [`CIRCUIT_INCREMENT`] cells it
//! received, carrying the onion-layer tag of the cell that completed the increment, and a
//! stream `SENDME` after the application consumed [`STREAM_INCREMENT`] cells. The sender
//! checks each circuit SENDME's tag against the tag it recorded when it sealed that cell
//! (constant-time): a SENDME for cells never received cannot be forged, so a client cannot
//! make an exit flood, nor an exit a client.
//!
//! The circuit window is a congestion window ([`Vegas`], after Tor's prop 324): it starts
//! at [`CIRCUIT_WINDOW`], grows while the round trip of each acknowledged cell shows no
//! queue building on the path (or the delivery rate shows that the stalls raising it are
//! not one), and shrinks back (never below [`CWND_MIN`]) when one does.
//! Stream windows grow with a reader that keeps up (doubling per window, up to
//! [`STREAM_WINDOW_MAX`]), so one stream is not capped at 500 cells per round trip on a
//! long path while a stalled reader still costs at most its window (§6.4).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Unacknowledged `DATA` cells allowed per circuit and direction at the start: the
/// initial congestion window.
pub const CIRCUIT_WINDOW: u32 = 1000;
/// Cells acknowledged by one circuit `SENDME`.
pub const CIRCUIT_INCREMENT: u32 = 100;
/// Smallest congestion window (cells): the fixed window of protocol v2 before congestion
/// control, so a path the controller misjudges is never slower than it was.
pub const CWND_MIN: u32 = CIRCUIT_WINDOW;
/// Largest congestion window (cells, ≈ 9.5 MiB of payload): enough for 70 % of 100 Mbit/s
/// at a 700 ms circuit round trip.
pub const CWND_MAX: u32 = 10_000;
/// Vegas: below this estimated queue (cells) the window grows in steady state, or below
/// [`VEGAS_ALPHA_PCT`] % of the window when that is more.
pub const VEGAS_ALPHA: u32 = 300;
/// Vegas: above this estimated queue (cells) the window shrinks, or above
/// [`VEGAS_BETA_PCT`] % of the window when that is more.
pub const VEGAS_BETA: u32 = 600;
/// Vegas: slow start ends when the estimated queue exceeds this (cells), or
/// [`VEGAS_ALPHA_PCT`] % of the window when that is more.
pub const VEGAS_GAMMA: u32 = 300;
/// Vegas: α and γ as a share of the window (percent), for large windows.
pub const VEGAS_ALPHA_PCT: u32 = 25;
/// Vegas: β as a share of the window (percent), for large windows.
pub const VEGAS_BETA_PCT: u32 = 35;
/// The congestion window is at least this share (percent) of the highest delivery rate of
/// the last one to two round trips times `min_rtt` ([`Vegas`], protocol §6.4).
pub const RATE_FLOOR_GAIN_PCT: u32 = 150;
/// Round-trip samples a [`Vegas`] keeps for its standing round trip: half of the largest
/// window's `SENDME`s.
const STANDING_SAMPLES: usize = (CWND_MAX / (2 * CIRCUIT_INCREMENT)) as usize;
/// Unacknowledged `DATA` cells allowed per stream and direction at the start (and all a
/// reader that does not keep up ever gets).
pub const STREAM_WINDOW: u32 = 500;
/// Largest stream window (cells, ≈ 7.5 MiB of payload) a reader that keeps up grows to.
/// 4000 until 2026-12-07: on the `broadband` WAN testnet the exit then waited on the
/// stream window most of each second, since loss repairs on the links stretch a circuit's
/// round trip to twice its base (docs/performance.md).
pub const STREAM_WINDOW_MAX: u32 = 8000;
/// Cells acknowledged by one stream `SENDME`.
pub const STREAM_INCREMENT: u32 = 50;

/// A peer broke flow control; the circuit must be destroyed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowError {
    /// More `DATA` arrived than the window allows.
    #[error("peer sent DATA beyond the window")]
    WindowExceeded,
    /// A `SENDME` came when none was due.
    #[error("unexpected SENDME")]
    UnexpectedSendme,
    /// A circuit `SENDME` carried the wrong tag: it does not prove receipt.
    #[error("SENDME tag does not match the acknowledged cell")]
    BadSendmeTag,
}

/// The sending side's record of circuit `SENDME`s due: every [`CIRCUIT_INCREMENT`]-th
/// `DATA` cell's layer tag and when it was sealed, at most `CWND_MAX / CIRCUIT_INCREMENT`
/// (100) entries, and the congestion window they drive.
#[derive(Debug, Default)]
pub struct SendmeTags {
    /// `DATA` cells sealed since the last recorded tag, 0..[`CIRCUIT_INCREMENT`]: a count
    /// that restarts, so it never wraps out of step with the receiver's (a running `u32`
    /// total did after 2^32 cells, which is not a multiple of 100).
    since_tag: u32,
    expected: VecDeque<Expected>,
    /// `DATA` cells sealed and not yet acknowledged.
    inflight: u32,
    /// Cells acknowledged so far, and when the last `SENDME` came.
    delivered: u64,
    delivered_at: Option<Instant>,
    vegas: Vegas,
}

/// A circuit `SENDME` due: the tag of the cell that completes the increment, when it was
/// sealed, and the acknowledged count and time of the last `SENDME` before it (the start
/// of its delivery-rate sample, as BBR's).
#[derive(Debug, Clone, Copy)]
struct Expected {
    tag: [u8; 16],
    sent: Instant,
    delivered: u64,
    delivered_at: Instant,
}

impl SendmeTags {
    /// Record a `DATA` cell sealed at `now` with layer tag `tag`.
    pub fn on_data_sent(&mut self, tag: [u8; 16], now: Instant) {
        self.since_tag += 1;
        self.inflight = self.inflight.saturating_add(1);
        if self.since_tag >= CIRCUIT_INCREMENT {
            self.since_tag = 0;
            if self.expected.len() >= (CWND_MAX / CIRCUIT_INCREMENT) as usize {
                // Cannot happen while the sender respects its window; keep the bound anyway.
                self.expected.pop_front();
            }
            self.expected.push_back(Expected {
                tag,
                sent: now,
                delivered: self.delivered,
                delivered_at: self.delivered_at.unwrap_or(now),
            });
        }
    }

    /// Check a circuit `SENDME` that arrived at `now`. On success returns how far the
    /// package window opens (cells, may be negative): [`CIRCUIT_INCREMENT`] for the cells
    /// acknowledged plus the congestion window's change ([`Vegas::on_sendme`]).
    ///
    /// # Errors
    /// [`FlowError::UnexpectedSendme`] when none is due, [`FlowError::BadSendmeTag`] when the
    /// tag differs (compared in constant time).
    pub fn on_sendme(&mut self, tag: &[u8; 16], now: Instant) -> Result<i64, FlowError> {
        let due = self
            .expected
            .pop_front()
            .ok_or(FlowError::UnexpectedSendme)?;
        if !ct_eq(&due.tag, tag) {
            return Err(FlowError::BadSendmeTag);
        }
        self.delivered = self.delivered.saturating_add(u64::from(CIRCUIT_INCREMENT));
        self.delivered_at = Some(now);
        // Cells acknowledged since the last SENDME before this cell was sealed, over the
        // time since that SENDME: at least this cell's round trip, so a burst of SENDMEs
        // after a stall cannot claim more than a window per round trip.
        let interval = now.saturating_duration_since(due.delivered_at);
        let rate = delivery_rate(self.delivered.saturating_sub(due.delivered), interval);
        let before = self.vegas.cwnd();
        let after =
            self.vegas
                .on_sendme(now.saturating_duration_since(due.sent), self.inflight, rate);
        self.inflight = self.inflight.saturating_sub(CIRCUIT_INCREMENT);
        Ok(i64::from(CIRCUIT_INCREMENT) + i64::from(after) - i64::from(before))
    }

    /// The congestion window now (cells).
    pub fn cwnd(&self) -> u32 {
        self.vegas.cwnd()
    }
}

/// A circuit's congestion window, TCP Vegas as Tor's prop 324 adapts it, with BBR's
/// delivery rate beside the round trip. Each circuit `SENDME` gives a round-trip sample
/// (the acknowledged cell's seal to the `SENDME`'s arrival) and a delivery-rate sample
/// (cells acknowledged since the `SENDME` before that cell was sealed, over the time since
/// that `SENDME`: at least one round trip).
///
/// - **Standing round trip:** the smallest of the last `N = max(2, cwnd / 200)` samples
///   (half a window of `SENDME`s, about half a round trip), as Copa measures queueing. A
///   queue on the path raises every sample; a lost packet raises only the samples of the
///   cells that waited behind its retransmission on one link's ordered stream.
/// - **Capacity:** with `min_rtt` the smallest sample seen, the path holds
///   `bdp = max(cwnd × min_rtt / standing, rate × min_rtt)` cells, `rate` the highest
///   delivery rate of this round trip and the last (at most `cwnd`), and
///   `queue = cwnd − bdp` of them are queued. At a real bottleneck both terms give the
///   same answer (the rate is the bottleneck's); when loss stalls raise some round-trip
///   samples, the highest recent rate still counts the round trips they spared, so the
///   larger estimate reads less of the window as queued than the round trips alone. (On
///   the `broadband` WAN testnet stalls raise most samples: only 13 % of the exit's were
///   within 35 % of `min_rtt`; there the rate floor below does more.)
/// - **Thresholds** grow with the window: `α = max(`[`VEGAS_ALPHA`]`, 25 % of cwnd)`,
///   `β = max(`[`VEGAS_BETA`]`, 35 % of cwnd)`, `γ = max(`[`VEGAS_GAMMA`]`, 25 % of cwnd)`,
///   so a window settles where the standing round trip is 1.33–1.54 × `min_rtt`.
/// - **Slow start:** each `SENDME` of a full window grows it by [`CIRCUIT_INCREMENT`]
///   (doubling per round trip). It ends when `queue > γ` and the delivery rate did not
///   grow by a quarter over the last round trip in which the window was full (BBR's
///   full-pipe test): a window still doubling its rate is not queueing, whatever one
///   stalled round trip says. The window then drops to where `γ` is a quarter of it,
///   `bdp + max(`[`VEGAS_GAMMA`]`, bdp / 3)`, and slow start ends for good. Until a rate
///   sample exists, the round trip alone decides.
/// - **Steady state:** once per window's worth of acknowledged cells, grow by one
///   increment when `queue < α`, shrink by one when `queue > β`.
/// - **Rate floor:** the window never falls below [`RATE_FLOOR_GAIN_PCT`] % of
///   `max_rate × min_rtt`, what the path was seen to deliver in the last round trip or
///   two with room for the stalls (BBR's window is twice it). When stalls raise the round
///   trip by more than β allows, a window held by the thresholds alone delivers less than
///   the links could; the floor keeps it at what was delivered. At a real bottleneck
///   `max_rate` is the bottleneck's, so the floor holds 1.5 × its bdp, about what β
///   allows anyway (1.54 ×).
/// - Only a sender that filled its window (in flight within one increment of it) grows
///   it, so an idle or application-limited circuit keeps the window it has.
/// - Always within [`CWND_MIN`]..=[`CWND_MAX`]. The floor is the fixed window of protocol
///   v2, so on a path with noisy round trips (loopback under CPU load) the controller
///   never makes a circuit slower than it was.
#[derive(Debug, Clone)]
pub struct Vegas {
    cwnd: u32,
    slow_start: bool,
    min_rtt: Option<Duration>,
    /// The last samples, newest at the back, at most [`STANDING_SAMPLES`].
    recent: VecDeque<Duration>,
    /// Cells acknowledged since the last steady-state update.
    acked: u32,
    /// Cells still to be acknowledged before this round trip ends (the cells that were in
    /// flight when it began).
    round_left: u32,
    /// Highest delivery rate (cells per second) of this round trip and of the last one.
    rate_this_round: u64,
    rate_last_round: u64,
    /// Whether the window was full at some `SENDME` of this round trip.
    full_this_round: bool,
    /// The rate the full-pipe test compares with (0: no sample yet), and whether the rate
    /// grew by a quarter over it in the last full round trip.
    full_rate: u64,
    rate_growing: bool,
}

impl Default for Vegas {
    fn default() -> Self {
        Vegas {
            cwnd: CIRCUIT_WINDOW,
            slow_start: true,
            min_rtt: None,
            recent: VecDeque::new(),
            acked: 0,
            round_left: 0,
            rate_this_round: 0,
            rate_last_round: 0,
            full_this_round: false,
            full_rate: 0,
            rate_growing: false,
        }
    }
}

impl Vegas {
    /// The congestion window (cells).
    pub fn cwnd(&self) -> u32 {
        self.cwnd
    }

    /// Whether the controller is still in slow start.
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// A `SENDME` acknowledged [`CIRCUIT_INCREMENT`] cells after `rtt`, with `inflight`
    /// cells unacknowledged just before it and `rate` the delivery-rate sample it gives
    /// (cells per second; `None` when it has none). Returns the new window (cells).
    pub fn on_sendme(&mut self, rtt: Duration, inflight: u32, rate: Option<u64>) -> u32 {
        let rtt = rtt.max(Duration::from_micros(1));
        let min_rtt = self.min_rtt.map_or(rtt, |m| m.min(rtt));
        self.min_rtt = Some(min_rtt);
        if self.recent.len() >= STANDING_SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(rtt);
        let window_full = inflight + CIRCUIT_INCREMENT >= self.cwnd;
        self.track_rate(inflight, rate, window_full);
        let n = (self.cwnd / (2 * CIRCUIT_INCREMENT)).max(2) as usize;
        let standing = self
            .recent
            .iter()
            .rev()
            .take(n)
            .min()
            .copied()
            .unwrap_or(rtt);
        let cwnd = u128::from(self.cwnd);
        let by_delay = cwnd * min_rtt.as_nanos() / standing.as_nanos().max(1);
        let max_rate = self.rate_this_round.max(self.rate_last_round);
        let by_rate = (u128::from(max_rate) * min_rtt.as_nanos() / 1_000_000_000).min(cwnd);
        let bdp = u32::try_from(by_delay.max(by_rate)).unwrap_or(CWND_MAX);
        let queue = self.cwnd.saturating_sub(bdp);
        let share = |pct: u32| self.cwnd / 100 * pct;
        let alpha = VEGAS_ALPHA.max(share(VEGAS_ALPHA_PCT));
        let beta = VEGAS_BETA.max(share(VEGAS_BETA_PCT));
        let gamma = VEGAS_GAMMA.max(share(VEGAS_ALPHA_PCT));
        if self.slow_start {
            if queue > gamma && !self.rate_growing {
                self.slow_start = false;
                self.cwnd = bdp.saturating_add(VEGAS_GAMMA.max(bdp / 3));
            } else if window_full {
                self.cwnd = self.cwnd.saturating_add(CIRCUIT_INCREMENT);
            }
        } else {
            self.acked = self.acked.saturating_add(CIRCUIT_INCREMENT);
            if self.acked >= self.cwnd {
                self.acked = 0;
                if queue > beta {
                    self.cwnd = self.cwnd.saturating_sub(CIRCUIT_INCREMENT);
                } else if queue < alpha && window_full {
                    self.cwnd = self.cwnd.saturating_add(CIRCUIT_INCREMENT);
                }
            }
        }
        // The window never falls below what the path was seen to deliver, with room for
        // the stalls: at a real bottleneck 1.5 × its bdp, what β allows anyway.
        let floor = u128::from(max_rate) * min_rtt.as_nanos() * u128::from(RATE_FLOOR_GAIN_PCT)
            / (100 * 1_000_000_000);
        let floor = u32::try_from(floor).unwrap_or(CWND_MAX);
        self.cwnd = self.cwnd.max(floor).clamp(CWND_MIN, CWND_MAX);
        self.cwnd
    }

    /// Count round trips (one ends when the cells in flight at its start are
    /// acknowledged), keep the highest rate of each, and at the end of each round trip in
    /// which the window was full, test whether the rate grew by a quarter.
    fn track_rate(&mut self, inflight: u32, rate: Option<u64>, window_full: bool) {
        self.round_left = self.round_left.saturating_sub(CIRCUIT_INCREMENT);
        if self.round_left == 0 {
            // The round trip before this SENDME is over: this SENDME's sample opens the
            // next one.
            if self.full_this_round && self.full_rate > 0 {
                self.rate_growing = self.rate_this_round >= self.full_rate.saturating_mul(5) / 4;
                if self.rate_growing {
                    self.full_rate = self.rate_this_round;
                }
            }
            self.rate_last_round = self.rate_this_round;
            self.rate_this_round = 0;
            self.full_this_round = false;
            self.round_left = inflight.saturating_sub(CIRCUIT_INCREMENT);
        }
        if let Some(r) = rate {
            self.rate_this_round = self.rate_this_round.max(r);
            if self.full_rate == 0 {
                self.full_rate = r;
                self.rate_growing = true;
            }
        }
        self.full_this_round |= window_full;
    }
}

/// Cells per second that `cells` acknowledged over `interval` make; `None` for an empty
/// interval.
fn delivery_rate(cells: u64, interval: Duration) -> Option<u64> {
    let ns = interval.as_nanos();
    if ns == 0 {
        return None;
    }
    u64::try_from(u128::from(cells) * 1_000_000_000 / ns).ok()
}

fn ct_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The receiving side of a circuit window: it says when a circuit `SENDME` is due. It
/// acknowledges *receipt*, so it cannot catch a sender that ignores its window (every 100
/// cells received re-open it); memory at the receiver is bounded by the stream windows,
/// which acknowledge *consumption* and are checked.
#[derive(Debug, Default)]
pub struct CircuitDeliverWindow {
    since_sendme: u32,
}

impl CircuitDeliverWindow {
    /// A `DATA` cell arrived with layer tag `tag`. Returns the tag to send in a circuit
    /// `SENDME` when one is due now (every [`CIRCUIT_INCREMENT`] cells).
    pub fn on_data(&mut self, tag: [u8; 16]) -> Option<[u8; 16]> {
        self.since_sendme += 1;
        if self.since_sendme == CIRCUIT_INCREMENT {
            self.since_sendme = 0;
            return Some(tag);
        }
        None
    }
}

/// The receiving side of a stream window: cells arrive, the application consumes them,
/// and every [`STREAM_INCREMENT`] consumed cells earn the sender a stream `SENDME`. When
/// the application keeps up (at most one increment buffered when a `SENDME` falls due)
/// and the window is below [`STREAM_WINDOW_MAX`], a second `SENDME` goes with it: the
/// window grows by one increment per increment consumed, doubling per window.
#[derive(Debug)]
pub struct StreamDeliverWindow {
    /// Cells the sender may still send.
    window: u32,
    /// The window's size: what the sender may have unacknowledged.
    size: u32,
    /// Cells received and not yet consumed.
    buffered: u32,
    consumed: u32,
}

impl Default for StreamDeliverWindow {
    fn default() -> Self {
        StreamDeliverWindow {
            window: STREAM_WINDOW,
            size: STREAM_WINDOW,
            buffered: 0,
            consumed: 0,
        }
    }
}

impl StreamDeliverWindow {
    /// A `DATA` cell arrived.
    ///
    /// # Errors
    /// [`FlowError::WindowExceeded`] when the sender went past the stream window.
    pub fn on_data(&mut self) -> Result<(), FlowError> {
        self.window = self
            .window
            .checked_sub(1)
            .ok_or(FlowError::WindowExceeded)?;
        self.buffered += 1;
        Ok(())
    }

    /// The application consumed one cell's data. Returns how many stream `SENDME`s are
    /// due now: 0, 1 (every [`STREAM_INCREMENT`] cells), or 2 when the window grows.
    pub fn on_consumed(&mut self) -> u32 {
        self.buffered = self.buffered.saturating_sub(1);
        self.consumed += 1;
        if self.consumed < STREAM_INCREMENT {
            return 0;
        }
        self.consumed = 0;
        self.window += STREAM_INCREMENT;
        if self.buffered <= STREAM_INCREMENT && self.size < STREAM_WINDOW_MAX {
            self.size += STREAM_INCREMENT;
            self.window += STREAM_INCREMENT;
            return 2;
        }
        1
    }

    /// The window's size now (cells).
    pub fn size(&self) -> u32 {
        self.size
    }
}

impl anonnet_error::HasKind for FlowError {
    /// A peer that breaks flow control broke the protocol (§6.4).
    fn kind(&self) -> anonnet_error::ErrorKind {
        anonnet_error::ErrorKind::Protocol
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn sendme_tags_stay_in_step_over_millions_of_cells() {
        let now = Instant::now();
        // The sender's and the receiver's counts restart every 100 cells, so no count can
        // wrap (a u32 total did after 2^32 cells). 5 million cells, SENDMEs as they fall due.
        let mut tags = SendmeTags::default();
        let mut deliver = CircuitDeliverWindow::default();
        for i in 0..5_000_000u64 {
            let mut tag = [0u8; 16];
            tag[..8].copy_from_slice(&i.to_be_bytes());
            tags.on_data_sent(tag, now);
            if let Some(echo) = deliver.on_data(tag) {
                tags.on_sendme(&echo, now).unwrap();
            }
        }
        assert!(tags.expected.is_empty());
        assert!(tags.since_tag < CIRCUIT_INCREMENT);
    }

    use super::*;

    #[test]
    fn sendme_tags_stay_in_step_across_2_pow_32_cells() {
        let now = Instant::now();
        // The state both ends hold after 2^32 − 500 cells with every SENDME answered is
        // the count since the last recorded tag, (2^32 − 500) mod 100 on each side;
        // continue from there for 1,500 cells, across 2^32, where a running u32 total
        // went out of step.
        let start: u64 = (1u64 << 32) - 500;
        let phase = u32::try_from(start % u64::from(CIRCUIT_INCREMENT)).unwrap();
        let mut tags = SendmeTags {
            since_tag: phase,
            ..SendmeTags::default()
        };
        let mut deliver = CircuitDeliverWindow {
            since_sendme: phase,
        };
        let mut answered = 0;
        for i in start..start + 1_500 {
            let mut tag = [0u8; 16];
            tag[..8].copy_from_slice(&i.to_be_bytes());
            tags.on_data_sent(tag, now);
            if let Some(echo) = deliver.on_data(tag) {
                assert_eq!(i % 100, 99, "the 100th cell of each increment is echoed");
                tags.on_sendme(&echo, now).unwrap();
                answered += 1;
            }
        }
        assert_eq!(answered, 15);
        assert!(tags.expected.is_empty());
    }

    fn tag(i: u32) -> [u8; 16] {
        let mut t = [0u8; 16];
        t[..4].copy_from_slice(&i.to_be_bytes());
        t
    }

    #[test]
    fn sendme_proves_receipt_of_the_hundredth_cell() {
        let now = Instant::now();
        let mut sender = SendmeTags::default();
        let mut receiver = CircuitDeliverWindow::default();
        let mut due = Vec::new();
        for i in 1..=CIRCUIT_WINDOW {
            sender.on_data_sent(tag(i), now);
            if let Some(t) = receiver.on_data(tag(i)) {
                due.push(t);
            }
        }
        assert_eq!(due.len(), 10);
        assert_eq!(due[0], tag(100));
        // A forged tag is refused; the right ones are accepted in order.
        let mut forged = SendmeTags::default();
        for i in 1..=100 {
            forged.on_data_sent(tag(i), now);
        }
        assert_eq!(
            forged.on_sendme(&tag(99), now),
            Err(FlowError::BadSendmeTag)
        );
        for t in &due {
            sender.on_sendme(t, now).unwrap();
        }
        assert_eq!(
            sender.on_sendme(&due[0], now).map(|_| ()),
            Err(FlowError::UnexpectedSendme)
        );
    }

    #[test]
    fn stream_receiver_refuses_data_beyond_what_the_application_consumed() {
        let mut s = StreamDeliverWindow::default();
        for _ in 0..STREAM_WINDOW {
            s.on_data().unwrap();
        }
        assert_eq!(s.on_data(), Err(FlowError::WindowExceeded));
        // The reader was slow (a whole window buffered): one SENDME per increment, no
        // growth.
        for i in 0..STREAM_INCREMENT {
            assert_eq!(s.on_consumed(), u32::from(i + 1 == STREAM_INCREMENT));
        }
        assert_eq!(s.size(), STREAM_WINDOW);
        s.on_data().unwrap();
    }

    #[test]
    fn circuit_receiver_acknowledges_every_hundred_cells() {
        // The circuit window acknowledges receipt (not consumption), so a receiver that
        // answers every increment never sees its window exceeded.
        let mut c = CircuitDeliverWindow::default();
        let due = (1..=CIRCUIT_WINDOW * 3)
            .filter(|i| c.on_data(tag(*i)).is_some())
            .count();
        assert_eq!(due as u32, 30);
    }

    /// Drive a sender that always fills its window through `rounds` round trips of
    /// `rtt(cwnd)`; returns the window after each round trip.
    fn drive(vegas: &mut Vegas, rounds: usize, mut rtt: impl FnMut(u32) -> Duration) -> Vec<u32> {
        let mut out = Vec::new();
        for _ in 0..rounds {
            let cwnd = vegas.cwnd();
            for _ in 0..cwnd / CIRCUIT_INCREMENT {
                vegas.on_sendme(rtt(cwnd), vegas.cwnd(), None);
            }
            out.push(vegas.cwnd());
        }
        out
    }

    /// A sender that always has data, through [`SendmeTags`], over a path with a
    /// bottleneck of `capacity` cells per second and a base round trip of `base`; each
    /// `SENDME` is held back by `stall` with probability `stall_pct` % (a loss on one
    /// link's ordered stream; later `SENDME`s wait behind it). Returns the cells
    /// acknowledged in each second of `secs`, and the window at the end.
    fn simulate(
        capacity: u64,
        base: Duration,
        stall_pct: u64,
        stall: Duration,
        secs: u64,
    ) -> (Vec<u64>, u32) {
        let t0 = Instant::now();
        let mut tags = SendmeTags::default();
        let mut package = i64::from(CIRCUIT_WINDOW);
        let mut due: VecDeque<(Duration, [u8; 16])> = VecDeque::new();
        let (mut sent, mut now, mut last_departure, mut last_arrival) =
            (0u32, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut per_second = vec![0u64; secs as usize];
        let per_cell = Duration::from_nanos(1_000_000_000 / capacity);
        loop {
            while package > 0 {
                sent += 1;
                package -= 1;
                tags.on_data_sent(tag(sent), t0 + now);
                last_departure = last_departure.max(now) + per_cell;
                if sent.is_multiple_of(CIRCUIT_INCREMENT) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let held = if seed % 100 < stall_pct {
                        stall
                    } else {
                        Duration::ZERO
                    };
                    last_arrival = last_arrival.max(last_departure + base + held);
                    due.push_back((last_arrival, tag(sent)));
                }
            }
            let Some((at, echo)) = due.pop_front() else {
                break;
            };
            now = at;
            let Some(slot) = per_second.get_mut(now.as_secs() as usize) else {
                break;
            };
            *slot += u64::from(CIRCUIT_INCREMENT);
            package += tags.on_sendme(&echo, t0 + now).unwrap();
        }
        (per_second, tags.cwnd())
    }

    /// Mean cells acknowledged per second over `secs` of a [`simulate`] run.
    fn mean(per_second: &[u64], secs: std::ops::Range<usize>) -> u64 {
        let n = secs.len() as u64;
        per_second[secs].iter().sum::<u64>() / n
    }

    #[test]
    fn loss_stalls_do_not_end_slow_start_before_the_bottleneck() {
        // 100 Mbit/s (12,000 cells a second) over a 300 ms path: 3,600 cells in flight
        // fill it. A third of the SENDMEs are held back a link round trip (100 ms), and
        // the ones behind them with them, so most round-trip samples read a third of the
        // window as queued. The round trip alone ended slow start early and grew the
        // window by an increment per round trip from there: 52 % of the bottleneck in
        // seconds 3-5, 73 % in seconds 6-9. The delivery rate, still doubling, keeps slow
        // start going until the bottleneck: all of it from the third second.
        let capacity = 12_000;
        let (per_second, cwnd) = simulate(
            capacity,
            Duration::from_millis(300),
            33,
            Duration::from_millis(100),
            10,
        );
        let early = mean(&per_second, 3..6);
        assert!(
            early * 100 >= capacity * 90,
            "{early} cells/s of {capacity} in seconds 3-5: {per_second:?}, cwnd {cwnd}"
        );
        // At the bottleneck the window holds at most twice the path's 3,600 cells: the
        // queue within β of it, plus the cells the stalls hold back.
        assert!(cwnd <= 2 * 3_600, "cwnd {cwnd}: {per_second:?}");

        // Without stalls, slow start ends at the bottleneck and the window settles with
        // the queue between α and β (25-35 % of the window), all of the rate delivered.
        let (per_second, cwnd) =
            simulate(capacity, Duration::from_millis(300), 0, Duration::ZERO, 20);
        let settled = |pct: u32| 3_600 * 100 / (100 - pct);
        assert!(
            (settled(VEGAS_ALPHA_PCT) - 2 * CIRCUIT_INCREMENT
                ..=settled(VEGAS_BETA_PCT) + CIRCUIT_INCREMENT)
                .contains(&cwnd),
            "cwnd {cwnd}: {per_second:?}"
        );
        let late = mean(&per_second, 10..20);
        assert!(late * 100 >= capacity * 98, "{late}: {per_second:?}");
    }

    #[test]
    fn stalls_beyond_beta_do_not_shrink_the_window_below_what_was_delivered() {
        // The same path, with a SENDME in three held back a whole base round trip (300 ms)
        // and the later ones with it: the standing round trip often reads half the window
        // as queued, more than β. Without the rate floor the window fell back to
        // 5,500 cells and the circuit delivered 73 % of the bottleneck in seconds 5-14;
        // with it, the window keeps 1.5 × what was delivered, and more than 85 % arrives.
        let capacity = 12_000;
        let (per_second, cwnd) = simulate(
            capacity,
            Duration::from_millis(300),
            30,
            Duration::from_millis(300),
            15,
        );
        let late = mean(&per_second, 5..15);
        assert!(
            late * 100 >= capacity * 85,
            "{late} cells/s of {capacity}: {per_second:?}, cwnd {cwnd}"
        );
    }

    #[test]
    fn vegas_grows_on_an_empty_long_path_and_settles_at_its_capacity() {
        // A path of 400 ms that carries 2,500 cells per round trip: beyond that many in
        // flight, the excess queues and the round trip grows with it.
        let capacity = 2_500u32;
        let rtt = |cwnd: u32| {
            let queued = cwnd.saturating_sub(capacity);
            Duration::from_millis(400) + Duration::from_millis(400) * queued / capacity
        };
        let mut v = Vegas::default();
        let cwnds = drive(&mut v, 60, rtt);
        // Slow start doubles per round trip while nothing queues.
        assert_eq!(cwnds[0], 2 * CIRCUIT_WINDOW, "{cwnds:?}");
        assert!(!v.in_slow_start(), "left slow start: {cwnds:?}");
        // It settles with the queue between alpha and beta (plus one increment): here
        // their shares of the window, 25 % and 35 %, so cwnd = capacity / (1 − share).
        let last = *cwnds.last().unwrap();
        let settled = |pct: u32| capacity * 100 / (100 - pct);
        assert!(
            last >= settled(VEGAS_ALPHA_PCT) - CIRCUIT_INCREMENT
                && last <= settled(VEGAS_BETA_PCT) + CIRCUIT_INCREMENT,
            "{cwnds:?}"
        );
        assert!(last < 2 * capacity, "{cwnds:?}");
    }

    #[test]
    fn random_stalls_from_loss_do_not_read_as_a_queue() {
        // A 300 ms path with room for everything, but one SENDME in three arrives 300 ms
        // late: its cells waited behind a retransmission. A smoothed round trip (the
        // EWMA of Tor's prop 324) reads 20–30 % of the window as queued and holds it at
        // 1,600 cells; the standing round trip sees the unqueued samples between.
        let mut v = Vegas::default();
        let mut i = 0u32;
        let cwnds = drive(&mut v, 60, |_| {
            i += 1;
            Duration::from_millis(if i.is_multiple_of(3) { 600 } else { 300 })
        });
        assert!(*cwnds.last().unwrap() >= 8_000, "{cwnds:?}");
        // A real queue still stops it: every sample late once the window passes 3,000.
        let mut v = Vegas::default();
        let cwnds = drive(&mut v, 60, |cwnd| {
            Duration::from_millis(300)
                + Duration::from_millis(300) * cwnd.saturating_sub(3_000) / 3_000
        });
        assert!(
            *cwnds.last().unwrap() <= 3_000 * 100 / (100 - VEGAS_BETA_PCT) + CIRCUIT_INCREMENT,
            "{cwnds:?}"
        );
    }

    #[test]
    fn stalls_that_raise_most_samples_do_not_hold_a_large_window() {
        // What the exit saw on the `broadband` WAN testnet: stalls so frequent that only
        // one SENDME in 200 comes back unstalled (4 % were within 10 % of `min_rtt`),
        // the others 25 % late. Half a window of samples (at most 50) mostly holds no
        // unstalled one, so the standing round trip reads 1.25 × `min_rtt`: 20 % of any
        // window looks queued. With fixed thresholds (α 300, β 600 cells) the window
        // left slow start at 1,820 cells and crept to 2,200 in 120 round trips; with
        // thresholds that are shares of the window it grows to the cap.
        let mut v = Vegas::default();
        let mut i = 0u32;
        let cwnds = drive(&mut v, 120, |_| {
            let stalled = !i.is_multiple_of(200);
            i += 1;
            Duration::from_millis(if stalled { 375 } else { 300 })
        });
        assert!(*cwnds.last().unwrap() >= 8_000, "{cwnds:?}");
    }

    #[test]
    fn vegas_never_leaves_its_bounds_and_an_idle_sender_does_not_grow() {
        // Round trips jumping between 0.1 and 5 ms (loopback under load) never take the
        // window below the old fixed window.
        let mut v = Vegas::default();
        for i in 0..10_000u32 {
            let rtt = Duration::from_micros(if i % 3 == 0 { 5_000 } else { 100 });
            let w = v.on_sendme(rtt, v.cwnd(), None);
            assert!((CWND_MIN..=CWND_MAX).contains(&w));
        }
        // A path with no queue at all: the window grows to the cap and stays there.
        let mut v = Vegas::default();
        let cwnds = drive(&mut v, 40, |_| Duration::from_millis(300));
        assert_eq!(*cwnds.last().unwrap(), CWND_MAX, "{cwnds:?}");
        // A sender with little in flight (application-limited) keeps its window.
        let mut v = Vegas::default();
        for _ in 0..1_000 {
            v.on_sendme(Duration::from_millis(300), 150, None);
        }
        assert_eq!(v.cwnd(), CIRCUIT_WINDOW);
    }

    #[test]
    fn sendme_tags_measure_the_round_trip_and_open_the_window_by_the_change() {
        let t0 = Instant::now();
        let mut tags = SendmeTags::default();
        let mut deliver = CircuitDeliverWindow::default();
        // The whole window goes out, then the SENDMEs come back 300 ms after their cells:
        // the window was full, nothing queued, so slow start adds an increment each.
        let mut due = Vec::new();
        for i in 1..=CIRCUIT_WINDOW {
            tags.on_data_sent(tag(i), t0);
            due.extend(deliver.on_data(tag(i)));
        }
        let opened: Vec<i64> = due
            .iter()
            .map(|echo| {
                tags.on_sendme(echo, t0 + Duration::from_millis(300))
                    .unwrap()
            })
            .collect();
        assert_eq!(opened.first(), Some(&200), "{opened:?}");
        assert!(tags.cwnd() > CIRCUIT_WINDOW);
        // With only one increment in flight, a SENDME just gives the increment back.
        let mut tags = SendmeTags::default();
        for i in 1..=CIRCUIT_INCREMENT {
            tags.on_data_sent(tag(i), t0);
        }
        let echo = tag(CIRCUIT_INCREMENT);
        assert_eq!(
            tags.on_sendme(&echo, t0 + Duration::from_millis(300)),
            Ok(100)
        );
    }

    #[test]
    fn a_reader_that_keeps_up_grows_the_stream_window_up_to_its_cap() {
        let mut s = StreamDeliverWindow::default();
        let mut sendmes = 0;
        // Cells arrive and are consumed at once, for 20,000 cells.
        for _ in 0..20_000 {
            s.on_data().unwrap();
            sendmes += s.on_consumed();
        }
        assert_eq!(s.size(), STREAM_WINDOW_MAX);
        // One SENDME per increment, plus one per increment of growth.
        assert_eq!(
            sendmes,
            20_000 / STREAM_INCREMENT + (STREAM_WINDOW_MAX - STREAM_WINDOW) / STREAM_INCREMENT
        );
        // A reader that then stalls costs at most the grown window.
        let mut taken = 0;
        while s.on_data().is_ok() {
            taken += 1;
        }
        assert_eq!(taken, STREAM_WINDOW_MAX);
    }

    #[test]
    fn one_late_sendme_does_not_end_slow_start() {
        let mut v = Vegas::default();
        for i in 0..30 {
            // 300 ms each, one of them 400 ms (a burst queued at a link for a moment).
            let rtt = Duration::from_millis(if i == 3 { 400 } else { 300 });
            v.on_sendme(rtt, v.cwnd(), None);
        }
        assert!(v.in_slow_start(), "cwnd {}", v.cwnd());
        assert_eq!(v.cwnd(), CIRCUIT_WINDOW + 30 * CIRCUIT_INCREMENT);
    }
}
