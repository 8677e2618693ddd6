//! Routing-table micro-benchmarks (docs/protocol.md §11.4): inserting 1,000 verified
//! contacts into an empty table, re-inserting a known contact, and `closest(target, K)` on
//! the filled table.
//!
//! Run: `cargo bench -p anonnet-dht --bench routing`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use anonnet_crypto::{sign_descriptor, IdentityKey};
use anonnet_dht::{Contact, RoutingTable, K};
use anonnet_wire::RelayDescriptor;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const N: usize = 1000;
const NOW_UNIX: u64 = 1_800_000_000;

fn contact(i: usize) -> Contact {
    let seed = *blake3::hash(&(i as u64).to_le_bytes()).as_bytes();
    let id = IdentityKey::from_seed(&seed);
    let d = RelayDescriptor {
        identity: id.public(),
        onion_key: *blake3::hash(&seed).as_bytes(),
        handshakes: anonnet_wire::HandshakeSet::ALL,
        addresses: vec![std::net::SocketAddr::from((
            [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
            7000,
        ))],
        flags: 0,
        exit_ports: vec![],
        bandwidth: 1_000_000,
        published: NOW_UNIX - 60,
        expires: NOW_UNIX - 60 + 86_400,
    };
    Contact::from_descriptor(&sign_descriptor(&id, &d).unwrap(), NOW_UNIX).unwrap()
}

fn routing(c: &mut Criterion) {
    let own = contact(usize::MAX >> 1).node_id;
    let contacts: Vec<Contact> = (0..N).map(contact).collect();
    let now = Instant::now();
    let mut full = RoutingTable::new(own);
    for ct in &contacts {
        full.insert(ct.clone(), now);
    }
    let targets: Vec<[u8; 32]> = (0..64u64)
        .map(|i| *blake3::hash(&i.to_be_bytes()).as_bytes())
        .collect();

    let mut g = c.benchmark_group("routing_table");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("insert_1000_into_empty", |b| {
        b.iter_batched(
            || (RoutingTable::new(own), contacts.clone()),
            |(mut table, cs)| {
                for ct in cs {
                    black_box(table.insert(ct, now));
                }
                table
            },
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(1));
    let known = contacts[N / 2].clone();
    g.bench_function("reinsert_known", |b| {
        b.iter_batched(
            || known.clone(),
            |ct| black_box(full.insert(ct, now)),
            BatchSize::SmallInput,
        )
    });
    let mut i = 0usize;
    g.bench_function("closest_k_of_full_table", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(full.closest(&targets[i % targets.len()], K))
        })
    });
    g.finish();
    eprintln!("table holds {} of {N} contacts", full.len());
}

criterion_group!(benches, routing);
criterion_main!(benches);
