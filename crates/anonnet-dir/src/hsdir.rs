//! Where hidden-service descriptors live (`docs/protocol.md` §12.7): the **HSDir ring**.
//!
//! The relays of a consensus that carry the HSDir flag are placed on a ring by
//! `hsdir_index = BLAKE3-derive_key("anonnet 2026 hsdir index", NodeId ‖ srv)`. A
//! descriptor with DHT index `index` (§12.3) is stored, for each replica `r` in
//! `1..=`[`HSDIR_REPLICAS`], on the [`HSDIR_SPREAD_STORE`] relays that follow
//! `store_index(index, r, srv) = BLAKE3-derive_key("anonnet 2026 hs store index", index ‖
//! r u8 ‖ srv)` on the ring (a relay already chosen for an earlier replica is skipped), as
//! in rend-spec-v3 §2.2.3. `srv` is the hidden-service SRV of the descriptor's period: the
//! consensus's `hs_srv_current` for the UTC day of its `valid_after`, `hs_srv_previous`
//! for the day before (§14.7). Nobody can tell where a period's descriptors will live
//! before that day's first consensus, and a relay cannot choose its place on the ring:
//! its NodeId is fixed long before the SRV is known.
//!
//! Plain synchronous code: relays use it to decide what they store, services where they
//! publish and clients where they fetch.

use anonnet_crypto::NodeId;

use crate::document::Consensus;
use crate::entry::RelayFlags;

/// Length of a hidden-service time period (seconds): one UTC day, as
/// `anonnet_crypto::hs::PERIOD_SECS` (§12.2).
pub const HS_PERIOD_SECS: u64 = anonnet_crypto::hs::PERIOD_SECS;
/// Replicas of each descriptor (rend-spec-v3 `hsdir_n_replicas`).
pub const HSDIR_REPLICAS: u8 = 2;
/// Relays that store each replica (rend-spec-v3 `hsdir_spread_store`).
pub const HSDIR_SPREAD_STORE: usize = 4;
/// Responsible relays a client asks at once (§13.7); it asks the rest when none of these
/// has a descriptor that opens.
pub const HSDIR_SPREAD_FETCH: usize = 3;

/// A relay's place on the ring for `srv` (32 bytes).
pub fn hsdir_index(node: &NodeId, srv: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("anonnet 2026 hsdir index");
    h.update(&node.0);
    h.update(srv);
    *h.finalize().as_bytes()
}

/// Where replica `replica` (1..=[`HSDIR_REPLICAS`]) of the descriptor with DHT index
/// `index` (§12.3) starts on the ring for `srv` (32 bytes).
pub fn store_index(index: &[u8; 32], replica: u8, srv: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("anonnet 2026 hs store index");
    h.update(index);
    h.update(&[replica]);
    h.update(srv);
    *h.finalize().as_bytes()
}

/// The HSDir relays ordered by [`hsdir_index`] for one SRV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsDirRing {
    srv: [u8; 32],
    /// `(hsdir_index, NodeId)`, sorted, no NodeId twice.
    ring: Vec<([u8; 32], NodeId)>,
}

impl HsDirRing {
    /// The ring of `nodes` for `srv` (duplicates count once).
    pub fn new(srv: [u8; 32], nodes: impl IntoIterator<Item = NodeId>) -> HsDirRing {
        let mut ring: Vec<([u8; 32], NodeId)> = nodes
            .into_iter()
            .map(|n| (hsdir_index(&n, &srv), n))
            .collect();
        ring.sort_unstable();
        ring.dedup_by(|a, b| a.1 == b.1);
        HsDirRing { srv, ring }
    }

    /// The SRV the ring was built for.
    pub fn srv(&self) -> &[u8; 32] {
        &self.srv
    }

