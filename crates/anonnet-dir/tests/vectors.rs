//! The directory test vectors of `docs/protocol.md` §14.10: fixed documents built from fixed
//! keys. Ed25519 signatures are deterministic, so every byte below is fixed; the same hex is
//! printed in the spec and recomputed from the spec's text by `docs/vectors/verify_vectors.py`.
//! A change to any layout, context string or rule of §14 breaks this test on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use anonnet_crypto::{IdentityKey, OnionKey};
use anonnet_dir::document::digest;
use anonnet_dir::srv;
use anonnet_dir::{
    compute_consensus, AuthorityEntry, Consensus, DirMessage, Network, RelayEntry, RelayFlags,
    SignedConsensus, SignedVote, UploadStatus, Vote,
};
use anonnet_wire::{HandshakeSet, PortRange, Writer};

/// Start of the period: a multiple of `L` (500 000 × 3600).
const T: u64 = 1_800_000_000;
/// Period length (seconds).
const L: u64 = 3600;

fn authority_key(i: u8) -> IdentityKey {
    IdentityKey::from_seed(&[i; 32])
}

/// The secret authority `i` derives its reveals from (§14.7).
fn srv_secret(i: u8) -> [u8; 32] {
    [0xa0 + i; 32]
}

fn network() -> Network {
    Network::new(
        "vectors".into(),
        (1..=3u8)
            .map(|i| AuthorityEntry {
                name: format!("a{i}"),
                identity: authority_key(i).public(),
                address: SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(i))),
            })
            .collect(),
    )
    .unwrap()
}

/// Relay A: identity seed 0x11×32 and onion secret 0x22×32 (the keys of §3.3), handshake
/// types 1 and 2, IPv4, an exit for ports 80–443; in the vectors its flags are 0x1f
/// (Running Valid Stable Guard Exit) and its weight 1 000 000.
fn relay_a(flags: u8, weight: u32) -> RelayEntry {
    RelayEntry {
        identity: IdentityKey::from_seed(&[0x11; 32]).public(),
        onion_key: OnionKey::from_secret(&[0x22; 32]).public(),
        handshakes: HandshakeSet::ALL,
        address: SocketAddr::from(([127, 0, 0, 1], 7011)),
        flags: RelayFlags(flags),
        weight,
        exit_ports: vec![PortRange { lo: 80, hi: 443 }],
    }
}

/// Relay B: identity seed 0x12×32, onion secret 0x23×32, handshake type 1 only, IPv6, no
/// exit, Running Valid.
fn relay_b(weight: u32) -> RelayEntry {
    RelayEntry {
        identity: IdentityKey::from_seed(&[0x12; 32]).public(),
        onion_key: OnionKey::from_secret(&[0x23; 32]).public(),
        handshakes: HandshakeSet::NTOR,
        address: "[2001:db8::12]:7012".parse().unwrap(),
        flags: RelayFlags(0x03),
        weight,
        exit_ports: vec![],
    }
}

fn sorted(mut relays: Vec<RelayEntry>) -> Vec<RelayEntry> {
    relays.sort_by_key(|e| e.identity);
    relays
}

/// Authority `i`'s vote for the period starting at `T`: relay A with `flags_a` and weight
/// `wa`, relay B with weight `wb`.
fn vote(i: u8, flags_a: u8, wa: u32, wb: u32) -> Vote {
    Vote {
        network_id: network().id(),
        authority: authority_key(i).public(),
        valid_after: T,
        fresh_until: T + L,
        valid_until: T + 3 * L,
        commit: srv::commit(&srv::reveal(&srv_secret(i), T + L)),
        reveal: Some(srv::reveal(&srv_secret(i), T)),
        relays: sorted(vec![relay_a(flags_a, wa), relay_b(wb)]),
    }
}

fn votes() -> Vec<Vote> {
    vec![
        vote(1, 0x1f, 1_000_000, 20_000),
        vote(2, 0x1f, 900_000, 30_000),
        vote(3, 0x17, 5_000_000, 10_000),
    ]
}

/// Previous SRV (taken as given).
const SRV_PREVIOUS: [u8; 32] = [0x77; 32];
/// The hidden-service SRVs of the day of `T` and the day before (§14.7), as the previous
/// consensus carries them.
const HS_SRV_CURRENT: [u8; 32] = [0x66; 32];
const HS_SRV_PREVIOUS: [u8; 32] = [0x55; 32];

fn prior_commits() -> Vec<([u8; 32], [u8; 32])> {
    let mut c: Vec<_> = (1..=3u8)
        .map(|i| {
            (
                authority_key(i).public(),
                srv::commit(&srv::reveal(&srv_secret(i), T)),
            )
        })
        .collect();
    c.sort_unstable();
    c
}

