//! Replayed introductions (docs/protocol.md §12.4, §13.1, §13.4): a hidden service hosted
//! in process on six in-process relays (real QUIC, loopback only) answers an
//! introduction sealed to one introduction point's own `enc_key`, refuses the same
//! `INTRODUCE1` sent again through that point (its replay cache), and after a restart on
//! the same key file does not come to the rendezvous point for the recorded introduction,
//! whichever of its new introduction points it is sent through. The descriptor is not
//! needed: the test reads the service's introduction points as its descriptor lists them
//! and seals exactly what a client seals (`anonnet_client::hs`).
//!
//! An introduction point passing on an `INTRODUCE2` under another point's `auth_key` needs
//! a misbehaving relay; that case is the unit test
//! `host::tests::each_intro_point_opens_only_its_own_introductions_once`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use anonnet_client::circuit::HopSpec;
use anonnet_client::host::{HostedService, ServiceConfig, INTRO_POINTS};
use anonnet_client::hs::{hop_of, link_of};
use anonnet_client::{Circuit, Client, ClientConfig};
use anonnet_crypto::hs::{seal_introduce, HsAddress};
use anonnet_crypto::{ClientHandshake, ServerReply};
use anonnet_relay::{Limits, Relay, RelayConfig};
use anonnet_wire::hs::{IntroPoint, IntroducePlaintext};
use anonnet_wire::relay::{INTRODUCE_OK, INTRODUCE_UNKNOWN};
use anonnet_wire::RelayMsg;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Longest wait for one answer.
const WAIT: Duration = Duration::from_secs(10);
/// How long the service is given to (wrongly) come to the rendezvous point.
const NO_SHOW: Duration = Duration::from_secs(4);

