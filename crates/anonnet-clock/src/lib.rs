#![doc = include_str!("../README.md")]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest a publisher waits between two looks at its deadlines (60 s): a clock step
/// the jump detector missed is still repaired within this (§15).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// A wall clock that moved this much more (or less) than the monotonic clock between two
/// ticks has jumped (5 s: ticks are 1 s apart, and a busy machine may run a tick late by
/// a second or two without the clocks disagreeing).
pub const JUMP_TOLERANCE: Duration = Duration::from_secs(5);

/// Seconds since the Unix epoch of `t` (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The time source of a node: the wall clock and the monotonic clock, read from the
/// system ([`Clock::real`], the default) or moved by a test ([`Clock::driven`]). Cheap to
/// clone; clones of a driven clock share its time.
#[derive(Clone, Default)]
pub struct Clock {
    driven: Option<Arc<Mutex<DrivenTime>>>,
}

#[derive(Debug)]
struct DrivenTime {
    mono: Instant,
    wall: SystemTime,
}

fn lock(m: &Mutex<DrivenTime>) -> MutexGuard<'_, DrivenTime> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.driven {
            None => f.write_str("Clock(real)"),
            Some(t) => write!(f, "Clock(driven, unix {})", unix_secs(lock(t).wall)),
        }
    }
}

impl Clock {
    /// The system's clocks.
    pub fn real() -> Clock {
        Clock { driven: None }
    }

    /// A clock that stands still until `driver` moves it; its wall clock starts at
    /// `wall_start`, its monotonic clock at the moment of the call.
    pub fn driven(wall_start: SystemTime) -> (Clock, ClockDriver) {
        let time = Arc::new(Mutex::new(DrivenTime {
            mono: Instant::now(),
            wall: wall_start,
        }));
        (
            Clock {
                driven: Some(time.clone()),
            },
            ClockDriver { time },
        )
    }

    /// Whether a test drives this clock.
    pub fn is_driven(&self) -> bool {
        self.driven.is_some()
    }

    /// The wall clock: what `published`/`expires` fields are compared with.
    pub fn wall_now(&self) -> SystemTime {
        match &self.driven {
            None => SystemTime::now(),
            Some(t) => lock(t).wall,
        }
    }

    /// The monotonic clock: what timeouts and ages are measured with. It never goes back;
    /// on Linux it stands still while the machine is suspended.
    pub fn mono_now(&self) -> Instant {
        match &self.driven {
            None => Instant::now(),
            Some(t) => lock(t).mono,
        }
    }

    /// The wall clock in Unix seconds.
    pub fn unix_now(&self) -> u64 {
        unix_secs(self.wall_now())
    }
}

/// Moves a [`Clock::driven`] clock.
#[derive(Debug, Clone)]
pub struct ClockDriver {
    time: Arc<Mutex<DrivenTime>>,
}

impl ClockDriver {
    /// Time passes normally: both clocks move by `d`.
    pub fn advance(&self, d: Duration) {
        let mut t = lock(&self.time);
        t.mono += d;
        t.wall += d;
    }

    /// The wall clock alone moves forward by `d`: a suspend (the monotonic clock stops),
    /// an NTP step forward, a VM restored from a snapshot.
    pub fn jump_wall_forward(&self, d: Duration) {
        lock(&self.time).wall += d;
    }

    /// The wall clock alone moves back by `d` (an NTP step back); it never goes before
    /// the Unix epoch.
    pub fn jump_wall_back(&self, d: Duration) {
        let mut t = lock(&self.time);
        t.wall = t.wall.checked_sub(d).unwrap_or(UNIX_EPOCH);
    }
}

/// Something this node published with an expiry: when (both clocks) and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Wall-clock time of the publication (Unix seconds).
    pub published: u64,
    /// Its `expires` (Unix seconds): the earliest expiry among what was published (a
    /// `.dark` record expires with the earliest of its own time and its receipts').
    pub expires: u64,
    /// Monotonic time of the publication.
    pub at: Instant,
}

