//! Directory documents (`docs/protocol.md` §14.3–§14.6): the signed consensus every client
//! and relay fetches from a directory cache, and the signed votes authorities push to each
//! other.
//!
//! Ways in, none may panic:
//! 1. `SignedConsensus::decode` and `SignedVote::decode` (whatever decodes re-encodes to
//!    exactly the input, and decodes back to itself); their `verify` against a fixed
//!    3-authority network (`IdentityKey::from_seed(&[1; 32])`, `[2; 32]`, `[3; 32]`, the
//!    network `make_seeds` signs the seeds for) — the outcome is predicted from the decoded
//!    body, the network id and the signer, and must match;
//! 2. `Consensus::decode_body` and `Vote::decode_body` on the input and on the body of a
//!    decoded signed document (round trip through `encode_body`), `RelayEntry::decode` on
//!    the input (the consumed prefix round-trips);
//! 3. every consensus body that decodes is re-signed by the fixed authorities (two valid
//!    signatures among an outsider's, a repeated and a forged one) and verified at the
//!    edges of its validity window; every vote body that decodes is re-signed by its
//!    authority when that is one of the three (with a good and a forged signature). So the
//!    checks after the signatures are reached although the fuzzer cannot sign. Two copies
//!    of a decoded vote (by two authorities) go through `compute_consensus`, whose result
//!    must encode and decode back.
#![no_main]

use std::sync::OnceLock;

use anonnet_crypto::IdentityKey;
use anonnet_dir::network::AuthorityEntry;
use anonnet_dir::{
    compute_consensus, Consensus, DirError, Network, RelayEntry, SignedConsensus, SignedVote, Vote,
    MAX_CLOCK_SKEW,
};
use anonnet_wire::{Reader, Writer};
use libfuzzer_sys::fuzz_target;

/// Inside the validity window of the seed consensus (`make_seeds`).
const NOW: u64 = 1_700_000_000;

struct Fixture {
    keys: [IdentityKey; 3],
    outsider: IdentityKey,
    network: Network,
    id: [u8; 32],
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys = [1u8, 2, 3].map(|i| IdentityKey::from_seed(&[i; 32]));
        let authorities = keys
            .iter()
            .enumerate()
            .map(|(i, k)| AuthorityEntry {
                name: format!("auth{}", i + 1),
                identity: k.public(),
                address: ([127, 0, 0, 1], 7100 + i as u16).into(),
            })
            .collect();
        let network = Network::new("fuzz".into(), authorities).expect("a valid network");
        let id = network.id();
        Fixture {
            keys,
            outsider: IdentityKey::from_seed(&[0x99; 32]),
            network,
            id,
        }
    })
}

/// `SignedConsensus::verify` at `now` must agree with `verify_signed` and the window.
fn check_consensus_verify(s: &SignedConsensus, now: u64) {
    let f = fixture();
    let signed = s.verify_signed(&f.network);
    match &signed {
        Ok(c) => {
            assert_eq!(Consensus::decode_body(&s.body).as_ref(), Ok(c));
            assert_eq!(c.network_id, f.id);
        }
        Err(DirError::Wire(e)) => {
            assert_eq!(Consensus::decode_body(&s.body).as_ref().err(), Some(e));
        }
        Err(DirError::WrongNetwork) => {
            assert_ne!(
                Consensus::decode_body(&s.body).expect("decodes").network_id,
                f.id
            );
        }
        Err(DirError::TooFewSignatures { valid, authorities }) => {
            assert!(
                *valid < f.network.majority(),
                "{valid} valid signatures refused"
            );
            assert_eq!(*authorities, 3);
        }
        Err(e) => panic!("verify_signed gave an unexpected error: {e:?}"),
    }
    let in_window =
        |c: &Consensus| now.saturating_add(MAX_CLOCK_SKEW) >= c.valid_after && now < c.valid_until;
    match (s.verify(&f.network, now), signed) {
        (Ok(c), Ok(expected)) => {
            assert_eq!(c, expected);
            assert!(in_window(&c), "accepted outside its window at {now}: {c:?}");
        }
        (
            Err(DirError::NotValidNow {
                now: n,
                valid_after,
                valid_until,
            }),
            Ok(c),
        ) => {
            assert_eq!(
                (n, valid_after, valid_until),
                (now, c.valid_after, c.valid_until)
            );
            assert!(!in_window(&c), "refused inside its window at {now}: {c:?}");
        }
        (Err(e), Err(expected)) => assert_eq!(e, expected),
        (got, expected) => panic!("verify gave {got:?}, verify_signed {expected:?}"),
    }
}

