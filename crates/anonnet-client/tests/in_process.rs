//! Circuits through three in-process relays on loopback: real QUIC, real TCP, one process.
//! The multi-process end-to-end tests live in the `tests/` crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anonnet_client::circuit::HandshakeKind;
use anonnet_client::{Client, ClientConfig, ErrorKind, HasKind};
use anonnet_relay::{Action, ExitPolicy, ExitRule, Limits, Relay, RelayConfig};
use anonnet_wire::{HandshakeSet, PortRange, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn relays(n: usize, dir: &std::path::Path) -> Vec<Relay> {
    relays_answering(&vec![HandshakeSet::ALL; n], dir).await
}

/// One exit relay per entry of `handshakes`, answering (and advertising) those circuit
/// handshake types.
async fn relays_answering(handshakes: &[HandshakeSet], dir: &std::path::Path) -> Vec<Relay> {
    let mut out = Vec::new();
    for (i, &circuit_handshakes) in handshakes.iter().enumerate() {
        let cfg = RelayConfig {
            data_dir: dir.join(format!("relay-{i}")),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            exit_policy: Some(ExitPolicy::with_rules(vec![ExitRule {
                action: Action::Accept,
                net: "127.0.0.0/8".parse().unwrap(),
                ports: PortRange::ALL,
            }])),
            guard: true,
            circuit_handshakes,
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

/// A client that knows `relays`, with its state in `state_dir` (none: in memory), once
/// bootstrapped (at most 20 s).
async fn ready_client(
    relays: &[Relay],
    state_dir: Option<std::path::PathBuf>,
) -> std::sync::Arc<Client> {
    ready_client_with(relays, state_dir, HandshakeKind::default()).await
}

/// As [`ready_client`], running the circuit handshake `kind` with every relay.
async fn ready_client_with(
    relays: &[Relay],
    state_dir: Option<std::path::PathBuf>,
    kind: HandshakeKind,
) -> std::sync::Arc<Client> {
    start_ready(ClientConfig {
        state_dir,
        circuit_handshake: kind,
        ..loopback_config(relays)
    })
    .await
}

/// A client config bootstrapping from `relays`, on loopback, same-subnet paths allowed.
fn loopback_config(relays: &[Relay]) -> ClientConfig {
    ClientConfig {
        bootstrap: relays.iter().map(|r| r.descriptor().clone()).collect(),
        quic_bind: "127.0.0.1:0".parse().unwrap(),
        allow_same_subnet: true,
        ..ClientConfig::default()
    }
}

/// Start a client with `config` and wait (20 s at most) until it is ready.
async fn start_ready(config: ClientConfig) -> std::sync::Arc<Client> {
    let client = Client::start(config).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), client.wait_ready())
        .await
        .unwrap()
        .unwrap();
    client
}

/// A TCP echo server on 127.0.0.1:0; returns its port.
async fn spawn_echo_server() -> u16 {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// A fresh temporary directory `anonnet-<name>-XXXXXX`, removed when dropped.
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("anonnet-{name}-"))
        .tempdir()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_through_three_relays_echoes_bytes_and_reports_failures() {
    let dir = tempdir("inproc");
    let relays = relays(3, dir.path()).await;
    let echo_port = spawn_echo_server().await;
    let client = ready_client(&relays, None).await;

    let mut s = client
        .connect(Target::Host("localhost".into()), echo_port)
        .await
        .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = tokio::io::split(&mut s);
    let send = payload.clone();
    let writer = async move {
        wr.write_all(&send).await.unwrap();
    };
    let reader = async {
        let mut got = vec![0u8; payload.len()];
        rd.read_exact(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(writer, reader)
    })
    .await
    .unwrap();
    assert_eq!(got, payload);

    // Every relay carried cells: the path used all three.
    for r in &relays {
        assert!(
            r.stats()
                .cells_forward
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
    }

    // A closed port is refused, a private address is not allowed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = client
        .connect(Target::Ip("127.0.0.1".parse().unwrap()), closed_port)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let err = client
        .connect(Target::Ip("10.0.0.1".parse().unwrap()), 80)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ExitPolicy, "{err}");
    let err = client
        .connect(Target::Host("no-such-host.invalid".into()), 80)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HostUnreachable, "{err}");

    stop(&relays).await;
}

/// Both circuit handshakes (protocol §5.1, §5.4) build working 3-hop circuits against the
/// same relays, and the status names the one each circuit used: hybrid by default,
/// classical when configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_and_classical_circuits_both_carry_streams_and_say_which() {
    let dir = tempdir("handshakes");
    let relays = relays(3, dir.path()).await;
    let echo_port = spawn_echo_server().await;
    let hybrid = ready_client(&relays, None).await;
    let classical = ready_client_with(&relays, None, HandshakeKind::Classical).await;
    for (client, name) in [(&hybrid, "x25519+mlkem768"), (&classical, "x25519")] {
        let mut s = client
            .connect(Target::Host("localhost".into()), echo_port)
            .await
            .unwrap();
        let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
        let mut got = vec![0u8; payload.len()];
        tokio::time::timeout(Duration::from_secs(20), async {
            s.write_all(&payload).await.unwrap();
            s.read_exact(&mut got).await.unwrap();
        })
        .await
        .unwrap();
        assert_eq!(got, payload);
        let status = client.status();
        assert!(!status.circuits.is_empty());
        for c in &status.circuits {
            assert_eq!(c.handshakes, vec![name.to_string(); c.path.len()], "{name}");
            assert_eq!(c.protocol, 2);
        }
        client.shutdown(Duration::from_secs(2)).await;
    }
    stop(&relays).await;
}