    /// Number of relays on the ring.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// True when the ring has no relay.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The relays responsible for the descriptor with DHT index `index`: replica 1's
    /// [`HSDIR_SPREAD_STORE`] relays, then replica 2's (at most 8, fewer on a small
    /// ring; none twice).
    pub fn responsible(&self, index: &[u8; 32]) -> Vec<NodeId> {
        let n = self.ring.len();
        let mut out: Vec<NodeId> =
            Vec::with_capacity(usize::from(HSDIR_REPLICAS) * HSDIR_SPREAD_STORE);
        for replica in 1..=HSDIR_REPLICAS {
            let start = store_index(index, replica, &self.srv);
            let first = self.ring.partition_point(|(i, _)| *i < start);
            let mut taken = 0;
            for (_, node) in self.ring.iter().cycle().skip(first).take(n) {
                if taken == HSDIR_SPREAD_STORE {
                    break;
                }
                if !out.contains(node) {
                    out.push(*node);
                    taken += 1;
                }
            }
        }
        out
    }

    /// True when `node` is one of [`HsDirRing::responsible`]`(index)`.
    pub fn is_responsible(&self, node: &NodeId, index: &[u8; 32]) -> bool {
        self.responsible(index).contains(node)
    }
}

/// The two rings a consensus defines: for the hidden-service period of its `valid_after`
/// and for the period before (§12.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsDirPlacement {
    /// The period (UTC day number) of the consensus's `valid_after`.
    period: u64,
    current: HsDirRing,
    previous: HsDirRing,
}

impl HsDirPlacement {
    /// The rings of `c`: its relays with the HSDir, Running and Valid flags, placed with
    /// `hs_srv_current` and `hs_srv_previous`.
    pub fn from_consensus(c: &Consensus) -> HsDirPlacement {
        let wanted = RelayFlags(RelayFlags::HSDIR.0 | RelayFlags::RUNNING.0 | RelayFlags::VALID.0);
        let nodes: Vec<NodeId> = c
            .relays
            .iter()
            .filter(|e| e.flags.contains(wanted))
            .map(|e| e.node_id())
            .collect();
        HsDirPlacement {
            period: c.valid_after / HS_PERIOD_SECS,
            current: HsDirRing::new(c.hs_srv_current, nodes.iter().copied()),
            previous: HsDirRing::new(c.hs_srv_previous, nodes),
        }
    }

    /// The period of the consensus's `valid_after`.
    pub fn period(&self) -> u64 {
        self.period
    }

    /// The ring for descriptors of `period`: the consensus's own period or the one
    /// before; `None` for any other (this consensus cannot place them).
    pub fn ring(&self, period: u64) -> Option<&HsDirRing> {
        if period == self.period {
            Some(&self.current)
        } else if period.checked_add(1) == Some(self.period) {
            Some(&self.previous)
        } else {
            None
        }
    }

    /// The relays responsible for the descriptor of `period` with DHT index `index`
    /// (empty when this consensus cannot place that period).
    pub fn responsible(&self, period: u64, index: &[u8; 32]) -> Vec<NodeId> {
        self.ring(period)
            .map(|r| r.responsible(index))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::RelayEntry;
    use anonnet_wire::HandshakeSet;

    fn node(i: u16) -> NodeId {
        NodeId(*blake3::hash(&i.to_be_bytes()).as_bytes())
    }

    #[test]
    fn index_vectors() {
        // docs/protocol.md §12.7; re-derived in docs/vectors/verify_vectors.py.
        assert_eq!(
            hex::encode(hsdir_index(&NodeId([0x01; 32]), &[0x02; 32])),
            HSDIR_INDEX_VECTOR
        );
        assert_eq!(
            hex::encode(store_index(&[0x03; 32], 1, &[0x02; 32])),
            STORE_INDEX_VECTOR
        );
    }
    const HSDIR_INDEX_VECTOR: &str =
        "3d7fe54416cb6504acb14ec1b5531289a0c32e16d39b925877403d65ebd5ee57";
    const STORE_INDEX_VECTOR: &str =
        "63a666a0a5a36fa0e0b21a59cad5ac3ca418563f2367b838fe4b3eb9ed89b33a";

    #[test]
    fn eight_distinct_relays_follow_each_replica_and_every_party_agrees() {
        let nodes: Vec<NodeId> = (0..50).map(node).collect();
        let ring = HsDirRing::new([9; 32], nodes.iter().copied());
        // Built from the same relays in another order: the same ring.
        let again = HsDirRing::new([9; 32], nodes.iter().rev().copied());
        assert_eq!(ring, again);
        for k in 0..20u8 {
            let index = [k; 32];
            let r = ring.responsible(&index);
            assert_eq!(r.len(), 8);
            let mut d = r.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 8, "a relay chosen twice");
            assert_eq!(r, again.responsible(&index));
            // Replica 1's first relay is the first at or after its start (wrapping).
            let start = store_index(&index, 1, &[9; 32]);
            let expect = ring
                .ring
                .iter()
                .find(|(i, _)| *i >= start)
                .unwrap_or(&ring.ring[0])
                .1;
            assert_eq!(r[0], expect);
            assert!(r.iter().all(|n| ring.is_responsible(n, &index)));
        }
    }

