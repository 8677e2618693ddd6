//! Vanguards-lite (docs/protocol.md §9.4): every hidden-service circuit takes its second
//! hop from the client's small vanguard set. In-process relays on loopback, one client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anonnet_client::{Client, ClientConfig};
use anonnet_crypto::NodeId;
use anonnet_relay::{Action, ExitPolicy, ExitRule, Limits, Relay, RelayConfig};
use anonnet_wire::{HandshakeSet, PortRange};

/// `n` guard-flagged relays (exits to loopback) on 127.0.0.1, their data under `dir`.
async fn relays(n: usize, dir: &std::path::Path) -> Vec<Relay> {
    let mut out = Vec::new();
    for i in 0..n {
        let cfg = RelayConfig {
            data_dir: dir.join(format!("relay-{i}")),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            // The client's pool builds exit circuits before it is ready.
            exit_policy: Some(ExitPolicy::with_rules(vec![ExitRule {
                action: Action::Accept,
                net: "127.0.0.0/8".parse().unwrap(),
                ports: PortRange::ALL,
            }])),
            guard: true,
            circuit_handshakes: HandshakeSet::ALL,
            bandwidth: 1000,
            descriptor_file: None,
            limits: Limits::default(),
            dht_bootstrap: Vec::new(),
            network: None,
            hsdir_behaviour: Default::default(),
            squat_dark_name: None,
        };
        out.push(Relay::start(cfg).await.unwrap());
    }
    out
}

fn hex_ids(ids: &[NodeId]) -> Vec<String> {
    ids.iter().map(|id| id.to_hex()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_internal_circuits_all_take_their_second_hop_from_the_vanguards() {
    let dir = tempfile::Builder::new()
        .prefix("anonnet-vanguards-")
        .tempdir()
        .unwrap();
    let relays = relays(8, dir.path()).await;
    let state = dir.path().join("client");
    std::fs::create_dir_all(&state).unwrap();
    let client = Client::start(ClientConfig {
        bootstrap: relays.iter().map(|r| r.descriptor().clone()).collect(),
        quic_bind: "127.0.0.1:0".parse().unwrap(),
        allow_same_subnet: true,
        state_dir: Some(state.clone()),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(20), client.wait_ready())
        .await
        .unwrap()
        .unwrap();

    let relay_ids: Vec<NodeId> = relays
        .iter()
        .map(|r| anonnet_crypto::verify_descriptor(r.descriptor(), now()).unwrap())
        .map(|v| v.node_id)
        .collect();
    let (second_hops, ends) = tokio::time::timeout(Duration::from_secs(90), async {
        let mut second = Vec::new();
        let mut ends = Vec::new();
        for i in 0..50 {
            // Half with no end named (guard → vanguard → any), half ending at a named
            // relay, as introduction and rendezvous circuits do.
            let end = (i % 2 == 1).then(|| {
                let r = &relays[i % relays.len()];
                let v = anonnet_crypto::verify_descriptor(r.descriptor(), now()).unwrap();
                anonnet_client::circuit::HopSpec {
                    node_id: v.node_id,
                    onion_key: v.descriptor.onion_key,
                    addr: v.descriptor.addresses[0],
                }
            });
            let c = client.build_internal(end, &[]).await.unwrap();
            let path = c.path();
            assert_eq!(path.len(), 3, "{path:?}");
            assert!(
                path[0] != path[1] && path[1] != path[2] && path[0] != path[2],
                "{path:?}"
            );
            if let Some(e) = end {
                assert_eq!(path[2], e.node_id);
            }
            second.push(path[1]);
            ends.push(path[2]);
            c.close();
        }
        (second, ends)
    })
    .await
    .expect("50 internal circuits within 90 s");

    let status = client.status();
    let vanguards: Vec<String> = status.vanguards.iter().map(|v| v.node_id.clone()).collect();
    assert_eq!(vanguards.len(), 4, "{vanguards:?}");
    for v in &status.vanguards {
        assert!(hex_ids(&relay_ids).contains(&v.node_id));
        let days = v.expires.saturating_sub(now()) as f64 / 86_400.0;
        assert!((0.9..=12.0).contains(&days), "{days}");
    }
    for hop in hex_ids(&second_hops) {
        assert!(
            vanguards.contains(&hop),
            "second hop {hop} not a vanguard {vanguards:?}"
        );
    }
    // Ends outside the set were used too: the restriction is on hop 1 alone.
    assert!(ends.iter().any(|e| !vanguards.contains(&e.to_hex())));
    // The set is kept in vanguards.json.
    let file = std::fs::read_to_string(state.join("vanguards.json")).unwrap();
    for v in &vanguards {
        assert!(file.contains(v.as_str()));
    }

    client.shutdown(Duration::from_secs(1)).await;
    for r in &relays {
        r.shutdown_gracefully(Duration::from_secs(1)).await;
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
