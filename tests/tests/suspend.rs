//! End to end, real processes (issue 18 item 2): a client stopped with SIGSTOP for longer
//! than the link timeout (what a laptop lid does to it) and continued blames no relay: its
//! requests work again within seconds and `guards.json` is unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use anonnet_tests::{anonnet_bin, curl_socks, temp_dir, Testnet};

fn signal(pid: u64, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn a_stopped_and_continued_client_keeps_its_guards() {
    let dir = temp_dir("suspend");
    let net = Testnet::start(5, &dir);
    let layout = net.layout();
    let pid = layout["client"]["pid"].as_u64().unwrap();
    let site = layout["service"]["target"].as_str().unwrap().to_owned();
    let url = format!("http://{site}/");
    let out = dir.join("body");
    let (code, err) = curl_socks(net.socks, &url, &out);
    assert_eq!(code, 0, "{err}");
    // A young network: relays earn the Guard flag once measured, and the guard set fills
    // up as they do. Wait for a full set, so that what changes afterwards is the stop's.
    let status = || -> serde_json::Value {
        let o = Command::new(anonnet_bin())
            .args(["status", "--json", "--config"])
            .arg(net.client_config())
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while status()["guards"].as_array().map_or(0, Vec::len) < 3 && Instant::now() < deadline {
        let _ = curl_socks(net.socks, &url, &out);
        std::thread::sleep(Duration::from_millis(500));
    }
    let guards_file = dir.join("client").join("guards.json");
    let before = std::fs::read_to_string(&guards_file).unwrap();

    // Longer than the 6 s QUIC idle timeout: every link of the client is dead when it
    // runs again.
    signal(pid, "-STOP");
    std::thread::sleep(Duration::from_secs(10));
    signal(pid, "-CONT");

    let resumed = Instant::now();
    let mut ok = false;
    while resumed.elapsed() < Duration::from_secs(20) {
        let (code, _) = curl_socks(net.socks, &url, &out);
        if code == 0 {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(ok, "no request worked within 20 s of the resume");
    println!(
        "first request after the resume worked {:.1} s after SIGCONT",
        resumed.elapsed().as_secs_f64()
    );
    // A few more requests, so new circuits are built on the new links.
    for _ in 0..3 {
        let (code, err) = curl_socks(net.socks, &url, &out);
        assert_eq!(code, 0, "{err}");
    }
    let after = std::fs::read_to_string(&guards_file).unwrap();
    assert_eq!(before, after, "the guard set changed after a stop/continue");
    let s = status();
    assert_eq!(
        s["avoided_relays"].as_array().map(Vec::len),
        Some(0),
        "no relay is avoided for the client's own absence: {s}"
    );
    let log = std::fs::read_to_string(dir.join("client").join("client.log")).unwrap();
    assert!(
        log.contains("this client was away"),
        "the absence was noticed"
    );
}
