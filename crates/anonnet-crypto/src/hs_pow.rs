//! Proof of work on hidden-service introductions (docs/protocol.md §13.9; Tor's prop 327,
//! version 1, with BLAKE3 in place of BLAKE2b): a client that wants its introduction
//! served first under load solves an Equi-X puzzle bound to the service, the service's
//! current seed and a claimed `effort`; the service checks it with one BLAKE3 and one
//! Equi-X verification (tens of microseconds) before it spends anything on the
//! introduction.
//!
//! Sans-IO: no clock, no threads. [`solve`] is CPU-bound (about `effort` Equi-X solves,
//! each a few milliseconds): run it in a blocking task.
//!
//! ```text
//! challenge = "anonnet hs pow v1\0" (18) ‖ service_id [32] ‖ seed [32] ‖ nonce [16] ‖ effort u32
//! S         = an Equi-X solution for `challenge` (16 bytes, as `equix` encodes it)
//! R         = first 4 bytes of BLAKE3(challenge ‖ S), big-endian
//! valid     ⇔ Equi-X verifies S for challenge  ∧  R × effort ≤ 2^32 − 1   (as 64-bit integers)
//! ```

use anonnet_wire::hs::{PowSolution, POW_NONCE_LEN, POW_SEED_HEAD_LEN, POW_SOLUTION_LEN};

/// The personalisation string that starts every challenge (18 bytes, NUL included).
pub const POW_PERSONALIZATION: &[u8; 18] = b"anonnet hs pow v1\0";
/// Bytes of a challenge: `18 + 32 + 32 + 16 + 4` = 102.
pub const POW_CHALLENGE_LEN: usize = POW_PERSONALIZATION.len() + 32 + 32 + POW_NONCE_LEN + 4;

/// Why a proof of work is refused (§13.9).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PowError {
    /// The solution's `seed_head` is not the first 4 bytes of the seed it is checked against.
    #[error("proof of work for another seed")]
    WrongSeed,
    /// `R × effort` exceeds `2^32 − 1`: the solution does not reach its claimed effort.
    #[error("proof of work below its claimed effort")]
    Effort,
    /// The challenge makes no Equi-X instance (a small fraction of challenges do not;
    /// solvers skip them).
    #[error("no Equi-X instance for this challenge")]
    Challenge,
    /// The 16 solution bytes are not a valid Equi-X solution for the challenge.
    #[error("Equi-X solution does not verify")]
    Solution,
}

/// The challenge string for `service_id` (the service's 32-byte public key `A`, §12.1),
/// `seed` (from the descriptor, §12.3), `nonce` and `effort` (102 bytes).
pub fn challenge(
    service_id: &[u8; 32],
    seed: &[u8; 32],
    nonce: &[u8; POW_NONCE_LEN],
    effort: u32,
) -> [u8; POW_CHALLENGE_LEN] {
    let mut c = [0u8; POW_CHALLENGE_LEN];
    let parts: [&[u8]; 5] = [
        POW_PERSONALIZATION,
        service_id,
        seed,
        nonce,
        &effort.to_be_bytes(),
    ];
    let mut at = 0;
    for p in parts {
        if let Some(dst) = c.get_mut(at..at + p.len()) {
            dst.copy_from_slice(p);
        }
        at += p.len();
    }
    c
}

/// `R` of §13.9: the first 4 bytes, big-endian, of `BLAKE3(challenge ‖ solution)`.
fn effort_hash(challenge: &[u8; POW_CHALLENGE_LEN], solution: &[u8; POW_SOLUTION_LEN]) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(challenge);
    h.update(solution);
    let out = h.finalize();
    let b = out.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// True when `r` meets `effort`: `r × effort ≤ 2^32 − 1`. Effort 0 and 1 are met by any `r`.
fn meets(r: u32, effort: u32) -> bool {
    u64::from(r) * u64::from(effort) <= u64::from(u32::MAX)
}

/// Solve for `effort` (0..=2^32−1) against `service_id` and `seed`, starting from the
/// 16-byte `nonce` (random, so that two clients do not find the same solutions) and
/// counting it up (little-endian) until a solution meets the effort: on average `effort`
/// Equi-X solves of a few milliseconds each, and about 2 MB of solver memory.
/// Never fails: there is always a next nonce.
pub fn solve(
    service_id: &[u8; 32],
    seed: &[u8; 32],
    effort: u32,
    mut nonce: [u8; POW_NONCE_LEN],
) -> PowSolution {
    let mut mem = equix::SolverMemory::new();
    let mut seed_head = [0u8; POW_SEED_HEAD_LEN];
    seed_head.copy_from_slice(&seed[..POW_SEED_HEAD_LEN]);
    loop {
        let c = challenge(service_id, seed, &nonce, effort);
        if let Ok(equix) = equix::EquiX::new(&c) {
            for s in equix.solve_with_memory(&mut mem) {
                let solution = s.to_bytes();
                if meets(effort_hash(&c, &solution), effort) {
                    return PowSolution {
                        nonce,
                        effort,
                        seed_head,
                        solution,
                    };
                }
            }
        }
        increment(&mut nonce);
    }
}