async fn net(dir: &std::path::Path) -> (Vec<Relay>, Arc<Client>) {
    let mut relays = Vec::new();
    // Three introduction points on distinct relays, each reached by a 3-hop circuit that
    // avoids the other points' relays: at least 5 relays.
    for i in 0..6 {
        relays.push(
            Relay::start(RelayConfig {
                data_dir: dir.join(format!("relay-{i}")),
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
    (relays, client)
}

/// Wait (at most 60 s) until the service holds all its introduction points.
async fn points_up(service: &HostedService) -> Vec<IntroPoint> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let points = service.intro_points();
        if points.len() == INTRO_POINTS {
            return points;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "introduction points up in time ({} of {INTRO_POINTS})",
            points.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait (at most [`WAIT`]) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Park a rendezvous circuit under `cookie` at `rp` (any relay when `None`).
async fn park(
    client: &Client,
    rp: Option<HopSpec>,
    cookie: [u8; 20],
) -> (Arc<Circuit>, mpsc::Receiver<RelayMsg>) {
    let c = client.build_internal(rp, &[]).await.unwrap();
    let mut rx = c.control_messages();
    c.send_to_last_relay(RelayMsg::EstablishRendezvous { cookie })
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();
    assert_eq!(answer, Some(RelayMsg::RendezvousEstablished));
    (c, rx)
}

/// Send `INTRODUCE1 { auth_key, sealed }` through a fresh circuit to `point`'s relay; the
/// `INTRODUCE_ACK` status.
async fn introduce(client: &Client, point: &IntroPoint, auth_key: [u8; 32], sealed: Bytes) -> u8 {
    let c = client
        .build_internal(Some(hop_of(&point.relay)), &[])
        .await
        .unwrap();
    let mut rx = c.control_messages();
    c.send_to_last_relay(RelayMsg::Introduce1 { auth_key, sealed })
        .await
        .unwrap();
    let status = loop {
        match tokio::time::timeout(WAIT, rx.recv()).await.unwrap() {
            Some(RelayMsg::IntroduceAck(s)) => break s,
            Some(_) => continue,
            None => panic!("introduction circuit closed"),
        }
    };
    c.close();
    status
}

/// The service's `RENDEZVOUS2` on the parked circuit, if it comes within `within`.
async fn service_comes(rx: &mut mpsc::Receiver<RelayMsg>, within: Duration) -> Option<ServerReply> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(RelayMsg::Rendezvous2 { server_pk, auth })) => {
                return Some(ServerReply { server_pk, auth })
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// What a client sends through `point`: a fresh end-to-end handshake with `B` = the
/// point's `enc_key`, and the plaintext sealed to that key under its `auth_key`.
fn seal_for(
    address: &HsAddress,
    point: &IntroPoint,
    cookie: [u8; 20],
    rp: &HopSpec,
) -> (ClientHandshake, Bytes) {
    let handshake = ClientHandshake::start_hs(address.node_id(), point.enc_key).unwrap();
    let plain = IntroducePlaintext {
        pow: None,
        cookie,
        rendezvous: link_of(rp),
        client_pk: handshake.hello().client_pk,
    }
    .encode()
    .unwrap();
    let sealed = seal_introduce(&point.enc_key, &point.auth_key, &plain).unwrap();
    (handshake, Bytes::from(sealed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_introduction_is_refused_through_its_point_and_after_a_restart() {
    let dir = tempfile::Builder::new()
        .prefix("anonnet-hs-replay-")
        .tempdir()
        .unwrap();
    let (relays, client) = net(dir.path()).await;
    let config = ServiceConfig {
        target: "127.0.0.1:9".parse().unwrap(),
        port: 80,
        key_file: dir.path().join("service.key"),
        dark_name: None,
        pow: None,
    };
    let service = client.publish(config.clone()).unwrap();
    let address = service.address();
    let points = points_up(&service).await;
    // Every point has its own keys.
    for (i, p) in points.iter().enumerate() {
        for q in &points[i + 1..] {
            assert_ne!(p.enc_key, q.enc_key);
            assert_ne!(p.auth_key, q.auth_key);
            assert_ne!(p.relay.node_id, q.relay.node_id);
        }
    }
    let point = points[0];

    // A client's introduction through `point`: the service comes, and its answer
    // authenticates against the point's enc_key (B of the end-to-end handshake).
    let cookie = [0xc0; 20];
    let (rp_circuit, mut rp_rx) = park(&client, None, cookie).await;
    let rp = rp_circuit.last_hop().unwrap();
    let (handshake, recorded) = seal_for(&address, &point, cookie, &rp);
    assert_eq!(
        introduce(&client, &point, point.auth_key, recorded.clone()).await,
        INTRODUCE_OK
    );
    let reply = service_comes(&mut rp_rx, WAIT)
        .await
        .expect("the service comes to the rendezvous point");
    handshake
        .finish(&reply)
        .expect("the service answers with the point's enc_key");
    assert_eq!(service.introductions(), 1);
    rp_circuit.close();

    // The same INTRODUCE1 again through the same point, with the cookie waiting again at
    // the same rendezvous point: refused as a replay.
    let (rp_again, mut rp_again_rx) = park(&client, Some(rp), cookie).await;
    assert_eq!(
        introduce(&client, &point, point.auth_key, recorded.clone()).await,
        INTRODUCE_OK
    );
    eventually("the replay is counted", || {
        service.introductions_refused_replayed() == 1
    })
    .await;
    assert!(
        service_comes(&mut rp_again_rx, NO_SHOW).await.is_none(),
        "a replay must not bring the service to the rendezvous point"
    );
    assert_eq!(service.introductions(), 1);
    assert_eq!(service.introductions_refused_wrong_auth_key(), 0);

    // Restart on the same key file: the same address, new introduction points with new
    // keys (nothing about them is derived from the seed).
    assert!(client.unpublish(&address));
    eventually("the old points are dropped", || {
        service.intro_points().is_empty()
    })
    .await;
    let restarted = client.publish(config).unwrap();
    assert_eq!(restarted.address(), address);
    let new_points = points_up(&restarted).await;
    for p in &new_points {
        for old in &points {
            assert_ne!(p.enc_key, old.enc_key);
            assert_ne!(p.auth_key, old.auth_key);
        }
    }
    // The recorded INTRODUCE1 under its own auth_key: no registration holds it any more.
    assert_eq!(
        introduce(&client, &point, point.auth_key, recorded.clone()).await,
        INTRODUCE_UNKNOWN
    );
    // Passed to the restarted service through each of its new points (as a relay that
    // kept the recording could): it opens under none of them.
    for p in &new_points {
        assert_eq!(
            introduce(&client, p, p.auth_key, recorded.clone()).await,
            INTRODUCE_OK
        );
    }
    assert!(
        service_comes(&mut rp_again_rx, NO_SHOW).await.is_none(),
        "the restarted service must not come for a recorded introduction"
    );
    assert_eq!(restarted.introductions(), 0);
    assert_eq!(restarted.introductions_refused_wrong_auth_key(), 0);

    // A fresh introduction through a new point still works.
    rp_again.close();
    let fresh_cookie = [0xc1; 20];
    let (rp_new, mut rp_new_rx) = park(&client, None, fresh_cookie).await;
    let rp = rp_new.last_hop().unwrap();
    let (handshake, sealed) = seal_for(&address, &new_points[1], fresh_cookie, &rp);
    assert_eq!(
        introduce(&client, &new_points[1], new_points[1].auth_key, sealed).await,
        INTRODUCE_OK
    );
    let reply = service_comes(&mut rp_new_rx, WAIT)
        .await
        .expect("the restarted service comes for a fresh introduction");
    handshake.finish(&reply).unwrap();
    rp_new.close();

    restarted.stop();
    client.shutdown(Duration::from_secs(1)).await;
    for r in &relays {
        r.shutdown_gracefully(Duration::from_secs(1)).await;
    }
}
