//! Loopback scenarios: real QUIC endpoints on 127.0.0.1, each bounded by a timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anonnet_crypto::IdentityKey;
use tokio::sync::mpsc;

use super::*;

const LOOPBACK: &str = "127.0.0.1:0";

fn loopback() -> SocketAddr {
    LOOPBACK.parse().unwrap()
}

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out")
}

/// A relay endpoint whose accept loop forwards every successful link (keeping it alive)
/// and skips failed handshakes, as a real relay would.
fn relay() -> (Endpoint, NodeId, mpsc::UnboundedReceiver<Link>) {
    let identity = IdentityKey::generate().unwrap();
    let endpoint = Endpoint::relay(&identity, loopback()).unwrap();
    assert_eq!(endpoint.node_id(), Some(identity.node_id()));
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = endpoint.clone();
    tokio::spawn(async move {
        while let Some(result) = acceptor.accept().await {
            if let Ok(link) = result {
                if tx.send(link).is_err() {
                    return;
                }
            }
        }
    });
    (endpoint, identity.node_id(), rx)
}

#[tokio::test]
async fn client_reaches_relay_and_stays_anonymous() {
    bounded(async {
        let (server, server_id, mut accepted) = relay();
        let client = Endpoint::client(loopback()).unwrap();
        assert_eq!(client.node_id(), None);

        let link = client
            .connect(server.local_addr().unwrap(), server_id)
            .await
            .unwrap();
        assert_eq!(link.peer_node_id(), Some(server_id));
        assert_eq!(link.remote_addr(), server.local_addr().unwrap());
        assert!(!link.is_closed());

        let inbound = accepted.recv().await.unwrap();
        assert_eq!(inbound.peer_identity(), None);
        assert_eq!(inbound.peer_node_id(), None);
        assert_eq!(inbound.remote_addr(), client.local_addr().unwrap());
    })
    .await;
}

#[tokio::test]
async fn relay_dialing_relay_proves_its_identity() {
    bounded(async {
        let (server, server_id, mut accepted) = relay();
        let (dialer, dialer_id, _) = relay();

        let link = dialer
            .connect(server.local_addr().unwrap(), server_id)
            .await
            .unwrap();
        assert_eq!(link.peer_node_id(), Some(server_id));

        let inbound = accepted.recv().await.unwrap();
        assert_eq!(inbound.peer_node_id(), Some(dialer_id));
    })
    .await;
}

#[tokio::test]
async fn wrong_node_id_aborts_handshake_and_relay_keeps_accepting() {
    bounded(async {
        let (server, server_id, mut accepted) = relay();
        let client = Endpoint::client(loopback()).unwrap();
        let addr = server.local_addr().unwrap();
        let wrong = IdentityKey::generate().unwrap().node_id();

        let err = client.connect(addr, wrong).await.unwrap_err();
        match err {
            NetError::IdentityMismatch {
                addr: a,
                expected,
                actual,
            } => {
                assert_eq!(a, addr);
                assert_eq!(expected, wrong);
                assert_eq!(actual, Some(server_id));
            }
            other => panic!("expected IdentityMismatch, got {other}"),
        }

        // The failed peer did not stop the relay's accept loop.
        let link = client.connect(addr, server_id).await.unwrap();
        let inbound = accepted.recv().await.unwrap();
        assert_eq!(inbound.remote_addr(), client.local_addr().unwrap());
        assert!(!link.is_closed());
    })
    .await;
}

/// A version-1 node meeting a version-2 relay (§8.1): the relay refuses the link with an
/// error naming both versions, and the old node reads the same in the close reason.
#[tokio::test]
async fn a_version_1_peer_is_refused_with_both_versions_named() {
    bounded(async {
        let identity = IdentityKey::generate().unwrap();
        let server = Endpoint::relay(&identity, loopback()).unwrap();
        let old = Endpoint::client(loopback()).unwrap();
        old.act_as_version_1();
        let link = old
            .connect(server.local_addr().unwrap(), identity.node_id())
            .await
            .unwrap();
        let refused = server.accept().await;
        let Some(Err(
            e @ NetError::Version {
                peer: 1, ours: 2, ..
            },
        )) = refused
        else {
            panic!("expected a version refusal, got {refused:?}");
        };
        let text = e.to_string();
        assert!(
            text.contains("version 1") && text.contains("version 2"),
            "{text}"
        );
        let closed = link.connection().closed().await;
        let quinn::ConnectionError::ApplicationClosed(close) = closed else {
            panic!("expected an application close, got {closed:?}");
        };
        assert_eq!(
            close.error_code,
            quinn::VarInt::from_u32(VERSION_CLOSE_CODE)
        );
        let reason = String::from_utf8_lossy(&close.reason);
        assert!(
            reason.contains("version 1 is not supported") && reason.contains("version 2"),
            "{reason}"
        );
        // A version-2 node still gets through.
        let new = Endpoint::client(loopback()).unwrap();
        new.connect(server.local_addr().unwrap(), identity.node_id())
            .await
            .unwrap();
        assert!(matches!(server.accept().await, Some(Ok(_))));
    })
    .await;
}