fn increment(nonce: &mut [u8; POW_NONCE_LEN]) {
    for b in nonce.iter_mut() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
}

/// Check `proof` against `service_id` and `seed` (§13.9): the seed head, then the effort
/// (one BLAKE3), then the Equi-X solution. A replay cache is the caller's (the same proof
/// verifies every time).
///
/// # Errors
/// [`PowError::WrongSeed`], [`PowError::Effort`], [`PowError::Challenge`] or
/// [`PowError::Solution`], in the order the checks run.
pub fn verify(service_id: &[u8; 32], seed: &[u8; 32], proof: &PowSolution) -> Result<(), PowError> {
    if seed[..POW_SEED_HEAD_LEN] != proof.seed_head {
        return Err(PowError::WrongSeed);
    }
    let c = challenge(service_id, seed, &proof.nonce, proof.effort);
    if !meets(effort_hash(&c, &proof.solution), proof.effort) {
        return Err(PowError::Effort);
    }
    let equix = equix::EquiX::new(&c).map_err(|_| PowError::Challenge)?;
    let solution =
        equix::Solution::try_from_bytes(&proof.solution).map_err(|_| PowError::Solution)?;
    equix.verify(&solution).map_err(|_| PowError::Solution)
}

impl anonnet_error::HasKind for PowError {
    /// A proof of work that does not check came from a client:
    /// [`anonnet_error::ErrorKind::Protocol`].
    fn kind(&self) -> anonnet_error::ErrorKind {
        anonnet_error::ErrorKind::Protocol
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 32] = [0x11; 32];
    const SEED: [u8; 32] = [0x22; 32];

    #[test]
    fn a_solved_proof_verifies_and_any_changed_field_fails() {
        let proof = solve(&ID, &SEED, 8, [0; 16]);
        assert_eq!(proof.effort, 8);
        assert_eq!(proof.seed_head, [0x22; 4]);
        verify(&ID, &SEED, &proof).unwrap();

        let mut other_seed = SEED;
        other_seed[0] ^= 1;
        assert_eq!(verify(&ID, &other_seed, &proof), Err(PowError::WrongSeed));
        // Same head, different seed: the challenge differs.
        let mut tail_seed = SEED;
        tail_seed[31] ^= 1;
        assert!(verify(&ID, &tail_seed, &proof).is_err());
        assert!(verify(&[0x12; 32], &SEED, &proof).is_err());

        let mut p = proof;
        p.nonce[5] ^= 1;
        assert!(verify(&ID, &SEED, &p).is_err());
        let mut p = proof;
        p.effort = 1_000_000_000;
        assert!(
            verify(&ID, &SEED, &p).is_err(),
            "a claimed higher effort fails"
        );
        let mut p = proof;
        p.solution[3] ^= 0x40;
        assert!(verify(&ID, &SEED, &p).is_err());
        let mut p = proof;
        p.seed_head = [0; 4];
        assert_eq!(verify(&ID, &SEED, &p), Err(PowError::WrongSeed));
    }

    #[test]
    fn effort_zero_is_allowed_and_still_needs_a_real_solution() {
        let proof = solve(&ID, &SEED, 0, [7; 16]);
        assert_eq!(proof.effort, 0);
        verify(&ID, &SEED, &proof).unwrap();
        let mut p = proof;
        p.solution = [0; 16];
        assert!(verify(&ID, &SEED, &p).is_err());
    }

    #[test]
    fn the_effort_check_is_r_times_effort_within_32_bits() {
        assert!(meets(u32::MAX, 0));
        assert!(meets(u32::MAX, 1));
        assert!(!meets(u32::MAX, 2));
        assert!(meets(u32::MAX / 2, 2));
        assert!(meets(0, u32::MAX));
        assert!(!meets(2, u32::MAX));
    }

    /// The §13.9 test vector (also checked by docs/vectors/verify_vectors.py).
    #[test]
    fn pow_test_vector() {
        let proof = solve(&ID, &SEED, 8, [0; 16]);
        let mut nonce = [0u8; 16];
        nonce[0] = 10;
        assert_eq!(proof.nonce, nonce);
        let c = challenge(&ID, &SEED, &nonce, 8);
        assert_eq!(
            hex::encode(c),
            concat!(
                "616e6f6e6e657420687320706f77207631001111111111111111111111111111",
                "1111111111111111111111111111111111112222222222222222222222222222",
                "2222222222222222222222222222222222220a00000000000000000000000000",
                "000000000008",
            )
        );
        assert_eq!(
            hex::encode(proof.solution),
            "f62d753ddc07c83fa14e0fafa902d8db"
        );
        assert_eq!(effort_hash(&c, &proof.solution), 0x18eb_11ba);
    }
}
