//! Hidden-service proof of work (docs/protocol.md §13.9): what a client pays to solve at a
//! given effort (on average `effort` Equi-X solves) and what a service pays to verify one
//! introduction's solution. A cold connect to a service that suggests effort `E` costs
//! about the cold connect without it plus `solve/E` (the client solves while its
//! rendezvous point is set up, so the two overlap).
//!
//! Run: `cargo bench -p anonnet-crypto --bench hs_pow`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use anonnet_crypto::hs_pow::{solve, verify};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn hs_pow(c: &mut Criterion) {
    let service = [0x61u8; 32];
    let seed = [0x33u8; 32];
    let mut g = c.benchmark_group("hs_pow");
    g.sample_size(10);
    for effort in [1u32, 10, 100] {
        let mut n = 0u64;
        g.bench_with_input(BenchmarkId::new("solve", effort), &effort, |b, &effort| {
            b.iter(|| {
                // A new nonce per iteration: each sample is an independent search.
                n += 1;
                let mut nonce = [0u8; 16];
                nonce[..8].copy_from_slice(&n.to_le_bytes());
                solve(&service, &seed, black_box(effort), nonce)
            })
        });
    }
    let proof = solve(&service, &seed, 10, [7; 16]);
    g.bench_function("verify", |b| {
        b.iter(|| verify(&service, &seed, black_box(&proof)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, hs_pow);
criterion_main!(benches);
