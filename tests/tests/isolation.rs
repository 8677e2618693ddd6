//! End to end, real processes: SOCKS5 credentials isolate circuits, and a warm pool serves
//! new connections without building circuits (read from the client's own counters through
//! its control API).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use anonnet_control::{ControlClient, Status};
use anonnet_tests::{serve_files, temp_dir, Testnet};
use bytes::Bytes;

const PAGE: &[u8] = b"isolated\n";

/// Fetch `url` through SOCKS5 as `user:pass` (names resolved by the exit).
async fn curl_as(socks: SocketAddr, user: &str, url: &str) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "-x"])
        .arg(format!("socks5h://{user}@{socks}"))
        .arg(url)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl as {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, PAGE);
}

/// (circuit id, exit NodeId) of every circuit in use.
fn in_use(status: &Status) -> Vec<(u64, String)> {
    let mut v: Vec<_> = status
        .circuits
        .iter()
        .filter(|c| c.state == "in use")
        .map(|c| (c.id, c.path.last().cloned().unwrap_or_default()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks_users_get_separate_circuits_and_exits_from_a_warm_pool() {
    let dir = temp_dir("isolation");
    let port = serve_files(vec![("/".into(), Bytes::from_static(PAGE))]).await;
    let net = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || Testnet::start(5, &dir)
    })
    .await
    .unwrap();
    let control = ControlClient::from_state_dir(&dir.join("client")).unwrap();
    // Wait (bounded) for the pool: three clean circuits.
    let mut warm = false;
    for _ in 0..200 {
        let s = control.status().await.unwrap();
        if s.circuits.iter().filter(|c| c.state == "clean").count() >= 3 {
            warm = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(warm, "the pool filled");
    let url = format!("http://localhost:{port}/");

    curl_as(net.socks, "alice:a", &url).await;
    let after_alice = in_use(&control.status().await.unwrap());
    assert_eq!(after_alice.len(), 1, "{after_alice:?}");

    curl_as(net.socks, "bob:b", &url).await;
    let after_bob = in_use(&control.status().await.unwrap());
    assert_eq!(
        after_bob.len(),
        2,
        "bob got a circuit of his own: {after_bob:?}"
    );
    assert_ne!(after_bob[0].1, after_bob[1].1, "with a different exit");

    for _ in 0..3 {
        curl_as(net.socks, "alice:a", &url).await;
        curl_as(net.socks, "bob:b", &url).await;
    }
    let status = control.status().await.unwrap();
    assert_eq!(
        in_use(&status),
        after_bob,
        "each user reused their circuit over repeated requests"
    );
    assert_eq!(
        status.counters.circuits_built_on_demand, 0,
        "no connection waited for a circuit build: {:?}",
        status.counters
    );
    drop(net);
}