/// Handshakes are negotiated per hop (protocol §9.2): with one relay answering only type 1,
/// a hybrid client's circuits run classical X25519 with that relay and the hybrid
/// handshake with the others, carry streams, and the status says so hop by hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_client_runs_classical_with_a_classical_only_relay_and_hybrid_elsewhere() {
    let dir = tempdir("per-hop");
    let relays = relays_answering(
        &[HandshakeSet::ALL, HandshakeSet::NTOR, HandshakeSet::ALL],
        dir.path(),
    )
    .await;
    let classical_only = relays[1].node_id().to_hex();
    let echo_port = spawn_echo_server().await;
    let client = ready_client(&relays, None).await;
    let mut s = client
        .connect(Target::Host("localhost".into()), echo_port)
        .await
        .unwrap();
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 239) as u8).collect();
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(20), async {
        s.write_all(&payload).await.unwrap();
        s.read_exact(&mut got).await.unwrap();
    })
    .await
    .unwrap();
    assert_eq!(got, payload);

    let status = client.status();
    assert!(!status.circuits.is_empty());
    for c in &status.circuits {
        // Three relays, three hops: the classical-only relay is on every circuit.
        assert_eq!(c.path.len(), 3);
        assert!(c.path.contains(&classical_only), "{:?}", c.path);
        let expected: Vec<&str> = c
            .path
            .iter()
            .map(|id| {
                if *id == classical_only {
                    "x25519"
                } else {
                    "x25519+mlkem768"
                }
            })
            .collect();
        assert_eq!(c.handshakes, expected, "path {:?}", c.path);
    }
    // The classical-only relay built circuits; none refused a CREATE (a type-2 CREATE
    // would have been refused with DESTROY and the build would have failed).
    assert!(
        relays[1]
            .stats()
            .circuits_created
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert_eq!(
        status.counters.circuit_build_failures, 0,
        "no build failed on a refused handshake"
    );
    client.shutdown(Duration::from_secs(2)).await;
    stop(&relays).await;
}

/// 16 MiB one way, the shape of a download. With quinn's `pad_to_mtu` on this stalled after
/// about 0.5 MiB (see `anonnet_net::PAD_TO_MTU`); every read here must progress within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_download_does_not_stall() {
    const TOTAL: usize = 16 << 20;
    let dir = tempdir("bulk");
    let relays = relays(3, dir.path()).await;
    let srv = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = srv.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = srv.accept().await.unwrap();
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..TOTAL / chunk.len() {
            s.write_all(&chunk).await.unwrap();
        }
    });
    let client = ready_client(&relays, None).await;
    let mut s = client
        .connect(Target::Ip("127.0.0.1".parse().unwrap()), port)
        .await
        .unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 65536];
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => panic!("stream failed after {total} bytes: {e}"),
            Err(_) => panic!("stalled after {total} bytes"),
        }
    }
    assert_eq!(total, TOTAL);
    println!(
        "16 MiB through 3 in-process relays: {:.1} MiB/s",
        16.0 / started.elapsed().as_secs_f64()
    );
    stop(&relays).await;
}

async fn net(name: &str) -> (tempfile::TempDir, Vec<Relay>, std::sync::Arc<Client>) {
    let dir = tempdir(name);
    let relays = relays(3, dir.path()).await;
    let client = ready_client(&relays, None).await;
    (dir, relays, client)
}