fn reveals() -> Vec<([u8; 32], [u8; 32])> {
    (1..=3u8)
        .map(|i| (authority_key(i).public(), srv::reveal(&srv_secret(i), T)))
        .collect()
}

/// The consensus of the period before, as far as §14.7 needs it.
fn previous_consensus() -> Consensus {
    Consensus {
        network_id: network().id(),
        valid_after: T - L,
        fresh_until: T,
        valid_until: T + 2 * L,
        srv_current: SRV_PREVIOUS,
        srv_previous: [0; 32],
        hs_srv_current: HS_SRV_CURRENT,
        hs_srv_previous: HS_SRV_PREVIOUS,
        commits: prior_commits(),
        relays: vec![],
    }
}

/// The consensus for the period starting at `T`, written out field by field.
fn consensus() -> Consensus {
    let mut commits: Vec<_> = (1..=3u8)
        .map(|i| {
            (
                authority_key(i).public(),
                srv::commit(&srv::reveal(&srv_secret(i), T + L)),
            )
        })
        .collect();
    commits.sort_unstable();
    Consensus {
        network_id: network().id(),
        valid_after: T,
        fresh_until: T + L,
        valid_until: T + 3 * L,
        srv_current: srv::shared_random_value(T, &SRV_PREVIOUS, &prior_commits(), &reveals(), 2),
        srv_previous: SRV_PREVIOUS,
        // T and T - L fall on the same UTC day: the day's values are carried (§14.7).
        hs_srv_current: HS_SRV_CURRENT,
        hs_srv_previous: HS_SRV_PREVIOUS,
        commits,
        relays: sorted(vec![relay_a(0x1f, 1_000_000), relay_b(20_000)]),
    }
}

fn entry_bytes(e: &RelayEntry) -> Vec<u8> {
    let mut w = Writer::new();
    e.encode(&mut w).unwrap();
    w.into_vec()
}

fn check(name: &str, got: &[u8], expected: &str) {
    assert_eq!(hex::encode(got), expected, "{name}");
}

// The expected values, exactly as printed in docs/protocol.md §14.10.

