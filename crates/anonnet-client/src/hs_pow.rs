//! The service side of proof of work on introductions (docs/protocol.md §13.9): a bounded
//! queue of checked introductions ordered by effort, and the controller of the suggested
//! effort. Both are sans-IO: the caller feeds a clock (milliseconds of any monotonic
//! origin) and gets decisions back, so the tests drive them in exact time.

use std::cmp::Reverse;
use std::collections::BTreeMap;

/// Default bound of the introduction queue (entries). Arti's `pow_rend_queue_depth`
/// default is 8192; a service answers at most 64 at once, so 4096 is minutes of backlog.
pub const DEFAULT_QUEUE_BOUND: usize = 4096;
/// Default age after which a queued introduction is dropped (milliseconds): the client
/// waits 10 s for the rendezvous (§13.7), so an older one would meet nobody.
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 8_000;
/// Default cap of the suggested effort (a few seconds of one core for a client).
pub const DEFAULT_MAX_EFFORT: u32 = 10_000;
/// Default period of the suggested-effort update (milliseconds); Tor uses 300 s.
pub const DEFAULT_UPDATE_PERIOD_MS: u64 = 60_000;

/// Why a queued introduction left the queue without being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was full and it had the lowest effort (newest among equals).
    Full,
    /// It waited longer than the queue's timeout.
    Timeout,
}

/// A bounded queue of introductions (§13.9): highest effort first, oldest first among
/// equal efforts. When full, the entry with the lowest effort (newest among equals) is
/// dropped, which may be the one being pushed.
#[derive(Debug)]
pub struct IntroQueue<T> {
    /// (effort, Reverse(seq)) → (item, enqueued at ms). The last key is the next to serve;
    /// the first is the next to drop.
    entries: BTreeMap<(u32, Reverse<u64>), (T, u64)>,
    next_seq: u64,
    bound: usize,
    timeout_ms: u64,
}

impl<T> IntroQueue<T> {
    /// A queue of at most `bound` entries (at least 1) that drops entries older than
    /// `timeout_ms` milliseconds.
    pub fn new(bound: usize, timeout_ms: u64) -> Self {
        IntroQueue {
            entries: BTreeMap::new(),
            next_seq: 0,
            bound: bound.max(1),
            timeout_ms,
        }
    }

    /// Entries waiting now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queue `item` with `effort` at time `now_ms`. Returns the effort of the entry dropped
    /// to make room, if any (possibly `item`'s own when it has the lowest effort).
    pub fn push(&mut self, effort: u32, item: T, now_ms: u64) -> Option<u32> {
        let key = (effort, Reverse(self.next_seq));
        self.next_seq += 1;
        if self.entries.len() >= self.bound {
            let lowest = self.entries.keys().next().copied();
            match lowest {
                Some(low) if low.0 < effort => {
                    self.entries.remove(&low);
                }
                // Not above the lowest: the newcomer is the one dropped.
                _ => return Some(effort),
            }
            self.entries.insert(key, (item, now_ms));
            return lowest.map(|k| k.0);
        }
        self.entries.insert(key, (item, now_ms));
        None
    }

    /// The next introduction to serve at `now_ms` (highest effort, then oldest), with its
    /// effort; expired entries are dropped first and their efforts returned in `expired`.
    pub fn pop(&mut self, now_ms: u64, expired: &mut Vec<u32>) -> Option<(u32, T)> {
        self.expire(now_ms, expired);
        self.entries
            .pop_last()
            .map(|((effort, _), (item, _))| (effort, item))
    }

    /// Drop every entry enqueued more than the timeout before `now_ms`, appending their
    /// efforts to `expired`.
    pub fn expire(&mut self, now_ms: u64, expired: &mut Vec<u32>) {
        let timeout = self.timeout_ms;
        self.entries.retain(|(effort, _), (_, at)| {
            let keep = now_ms.saturating_sub(*at) <= timeout;
            if !keep {
                expired.push(*effort);
            }
            keep
        });
    }
}

/// The suggested-effort controller (§13.9), after prop 327's service-side estimate: over
/// each update period it sums the efforts of the introductions served, notes whether a
/// backlog formed and the largest effort dropped; at the end of the period it raises the
/// suggestion under pressure and decays it by a third when idle.
#[derive(Debug, Clone)]
pub struct EffortController {
    suggested: u32,
    max_effort: u32,
    min_effort: u32,
    total_effort: u64,
    served: u64,
    had_queue: bool,
    max_dropped: Option<u32>,
}

impl EffortController {
    /// A controller starting at effort 0 that never suggests more than `max_effort`.
    pub fn new(max_effort: u32) -> Self {
        EffortController {
            suggested: 0,
            max_effort,
            min_effort: 0,
            total_effort: 0,
            served: 0,
            had_queue: false,
            max_dropped: None,
        }
    }

    /// Never suggest less than `min_effort` (capped at the maximum); the suggestion starts
    /// there.
    #[must_use]
    pub fn with_floor(mut self, min_effort: u32) -> Self {
        self.min_effort = min_effort.min(self.max_effort);
        self.suggested = self.suggested.max(self.min_effort);
        self
    }

    /// The effort suggested now.
    pub fn suggested(&self) -> u32 {
        self.suggested
    }

    /// An introduction of `effort` was taken from the queue to be served.
    pub fn served(&mut self, effort: u32) {
        self.total_effort += u64::from(effort);
        self.served += 1;
    }

    /// An introduction of `effort` was dropped (queue full or timed out).
    pub fn dropped(&mut self, effort: u32) {
        self.max_dropped = Some(self.max_dropped.map_or(effort, |m| m.max(effort)));
    }

    /// `queued` introductions wait while every worker is busy: a backlog.
    pub fn backlog(&mut self, queued: usize) {
        if queued > 0 {
            self.had_queue = true;
        }
    }

