//! The consensus computed from votes (`docs/protocol.md` §14.5). Deterministic: every
//! authority that holds the same votes and the same previous consensus computes the same
//! bytes, so their signatures are on one body.

use std::collections::BTreeMap;

use anonnet_wire::Writer;

use crate::document::{Consensus, Vote};
use crate::entry::{RelayEntry, RelayFlags};
use crate::network::Network;
use crate::srv::shared_random_value;
use crate::DirError;

/// Compute the consensus for the votes' period.
///
/// - Only votes for `network` by distinct authorities count (a repeated authority's later
///   votes are ignored); all must name the same `valid_after`, `fresh_until`,
///   `valid_until`.
/// - A relay is listed when at least `network.majority()` votes list it.
/// - Its onion key, handshake types, address and exit ports (one variant, as the relay's
///   descriptor gave them) are the most common among those votes (ties: the encoding that
///   sorts last); each flag is set when more than half of the votes listing the relay set
///   it; its weight is the low median of the votes' weights.
/// - The shared random value follows §14.7 from `previous` (the consensus of the period
///   just before, when the caller has it: `previous.valid_after < valid_after <=
///   previous.fresh_until`; authorities set `fresh_until` a little past the next
///   boundary, §14.5).
///
/// # Errors
/// [`DirError::Votes`] when there are no votes or they disagree on the period.
pub fn compute_consensus(
    network: &Network,
    votes: &[Vote],
    previous: Option<&Consensus>,
) -> Result<Consensus, DirError> {
    let id = network.id();
    let mut counted: Vec<&Vote> = Vec::new();
    for v in votes {
        if v.network_id == id
            && network.authority(&v.authority).is_some()
            && !counted.iter().any(|c| c.authority == v.authority)
        {
            counted.push(v);
        }
    }
    let first = counted.first().ok_or(DirError::Votes("no votes"))?;
    let (valid_after, fresh_until, valid_until) =
        (first.valid_after, first.fresh_until, first.valid_until);
    if counted.iter().any(|v| {
        (v.valid_after, v.fresh_until, v.valid_until) != (valid_after, fresh_until, valid_until)
    }) {
        return Err(DirError::Votes("different periods"));
    }
    let majority = network.majority();

    let mut by_relay: BTreeMap<[u8; 32], Vec<&RelayEntry>> = BTreeMap::new();
    for v in &counted {
        for e in &v.relays {
            by_relay.entry(e.identity).or_default().push(e);
        }
    }
    let mut relays = Vec::new();
    for (identity, entries) in by_relay {
        if entries.len() < majority {
            continue;
        }
        relays.push(merge(identity, &entries));
    }

    let previous = previous.filter(|p| {
        p.network_id == id && p.valid_after < valid_after && valid_after <= p.fresh_until
    });
    let previous_srv = previous.map_or([0; 32], |p| p.srv_current);
    let prior_commits = previous.map_or(&[][..], |p| &p.commits[..]);
    let reveals: Vec<([u8; 32], [u8; 32])> = counted
        .iter()
        .filter_map(|v| v.reveal.map(|r| (v.authority, r)))
        .collect();
    let srv_current = shared_random_value(
        valid_after,
        &previous_srv,
        prior_commits,
        &reveals,
        majority,
    );
    let (hs_srv_current, hs_srv_previous) =
        hs_shared_random_values(valid_after, srv_current, previous_srv, previous);
    let mut commits: Vec<([u8; 32], [u8; 32])> =
        counted.iter().map(|v| (v.authority, v.commit)).collect();
    commits.sort_unstable();

    Ok(Consensus {
        network_id: id,
        valid_after,
        fresh_until,
        valid_until,
        srv_current,
        srv_previous: previous_srv,
        hs_srv_current,
        hs_srv_previous,
        commits,
        relays,
    })
}

/// The hidden-service SRVs of the consensus starting at `valid_after` (§14.7): the SRV
/// of the UTC day's first consensus stays for the whole day. With `previous` (the
/// consensus of the period just before) of the same day, its pair is carried; of the day
/// before, this consensus's `srv_current` starts the day and the previous day's value
/// moves down; without one (a new network, or a gap), `(srv_current, srv_previous)`.
fn hs_shared_random_values(
    valid_after: u64,
    srv_current: [u8; 32],
    srv_previous: [u8; 32],
    previous: Option<&Consensus>,
) -> ([u8; 32], [u8; 32]) {
    let day = valid_after / crate::hsdir::HS_PERIOD_SECS;
    match previous {
        Some(p) if p.valid_after / crate::hsdir::HS_PERIOD_SECS == day => {
            (p.hs_srv_current, p.hs_srv_previous)
        }
        Some(p) if p.valid_after / crate::hsdir::HS_PERIOD_SECS + 1 == day => {
            (srv_current, p.hs_srv_current)
        }
        _ => (srv_current, srv_previous),
    }
}