#[tokio::test]
async fn failed_handshake_is_reported_by_accept() {
    bounded(async {
        let identity = IdentityKey::generate().unwrap();
        let server = Endpoint::relay(&identity, loopback()).unwrap();
        let client = Endpoint::client(loopback()).unwrap();
        let wrong = IdentityKey::generate().unwrap().node_id();
        assert!(client
            .connect(server.local_addr().unwrap(), wrong)
            .await
            .is_err());
        assert!(matches!(
            server.accept().await,
            Some(Err(NetError::Handshake { .. }))
        ));
    })
    .await;
}

#[tokio::test]
async fn bidi_stream_round_trips_bytes() {
    bounded(async {
        let (server, server_id, mut accepted) = relay();
        tokio::spawn(async move {
            while let Some(link) = accepted.recv().await {
                tokio::spawn(async move {
                    while let Ok((mut send, mut recv)) = link.accept_bi().await {
                        let data = recv.read_to_end(1 << 20).await.unwrap();
                        send.write_all(&data).await.unwrap();
                        send.finish().unwrap();
                    }
                });
            }
        });

        let client = Endpoint::client(loopback()).unwrap();
        let link = client
            .connect(server.local_addr().unwrap(), server_id)
            .await
            .unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (mut send, mut recv) = link.open_bi().await.unwrap();
        send.write_all(&payload).await.unwrap();
        send.finish().unwrap();
        let echoed = recv.read_to_end(1 << 20).await.unwrap();
        assert_eq!(echoed, payload);
    })
    .await;
}

/// Only the dialing side opens streams (`dial_transport_config`): the side that accepted
/// a link may open none towards the dialer, relay or client, while the dialer's own
/// streams still flow.
#[tokio::test]
async fn the_accepting_side_may_open_no_stream_towards_the_dialer() {
    bounded(async {
        let (server, server_id, mut accepted) = relay();
        let relay_dialer = Endpoint::relay(&IdentityKey::generate().unwrap(), loopback()).unwrap();
        let client = Endpoint::client(loopback()).unwrap();
        for dialer in [&relay_dialer, &client] {
            let link = dialer
                .connect(server.local_addr().unwrap(), server_id)
                .await
                .unwrap();
            let theirs = accepted.recv().await.unwrap();
            // quinn's `open_bi` waits for the peer's stream credit, which never comes.
            let opened = tokio::time::timeout(Duration::from_millis(300), theirs.open_bi()).await;
            assert!(opened.is_err(), "the accepting side opened a stream");
            let (mut send, _recv) = link.open_bi().await.unwrap();
            send.write_all(b"circuit leg").await.unwrap();
            let (_s, mut recv) = theirs.accept_bi().await.unwrap();
            let mut got = [0u8; 11];
            recv.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"circuit leg");
        }
    })
    .await;
}

#[tokio::test]
async fn closed_endpoint_stops_accepting_and_dialing() {
    bounded(async {
        let (server, server_id, _accepted) = relay();
        let other = Endpoint::relay(&IdentityKey::generate().unwrap(), loopback()).unwrap();
        other.close();
        assert!(other.accept().await.is_none());
        assert!(matches!(
            other.connect(server.local_addr().unwrap(), server_id).await,
            Err(NetError::Closed)
        ));
        let client = Endpoint::client(loopback()).unwrap();
        assert!(client.accept().await.is_none());
    })
    .await;
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let (server, _, _accepted) = relay();
    let taken = server.local_addr().unwrap();
    let err = Endpoint::client(taken).unwrap_err();
    assert!(matches!(err, NetError::Bind { addr, .. } if addr == taken));
    assert!(err.to_string().contains(&taken.to_string()));
}

