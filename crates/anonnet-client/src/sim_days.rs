//! Thirty simulated days on one driven clock (§15, issue 18): a hidden service with a
//! `.dark` name, a relay that is its HSDir and DHT node, and clients, run through the real
//! decision cores — the publishers' [`Schedule`]s with [`DESCRIPTOR_REFRESH`] and
//! [`NAME_REFRESH`], the relay's [`anonnet_relay::DESCRIPTOR_REFRESH`], the DHT store
//! ([`Storage`], which drops expired records), the client's caches ([`HsCache`]) and the
//! clock-jump detector — while the wall clock jumps by hours at random (suspends) and
//! steps back by minutes (NTP). At every check (every 5 simulated minutes and right after
//! each jump) a new client must find a valid relay descriptor, open the service's
//! descriptor and resolve its name, and the running client's caches must serve nothing
//! past its `expires`.
//!
//! Sans-IO: no circuits, no tokio; the network between the nodes is a function call, and
//! each node's tokio shell is modelled by when it looks at its core (the publishers at the
//! [`Schedule::wait`] they are given, on a detected jump, and every 5 s for a new
//! placement; the relay every second). A new client's lookup in the second between a
//! jump and the service's republication is not modelled (the shell needs that second to
//! notice the jump and a few more to build a circuit).
//!
//! The same run with the old rule (republish on monotonic intervals) must fail: that is
//! what the test would catch.

use std::collections::HashMap;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anonnet_clock::{Clock, ClockDriver, JumpDetector, Published, Schedule};
use anonnet_crypto::dark::{dark_key, make_dark_record, verify_name_record, DarkName};
use anonnet_crypto::hs::{
    descriptor_index, periods_to_publish, seal_descriptor, time_period, HsAddress, ServiceKey,
};
use anonnet_crypto::{sign_descriptor, verify_descriptor, IdentityKey, NodeId};
use anonnet_dht::storage::{Storage, StorageLimits};
use anonnet_wire::dht::{Record, RecordKind};
use anonnet_wire::hs::HsDescriptorBody;
use anonnet_wire::{HandshakeSet, RelayDescriptor, SignedDescriptor};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::host::{DESCRIPTOR_REFRESH, DESCRIPTOR_RETRY, NAME_REFRESH, NAME_STORE_RETRY};
use crate::hs::{best_descriptor, descriptor_key, periods_to_fetch, HsCache, Revised};

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;
/// Monotonic time simulated.
const SIM_DAYS: u64 = 30;
/// Where the wall clock starts (2027-01-15).
const T0: u64 = 1_800_000_000;
/// A client looks the service up this often (seconds), and right after each jump.
const CHECK_EVERY: u64 = 300;
/// How often the service's shell looks for a new placement (`PLACEMENT_CHECK`).
const PLACEMENT_CHECK_SECS: u64 = 5;
/// Proof of work on the simulated `.dark` records: the network's 22 bits take about a
/// second per record, and a month makes about a hundred.
const NAME_POW_BITS: u32 = 8;

/// How the publishers decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// §15: wall-clock deadlines, looked at within a minute and at once after a jump.
    Deadlines,
    /// Before §15: republish on monotonic intervals (1 h, 12 h, the relay 1 h).
    MonotonicIntervals,
}

/// One publisher: the [`Schedule`] (or the old interval) and when its shell wakes.
struct Publisher {
    schedule: Schedule,
    /// A change or a failure asks for a publication (what `Schedule` keeps itself, for
    /// the old rule).
    wanted: bool,
    last_mono: Option<Instant>,
    interval: Duration,
    wake_at: Instant,
}

impl Publisher {
    fn new(schedule: Schedule, interval: Duration, now: Instant) -> Publisher {
        Publisher {
            schedule,
            wanted: true,
            last_mono: None,
            interval,
            wake_at: now,
        }
    }

    fn want(&mut self, mono: Instant) {
        self.schedule.want();
        self.wanted = true;
        self.wake_at = mono;
    }

    fn due(&self, policy: Policy, now: u64, mono: Instant) -> bool {
        match policy {
            Policy::Deadlines => self.schedule.due(now, mono),
            Policy::MonotonicIntervals => {
                self.wanted
                    || self
                        .last_mono
                        .is_none_or(|t| mono.saturating_duration_since(t) >= self.interval)
            }
        }
    }

    /// Record the outcome of a publication and set the next wake.
    fn done(&mut self, policy: Policy, outcome: Option<Published>, retry: Duration, mono: Instant) {
        match outcome {
            Some(p) => {
                self.schedule.published(p);
                self.wanted = false;
                self.last_mono = Some(mono);
                self.wake_at = match policy {
                    Policy::Deadlines => mono + self.schedule.wait(p.published, mono),
                    Policy::MonotonicIntervals => mono + self.interval,
                };
            }
            None => {
                self.schedule.failed();
                self.wanted = true;
                self.wake_at = mono + retry;
            }
        }
    }
}

