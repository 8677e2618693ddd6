//! The testnet off loopback (issue 15 item 1): `anonnet testnet --wan broadband` puts
//! every authority, relay, the client, the service host and the demo site in its own
//! network namespace, each in its own /16 of 10.0.0.0/8, behind vde2 links with
//! 5–40 ms one-way delay per host, 100 Mbit/s and 0.1 % loss. Through the SOCKS port
//! forwarded to the root namespace's loopback, curl fetches a 16 MiB file intact and the
//! demo site as a hidden service; `anonnet circuits --json` (run in the client's
//! namespace) shows paths whose three relays are in three different /16s, and no
//! generated config allows same-subnet paths.
//!
//! Congestion control and optimistic data (issue 15 items 2–3) are measured here too:
//! the 16 MiB download must run well above what fixed windows over CUBIC links managed
//! (0.35 MB/s on this profile), and a warm `GET` through the HTTP proxy, and one pipelined
//! behind a SOCKS5 request, must take at most 1.3 circuit round trips plus the server's
//! time (the exit's TCP connect and request, two exit–site round trips), both computed
//! from the emulator's configured delays.
//!
//! Needs root, `ip` and vde2 (`.ci/run` installs vde2); it fails, naming what is missing,
//! rather than skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use anonnet_tests::{anonnet_bin, curl_socks, socks5_request, temp_dir, Testnet};

