//! Vanguards-lite: the second hops of hidden-service circuits (sans-IO apart from reading
//! and writing the vanguard file). Spec: `docs/protocol.md` §9.4; after
//! Tor's proposal 333.
//!
//! Every circuit [`crate::Client::build_internal`] builds (descriptor fetches,
//! introductions, rendezvous, both at the client and at the service) takes its second hop
//! from a small set of relays kept for days, [`NUM_VANGUARDS`] of them, each for a lifetime
//! drawn uniformly from [`MIN_LIFETIME`]..=[`MAX_LIFETIME`]. An attacker who runs the far
//! end of such circuits (a rendezvous point, say) and a fraction `f` of the relays then
//! learns the guard only once one of its relays has become a vanguard, after about `1/f`
//! rotations of the set rather than `1/f` circuits.
//!
//! The set is kept in `vanguards.json` in the state directory (in memory only without
//! one). Its logic — choose, expire, replace, pick one for a circuit — takes the time
//! (Unix seconds) and a random number generator from the caller.

use std::path::{Path, PathBuf};

use anonnet_crypto::NodeId;
use rand::seq::{IndexedRandom, IteratorRandom};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::directory::Directory;

/// File name of the vanguard set in the state directory.
pub const VANGUARD_FILE: &str = "vanguards.json";
/// Vanguards in the set (prop 333: 4).
pub const NUM_VANGUARDS: usize = 4;
/// Shortest lifetime of a vanguard (seconds, 1 day).
pub const MIN_LIFETIME: u64 = 86_400;
/// Longest lifetime of a vanguard (seconds, 12 days).
pub const MAX_LIFETIME: u64 = 12 * 86_400;