/// When to publish again something that expires (§15): at the latest when its wall-clock
/// validity left falls to `margin`, or when `margin` is all that is left of its validity
/// by the monotonic clock since it was published (the wall clock was stepped back since:
/// the nodes holding it, on other clocks, still drop it on time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh {
    /// How long a publication is valid (its `expires` is the publication time plus this).
    pub lifetime: Duration,
    /// Publish again when no more than this is left (smaller than `lifetime`).
    pub margin: Duration,
}

impl Refresh {
    /// The rule for a lifetime and a margin (whole seconds count).
    pub const fn new(lifetime: Duration, margin: Duration) -> Refresh {
        Refresh { lifetime, margin }
    }

    /// The `expires` (Unix seconds) of something published at `now_unix`.
    pub fn expires_at(&self, now_unix: u64) -> u64 {
        now_unix.saturating_add(self.lifetime.as_secs())
    }

    /// The record of a publication made now that expires at [`Refresh::expires_at`].
    pub fn published_now(&self, now_unix: u64, now_mono: Instant) -> Published {
        Published {
            published: now_unix,
            expires: self.expires_at(now_unix),
            at: now_mono,
        }
    }

    /// Whether `last` (`None`: nothing published yet) must be published again now.
    pub fn due(&self, last: Option<&Published>, now_unix: u64, now_mono: Instant) -> bool {
        self.wait(last, now_unix, now_mono).is_zero()
    }

    /// How long until [`Refresh::due`] becomes true if the clocks run normally; zero when
    /// it is true now. A caller sleeps at most the smaller of this and [`CHECK_INTERVAL`].
    pub fn wait(&self, last: Option<&Published>, now_unix: u64, now_mono: Instant) -> Duration {
        let Some(p) = last else {
            return Duration::ZERO;
        };
        let margin = self.margin.as_secs();
        let left_wall = p.expires.saturating_sub(now_unix);
        // Validity as the network sees it: its length at publication less the monotonic
        // time since. Ignores a wall clock stepped back after publication.
        let valid_for = Duration::from_secs(p.expires.saturating_sub(p.published));
        let left_mono = valid_for.saturating_sub(now_mono.saturating_duration_since(p.at));
        let by_wall = Duration::from_secs(left_wall.saturating_sub(margin));
        let by_mono = left_mono.saturating_sub(self.margin);
        by_wall.min(by_mono)
    }

    /// How long a publisher task sleeps before it asks again: [`Refresh::wait`], at most
    /// [`CHECK_INTERVAL`].
    pub fn next_check(
        &self,
        last: Option<&Published>,
        now_unix: u64,
        now_mono: Instant,
    ) -> Duration {
        self.wait(last, now_unix, now_mono).min(CHECK_INTERVAL)
    }
}

/// A publisher's state (§15): what it last published, and whether something (a change, a
/// new placement, a record found missing, a failed attempt) asks for a publication before
/// [`Refresh`] would. The tokio task around it publishes when [`Schedule::due`], reports
/// the outcome, and sleeps [`Schedule::wait`] (its own retry delay after a failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    refresh: Refresh,
    last: Option<Published>,
    wanted: bool,
}

impl Schedule {
    /// Nothing published yet: due at once.
    pub fn new(refresh: Refresh) -> Schedule {
        Schedule {
            refresh,
            last: None,
            wanted: true,
        }
    }

    /// Publish at the next look, whatever the deadline says.
    pub fn want(&mut self) {
        self.wanted = true;
    }

    /// Whether to publish now.
    pub fn due(&self, now_unix: u64, now_mono: Instant) -> bool {
        self.wanted || self.refresh.due(self.last.as_ref(), now_unix, now_mono)
    }

    /// A publication succeeded: `p` is what the network now holds.
    pub fn published(&mut self, p: Published) {
        self.last = Some(p);
        self.wanted = false;
    }

    /// A publication failed: it stays due (the caller waits its retry delay first).
    pub fn failed(&mut self) {
        self.wanted = true;
    }