/// The bottleneck of the broadband profile (bytes per second): every host's link.
const BOTTLENECK: f64 = 12_500_000.0;
/// Lower bound asserted on the bulk rate, as a share of [`BOTTLENECK`]: 8 %, three times
/// the 0.35 MB/s that fixed windows over CUBIC links reached on this profile. The goal
/// (issue 15) is 70 %; the figure printed is the real one.
const MIN_SHARE: f64 = 0.08;

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
    let mut net = Testnet::start_with(
        3,
        &dir,
        &[
            "--wan",
            "broadband",
            "--wan-seed",
            "15",
            "--extra-clients",
            "1",
        ],
    );
    let ready_s = started.elapsed().as_secs_f64();
    let layout = net.layout();
    let wan = &layout["wan"];
    assert_eq!(wan["profile"], "broadband");
    let hosts = wan["hosts"].as_array().unwrap();
    // 3 authorities, 3 relays, the site, the client, the service and client-2.
    assert_eq!(hosts.len(), 10, "{hosts:?}");
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

    let rate = BULK as f64 / bulk_s;
    assert!(
        rate >= MIN_SHARE * BOTTLENECK,
        "16 MiB at {:.2} MB/s: below {:.0} % of the {:.1} MB/s bottleneck",
        rate / 1e6,
        MIN_SHARE * 100.0,
        BOTTLENECK / 1e6
    );

    let anon = layout["service"]["address"].as_str().unwrap().to_owned();
    let page = dir.join("hs.html");
    let t = Instant::now();
    let (code, err) = curl_socks(net.socks, &format!("http://{anon}/"), &page);
    let hs_s = t.elapsed().as_secs_f64();
    assert_eq!(code, 0, "the hidden service over the WAN: {err}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("Hello from the anonnet testnet"), "{html}");

    // The extra client (`--extra-clients 1`, what bench-scale uses): a daemon of its own
    // in a namespace of its own, its SOCKS port forwarded to loopback like the first's.
    let extra = &layout["clients"][0];
    assert_eq!(extra["name"], "client-2", "{extra}");
    let netns = layout["client"]["netns"].as_str().unwrap().to_owned();
    let extra_ns = extra["netns"].as_str().unwrap().to_owned();
    assert_ne!(extra_ns, netns);
    let extra_socks: SocketAddr = extra["socks"].as_str().unwrap().parse().unwrap();
    assert!(extra_socks.ip().is_loopback(), "{extra}");
    let (code, err) = curl_socks(extra_socks, &format!("http://{site}/"), &page);
    assert_eq!(code, 0, "through the extra client: {err}");
    assert!(std::fs::read_to_string(&page)
        .unwrap()
        .contains("Hello from the anonnet testnet"));

    // The control API listens in the client's namespace.
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
    let circuits = circuits.as_array().unwrap().clone();
    assert!(!circuits.is_empty(), "the client has circuits");
    for c in &circuits {
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
    // Optimistic data: a warm GET through the HTTP proxy. The circuit round trip of the
    // circuits in use, from the configured one-way delays: each leg crosses two hosts'
    // links, and a round trip crosses each leg twice.
    let delay_of = |addr: &str| -> f64 {
        let ip = addr.split(':').next().unwrap();
        hosts
            .iter()
            .find(|h| h["addr"] == ip)
            .map(|h| h["delay_ms"].as_f64().unwrap() / 1000.0)
            .unwrap_or_else(|| panic!("no host has {ip}"))
    };
    let client_delay = delay_of(&format!(
        "{}:0",
        hosts.iter().find(|h| h["name"] == "client").unwrap()["addr"]
            .as_str()
            .unwrap()
    ));
    let site_delay = delay_of(&site);
    let url = format!("http://{site}/");
    let ttfb = || -> f64 {
        let o = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "--max-time",
                "30",
                "-w",
                "%{time_starttransfer}",
                "-x",
            ])
            .arg(format!("http://{}", net.http))
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "curl -x: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    ttfb(); // warms the HTTP proxy's circuit
    let best = (0..3).map(|_| ttfb()).fold(f64::MAX, f64::min);
    // The same GET pipelined behind a SOCKS5 request, all in one write as Tor Browser
    // sends it: it travels right behind BEGIN too (§6.5), on the same circuit (the
    // default isolation group), and the reply still waits for CONNECTED.
    let site_addr: SocketAddr = site.parse().unwrap();
    let socks_ttfb = || -> f64 {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(net.socks).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        s.set_nodelay(true).unwrap();
        let mut request = vec![5, 1, 0];
        request.extend(socks5_request(
            1,
            &site_addr.ip().to_string(),
            site_addr.port(),
        ));
        request.extend_from_slice(format!("GET / HTTP/1.0\r\nHost: {site}\r\n\r\n").as_bytes());
        let t0 = Instant::now();
        s.write_all(&request).unwrap();
        let mut reply = [0u8; 12];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(reply[..4], [5, 0, 5, 0], "SOCKS5 replies: {reply:?}");
        let mut first = [0u8; 1];
        s.read_exact(&mut first).unwrap();
        t0.elapsed().as_secs_f64()
    };
    let best_socks = (0..3).map(|_| socks_ttfb()).fold(f64::MAX, f64::min);
    let out = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(anonnet_bin())
        .args(["status", "--json", "--config"])
        .arg(net.client_config())
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        status["counters"]["optimistic_streams"].as_u64().unwrap() >= 4 + 3,
        "the GETs went optimistically: {}",
        status["counters"]
    );
    let mut bound = 0.0f64;
    let mut rtts = Vec::new();
    for c in status["circuits"].as_array().unwrap() {
        if c["state"] != "in use" {
            continue;
        }
        let d: Vec<f64> = c["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| delay_of(a.as_str().unwrap()))
            .collect();
        let circuit_rtt = 2.0 * ((client_delay + d[0]) + (d[0] + d[1]) + (d[1] + d[2]));
        let server = 2.0 * 2.0 * (d[2] + site_delay);
        rtts.push(circuit_rtt);
        bound = bound.max(1.3 * circuit_rtt + server);
    }
    assert!(!rtts.is_empty(), "a circuit is in use");
    assert!(
        best <= bound,
        "warm GET: time to first byte {best:.3} s, more than 1.3 circuit round trips \
         ({rtts:?} s) plus the server's time: {bound:.3} s"
    );
    assert!(
        best_socks <= bound,
        "warm GET pipelined over SOCKS5: time to first byte {best_socks:.3} s, more than \
         1.3 circuit round trips ({rtts:?} s) plus the server's time: {bound:.3} s"
    );
    eprintln!(
        "wan broadband: ready in {ready_s:.1} s; 16 MiB in {bulk_s:.1} s ({:.2} MB/s, {:.0} % \
         of the bottleneck); hidden service page in {hs_s:.2} s; warm GET first byte \
         {best:.3} s over the HTTP proxy, {best_socks:.3} s pipelined over SOCKS5 (bound \
         {bound:.3} s, circuit RTTs {rtts:?} s)",
        rate / 1e6,
        100.0 * rate / BOTTLENECK
    );
    net.stop();
    // stop() waited for the testnet to exit: its namespaces are gone.
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains(&netns) && !left.contains(&extra_ns),
        "namespaces deleted at stop: {left}"
    );
}
