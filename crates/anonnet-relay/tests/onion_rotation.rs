//! Onion key rotation on a real relay over QUIC (`docs/protocol.md` §2, §5.2): a relay whose
//! onion key is due rotates it at start, advertises the new key, still answers `CREATE`s
//! naming the previous key during its grace, and refuses them once the grace has ended.
//! Key ages are set by rewriting `onion.key.times` while the relay is stopped, so nothing
//! here waits for a timer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anonnet_crypto::ServerReply;
use anonnet_relay::keystore::{ONION_OLD_FILE, ONION_TIMES_FILE};
use anonnet_relay::{Limits, Relay, RelayConfig};
use anonnet_wire::{CellCommand, Created, Destroy, DestroyReason, RelayDescriptor};

const DAY: u64 = 86_400;

async fn start(dir: &Path) -> Relay {
    Relay::start(RelayConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        exit_policy: None,
        guard: false,
        circuit_handshakes: anonnet_wire::HandshakeSet::ALL,
        bandwidth: 1,
        descriptor_file: None,
        limits: Limits::default(),
        dht_bootstrap: Vec::new(),
        network: None,
        hsdir_behaviour: Default::default(),
        squat_dark_name: None,
    })
    .await
    .unwrap()
}

fn advertised_onion_key(relay: &Relay) -> [u8; 32] {
    RelayDescriptor::decode_body(&relay.descriptor().body)
        .unwrap()
        .onion_key
}

/// Move the times in `onion.key.times` `days` into the past (the current key's creation,
/// or the previous key's replacement when `previous`).
fn age(dir: &Path, previous: bool, days: u64) {
    let path = dir.join(ONION_TIMES_FILE);
    let mut times: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let entry = if previous { "previous" } else { "current" };
    let t = &mut times[entry]["time"];
    *t = (t.as_u64().unwrap() - days * DAY).into();
    std::fs::write(&path, serde_json::to_vec(&times).unwrap()).unwrap();
}

/// Send a `CREATE` naming `onion_key` and say whether the relay answered `CREATED` with a
/// valid `AUTH` (true) or `DESTROY` PROTOCOL (false).
async fn create_with(relay: &Relay, onion_key: [u8; 32]) -> bool {
    let (_send, _recv, hs, reply, _ep) = common::create_leg(relay, onion_key).await;
    if reply.first() == Some(&(CellCommand::Destroy as u8)) {
        assert_eq!(
            Destroy::decode(&reply).unwrap().reason,
            DestroyReason::Protocol
        );
        return false;
    }
    let created = Created::decode(&reply).unwrap();
    hs.finish(&ServerReply {
        server_pk: created.server_pk,
        auth: created.auth,
    })
    .expect("the relay proves it holds the key");
    true
}

#[tokio::test]
async fn relay_answers_previous_onion_key_during_grace_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let relay = start(dir).await;
    let first = advertised_onion_key(&relay);
    assert!(create_with(&relay, first).await);
    relay.shutdown_gracefully(Duration::from_secs(1)).await;
    drop(relay);

    // 29 days later (by the times file) the key is due: the relay rotates at start.
    age(dir, false, 29);
    let relay = start(dir).await;
    let second = advertised_onion_key(&relay);
    assert_ne!(first, second, "the descriptor advertises the new key");
    assert!(dir.join(ONION_OLD_FILE).exists());
    assert!(create_with(&relay, second).await, "new key");
    assert!(
        create_with(&relay, first).await,
        "previous key during grace"
    );
    let stranger = anonnet_crypto::OnionKey::from_secret(&[7; 32]).public();
    assert!(!create_with(&relay, stranger).await, "unknown key refused");
    relay.shutdown_gracefully(Duration::from_secs(1)).await;
    drop(relay);

    // Eight days after the rotation the grace (7 days) is over: the old key is forgotten
    // and refused, the current one still works.
    age(dir, true, 8);
    let relay = start(dir).await;
    assert_eq!(advertised_onion_key(&relay), second, "not due yet");
    assert!(!dir.join(ONION_OLD_FILE).exists(), "old secret erased");
    assert!(
        !create_with(&relay, first).await,
        "previous key after grace"
    );
    assert!(create_with(&relay, second).await);
    relay.shutdown_gracefully(Duration::from_secs(1)).await;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let times: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(ONION_TIMES_FILE)).unwrap()).unwrap();
    assert!(times["previous"].is_null());
    assert!(times["current"]["time"].as_u64().unwrap() <= now);
}