/// What a run saw.
#[derive(Debug, Default)]
struct Outcome {
    checks: u64,
    failures: Vec<String>,
    jumps: u32,
    wall_gained: u64,
    descriptor_publications: u32,
    name_registrations: u32,
    relay_refreshes: u32,
    cache_hits: u64,
    periods: std::collections::BTreeSet<u64>,
}

struct World {
    storage: Storage,
    service: ServiceKey,
    address: HsAddress,
    owner: IdentityKey,
    name: DarkName,
    relay: IdentityKey,
    relay_descriptor: SignedDescriptor,
    revision: u64,
    running_client: HsCache,
    out: Outcome,
}

/// The simulated service's last relay, as the store sees it.
const STORING_PEER: NodeId = NodeId([0x5e; 32]);

impl World {
    fn new(clock: Clock) -> World {
        let service = ServiceKey::from_seed(&[0x61; 32]);
        let address = service.address();
        let mut storage = Storage::new(StorageLimits::default());
        storage.set_name_pow_bits(NAME_POW_BITS);
        let relay = IdentityKey::from_seed(&[0x72; 32]);
        let now = clock.unix_now();
        let relay_descriptor = relay_descriptor(&relay, now);
        World {
            storage,
            service,
            address,
            owner: IdentityKey::from_seed(&[0x41; 32]),
            name: DarkName::parse("demo").unwrap(),
            relay,
            relay_descriptor,
            revision: 0,
            running_client: HsCache::new(None, HashMap::new()).with_name_pow_bits(NAME_POW_BITS),
            out: Outcome::default(),
        }
    }

    /// The service's `publish_once`: seal for every period to publish at `now` and store.
    fn publish_descriptor(&mut self, now: u64) -> bool {
        self.revision = self.revision.max(now * 1000) + 1;
        let body = HsDescriptorBody {
            pow: None,
            intro_points: Vec::new(),
        };
        let mut stored = 0;
        for period in periods_to_publish(now) {
            let d = seal_descriptor(
                &self.service,
                period,
                self.revision,
                DESCRIPTOR_REFRESH.expires_at(now),
                &body,
            )
            .unwrap();
            let key = descriptor_index(&d.blinded_key, period);
            let record = Record {
                kind: RecordKind::HsDescriptor,
                body: d.encode().unwrap(),
            };
            if self.storage.store(STORING_PEER, key, record, now).is_ok() {
                stored += 1;
            }
        }
        self.out.descriptor_publications += 1;
        stored > 0
    }

    /// The service's `register_name` (no authorities): until when the stored record is
    /// valid, or `None` when the store refused it.
    fn register_name(&mut self, now: u64) -> Option<u64> {
        let record = make_dark_record(
            &self.owner,
            &self.name,
            &self.address,
            now,
            NAME_REFRESH.expires_at(now),
            NAME_POW_BITS,
        );
        let valid_until = verify_name_record(&record, now, NAME_POW_BITS, None)
            .unwrap()
            .expires;
        let stored = Record {
            kind: RecordKind::DarkName,
            body: record.encode().unwrap(),
        };
        self.out.name_registrations += 1;
        self.storage
            .store(STORING_PEER, dark_key(&self.name), stored, now)
            .ok()
            .map(|()| valid_until)
    }

    /// What a client fetching `address`'s descriptor now gets (as `hs_descriptor`).
    fn fetch_descriptor(&self, now: u64) -> Option<(Revised, u64)> {
        periods_to_fetch(now).into_iter().find_map(|period| {
            let key = descriptor_key(&self.address, period)?;
            let records: Vec<Bytes> = self
                .storage
                .get(&key, now)
                .into_iter()
                .map(|r| Bytes::from(r.body))
                .collect();
            best_descriptor(&self.address, &records, now)
        })
    }

    fn name_records(&self, now: u64) -> Vec<Bytes> {
        self.storage
            .get(&dark_key(&self.name), now)
            .into_iter()
            .map(|r| Bytes::from(r.body))
            .collect()
    }

