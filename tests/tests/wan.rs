//! The testnet off loopback (issue 15 item 1): `anonnet testnet --wan broadband` puts
//! every authority, relay, the client, the service host and the demo site in its own
//! network namespace, each in its own /16 of 10.0.0.0/8, behind vde2 links with
//! 5–40 ms one-way delay per host, 100 Mbit/s and 0.1 % loss. Through the SOCKS port
//! forwarded to the root namespace's loopback, curl fetches a 16 MiB file intact and the
//! demo site as a hidden service; `anonnet circuits --json` (run in the client's
//! namespace) shows paths whose three relays are in three different /16s, and no
//! generated config allows same-subnet paths.
//!
//! Needs root, `ip` and vde2 (`.ci/run` installs vde2); it fails, naming what is missing,
//! rather than skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use anonnet_tests::{anonnet_bin, curl_socks, temp_dir, Testnet};

/// Bytes of the bulk download (the 16 MiB).
const BULK: u64 = 16 * 1024 * 1024;
/// The demo site's pattern (daemon/src/site.rs): byte `i` is `i mod 251`.
const PATTERN_PERIOD: u64 = 251;

/// The /16 an `IP:PORT` string is in (first two octets).
fn slash16(addr: &str) -> (u8, u8) {
    let a: SocketAddr = addr.parse().unwrap();
    match a.ip() {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0], o[1])
        }
        other => panic!("a WAN relay address is IPv4 in 10.0.0.0/8, not {other}"),
    }
}

#[test]
fn a_broadband_testnet_carries_a_bulk_download_and_a_hidden_service_over_distinct_subnets() {
    for tool in ["ip", "vde_switch", "vde_plug2tap", "wirefilter"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is not installed: .ci/run installs vde2 (and iproute2) for this test"
        );
    }
    let dir = temp_dir("wan");
    let started = Instant::now();
    let mut net = Testnet::start_with(3, &dir, &["--wan", "broadband", "--wan-seed", "15"]);
    let ready_s = started.elapsed().as_secs_f64();
    let layout = net.layout();
    let wan = &layout["wan"];
    assert_eq!(wan["profile"], "broadband");
    let hosts = wan["hosts"].as_array().unwrap();
    // 3 authorities, 3 relays, the site, the client and the service.
    assert_eq!(hosts.len(), 9, "{hosts:?}");
    let nets: HashSet<(u8, u8)> = hosts
        .iter()
        .map(|h| slash16(&format!("{}:0", h["addr"].as_str().unwrap())))
        .collect();
    assert_eq!(
        nets.len(),
        hosts.len(),
        "every host in its own /16: {hosts:?}"
    );
    assert!(nets.iter().all(|(a, _)| *a == 10));
    for h in hosts {
        let d = h["delay_ms"].as_u64().unwrap();
        assert!((5..=40).contains(&d), "{h}");
    }
    // Nothing in a WAN testnet relaxes the path rules.
    for config in [net.client_config(), dir.join("service/service.toml")] {
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(
            !text.contains("allow_same_subnet_paths"),
            "{}: {text}",
            config.display()
        );
    }

    let site = layout["site"]["addr"].as_str().unwrap().to_owned();
    assert!(
        site.starts_with("10."),
        "the demo site is on the WAN: {site}"
    );
    let out = dir.join("bulk.bin");
    let t = Instant::now();
    let (code, err) = curl_socks(net.socks, &format!("http://{site}/bytes/{BULK}"), &out);
    let bulk_s = t.elapsed().as_secs_f64();
    assert_eq!(code, 0, "curl through the WAN testnet failed: {err}");
    let body = std::fs::read(&out).unwrap();
    assert_eq!(body.len() as u64, BULK, "the whole file arrived");
    let first_bad = body
        .iter()
        .enumerate()
        .position(|(i, &b)| u64::from(b) != i as u64 % PATTERN_PERIOD);
    assert_eq!(first_bad, None, "the file arrived intact");
    std::fs::remove_file(&out).unwrap();

    let anon = layout["service"]["address"].as_str().unwrap().to_owned();
    let page = dir.join("hs.html");
    let t = Instant::now();
    let (code, err) = curl_socks(net.socks, &format!("http://{anon}/"), &page);
    let hs_s = t.elapsed().as_secs_f64();
    assert_eq!(code, 0, "the hidden service over the WAN: {err}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("Hello from the anonnet testnet"), "{html}");

    // The control API listens in the client's namespace.
    let netns = layout["client"]["netns"].as_str().unwrap().to_owned();
    let out = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(anonnet_bin())
        .args(["circuits", "--json", "--config"])
        .arg(net.client_config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "anonnet circuits in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let circuits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let circuits = circuits.as_array().unwrap();
    assert!(!circuits.is_empty(), "the client has circuits");
    for c in circuits {
        let addrs: Vec<&str> = c["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(addrs.len(), 3, "{c}");
        let subnets: HashSet<(u8, u8)> = addrs.iter().map(|a| slash16(a)).collect();
        assert_eq!(subnets.len(), 3, "three relays, three /16s: {c}");
    }
    eprintln!(
        "wan broadband: ready in {ready_s:.1} s; 16 MiB in {bulk_s:.1} s ({:.2} MiB/s); \
         hidden service page in {hs_s:.2} s",
        BULK as f64 / 1048576.0 / bulk_s
    );
    net.stop();
    // stop() waited for the testnet to exit: its namespaces are gone.
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains(&netns), "namespaces deleted at stop: {left}");
}