    #[test]
    fn a_new_srv_moves_every_descriptor_and_a_small_ring_gives_all() {
        let nodes: Vec<NodeId> = (0..50).map(node).collect();
        let a = HsDirRing::new([1; 32], nodes.iter().copied());
        let b = HsDirRing::new([2; 32], nodes.iter().copied());
        let moved = (0..20u8)
            .filter(|k| a.responsible(&[*k; 32]) != b.responsible(&[*k; 32]))
            .count();
        assert_eq!(moved, 20);
        let small = HsDirRing::new([1; 32], (0..5).map(node));
        let mut r = small.responsible(&[7; 32]);
        r.sort_unstable();
        let mut all: Vec<NodeId> = (0..5).map(node).collect();
        all.sort_unstable();
        assert_eq!(r, all);
        assert!(HsDirRing::new([1; 32], []).responsible(&[7; 32]).is_empty());
    }

    fn entry(i: u16, flags: RelayFlags) -> RelayEntry {
        let identity = *blake3::hash(&[i.to_be_bytes(), [0xee, 0xee]].concat()).as_bytes();
        RelayEntry {
            identity,
            onion_key: [0; 32],
            handshakes: HandshakeSet::ALL,
            address: "127.0.0.1:7000".parse().unwrap_or_else(|_| unreachable!()),
            flags,
            weight: 1,
            exit_ports: Vec::new(),
        }
    }

    #[test]
    fn the_consensus_places_only_hsdirs_and_only_its_own_and_the_previous_period() {
        let hsdir = RelayFlags(RelayFlags::HSDIR.0 | RelayFlags::RUNNING.0 | RelayFlags::VALID.0);
        let plain = RelayFlags(RelayFlags::RUNNING.0 | RelayFlags::VALID.0);
        let relays: Vec<RelayEntry> = (0..20)
            .map(|i| entry(i, if i % 2 == 0 { hsdir } else { plain }))
            .collect();
        let day = 20_833;
        let c = Consensus {
            network_id: [0; 32],
            valid_after: day * HS_PERIOD_SECS + 7200,
            fresh_until: day * HS_PERIOD_SECS + 10_800,
            valid_until: day * HS_PERIOD_SECS + 18_000,
            srv_current: [1; 32],
            srv_previous: [2; 32],
            hs_srv_current: [3; 32],
            hs_srv_previous: [4; 32],
            commits: Vec::new(),
            relays: relays.clone(),
        };
        let p = HsDirPlacement::from_consensus(&c);
        assert_eq!(p.period(), day);
        assert_eq!(p.ring(day).map(HsDirRing::srv), Some(&[3; 32]));
        assert_eq!(p.ring(day - 1).map(HsDirRing::srv), Some(&[4; 32]));
        assert!(p.ring(day + 1).is_none() && p.ring(day - 2).is_none());
        assert!(p.responsible(day + 1, &[0; 32]).is_empty());
        let hsdirs: Vec<NodeId> = relays
            .iter()
            .filter(|e| e.flags.contains(RelayFlags::HSDIR))
            .map(RelayEntry::node_id)
            .collect();
        assert_eq!(p.ring(day).map(HsDirRing::len), Some(10));
        for k in 0..10u8 {
            let r = p.responsible(day, &[k; 32]);
            assert_eq!(r.len(), 8);
            assert!(r.iter().all(|n| hsdirs.contains(n)));
        }
    }
}
