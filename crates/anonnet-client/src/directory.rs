//! The relay directory and path selection (sans-IO). Spec: `docs/protocol.md` §9.
//!
//! The directory holds verified relay descriptors. A path is guard → middle → exit:
//! three distinct relays, the exit's policy summary allowing the destination port, the
//! guard flagged as a guard; each position is drawn weighted by advertised bandwidth.

use std::collections::HashMap;

use anonnet_crypto::{verify_descriptor, DescriptorError, NodeId, VerifiedDescriptor};
use anonnet_wire::SignedDescriptor;
use rand::seq::IndexedRandom;
use rand::Rng;

/// Verified relays, keyed by NodeId.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    relays: HashMap<NodeId, VerifiedDescriptor>,
}

/// Why no path could be chosen.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// No relay's exit policy allows the port.
    #[error("no exit relay allows port {0}")]
    NoExitForPort(u16),
    /// Fewer distinct usable relays than hops.
    #[error("not enough relays for a {0}-hop path")]
    NotEnoughRelays(usize),
}

impl Directory {
    /// An empty directory.
    pub fn new() -> Self {
        Directory::default()
    }

    /// Verify `signed` at `now` (Unix seconds) and add it, replacing an older descriptor
    /// of the same relay. Returns the relay's NodeId.
    ///
    /// # Errors
    /// [`DescriptorError`] when it is malformed, badly signed, expired or from the future;
    /// the directory is then unchanged.
    pub fn insert(
        &mut self,
        signed: &SignedDescriptor,
        now: u64,
    ) -> Result<NodeId, DescriptorError> {
        let v = verify_descriptor(signed, now)?;
        let id = v.node_id;
        match self.relays.get(&id) {
            Some(old) if old.descriptor.published > v.descriptor.published => {}
            _ => {
                self.relays.insert(id, v);
            }
        }
        Ok(id)
    }