#[test]
fn endpoint_outside_runtime_is_an_error() {
    assert!(matches!(
        Endpoint::client(loopback()),
        Err(NetError::NoRuntime)
    ));
}

#[tokio::test]
async fn link_manager_reuses_link_and_redials_after_close() {
    bounded(async {
        let (server, server_id, mut accepted) = relay();
        let addr = server.local_addr().unwrap();
        let manager = LinkManager::new(Endpoint::client(loopback()).unwrap(), 8);
        assert!(manager.is_empty());

        let first = manager.get(addr, server_id).await.unwrap();
        let again = manager.get(addr, server_id).await.unwrap();
        assert_eq!(
            first.connection().stable_id(),
            again.connection().stable_id()
        );
        assert_eq!(manager.len(), 1);
        let _inbound = accepted.recv().await.unwrap();

        first.close();
        assert!(again.is_closed());
        let fresh = manager.get(addr, server_id).await.unwrap();
        assert_ne!(
            fresh.connection().stable_id(),
            first.connection().stable_id()
        );
        assert!(!fresh.is_closed());
        assert_eq!(manager.len(), 1);
        assert!(manager.endpoint().node_id().is_none());
    })
    .await;
}

#[tokio::test]
async fn link_manager_shares_one_dial_between_concurrent_gets() {
    bounded(async {
        let (server, server_id, mut accepted) = relay();
        let addr = server.local_addr().unwrap();
        let manager = LinkManager::new(Endpoint::client(loopback()).unwrap(), 8);
        let (a, b) = tokio::join!(manager.get(addr, server_id), manager.get(addr, server_id));
        assert_eq!(
            a.unwrap().connection().stable_id(),
            b.unwrap().connection().stable_id()
        );
        let _inbound = accepted.recv().await.unwrap();
        // Only one connection reached the relay.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(accepted.try_recv().is_err());
    })
    .await;
}

#[tokio::test]
async fn link_manager_is_bounded_and_forgets_failed_dials() {
    bounded(async {
        let (one, one_id, _a) = relay();
        let (two, two_id, _b) = relay();
        let manager = LinkManager::new(Endpoint::client(loopback()).unwrap(), 1);

        manager
            .get(one.local_addr().unwrap(), one_id)
            .await
            .unwrap();
        let link_two = manager
            .get(two.local_addr().unwrap(), two_id)
            .await
            .unwrap();
        assert_eq!(manager.len(), 1);
        // Evicting does not close a link someone still holds.
        assert!(!link_two.is_closed());

        let wrong = IdentityKey::generate().unwrap().node_id();
        assert!(manager.get(one.local_addr().unwrap(), wrong).await.is_err());
        assert!(manager.len() <= 1);
        let again = manager
            .get(two.local_addr().unwrap(), two_id)
            .await
            .unwrap();
        assert_eq!(manager.len(), 1);
        assert!(!again.is_closed());
    })
    .await;
}

#[tokio::test]
async fn inbound_links_beyond_the_per_ip_limit_are_refused_until_one_closes() {
    bounded(async {
        let identity = IdentityKey::generate().unwrap();
        let limits = InboundLimits {
            max_links: 10,
            max_links_per_ip: 2,
            ..InboundLimits::default()
        };
        let server = Endpoint::relay_with_limits(&identity, loopback(), limits).unwrap();
        let addr = server.local_addr().unwrap();
        let id = identity.node_id();
        let (tx, mut accepted) = mpsc::unbounded_channel();
        let acceptor = server.clone();
        tokio::spawn(async move {
            while let Some(result) = acceptor.accept().await {
                if let Ok(link) = result {
                    let _ = tx.send(link);
                }
            }
        });
        let mut held = Vec::new();
        for _ in 0..2 {
            let client = Endpoint::client(loopback()).unwrap();
            held.push((client.connect(addr, id).await.unwrap(), client));
            held.push((accepted.recv().await.unwrap(), server.clone()));
        }
        assert_eq!(server.inbound_links(), 2);
        let third = Endpoint::client(loopback()).unwrap();
        assert!(third.connect(addr, id).await.is_err());
        assert_eq!(server.inbound_refused(), 1);
        // A closed and forgotten link gives its place back.
        held.truncate(2);
        assert_eq!(server.inbound_links(), 1);
        let link = third.connect(addr, id).await.unwrap();
        assert!(!link.is_closed());
    })
    .await;
}

