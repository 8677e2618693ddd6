//! Onion-layer micro-benchmarks on 1024-byte cells (docs/protocol.md §7, version 2): one hop's layer,
//! the client's three layers, and the whole forward and backward paths of a 3-hop circuit
//! (client plus three relays, all in this one thread). Throughput is per cell of
//! [`CELL_LEN`] bytes: cells/s = 1 / time per iteration.
//!
//! Run: `cargo bench -p anonnet-crypto --bench onion`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use anonnet_crypto::onion::forward_buffer_len;
use anonnet_crypto::{ClientOnion, HopKeys, LayerOpener, LayerSealer, RelayOnion};
use anonnet_wire::cell::relay_layout;
use anonnet_wire::{BACKWARD_MESSAGE_MAX, CELL_LEN, FORWARD_MESSAGE_MAX};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn keys(i: u8) -> HopKeys {
    HopKeys {
        forward: [i; 32],
        backward: [i.wrapping_add(100); 32],
    }
}

fn layer(c: &mut Criterion) {
    let mut g = c.benchmark_group("layer_1024B");
    g.throughput(Throughput::Bytes(CELL_LEN as u64));
    let mut sealer = LayerSealer::new(&[1; 32]);
    let mut cell = vec![0u8; CELL_LEN];
    g.bench_function("seal_one_hop", |b| {
        b.iter(|| sealer.seal(black_box(&mut cell[1..])).unwrap())
    });
    // Opening needs the next sequence number, so each iteration seals then opens: the
    // cost of `open` alone is this figure minus `seal_one_hop`.
    let mut sealer = LayerSealer::new(&[2; 32]);
    let mut opener = LayerOpener::new(&[2; 32]);
    g.bench_function("seal_then_open_one_hop", |b| {
        b.iter(|| {
            sealer.seal(&mut cell[1..]).unwrap();
            opener.open(black_box(&mut cell[1..])).unwrap();
        })
    });
    g.finish();
}

fn circuit(c: &mut Criterion) {
    let mut g = c.benchmark_group("onion_3hops_1024B");
    g.throughput(Throughput::Bytes(CELL_LEN as u64));
    let mut client = ClientOnion::new();
    let mut relays: Vec<RelayOnion> = (1..=3).map(|i| RelayOnion::new(&keys(i))).collect();
    for i in 1..=3 {
        client.push_hop(&keys(i));
    }
    let (mut fwd, mut bwd) = client.split();
    let full = FORWARD_MESSAGE_MAX;
    let mut buf = vec![0u8; forward_buffer_len(2)];

    // Client only: filler and three nested seals for the exit (hop 2), a full message.
    let mut lone = ClientOnion::new();
    for i in 1..=3 {
        lone.push_hop(&keys(i));
    }
    let (mut lone_fwd, _) = lone.split();
    g.bench_function("client_seal_3_layers", |b| {
        b.iter(|| lone_fwd.seal_forward(black_box(&mut buf), 2, full).unwrap())
    });

    // Forward path: the client seals 3 layers, each relay opens its own and re-pads the
    // cell in place (one 1024-byte cell all the way).
    g.bench_function("forward_path_client_and_3_relays", |b| {
        b.iter(|| {
            fwd.seal_forward(&mut buf, 2, full).unwrap();
            let cell = &mut buf[..CELL_LEN];
            for relay in relays.iter_mut() {
                black_box(relay.forward.open_forward(cell).unwrap());
            }
        })
    });

    // Backward path: the exit originates a full message, the middle and guard wrap it,
    // the client unwraps three times and opens the exit's layer.
    let mut cell = vec![0u8; CELL_LEN];
    g.bench_function("backward_path_3_relays_and_client", |b| {
        b.iter(|| {
            relays[2]
                .backward
                .originate(&mut cell, BACKWARD_MESSAGE_MAX)
                .unwrap();
            relays[1].backward.wrap(&mut cell).unwrap();
            relays[0].backward.wrap(&mut cell).unwrap();
            let (hop, range, _) = bwd.open_backward(black_box(&mut cell)).unwrap();
            assert_eq!((hop, range.start), (2, relay_layout::INNER));
        })
    });
    g.finish();
}

criterion_group!(benches, layer, circuit);
criterion_main!(benches);
