//! End to end, real processes: `anonnet testnet` starts 5 relay processes and a client
//! process; system curl fetches through the SOCKS port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use anonnet_tests::{cli_json, curl_socks, serve_files, socks_connect_reply, temp_dir, Testnet};
use bytes::Bytes;
use sha2::{Digest, Sha256};

const BIG: usize = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_page_and_64_mib_through_three_relay_processes() {
    let dir = temp_dir("testnet");
    let page = Bytes::from_static(b"<html><body>hello through anonnet</body></html>\n");
    let mut big = vec![0u8; BIG];
    getrandom::fill(&mut big).unwrap();
    let big = Bytes::from(big);
    let big_sha = hex::encode(Sha256::digest(&big));
    let port = serve_files(vec![("/".into(), page.clone()), ("/big".into(), big)]).await;

    let mut net = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || Testnet::start(5, &dir)
    })
    .await
    .unwrap();
    let socks = net.socks;
    assert!(
        net.stdout
            .iter()
            .any(|l| l.contains("curl --socks5-hostname")),
        "testnet prints a ready-to-paste curl command: {:?}",
        net.stdout
    );

    // The testnet's circuits run protocol version 2 with the hybrid handshake at every
    // hop, and `circuits --json` says so.
    let circuits = cli_json(&["circuits"], &net.client_config());
    let list = circuits.as_array().expect("a JSON array of circuits");
    assert!(!list.is_empty(), "{circuits}");
    for c in list {
        assert_eq!(c["protocol"], 2, "{c}");
        let hops = c["path"].as_array().unwrap().len();
        let kinds: Vec<&str> = c["handshakes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h.as_str())
            .collect();
        assert_eq!(kinds, vec!["x25519+mlkem768"; hops], "{c}");
    }

    // The page, by host name (resolved at the exit).
    let out = net.dir.join("page.html");
    let (code, err) = curl_socks(socks, &format!("http://localhost:{port}/"), &out);
    assert_eq!(code, 0, "curl failed: {err}");
    assert_eq!(std::fs::read(&out).unwrap(), page);

    // 64 MiB by IP, checked by SHA-256.
    let out = net.dir.join("big.bin");
    let started = Instant::now();
    let (code, err) = curl_socks(socks, &format!("http://127.0.0.1:{port}/big"), &out);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "curl failed: {err}");
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), BIG);
    assert_eq!(hex::encode(Sha256::digest(&got)), big_sha);
    println!(
        "64 MiB through 3 relay processes in {secs:.2} s = {:.1} MiB/s",
        64.0 / secs
    );
    let _ = std::fs::remove_file(&out);

    // The relays' own counters show three distinct relays carried the download: each sent
    // at least one cell per full payload towards the client, one of them as the exit.
    let full = anonnet_wire::RelayCell::max_payload(anonnet_wire::BACKWARD_MESSAGE_MAX);
    let min_cells = (BIG / full) as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = net.relay_stats();
        let carried = stats
            .iter()
            .filter(|s| s["cells_backward"].as_u64().unwrap_or(0) >= min_cells)
            .count();
        if carried >= 3 || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let carriers: Vec<_> = stats
        .iter()
        .filter(|s| s["cells_backward"].as_u64().unwrap_or(0) >= min_cells)
        .collect();
    assert_eq!(
        carriers.len(),
        3,
        "three relays carried the download: {stats:#?}"
    );
    assert_eq!(
        carriers
            .iter()
            .filter(|s| s["exit_bytes"].as_u64().unwrap_or(0) >= BIG as u64)
            .count(),
        1,
        "exactly one of them was the exit: {stats:#?}"
    );
    assert!(
        carriers
            .iter()
            .any(|s| s["circuits_from_clients"].as_u64().unwrap_or(0) >= 1),
        "one of them was the guard: {stats:#?}"
    );

    // A closed port: "connection refused" (5). The exit policy: "not allowed" (2).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    assert_eq!(
        socks_connect_reply(socks, 1, "127.0.0.1", closed_port).await,
        5
    );
    assert_eq!(socks_connect_reply(socks, 1, "10.0.0.1", 80).await, 2);
    // A name that does not resolve: "host unreachable" (4); BIND: "command not supported" (7).
    assert_eq!(
        socks_connect_reply(socks, 1, "no-such-host.invalid", 80).await,
        4
    );
    assert_eq!(socks_connect_reply(socks, 2, "127.0.0.1", port).await, 7);
    // curl sees the refusal too.
    let (code, err) = curl_socks(
        socks,
        &format!("http://127.0.0.1:{closed_port}/"),
        &net.dir.join("x"),
    );
    assert_eq!(code, 97, "{err}");

    net.stop();
}