#[tokio::test]
async fn unvalidated_addresses_get_a_retry_and_then_connect() {
    bounded(async {
        let identity = IdentityKey::generate().unwrap();
        // Retry every unvalidated attempt.
        let limits = InboundLimits {
            retry_at_pending: 0,
            ..InboundLimits::default()
        };
        let server = Endpoint::relay_with_limits(&identity, loopback(), limits).unwrap();
        let addr = server.local_addr().unwrap();
        let id = identity.node_id();
        let acceptor = server.clone();
        let accepted = tokio::spawn(async move { acceptor.accept().await });
        let client = Endpoint::client(loopback()).unwrap();
        let link = client.connect(addr, id).await.unwrap();
        let theirs = accepted.await.unwrap().unwrap().unwrap();
        assert!(!link.is_closed() && !theirs.is_closed());
        // Exactly one Retry: the second Initial carried the token, so it was admitted.
        assert_eq!(server.inbound_retried(), 1);
        assert_eq!(server.inbound_links(), 1);

        // Under the default threshold nothing is retried.
        let quiet_identity = IdentityKey::generate().unwrap();
        let quiet =
            Endpoint::relay_with_limits(&quiet_identity, loopback(), InboundLimits::default())
                .unwrap();
        let quiet_id = quiet_identity.node_id();
        let quiet_addr = quiet.local_addr().unwrap();
        let acceptor = quiet.clone();
        tokio::spawn(async move { acceptor.accept().await });
        client.connect(quiet_addr, quiet_id).await.unwrap();
        assert_eq!(quiet.inbound_retried(), 0);
    })
    .await;
}

/// Per-group counts of a [`CountedGroup`].
#[derive(Debug, Default)]
struct KxCount {
    /// Key shares made as a client (`start`): the first flight, or after a HelloRetryRequest.
    started: std::sync::atomic::AtomicUsize,
    /// Key exchanges completed as a server: rustls' server runs `start_and_complete` on the
    /// one group it selected.
    completed: std::sync::atomic::AtomicUsize,
}

/// A key exchange group that counts its use, so a test can see which group a link
/// negotiated: quinn's `HandshakeData` does not say, and rustls'
/// `negotiated_key_exchange_group` is not reachable through quinn.
#[derive(Debug)]
struct CountedGroup {
    inner: &'static dyn rustls::crypto::SupportedKxGroup,
    count: Arc<KxCount>,
}

impl rustls::crypto::SupportedKxGroup for CountedGroup {
    fn start(&self) -> Result<Box<dyn rustls::crypto::ActiveKeyExchange>, rustls::Error> {
        self.count
            .started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.start()
    }

    fn start_and_complete(
        &self,
        peer_pub_key: &[u8],
    ) -> Result<rustls::crypto::CompletedKeyExchange, rustls::Error> {
        let done = self.inner.start_and_complete(peer_pub_key)?;
        self.count
            .completed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(done)
    }

    fn name(&self) -> rustls::NamedGroup {
        self.inner.name()
    }

    fn usable_for_version(&self, version: rustls::ProtocolVersion) -> bool {
        self.inner.usable_for_version(version)
    }
}

type Counters = Vec<(rustls::NamedGroup, Arc<KxCount>)>;

/// `provider` with each key exchange group wrapped in a [`CountedGroup`], and the counters
/// in the same order.
fn counted(
    provider: &rustls::crypto::CryptoProvider,
) -> (Arc<rustls::crypto::CryptoProvider>, Counters) {
    let mut counters = Vec::new();
    let kx_groups = provider
        .kx_groups
        .iter()
        .map(|&inner| {
            let count = Arc::new(KxCount::default());
            counters.push((inner.name(), count.clone()));
            // Leaked: rustls wants `&'static` groups; a few bytes per test.
            let group: &'static dyn rustls::crypto::SupportedKxGroup =
                Box::leak(Box::new(CountedGroup { inner, count }));
            group
        })
        .collect();
    let provider = rustls::crypto::CryptoProvider {
        kx_groups,
        ..provider.clone()
    };
    (Arc::new(provider), counters)
}

