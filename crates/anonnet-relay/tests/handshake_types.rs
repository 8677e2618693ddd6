//! A relay answers only the circuit handshake types it advertises (`docs/protocol.md` §3.1,
//! §4.2): one configured for type 1 alone says so in its descriptor, still answers type-1
//! `CREATE`s and refuses a type-2 `CREATE` with `DESTROY` PROTOCOL; a relay answering both
//! answers type 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use anonnet_crypto::HybridClientHandshake;
use anonnet_net::Endpoint;
use anonnet_relay::{Limits, Relay, RelayConfig};
use anonnet_wire::{
    CellCommand, CreateHybrid, Destroy, DestroyReason, HandshakeSet, RelayDescriptor, CELL_LEN,
};

async fn start(dir: &std::path::Path, handshakes: HandshakeSet) -> Relay {
    Relay::start(RelayConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        exit_policy: None,
        guard: false,
        circuit_handshakes: handshakes,
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

fn descriptor(relay: &Relay) -> RelayDescriptor {
    RelayDescriptor::decode_body(&relay.descriptor().body).unwrap()
}

/// Send a type-2 (hybrid) `CREATE` to `relay` and return its first answer cell.
async fn hybrid_create(relay: &Relay) -> Vec<u8> {
    let ep = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let link = ep
        .connect(relay.local_addr(), relay.node_id())
        .await
        .unwrap();
    let (mut send, mut recv) = link.open_bi().await.unwrap();
    let hs = HybridClientHandshake::start(relay.node_id(), descriptor(relay).onion_key).unwrap();
    let cells = CreateHybrid {
        hello: hs.hello_bytes(),
    }
    .encode()
    .unwrap();
    send.write_all(&cells).await.unwrap();
    let mut reply = vec![0u8; CELL_LEN];
    recv.read_exact(&mut reply).await.unwrap();
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classical_only_relay_advertises_type_1_and_refuses_a_hybrid_create() {
    let dir = tempfile::Builder::new()
        .prefix("anonnet-relay-test-handshakes-")
        .tempdir()
        .unwrap();

    let classical = start(&dir.path().join("classical"), HandshakeSet::NTOR).await;
    assert_eq!(descriptor(&classical).handshakes, HandshakeSet::NTOR);
    let (_send, _recv, _hs, reply, _ep) =
        common::create_leg(&classical, descriptor(&classical).onion_key).await;
    assert_eq!(reply.first(), Some(&(CellCommand::Created as u8)));
    let reply = hybrid_create(&classical).await;
    assert_eq!(
        Destroy::decode(&reply).unwrap().reason,
        DestroyReason::Protocol
    );

    let both = start(&dir.path().join("both"), HandshakeSet::ALL).await;
    assert_eq!(descriptor(&both).handshakes, HandshakeSet::ALL);
    let reply = hybrid_create(&both).await;
    assert_eq!(reply.first(), Some(&(CellCommand::Created as u8)));

    for r in [classical, both] {
        r.shutdown_gracefully(std::time::Duration::from_secs(1))
            .await;
    }
}