    /// Number of relays.
    pub fn len(&self) -> usize {
        self.relays.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// A relay by NodeId.
    pub fn get(&self, id: &NodeId) -> Option<&VerifiedDescriptor> {
        self.relays.get(id)
    }

    /// True when some relay's exit summary allows `port`.
    pub fn has_exit_for(&self, port: u16) -> bool {
        self.relays
            .values()
            .any(|r| r.descriptor.exit_allows_port(port))
    }

    /// Choose guard, middle and exit for a connection to `port`, avoiding `avoid` in every
    /// position and, when another exit allows the port, the exits in `other_exits` (exits of
    /// circuits that belong to other isolation groups, so two groups do not share an exit).
    ///
    /// # Errors
    /// [`PathError::NoExitForPort`] when no exit allows the port,
    /// [`PathError::NotEnoughRelays`] when the remaining relays cannot fill a path.
    pub fn choose_path(
        &self,
        port: u16,
        avoid: &[NodeId],
        other_exits: &[NodeId],
        rng: &mut impl Rng,
    ) -> Result<Vec<VerifiedDescriptor>, PathError> {
        let usable: Vec<&VerifiedDescriptor> = self
            .relays
            .values()
            .filter(|r| !avoid.contains(&r.node_id))
            .collect();
        let weight = |r: &&VerifiedDescriptor| f64::from(r.descriptor.bandwidth.max(1));
        let mut exits: Vec<&VerifiedDescriptor> = usable
            .iter()
            .copied()
            .filter(|r| r.descriptor.exit_allows_port(port))
            .collect();
        if exits.is_empty() {
            return Err(PathError::NoExitForPort(port));
        }
        if exits.iter().any(|r| !other_exits.contains(&r.node_id)) {
            exits.retain(|r| !other_exits.contains(&r.node_id));
        }
        let too_few = PathError::NotEnoughRelays(3);
        // Try each exit choice a few times; small networks may pin the others down.
        for _ in 0..8 {
            let exit = *exits
                .choose_weighted(rng, weight)
                .map_err(|_| too_few.clone())?;
            let guards: Vec<&VerifiedDescriptor> = usable
                .iter()
                .copied()
                .filter(|r| r.descriptor.is_guard() && r.node_id != exit.node_id)
                .collect();
            let Ok(guard) = guards.choose_weighted(rng, weight) else {
                continue;
            };
            let middles: Vec<&VerifiedDescriptor> = usable
                .iter()
                .copied()
                .filter(|r| r.node_id != exit.node_id && r.node_id != guard.node_id)
                .collect();
            let Ok(middle) = middles.choose_weighted(rng, weight) else {
                continue;
            };
            return Ok(vec![(*guard).clone(), (*middle).clone(), exit.clone()]);
        }
        Err(too_few)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonnet_crypto::IdentityKey;
    use anonnet_wire::descriptor::{FLAG_EXIT, FLAG_GUARD};
    use anonnet_wire::{PortRange, RelayDescriptor};

    fn relay(seed: u8, flags: u8, ports: Vec<PortRange>) -> SignedDescriptor {
        let id = IdentityKey::from_seed(&[seed; 32]);
        let d = RelayDescriptor {
            identity: id.public(),
            onion_key: [seed; 32],
            addresses: vec![format!("127.0.0.1:{}", 5000 + u16::from(seed))
                .parse()
                .unwrap()],
            flags,
            exit_ports: ports,
            bandwidth: 1000,
            published: 100,
            expires: 10_000,
        };
        anonnet_crypto::sign_descriptor(&id, &d).unwrap()
    }

    #[test]
    fn path_has_three_distinct_relays_and_an_exit_allowing_the_port() {
        let mut dir = Directory::new();
        dir.insert(&relay(1, FLAG_GUARD, vec![]), 200).unwrap();
        dir.insert(&relay(2, FLAG_GUARD, vec![]), 200).unwrap();
        dir.insert(&relay(3, 0, vec![]), 200).unwrap();
        dir.insert(
            &relay(4, FLAG_EXIT, vec![PortRange { lo: 80, hi: 80 }]),
            200,
        )
        .unwrap();
        let mut rng = rand::rng();
        for _ in 0..50 {
            let path = dir.choose_path(80, &[], &[], &mut rng).unwrap();
            assert_eq!(path.len(), 3);
            assert!(path[0].descriptor.is_guard());
            assert!(path[2].descriptor.exit_allows_port(80));
            assert_ne!(path[0].node_id, path[1].node_id);
            assert_ne!(path[1].node_id, path[2].node_id);
            assert_ne!(path[0].node_id, path[2].node_id);
        }
        assert_eq!(
            dir.choose_path(443, &[], &[], &mut rng).unwrap_err(),
            PathError::NoExitForPort(443)
        );
        // The only exit is used by another group: it is still chosen rather than failing.
        let exit = path_exit(&dir);
        let p = dir.choose_path(80, &[], &[exit], &mut rng).unwrap();
        assert_eq!(p[2].node_id, exit);
    }

    fn path_exit(dir: &Directory) -> NodeId {
        dir.choose_path(80, &[], &[], &mut rand::rng()).unwrap()[2].node_id
    }

    #[test]
    fn other_groups_exits_are_avoided_when_possible() {
        let mut dir = Directory::new();
        for seed in 1..=5 {
            dir.insert(
                &relay(seed, FLAG_GUARD | FLAG_EXIT, vec![PortRange::ALL]),
                200,
            )
            .unwrap();
        }
        let mut rng = rand::rng();
        for _ in 0..50 {
            let first = dir.choose_path(80, &[], &[], &mut rng).unwrap();
            let second = dir
                .choose_path(80, &[], &[first[2].node_id], &mut rng)
                .unwrap();
            assert_ne!(first[2].node_id, second[2].node_id);
        }
    }

    #[test]
    fn too_small_or_forged_directories_give_errors() {
        let mut dir = Directory::new();
        dir.insert(&relay(1, FLAG_GUARD | FLAG_EXIT, vec![PortRange::ALL]), 200)
            .unwrap();
        dir.insert(&relay(2, FLAG_GUARD | FLAG_EXIT, vec![PortRange::ALL]), 200)
            .unwrap();
        let mut rng = rand::rng();
        assert!(matches!(
            dir.choose_path(80, &[], &[], &mut rng),
            Err(PathError::NotEnoughRelays(3))
        ));
        let mut forged = relay(3, FLAG_GUARD, vec![]);
        forged.signature[0] ^= 1;
        assert!(dir.insert(&forged, 200).is_err());
        assert!(dir.insert(&relay(3, FLAG_GUARD, vec![]), 20_000).is_err());
        assert_eq!(dir.len(), 2);
    }
}