    /// How long to sleep before looking again: zero when due now (after a failure, the
    /// caller's retry delay applies instead), else the time to the deadline, at most
    /// [`CHECK_INTERVAL`].
    pub fn wait(&self, now_unix: u64, now_mono: Instant) -> Duration {
        if self.wanted {
            return Duration::ZERO;
        }
        self.refresh
            .next_check(self.last.as_ref(), now_unix, now_mono)
    }

    /// The last successful publication.
    pub fn last(&self) -> Option<&Published> {
        self.last.as_ref()
    }

    /// The rule this schedule follows.
    pub fn refresh(&self) -> &Refresh {
        &self.refresh
    }
}

/// A clock jump seen between two ticks of a [`JumpDetector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockJump {
    /// The wall clock moved this much more than the monotonic one (a suspend, a step
    /// forward).
    Forward(Duration),
    /// The wall clock moved this much less than the monotonic one (a step back).
    Backward(Duration),
}

/// Notices wall-clock jumps: ticked with both clocks (every second by a task of the
/// client and of the relay), it compares how far each moved since the previous tick.
#[derive(Debug, Clone)]
pub struct JumpDetector {
    last_mono: Instant,
    last_wall: SystemTime,
}

impl JumpDetector {
    /// A detector whose first tick compares with these times.
    pub fn new(mono: Instant, wall: SystemTime) -> JumpDetector {
        JumpDetector {
            last_mono: mono,
            last_wall: wall,
        }
    }

    /// Note the time; returns the jump when the wall clock moved more than
    /// [`JUMP_TOLERANCE`] more or less than the monotonic one since the last tick.
    pub fn tick(&mut self, mono: Instant, wall: SystemTime) -> Option<ClockJump> {
        let mono_gap = mono.saturating_duration_since(self.last_mono);
        let jump = match wall.duration_since(self.last_wall) {
            Ok(wall_gap) if wall_gap > mono_gap + JUMP_TOLERANCE => {
                Some(ClockJump::Forward(wall_gap - mono_gap))
            }
            Ok(wall_gap) if wall_gap + JUMP_TOLERANCE < mono_gap => {
                Some(ClockJump::Backward(mono_gap - wall_gap))
            }
            Ok(_) => None,
            Err(back) => {
                let back = back.duration() + mono_gap;
                (back > JUMP_TOLERANCE).then_some(ClockJump::Backward(back))
            }
        };
        self.last_mono = mono.max(self.last_mono);
        self.last_wall = wall;
        jump
    }
}

/// A cached record: served while it is younger than the caller's refetch age and, in
/// every case, only while its own `expires` is in the future (§15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiring<T> {
    value: T,
    expires: u64,
    fetched: Instant,
}

impl<T> Expiring<T> {
    /// `value`, valid until `expires` (Unix seconds), fetched at `fetched` (monotonic).
    pub fn new(value: T, expires: u64, fetched: Instant) -> Expiring<T> {
        Expiring {
            value,
            expires,
            fetched,
        }
    }

    /// The value, when it has not expired at `now_unix` and was fetched less than
    /// `max_age` before `now_mono`.
    pub fn fresh(&self, now_unix: u64, now_mono: Instant, max_age: Duration) -> Option<&T> {
        let young = now_mono.saturating_duration_since(self.fetched) < max_age;
        (young && !self.expired(now_unix)).then_some(&self.value)
    }

    /// Whether the record's `expires` is at or before `now_unix`.
    pub fn expired(&self, now_unix: u64) -> bool {
        self.expires <= now_unix
    }

    /// The record's `expires` (Unix seconds).
    pub fn expires(&self) -> u64 {
        self.expires
    }

    /// When it was fetched (monotonic).
    pub fn fetched(&self) -> Instant {
        self.fetched
    }
}

