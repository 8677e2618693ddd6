//! Issue 18 items 3 and 4, end to end: every relay of a testnet is SIGKILLed and started
//! again from its own data directory and config (`listen = "127.0.0.1:0"`, so on a new
//! port). The running client fetches a page again within 60 s (it takes the new addresses
//! from the next consensus), and `demo.dark` resolves from a fresh client within 60 s (the
//! relays load the records they had stored, `dht-records` and `hsdir-records`,
//! docs/protocol.md §11.7.1). The client's guard set does not grow because its guards moved.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anonnet_tests::{
    anonnet_bin, cli_json, curl_socks, serve_files, spawn_lines, start_fresh_client, temp_dir,
    Testnet,
};
use bytes::Bytes;

const PAGE: &[u8] = b"reached again after every relay moved\n";

/// The restarted relays; killed when the test ends, however it ends.
struct Relays(Vec<Child>);

impl Drop for Relays {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn alive(pid: u64) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn sigkill(pid: u64) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "relay {pid} still alive after SIGKILL");
}

/// Start `anonnet relay --config CONFIG` and wait (at most 30 s) for its `RELAY ready`
/// line; returns the child and its new address.
fn start_relay(config: &Path) -> (Child, String) {
    let log = config.parent().unwrap().join("relay-restarted.log");
    let (child, rx) = spawn_lines(
        Command::new(anonnet_bin())
            .args(["relay", "--exit-with-parent", "--config"])
            .arg(config)
            .stdin(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap())),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{} not ready within 30 s", config.display()));
        if let Some(rest) = line.strip_prefix("RELAY ready ") {
            let addr = rest.split(' ').nth(1).unwrap().to_owned();
            return (child, addr);
        }
    }
}

