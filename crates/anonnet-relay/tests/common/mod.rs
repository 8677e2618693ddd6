//! Shared by the relay's in-process tests: a real exit relay on loopback and a one-hop
//! circuit to it over real QUIC.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use anonnet_crypto::{ClientHandshake, ClientOnion, ServerReply};
use anonnet_net::Endpoint;
use anonnet_relay::{Action, ExitPolicy, ExitRule, Limits, Relay, RelayConfig};
use anonnet_wire::{Create, Created, PortRange, CELL_LEN};

/// A relay started for one test, with the temporary data directory it owns (removed when
/// this is dropped). Derefs to the [`Relay`].
pub struct TestRelay {
    relay: Relay,
    _dir: tempfile::TempDir,
}

impl TestRelay {
    /// Shut the relay down and wait for its tasks (at most 1 s), so its directory is quiet
    /// when it is removed.
    pub async fn stop(self) {
        self.relay
            .shutdown_gracefully(std::time::Duration::from_secs(1))
            .await;
    }
}

impl std::ops::Deref for TestRelay {
    type Target = Relay;
    fn deref(&self) -> &Relay {
        &self.relay
    }
}

/// Start a relay on 127.0.0.1:0 that exits to 127.0.0.0/8, with its data in a fresh
/// temporary directory named after `name`.
pub async fn exit_relay(name: &str) -> TestRelay {
    let dir = tempfile::Builder::new()
        .prefix(&format!("anonnet-relay-test-{name}-"))
        .tempdir()
        .unwrap();
    let relay = Relay::start(RelayConfig {
        exit_policy: Some(ExitPolicy::with_rules(vec![ExitRule {
            action: Action::Accept,
            net: "127.0.0.0/8".parse().unwrap(),
            ports: PortRange::ALL,
        }])),
        guard: true,
        ..relay_config(dir.path())
    })
    .await
    .unwrap();
    TestRelay { relay, _dir: dir }
}

/// The config of a plain relay (no exit, no guard, no network) on 127.0.0.1:0 keeping its
/// data in `data_dir`.
pub fn relay_config(data_dir: &std::path::Path) -> RelayConfig {
    RelayConfig {
        data_dir: data_dir.to_path_buf(),
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
    }
}

/// Open a leg to `relay` and send a type-1 `CREATE` naming `onion_key`; returns the leg,
/// the client's half of the handshake, the relay's first answer cell (`CREATED` or
/// `DESTROY`) and the endpoint, which must outlive the leg.
pub async fn create_leg(
    relay: &Relay,
    onion_key: [u8; 32],
) -> (
    quinn::SendStream,
    quinn::RecvStream,
    ClientHandshake,
    Vec<u8>,
    Endpoint,
) {
    let ep = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let link = ep
        .connect(relay.local_addr(), relay.node_id())
        .await
        .unwrap();
    let (mut send, mut recv) = link.open_bi().await.unwrap();
    let hs = ClientHandshake::start(relay.node_id(), onion_key).unwrap();
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
    (send, recv, hs, reply, ep)
}

/// Open a one-hop circuit to `relay` (CREATE, CREATED, the client's onion with one hop);
/// returns the leg, the onion and the endpoint, which must outlive the leg.
pub async fn one_hop(
    relay: &Relay,
) -> (quinn::SendStream, quinn::RecvStream, ClientOnion, Endpoint) {
    let desc = anonnet_wire::RelayDescriptor::decode_body(&relay.descriptor().body).unwrap();
    let (send, recv, hs, reply, ep) = create_leg(relay, desc.onion_key).await;
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