/// Failed connects release their exit stream slot: more failures than the per-circuit
/// stream limit, then a good connect on the same circuit still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connects_do_not_exhaust_the_exit() {
    let (_dir, relays, client) = net("failed").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    for _ in 0..anonnet_client::circuit::MAX_STREAMS_PER_CIRCUIT + 20 {
        let err = client
            .connect(Target::Ip("127.0.0.1".parse().unwrap()), closed_port)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    }
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = open.local_addr().unwrap().port();
    tokio::spawn(async move { while open.accept().await.is_ok() {} });
    client
        .connect(Target::Ip("127.0.0.1".parse().unwrap()), port)
        .await
        .unwrap();
    let in_use = |c: &Client| {
        c.status()
            .circuits
            .iter()
            .filter(|c| c.state == "in use")
            .count()
    };
    assert_eq!(in_use(&client), 1, "the circuit in use was never replaced");
    stop(&relays).await;
}

/// More concurrent streams than one circuit carries: a second circuit takes the rest and
/// the streams on the first keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_circuit_is_not_closed_when_another_stream_comes() {
    let (_dir, relays, client) = net("full").await;
    let port = spawn_echo_server().await;
    let mut streams = Vec::new();
    for _ in 0..anonnet_client::circuit::MAX_STREAMS_PER_CIRCUIT + 8 {
        streams.push(
            client
                .connect(Target::Ip("127.0.0.1".parse().unwrap()), port)
                .await
                .unwrap(),
        );
    }
    let in_use = client
        .status()
        .circuits
        .iter()
        .filter(|c| c.state == "in use")
        .count();
    assert_eq!(
        in_use, 2,
        "a second circuit took the streams that did not fit"
    );
    for s in [streams.first_mut().unwrap()] {
        s.write_all(b"still here").await.unwrap();
        let mut got = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"still here");
    }
    stop(&relays).await;
}

/// Bytes written before the stream is dropped all reach the destination: the exit sends
/// queued DATA before it acts on END.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_written_before_end_reaches_the_destination() {
    let (_dir, relays, client) = net("end").await;
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = sink.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all).await;
                let _ = tx.send(all.len()).await;
            });
        }
    });
    for _ in 0..5 {
        let mut s = client
            .connect(Target::Ip("127.0.0.1".parse().unwrap()), port)
            .await
            .unwrap();
        s.write_all(&vec![1u8; 200_000]).await.unwrap();
        drop(s);
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, 200_000);
    }
    stop(&relays).await;
}

/// A reader that stalls while the destination keeps sending: the exit stops reading once
/// the circuit and stream windows are spent, so neither the relays nor the client buffer
/// more than a window; reading again resumes the transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_keeps_buffers_bounded() {
    use anonnet_wire::flow::{CIRCUIT_WINDOW, STREAM_WINDOW};
    use std::sync::atomic::Ordering::Relaxed;
    let (_dir, relays, client) = net("stall").await;
    let srv = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = srv.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = srv.accept().await.unwrap();
        let chunk = vec![3u8; 64 << 10];
        // Far more than any window: 256 MiB, unless the reader stalls the sender first.
        for _ in 0..4096 {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut s = client
        .connect(Target::Ip("127.0.0.1".parse().unwrap()), port)
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    s.read_exact(&mut first).await.unwrap();
    let exit_bytes = || {
        relays
            .iter()
            .map(|r| r.stats().exit_bytes.load(Relaxed))
            .sum::<u64>()
    };
    // Stall: wait (bounded) until the windows are full and the exit stops reading (no
    // growth for 250 ms), then observe for two more seconds that nothing grows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut settled = exit_bytes();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = exit_bytes();
        if now == settled && now > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the exit kept reading: {now} bytes"
        );
        settled = now;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_2s = exit_bytes();
    let status = client.status();
    let cell_data = anonnet_wire::RelayCell::max_payload(anonnet_wire::BACKWARD_MESSAGE_MAX) as u64;
    assert_eq!(
        settled, after_2s,
        "the exit stopped reading from the destination"
    );
    assert!(
        after_2s <= u64::from(CIRCUIT_WINDOW + 1) * cell_data,
        "the exit read at most a circuit window: {after_2s}"
    );
    assert!(
        status.counters.buffered_bytes <= u64::from(STREAM_WINDOW + 1) * cell_data,
        "the client buffers at most a stream window: {}",
        status.counters.buffered_bytes
    );
    // Reading again resumes the transfer well past the windows.
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0usize;
    while total < (8 << 20) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        total += n;
    }
    assert!(exit_bytes() > after_2s + (4 << 20));
    stop(&relays).await;
}

