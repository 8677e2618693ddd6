//! End to end, real processes: 20 relays form a DHT and join the testnet's authorities; a
//! client that knows the authorities and two fallback relays learns every relay from the
//! consensus, builds circuits through relays other than the fallbacks, and after a restart
//! with both fallback relays stopped still builds circuits from its saved consensus, with
//! the same guards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

use anonnet_tests::{
    anonnet_bin, client_status, curl_socks, serve_files, temp_dir, wait_for_full_guard_set, Testnet,
};
use bytes::Bytes;

const PAGE: &[u8] = b"found through the DHT\n";

fn kill(pid: u64) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_learns_relays_from_the_consensus_and_survives_losing_its_fallback_relays() {
    let dir = temp_dir("dht");
    let port = serve_files(vec![("/".into(), Bytes::from_static(PAGE))]).await;
    let net = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || Testnet::start(20, &dir)
    })
    .await
    .unwrap();
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("testnet.json")).unwrap()).unwrap();
    let relays = layout["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 20);
    let bootstrap: HashSet<String> = relays
        .iter()
        .take(2)
        .map(|r| r["node_id"].as_str().unwrap().to_owned())
        .collect();
    let client_state = dir.join("client");

    // The consensus lists at least 18 of the 20 relays (all once every one was tested).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut s = client_status(&client_state).await;
    while s.relays < 18 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s = client_status(&client_state).await;
    }
    assert!(
        s.relays >= 18,
        "the consensus lists only {} relays",
        s.relays
    );

    // Circuits go through relays other than the fallbacks.
    let url = format!("http://127.0.0.1:{port}/");
    let (code, err) = curl_socks(net.socks, &url, &dir.join("page"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(dir.join("page")).unwrap(), PAGE);
    let s = client_status(&client_state).await;
    let used: HashSet<String> = s.circuits.iter().flat_map(|c| c.path.clone()).collect();
    assert!(
        used.iter().any(|id| !bootstrap.contains(id)),
        "circuits use relays that are not the bootstrap ones: {used:?}"
    );
    // A young network: the first consensus may have only a few relays with the Guard flag
    // (it is earned once measured), so the guard set may hold fewer than 3 at first. The
    // client tops its set up from every consensus it installs (one every few seconds
    // here), without building a circuit: no traffic is sent while waiting.
    let s = wait_for_full_guard_set(&client_state, Duration::from_secs(60)).await;
    let guards_before = s.guards.clone();
    assert_eq!(
        guards_before.len(),
        3,
        "the guard set fills as relays earn the Guard flag: {s:?}"
    );

    // Stop the client and both bootstrap relays, then start the client again.
    kill(layout["client"]["pid"].as_u64().unwrap());
    for r in relays.iter().take(2) {
        kill(r["pid"].as_u64().unwrap());
    }
    let ports = client_state.join("ports.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ports.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let config = layout["client"]["config"].as_str().unwrap().to_owned();
    let mut child = tokio::process::Command::new(anonnet_bin())
        .args(["run", "--config", &config])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(client_state.join("restart.log")).unwrap(),
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let socks: SocketAddr = tokio::time::timeout(Duration::from_secs(90), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(a) = l.strip_prefix("SOCKS5 ready on ") {
                return a.trim().parse().unwrap();
            }
        }
        panic!("the restarted client exited before it was ready");
    })
    .await
    .expect("restarted client ready within 90 s");

    let (code, err) = curl_socks(socks, &url, &dir.join("page2"));
    assert_eq!(code, 0, "after the restart: {err}");
    let s = client_status(&client_state).await;
    assert!(
        s.guards.starts_with(&guards_before),
        "guards kept across the restart: {guards_before:?} then {:?}",
        s.guards
    );
    assert!(
        s.relays >= 18,
        "the saved consensus still knows the network: {}",
        s.relays
    );
    if let Some(pid) = child.id() {
        kill(u64::from(pid));
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    drop(net);
}