/// `(group, started, completed)` for each counted group.
fn counts(counters: &Counters) -> Vec<(rustls::NamedGroup, usize, usize)> {
    use std::sync::atomic::Ordering::SeqCst;
    counters
        .iter()
        .map(|(name, c)| (*name, c.started.load(SeqCst), c.completed.load(SeqCst)))
        .collect()
}

/// A relay endpoint with `provider`, accepting and keeping every link.
fn relay_with(
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> (Endpoint, NodeId, mpsc::UnboundedReceiver<Link>) {
    let identity = IdentityKey::generate().unwrap();
    let endpoint =
        Endpoint::relay_with_provider(&identity, loopback(), InboundLimits::default(), provider)
            .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = endpoint.clone();
    tokio::spawn(async move {
        while let Some(Ok(link)) = acceptor.accept().await {
            if tx.send(link).is_err() {
                return;
            }
        }
    });
    (endpoint, identity.node_id(), rx)
}

/// The provider of a node from before the hybrid group: ring's default (X25519, P-256, P-384).
fn pre_hybrid_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Only the hybrid group: a handshake with this provider on either side can only have
/// negotiated X25519MLKEM768.
fn hybrid_only_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768],
        ..(*tls::provider()).clone()
    })
}

#[tokio::test]
async fn links_negotiate_x25519mlkem768() {
    use rustls::NamedGroup::{X25519, X25519MLKEM768};

    bounded(async {
        // A relay with the real provider, its groups counted: client -> relay and
        // relay -> relay links both settle on the hybrid group, X25519 is never used.
        let (counting, counters) = counted(&tls::provider());
        let (server, server_id, mut accepted) = relay_with(counting);
        let addr = server.local_addr().unwrap();

        let client = Endpoint::client(loopback()).unwrap();
        let link = client.connect(addr, server_id).await.unwrap();
        assert!(!link.is_closed());
        assert_eq!(accepted.recv().await.unwrap().peer_node_id(), None);
        assert_eq!(counts(&counters), [(X25519MLKEM768, 0, 1), (X25519, 0, 0)]);

        let (dialer, dialer_id, _) = relay();
        dialer.connect(addr, server_id).await.unwrap();
        assert_eq!(
            accepted.recv().await.unwrap().peer_node_id(),
            Some(dialer_id)
        );
        assert_eq!(counts(&counters), [(X25519MLKEM768, 0, 2), (X25519, 0, 0)]);

        // The same from the dialer's side: a client with the real provider, counted, made
        // one key share (the hybrid one, no HelloRetryRequest) and the link came up.
        let (counting, client_counters) = counted(&tls::provider());
        let counted_client = Endpoint::client_with_provider(loopback(), counting).unwrap();
        counted_client.connect(addr, server_id).await.unwrap();
        accepted.recv().await.unwrap();
        assert_eq!(
            counts(&client_counters),
            [(X25519MLKEM768, 1, 0), (X25519, 0, 0)]
        );
        assert_eq!(counts(&counters), [(X25519MLKEM768, 0, 3), (X25519, 0, 0)]);

        // A relay that accepts nothing but the hybrid group is reached by a real client and
        // a real relay, and a dialer that offers nothing else reaches a real relay.
        let (strict_relay, strict_id, mut strict_accepted) = relay_with(hybrid_only_provider());
        let strict_addr = strict_relay.local_addr().unwrap();
        client.connect(strict_addr, strict_id).await.unwrap();
        assert_eq!(strict_accepted.recv().await.unwrap().peer_node_id(), None);
        dialer.connect(strict_addr, strict_id).await.unwrap();
        assert_eq!(
            strict_accepted.recv().await.unwrap().peer_node_id(),
            Some(dialer_id)
        );
        let strict_client =
            Endpoint::client_with_provider(loopback(), hybrid_only_provider()).unwrap();
        strict_client.connect(addr, server_id).await.unwrap();
        accepted.recv().await.unwrap();
        assert_eq!(counts(&counters), [(X25519MLKEM768, 0, 4), (X25519, 0, 0)]);
    })
    .await;
}

