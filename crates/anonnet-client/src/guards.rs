//! The persistent guard set and relay scoring (sans-IO apart from reading and writing the
//! guard file). Spec: `docs/protocol.md` §9.1.
//!
//! A client picks a few guards once and keeps them in `guards.json` in its state
//! directory, so that the first hop of every circuit comes from the same small set across
//! restarts (a client that picked a fresh first hop per circuit would soon meet a hostile
//! one). Relays that keep failing are avoided for a while, with exponential backoff.
//!
//! Guards have lifetimes, after Tor's guard-spec (prop 271): each guard is rotated out at
//! a random time between [`GuardLifetimes::lifetime`] and 4/3 of it after it was chosen,
//! and dropped once the consensus has not listed it for
//! [`GuardLifetimes::drop_unlisted`]. Only guards with the consensus's Guard flag are
//! chosen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anonnet_crypto::NodeId;
use rand::seq::IndexedRandom;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::directory::Directory;

/// File name of the guard set in the state directory.
pub const GUARD_FILE: &str = "guards.json";
/// Guards kept usable in the set.
pub const NUM_GUARDS: usize = 3;
/// Most guards the set holds, however many of them fail or leave the directory (Tor's
/// sampled guard set has a bound of the same kind). When it is full, a guard missing from
/// the directory (the oldest chosen first) makes room for a new one; a guard that is only
/// avoided for its score is kept, and is used again when no other path exists.
pub const MAX_GUARDS: usize = 20;
/// Failures in a row after which a relay is avoided.
pub const FAILURES_BEFORE_AVOIDING: u32 = 2;
/// First avoidance period; doubles with each further failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(30);
/// Longest avoidance period.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct GuardRecord {
    /// NodeId, 64 hex characters.
    node_id: String,
    /// When it was chosen (Unix seconds).
    added: u64,
    /// When it is rotated out (Unix seconds); files written before lifetimes lack it and
    /// get one drawn at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<u64>,
    /// Since when the directory has not listed it (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unlisted_since: Option<u64>,
}

/// How long guards are kept (Tor's guard-spec, prop 271).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardLifetimes {
    /// Shortest time a guard is kept after it was chosen (seconds); each guard's lifetime
    /// is drawn uniformly from `lifetime..=lifetime * 4 / 3`. Default 90 days.
    pub lifetime: u64,
    /// A guard the directory has not listed for this long is dropped (seconds). Default
    /// 20 days.
    pub drop_unlisted: u64,
}

