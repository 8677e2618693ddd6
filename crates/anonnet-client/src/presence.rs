//! Is this client itself away? (Sans-IO; `docs/protocol.md` §9.1, DESIGN §6.) A laptop
//! suspended, a process stopped with SIGSTOP or a machine whose network went down loses
//! every link at once; none of that is a guard's fault. A client that blamed its guards for
//! its own absence would add a guard after every suspend until the guard set held every
//! relay — weakening it for good.
//!
//! The detector is ticked with the monotonic and the wall clock (at least every
//! [`TICK`], by a task of the client, and before every decision to blame a relay). A tick
//! that comes much later than the last one on the monotonic clock (the process did not
//! run: SIGSTOP, a starved VM) or on the wall clock beyond the monotonic one (the machine
//! was suspended: Linux's monotonic clock stops then) means the client was away; for
//! [`BLAME_GRACE`] after that, links and circuits that fail are not held against relays.

use std::time::{Duration, Instant, SystemTime};

/// How often the client's presence task ticks.
pub const TICK: Duration = Duration::from_secs(1);
/// A gap between ticks longer than this beyond [`TICK`] is an absence (3 s).
pub const ABSENCE_GAP: Duration = Duration::from_secs(3);
/// After an absence, failures for this long blame no relay (30 s: links time out after
/// 6 s of silence, and reconnecting takes a few round trips).
pub const BLAME_GRACE: Duration = Duration::from_secs(30);

/// The absence detector.
#[derive(Debug, Clone)]
pub struct Presence {
    last_mono: Instant,
    last_wall: SystemTime,
    absent_until: Option<Instant>,
}

impl Presence {
    /// A detector started now.
    pub fn new(now: Instant, wall: SystemTime) -> Presence {
        Presence {
            last_mono: now,
            last_wall: wall,
            absent_until: None,
        }
    }

    /// Note the time; returns the length of the absence when this tick reveals one.
    pub fn tick(&mut self, now: Instant, wall: SystemTime) -> Option<Duration> {
        let mono_gap = now.saturating_duration_since(self.last_mono);
        let wall_gap = wall.duration_since(self.last_wall).unwrap_or_default();
        self.last_mono = now.max(self.last_mono);
        self.last_wall = wall;
        let limit = TICK + ABSENCE_GAP;
        let away = if mono_gap > limit {
            Some(mono_gap)
        } else if wall_gap > mono_gap + limit {
            Some(wall_gap)
        } else {
            None
        };
        if away.is_some() {
            self.absent_until = Some(now + BLAME_GRACE);
        }
        away
    }

    /// True while failures must not be blamed on relays (within [`BLAME_GRACE`] of a
    /// detected absence).
    pub fn excuses(&self, now: Instant) -> bool {
        self.absent_until.is_some_and(|t| now < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_ticks_are_no_absence() {
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut p = Presence::new(t0, w0);
        for i in 1..100u64 {
            let d = Duration::from_millis(1100 * i);
            assert_eq!(p.tick(t0 + d, w0 + d), None);
        }
        assert!(!p.excuses(t0 + Duration::from_secs(200)));
    }

    #[test]
    fn a_stopped_process_is_an_absence_with_a_grace_period() {
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut p = Presence::new(t0, w0);
        let back = Duration::from_secs(20);
        assert_eq!(p.tick(t0 + back, w0 + back), Some(back));
        assert!(p.excuses(t0 + back + Duration::from_secs(29)));
        assert!(!p.excuses(t0 + back + BLAME_GRACE));
    }

    #[test]
    fn a_suspended_machine_shows_in_the_wall_clock() {
        // Suspend: the monotonic clock stood still, the wall clock moved an hour.
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut p = Presence::new(t0, w0);
        let mono = Duration::from_secs(1);
        let wall = Duration::from_secs(3600);
        assert_eq!(p.tick(t0 + mono, w0 + wall), Some(wall));
        assert!(p.excuses(t0 + mono));
        // A wall clock stepped back (NTP) is no absence.
        let mut p = Presence::new(t0, w0);
        assert_eq!(p.tick(t0 + mono, w0 - Duration::from_secs(60)), None);
    }
}
