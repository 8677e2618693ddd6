//! The shared random value (`docs/protocol.md` §14.7), after Tor's prop 250: in the vote for
//! period P each authority reveals the value it committed to in period P−1 and commits to
//! the one it will reveal in P+1. The SRV of P hashes the previous SRV with every reveal
//! that matches its commitment in the consensus of P−1, when a majority of the network's
//! authorities revealed; otherwise it is the "disaster" value derived from the previous SRV
//! alone, so the chain never stops.
//!
//! An authority's reveals come from a secret it keeps (`reveal = BLAKE3-keyed(secret,
//! "anonnet 2026 srv reveal" ‖ valid_after u64)`), so a restarted authority can still
//! reveal what it committed to.

/// The reveal an authority with `secret` gives in the vote for the period starting at
/// `valid_after` (Unix seconds).
pub fn reveal(secret: &[u8; 32], valid_after: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"anonnet 2026 srv reveal");
    h.update(&valid_after.to_be_bytes());
    *h.finalize().as_bytes()
}

/// The commitment to `reveal`: `BLAKE3-derive_key("anonnet 2026 srv commit", reveal)`.
pub fn commit(reveal: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("anonnet 2026 srv commit", reveal)
}

/// The SRV for the period starting at `valid_after`.
///
/// `previous_srv` is the SRV of the previous consensus (32 zero bytes when there is none);
/// `prior_commits` are that consensus's `(authority, commit)` pairs; `reveals` are the
/// `(authority, reveal)` pairs of this period's votes; `majority` is the network's.
/// Reveals without a matching commitment are ignored. With at least `majority` valid
/// reveals: `BLAKE3-derive_key("anonnet 2026 srv", valid_after u64 ‖ previous_srv ‖ n u8 ‖
/// (authority ‖ reveal) × n)`, pairs sorted by authority; otherwise
/// `BLAKE3-derive_key("anonnet 2026 srv disaster", valid_after u64 ‖ previous_srv)`.
pub fn shared_random_value(
    valid_after: u64,
    previous_srv: &[u8; 32],
    prior_commits: &[([u8; 32], [u8; 32])],
    reveals: &[([u8; 32], [u8; 32])],
    majority: usize,
) -> [u8; 32] {
    let mut valid: Vec<([u8; 32], [u8; 32])> = reveals
        .iter()
        .filter(|(a, r)| {
            prior_commits
                .iter()
                .any(|(ca, c)| ca == a && *c == commit(r))
        })
        .copied()
        .collect();
    valid.sort_unstable();
    valid.dedup_by(|x, y| x.0 == y.0);
    if valid.len() >= majority {
        let mut h = blake3::Hasher::new_derive_key("anonnet 2026 srv");
        h.update(&valid_after.to_be_bytes());
        h.update(previous_srv);
        h.update(&[valid.len() as u8]);
        for (a, r) in &valid {
            h.update(a);
            h.update(r);
        }
        *h.finalize().as_bytes()
    } else {
        let mut h = blake3::Hasher::new_derive_key("anonnet 2026 srv disaster");
        h.update(&valid_after.to_be_bytes());
        h.update(previous_srv);
        *h.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_uses_matching_reveals_only() {
        let secrets = [[1u8; 32], [2; 32], [3; 32]];
        let ids = [[11u8; 32], [12; 32], [13; 32]];
        let commits: Vec<_> = (0..3)
            .map(|i| (ids[i], commit(&reveal(&secrets[i], 100))))
            .collect();
        let reveals: Vec<_> = (0..3).map(|i| (ids[i], reveal(&secrets[i], 100))).collect();
        let srv = shared_random_value(100, &[0; 32], &commits, &reveals, 2);
        // Order of inputs does not matter.
        let mut rev = reveals.clone();
        rev.reverse();
        assert_eq!(srv, shared_random_value(100, &[0; 32], &commits, &rev, 2));
        // One reveal changed: with two valid of a majority of two, a different value.
        let mut bad = reveals.clone();
        bad[2].1[0] ^= 1;
        let two = shared_random_value(100, &[0; 32], &commits, &bad, 2);
        assert_ne!(two, srv);
        // Too few valid reveals: the disaster value, the same whatever was revealed.
        let one = shared_random_value(100, &[0; 32], &commits, &bad[..1], 2);
        let none = shared_random_value(100, &[0; 32], &commits, &[], 2);
        assert_eq!(one, none);
        assert_ne!(none, shared_random_value(101, &[0; 32], &commits, &[], 2));
    }
}
