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
//! make an exit flood, nor an exit a client. Windows are counted in cells so that an
//! RTT-based controller (Tor's prop 324) can later replace the fixed sizes without a new
//! cell format.

use std::collections::VecDeque;

/// Unacknowledged `DATA` cells allowed per circuit and direction.
pub const CIRCUIT_WINDOW: u32 = 1000;
/// Cells acknowledged by one circuit `SENDME`.
pub const CIRCUIT_INCREMENT: u32 = 100;
/// Unacknowledged `DATA` cells allowed per stream and direction.
pub const STREAM_WINDOW: u32 = 500;
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
/// `DATA` cell's layer tag, at most `CIRCUIT_WINDOW / CIRCUIT_INCREMENT` (10) entries.
#[derive(Debug, Default)]
pub struct SendmeTags {
    /// `DATA` cells sealed since the last recorded tag, 0..[`CIRCUIT_INCREMENT`]: a count
    /// that restarts, so it never wraps out of step with the receiver's (a running `u32`
    /// total did after 2^32 cells, which is not a multiple of 100).
    since_tag: u32,
    expected: VecDeque<[u8; 16]>,
}

impl SendmeTags {
    /// Record a `DATA` cell just sealed with layer tag `tag`.
    pub fn on_data_sent(&mut self, tag: [u8; 16]) {
        self.since_tag += 1;
        if self.since_tag >= CIRCUIT_INCREMENT {
            self.since_tag = 0;
            if self.expected.len() >= (CIRCUIT_WINDOW / CIRCUIT_INCREMENT) as usize {
                // Cannot happen while the sender respects its window; keep the bound anyway.
                self.expected.pop_front();
            }
            self.expected.push_back(tag);
        }
    }

    /// Check a circuit `SENDME`; on success the sender may send [`CIRCUIT_INCREMENT`] more
    /// cells.
    ///
    /// # Errors
    /// [`FlowError::UnexpectedSendme`] when none is due, [`FlowError::BadSendmeTag`] when the
    /// tag differs (compared in constant time).
    pub fn on_sendme(&mut self, tag: &[u8; 16]) -> Result<(), FlowError> {
        let want = self
            .expected
            .pop_front()
            .ok_or(FlowError::UnexpectedSendme)?;
        if ct_eq(&want, tag) {
            Ok(())
        } else {
            Err(FlowError::BadSendmeTag)
        }
    }
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
/// and every [`STREAM_INCREMENT`] consumed cells earn the sender a stream `SENDME`.
#[derive(Debug)]
pub struct StreamDeliverWindow {
    window: u32,
    consumed: u32,
}

impl Default for StreamDeliverWindow {
    fn default() -> Self {
        StreamDeliverWindow {
            window: STREAM_WINDOW,
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
        Ok(())
    }

    /// The application consumed one cell's data. Returns true when a stream `SENDME` is
    /// due now (the window then grows by [`STREAM_INCREMENT`]).
    pub fn on_consumed(&mut self) -> bool {
        self.consumed += 1;
        if self.consumed == STREAM_INCREMENT {
            self.consumed = 0;
            self.window += STREAM_INCREMENT;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn sendme_tags_stay_in_step_over_millions_of_cells() {
        // The sender's and the receiver's counts restart every 100 cells, so no count can
        // wrap (a u32 total did after 2^32 cells). 5 million cells, SENDMEs as they fall due.
        let mut tags = SendmeTags::default();
        let mut deliver = CircuitDeliverWindow::default();
        for i in 0..5_000_000u64 {
            let mut tag = [0u8; 16];
            tag[..8].copy_from_slice(&i.to_be_bytes());
            tags.on_data_sent(tag);
            if let Some(echo) = deliver.on_data(tag) {
                tags.on_sendme(&echo).unwrap();
            }
        }
        assert!(tags.expected.is_empty());
        assert!(tags.since_tag < CIRCUIT_INCREMENT);
    }

    use super::*;

    #[test]
    fn sendme_tags_stay_in_step_across_2_pow_32_cells() {
        // The state both ends hold after 2^32 − 500 cells with every SENDME answered is
        // the count since the last recorded tag, (2^32 − 500) mod 100 on each side;
        // continue from there for 1,500 cells, across 2^32, where a running u32 total
        // went out of step.
        let start: u64 = (1u64 << 32) - 500;
        let phase = u32::try_from(start % u64::from(CIRCUIT_INCREMENT)).unwrap();
        let mut tags = SendmeTags {
            since_tag: phase,
            expected: VecDeque::new(),
        };
        let mut deliver = CircuitDeliverWindow {
            since_sendme: phase,
        };
        let mut answered = 0;
        for i in start..start + 1_500 {
            let mut tag = [0u8; 16];
            tag[..8].copy_from_slice(&i.to_be_bytes());
            tags.on_data_sent(tag);
            if let Some(echo) = deliver.on_data(tag) {
                assert_eq!(i % 100, 99, "the 100th cell of each increment is echoed");
                tags.on_sendme(&echo).unwrap();
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
        let mut sender = SendmeTags::default();
        let mut receiver = CircuitDeliverWindow::default();
        let mut due = Vec::new();
        for i in 1..=CIRCUIT_WINDOW {
            sender.on_data_sent(tag(i));
            if let Some(t) = receiver.on_data(tag(i)) {
                due.push(t);
            }
        }
        assert_eq!(due.len(), 10);
        assert_eq!(due[0], tag(100));
        // A forged tag is refused; the right ones are accepted in order.
        let mut forged = SendmeTags::default();
        for i in 1..=100 {
            forged.on_data_sent(tag(i));
        }
        assert_eq!(forged.on_sendme(&tag(99)), Err(FlowError::BadSendmeTag));
        for t in &due {
            sender.on_sendme(t).unwrap();
        }
        assert_eq!(sender.on_sendme(&due[0]), Err(FlowError::UnexpectedSendme));
    }

    #[test]
    fn stream_receiver_refuses_data_beyond_what_the_application_consumed() {
        let mut s = StreamDeliverWindow::default();
        for _ in 0..STREAM_WINDOW {
            s.on_data().unwrap();
        }
        assert_eq!(s.on_data(), Err(FlowError::WindowExceeded));
        for i in 0..STREAM_INCREMENT {
            assert_eq!(s.on_consumed(), i + 1 == STREAM_INCREMENT);
        }
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
}