const NETWORK_ID: &str = "0ce1f985dcfb757cb0c97d0d29246c509d0aa1d4d42d03031899838f3703e09f";
const AUTHORITY_1: &str = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";
const AUTHORITY_2: &str = "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394";
const AUTHORITY_3: &str = "ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1";
const ENTRY_A: &str = concat!(
    "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737",
    "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20",
    "03047f0000011b631f000f424001005001bb",
);
const ENTRY_B: &str = concat!(
    "204040e364c10f2bec9c1fe500a1cd4c247c89d650a01ed7e82caba867877c21",
    "9a4503a98ab10fe8d354c9c42cbd0c9d7944f52e7d14d8ea59775e7dc9e3bf4b",
    "010620010db80000000000000000000000121b640300004e2000",
);
const REVEAL_1: &str = "099890d6bebda2ff23cc3447c046e0e4c50def374930e8968533f73e32d867ba";
const COMMIT_1_T: &str = "8a01cea990ceff4de2f034b55cf140636c1fbc5c29b7c1d0ed4f885cd8f1a549";
const COMMIT_1_NEXT: &str = "e77a29d3d7dfe10bb3f47dfc701399ec56ad540a664119d7059ea19cf8587a24";
const SRV_CURRENT: &str = "03487fd8574b491b357e18940cb618e0cb002d6e32bad29a720c6029e994beb1";
const SRV_DISASTER: &str = "a60ff3c4475cdb4a1e4816932734fb05724fcb8d83b1d15f8a9fbfda8a54b5dc";
const VOTE_BODY: &str = concat!(
    "020ce1f985dcfb757cb0c97d0d29246c509d0aa1d4d42d03031899838f3703e0",
    "9f8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f",
    "5c000000006b49d200000000006b49e010000000006b49fc30e77a29d3d7dfe1",
    "0bb3f47dfc701399ec56ad540a664119d7059ea19cf8587a2401099890d6bebd",
    "a2ff23cc3447c046e0e4c50def374930e8968533f73e32d867ba000000022040",
    "40e364c10f2bec9c1fe500a1cd4c247c89d650a01ed7e82caba867877c219a45",
    "03a98ab10fe8d354c9c42cbd0c9d7944f52e7d14d8ea59775e7dc9e3bf4b0106",
    "20010db80000000000000000000000121b640300004e2000d04ab232742bb4ab",
    "3a1368bd4615e4e6d0224ab71a016baf8520a332c97787370faa684ed28867b9",
    "7f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f2003047f0000011b63",
    "1f000f424001005001bb",
);
const VOTE_SIGNATURE: &str = concat!(
    "1bb9a438762a2f8f92826acbb31a35b8ee94121c20f790706ead43efe3856a8d",
    "1039f75d1441b9d74f974757244536903c8c2aeaeb7b8aaa5c903e025fe07409",
);
const SIGNED_VOTE_BLAKE3: &str = "4d176a146c5fc3c108ad90af94a1ba4732b77ae9d09f874866cbff7c2bb3ad07";
const CONSENSUS_BODY: &str = concat!(
    "020ce1f985dcfb757cb0c97d0d29246c509d0aa1d4d42d03031899838f3703e0",
    "9f000000006b49d200000000006b49e010000000006b49fc3003487fd8574b49",
    "1b357e18940cb618e0cb002d6e32bad29a720c6029e994beb177777777777777",
    "7777777777777777777777777777777777777777777777777766666666666666",
    "6666666666666666666666666666666666666666666666666655555555555555",
    "55555555555555555555555555555555555555555555555555038139770ea87d",
    "175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394681fe8a6c41e",
    "5f2e8b4abb07236915fcec5a0b189d8e7476fe0d8ad4c8f38b458a88e3dd7409",
    "f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5ce77a29d3d7df",
    "e10bb3f47dfc701399ec56ad540a664119d7059ea19cf8587a24ed4928c628d1",
    "c2c6eae90338905995612959273a5c63f93636c14614ac8737d1de8198b5f306",
    "5f95bc05b861f7ba4abed5c97a512cdd5c80c7d36cbbbc3e3d4d000000022040",
    "40e364c10f2bec9c1fe500a1cd4c247c89d650a01ed7e82caba867877c219a45",
    "03a98ab10fe8d354c9c42cbd0c9d7944f52e7d14d8ea59775e7dc9e3bf4b0106",
    "20010db80000000000000000000000121b640300004e2000d04ab232742bb4ab",
    "3a1368bd4615e4e6d0224ab71a016baf8520a332c97787370faa684ed28867b9",
    "7f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f2003047f0000011b63",
    "1f000f424001005001bb",
);
const DIGEST: &str = "4011f4bed8119055068162e70359ffab7e1f2c1ab0552c5d0337ba520132bd96";
const CONSENSUS_SIGNATURE_1: &str = concat!(
    "9c8ede9e8ba79f687d9c6e8d5212b297067781f542b93d7722840f6b35ad38a7",
    "79b5205fd726934afc2939957c513f6e0b92a3e082e5dc4afe82a14ccb7a2703",
);
const CONSENSUS_SIGNATURE_2: &str = concat!(
    "ec58a66c10910fe779ee4ee98badbf12f07d6624f9f2423bdef0e434c0722bed",
    "f2ea12d891a7b63a9cec0102f2e713ac77bbf2ec44c02a8e1654c4a3129f0200",
);
const SIGNED_CONSENSUS_BLAKE3: &str =
    "5d72670941768d6a4ae8e568a6d51f6a78db0193ee4f497e99875088dfdc479d";

#[test]
fn network_id_and_authority_keys() {
    let net = network();
    check("network id", &net.id(), NETWORK_ID);
    for (i, want) in [(1, AUTHORITY_1), (2, AUTHORITY_2), (3, AUTHORITY_3)] {
        check("authority identity", &authority_key(i).public(), want);
    }
    assert_eq!(net.majority(), 2);
}

#[test]
fn relay_entries() {
    let a = entry_bytes(&relay_a(0x1f, 1_000_000));
    let b = entry_bytes(&relay_b(20_000));
    assert_eq!(a.len(), 82, "IPv4, one exit range");
    assert_eq!(b.len(), 90, "IPv6, no exit range");
    check("entry A", &a, ENTRY_A);
    check("entry B", &b, ENTRY_B);
    let mut r = anonnet_wire::Reader::new(&a);
    assert_eq!(
        RelayEntry::decode(&mut r).unwrap(),
        relay_a(0x1f, 1_000_000)
    );
    r.finish().unwrap();
}

#[test]
fn commit_reveal_and_shared_random_value() {
    let r1 = srv::reveal(&srv_secret(1), T);
    check("reveal of authority 1 for T", &r1, REVEAL_1);
    check(
        "commit to it (made in the period before)",
        &srv::commit(&r1),
        COMMIT_1_T,
    );
    check(
        "commit of authority 1 for T + L",
        &srv::commit(&srv::reveal(&srv_secret(1), T + L)),
        COMMIT_1_NEXT,
    );
    let srv_all = srv::shared_random_value(T, &SRV_PREVIOUS, &prior_commits(), &reveals(), 2);
    check("SRV, three valid reveals", &srv_all, SRV_CURRENT);
    // Two of three reveals still make a majority, and give another value.
    let two = srv::shared_random_value(T, &SRV_PREVIOUS, &prior_commits(), &reveals()[..2], 2);
    assert_ne!(two, srv_all);
    // One valid reveal is too few: the disaster value, whatever was revealed.
    let one = srv::shared_random_value(T, &SRV_PREVIOUS, &prior_commits(), &reveals()[..1], 2);
    check("SRV, disaster", &one, SRV_DISASTER);
    assert_eq!(
        one,
        srv::shared_random_value(T, &SRV_PREVIOUS, &prior_commits(), &[], 2)
    );
}