/// Fetch `url` through `socks` until it succeeds or `within` has passed; the time it took,
/// or every error.
fn fetch_within(
    socks: std::net::SocketAddr,
    url: &str,
    out: &Path,
    within: Duration,
) -> Result<Duration, Vec<String>> {
    let started = Instant::now();
    let mut errors = Vec::new();
    while started.elapsed() < within {
        let (code, err) = curl_socks(socks, url, out);
        if code == 0 {
            return Ok(started.elapsed());
        }
        errors.push(format!("{:?}: curl exit {code}: {err}", started.elapsed()));
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(errors)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_relay_restarted_on_a_new_port_and_the_network_and_demo_dark_come_back() {
    let dir = temp_dir("relay-restart");
    let port = serve_files(vec![("/".into(), Bytes::from_static(PAGE))]).await;
    let root: PathBuf = dir.to_path_buf();
    tokio::task::spawn_blocking(move || run(&root, port))
        .await
        .unwrap();
}

fn run(dir: &Path, port: u16) {
    let net = Testnet::start(5, dir);
    let layout = net.layout();
    let client_config = net.client_config();
    let url = format!("http://127.0.0.1:{port}/");
    let page = dir.join("page");

    // Before: the page and demo.dark work, and the relays have written their stores.
    fetch_within(net.socks, &url, &page, Duration::from_secs(30)).expect("page before");
    fetch_within(
        net.socks,
        "http://demo.dark/",
        &dir.join("demo"),
        Duration::from_secs(60),
    )
    .expect("demo.dark before");
    let relays: Vec<(u64, PathBuf, String)> = layout["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let name = r["name"].as_str().unwrap();
            (
                r["pid"].as_u64().unwrap(),
                dir.join(name).join("relay.toml"),
                r["addr"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let saved = |file: &str| {
        relays
            .iter()
            .filter(|(_, config, _)| file_len(&config.parent().unwrap().join(file)) > 20)
            .count()
    };
    // A relay writes its stores at most every 5 s (RECORDS_SAVE_EVERY): a file that is
    // merely not empty may hold the relays' descriptors and not yet the `.dark` record, and
    // a relay killed then comes back without it. In this 5-relay network the name is
    // stored on every relay (8 replicas); wait until every file holds it (at most 20 s;
    // at least one must), so that what is checked below is that they load it.
    let name_key = anonnet_crypto::dark::dark_key(
        &anonnet_crypto::dark::DarkName::parse("demo.dark").unwrap(),
    );
    let holding_name = || {
        relays
            .iter()
            .filter(|(_, config, _)| {
                std::fs::read(config.parent().unwrap().join("dht-records"))
                    .ok()
                    .and_then(|b| anonnet_dht::storage::decode_persisted(&b).ok())
                    .is_some_and(|records| records.iter().any(|r| r.key == name_key))
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while (holding_name() < relays.len() || saved("hsdir-records") == 0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let holding = holding_name();
    eprintln!(
        "relays whose dht-records hold demo.dark: {holding} of {}",
        relays.len()
    );
    assert!(
        holding > 0,
        "no relay wrote the .dark record to dht-records"
    );
    assert!(saved("hsdir-records") > 0, "no relay wrote hsdir-records");
    let guards_before = cli_json(&["status"], &client_config)["guards"].clone();
    eprintln!("guards before: {guards_before}");

    // Every relay crashes and comes back from its own data directory on a new port.
    for (pid, _, _) in &relays {
        sigkill(*pid);
    }
    let restarted_at = Instant::now();
    let mut children = Relays(Vec::new());
    for (_, config, old) in &relays {
        let (child, addr) = start_relay(config);
        assert_ne!(&addr, old, "a new port");
        children.0.push(child);
    }
    eprintln!("relays restarted in {:?}", restarted_at.elapsed());

    // The running client fetches the page again within 60 s; meanwhile its status says
    // it is not ready rather than 100 %.
    let mut phases: Vec<String> = Vec::new();
    let started = Instant::now();
    let mut recovered = None;
    while started.elapsed() < Duration::from_secs(60) {
        let (code, _) = curl_socks(net.socks, &url, &page);
        if code == 0 {
            recovered = Some(restarted_at.elapsed());
            break;
        }
        let s = cli_json(&["status"], &client_config);
        let phase = format!(
            "{} % {}",
            s["bootstrap"]["percent"], s["bootstrap"]["phase"]
        );
        if phases.last() != Some(&phase) {
            phases.push(phase);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let recovered = recovered.unwrap_or_else(|| {
        panic!("the running client did not recover within 60 s; its phases: {phases:?}")
    });
    assert_eq!(std::fs::read(&page).unwrap(), PAGE);
    eprintln!(
        "running client: page again {recovered:?} after the restart; phases meanwhile: {phases:?}"
    );
    // Within 25 s, though 60 s is the bound asked for: the links to the old addresses die
    // after the 6 s idle timeout, and a consensus source that does not answer (a fallback
    // that moved) delays the next one by 2 s, not by its whole timeout (CONSENSUS_STAGGER).
    // Asked one after another, the two moved fallbacks made this 18–30 s on a loaded
    // machine; since, 5–15 s.
    assert!(
        recovered < Duration::from_secs(25),
        "the running client took {recovered:?} to fetch the page again; phases {phases:?}"
    );
    // Not 100 % "ready" all along: "not ready: N of M relays unreachable", or "fetching
    // consensus" when the one it held expired meanwhile (a testnet's lasts 3 periods, 12 s).
    // Checked when a fetch failed after a long wait (the status is read after each failed
    // one): a first fetch that waited and then got the page saw no failure, and no status
    // was read meanwhile (phases empty), as the consensus now comes back within one fetch.
    if recovered > Duration::from_secs(10) && !phases.is_empty() {
        assert!(
            phases.iter().any(|p| !p.starts_with("100 ")),
            "while no circuit could be built the status said {phases:?}"
        );
    }

    // demo.dark resolves from a fresh client within 60 s of the restart.
    let (mut fresh, socks) = start_fresh_client(&client_config, &dir.join("fresh-client"));
    let left = Duration::from_secs(60).saturating_sub(restarted_at.elapsed());
    let got = fetch_within(socks, "http://demo.dark/", &dir.join("demo2"), left);
    let _ = fresh.kill();
    let _ = fresh.wait();
    got.unwrap_or_else(|e| panic!("demo.dark from a fresh client within 60 s: {e:?}"));
    eprintln!(
        "fresh client: demo.dark {:?} after the restart",
        restarted_at.elapsed()
    );

    // The relays loaded what they had stored (verified again).
    let logs: String = relays
        .iter()
        .map(|(_, c, _)| {
            std::fs::read_to_string(c.parent().unwrap().join("relay-restarted.log"))
                .unwrap_or_default()
        })
        .collect();
    assert!(
        logs.contains("loaded stored DHT records"),
        "a relay loaded its DHT records"
    );
    assert!(
        logs.contains("loaded stored hidden-service descriptors"),
        "a relay loaded its HSDir records"
    );

    // The client is ready again, and it kept every guard it had: moving did not cost a
    // guard its place. In this young network the set may have held fewer than 3 guards
    // before the restart (few relays had the Guard flag yet) and been topped up since
    // (protocol §9.1); it never grows past 3.
    let status = cli_json(&["status"], &client_config);
    assert_eq!(status["bootstrap"]["percent"], 100, "{status}");
    let guards_after = status["guards"].clone();
    eprintln!("guards after: {guards_after}");
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap().to_owned())
            .collect()
    };
    let (before, after) = (list(&guards_before), list(&guards_after));
    assert!(
        before.iter().all(|g| after.contains(g)) && after.len() <= 3,
        "the guard set kept its guards when they moved: before {before:?}, after {after:?}"
    );
    drop(children);
}
