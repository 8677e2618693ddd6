//! The directory end to end (docs/protocol.md §14): authorities, earned flags, measured
//! weights, and clients that build paths from the signed consensus only. Real processes:
//! `anonnet testnet` with its authorities, extra `anonnet relay` processes, the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anonnet_tests::{anonnet_bin, cli_json, curl_socks, spawn_lines, temp_dir, Testnet};

/// Poll `check` every 250 ms until it returns `Some`, at most `within`.
fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = check() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A relay process joining the testnet's network (and, through `dht_bootstrap`, its DHT),
/// with `extra` lines in its `[relay]` section. Returns the child and its NodeId.
fn start_relay(net: &Testnet, name: &str, extra: &str, network: &Path) -> (Child, String) {
    let dir = net.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let layout = net.layout();
    let dht = layout["relays"][0]["descriptor"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[relay]\ndata_dir = \".\"\nlisten = \"127.0.0.1:0\"\nnetwork = {:?}\n{extra}\n\
             [exit]\nenabled = true\npolicy = [\"accept 127.0.0.0/8:*\"]\n\
             [dht]\nbootstrap = [{dht:?}]\n",
            network.display().to_string()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("relay.log")).unwrap();
    let (child, rx) = spawn_lines(
        Command::new(anonnet_bin())
            .args(["relay", "--config"])
            .arg(&config)
            .stderr(Stdio::from(log)),
    );
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("relay ready line");
    let node_id = line
        .strip_prefix("RELAY ready ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("bad ready line {line:?}"))
        .to_owned();
    (child, node_id)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn kill_pid(pid: u64) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

fn flags_of(consensus: &serde_json::Value, node_id: &str) -> Option<Vec<String>> {
    consensus["relays"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|r| {
            (r["node_id"] == node_id).then(|| {
                r["flags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_owned())
                    .collect()
            })
        })
}

/// Ten Sybil relays that claim the largest bandwidth and the guard role get no Guard
/// flag while they are new, their weight is what the authorities measured (never the
/// claim), and the client picks none of them as a guard.
#[test]
fn sybil_relays_claiming_bandwidth_and_guard_get_neither() {
    let dir = temp_dir("sybil");
    // Honest relays earn Guard after 40 s; the test ends well before the Sybils could (the
    // margin is for a loaded machine, where measuring ten relays takes a while).
    let net = Testnet::start_with(5, &dir, &["--guard-after", "40"]);
    let network = net.dir.join("network.toml");
    let config = net.client_config();
    let mut sybils: Vec<(Child, String)> = (0..10)
        .map(|i| {
            start_relay(
                &net,
                &format!("sybil-{i}"),
                "guard = true\nbandwidth = 4294967295",
                &network,
            )
        })
        .collect();
    let started = Instant::now();
    // Wait until the client's consensus lists every Sybil with a measured weight (an
    // unmeasured relay votes 20 000 B/s).
    let consensus = wait_for(
        "the Sybils measured in the consensus",
        Duration::from_secs(35),
        || {
            let c = cli_json(&["consensus"], &config);
            let measured =
                sybils.iter().all(|(_, id)| {
                    c["relays"].as_array().unwrap().iter().any(|r| {
                        r["node_id"] == id.as_str() && r["weight"].as_u64().unwrap() != 20_000
                    })
                });
            measured.then_some(c)
        },
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the Sybils took too long to appear for the test to mean anything"
    );
    let relays = consensus["relays"].as_array().unwrap();
    let honest_max = relays
        .iter()
        .filter(|r| !sybils.iter().any(|(_, id)| r["node_id"] == id.as_str()))
        .map(|r| r["weight"].as_u64().unwrap())
        .max()
        .unwrap();
    for (_, id) in &sybils {
        let entry = relays.iter().find(|r| r["node_id"] == id.as_str()).unwrap();
        let flags = flags_of(&consensus, id).unwrap();
        assert!(!flags.contains(&"Guard".to_owned()), "{entry}");
        let weight = entry["weight"].as_u64().unwrap();
        assert!(weight < u64::from(u32::MAX), "{entry}");
        // Measured like any relay on this machine: within a few times the honest ones.
        assert!(
            weight <= honest_max * 20,
            "{entry} vs honest max {honest_max}"
        );
    }
    // The honest relays did earn Guard, and the client's guards are among them.
    let status = cli_json(&["status"], &config);
    let guards = status["guards"].as_array().unwrap();
    assert!(!guards.is_empty(), "{status}");
    for g in guards {
        assert!(
            !sybils.iter().any(|(_, id)| g == id.as_str()),
            "a Sybil became a guard: {status}"
        );
        let flags = flags_of(&consensus, g.as_str().unwrap()).unwrap();
        assert!(flags.contains(&"Guard".to_owned()), "{g}: {flags:?}");
    }
    for (c, _) in &mut sybils {
        kill(c);
    }
}

/// A relay that exists only in what a hostile party hands one client (here: the
/// client's own fallback list, and the DHT the relays run) is never used: the client's
/// directory is the consensus, which does not list it, and two clients hold the same
/// consensus.
#[test]
fn a_relay_outside_the_consensus_is_never_used() {
    let dir = temp_dir("fingerprint");
    let net = Testnet::start(4, &dir);
    // The rogue relay belongs to a network of its own (an authority nobody runs), joins
    // the testnet's DHT, and is offered to the second client as a fallback.
    let fake = net.dir.join("fake-network.toml");
    std::fs::write(
        &fake,
        format!(
            "name = \"fake\"\n[[authority]]\nname = \"nobody\"\nidentity = \"{}\"\naddress = \"127.0.0.1:9\"\n",
            "22".repeat(32)
        ),
    )
    .unwrap();
    let (mut rogue, rogue_id) = start_relay(&net, "rogue", "guard = true", &fake);
    let rogue_desc = net.dir.join("rogue").join("descriptor");
    // A second client with the rogue relay as its only fallback.
    let c2 = net.dir.join("client2");
    std::fs::create_dir_all(&c2).unwrap();
    let c2_config = c2.join("client.toml");
    std::fs::write(
        &c2_config,
        format!(
            "[client]\nsocks_listen = \"auto\"\nhttp_listen = \"auto\"\nstate_dir = \".\"\n\
             network = {:?}\nallow_same_subnet_paths = true\nbootstrap = [{:?}]\n",
            net.dir.join("network.toml").display().to_string(),
            rogue_desc.display().to_string()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(c2.join("client.log")).unwrap();
    let (mut client2, rx) = spawn_lines(
        Command::new(anonnet_bin())
            .args(["run", "--config"])
            .arg(&c2_config)
            .stderr(Stdio::from(log)),
    );
    let mut socks2 = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while socks2.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("second client ready");
        socks2 = line
            .strip_prefix("SOCKS5 ready on ")
            .map(|a| a.trim().parse::<std::net::SocketAddr>().unwrap());
    }
    let socks2 = socks2.unwrap();
    // Traffic through the second client, so it builds circuits.
    let url = site_url(&net);
    let out = dir.join("body");
    for _ in 0..3 {
        let (code, err) = curl_socks(socks2, &url, &out);
        assert_eq!(code, 0, "{err}");
    }
    // Both clients hold the same consensus at some moment (they refresh every period).
    let (s1, s2) = wait_for(
        "both clients on the same consensus",
        Duration::from_secs(30),
        || {
            let s1 = cli_json(&["status"], &net.client_config());
            let s2 = cli_json(&["status"], &c2_config);
            (s1["consensus"]["digest"] == s2["consensus"]["digest"]
                && s1["consensus"]["digest"].is_string())
            .then_some((s1, s2))
        },
    );
    assert_eq!(s1["relays"], s2["relays"]);
    let listing = cli_json(&["consensus"], &c2_config);
    assert!(flags_of(&listing, &rogue_id).is_none(), "{listing}");
    for c in s2["circuits"].as_array().unwrap() {
        assert!(
            !c["path"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h == rogue_id.as_str()),
            "{c}"
        );
    }
    assert!(!s2["guards"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g == rogue_id.as_str()));
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(net.dir.join("rogue").join("stats.json")).unwrap())
            .unwrap();
    assert_eq!(stats["circuits_created"], 0, "{stats}");
    kill(&mut client2);
    kill(&mut rogue);
}

/// One authority of three down: the network still makes consensuses (2 of 3 sign). Two
/// down: the client keeps the last consensus until its `valid_until`, then builds no new
/// circuit and says it is fetching a consensus; when the authorities return, it recovers.
#[test]
fn clients_ride_out_authority_outages_and_recover() {
    let dir = temp_dir("authority-outage");
    let net = Testnet::start(4, &dir);
    let config = net.client_config();
    let layout = net.layout();
    let auths = layout["authorities"].as_array().unwrap().clone();
    assert_eq!(auths.len(), 3);
    let pid = |i: usize| auths[i]["pid"].as_u64().unwrap();
    let auth_config = |i: usize| auths[i]["config"].as_str().unwrap().to_owned();

    kill_pid(pid(2));
    let before = cli_json(&["status"], &config)["consensus"]["valid_after"]
        .as_u64()
        .unwrap();
    let two = wait_for(
        "a consensus signed by 2 of 3",
        Duration::from_secs(30),
        || {
            let s = cli_json(&["status"], &config);
            let c = &s["consensus"];
            (c["valid_after"].as_u64().unwrap_or(0) > before + 4 && c["signatures"] == 2)
                .then(|| c.clone())
        },
    );
    assert_eq!(two["authorities"], 3);

    kill_pid(pid(1));
    let last_until = two["valid_until"].as_u64().unwrap();
    // Until valid_until the client goes on.
    let s = cli_json(&["status"], &config);
    assert!(s["consensus"].is_object(), "{s}");
    // After it: no consensus, a bootstrap message, no new circuit.
    let s = wait_for("the consensus to expire", Duration::from_secs(40), || {
        let s = cli_json(&["status"], &config);
        s["consensus"].is_null().then_some(s)
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now + 1 >= last_until,
        "expired early: now {now}, valid_until {last_until}"
    );
    assert_eq!(s["bootstrap"]["phase"], "fetching consensus", "{s}");
    // A new identity retires every circuit; no new one can be built, so a request fails.
    let built = s["counters"]["circuits_built"].as_u64().unwrap();
    let out = Command::new(anonnet_bin())
        .args(["new-identity", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let body = dir.join("body");
    let url = site_url(&net);
    let (code, _) = curl_socks(net.socks, &url, &body);
    assert_ne!(code, 0, "a request succeeded without a consensus");
    let s = cli_json(&["status"], &config);
    assert_eq!(
        s["counters"]["circuits_built"].as_u64().unwrap(),
        built,
        "{s}"
    );

    // The two authorities come back (same keys, addresses and state).
    let mut restarted: Vec<Child> = [1, 2]
        .iter()
        .map(|&i| {
            let log = std::fs::File::options()
                .append(true)
                .open(Path::new(&auth_config(i)).with_file_name("authority.log"))
                .unwrap();
            Command::new(anonnet_bin())
                .args(["authority", "--config", &auth_config(i)])
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap()
        })
        .collect();
    wait_for("the client to recover", Duration::from_secs(60), || {
        let s = cli_json(&["status"], &config);
        (s["consensus"]["signatures"].as_u64().unwrap_or(0) >= 2
            && s["counters"]["circuits_built"].as_u64().unwrap() > built)
            .then_some(())
    });
    let (code, err) = curl_socks(net.socks, &url, &body);
    assert_eq!(code, 0, "{err}");
    for c in &mut restarted {
        kill(c);
    }
}

/// The demo site's URL from the testnet's printed curl line.
fn site_url(net: &Testnet) -> String {
    let port = net
        .stdout
        .iter()
        .find_map(|l| {
            l.strip_prefix("curl --socks5-hostname ")
                .and_then(|r| r.split("http://localhost:").nth(1))
                .map(|p| p.trim_end_matches('/').to_owned())
        })
        .unwrap();
    format!("http://localhost:{port}/")
}

/// A relay whose advertised address nobody can reach is told so by the authorities, logs
/// `reachability: NOT reachable`, and gets no Running flag.
#[test]
fn unreachable_relay_is_told_and_not_running() {
    let dir = temp_dir("unreachable");
    let net = Testnet::start(3, &dir);
    let network = net.dir.join("network.toml");
    let (mut relay, id) = start_relay(&net, "hidden", "advertise = \"127.0.0.1:9\"", &network);
    let log = net.dir.join("hidden").join("relay.log");
    wait_for("the reachability line", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("reachability: NOT reachable at 127.0.0.1:9")
            .then_some(())
    });
    let consensus = wait_for(
        "the relay in the consensus",
        Duration::from_secs(30),
        || {
            let c = cli_json(&["consensus"], &net.client_config());
            flags_of(&c, &id).map(|_| c)
        },
    );
    let flags = flags_of(&consensus, &id).unwrap();
    assert!(!flags.contains(&"Running".to_owned()), "{flags:?}");
    let status = cli_json(&["status"], &net.client_config());
    for c in status["circuits"].as_array().unwrap() {
        assert!(!c["path"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == id.as_str()));
    }
    kill(&mut relay);
}