/// One vanguard as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VanguardInfo {
    /// NodeId (hex, 64 characters).
    pub node_id: String,
    /// When it is replaced, unless it leaves the directory first (Unix seconds).
    pub expires: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Vanguard {
    id: NodeId,
    /// When it was chosen (Unix seconds).
    added: u64,
    /// When it is replaced (Unix seconds).
    expires: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct VanguardRecord {
    /// NodeId, 64 hex characters.
    node_id: String,
    /// When it was chosen (Unix seconds).
    added: u64,
    /// When it is replaced (Unix seconds).
    expires: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct VanguardFile {
    version: u8,
    vanguards: Vec<VanguardRecord>,
}

/// The vanguard set, optionally backed by a file.
#[derive(Debug, Default)]
pub struct VanguardSet {
    path: Option<PathBuf>,
    vanguards: Vec<Vanguard>,
}

fn parse_node_id(hex_id: &str) -> Option<NodeId> {
    let bytes = hex::decode(hex_id).ok()?;
    Some(NodeId(bytes.try_into().ok()?))
}

impl VanguardSet {
    /// Load the set from `dir/vanguards.json` (no directory: in memory only; no file yet:
    /// empty). An unreadable or corrupt file is moved aside to `vanguards.json.bad` with a
    /// warning ([`anonnet_state::load`]) and the set starts empty; one with damaged entries
    /// is moved aside too, the readable vanguards kept and saved. Entries beyond
    /// [`NUM_VANGUARDS`] and repeated NodeIds are dropped.
    pub fn load(dir: Option<&Path>) -> VanguardSet {
        let Some(dir) = dir else {
            return VanguardSet::default();
        };
        let path = dir.join(VANGUARD_FILE);
        let mut vanguards: Vec<Vanguard> = Vec::new();
        let file = anonnet_state::load(&path, |b| match serde_json::from_slice(b) {
            Ok(VanguardFile {
                version: 1,
                vanguards,
            }) => Ok(vanguards),
            Ok(f) => Err(format!("has unknown version {}", f.version)),
            Err(e) => Err(format!("is not a vanguard file: {e}")),
        });
        let mut damaged = 0;
        for r in file.iter().flatten() {
            let Some(id) = parse_node_id(&r.node_id) else {
                damaged += 1;
                continue;
            };
            if vanguards.len() < NUM_VANGUARDS && !vanguards.iter().any(|v| v.id == id) {
                vanguards.push(Vanguard {
                    id,
                    added: r.added,
                    expires: r.expires,
                });
            }
        }
        if damaged > 0 {
            let kept = format!("{} vanguards kept", vanguards.len());
            anonnet_state::set_aside(&path, &format!("has {damaged} damaged entries"), &kept);
        }
        let set = VanguardSet {
            path: Some(path),
            vanguards,
        };
        if damaged > 0 {
            if let Err(e) = set.save() {
                tracing::warn!("cannot save {VANGUARD_FILE}: {e}");
            }
        }
        set
    }

    /// The vanguards, in the order they were chosen.
    pub fn ids(&self) -> Vec<NodeId> {
        self.vanguards.iter().map(|v| v.id).collect()
    }

    /// The vanguards with their expiry, for the status.
    pub fn report(&self) -> Vec<VanguardInfo> {
        self.vanguards
            .iter()
            .map(|v| VanguardInfo {
                node_id: v.id.to_hex(),
                expires: v.expires,
            })
            .collect()
    }

    /// Drop the vanguards whose lifetime is over at `now_unix` (seconds) — or whose stored
    /// expiry lies further ahead than [`MAX_LIFETIME`], which no vanguard chosen here has —
    /// and those `dir` does not list (gone from the consensus, or without a circuit
    /// handshake type this client uses); then add relays of `dir`, weighted by bandwidth
    /// like middles and distinct from the others, until the set holds [`NUM_VANGUARDS`] (or
    /// `dir` has no more). An empty directory (no consensus yet) changes nothing. Returns
    /// true when the set changed (then [`VanguardSet::save`] it).
    pub fn ensure(&mut self, dir: &Directory, now_unix: u64, rng: &mut impl Rng) -> bool {
        if dir.is_empty() {
            return false;
        }
        let before = self.vanguards.len();
        self.vanguards.retain(|v| {
            let over = v.expires <= now_unix
                || v.expires > now_unix.saturating_add(MAX_LIFETIME)
                || v.expires > v.added.saturating_add(MAX_LIFETIME);
            let gone = dir.get(&v.id).is_none();
            if over || gone {
                info!(
                    vanguard = %anonnet_net::logging::sensitive(v.id.short()),
                    reason = if over { "lifetime over" } else { "left the directory" },
                    "vanguard replaced"
                );
            }
            !over && !gone
        });
        let mut changed = self.vanguards.len() != before;
        while self.vanguards.len() < NUM_VANGUARDS {
            let candidates: Vec<_> = dir
                .relays()
                .filter(|r| !self.vanguards.iter().any(|v| v.id == r.node_id))
                .collect();
            let Ok(pick) =
                candidates.choose_weighted(rng, |r| crate::directory::bandwidth_weight(r))
            else {
                break;
            };
            let lifetime = rng.random_range(MIN_LIFETIME..=MAX_LIFETIME);
            self.vanguards.push(Vanguard {
                id: pick.node_id,
                added: now_unix,
                expires: now_unix.saturating_add(lifetime),
            });
            changed = true;
        }
        changed
    }

    /// One vanguard for a circuit: uniformly among those `fits` accepts (not the
    /// circuit's guard nor its end, subnets apart); `None` when none fits.
    pub fn pick(&self, fits: impl Fn(&NodeId) -> bool, rng: &mut impl Rng) -> Option<NodeId> {
        pick_vanguard(&self.ids(), fits, rng)
    }

    /// Write the set to its file ([`anonnet_state::write_atomically`]); nothing
    /// without a state directory.
    ///
    /// # Errors
    /// The I/O error, when the state directory is not writable.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = VanguardFile {
            version: 1,
            vanguards: self
                .vanguards
                .iter()
                .map(|v| VanguardRecord {
                    node_id: v.id.to_hex(),
                    added: v.added,
                    expires: v.expires,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        anonnet_state::write_atomically(path, &json)
    }
}

/// One of `vanguards` for a circuit's second hop, uniformly among those `fits` accepts;
/// `None` when none does. (They were drawn weighted by bandwidth when chosen; weighting
/// again here would load the fastest one of the four.)
pub fn pick_vanguard(
    vanguards: &[NodeId],
    fits: impl Fn(&NodeId) -> bool,
    rng: &mut impl Rng,
) -> Option<NodeId> {
    vanguards.iter().filter(|id| fits(id)).choose(rng).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn relay(seed: u8) -> anonnet_wire::SignedDescriptor {
        crate::directory::tests::relay(seed, 0, Vec::new())
    }

    fn directory(seeds: impl IntoIterator<Item = u8>) -> Directory {
        let mut dir = Directory::new();
        for s in seeds {
            dir.insert(&relay(s), 1000).unwrap();
        }
        dir
    }

    fn id_of(seed: u8) -> NodeId {
        anonnet_crypto::IdentityKey::from_seed(&[seed; 32]).node_id()
    }

    const T0: u64 = 1_000_000;

    #[test]
    fn four_distinct_vanguards_with_lifetimes_of_one_to_twelve_days() {
        let dir = directory(1..=10);
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut set = VanguardSet::load(None);
            assert!(set.ensure(&dir, T0, &mut rng));
            let ids = set.ids();
            assert_eq!(ids.len(), NUM_VANGUARDS);
            for (i, a) in ids.iter().enumerate() {
                assert!(dir.get(a).is_some());
                assert!(!ids[i + 1..].contains(a), "distinct");
            }
            for v in &set.vanguards {
                assert!((T0 + MIN_LIFETIME..=T0 + MAX_LIFETIME).contains(&v.expires));
            }
            assert!(!set.ensure(&dir, T0 + 60, &mut rng), "nothing to do");
        }
        // A small directory: as many as there are.
        let mut set = VanguardSet::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(set.ensure(&directory(1..=2), T0, &mut rng));
        assert_eq!(set.ids().len(), 2);
        // No consensus yet: nothing chosen, nothing dropped.
        assert!(!set.ensure(&Directory::new(), T0 + 100 * 86_400, &mut rng));
        assert_eq!(set.ids().len(), 2);
    }

    #[test]
    fn each_vanguard_is_replaced_when_its_lifetime_is_over() {
        let dir = directory(1..=30);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut set = VanguardSet::default();
        set.ensure(&dir, T0, &mut rng);
        let first = set.vanguards.clone();
        let soonest = first.iter().map(|v| v.expires).min().unwrap();
        // Just before the first expiry nothing changes; at it, exactly that one goes.
        assert!(!set.ensure(&dir, soonest - 1, &mut rng));
        assert_eq!(set.vanguards, first);
        assert!(set.ensure(&dir, soonest, &mut rng));
        let now = set.ids();
        assert_eq!(now.len(), NUM_VANGUARDS);
        let kept: Vec<_> = first.iter().filter(|v| v.expires > soonest).collect();
        assert!(kept.iter().all(|v| now.contains(&v.id)));
        let added = set.vanguards.last().unwrap();
        assert_eq!(added.added, soonest);
        assert!(added.expires >= soonest + MIN_LIFETIME);
        // After twelve days none of the first set is left.
        set.ensure(&dir, T0 + MAX_LIFETIME, &mut rng);
        assert!(
            set.vanguards.iter().all(|v| v.added > T0),
            "{:?}",
            set.vanguards
        );
        assert_eq!(set.ids().len(), NUM_VANGUARDS);
    }

    #[test]
    fn a_vanguard_gone_from_the_directory_is_replaced_at_once() {
        let dir = directory(1..=10);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut set = VanguardSet::default();
        set.ensure(&dir, T0, &mut rng);
        let first = set.ids();
        let gone = first[1];
        let seeds: Vec<u8> = (1..=10).filter(|s| id_of(*s) != gone).collect();
        let smaller = directory(seeds);
        assert!(set.ensure(&smaller, T0 + 1, &mut rng));
        let now = set.ids();
        assert_eq!(now.len(), NUM_VANGUARDS);
        assert!(!now.contains(&gone));
        for id in first.iter().filter(|id| **id != gone) {
            assert!(now.contains(id), "the others stay");
        }
    }

    #[test]
    fn a_stored_expiry_too_far_ahead_is_not_trusted() {
        let dir = directory(1..=10);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut set = VanguardSet::default();
        set.vanguards.push(Vanguard {
            id: id_of(1),
            added: T0,
            expires: T0 + 365 * 86_400,
        });
        assert!(set.ensure(&dir, T0, &mut rng));
        assert!(set.vanguards.iter().all(|v| v.expires <= T0 + MAX_LIFETIME));
    }

    #[test]
    fn picks_only_vanguards_that_fit_the_circuit() {
        let dir = directory(1..=10);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut set = VanguardSet::default();
        set.ensure(&dir, T0, &mut rng);
        let ids = set.ids();
        let guard = ids[0];
        let end = ids[2];
        let mut seen = Vec::new();
        for _ in 0..200 {
            let v = set.pick(|id| *id != guard && *id != end, &mut rng).unwrap();
            assert!(v != guard && v != end && ids.contains(&v));
            if !seen.contains(&v) {
                seen.push(v);
            }
        }
        assert_eq!(seen.len(), 2, "both remaining vanguards are used");
        assert_eq!(set.pick(|_| false, &mut rng), None);
    }

    #[test]
    fn vanguard_file_round_trips_and_a_corrupt_one_is_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = directory(1..=10);
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut set = VanguardSet::load(Some(tmp.path()));
        assert!(set.ids().is_empty());
        set.ensure(&dir, T0, &mut rng);
        set.save().unwrap();
        let back = VanguardSet::load(Some(tmp.path()));
        assert_eq!(back.vanguards, set.vanguards);
        assert_eq!(back.report(), set.report());
        assert_eq!(back.report()[0].node_id, set.ids()[0].to_hex());

        // Garbage entries are skipped, duplicates and extras dropped.
        let file = format!(
            r#"{{"version":1,"vanguards":[
                {{"node_id":"zz","added":1,"expires":2}},
                {{"node_id":"{a}","added":1,"expires":9}},
                {{"node_id":"{a}","added":1,"expires":9}},
                {{"node_id":"{b}","added":1,"expires":9}},
                {{"node_id":"{c}","added":1,"expires":9}},
                {{"node_id":"{d}","added":1,"expires":9}},
                {{"node_id":"{e}","added":1,"expires":9}}]}}"#,
            a = id_of(1).to_hex(),
            b = id_of(2).to_hex(),
            c = id_of(3).to_hex(),
            d = id_of(4).to_hex(),
            e = id_of(5).to_hex(),
        );
        std::fs::write(tmp.path().join(VANGUARD_FILE), &file).unwrap();
        let odd = VanguardSet::load(Some(tmp.path()));
        assert_eq!(odd.ids(), vec![id_of(1), id_of(2), id_of(3), id_of(4)]);
        // The damaged entry sets the whole file aside; the readable vanguards are saved.
        let aside = |n: &str| std::fs::read(tmp.path().join(format!("vanguards.json.bad{n}")));
        assert_eq!(aside("").unwrap(), file.as_bytes());
        assert_eq!(VanguardSet::load(Some(tmp.path())).ids(), odd.ids());

        for (bad, n) in [
            (&b"{not json"[..], ".1"),
            (br#"{"version":2,"vanguards":[]}"#, ".2"),
        ] {
            std::fs::write(tmp.path().join(VANGUARD_FILE), bad).unwrap();
            assert!(VanguardSet::load(Some(tmp.path())).ids().is_empty());
            assert_eq!(aside(n).unwrap(), bad);
            assert!(!tmp.path().join(VANGUARD_FILE).exists());
        }
        // Without a state directory: kept in memory, saving writes nothing.
        let mut mem = VanguardSet::load(None);
        mem.ensure(&dir, T0, &mut rng);
        mem.save().unwrap();
        assert_eq!(mem.ids().len(), NUM_VANGUARDS);
    }
}
