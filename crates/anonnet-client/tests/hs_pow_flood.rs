//! An introduction flood against a service with proof of work on (docs/protocol.md
//! §13.9; issue 14): a test client sends at least 500 zero-effort introductions through
//! the service's introduction points (8 per circuit, the relays' limit) while a real
//! client solves the suggested effort and introduces itself once. The real client's
//! rendezvous must come within 5 s, and the service never has more than its 64
//! rendezvous circuits in flight. In process: six relays, real QUIC on loopback; like
//! `hs_replay.rs` it reads the service's introduction points and proof-of-work
//! parameters as its descriptor lists them and seals what a client seals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anonnet_client::circuit::HopSpec;
use anonnet_client::host::{HostedService, PowConfig, ServiceConfig, INTRO_POINTS, MAX_RENDEZVOUS};
use anonnet_client::hs::{hop_of, link_of};
use anonnet_client::{Circuit, Client, ClientConfig};
use anonnet_crypto::hs::seal_introduce;
use anonnet_crypto::{ClientHandshake, ServerReply};
use anonnet_relay::{Limits, Relay, RelayConfig};
use anonnet_wire::hs::{IntroPoint, IntroducePlaintext, PowSolution};
use anonnet_wire::relay::INTRODUCE_OK;
use anonnet_wire::RelayMsg;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Introductions the flood sends: 63 circuits × 8.
const FLOOD: usize = 504;
/// `INTRODUCE1`s one client circuit may carry (§13.8).
const PER_CIRCUIT: usize = 8;
/// The real client's budget, from its first introduction to the service's `RENDEZVOUS2`.
const REAL_CLIENT_BUDGET: Duration = Duration::from_secs(5);

/// Longest wait for one answer.
const WAIT: Duration = Duration::from_secs(10);

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

/// What a client sends through `point`, with `pow`: a fresh handshake and the sealed
/// plaintext.
fn seal_for(
    address: &anonnet_crypto::hs::HsAddress,
    point: &IntroPoint,
    cookie: [u8; 20],
    rp: &HopSpec,
    pow: Option<PowSolution>,
) -> (ClientHandshake, Bytes) {
    let handshake = ClientHandshake::start_hs(address.node_id(), point.enc_key).unwrap();
    let plain = IntroducePlaintext {
        cookie,
        pow,
        rendezvous: link_of(rp),
        client_pk: handshake.hello().client_pk,
    }
    .encode()
    .unwrap();
    let sealed = seal_introduce(&point.enc_key, &point.auth_key, &plain).unwrap();
    (handshake, Bytes::from(sealed))
}

