//! A relay keeps the DHT records it stores across restarts (`docs/protocol.md` §11.7.1):
//! `dht-records` in its data directory is loaded at start, every record checked again as a
//! `STORE` is (a forged one is dropped), and a file that does not parse is moved aside to
//! `dht-records.bad` without stopping the relay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anonnet_crypto::{sign_descriptor, IdentityKey};
use anonnet_dht::storage::PERSISTED_MAGIC;
use anonnet_relay::{Relay, DHT_RECORDS_FILE};
use anonnet_wire::dht::Record;
use anonnet_wire::{HandshakeSet, RelayDescriptor};

mod common;

async fn start(dir: &Path) -> Relay {
    Relay::start(common::relay_config(dir)).await.unwrap()
}

/// A relay-descriptor record of the relay with identity seed `seed`, and its DHT key.
fn record(seed: u8) -> ([u8; 32], Record) {
    let id = IdentityKey::from_seed(&[seed; 32]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let d = RelayDescriptor {
        identity: id.public(),
        onion_key: [7; 32],
        handshakes: HandshakeSet::ALL,
        addresses: vec!["10.1.2.3:7000".parse().unwrap()],
        flags: 0,
        exit_ports: vec![],
        bandwidth: 1000,
        published: now - 100,
        expires: now + 86_000,
    };
    let signed = sign_descriptor(&id, &d).unwrap();
    (
        anonnet_dht::descriptor_key(&id.node_id()),
        Record::relay_descriptor(&signed).unwrap(),
    )
}

/// The file of §11.7.1 holding `entries`, each attributed to peer `[9; 32]`.
fn records_file(entries: &[([u8; 32], Record)]) -> Vec<u8> {
    let mut out = PERSISTED_MAGIC.to_vec();
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (key, r) in entries {
        out.extend_from_slice(key);
        out.extend_from_slice(&[9; 32]);
        out.push(r.kind.to_byte());
        out.extend_from_slice(&(r.body.len() as u16).to_be_bytes());
        out.extend_from_slice(&r.body);
    }
    out
}

/// `dht.records` of the relay's `stats.json`, once it is there (at most 5 s).
async fn stored_records(dir: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(n) = std::fs::read(dir.join("stats.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["dht"]["records"].as_u64())
        {
            return n;
        }
        assert!(Instant::now() < deadline, "no stats.json within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn relay_loads_its_stored_records_and_drops_forged_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let good = record(1);
    let (_, mut forged) = record(2);
    let last = forged.body.len() - 1;
    forged.body[last] ^= 1;
    let forged_key = record(2).0;
    std::fs::write(
        tmp.path().join(DHT_RECORDS_FILE),
        records_file(&[good.clone(), (forged_key, forged)]),
    )
    .unwrap();
    let relay = start(tmp.path()).await;
    assert_eq!(stored_records(tmp.path()).await, 1, "the good record only");
    relay.shutdown_gracefully(Duration::from_secs(2)).await;
    // At a clean stop the store is written again: the forged record is gone from it.
    let bytes = std::fs::read(tmp.path().join(DHT_RECORDS_FILE)).unwrap();
    let entries = anonnet_dht::storage::decode_persisted(&bytes).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].record, good.1);
    assert_eq!(entries[0].from.0, [9; 32], "still attributed to its peer");
}

#[tokio::test]
async fn a_corrupt_records_file_is_set_aside_and_the_relay_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut truncated = records_file(&[record(1)]);
    truncated.truncate(truncated.len() - 10);
    std::fs::write(tmp.path().join(DHT_RECORDS_FILE), &truncated).unwrap();
    let relay = start(tmp.path()).await;
    assert_eq!(stored_records(tmp.path()).await, 0);
    let aside = tmp.path().join(format!("{DHT_RECORDS_FILE}.bad"));
    assert_eq!(std::fs::read(aside).unwrap(), truncated, "kept for a look");
    relay.shutdown_gracefully(Duration::from_secs(2)).await;
}
