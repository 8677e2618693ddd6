//! Loopback scenarios: real QUIC endpoints on 127.0.0.1, each bounded by a timeout.

use std::future::Future;
use std::net::SocketAddr;
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
