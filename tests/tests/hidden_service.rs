//! Hidden services end to end (issue 4): the testnet publishes its demo site as a hidden
//! service with the name `demo.dark`, hosted by a daemon of its own. The real `curl`
//! fetches it through the client's SOCKS port by `.anon` address and by name; the client's
//! counters show that it sent no DHT value lookup from its own address (descriptors and
//! names are fetched through circuits) while relays served such fetches for circuits; the
//! service daemon is restarted and its address still works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anonnet_tests::{
    anonnet_bin, curl_socks, socks_connect_reply, spawn_lines, start_fresh_client, temp_dir,
    Testnet,
};

const PAGE: &str = "Hello from the anonnet testnet";

fn status_json(config: &str) -> serde_json::Value {
    anonnet_tests::cli_json(&["status"], std::path::Path::new(config))
}

/// How many of the testnet's directory authorities (under `dir`) hold `demo` in their
/// name registry (`auth-*/names`, §12.5 "Registration"), and how many there are.
fn registrations(dir: &std::path::Path) -> (usize, usize) {
    let registries: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let is_authority = path.file_name()?.to_str()?.starts_with("auth-");
            is_authority.then(|| std::fs::read_to_string(path.join("names")).unwrap_or_default())
        })
        .collect();
    let registered = registries.iter().filter(|r| r.contains("demo")).count();
    (registered, registries.len())
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
    // The client's reasons, when its log has them (a testnet started with the proxy at
    // debug level, see `Testnet::start_logged`).
    let reasons: Vec<String> = std::fs::read_to_string(net.dir.join("client/client.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("CONNECT failed") || l.contains("ignoring a .dark record"))
        .map(str::to_owned)
        .collect();
    panic!("fetching {url} failed {tries} times: {errors:?}; the client said {reasons:?}");
}

/// Start `anonnet run --config CONFIG` and wait for its `HIDDEN SERVICE ready` line. The
/// caller kills and waits for the child; if this panics first, `--exit-with-parent` ends
/// the child when its stdin closes with the test process.
#[allow(clippy::zombie_processes)]
/// A log file named `name` beside the config file `config`, for a daemon's stderr: it
/// stays in the test's directory, which is kept when the test fails.
fn log_file(config: &std::path::Path, name: &str) -> Stdio {
    let path = config
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(name);
    std::fs::File::create(path).map_or_else(|_| Stdio::null(), Stdio::from)
}

fn start_service(config: &str) -> (Child, String) {
    let (child, rx) = spawn_lines(
        Command::new(anonnet_bin())
            .args(["run", "--config", config, "--exit-with-parent"])
            .stdin(Stdio::piped())
            .stderr(log_file(std::path::Path::new(config), "restarted.log")),
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
    // The name resolved because a majority of the authorities registered it to the
    // service's owner key (relays and clients refuse records without their receipts);
    // each authority keeps its registry in `names` (§12.5 "Registration").
    let (registered, authorities) = registrations(&dir);
    assert!(
        registered * 2 > authorities,
        "demo registered at {registered} of {authorities} authorities"
    );

    // No DHT value lookup left the client's own QUIC endpoint: every descriptor and name
    // fetch went through a circuit, and relays answered such fetches.
    let status = status_json(&client_config);
    let counters = &status["counters"];
    assert!(
        counters["hs_descriptor_fetches"].as_u64().unwrap() >= 1,
        "{counters}"
    );
    // Descriptor fetches and introductions extended pre-built guard → vanguard prefixes
    // (protocol §9.4) instead of building every circuit from scratch.
    assert!(
        counters["hs_prefixes_used"].as_u64().unwrap() >= 1,
        "{counters}"
    );
    assert!(
        counters["hs_prefixes_built"].as_u64().unwrap()
            >= counters["hs_prefixes_used"].as_u64().unwrap(),
        "{counters}"
    );
    // Relays write stats.json once a second: wait for the counters to show up.
    let sum = |stats: &[serde_json::Value], key: &str| -> u64 {
        stats.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum()
    };
    let stats = net.relay_stats_when(Duration::from_secs(5), |s| {
        sum(s, "dht_fetches_for_circuits") >= 2 && sum(s, "rendezvous_joined") >= 1
    });
    let fetched_for_circuits = sum(&stats, "dht_fetches_for_circuits");
    assert!(
        fetched_for_circuits >= 2,
        "relays served {fetched_for_circuits}"
    );
    assert!(
        sum(&stats, "rendezvous_joined") >= 1,
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
    stop_service(service["pid"].as_u64().unwrap());
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

/// SIGTERM the service daemon `pid` and wait (at most 15 s) until it has exited.
fn stop_service(pid: u64) {
    let pid = pid.to_string();
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
}

/// Fetch `url` through the SOCKS proxy at `socks` once; the body, or curl's error.
fn fetch_once(
    socks: std::net::SocketAddr,
    url: &str,
    out: &std::path::Path,
) -> Result<String, String> {
    let (code, err) = curl_socks(socks, url, out);
    if code == 0 {
        Ok(std::fs::read_to_string(out).unwrap())
    } else {
        Err(format!("curl exit {code}: {err}"))
    }
}

/// Issue 14 item 1: 3 of 10 relays (30 % of the HSDirs) accept descriptors and never serve
/// them, one more keeps serving the first revision it got. A fresh client still reaches
/// the service; after the service restarts (new introduction points, a higher revision)
/// fresh clients reach it at their first request: the stale revision (whose introduction
/// points are gone) loses to the newest one among the answers of a batch, and when a batch
/// held only the stale one, the failed introduction sends the client on to HSDirs with a
/// newer revision.
#[test]
fn withholding_and_stale_hsdirs_neither_hide_the_service_nor_hold_back_a_new_descriptor() {
    let dir = temp_dir("hostile-hsdirs");
    let mut net = Testnet::start_with(
        10,
        &dir,
        &["--withholding-hsdirs", "3", "--stale-hsdirs", "1"],
    );
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("testnet.json")).unwrap()).unwrap();
    let behaviours: Vec<&str> = layout["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hsdir_behaviour"].as_str().unwrap())
        .collect();
    assert_eq!(behaviours.iter().filter(|b| **b == "withhold").count(), 3);
    assert_eq!(behaviours.iter().filter(|b| **b == "stale").count(), 1);
    let service = &layout["service"];
    let address = service["address"].as_str().unwrap().to_owned();
    let client_config = layout["client"]["config"].as_str().unwrap().to_owned();
    let url = format!("http://{address}/");

    // The testnet's client is fresh: it has never seen the service.
    let (body, took) = fetch(&net, &url, 3);
    assert!(body.contains(PAGE), "{body}");
    eprintln!("cold fetch with 3 withholding and 1 stale HSDir: {took:?}");

    // The hostile relays were given descriptors (they are HSDirs like any other) and the
    // withholding ones answered no fetch with one.
    let stored_of = |stats: &[serde_json::Value]| -> u64 {
        stats
            .iter()
            .map(|s| s["hsdir_stored"].as_u64().unwrap_or(0))
            .sum()
    };
    let stats = net.relay_stats_when(Duration::from_secs(5), |s| stored_of(s) >= 1);
    let stored = stored_of(&stats);
    assert!(stored >= 1, "no HSDir stored a descriptor: {stats:?}");

    // A new revision: restart the service (same key, new introduction points).
    stop_service(service["pid"].as_u64().unwrap());
    let (mut restarted, ready) = start_service(service["config"].as_str().unwrap());
    assert!(ready.starts_with(&address), "{ready}");

    // Fresh clients, each asking three random responsible HSDirs: every one must get
    // through at its first attempt.
    for round in 0..3 {
        let state = dir.join(format!("fresh-client-{round}"));
        let (mut client, socks) = start_fresh_client(std::path::Path::new(&client_config), &state);
        let started = Instant::now();
        let got = fetch_once(socks, &url, &state.join("page.html"));
        let took = started.elapsed();
        let status = anonnet_tests::cli_json(&["status"], &state.join("client.toml"));
        let _ = client.kill();
        let _ = client.wait();
        let body = got.unwrap_or_else(|e| panic!("fresh client {round}: {e}"));
        assert!(body.contains(PAGE), "{body}");
        // Three HSDirs asked at once; a second batch only when the first had nothing
        // that opens (all three withholding). When a batch's newest revision was the
        // stale one (two withholding HSDirs beside it), the introduction fails and the
        // client refetches, now asking batch after batch for a revision newer than the
        // one that failed: at most 3 + 3 + 3 HSDirs.
        let fetches = status["counters"]["hs_descriptor_fetches"]
            .as_u64()
            .unwrap();
        assert!(
            (1..=9).contains(&fetches),
            "fresh client {round} asked {fetches} HSDirs"
        );
        eprintln!("fresh client {round} after the new revision: {took:?}, {fetches} HSDirs asked");
    }
    let _ = restarted.kill();
    let _ = restarted.wait();
    net.stop();
}

/// Issue 14 item 2: a hostile relay claims `demo.dark` with a record of its own key that
/// has valid work and a `published` time 23 hours in the past (under first-come by claimed
/// time it would win), keeps it in its own storage and stores it on every DHT node it
/// knows, for two minutes. Honest nodes refuse it (no receipts of the authorities), and
/// the testnet's fresh client, which has no pin for the name, still reaches the real
/// service by name.
#[test]
fn a_squatting_relay_cannot_take_a_registered_name() {
    let dir = temp_dir("squatter");
    // Debug lines of the proxy and the client's name and descriptor lookups: a failed
    // fetch below says why (CI saw reply 4 three times once, with nothing at info).
    let mut net = Testnet::start_logged(
        6,
        &dir,
        &["--squatting-relays", "1"],
        Some("info,anonnet_proxy=debug,anonnet_client::hs=debug,anonnet_client::hsdir=debug,anonnet_client::pool=debug"),
    );
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("testnet.json")).unwrap()).unwrap();
    let relays = layout["relays"].as_array().unwrap();
    let squatters: Vec<&str> = relays
        .iter()
        .filter(|r| r["squats"].as_str() == Some("demo"))
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(squatters.len(), 1, "{layout}");
    let name = layout["service"]["name"].as_str().unwrap().to_owned();

    // Wait until the squatter has offered its record to every other relay at least once
    // and the honest ones have refused it as invalid.
    let of = |stats: &[serde_json::Value], key: &str| -> u64 {
        stats.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum()
    };
    let invalid = |stats: &[serde_json::Value]| -> u64 {
        stats
            .iter()
            .map(|s| s["dht"]["rejected_invalid"].as_u64().unwrap_or(0))
            .sum()
    };
    let honest = (relays.len() - 1) as u64;
    let stats = net.relay_stats_when(Duration::from_secs(60), |s| {
        of(s, "squat_stores_sent") >= honest && invalid(s) >= honest
    });
    assert!(
        of(&stats, "squat_stores_sent") >= honest,
        "the squatter sent {} STOREs",
        of(&stats, "squat_stores_sent")
    );
    assert_eq!(
        of(&stats, "squat_stores_accepted"),
        0,
        "an honest node stored the squatter's record"
    );
    assert!(
        invalid(&stats) >= honest,
        "refused as invalid: {}",
        invalid(&stats)
    );

    // The service registers its name with the authorities after the testnet is ready:
    // wait (bounded) until a majority holds it, so the fetch below tests the squatter, not
    // the race with the registration.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (registered, authorities) = registrations(&dir);
        if registered * 2 > authorities {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "demo registered at {registered} of {authorities} authorities after 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The client has never resolved the name: no pin protects it, only the receipts.
    let (body, took) = fetch(&net, &format!("http://{name}/"), 3);
    assert!(body.contains(PAGE), "{body}");
    eprintln!("{name} resolved to the real service despite the squatter in {took:?}");
    net.stop();
}
