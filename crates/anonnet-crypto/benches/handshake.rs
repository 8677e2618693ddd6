//! Circuit handshake micro-benchmarks (docs/protocol.md §5): the client's side (ephemeral
//! keys, then checking the reply and deriving keys) and the relay's side, for the ntor
//! handshake (type 1, §5.2) and the hybrid X25519 + ML-KEM-768 one (type 2, §5.4).
//! Handshakes/s = 1 / time per iteration.
//!
//! Run: `cargo bench -p anonnet-crypto --bench handshake`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use anonnet_crypto::handshake::{server_handshake, server_handshake_with_secret};
use anonnet_crypto::hybrid::{server_hybrid_handshake, server_hybrid_handshake_with_seeds};
use anonnet_crypto::{ClientHandshake, HybridClientHandshake, IdentityKey, OnionKey};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn handshake(c: &mut Criterion) {
    let identity = IdentityKey::from_seed(&[5; 32]);
    let node_id = identity.node_id();
    let onion = OnionKey::from_secret(&[6; 32]);
    let x = [7u8; 32];
    let hello = ClientHandshake::start_with_secret(&x, node_id, onion.public()).hello();
    let (reply, _) = server_handshake_with_secret(&[8; 32], node_id, &onion, &hello).unwrap();

    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("client_start_random", |b| {
        b.iter(|| ClientHandshake::start(node_id, onion.public()).unwrap())
    });
    g.bench_function("client_start_and_finish", |b| {
        b.iter(|| {
            let hs = ClientHandshake::start_with_secret(black_box(&x), node_id, onion.public());
            hs.finish(&reply).unwrap()
        })
    });
    g.bench_function("server", |b| {
        b.iter(|| server_handshake(node_id, &onion, black_box(&hello)).unwrap())
    });
    g.finish();
}

fn hybrid(c: &mut Criterion) {
    let identity = IdentityKey::from_seed(&[5; 32]);
    let node_id = identity.node_id();
    let onion = OnionKey::from_secret(&[6; 32]);
    let (x, kem_seed) = ([7u8; 32], [9u8; 64]);
    let hello = HybridClientHandshake::start_with_seeds(&x, &kem_seed, node_id, onion.public())
        .hello_bytes();
    let (reply, _) =
        server_hybrid_handshake_with_seeds(&[8; 32], &[10; 32], node_id, &onion, &hello).unwrap();

    let mut g = c.benchmark_group("hybrid_handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("client_start_random", |b| {
        b.iter(|| HybridClientHandshake::start(node_id, onion.public()).unwrap())
    });
    g.bench_function("client_start_and_finish", |b| {
        b.iter(|| {
            let hs = HybridClientHandshake::start_with_seeds(
                black_box(&x),
                &kem_seed,
                node_id,
                onion.public(),
            );
            hs.finish(&reply).unwrap()
        })
    });
    g.bench_function("server", |b| {
        b.iter(|| server_hybrid_handshake(node_id, &onion, black_box(&hello)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, handshake, hybrid);
criterion_main!(benches);