/// Wait (bounded) until the pool holds `n` clean circuits.
async fn pool_warm(client: &Client, n: usize) {
    for _ in 0..200 {
        let clean = client
            .status()
            .circuits
            .iter()
            .filter(|c| c.state == "clean")
            .count();
        if clean >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("pool did not fill: {:#?}", client.status());
}

/// Different credentials never share a circuit (and get different exits); the same
/// credentials reuse theirs; with the pool warm no request waits for a circuit build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_groups_get_their_own_circuits_from_a_warm_pool() {
    use anonnet_client::IsolationKey;
    let dir = tempdir("iso");
    let relays = relays(5, dir.path()).await;
    let client = ready_client(&relays, None).await;
    pool_warm(&client, 3).await;
    let port = spawn_echo_server().await;
    let alice = IsolationKey::from_credentials(b"alice", b"x");
    let bob = IsolationKey::from_credentials(b"bob", b"y");
    let target = || Target::Ip("127.0.0.1".parse().unwrap());
    let mut alice_circuits = Vec::new();
    let mut bob_circuits = Vec::new();
    for _ in 0..3 {
        let a = client
            .connect_isolated(target(), port, &alice)
            .await
            .unwrap();
        let b = client.connect_isolated(target(), port, &bob).await.unwrap();
        alice_circuits.push((a.circuit().id(), a.circuit().path()[2]));
        bob_circuits.push((b.circuit().id(), b.circuit().path()[2]));
    }
    assert!(
        alice_circuits.windows(2).all(|w| w[0] == w[1]),
        "{alice_circuits:?}"
    );
    assert!(
        bob_circuits.windows(2).all(|w| w[0] == w[1]),
        "{bob_circuits:?}"
    );
    assert_ne!(alice_circuits[0].0, bob_circuits[0].0, "separate circuits");
    assert_ne!(alice_circuits[0].1, bob_circuits[0].1, "separate exits");
    let counters = client.status().counters;
    assert_eq!(
        counters.circuits_built_on_demand, 0,
        "every stream found a ready circuit: {counters:?}"
    );
    // New identity: the next request gets another circuit.
    client.new_identity();
    let a = client
        .connect_isolated(target(), port, &alice)
        .await
        .unwrap();
    assert_ne!(a.circuit().id(), alice_circuits[0].0);
    stop(&relays).await;
}

/// With more isolation groups asking at once than the pool holds clean circuits, the
/// others are built on demand, and the counter says so (the warm-pool test above asserts
/// that it stays 0 when the pool suffices).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_pool_count_on_demand_builds() {
    use anonnet_client::IsolationKey;
    let dir = tempdir("on-demand");
    let relays = relays(5, dir.path()).await;
    let client = start_ready(ClientConfig {
        pool_size: 1,
        ..loopback_config(&relays)
    })
    .await;
    pool_warm(&client, 1).await;
    assert_eq!(client.status().counters.circuits_built_on_demand, 0);
    let port = spawn_echo_server().await;
    let groups: Vec<IsolationKey> = (0..4u8)
        .map(|i| IsolationKey::from_credentials(&[b'g', i], b"x"))
        .collect();
    let streams = futures_util::future::join_all(
        groups
            .iter()
            .map(|g| client.connect_isolated(Target::Ip("127.0.0.1".parse().unwrap()), port, g)),
    )
    .await;
    let circuits: std::collections::HashSet<u64> = streams
        .into_iter()
        .map(|s| s.unwrap().circuit().id())
        .collect();
    assert_eq!(circuits.len(), 4, "one circuit per isolation group");
    let on_demand = client.status().counters.circuits_built_on_demand;
    assert!(
        (1..=3).contains(&on_demand),
        "4 groups, 1 pooled circuit: {on_demand} built on demand"
    );
    stop(&relays).await;
}

/// A client that shuts down leaves its guard set as it was: the links it closes itself do
/// not count against its guards. (Before, each circuit lost to the closing endpoint marked
/// its guard as failed, and the pool, refilling, appended a new guard to `guards.json`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_leaves_the_guard_set_alone() {
    let dir = tempdir("guards-shutdown");
    let relays = relays(5, dir.path()).await;
    let state = dir.path().join("client");
    std::fs::create_dir_all(&state).unwrap();
    let client = ready_client(&relays, Some(state.clone())).await;
    let before = client.guards();
    assert_eq!(before.len(), 3);
    let file = std::fs::read(state.join("guards.json")).unwrap();

    client.shutdown(Duration::from_secs(1)).await;
    // The pool drops the circuits whose links closed (each one counted against its guard
    // before the fix), as a status request would make it do...
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !client.circuits().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "circuits left 5 s after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and a circuit asked for now (which would top the guard set up) is refused.
    assert!(client.build_internal(None, &[]).await.is_err());
    assert_eq!(client.guards(), before, "the guard set is unchanged");
    assert_eq!(
        std::fs::read(state.join("guards.json")).unwrap(),
        file,
        "guards.json is unchanged"
    );
    stop(&relays).await;
}

/// Shut the relays down and wait for their tasks, so their data directories are quiet
/// before the test removes them.
async fn stop(relays: &[Relay]) {
    for r in relays {
        r.shutdown_gracefully(Duration::from_secs(1)).await;
    }
}
