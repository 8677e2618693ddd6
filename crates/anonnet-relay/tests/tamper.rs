//! A real relay (in process, real QUIC on loopback) destroys a circuit whose next cell
//! fails its tag, repeats a sequence number or skips one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use anonnet_crypto::onion::message_offset;
use anonnet_crypto::{ClientHandshake, ClientOnion, ServerReply};
use anonnet_net::Endpoint;
use anonnet_relay::{Limits, Relay, RelayConfig};
use anonnet_wire::{
    Create, Created, Destroy, DestroyReason, RelayCell, RelayMsg, StreamId, CELL_LEN,
};

async fn relay(name: &str) -> Relay {
    let dir = std::env::temp_dir().join(format!("anonnet-tamper-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Relay::start(RelayConfig {
        data_dir: dir,
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        exit_policy: None,
        guard: true,
        bandwidth: 1,
        descriptor_file: None,
        limits: Limits::default(),
    })
    .await
    .unwrap()
}

/// Open a one-hop circuit to `relay`; returns the leg and the client's onion.
async fn one_hop(relay: &Relay) -> (quinn::SendStream, quinn::RecvStream, ClientOnion, Endpoint) {
    let ep = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let link = ep
        .connect(relay.local_addr(), relay.node_id())
        .await
        .unwrap();
    let (mut send, mut recv) = link.open_bi().await.unwrap();
    let desc = anonnet_wire::RelayDescriptor::decode_body(&relay.descriptor().body).unwrap();
    let hs = ClientHandshake::start(relay.node_id(), desc.onion_key).unwrap();
    let h = hs.hello();
    let create = Create {
        cell_len: CELL_LEN as u16,
        node_id: h.node_id,
        onion_key: h.onion_key,
        client_pk: h.client_pk,
    };
    send.write_all(&create.encode().unwrap()).await.unwrap();
    let mut reply = vec![0u8; CELL_LEN];
    recv.read_exact(&mut reply).await.unwrap();
    let created = Created::decode(&reply).unwrap();
    let keys = hs
        .finish(&ServerReply {
            server_pk: created.server_pk,
            auth: created.auth,
        })
        .unwrap();
    let mut onion = ClientOnion::new();
    onion.push_hop(&keys);
    (send, recv, onion, ep)
}

fn drop_cell(onion: &mut ClientOnion) -> Vec<u8> {
    let mut cell = vec![0u8; CELL_LEN];
    RelayCell::new(StreamId::CIRCUIT, RelayMsg::Drop)
        .encode_into(&mut cell[message_offset(0)..])
        .unwrap();
    onion.seal_forward(&mut cell, 0).unwrap();
    cell
}

async fn expect_destroy(recv: &mut quinn::RecvStream) {
    let mut cell = vec![0u8; CELL_LEN];
    tokio::time::timeout(Duration::from_secs(5), recv.read_exact(&mut cell))
        .await
        .expect("relay answers within 5 s")
        .expect("a whole DESTROY cell");
    assert_eq!(
        Destroy::decode(&cell).unwrap().reason,
        DestroyReason::Protocol
    );
}

#[tokio::test]
async fn relay_destroys_circuit_on_flipped_bit_replay_and_skip() {
    let relay = relay("all").await;

    // A flipped bit in the ciphertext.
    let (mut send, mut recv, mut onion, _ep) = one_hop(&relay).await;
    let mut cell = drop_cell(&mut onion);
    cell[600] ^= 0x01;
    send.write_all(&cell).await.unwrap();
    expect_destroy(&mut recv).await;

    // A replayed cell: the first copy is accepted, the second destroys the circuit.
    let (mut send, mut recv, mut onion, _ep2) = one_hop(&relay).await;
    let cell = drop_cell(&mut onion);
    send.write_all(&cell).await.unwrap();
    send.write_all(&cell).await.unwrap();
    expect_destroy(&mut recv).await;

    // A skipped sequence number: cell 1 arrives without cell 0.
    let (mut send, mut recv, mut onion, _ep3) = one_hop(&relay).await;
    let _first = drop_cell(&mut onion);
    let second = drop_cell(&mut onion);
    send.write_all(&second).await.unwrap();
    expect_destroy(&mut recv).await;

    assert_eq!(relay.stats().cells_rejected.load(Ordering::Relaxed), 3);
    assert_eq!(relay.stats().cells_forward.load(Ordering::Relaxed), 1);
    relay.shutdown();
}