/// A consensus body that decoded: sign it ourselves and walk `verify` through its window.
fn resign_consensus(body: &[u8], c: &Consensus) {
    let f = fixture();
    let [k1, k2, k3] = &f.keys;
    let sig = |k: &IdentityKey| Consensus::sign_body(body, k);
    let mut forged = sig(k3);
    forged.signature[0] ^= 1;
    // Valid: k1 and k2. Not counted: the outsider, k1 again, k3's forged signature.
    let s = SignedConsensus {
        body: body.to_vec(),
        signatures: vec![sig(k1), sig(&f.outsider), sig(k1), forged, sig(k2)],
    };
    let bytes = s.encode();
    assert_eq!(SignedConsensus::decode(&bytes).as_ref(), Ok(&s));
    assert_eq!(s.valid_signers(&f.network), vec![k1.public(), k2.public()]);
    let right_network = c.network_id == f.id;
    let earliest = c.valid_after.saturating_sub(MAX_CLOCK_SKEW);
    let mut times = vec![earliest, c.valid_until.saturating_sub(1), c.valid_until];
    if earliest > 0 {
        times.push(earliest - 1);
    }
    for now in times {
        let inside = now.saturating_add(MAX_CLOCK_SKEW) >= c.valid_after && now < c.valid_until;
        match s.verify(&f.network, now) {
            Ok(got) => {
                assert!(right_network && inside, "accepted at {now}: {c:?}");
                assert_eq!(&got, c);
            }
            Err(DirError::WrongNetwork) => assert!(!right_network),
            Err(DirError::NotValidNow { .. }) => assert!(right_network && !inside),
            Err(e) => panic!("re-signed consensus refused at {now}: {e:?} ({c:?})"),
        }
    }
    // One valid signature is not a majority of three.
    let few = SignedConsensus {
        body: body.to_vec(),
        signatures: vec![sig(k2), forged, sig(k2)],
    };
    let expected = if right_network {
        DirError::TooFewSignatures {
            valid: 1,
            authorities: 3,
        }
    } else {
        DirError::WrongNetwork
    };
    assert_eq!(few.verify_signed(&f.network), Err(expected));
}

fn check_consensus_body(body: &[u8]) {
    if let Ok(c) = Consensus::decode_body(body) {
        let again = c
            .encode_body()
            .expect("a decoded consensus body re-encodes");
        assert_eq!(again, body, "consensus body does not round-trip: {c:?}");
        assert_eq!(Consensus::decode_body(&again).as_ref(), Ok(&c));
        for e in &c.relays {
            let _ = e.to_verified(c.valid_after, c.valid_until);
        }
        resign_consensus(body, &c);
    }
}

/// `SignedVote::verify`, predicted from the decoded body.
fn check_vote_verify(s: &SignedVote) {
    let f = fixture();
    let got = s.verify(&f.network);
    let v = match Vote::decode_body(&s.body) {
        Ok(v) => v,
        Err(e) => {
            assert_eq!(got, Err(DirError::Wire(e)));
            return;
        }
    };
    let who = v
        .authority
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    match got {
        Ok(back) => {
            assert_eq!(back, v);
            assert_eq!(v.network_id, f.id);
            assert!(f.network.authority(&v.authority).is_some());
        }
        Err(DirError::WrongNetwork) => assert_ne!(v.network_id, f.id),
        Err(DirError::UnknownAuthority(a)) => {
            assert_eq!(v.network_id, f.id);
            assert!(f.network.authority(&v.authority).is_none());
            assert_eq!(a, who);
        }
        Err(DirError::BadSignature(a)) => {
            assert_eq!(v.network_id, f.id);
            assert!(f.network.authority(&v.authority).is_some());
            assert_eq!(a, who);
        }
        Err(e) => panic!("vote verify gave an unexpected error: {e:?}"),
    }
}

