//! Consensus size and cost with synthetic relays (docs/protocol.md §14): for 1,000 and
//! 10,000 relays, prints the encoded size of a signed consensus (3 authorities), then
//! measures what one authority does per period (compute the consensus from 3 votes,
//! encode, sign) and what a client does per fetch (decode and verify 2 of 3 signatures).
//!
//! Run: `cargo bench -p anonnet-dir --bench consensus`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;

use anonnet_crypto::IdentityKey;
use anonnet_dir::{
    compute_consensus, AuthorityEntry, Consensus, Network, RelayEntry, RelayFlags, SignedConsensus,
    Vote,
};
use anonnet_wire::PortRange;
use criterion::{criterion_group, criterion_main, Criterion};

fn network() -> (Network, Vec<IdentityKey>) {
    let keys: Vec<IdentityKey> = (1..=3u8)
        .map(|i| IdentityKey::from_seed(&[i; 32]))
        .collect();
    let net = Network::new(
        "bench".into(),
        keys.iter()
            .enumerate()
            .map(|(i, k)| AuthorityEntry {
                name: format!("a{i}"),
                identity: k.public(),
                address: SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)),
            })
            .collect(),
    )
    .unwrap();
    (net, keys)
}

/// `n` relays: a quarter exits with one port range, IPv4 addresses, all Running/Valid.
fn relays(n: usize, salt: u32) -> Vec<RelayEntry> {
    let mut out: Vec<RelayEntry> = (0..n as u32)
        .map(|i| {
            let mut identity = [0u8; 32];
            identity[..4].copy_from_slice(&i.to_be_bytes());
            identity[4] = 0x5a;
            let exit = i % 4 == 0;
            RelayEntry {
                identity,
                onion_key: [(i % 251) as u8; 32],
                handshakes: anonnet_wire::HandshakeSet::ALL,
                address: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 9001)),
                flags: RelayFlags(
                    RelayFlags::RUNNING.0
                        | RelayFlags::VALID.0
                        | if exit { RelayFlags::EXIT.0 } else { 0 },
                ),
                weight: 1_000_000 + (i.wrapping_mul(2654435761) ^ salt) % 9_000_000,
                exit_ports: if exit {
                    vec![PortRange::ALL]
                } else {
                    Vec::new()
                },
            }
        })
        .collect();
    out.sort_by_key(|e| e.identity);
    out
}

fn votes(net: &Network, keys: &[IdentityKey], n: usize) -> Vec<Vote> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| Vote {
            network_id: net.id(),
            authority: k.public(),
            valid_after: 3600,
            fresh_until: 7200,
            valid_until: 14400,
            commit: [i as u8; 32],
            reveal: None,
            relays: relays(n, i as u32),
        })
        .collect()
}

fn signed(net: &Network, keys: &[IdentityKey], c: &Consensus) -> SignedConsensus {
    let body = c.encode_body().unwrap();
    let signatures = keys
        .iter()
        .map(|k| Consensus::sign_body(&body, k))
        .collect();
    let _ = net;
    SignedConsensus { body, signatures }
}

fn consensus(c: &mut Criterion) {
    let (net, keys) = network();
    for n in [1_000usize, 10_000] {
        let v = votes(&net, &keys, n);
        let cons = compute_consensus(&net, &v, None).unwrap();
        let s = signed(&net, &keys, &cons);
        let bytes = s.encode();
        println!(
            "consensus of {n} relays, 3 signatures: {} bytes ({:.1} KiB, {:.1} bytes per relay)",
            bytes.len(),
            bytes.len() as f64 / 1024.0,
            bytes.len() as f64 / n as f64
        );
        let mut g = c.benchmark_group(format!("relays_{n}"));
        g.sample_size(10);
        g.bench_function("authority_compute_encode_sign", |b| {
            b.iter(|| {
                let c = compute_consensus(&net, black_box(&v), None).unwrap();
                let body = c.encode_body().unwrap();
                black_box(Consensus::sign_body(&body, &keys[0]))
            })
        });
        g.bench_function("client_decode_verify", |b| {
            b.iter(|| {
                let s = SignedConsensus::decode(black_box(&bytes)).unwrap();
                black_box(s.verify(&net, 4000).unwrap())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, consensus);
criterion_main!(benches);