/// One flooding circuit: [`PER_CIRCUIT`] zero-effort introductions through `point`, all
/// naming `rp` with cookies nobody waits under; the number acknowledged with status 0.
async fn flood_circuit(
    client: Arc<Client>,
    address: anonnet_crypto::hs::HsAddress,
    point: IntroPoint,
    rp: HopSpec,
    sent: Arc<AtomicUsize>,
) -> usize {
    let Ok(c) = client.build_internal(Some(hop_of(&point.relay)), &[]).await else {
        return 0;
    };
    let mut rx = c.control_messages();
    for _ in 0..PER_CIRCUIT {
        let (_, sealed) = seal_for(&address, &point, rand::random(), &rp, None);
        if c.send_to_last_relay(RelayMsg::Introduce1 {
            auth_key: point.auth_key,
            sealed,
        })
        .await
        .is_err()
        {
            break;
        }
        sent.fetch_add(1, Ordering::Relaxed);
    }
    let mut ok = 0;
    for _ in 0..PER_CIRCUIT {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(RelayMsg::IntroduceAck(s))) => ok += usize::from(s == INTRODUCE_OK),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    c.close();
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_gets_through_a_zero_effort_introduction_flood() {
    let dir = tempfile::Builder::new()
        .prefix("anonnet-hs-pow-flood-")
        .tempdir()
        .unwrap();
    let (relays, client) = net(dir.path()).await;
    let service = client
        .publish(ServiceConfig {
            target: "127.0.0.1:9".parse().unwrap(),
            port: 80,
            key_file: dir.path().join("service.key"),
            dark_name: None,
            pow: Some(PowConfig {
                update_period: Duration::from_millis(250),
                ..PowConfig::default()
            }),
        })
        .unwrap();
    let address = service.address();
    let points = points_up(&service).await;
    assert_eq!(service.pow_params().unwrap().suggested_effort, 0);

    // Watch the rendezvous circuits in flight for the whole test.
    let stop_watch = Arc::new(AtomicBool::new(false));
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let watch = {
        let (service, stop, most) = (service.clone(), stop_watch.clone(), most_in_flight.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(service.rendezvous_in_flight(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // The flood: a rendezvous point nobody waits at, cookies nobody registered.
    let decoy = client.build_internal(None, &[]).await.unwrap();
    let decoy_rp = decoy.last_hop().unwrap();
    decoy.close();
    let sent = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for i in 0..FLOOD / PER_CIRCUIT {
        flood.push(tokio::spawn(flood_circuit(
            client.clone(),
            address,
            points[i % INTRO_POINTS],
            decoy_rp,
            sent.clone(),
        )));
    }

    // The service sees the backlog and raises its suggested effort (bounded wait).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let params = loop {
        let p = service.pow_params().unwrap();
        if p.suggested_effort > 0 {
            break p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "suggested effort raised under the flood ({:?})",
            service.pow_status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The real client: park the rendezvous circuit, solve the suggested effort, introduce.
    let cookie = [0xc0; 20];
    let (rp_circuit, mut rp_rx) = park(&client, None, cookie).await;
    let rp = rp_circuit.last_hop().unwrap();
    let effort = params.suggested_effort;
    let id = *address.public();
    let proof = tokio::task::spawn_blocking(move || {
        anonnet_crypto::hs_pow::solve(&id, &params.seed, effort, rand::random())
    })
    .await
    .unwrap();
    // As a real client does (§13.8): an introduction point that answers BUSY (the
    // service's circuit to it is full of the flood) is not waited on; the next one is
    // tried, within the same budget.
    let started = tokio::time::Instant::now();
    let deadline = started + REAL_CLIENT_BUDGET;
    let mut acks = Vec::new();
    let mut served = None;
    for point in points.iter().cycle().take(3 * INTRO_POINTS) {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        let (handshake, sealed) = seal_for(&address, point, cookie, &rp, Some(proof));
        let intro = client
            .build_internal(Some(hop_of(&point.relay)), &[])
            .await
            .unwrap();
        let mut intro_rx = intro.control_messages();
        intro
            .send_to_last_relay(RelayMsg::Introduce1 {
                auth_key: point.auth_key,
                sealed,
            })
            .await
            .unwrap();
        let ack = loop {
            match tokio::time::timeout_at(deadline, intro_rx.recv()).await {
                Ok(Some(RelayMsg::IntroduceAck(s))) => break Some(s),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break None,
            }
        };
        intro.close();
        acks.push(ack);
        if ack == Some(INTRODUCE_OK) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            served = service_comes(&mut rp_rx, left)
                .await
                .map(|reply| (handshake, reply));
            break;
        }
    }
    let (handshake, reply) = served.unwrap_or_else(|| {
        panic!(
            "the real client's rendezvous within {REAL_CLIENT_BUDGET:?} of its first \
             introduction (acknowledgements {acks:?}; {:?})",
            service.pow_status()
        )
    });
    let took = started.elapsed();
    handshake.finish(&reply).unwrap();
    rp_circuit.close();

    let mut acknowledged = 0;
    for f in flood {
        acknowledged += f.await.unwrap();
    }
    stop_watch.store(true, Ordering::Relaxed);
    watch.await.unwrap();
    let status = service.pow_status().unwrap();
    eprintln!(
        "flood: {} sent, {acknowledged} acknowledged; real client served in {took:?} at effort {effort}; \
         most rendezvous in flight {}; {status:?}",
        sent.load(Ordering::Relaxed),
        most_in_flight.load(Ordering::Relaxed)
    );
    assert!(
        sent.load(Ordering::Relaxed) >= 500,
        "at least 500 introductions sent"
    );
    assert!(
        most_in_flight.load(Ordering::Relaxed) <= MAX_RENDEZVOUS,
        "rendezvous circuits in flight stay within the limit"
    );
    assert!(status.served >= 1);
    assert!(status.served_by_effort.values().sum::<u64>() >= 1);

    service.stop();
    client.shutdown(Duration::from_secs(1)).await;
    for r in &relays {
        r.shutdown_gracefully(Duration::from_secs(1)).await;
    }
}
