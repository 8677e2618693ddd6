//! Cell and relay-message codec micro-benchmarks (docs/protocol.md §4, §6): `CREATE`
//! encode/decode and relay messages (`DATA` with a full 1019-byte payload, `BEGIN`) encoded
//! into and decoded from a 1024-byte cell's inner area.
//!
//! Run: `cargo bench -p anonnet-wire --bench codec`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use anonnet_wire::cell::{relay_layout, Create};
use anonnet_wire::{RelayCell, RelayMsg, StreamId, Target, CELL_LEN};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn cells(c: &mut Criterion) {
    let mut g = c.benchmark_group("cell_1024B");
    g.throughput(Throughput::Bytes(CELL_LEN as u64));
    let create = Create {
        cell_len: CELL_LEN as u16,
        node_id: [1; 32],
        onion_key: [2; 32],
        client_pk: [3; 32],
    };
    let encoded = create.encode().unwrap();
    g.bench_function("create_encode", |b| {
        b.iter(|| black_box(&create).encode().unwrap())
    });
    g.bench_function("create_decode", |b| {
        b.iter(|| Create::decode(black_box(&encoded)).unwrap())
    });
    g.finish();
}

fn relay_messages(c: &mut Criterion) {
    let inner_len = CELL_LEN - relay_layout::INNER;
    let mut g = c.benchmark_group("relay_msg_inner_998B");
    g.throughput(Throughput::Bytes(inner_len as u64));
    let payload = Bytes::from(vec![0xab; RelayCell::max_payload(inner_len)]);
    let data = RelayCell::new(StreamId(1), RelayMsg::Data(payload));
    let begin = RelayCell::new(
        StreamId(1),
        RelayMsg::Begin {
            target: Target::Host("example.anon".to_owned()),
            port: 80,
        },
    );
    let mut out = vec![0u8; inner_len];
    g.bench_function("data_encode", |b| {
        b.iter(|| black_box(&data).encode_into(&mut out).unwrap())
    });
    data.encode_into(&mut out).unwrap();
    let data_bytes = Bytes::from(out.clone());
    g.bench_function("data_decode", |b| {
        b.iter(|| RelayCell::decode(black_box(&data_bytes)).unwrap())
    });
    g.bench_function("begin_encode", |b| {
        b.iter(|| black_box(&begin).encode_into(&mut out).unwrap())
    });
    begin.encode_into(&mut out).unwrap();
    let begin_bytes = Bytes::from(out.clone());
    g.bench_function("begin_decode", |b| {
        b.iter(|| RelayCell::decode(black_box(&begin_bytes)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, cells, relay_messages);
criterion_main!(benches);