/// A vote body that decoded: sign it as its authority (when we hold that key) and verify;
/// feed it to `compute_consensus`.
fn resign_vote(body: &[u8], v: &Vote) {
    let f = fixture();
    let right_network = v.network_id == f.id;
    match f.keys.iter().find(|k| k.public() == v.authority) {
        Some(key) => {
            let s = v.sign(key).expect("a decoded vote signs");
            assert_eq!(s.body, body, "Vote::sign re-encodes another body");
            assert_eq!(SignedVote::decode(&s.encode()).as_ref(), Ok(&s));
            let expected = if right_network {
                Ok(v.clone())
            } else {
                Err(DirError::WrongNetwork)
            };
            assert_eq!(s.verify(&f.network), expected);
            let mut forged = s;
            forged.signature[63] ^= 0x10;
            let refused = forged
                .verify(&f.network)
                .expect_err("a forged vote is refused");
            assert!(
                matches!(
                    (&refused, right_network),
                    (DirError::BadSignature(_), true) | (DirError::WrongNetwork, false)
                ),
                "{refused:?}"
            );
        }
        None => {
            assert!(
                v.sign(&f.keys[0]).is_err(),
                "signed by a key that is not its authority"
            );
            let s = SignedVote {
                body: body.to_vec(),
                signature: [0; 64],
            };
            let refused = s
                .verify(&f.network)
                .expect_err("a stranger's vote is refused");
            assert!(
                matches!(
                    (&refused, right_network),
                    (DirError::UnknownAuthority(_), true) | (DirError::WrongNetwork, false)
                ),
                "{refused:?}"
            );
        }
    }

    // The same vote from two authorities of the network: a majority, so every relay it
    // lists is in the consensus, which must be encodable.
    let mut votes = [v.clone(), v.clone()];
    votes[0].network_id = f.id;
    votes[0].authority = f.keys[0].public();
    votes[1].network_id = f.id;
    votes[1].authority = f.keys[1].public();
    let c = compute_consensus(&f.network, &votes, None).expect("two agreeing votes");
    assert_eq!(c.relays, v.relays, "two identical votes give their relays");
    let body = c.encode_body().expect("a computed consensus encodes");
    assert_eq!(Consensus::decode_body(&body), Ok(c));
}

fn check_vote_body(body: &[u8]) {
    if let Ok(v) = Vote::decode_body(body) {
        let again = v.encode_body().expect("a decoded vote body re-encodes");
        assert_eq!(again, body, "vote body does not round-trip: {v:?}");
        assert_eq!(Vote::decode_body(&again).as_ref(), Ok(&v));
        resign_vote(body, &v);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = SignedConsensus::decode(data) {
        let again = s.encode();
        assert_eq!(again, data, "signed consensus does not round-trip: {s:?}");
        assert_eq!(SignedConsensus::decode(&again).as_ref(), Ok(&s));
        check_consensus_verify(&s, NOW);
        if let Some(tail) = data.last_chunk::<8>() {
            check_consensus_verify(&s, u64::from_be_bytes(*tail));
        }
        check_consensus_body(&s.body);
    }
    if let Ok(s) = SignedVote::decode(data) {
        let again = s.encode();
        assert_eq!(again, data, "signed vote does not round-trip: {s:?}");
        assert_eq!(SignedVote::decode(&again).as_ref(), Ok(&s));
        check_vote_verify(&s);
        check_vote_body(&s.body);
    }
    check_consensus_body(data);
    check_vote_body(data);

    let mut r = Reader::new(data);
    if let Ok(e) = RelayEntry::decode(&mut r) {
        let mut w = Writer::new();
        e.encode(&mut w).expect("a decoded entry re-encodes");
        assert_eq!(w.as_slice(), &data[..data.len() - r.remaining()]);
        let _ = e.to_verified(NOW, NOW + 3600);
    }
});