#[tokio::test]
async fn pre_hybrid_peers_still_connect_over_x25519() {
    use rustls::NamedGroup::{secp256r1, secp384r1, X25519, X25519MLKEM768};

    bounded(async {
        // An older relay (ring's default groups, counted) reached by a current client and
        // a current relay: X25519, in one round trip. The dialer's first flight carries an
        // X25519 share besides the hybrid one, so there is no HelloRetryRequest (after
        // which the dialer would have started X25519 on its own).
        let (old, old_counters) = counted(&pre_hybrid_provider());
        let (old_relay, old_id, mut old_accepted) = relay_with(old);
        let old_addr = old_relay.local_addr().unwrap();
        let (counting, client_counters) = counted(&tls::provider());
        let client = Endpoint::client_with_provider(loopback(), counting).unwrap();
        client.connect(old_addr, old_id).await.unwrap();
        old_accepted.recv().await.unwrap();
        let (dialer, dialer_id, _) = relay();
        dialer.connect(old_addr, old_id).await.unwrap();
        assert_eq!(
            old_accepted.recv().await.unwrap().peer_node_id(),
            Some(dialer_id)
        );
        assert_eq!(
            counts(&old_counters),
            [(X25519, 0, 2), (secp256r1, 0, 0), (secp384r1, 0, 0)]
        );
        assert_eq!(
            counts(&client_counters),
            [(X25519MLKEM768, 1, 0), (X25519, 0, 0)]
        );

        // A current relay (counted) reached by an older client and an older relay: X25519.
        let (current, counters) = counted(&tls::provider());
        let (server, server_id, mut accepted) = relay_with(current);
        let addr = server.local_addr().unwrap();
        let old_client = Endpoint::client_with_provider(loopback(), pre_hybrid_provider()).unwrap();
        old_client.connect(addr, server_id).await.unwrap();
        accepted.recv().await.unwrap();
        let old_dialer = Endpoint::relay_with_provider(
            &IdentityKey::generate().unwrap(),
            loopback(),
            InboundLimits::default(),
            pre_hybrid_provider(),
        )
        .unwrap();
        old_dialer.connect(addr, server_id).await.unwrap();
        assert_eq!(
            accepted.recv().await.unwrap().peer_node_id(),
            old_dialer.node_id()
        );
        assert_eq!(counts(&counters), [(X25519MLKEM768, 0, 0), (X25519, 0, 2)]);
    })
    .await;
}

