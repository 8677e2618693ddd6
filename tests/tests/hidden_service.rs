//! Hidden services end to end (issue 4): the testnet publishes its demo site as a hidden
//! service with the name `demo.dark`, hosted by a daemon of its own. The real `curl`
//! fetches it through the client's SOCKS port by `.anon` address and by name; the client's
//! counters show that it sent no DHT value lookup from its own address (descriptors and
//! names are fetched through circuits) while relays served such fetches for circuits; the
//! service daemon is restarted and its address still works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anonnet_tests::{anonnet_bin, curl_socks, socks_connect_reply, spawn_lines, temp_dir, Testnet};

const PAGE: &str = "Hello from the anonnet testnet";

fn status_json(config: &str) -> serde_json::Value {
    anonnet_tests::cli_json(&["status"], std::path::Path::new(config))
}

/// Fetch `url` through SOCKS, trying up to `tries` times; returns the body and the time
/// of the successful attempt.
fn fetch(net: &Testnet, url: &str, tries: usize) -> (String, Duration) {
    let out = net.dir.join("page.html");
    let mut errors = Vec::new();
    for _ in 0..tries {
        let started = Instant::now();
        let (code, err) = curl_socks(net.socks, url, &out);
        let took = started.elapsed();
        if code == 0 {
            return (std::fs::read_to_string(&out).unwrap(), took);
        }
        errors.push(format!("curl exit {code}: {err}"));
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("fetching {url} failed {tries} times: {errors:?}");
}

/// Start `anonnet run --config CONFIG` and wait for its `HIDDEN SERVICE ready` line. The
/// caller kills and waits for the child; if this panics first, `--exit-with-parent` ends
/// the child when its stdin closes with the test process.
#[allow(clippy::zombie_processes)]
fn start_service(config: &str) -> (Child, String) {
    let (child, rx) = spawn_lines(
        Command::new(anonnet_bin())
            .args(["run", "--config", config, "--exit-with-parent"])
            .stdin(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the restarted service daemon prints HIDDEN SERVICE ready");
        if let Some(rest) = line.strip_prefix("HIDDEN SERVICE ready ") {
            return (child, rest.to_owned());
        }
    }
}

#[test]
fn hidden_service_by_address_and_name_survives_a_restart() {
    let dir = temp_dir("hidden-service");
    let mut net = Testnet::start(5, &dir);
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("testnet.json")).unwrap()).unwrap();
    let service = &layout["service"];
    let address = service["address"].as_str().unwrap().to_owned();
    let name = service["name"].as_str().unwrap().to_owned();
    let client_config = layout["client"]["config"].as_str().unwrap().to_owned();
    assert!(
        address.ends_with(".anon") && address.len() == 56 + 5,
        "{address}"
    );
    assert_eq!(name, "demo.dark");
    // The testnet prints ready-to-paste commands for both.
    let printed = net.stdout.join("\n");
    assert!(
        printed.contains(&format!(
            "curl --socks5-hostname {} http://{address}/",
            net.socks
        )),
        "{printed}"
    );
    assert!(printed.contains("http://demo.dark/"), "{printed}");

    // By address: cold (no descriptor, no circuit to the service yet).
    let (body, cold) = fetch(&net, &format!("http://{address}/"), 3);
    assert!(body.contains(PAGE), "{body}");
    eprintln!("cold .anon fetch with curl: {cold:?}");
    // By name (resolved through the DHT, owner pinned).
    let (body, _) = fetch(&net, &format!("http://{name}/"), 3);
    assert!(body.contains(PAGE), "{body}");
    let pins = std::fs::read_to_string(
        std::path::Path::new(&client_config)
            .parent()
            .unwrap()
            .join("dark-pins.json"),
    )
    .unwrap();
    assert!(pins.contains("\"demo\""), "{pins}");

    // No DHT value lookup left the client's own QUIC endpoint: every descriptor and name
    // fetch went through a circuit, and relays answered such fetches.
    let status = status_json(&client_config);
    let counters = &status["counters"];
    assert!(
        counters["hs_descriptor_fetches"].as_u64().unwrap() >= 1,
        "{counters}"
    );
    // Relays write stats.json once a second: wait for the counters to show up.
    let sum = |key: &str| -> u64 {
        net.relay_stats()
            .iter()
            .map(|s| s[key].as_u64().unwrap_or(0))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while (sum("dht_fetches_for_circuits") < 2 || sum("rendezvous_joined") < 1)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let fetched_for_circuits = sum("dht_fetches_for_circuits");
    assert!(
        fetched_for_circuits >= 2,
        "relays served {fetched_for_circuits}"
    );
    assert!(
        sum("rendezvous_joined") >= 1,
        "no rendezvous recorded by the relays"
    );

    // A mistyped address is refused before anything is sent.
    let connects = counters["hs_connects"].as_u64().unwrap();
    let mut typo = address.clone();
    typo.replace_range(3..4, if &typo[3..4] == "a" { "b" } else { "a" });
    let reply = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(socks_connect_reply(net.socks, 1, &typo, 80));
    assert_eq!(reply, 1, "a mistyped .anon gets SOCKS general failure");
    let status = status_json(&client_config);
    assert_eq!(
        status["counters"]["hs_connects"].as_u64().unwrap(),
        connects,
        "no connection was attempted for the mistyped address"
    );

    // Restart the service daemon: same key file, same address, reachable again.
    let pid = service["pid"].as_u64().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let gone = Instant::now() + Duration::from_secs(15);
    while Instant::now() < gone
        && Command::new("kill")
            .args(["-0", &pid])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut restarted, ready) = start_service(service["config"].as_str().unwrap());
    assert!(
        ready.starts_with(&address),
        "restarted service announced {ready:?}, expected {address}"
    );
    let (body, again) = fetch(&net, &format!("http://{address}/"), 4);
    assert!(body.contains(PAGE), "{body}");
    eprintln!("fetch after the service restarted: {again:?}");

    let _ = restarted.kill();
    let _ = restarted.wait();
    net.stop();
}