#[test]
fn vote_of_authority_1() {
    let net = network();
    let v = vote(1, 0x1f, 1_000_000, 20_000);
    let signed = v.sign(&authority_key(1)).unwrap();
    assert_eq!(signed.body.len(), 330);
    check("vote body", &signed.body, VOTE_BODY);
    check("vote signature", &signed.signature, VOTE_SIGNATURE);
    let bytes = signed.encode();
    assert_eq!(bytes.len(), 398);
    assert_eq!(
        hex::encode(&bytes),
        format!("0000014a{VOTE_BODY}{VOTE_SIGNATURE}")
    );
    check("BLAKE3(signed vote)", &digest(&bytes), SIGNED_VOTE_BLAKE3);
    assert_eq!(SignedVote::decode(&bytes).unwrap().verify(&net).unwrap(), v);
}

#[test]
fn consensus_signed_by_authorities_1_and_2() {
    let net = network();
    let c = consensus();
    check("SRV in the consensus", &c.srv_current, SRV_CURRENT);
    let body = c.encode_body().unwrap();
    assert_eq!(body.len(), 554);
    check("consensus body", &body, CONSENSUS_BODY);
    check("digest", &digest(&body), DIGEST);
    let s1 = Consensus::sign_body(&body, &authority_key(1));
    let s2 = Consensus::sign_body(&body, &authority_key(2));
    check(
        "signature of authority 1",
        &s1.signature,
        CONSENSUS_SIGNATURE_1,
    );
    check(
        "signature of authority 2",
        &s2.signature,
        CONSENSUS_SIGNATURE_2,
    );
    let signed = SignedConsensus {
        body,
        signatures: vec![s1, s2],
    };
    let bytes = signed.encode();
    assert_eq!(bytes.len(), 751);
    assert_eq!(
        hex::encode(&bytes),
        format!(
            "0000022a{CONSENSUS_BODY}02{AUTHORITY_1}{CONSENSUS_SIGNATURE_1}\
             {AUTHORITY_2}{CONSENSUS_SIGNATURE_2}"
        )
    );
    check(
        "BLAKE3(signed consensus)",
        &digest(&bytes),
        SIGNED_CONSENSUS_BLAKE3,
    );

    // The client's checks (§14.6): two of three signatures, inside the window.
    let back = SignedConsensus::decode(&bytes).unwrap();
    assert_eq!(back.digest(), digest(&back.body));
    assert_eq!(back.verify(&net, T).unwrap(), c);
    assert!(back.verify(&net, T - 300).is_ok());
    assert!(back.verify(&net, T - 301).is_err());
    assert!(back.verify(&net, T + 3 * L - 1).is_ok());
    assert!(back.verify(&net, T + 3 * L).is_err());
    let one = SignedConsensus {
        body: back.body.clone(),
        signatures: vec![back.signatures[0]],
    };
    assert!(one.verify(&net, T).is_err());
}

#[test]
fn the_consensus_vector_is_what_the_three_votes_give() {
    let computed = compute_consensus(&network(), &votes(), Some(&previous_consensus())).unwrap();
    assert_eq!(computed, consensus());
    // Relay A: weights 1 000 000, 900 000, 5 000 000 → low median 1 000 000; Guard set by
    // two of three votes. Relay B: 20 000, 30 000, 10 000 → 20 000.
    let a = computed
        .relays
        .iter()
        .find(|e| e.identity == relay_a(0, 0).identity)
        .unwrap();
    assert_eq!(a.weight, 1_000_000);
    assert!(a.flags.contains(RelayFlags::GUARD));
}

#[test]
fn directory_messages() {
    let enc = |m: DirMessage| hex::encode(m.encode().unwrap());
    assert_eq!(enc(DirMessage::GetConsensus), "03");
    assert_eq!(enc(DirMessage::Consensus(None)), "0400");
    assert_eq!(enc(DirMessage::GetVote(T)), "07000000006b49d200");
    assert_eq!(
        enc(DirMessage::Uploaded {
            status: UploadStatus::NotReachable,
            reason: "timed out".into(),
        }),
        "02010974696d6564206f7574"
    );
    let body = consensus().encode_body().unwrap();
    let signature = Consensus::sign_body(&body, &authority_key(1));
    assert_eq!(
        enc(DirMessage::PostSignature {
            digest: digest(&body),
            signature,
        }),
        format!("09{DIGEST}{AUTHORITY_1}{CONSENSUS_SIGNATURE_1}")
    );
}