/// Delays between retries of something that keeps failing: doubling from `first` up to
/// `max`, each drawn at random from the upper half of its step ("equal jitter"), so many
/// nodes that failed together (a relay restart, a network outage) do not retry together.
///
/// The `n`-th delay after a [`Backoff::reset`] lies in `[d/2, d]` with
/// `d = min(first · 2ⁿ, max)`: never longer than the plain doubling schedule it replaces,
/// never shorter than half of it. The schedule and the jitter are backon's
/// `ExponentialBuilder` (factor 2, jitter in `[0, 1)` of the step), over half of each step.
#[derive(Debug)]
pub struct Backoff {
    builder: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// A schedule whose first delay is in `[first/2, first]` and whose delays never exceed
    /// `max` (`max` below `first` is raised to `first`).
    pub fn new(first: Duration, max: Duration) -> Backoff {
        use backon::BackoffBuilder as _;
        let max = max.max(first);
        let builder = backon::ExponentialBuilder::new()
            .with_factor(2.0)
            .with_min_delay(first / 2)
            .with_max_delay(max / 2)
            .with_jitter()
            .without_max_times();
        Backoff {
            builder,
            delays: builder.build(),
            max,
        }
    }

    /// The delay to wait before the next retry (each call moves one step along).
    pub fn next_delay(&mut self) -> Duration {
        // The builder sets no limit on attempts or total delay, so `next` always yields;
        // `max` stands in for the impossible end of the schedule.
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Start again from the first delay (after a success).
    pub fn reset(&mut self) {
        use backon::BackoffBuilder as _;
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;
    const H: u64 = 3600;

    fn driven() -> (Clock, ClockDriver) {
        Clock::driven(UNIX_EPOCH + Duration::from_secs(T0))
    }

    #[test]
    fn driven_clock_moves_only_when_driven() {
        let (clock, driver) = driven();
        let m0 = clock.mono_now();
        assert_eq!(clock.unix_now(), T0);
        driver.advance(Duration::from_secs(10));
        assert_eq!(clock.unix_now(), T0 + 10);
        assert_eq!(clock.mono_now() - m0, Duration::from_secs(10));
        driver.jump_wall_forward(Duration::from_secs(5 * H));
        assert_eq!(clock.unix_now(), T0 + 10 + 5 * H);
        assert_eq!(clock.mono_now() - m0, Duration::from_secs(10));
        driver.jump_wall_back(Duration::from_secs(H));
        assert_eq!(clock.unix_now(), T0 + 10 + 4 * H);
        assert!(clock.clone().is_driven() && !Clock::real().is_driven());
    }

    #[test]
    fn descriptor_is_republished_an_hour_after_publication() {
        // 3 h lifetime, 2 h margin: the old hourly republication.
        let r = Refresh::new(Duration::from_secs(3 * H), Duration::from_secs(2 * H));
        let m0 = Instant::now();
        assert!(r.due(None, T0, m0));
        let p = r.published_now(T0, m0);
        assert_eq!(p.expires, T0 + 3 * H);
        let later = |s: u64| (T0 + s, m0 + Duration::from_secs(s));
        let (w, m) = later(H - 1);
        assert!(!r.due(Some(&p), w, m));
        assert_eq!(r.wait(Some(&p), w, m), Duration::from_secs(1));
        assert_eq!(r.next_check(Some(&p), T0, m0), CHECK_INTERVAL);
        let (w, m) = later(H);
        assert!(r.due(Some(&p), w, m));
    }

    #[test]
    fn wall_clock_jump_forward_makes_republication_due_at_once() {
        // Suspended for 2.5 h: the monotonic clock did not move.
        let r = Refresh::new(Duration::from_secs(3 * H), Duration::from_secs(2 * H));
        let m0 = Instant::now();
        let p = r.published_now(T0, m0);
        assert!(r.due(Some(&p), T0 + 2 * H + 1800, m0 + Duration::from_secs(60)));
        // After the expiry itself, too.
        assert!(r.due(Some(&p), T0 + 10 * H, m0));
    }

    #[test]
    fn wall_clock_stepped_back_is_caught_by_the_monotonic_age() {
        let r = Refresh::new(Duration::from_secs(3 * H), Duration::from_secs(2 * H));
        let m0 = Instant::now();
        let p = r.published_now(T0, m0);
        // The wall clock went back 5 h right after publication; an hour passes.
        let m = m0 + Duration::from_secs(H);
        assert!(r.due(Some(&p), T0 - 4 * H, m));
        assert!(!r.due(Some(&p), T0 - 4 * H, m - Duration::from_secs(1)));
    }

    #[test]
    fn schedule_publishes_on_request_on_failure_and_by_deadline() {
        let r = Refresh::new(Duration::from_secs(3 * H), Duration::from_secs(2 * H));
        let m0 = Instant::now();
        let mut s = Schedule::new(r);
        assert!(s.due(T0, m0) && s.wait(T0, m0).is_zero());
        s.failed();
        assert!(s.due(T0, m0));
        s.published(r.published_now(T0, m0));
        assert!(!s.due(T0, m0));
        assert_eq!(s.wait(T0, m0), CHECK_INTERVAL);
        assert_eq!(s.last().map(|p| p.expires), Some(T0 + 3 * H));
        s.want();
        assert!(s.due(T0, m0));
        s.published(r.published_now(T0, m0));
        // Suspended 90 minutes: due at the first look after the resume.
        assert!(s.due(T0 + 90 * 60, m0 + Duration::from_secs(1)));
        assert_eq!(s.refresh(), &r);
    }

    #[test]
    fn jump_detector_sees_suspend_and_steps_both_ways() {
        let m0 = Instant::now();
        let w0 = UNIX_EPOCH + Duration::from_secs(T0);
        let mut d = JumpDetector::new(m0, w0);
        let s = Duration::from_secs;
        assert_eq!(d.tick(m0 + s(1), w0 + s(1)), None);
        assert_eq!(d.tick(m0 + s(3), w0 + s(4)), None, "a late tick is no jump");
        assert_eq!(
            d.tick(m0 + s(4), w0 + s(4 + 3 * H)),
            Some(ClockJump::Forward(s(3 * H - 1)))
        );
        let w = w0 + s(4 + 3 * H);
        assert_eq!(
            d.tick(m0 + s(5), w - s(60)),
            Some(ClockJump::Backward(s(61)))
        );
        // The process stopped (SIGSTOP) for a minute: both clocks moved; no jump.
        assert_eq!(d.tick(m0 + s(65), w + s(0)), None);
        // The wall clock stood still while the monotonic one ran: a step back.
        assert_eq!(
            d.tick(m0 + s(95), w + s(1)),
            Some(ClockJump::Backward(s(29)))
        );
    }

    #[test]
    fn cache_entry_is_never_served_past_its_expires() {
        let m0 = Instant::now();
        let e = Expiring::new("desc", T0 + 100, m0);
        let age = Duration::from_secs(600);
        assert_eq!(e.fresh(T0 + 99, m0, age), Some(&"desc"));
        // The wall clock says expired although the cache entry is young.
        assert_eq!(e.fresh(T0 + 100, m0, age), None);
        assert!(e.expired(T0 + 100));
        // Older than the refetch age, though still valid.
        assert_eq!(e.fresh(T0, m0 + age, age), None);
        assert_eq!((e.expires(), e.fetched()), (T0 + 100, m0));
    }

    #[test]
    fn backoff_doubles_with_jitter_within_half_of_each_step_and_resets() {
        let (first, max) = (Duration::from_millis(500), Duration::from_secs(30));
        let mut b = Backoff::new(first, max);
        let mut distinct = std::collections::HashSet::new();
        for round in 0..20 {
            let mut step = first;
            for _ in 0..12 {
                let d = b.next_delay();
                assert!(
                    d >= step / 2 && d <= step,
                    "{d:?} outside [{:?}, {step:?}]",
                    step / 2
                );
                distinct.insert(d);
                step = (step * 2).min(max);
            }
            assert_eq!(step, max, "round {round}: the schedule reached its cap");
            b.reset();
        }
        assert!(
            distinct.len() > 100,
            "jitter draws different delays: {}",
            distinct.len()
        );
    }
}