/// One relay's consensus entry from the votes that list it (at least one).
fn merge(identity: [u8; 32], entries: &[&RelayEntry]) -> RelayEntry {
    // The most common (onion key, handshake types, address, exit ports), ties to the
    // largest encoding.
    let mut variants: BTreeMap<Vec<u8>, (usize, &RelayEntry)> = BTreeMap::new();
    for e in entries {
        let mut key = RelayEntry {
            flags: RelayFlags(0),
            weight: 0,
            ..(*e).clone()
        };
        key.identity = identity;
        let mut w = Writer::new();
        let bytes = match key.encode(&mut w) {
            Ok(()) => w.into_vec(),
            Err(_) => continue,
        };
        variants.entry(bytes).or_insert((0, e)).0 += 1;
    }
    let Some(chosen) = variants
        .iter()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(a.0.cmp(b.0)))
        .map(|(_, (_, e))| *e)
        .or_else(|| entries.first().copied())
    else {
        // Unreachable: callers pass at least one entry.
        return RelayEntry {
            identity,
            onion_key: [0; 32],
            handshakes: anonnet_wire::HandshakeSet::default(),
            address: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            flags: RelayFlags(0),
            weight: 0,
            exit_ports: Vec::new(),
        };
    };

    let mut flags = RelayFlags(0);
    for bit in 0..8u8 {
        let f = RelayFlags(1 << bit);
        let set = entries.iter().filter(|e| e.flags.contains(f)).count();
        if set * 2 > entries.len() {
            flags.insert(f);
        }
    }
    let mut weights: Vec<u32> = entries.iter().map(|e| e.weight).collect();
    weights.sort_unstable();
    let weight = weights
        .get(weights.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0);
    RelayEntry {
        identity,
        onion_key: chosen.onion_key,
        handshakes: chosen.handshakes,
        address: chosen.address,
        flags,
        weight,
        exit_ports: chosen.exit_ports.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::tests::entry;
    use crate::network::AuthorityEntry;
    use crate::srv;
    use anonnet_crypto::IdentityKey;

    fn net(n: u8) -> (Network, Vec<IdentityKey>) {
        let keys: Vec<IdentityKey> = (1..=n).map(|i| IdentityKey::from_seed(&[i; 32])).collect();
        let net = Network::new(
            "t".into(),
            keys.iter()
                .map(|k| AuthorityEntry {
                    name: "a".into(),
                    identity: k.public(),
                    address: "127.0.0.1:1".parse().unwrap(),
                })
                .collect(),
        )
        .unwrap();
        (net, keys)
    }

    fn vote(net: &Network, k: &IdentityKey, relays: Vec<RelayEntry>, va: u64) -> Vote {
        let mut relays = relays;
        relays.sort_by_key(|e| e.identity);
        Vote {
            network_id: net.id(),
            authority: k.public(),
            valid_after: va,
            fresh_until: va + 10,
            valid_until: va + 30,
            commit: srv::commit(&srv::reveal(&k.seed(), va + 10)),
            reveal: Some(srv::reveal(&k.seed(), va)),
            relays,
        }
    }

    #[test]
    fn relay_needs_a_majority_and_weight_is_the_median() {
        let (net, k) = net(3);
        let mut a = entry(1);
        a.weight = 100;
        let mut b = a.clone();
        b.weight = 5_000_000; // one authority's outlier does not move the median
        let mut c = a.clone();
        c.weight = 300;
        let lonely = entry(9);
        let votes = vec![
            vote(&net, &k[0], vec![a, lonely.clone()], 100),
            vote(&net, &k[1], vec![b], 100),
            vote(&net, &k[2], vec![c], 100),
        ];
        let cons = compute_consensus(&net, &votes, None).unwrap();
        assert_eq!(
            cons.relays.len(),
            1,
            "a relay one authority knows is left out"
        );
        assert_eq!(cons.relays[0].weight, 300);
        // Order of votes does not change a byte.
        let mut rev = votes.clone();
        rev.reverse();
        assert_eq!(
            compute_consensus(&net, &rev, None)
                .unwrap()
                .encode_body()
                .unwrap(),
            cons.encode_body().unwrap()
        );
    }

    #[test]
    fn consensus_entry_carries_the_handshake_set_of_the_most_common_variant() {
        let (net, k) = net(3);
        let classical = RelayEntry {
            handshakes: anonnet_wire::HandshakeSet::NTOR,
            ..entry(1)
        };
        let both = entry(1);
        // Two votes saw the relay's newer descriptor (type 1 only), one the older.
        let votes = vec![
            vote(&net, &k[0], vec![classical.clone()], 100),
            vote(&net, &k[1], vec![both.clone()], 100),
            vote(&net, &k[2], vec![classical.clone()], 100),
        ];
        let cons = compute_consensus(&net, &votes, None).unwrap();
        assert_eq!(cons.relays[0].handshakes, anonnet_wire::HandshakeSet::NTOR);
        // It survives the consensus encoding.
        let back = Consensus::decode_body(&cons.encode_body().unwrap()).unwrap();
        assert_eq!(back.relays[0].handshakes, anonnet_wire::HandshakeSet::NTOR);
        // The set belongs to the variant: a tie goes to the larger encoding (here 0x03).
        let votes = vec![
            vote(&net, &k[0], vec![classical], 100),
            vote(&net, &k[1], vec![both], 100),
        ];
        let cons = compute_consensus(&net, &votes, None).unwrap();
        assert_eq!(cons.relays[0].handshakes, anonnet_wire::HandshakeSet::ALL);
    }

    #[test]
    fn flags_need_a_majority_of_the_listing_votes() {
        let (net, k) = net(3);
        let mut g = entry(1);
        g.flags.insert(RelayFlags::GUARD);
        let plain = entry(1);
        let votes = vec![
            vote(&net, &k[0], vec![g.clone()], 100),
            vote(&net, &k[1], vec![plain.clone()], 100),
            vote(&net, &k[2], vec![plain], 100),
        ];
        let cons = compute_consensus(&net, &votes, None).unwrap();
        assert!(!cons.relays[0].flags.contains(RelayFlags::GUARD));
        let votes = vec![
            vote(&net, &k[0], vec![g.clone()], 100),
            vote(&net, &k[1], vec![g], 100),
        ];
        let cons = compute_consensus(&net, &votes, None).unwrap();
        assert!(cons.relays[0].flags.contains(RelayFlags::GUARD));
    }

    #[test]
    fn a_repeated_or_foreign_authority_counts_once_or_not_at_all() {
        let (net, k) = net(3);
        let stranger = IdentityKey::from_seed(&[77; 32]);
        let e = entry(1);
        let votes = vec![
            vote(&net, &k[0], vec![e.clone()], 100),
            vote(&net, &k[0], vec![e.clone()], 100),
            vote(&net, &stranger, vec![e], 100),
        ];
        assert!(compute_consensus(&net, &votes, None)
            .unwrap()
            .relays
            .is_empty());
    }

    #[test]
    fn votes_for_different_periods_are_refused() {
        let (net, k) = net(2);
        let votes = vec![
            vote(&net, &k[0], vec![], 100),
            vote(&net, &k[1], vec![], 110),
        ];
        assert!(compute_consensus(&net, &votes, None).is_err());
        assert!(compute_consensus(&net, &[], None).is_err());
    }

    #[test]
    fn srv_chains_through_the_previous_consensus() {
        let (net, k) = net(3);
        let first: Vec<Vote> = k.iter().map(|k| vote(&net, k, vec![], 100)).collect();
        let c1 = compute_consensus(&net, &first, None).unwrap();
        let second: Vec<Vote> = k.iter().map(|k| vote(&net, k, vec![], 110)).collect();
        let c2 = compute_consensus(&net, &second, Some(&c1)).unwrap();
        assert_eq!(c2.srv_previous, c1.srv_current);
        // As authorities make them: fresh a little past the next boundary. Still chained.
        let mut c1_late = c1.clone();
        c1_late.fresh_until += 2;
        let c2_late = compute_consensus(&net, &second, Some(&c1_late)).unwrap();
        assert_eq!(c2_late.srv_current, c2.srv_current);
        // A consensus two periods old is not the previous one.
        let third: Vec<Vote> = k.iter().map(|k| vote(&net, k, vec![], 120)).collect();
        let c3 = compute_consensus(&net, &third, Some(&c1)).unwrap();
        assert_eq!(c3.srv_previous, [0; 32]);
        // With the previous consensus the reveals count; without it, the disaster value.
        let without = compute_consensus(&net, &second, None).unwrap();
        assert_ne!(c2.srv_current, without.srv_current);
        let expected = srv::shared_random_value(
            110,
            &c1.srv_current,
            &c1.commits,
            &k.iter()
                .map(|k| (k.public(), srv::reveal(&k.seed(), 110)))
                .collect::<Vec<_>>(),
            2,
        );
        assert_eq!(c2.srv_current, expected);
    }
}