impl Default for GuardLifetimes {
    fn default() -> Self {
        GuardLifetimes {
            lifetime: 90 * 86_400,
            drop_unlisted: 20 * 86_400,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Guard {
    id: NodeId,
    added: u64,
    expires: u64,
    unlisted_since: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct GuardFile {
    version: u8,
    guards: Vec<GuardRecord>,
}

/// The guard set, optionally backed by a file.
#[derive(Debug, Default)]
pub struct GuardSet {
    path: Option<PathBuf>,
    guards: Vec<Guard>,
    lifetimes: GuardLifetimes,
}

fn draw_expiry(added: u64, l: &GuardLifetimes, rng: &mut impl Rng) -> u64 {
    let extra = rng.random_range(0..=l.lifetime / 3);
    added.saturating_add(l.lifetime).saturating_add(extra)
}

fn parse_node_id(hex_id: &str) -> Option<NodeId> {
    let bytes = hex::decode(hex_id).ok()?;
    Some(NodeId(bytes.try_into().ok()?))
}

impl GuardSet {
    /// Load the set from `dir/guards.json` (none yet: empty). An unreadable or corrupt file
    /// is moved aside to `guards.json.bad` with a warning ([`anonnet_state::load`]) and the
    /// set starts empty; a file with some entries that are not guards is moved aside too,
    /// the readable guards kept and saved.
    pub fn load(dir: Option<&Path>) -> GuardSet {
        GuardSet::load_with(dir, GuardLifetimes::default())
    }

    /// [`GuardSet::load`] with these lifetimes.
    pub fn load_with(dir: Option<&Path>, lifetimes: GuardLifetimes) -> GuardSet {
        let Some(dir) = dir else {
            return GuardSet {
                lifetimes,
                ..GuardSet::default()
            };
        };
        let path = dir.join(GUARD_FILE);
        let mut rng = rand::rng();
        let Some(file) = anonnet_state::load(&path, |b| match serde_json::from_slice(b) {
            Ok(GuardFile { version: 1, guards }) => Ok(guards),
            Ok(f) => Err(format!("has unknown version {}", f.version)),
            Err(e) => Err(format!("is not a guard file: {e}")),
        }) else {
            return GuardSet {
                path: Some(path),
                guards: Vec::new(),
                lifetimes,
            };
        };
        let guards: Vec<Guard> = file
            .iter()
            .filter_map(|g| {
                Some(Guard {
                    id: parse_node_id(&g.node_id)?,
                    added: g.added,
                    expires: g
                        .expires
                        .unwrap_or_else(|| draw_expiry(g.added, &lifetimes, &mut rng)),
                    unlisted_since: g.unlisted_since,
                })
            })
            .take(MAX_GUARDS)
            .collect();
        let set = GuardSet {
            path: Some(path),
            guards,
            lifetimes,
        };
        let readable = file.len()
            - file
                .iter()
                .filter(|g| parse_node_id(&g.node_id).is_none())
                .count();
        if readable < file.len() {
            // Keep the damaged file for its owner; save only what was read.
            if let Some(path) = &set.path {
                anonnet_state::set_aside(
                    path,
                    &format!("has {} entries that are not guards", file.len() - readable),
                    &format!("{} guards kept", set.guards.len()),
                );
            }
            if let Err(e) = set.save() {
                warn!("cannot save {}: {e}", GUARD_FILE);
            }
        }
        set
    }

    /// The guards, in the order they were chosen.
    pub fn ids(&self) -> Vec<NodeId> {
        self.guards.iter().map(|g| g.id).collect()
    }

    /// Drop guards past their lifetime and guards `dir` has not listed for
    /// [`GuardLifetimes::drop_unlisted`]; note which are unlisted now. An empty directory
    /// (no consensus) says nothing about any guard. Returns true when the set changed.
    fn expire(&mut self, dir: &Directory, now: u64) -> bool {
        if dir.is_empty() {
            return false;
        }
        let mut changed = false;
        for g in &mut self.guards {
            let listed = dir.get(&g.id).is_some();
            match (listed, g.unlisted_since) {
                (true, Some(_)) => {
                    g.unlisted_since = None;
                    changed = true;
                }
                (false, None) => {
                    g.unlisted_since = Some(now);
                    changed = true;
                }
                _ => {}
            }
        }
        let drop_after = self.lifetimes.drop_unlisted;
        let before = self.guards.len();
        self.guards.retain(|g| {
            let rotated = g.expires <= now;
            let gone = g
                .unlisted_since
                .is_some_and(|t| now.saturating_sub(t) >= drop_after);
            if rotated || gone {
                tracing::info!(
                    guard = %g.id.short(),
                    reason = if rotated { "lifetime over" } else { "unlisted too long" },
                    "guard leaves the guard set"
                );
            }
            !rotated && !gone
        });
        changed || self.guards.len() != before
    }

    /// Drop expired guards (lifetime over, or unlisted too long), then make sure
    /// [`NUM_GUARDS`] guards of the set are in `dir` and not in `avoid`, adding
    /// guard-flagged relays (weighted by bandwidth) as needed, at most [`MAX_GUARDS`] in
    /// all (a full set first drops its oldest guard missing from `dir`, else stops adding).
    /// A guard missing from `dir` for less than `grace` seconds (a relay restarting is
    /// left out of a consensus or two while the authorities test it again) keeps its place
    /// as long as another guard of the set is usable: it is not replaced, only skipped by
    /// path selection until it is listed again. Returns true when the set changed (then
    /// [`GuardSet::save`] it).
    pub fn ensure(
        &mut self,
        dir: &Directory,
        avoid: &[NodeId],
        now_unix: u64,
        grace: u64,
        rng: &mut impl Rng,
    ) -> bool {
        let usable = |id: &NodeId| dir.get(id).is_some() && !avoid.contains(id);
        let mut changed = self.expire(dir, now_unix);
        let any_usable = self.guards.iter().any(|g| usable(&g.id));
        let holds_place = |g: &Guard| {
            usable(&g.id)
                || (any_usable
                    && !avoid.contains(&g.id)
                    && g.unlisted_since
                        .is_some_and(|t| now_unix.saturating_sub(t) < grace))
        };
        while self.guards.iter().filter(|g| holds_place(g)).count() < NUM_GUARDS {
            let candidates: Vec<_> = dir
                .guard_candidates()
                .into_iter()
                .filter(|r| {
                    !avoid.contains(&r.node_id) && !self.guards.iter().any(|g| g.id == r.node_id)
                })
                .collect();
            let Ok(pick) =
                candidates.choose_weighted(rng, |r| crate::directory::bandwidth_weight(r))
            else {
                break;
            };
            if self.guards.len() >= MAX_GUARDS {
                let unlisted = self
                    .guards
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| dir.get(&g.id).is_none())
                    .min_by_key(|(_, g)| g.added)
                    .map(|(i, _)| i);
                let Some(i) = unlisted else { break };
                self.guards.remove(i);
            }
            let expires = draw_expiry(now_unix, &self.lifetimes, rng);
            self.guards.push(Guard {
                id: pick.node_id,
                added: now_unix,
                expires,
                unlisted_since: None,
            });
            changed = true;
        }
        changed
    }

    /// Write the set to its file ([`anonnet_state::write_atomically`]: fsynced, renamed).
    ///
    /// # Errors
    /// The I/O error, when the state directory is not writable.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = GuardFile {
            version: 1,
            guards: self
                .guards
                .iter()
                .map(|g| GuardRecord {
                    node_id: g.id.to_hex(),
                    added: g.added,
                    expires: Some(g.expires),
                    unlisted_since: g.unlisted_since,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        anonnet_state::write_atomically(path, &json)
    }
}

#[derive(Debug, Clone, Copy)]
struct Score {
    failures: u32,
    avoid_until: Option<Instant>,
    /// It failed again once a backoff was over (not only in a retry forced while every
    /// usable relay was avoided).
    failed_after_backoff: bool,
}

/// Circuit-build successes and failures per relay; a relay that failed
/// [`FAILURES_BEFORE_AVOIDING`] times in a row is avoided for [`FIRST_BACKOFF`], doubling
/// with each further failure up to [`MAX_BACKOFF`]. A success clears it. Bounded: relays
/// not in the directory are forgotten by [`RelayScores::retain`].
#[derive(Debug, Default)]
pub struct RelayScores {
    scores: HashMap<NodeId, Score>,
}

/// A relay being avoided, for the status.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AvoidedRelay {
    /// NodeId (hex).
    pub node_id: String,
    /// Failures in a row.
    pub failures: u32,
    /// Seconds until it is tried again.
    pub retry_in_secs: f64,
}

impl RelayScores {
    /// A circuit through `id` failed because of it.
    pub fn failure(&mut self, id: NodeId, now: Instant) {
        let s = self.scores.entry(id).or_insert(Score {
            failures: 0,
            avoid_until: None,
            failed_after_backoff: false,
        });
        if s.avoid_until.is_some_and(|t| t <= now) {
            s.failed_after_backoff = true;
        }
        s.failures = s.failures.saturating_add(1);
        if s.failures >= FAILURES_BEFORE_AVOIDING {
            let doublings = (s.failures - FAILURES_BEFORE_AVOIDING).min(16);
            let backoff = FIRST_BACKOFF
                .saturating_mul(1u32 << doublings)
                .min(MAX_BACKOFF);
            s.avoid_until = Some(now + backoff);
        }
    }

    /// `id` is known to be down (its link died): avoid it at once, as if it had failed
    /// [`FAILURES_BEFORE_AVOIDING`] times.
    pub fn down(&mut self, id: NodeId, now: Instant) {
        while self
            .scores
            .get(&id)
            .is_none_or(|s| s.failures < FAILURES_BEFORE_AVOIDING)
        {
            self.failure(id, now);
        }
    }

    /// A circuit through `id` was built.
    pub fn success(&mut self, id: NodeId) {
        self.scores.remove(&id);
    }

    /// Relays to avoid now.
    pub fn avoided(&self, now: Instant) -> Vec<NodeId> {
        self.scores
            .iter()
            .filter(|(_, s)| s.avoid_until.is_some_and(|t| t > now))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Relays to avoid now that also failed again once a backoff was over: only these make
    /// the guard set take new guards (§9.1). A guard whose link just died, or that failed
    /// twice, is avoided but not yet replaced, and so is one that failed again only in a
    /// retry made during its backoff (when every guard is avoided, builds use them anyway):
    /// when every relay restarts on a new port, the next consensus (which clears the
    /// scores of relays that moved) comes within the backoff.
    pub fn avoided_after_retry(&self, now: Instant) -> Vec<NodeId> {
        self.scores
            .iter()
            .filter(|(_, s)| s.failed_after_backoff && s.avoid_until.is_some_and(|t| t > now))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The avoided relays with their failure counts, for the status.
    pub fn report(&self, now: Instant) -> Vec<AvoidedRelay> {
        let mut v: Vec<AvoidedRelay> = self
            .scores
            .iter()
            .filter_map(|(id, s)| {
                let until = s.avoid_until.filter(|t| *t > now)?;
                Some(AvoidedRelay {
                    node_id: id.to_hex(),
                    failures: s.failures,
                    retry_in_secs: (until - now).as_secs_f64(),
                })
            })
            .collect();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    /// Forget relays `keep` says no to (gone from the directory).
    pub fn retain(&mut self, keep: impl Fn(&NodeId) -> bool) {
        self.scores.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    #[test]
    fn a_relay_that_keeps_failing_is_avoided_with_backoff() {
        let mut s = RelayScores::default();
        let t0 = Instant::now();
        s.failure(id(1), t0);
        assert!(s.avoided(t0).is_empty(), "one failure is not a pattern");
        s.failure(id(1), t0);
        assert_eq!(s.avoided(t0), vec![id(1)]);
        assert!(s.avoided(t0 + FIRST_BACKOFF).is_empty());
        s.failure(id(1), t0);
        assert_eq!(
            s.avoided(t0 + FIRST_BACKOFF),
            vec![id(1)],
            "backoff doubled"
        );
        assert!(s.avoided(t0 + FIRST_BACKOFF * 2).is_empty());
        for _ in 0..40 {
            s.failure(id(1), t0);
        }
        assert!(s.avoided(t0 + MAX_BACKOFF).is_empty(), "capped");
        s.success(id(1));
        assert!(s.avoided(t0).is_empty());
        assert!(s.report(t0).is_empty());
    }

    #[test]
    fn a_guard_is_replaced_only_after_failing_again_after_its_backoff() {
        let mut s = RelayScores::default();
        let t0 = Instant::now();
        // Its link died: avoided at once, not yet a reason to take another guard.
        s.down(id(1), t0);
        assert_eq!(s.avoided(t0), vec![id(1)]);
        assert!(s.avoided_after_retry(t0).is_empty());
        // Retries during the backoff (every guard avoided, so they are used anyway) that
        // fail are not that reason either, however many.
        for secs in [1, 3, 10] {
            s.failure(id(1), t0 + Duration::from_secs(secs));
            assert!(s
                .avoided_after_retry(t0 + Duration::from_secs(secs))
                .is_empty());
        }
        assert_eq!(s.avoided(t0 + FIRST_BACKOFF), vec![id(1)]);
        // Tried again after the backoff and failed again: now it is.
        let t0 = t0 + FIRST_BACKOFF * 64;
        s.failure(id(1), t0 + FIRST_BACKOFF);
        assert_eq!(s.avoided_after_retry(t0 + FIRST_BACKOFF), vec![id(1)]);
        // A relay that moved (its score cleared) is neither.
        s.success(id(1));
        assert!(s.avoided_after_retry(t0 + FIRST_BACKOFF).is_empty());
    }

    /// A signed descriptor of a GUARD relay with identity seed `seed`.
    fn guard_relay(seed: u8) -> anonnet_wire::SignedDescriptor {
        crate::directory::tests::relay(seed, anonnet_wire::descriptor::FLAG_GUARD, Vec::new())
    }

    #[test]
    fn guard_set_grows_only_to_its_bound_and_keeps_its_order() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut dir = Directory::new();
        let ids: Vec<NodeId> = (1..=40)
            .map(|i| dir.insert(&guard_relay(i), 1000).unwrap())
            .collect();
        let mut g = GuardSet::default();
        assert!(g.ensure(&dir, &[], 1, 0, &mut rng));
        let first = g.ids();
        assert_eq!(first.len(), NUM_GUARDS);
        assert!(!g.ensure(&dir, &[], 2, 0, &mut rng), "nothing to add");

        // Every guard keeps failing: each round avoids all of them, and the set grows to
        // MAX_GUARDS, never past it; the first guards stay first.
        for round in 0..30 {
            let avoid = g.ids();
            g.ensure(&dir, &avoid, 10 + round, 0, &mut rng);
            assert!(g.ids().len() <= MAX_GUARDS, "{}", g.ids().len());
        }
        assert_eq!(g.ids().len(), MAX_GUARDS);
        assert_eq!(g.ids()[..NUM_GUARDS], first[..]);
        assert!(
            !g.ensure(&dir, &g.ids(), 99, 0, &mut rng),
            "full: no more guards"
        );

        // A full set makes room by dropping its oldest guard missing from the directory.
        let mut smaller = Directory::new();
        for (i, id) in ids.iter().enumerate() {
            if *id != first[1] {
                smaller.insert(&guard_relay(i as u8 + 1), 1000).unwrap();
            }
        }
        let members = g.ids();
        let avoid: Vec<NodeId> = members
            .iter()
            .copied()
            .filter(|id| *id != first[0])
            .collect();
        assert!(g.ensure(&smaller, &avoid, 100, 0, &mut rng));
        let now = g.ids();
        assert_eq!(now.len(), MAX_GUARDS);
        assert!(!now.contains(&first[1]), "the unlisted guard made room");
        assert_eq!(now[0], first[0]);
        assert!(
            !members.contains(&now[MAX_GUARDS - 1]),
            "a new guard was added last"
        );
    }

    #[test]
    fn a_guard_left_out_of_a_consensus_keeps_its_place_within_the_grace() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut dir = Directory::new();
        let ids: Vec<NodeId> = (1..=10)
            .map(|i| dir.insert(&guard_relay(i), 1000).unwrap())
            .collect();
        let without = |gone: &[NodeId]| {
            let mut d = Directory::new();
            for (i, id) in (1..=10).zip(&ids) {
                if !gone.contains(id) {
                    d.insert(&guard_relay(i), 1000).unwrap();
                }
            }
            d
        };
        let mut g = GuardSet::default();
        g.ensure(&dir, &[], 100, 8, &mut rng);
        let first = g.ids();
        assert_eq!(first.len(), NUM_GUARDS);

        // One guard restarting: missing from the next consensus, not replaced within the
        // grace (8 s here), replaced once it is over.
        let smaller = without(&first[1..2]);
        g.ensure(&smaller, &[], 101, 8, &mut rng);
        assert_eq!(g.ids(), first, "kept its place");
        g.ensure(&smaller, &[], 108, 8, &mut rng);
        assert_eq!(g.ids(), first, "still within the grace");
        g.ensure(&smaller, &[], 109, 8, &mut rng);
        assert_eq!(g.ids().len(), NUM_GUARDS + 1, "replaced after the grace");
        assert_eq!(g.ids()[..NUM_GUARDS], first[..]);

        // Listed again within the grace: nothing changes, and its clock starts over.
        let mut g = GuardSet::default();
        g.ensure(&dir, &[], 100, 8, &mut rng);
        g.ensure(&smaller_of(&g, 1, &without), &[], 101, 8, &mut rng);
        g.ensure(&dir, &[], 105, 8, &mut rng);
        g.ensure(&smaller_of(&g, 1, &without), &[], 106, 8, &mut rng);
        g.ensure(&smaller_of(&g, 1, &without), &[], 113, 8, &mut rng);
        assert_eq!(g.ids().len(), NUM_GUARDS);

        // With no guard of the set usable, the grace does not hold: the client must be
        // able to build circuits.
        let mut g = GuardSet::default();
        g.ensure(&dir, &[], 100, 8, &mut rng);
        let first = g.ids();
        g.ensure(&without(&first), &[], 101, 8, &mut rng);
        assert_eq!(g.ids().len(), 2 * NUM_GUARDS, "three new guards at once");
        assert_eq!(g.ids()[..NUM_GUARDS], first[..]);
    }

    /// `dir` without the `i`-th guard of `g` (`without` builds it).
    fn smaller_of(g: &GuardSet, i: usize, without: &dyn Fn(&[NodeId]) -> Directory) -> Directory {
        without(&g.ids()[i..=i])
    }

    #[test]
    fn guards_rotate_after_their_lifetime_and_leave_when_unlisted_too_long() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut dir = Directory::new();
        for i in 1..=10 {
            dir.insert(&guard_relay(i), 1000).unwrap();
        }
        let l = GuardLifetimes {
            lifetime: 300,
            drop_unlisted: 100,
        };
        let mut g = GuardSet::load_with(None, l);
        assert!(g.ensure(&dir, &[], 1000, 0, &mut rng));
        let first = g.ids();
        // Within every lifetime nothing changes.
        assert!(!g.ensure(&dir, &[], 1299, 0, &mut rng));
        assert_eq!(g.ids(), first);
        // The first guard leaves the directory: noted, kept while under drop_unlisted.
        let mut smaller = Directory::new();
        for i in 1..=10u8 {
            let id = smaller.insert(&guard_relay(i), 1000).unwrap();
            if id == first[0] {
                smaller = {
                    let mut d = Directory::new();
                    for j in 1..=10u8 {
                        if j != i {
                            d.insert(&guard_relay(j), 1000).unwrap();
                        }
                    }
                    d
                };
                break;
            }
        }
        g.ensure(&smaller, &[], 1200, 0, &mut rng);
        assert!(g.ids().contains(&first[0]), "kept while unlisted briefly");
        g.ensure(&smaller, &[], 1300, 0, &mut rng);
        assert!(!g.ids().contains(&first[0]), "dropped after 100 s unlisted");
        // Past 4/3 of the lifetime every original guard has been rotated out.
        g.ensure(&dir, &[], 1000 + 401, 0, &mut rng);
        assert!(first.iter().all(|f| !g.ids().contains(f)), "{:?}", g.ids());
        assert_eq!(g.ids().len(), NUM_GUARDS);
        // An empty directory (no consensus) drops nothing.
        let before = g.ids();
        assert!(!g.ensure(&Directory::new(), &[], 99_999, 0, &mut rng));
        assert_eq!(g.ids(), before);
    }

    #[test]
    fn guard_file_round_trips_and_a_corrupt_one_is_set_aside() {
        let dir = std::env::temp_dir().join(format!("anonnet-guards-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut g = GuardSet::load(Some(&dir));
        assert!(g.ids().is_empty());
        g.guards = vec![
            Guard {
                id: id(1),
                added: 5,
                expires: 500,
                unlisted_since: Some(7),
            },
            Guard {
                id: id(2),
                added: 6,
                expires: 600,
                unlisted_since: None,
            },
        ];
        g.save().unwrap();
        let back = GuardSet::load(Some(&dir));
        assert_eq!(back.ids(), vec![id(1), id(2)]);
        assert_eq!(back.guards, g.guards);
        // A file from before lifetimes (no `expires`) loads with one drawn.
        std::fs::write(
            dir.join(GUARD_FILE),
            format!(
                r#"{{"version":1,"guards":[{{"node_id":"{}","added":1000}}]}}"#,
                id(3).to_hex()
            ),
        )
        .unwrap();
        let old = GuardSet::load(Some(&dir));
        let l = GuardLifetimes::default();
        assert!((1000 + l.lifetime..=1000 + l.lifetime * 4 / 3).contains(&old.guards[0].expires));
        std::fs::write(dir.join(GUARD_FILE), b"{not json").unwrap();
        assert!(GuardSet::load(Some(&dir)).ids().is_empty());
        assert_eq!(
            std::fs::read(dir.join("guards.json.bad")).unwrap(),
            b"{not json"
        );
        // One damaged entry: the file is set aside whole, the readable guard kept and saved.
        let mixed = format!(
            r#"{{"version":1,"guards":[{{"node_id":"zz","added":1}},{{"node_id":"{}","added":2,"expires":9}}]}}"#,
            id(4).to_hex()
        );
        std::fs::write(dir.join(GUARD_FILE), &mixed).unwrap();
        assert_eq!(GuardSet::load(Some(&dir)).ids(), vec![id(4)]);
        assert_eq!(
            std::fs::read(dir.join("guards.json.bad.1")).unwrap(),
            mixed.as_bytes()
        );
        assert_eq!(GuardSet::load(Some(&dir)).ids(), vec![id(4)]);
        assert!(!dir.join("guards.json.bad.2").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