    /// A new client and the running one look up the service and its name now.
    fn check(&mut self, now: u64, mono: Instant, why: &str) {
        self.out.checks += 1;
        self.out.periods.insert(time_period(now));
        let at = format!(
            "day {:.2} (wall +{} s, {why})",
            (now - T0) as f64 / DAY as f64,
            now - T0
        );
        if let Err(e) = verify_descriptor(&self.relay_descriptor, now) {
            self.out
                .failures
                .push(format!("{at}: relay descriptor: {e}"));
        }
        // A new client: empty caches.
        if self.fetch_descriptor(now).is_none() {
            self.out
                .failures
                .push(format!("{at}: new client: no descriptor"));
        }
        let fresh = HsCache::new(None, HashMap::new()).with_name_pow_bits(NAME_POW_BITS);
        match fresh.choose_name(&self.name, &self.name_records(now), now, mono, None) {
            Ok(a) if a == self.address => {}
            other => self
                .out
                .failures
                .push(format!("{at}: new client: name: {other:?}")),
        }
        // The running client: its caches first, never past `expires`.
        let cache = &self.running_client;
        match cache.descriptor(&self.address, now, mono) {
            Some(_) => {
                self.out.cache_hits += 1;
                let expires = cache.descriptor_expires(&self.address);
                if expires.is_none_or(|e| e <= now) {
                    self.out.failures.push(format!(
                        "{at}: cache served a descriptor expired at {expires:?}"
                    ));
                }
            }
            None => match self.fetch_descriptor(now) {
                Some((d, expires)) => cache.put_descriptor(self.address, d, expires, mono),
                None => self
                    .out
                    .failures
                    .push(format!("{at}: running client: no descriptor")),
            },
        }
        match cache.known_name(&self.name, now, mono) {
            Some(a) => {
                self.out.cache_hits += 1;
                let expires = cache.name_expires(&self.name);
                if a != self.address || expires.is_none_or(|e| e <= now) {
                    self.out
                        .failures
                        .push(format!("{at}: cache served a name expired at {expires:?}"));
                }
            }
            None => {
                let records = self.name_records(now);
                if cache
                    .choose_name(&self.name, &records, now, mono, None)
                    .ok()
                    != Some(self.address)
                {
                    self.out
                        .failures
                        .push(format!("{at}: running client: name not resolved"));
                }
            }
        }
    }
}

fn relay_descriptor(identity: &IdentityKey, now: u64) -> SignedDescriptor {
    let d = RelayDescriptor {
        identity: identity.public(),
        onion_key: [9; 32],
        handshakes: HandshakeSet::ALL,
        addresses: vec!["127.0.0.1:9001".parse().unwrap()],
        flags: 0,
        exit_ports: Vec::new(),
        bandwidth: 1000,
        published: now,
        expires: anonnet_relay::DESCRIPTOR_REFRESH.expires_at(now),
    };
    sign_descriptor(identity, &d).unwrap()
}

/// Random clock jumps: in about one simulated hour in eight, at a random second, the wall
/// clock jumps forward by 1 to 12 hours (a suspend: the monotonic clock stands still) or,
/// one time in four, back by 1 to 50 minutes (an NTP step; within the hour of skew the
/// records' `published` checks allow).
fn jump_plan(seed: u64) -> Vec<(u64, i64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut plan = Vec::new();
    for hour in 0..SIM_DAYS * 24 {
        if rng.random_range(0..8) != 0 {
            continue;
        }
        let at = hour * HOUR + rng.random_range(0..HOUR);
        let by = if rng.random_range(0..4) == 0 {
            -(rng.random_range(60..=50 * 60) as i64)
        } else {
            rng.random_range(HOUR..=12 * HOUR) as i64
        };
        plan.push((at, by));
    }
    plan
}