    /// End the update period: returns the new suggestion and whether it changed
    /// materially (from or to 0, or by more than 15 %), so that the descriptor is
    /// republished.
    pub fn update(&mut self) -> (u32, bool) {
        let old = self.suggested;
        let average = self
            .total_effort
            .checked_div(self.served)
            .map_or(0, |a| u32::try_from(a).unwrap_or(u32::MAX));
        let new = if self.had_queue || self.max_dropped.is_some() {
            // Under pressure: at least one more than before, at least the average served
            // effort, and at least the largest effort that was dropped.
            old.saturating_add(1)
                .max(average)
                .max(self.max_dropped.map_or(0, |d| d.saturating_add(1)))
        } else {
            // Idle: decay by a third (to 0 from 1).
            old - old.div_ceil(3)
        }
        .min(self.max_effort)
        .max(self.min_effort);
        self.suggested = new;
        self.total_effort = 0;
        self.served = 0;
        self.had_queue = false;
        self.max_dropped = None;
        let material =
            (old == 0) != (new == 0) || u64::from(old.abs_diff(new)) * 100 > u64::from(old) * 15;
        (new, material)
    }
}

/// Bucket of an effort for the status counters: 0, 1–9, 10–99, 100–999, 1000+ (index
/// 0..=4).
pub fn effort_bucket(effort: u32) -> usize {
    match effort {
        0 => 0,
        1..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        _ => 4,
    }
}

/// Names of the [`effort_bucket`]s, for JSON.
pub const EFFORT_BUCKETS: [&str; 5] = ["0", "1-9", "10-99", "100-999", "1000+"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_serves_highest_effort_then_oldest() {
        let mut q = IntroQueue::new(10, 1000);
        q.push(0, "a0", 0);
        q.push(5, "b5", 1);
        q.push(0, "c0", 2);
        q.push(5, "d5", 3);
        q.push(9, "e9", 4);
        let mut x = Vec::new();
        let order: Vec<_> = std::iter::from_fn(|| q.pop(10, &mut x).map(|(_, i)| i)).collect();
        assert_eq!(order, ["e9", "b5", "d5", "a0", "c0"]);
        assert!(x.is_empty());
    }

    #[test]
    fn a_full_queue_drops_the_lowest_effort() {
        let mut q = IntroQueue::new(3, 1000);
        assert_eq!(q.push(1, 1, 0), None);
        assert_eq!(q.push(0, 2, 0), None);
        assert_eq!(q.push(0, 3, 0), None);
        // Not above the lowest: the newcomer goes.
        assert_eq!(q.push(0, 4, 0), Some(0));
        // Above it: the newest lowest goes (3), the older 0 (2) stays.
        assert_eq!(q.push(7, 5, 0), Some(0));
        assert_eq!(q.len(), 3);
        let mut x = Vec::new();
        let order: Vec<_> = std::iter::from_fn(|| q.pop(0, &mut x).map(|(_, i)| i)).collect();
        assert_eq!(order, [5, 1, 2]);
    }

    #[test]
    fn entries_older_than_the_timeout_are_dropped() {
        let mut q = IntroQueue::new(10, 100);
        q.push(3, "old", 0);
        q.push(0, "new", 150);
        let mut expired = Vec::new();
        assert_eq!(q.pop(101, &mut expired), Some((0, "new")));
        assert_eq!(expired, [3]);
        assert!(q.is_empty());
    }

    #[test]
    fn effort_rises_under_pressure_and_decays_when_idle() {
        let mut c = EffortController::new(1000);
        assert_eq!(c.update(), (0, false), "idle at 0 stays 0");
        // A backlog of zero-effort introductions: up by one, a material change.
        c.backlog(10);
        c.served(0);
        assert_eq!(c.update(), (1, true));
        // Served efforts average 40 under backlog: follow the average.
        c.backlog(5);
        c.served(30);
        c.served(50);
        assert_eq!(c.update(), (40, true));
        // Something of effort 99 was dropped: above it.
        c.dropped(99);
        assert_eq!(c.update(), (100, true));
        // Idle: decay by a third each period, down to 0.
        assert_eq!(c.update(), (66, true));
        assert_eq!(c.update(), (44, true));
        let mut last = 44;
        for _ in 0..20 {
            last = c.update().0;
        }
        assert_eq!(last, 0);
        // Never above the cap.
        c.dropped(u32::MAX);
        assert_eq!(c.update().0, 1000);
    }

    #[test]
    fn a_floor_is_where_the_suggestion_starts_and_never_falls_below() {
        let mut c = EffortController::new(1000).with_floor(50);
        assert_eq!(c.suggested(), 50);
        assert_eq!(c.update(), (50, false), "idle stays at the floor");
        c.dropped(199);
        assert_eq!(c.update(), (200, true));
        for _ in 0..20 {
            c.update();
        }
        assert_eq!(c.suggested(), 50, "decays to the floor, not to 0");
        // A floor above the cap is the cap.
        assert_eq!(EffortController::new(10).with_floor(50).suggested(), 10);
    }

    #[test]
    fn small_changes_are_not_material() {
        let mut c = EffortController::new(u32::MAX);
        c.dropped(99);
        assert_eq!(c.update(), (100, true));
        c.backlog(1);
        c.served(100);
        assert_eq!(c.update(), (101, false), "1 % is not worth a republish");
    }

    #[test]
    fn effort_buckets() {
        let b: Vec<_> = [0, 1, 9, 10, 99, 100, 999, 1000, u32::MAX]
            .iter()
            .map(|&e| effort_bucket(e))
            .collect();
        assert_eq!(b, [0, 1, 1, 2, 2, 3, 3, 4, 4]);
    }
}