/// Link handshake and bulk timing on loopback, for `docs/performance.md` ("Link TLS key
/// exchange"). Not a correctness test; run it in release mode:
/// `cargo test -p anonnet-net --release -- --ignored --nocapture link_handshake_and_bulk_timing`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing, not a check; run by hand in release mode"]
async fn link_handshake_and_bulk_timing() {
    use std::time::Instant;

    const HANDSHAKES: usize = 200;
    const BULK: usize = 256 << 20;

    fn summary(label: &str, mut times: Vec<Duration>) {
        times.sort();
        let total: Duration = times.iter().sum();
        let mean = total / times.len() as u32;
        let median = times[times.len() / 2];
        let p90 = times[times.len() * 9 / 10];
        println!(
            "{label}: {n} handshakes, mean {mean:?}, median {median:?}, p90 {p90:?}, total {total:?}",
            n = times.len()
        );
    }

    // The key exchange alone, as one handshake runs it: the client's share, the server's
    // share and secret, the client's secret.
    for &group in &tls::provider().kx_groups {
        const ROUNDS: u32 = 2000;
        let start = Instant::now();
        for _ in 0..ROUNDS {
            let client = group.start().unwrap();
            let server = group.start_and_complete(client.pub_key()).unwrap();
            let secret = client.complete(&server.pub_key).unwrap();
            assert_eq!(secret.secret_bytes(), server.secret.secret_bytes());
        }
        println!(
            "key exchange {:?}: {:?} per handshake (both sides)",
            group.name(),
            start.elapsed() / ROUNDS
        );
    }

    // The relay drops every accepted link at once, so closed links free their slots.
    let (server, server_id, mut accepted) = relay();
    tokio::spawn(async move { while accepted.recv().await.is_some() {} });
    let addr = server.local_addr().unwrap();

    for (label, dialer) in [
        ("client -> relay", Endpoint::client(loopback()).unwrap()),
        (
            "relay -> relay",
            Endpoint::relay(&IdentityKey::generate().unwrap(), loopback()).unwrap(),
        ),
    ] {
        // Warm-up: page in code and the first allocations.
        for _ in 0..5 {
            dialer.connect(addr, server_id).await.unwrap().close();
        }
        let mut times = Vec::with_capacity(HANDSHAKES);
        let (mut sent, mut received) = (0u64, 0u64);
        for _ in 0..HANDSHAKES {
            let start = Instant::now();
            let link = dialer.connect(addr, server_id).await.unwrap();
            times.push(start.elapsed());
            let stats = link.connection().stats();
            sent += stats.udp_tx.bytes;
            received += stats.udp_rx.bytes;
            link.close();
        }
        summary(label, times);
        println!(
            "{label}: UDP bytes until connected, per handshake: sent {}, received {}",
            sent / HANDSHAKES as u64,
            received / HANDSHAKES as u64
        );
    }

    // Bulk: one stream, client -> relay, the relay counts and acknowledges the bytes.
    let (server, server_id, mut accepted) = relay();
    tokio::spawn(async move {
        while let Some(link) = accepted.recv().await {
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = link.accept_bi().await {
                    let mut n = 0u64;
                    let mut buf = vec![0u8; 64 << 10];
                    while let Some(k) = recv.read(&mut buf).await.unwrap() {
                        n += k as u64;
                    }
                    send.write_all(&n.to_be_bytes()).await.unwrap();
                    send.finish().unwrap();
                }
            });
        }
    });
    let client = Endpoint::client(loopback()).unwrap();
    let link = client
        .connect(server.local_addr().unwrap(), server_id)
        .await
        .unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    for round in 0..3 {
        let start = Instant::now();
        let (mut send, mut recv) = link.open_bi().await.unwrap();
        for _ in 0..BULK / chunk.len() {
            send.write_all(&chunk).await.unwrap();
        }
        send.finish().unwrap();
        let ack = recv.read_to_end(8).await.unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(ack, (BULK as u64).to_be_bytes());
        println!(
            "bulk round {round}: {} MiB in {secs:.3} s = {:.1} MiB/s",
            BULK >> 20,
            (BULK >> 20) as f64 / secs
        );
    }
}

/// A relay that stops answering (its runtime blocked, as a crashed or cut-off host): the
/// link to it closes by idle timeout, and a manager with `remember_unreachable` then fails
/// a new `get` for that peer at once instead of dialing and waiting again; the memory
/// holds that address only.
#[test]
fn a_peer_whose_link_timed_out_is_not_dialed_again_for_a_while() {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (freeze_tx, freeze_rx) = std::sync::mpsc::channel::<()>();
    let silent = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (server, id, _accepted) = relay();
            ready_tx.send((server.local_addr().unwrap(), id)).unwrap();
            // Keep serving until told to freeze, then block this runtime's only thread.
            let freeze = tokio::task::spawn_blocking(move || freeze_rx.recv());
            let _ = freeze.await;
            std::thread::sleep(Duration::from_millis(
                u64::from(MAX_IDLE_TIMEOUT_MS) + 3_000,
            ));
            drop(server);
        });
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bounded(async {
        let (addr, id) = ready_rx.recv().unwrap();
        let manager = LinkManager::new(Endpoint::client(loopback()).unwrap(), 8)
            .remember_unreachable(Duration::from_secs(30));
        let link = manager.get(addr, id).await.unwrap();
        freeze_tx.send(()).unwrap();
        let reason = link.connection().closed().await;
        assert!(
            matches!(reason, quinn::ConnectionError::TimedOut),
            "{reason:?}"
        );
        // The watcher task records the timeout as the connection closes (bounded wait).
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while manager.unreachable_since(&id, addr).is_none() {
            assert!(std::time::Instant::now() < deadline, "timeout not recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(manager.unreachable_since(&id, loopback_unused()).is_none());
        let started = std::time::Instant::now();
        let again = manager.get(addr, id).await;
        assert!(
            matches!(again, Err(NetError::RecentlyUnreachable { addr: a, .. }) if a == addr),
            "{again:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(500));
    }));
    silent.join().unwrap();
}

/// A loopback UDP address with nothing bound to it (bound once, then released).
fn loopback_unused() -> SocketAddr {
    std::net::UdpSocket::bind(loopback())
        .unwrap()
        .local_addr()
        .unwrap()
}
