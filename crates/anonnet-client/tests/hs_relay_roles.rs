//! Relays as introduction points, rendezvous points and DHT proxies (docs/protocol.md §13),
//! driven by real client circuits through three in-process relays (real QUIC). The
//! whole-network test is `tests/tests/hidden_service.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anonnet_client::{Circuit, Client, ClientConfig};
use anonnet_crypto::IdentityKey;
use anonnet_relay::{Limits, Relay, RelayConfig};
use anonnet_wire::relay::{
    DHT_NOT_FOUND, ESTABLISH_INTRO_CONTEXT, INTRODUCE_OK, INTRODUCE_UNKNOWN,
};
use anonnet_wire::RelayMsg;
use bytes::Bytes;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

async fn net(name: &str) -> (tempfile::TempDir, Vec<Relay>, Arc<Client>) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("anonnet-{name}-"))
        .tempdir()
        .unwrap();
    let mut relays = Vec::new();
    for i in 0..3 {
        relays.push(
            Relay::start(RelayConfig {
                data_dir: dir.path().join(format!("relay-{i}")),
                listen: "127.0.0.1:0".parse().unwrap(),
                advertise: None,
                exit_policy: None,
                guard: true,
                circuit_handshakes: anonnet_wire::HandshakeSet::ALL,
                bandwidth: 1000,
                descriptor_file: None,
                limits: Limits::default(),
                dht_bootstrap: Vec::new(),
                network: None,
                hsdir_behaviour: Default::default(),
                squat_dark_name: None,
            })
            .await
            .unwrap(),
        );
    }
    let client = Client::start(ClientConfig {
        bootstrap: relays.iter().map(|r| r.descriptor().clone()).collect(),
        quic_bind: "127.0.0.1:0".parse().unwrap(),
        allow_same_subnet: true,
        pool_size: 1,
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    (dir, relays, client)
}

async fn next(rx: &mut mpsc::Receiver<RelayMsg>) -> RelayMsg {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an answer in time")
        .expect("the circuit is open")
}

async fn closes(c: &Circuit) {
    tokio::time::timeout(WAIT, c.closed())
        .await
        .expect("the relay destroys the circuit");
}

/// Register `auth` at the circuit's last relay with a signature over its handshake key.
async fn establish(c: &Circuit, auth: &IdentityKey) -> mpsc::Receiver<RelayMsg> {
    let mut rx = c.control_messages();
    let mut signed = ESTABLISH_INTRO_CONTEXT.to_vec();
    signed.extend_from_slice(&auth.public());
    signed.extend_from_slice(&c.binding(c.relay_hops() - 1).unwrap());
    c.send_to_last_relay(RelayMsg::EstablishIntro {
        auth_key: auth.public(),
        signature: auth.sign(&signed),
    })
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await, RelayMsg::IntroEstablished);
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introduction_point_passes_introductions_and_refuses_forgeries() {
    let (_dir, relays, client) = net("hs-intro").await;
    let service = client.build_internal(None, &[]).await.unwrap();
    let intro = service.last_hop().unwrap();
    let auth = IdentityKey::generate().unwrap();
    let mut service_rx = establish(&service, &auth).await;

    // A client introduces through the same relay: acknowledged, passed on unchanged.
    let visitor = client.build_internal(Some(intro), &[]).await.unwrap();
    let mut visitor_rx = visitor.control_messages();
    let sealed = Bytes::from_static(b"sealed introduction bytes");
    visitor
        .send_to_last_relay(RelayMsg::Introduce1 {
            auth_key: auth.public(),
            sealed: sealed.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        next(&mut visitor_rx).await,
        RelayMsg::IntroduceAck(INTRODUCE_OK)
    );
    assert_eq!(
        next(&mut service_rx).await,
        RelayMsg::Introduce2 {
            auth_key: auth.public(),
            sealed
        }
    );
    // An unknown key is answered, not passed on.
    visitor
        .send_to_last_relay(RelayMsg::Introduce1 {
            auth_key: [9; 32],
            sealed: Bytes::from_static(b"x"),
        })
        .await
        .unwrap();
    assert_eq!(
        next(&mut visitor_rx).await,
        RelayMsg::IntroduceAck(INTRODUCE_UNKNOWN)
    );

    // A registration whose signature does not cover this circuit's handshake key (here:
    // signed for another circuit) costs the sender its circuit.
    let other = client.build_internal(Some(intro), &[]).await.unwrap();
    let forged_for = service.binding(service.relay_hops() - 1).unwrap();
    let thief = IdentityKey::generate().unwrap();
    let mut signed = ESTABLISH_INTRO_CONTEXT.to_vec();
    signed.extend_from_slice(&thief.public());
    signed.extend_from_slice(&forged_for);
    other
        .send_to_last_relay(RelayMsg::EstablishIntro {
            auth_key: thief.public(),
            signature: thief.sign(&signed),
        })
        .await
        .unwrap();
    closes(&other).await;

    // When the service's circuit goes, so does its registration: wait (bounded) until the
    // introduction point has none left, then introduce.
    let intro_relay = relays
        .iter()
        .find(|r| r.node_id() == intro.node_id)
        .unwrap();
    assert_eq!(intro_relay.stats().intro_points.load(Relaxed), 1);
    service.close();
    let deadline = tokio::time::Instant::now() + WAIT;
    while intro_relay.stats().intro_points.load(Relaxed) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the registration outlived its circuit"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let late = client.build_internal(Some(intro), &[]).await.unwrap();
    let mut late_rx = late.control_messages();
    late.send_to_last_relay(RelayMsg::Introduce1 {
        auth_key: auth.public(),
        sealed: Bytes::from_static(b"x"),
    })
    .await
    .unwrap();
    assert_eq!(
        next(&mut late_rx).await,
        RelayMsg::IntroduceAck(INTRODUCE_UNKNOWN)
    );
    stop(&relays).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_point_refuses_misuse_and_dht_fetch_answers() {
    let (_dir, relays, client) = net("hs-rend").await;
    // A cookie registers once; the same circuit cannot register a second role.
    let waiting = client.build_internal(None, &[]).await.unwrap();
    let mut rx = waiting.control_messages();
    waiting
        .send_to_last_relay(RelayMsg::EstablishRendezvous { cookie: [1; 20] })
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, RelayMsg::RendezvousEstablished);
    waiting
        .send_to_last_relay(RelayMsg::EstablishRendezvous { cookie: [2; 20] })
        .await
        .unwrap();
    closes(&waiting).await;

    // RENDEZVOUS1 for a cookie nobody waits under costs the sender its circuit.
    let stranger = client.build_internal(None, &[]).await.unwrap();
    stranger
        .send_to_last_relay(RelayMsg::Rendezvous1 {
            cookie: [3; 20],
            server_pk: [4; 32],
            auth: [5; 32],
        })
        .await
        .unwrap();
    closes(&stranger).await;

    // A DHT fetch through a circuit for a key nobody stored: one "not found" answer.
    let asker = client.build_internal(None, &[]).await.unwrap();
    let mut rx = asker.control_messages();
    asker
        .send_to_last_relay(RelayMsg::DhtFetch {
            key: [7; 32],
            kind: 2,
        })
        .await
        .unwrap();
    match next(&mut rx).await {
        RelayMsg::DhtResult { status, count, .. } => {
            assert_eq!((status, count), (DHT_NOT_FOUND, 0));
        }
        other => panic!("expected DHT_RESULT, got {other:?}"),
    }
    stop(&relays).await;
}

/// Shut the relays down and wait for their tasks, so their data directories are quiet
/// before the test removes them.
async fn stop(relays: &[Relay]) {
    for r in relays {
        r.shutdown_gracefully(Duration::from_secs(1)).await;
    }
}