fn run(policy: Policy, seed: u64) -> Outcome {
    let (clock, driver): (Clock, ClockDriver) = Clock::driven(UNIX_EPOCH + Duration::from_secs(T0));
    let mut world = World::new(clock.clone());
    let m0 = clock.mono_now();
    let mut detector = JumpDetector::new(m0, clock.wall_now());
    let mut descriptors = Publisher::new(
        Schedule::new(DESCRIPTOR_REFRESH),
        Duration::from_secs(HOUR),
        m0,
    );
    let mut names = Publisher::new(
        Schedule::new(NAME_REFRESH),
        Duration::from_secs(12 * HOUR),
        m0,
    );
    let mut relay = Publisher::new(
        Schedule::new(anonnet_relay::DESCRIPTOR_REFRESH),
        Duration::from_secs(HOUR),
        m0,
    );
    let t = clock.unix_now();
    relay.done(
        policy,
        Some(anonnet_relay::DESCRIPTOR_REFRESH.published_now(t, m0)),
        Duration::ZERO,
        m0,
    );
    let mut placed: Vec<u64> = Vec::new();
    let plan = jump_plan(seed);
    let mut next_jump = plan.iter().peekable();
    for sec in 1..=SIM_DAYS * DAY {
        driver.advance(Duration::from_secs(1));
        if let Some(&(_, by)) = next_jump.next_if(|(at, _)| *at == sec) {
            if by > 0 {
                driver.jump_wall_forward(Duration::from_secs(by.unsigned_abs()));
                world.out.wall_gained += by.unsigned_abs();
            } else {
                driver.jump_wall_back(Duration::from_secs(by.unsigned_abs()));
            }
            world.out.jumps += 1;
        }
        let (now, mono) = (clock.unix_now(), clock.mono_now());
        // The presence task's tick (every second).
        let jumped = detector.tick(mono, clock.wall_now()).is_some();
        let react = jumped && policy == Policy::Deadlines;

        // The relay's maintenance tick (every second).
        if relay.due(policy, now, mono) {
            world.relay_descriptor = relay_descriptor(&world.relay, now);
            world.out.relay_refreshes += 1;
            let p = anonnet_relay::DESCRIPTOR_REFRESH.published_now(now, mono);
            relay.done(policy, Some(p), Duration::ZERO, mono);
        }

        // The service's descriptor publisher: wakes at its deadline, on a jump, and for a
        // new placement (checked every PLACEMENT_CHECK).
        if sec % PLACEMENT_CHECK_SECS == 0 && periods_to_publish(now) != placed {
            descriptors.want(mono);
        }
        if mono >= descriptors.wake_at || react {
            if descriptors.due(policy, now, mono) {
                placed = periods_to_publish(now);
                let ok = world.publish_descriptor(now);
                let p = ok.then(|| DESCRIPTOR_REFRESH.published_now(now, mono));
                descriptors.done(policy, p, DESCRIPTOR_RETRY, mono);
            } else if policy == Policy::Deadlines {
                descriptors.wake_at = mono + descriptors.schedule.wait(now, mono);
            }
        }

        // The name publisher: at its deadline and on a jump.
        if mono >= names.wake_at || react {
            if names.due(policy, now, mono) {
                let p = world.register_name(now).map(|expires| Published {
                    published: now,
                    expires,
                    at: mono,
                });
                names.done(policy, p, NAME_STORE_RETRY, mono);
            } else if policy == Policy::Deadlines {
                names.wake_at = mono + names.schedule.wait(now, mono);
            }
        }

        if sec % CHECK_EVERY == 0 {
            world.check(now, mono, "periodic");
        } else if jumped {
            world.check(now, mono, "right after a jump");
        }
    }
    world.out
}

#[test]
fn service_and_name_stay_reachable_through_30_days_of_clock_jumps() {
    let started = Instant::now();
    let out = run(Policy::Deadlines, 18);
    eprintln!(
        "30 simulated days in {:?}: {} checks, {} jumps (wall clock +{:.1} days beyond the \
         monotonic one), {} periods, {} descriptor publications, {} name registrations, \
         {} relay descriptor refreshes, {} cache hits",
        started.elapsed(),
        out.checks,
        out.jumps,
        out.wall_gained as f64 / DAY as f64,
        out.periods.len(),
        out.descriptor_publications,
        out.name_registrations,
        out.relay_refreshes,
        out.cache_hits,
    );
    assert!(
        out.failures.is_empty(),
        "{} failed checks, the first: {:#?}",
        out.failures.len(),
        &out.failures[..out.failures.len().min(10)]
    );
    // The run crossed what it must have crossed.
    assert!(out.checks >= SIM_DAYS * DAY / CHECK_EVERY);
    assert!(out.jumps >= 40, "{} jumps", out.jumps);
    assert!(out.wall_gained > 5 * DAY);
    assert!(
        out.periods.len() as u64 > SIM_DAYS + 5,
        "{} periods",
        out.periods.len()
    );
    assert!(out.cache_hits > 1000, "{} cache hits", out.cache_hits);
    // Deadlines, not a busy loop: about hourly, plus one per jump and per new period.
    let hours = (SIM_DAYS * 24) as u32;
    assert!(
        (hours..hours * 3 / 2).contains(&out.descriptor_publications),
        "{} descriptor publications",
        out.descriptor_publications
    );
    assert!(
        (hours..hours * 3 / 2).contains(&out.relay_refreshes),
        "{} relay descriptor refreshes",
        out.relay_refreshes
    );
    assert!(
        (60..200).contains(&out.name_registrations),
        "{} name registrations",
        out.name_registrations
    );
}

#[test]
fn monotonic_republication_loses_the_service_after_a_suspend() {
    // The rule before §15, through the same month: new clients find no descriptor
    // after a suspend longer than the descriptor's remaining validity.
    let out = run(Policy::MonotonicIntervals, 18);
    let lost = out
        .failures
        .iter()
        .filter(|f| f.contains("no descriptor"))
        .count();
    eprintln!(
        "monotonic intervals: {lost} of {} checks found no descriptor",
        out.checks
    );
    assert!(lost > 0, "{out:?}");
}
