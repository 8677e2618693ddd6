//! End to end, real processes (issue 18 item 5): state files are never silently lost.
//!
//! The client daemon's state files are corrupted in turn — `guards.json`, `dark-pins.json`,
//! `services.json`, `control.cookie`, `consensus` — each with some readable content left
//! where the format has entries; after each, the daemon is started again on the same state
//! directory: it starts and serves a request through SOCKS, its log says which file it set
//! aside, `NAME.bad` holds the damaged bytes, and what was readable is kept (the guards,
//! the `demo` pin, the published service). A valid control cookie is reused across a
//! restart. Then a relay's `dht-table` gets a damaged line: the restarted relay sets the
//! file aside and keeps every contact it could read.
//!
//! A full disk (root only: a 1 MiB tmpfs as the client's state directory, filled): the
//! consensus save fails with a WARN naming the file, the old file stays whole, no
//! temporary file is left, and the daemon keeps serving; restarted with the state
//! directory remounted read-only, it starts (its cookie reused, `ports.json` not saved,
//! with a WARN saying so) and serves.
//!
//! Timings are printed: `cargo test -p anonnet-tests --test state_files -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anonnet_tests::{anonnet_bin, cli_json, curl_socks, spawn_lines, temp_dir, Testnet};

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Whether process `pid` still runs (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// SIGTERM `pid` and wait (15 s at most) until it is gone.
fn stop_pid(pid: u32) {
    signal("-TERM", pid);
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        signal("-KILL", pid);
    }
}

/// A daemon this test started; stopped (SIGTERM, then SIGKILL) when dropped.
struct Daemon(Child);

impl Daemon {
    fn stop(&mut self) {
        stop_pid(self.0.id());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `anonnet run --config CONFIG`, stderr to `log`; its SOCKS address once it says it is
/// ready (60 s at most).
fn start_client(config: &Path, log: &Path) -> (Daemon, SocketAddr) {
    let (child, rx) = spawn_lines(
        Command::new(anonnet_bin())
            .args(["run", "--config"])
            .arg(config)
            .stderr(std::fs::File::create(log).unwrap()),
    );
    let daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "the client was not ready within 60 s; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
        if let Some(a) = line.strip_prefix("SOCKS5 ready on ") {
            // Drain the rest of its stdout so it never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (daemon, a.trim().parse().unwrap());
        }
    }
}

/// Fetch `url` through `socks` until it works (30 s at most).
fn fetch(socks: SocketAddr, url: &str, out: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, err) = curl_socks(socks, url, out);
        if code == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{url} through {socks}: {err}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The first line of `log` that contains `needle`, once there is one (30 s at most).
fn log_line(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(needle)) {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {} within 30 s:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A log line without its time stamp and level: what it says.
fn message(line: &str) -> &str {
    line.split_once("WARN").map_or(line, |(_, w)| w).trim()
}

/// The damaged file set aside: `NAME.bad` (the first one for this name in this test).
fn bad(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".bad");
    PathBuf::from(name)
}

struct Case {
    file: &'static str,
    /// The damaged bytes, from the file as it is.
    damage: fn(&[u8]) -> Vec<u8>,
}

/// Add an entry that is not a guard to the guard list.
fn damage_guards(b: &[u8]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
    v["guards"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"node_id": "not a node id", "added": 1}));
    serde_json::to_vec_pretty(&v).unwrap()
}

/// Add an entry that is not a pin.
fn damage_pins(b: &[u8]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
    v["broken"] = "zz".into();
    serde_json::to_vec_pretty(&v).unwrap()
}

/// Add an entry that is not a service.
fn damage_services(b: &[u8]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
    v.as_array_mut()
        .unwrap()
        .push(serde_json::json!({"target": 5}));
    serde_json::to_vec_pretty(&v).unwrap()
}

/// Not a cookie, not a consensus: nothing readable.
fn damage_all(b: &[u8]) -> Vec<u8> {
    let mut v = b"garbage\0".to_vec();
    v.extend_from_slice(&b[..b.len().min(16)]);
    v
}

#[test]
fn each_state_file_corrupted_in_turn_is_set_aside_and_what_was_readable_kept() {
    let dir = temp_dir("state-files");
    let started = Instant::now();
    let net = Testnet::start(5, &dir);
    let layout = net.layout();
    let site = layout["service"]["target"].as_str().unwrap().to_owned();
    let url = format!("http://{site}/");
    let config = PathBuf::from(layout["client"]["config"].as_str().unwrap());
    let state = dir.join("client");
    let out = dir.join("body");

    // Fill the state: guards (a request), a pin (demo.dark), a service published through
    // the control API (services.json).
    fetch(net.socks, &url, &out);
    fetch(net.socks, "http://demo.dark/", &out);
    let published = cli_json(&["service", "publish", &site], &config);
    let address = published["address"].as_str().unwrap().to_owned();
    let guards: Vec<String> = {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.join("guards.json")).unwrap()).unwrap();
        v["guards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["node_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(!guards.is_empty());
    let pins = std::fs::read_to_string(state.join("dark-pins.json")).unwrap();
    assert!(pins.contains("\"demo\""), "{pins}");
    let cookie = std::fs::read(state.join("control.cookie")).unwrap();

    // Stop the testnet's client; from here on this test starts it.
    stop_pid(layout["client"]["pid"].as_u64().unwrap() as u32);
    println!(
        "state filled, client stopped: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A clean restart first: nothing set aside, the valid cookie reused (not rewritten).
    let log = state.join("restart-clean.log");
    let (mut daemon, socks) = start_client(&config, &log);
    fetch(socks, &url, &out);
    daemon.stop();
    assert_eq!(std::fs::read(state.join("control.cookie")).unwrap(), cookie);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("moved aside"), "{text}");

    let cases = [
        Case {
            file: "guards.json",
            damage: damage_guards,
        },
        Case {
            file: "dark-pins.json",
            damage: damage_pins,
        },
        Case {
            file: "services.json",
            damage: damage_services,
        },
        Case {
            file: "control.cookie",
            damage: damage_all,
        },
        Case {
            file: "consensus",
            damage: damage_all,
        },
    ];
    for case in cases {
        let t = Instant::now();
        let path = state.join(case.file);
        let damaged = (case.damage)(&std::fs::read(&path).unwrap());
        std::fs::write(&path, &damaged).unwrap();
        let log = state.join(format!("restart-{}.log", case.file));
        let (mut daemon, socks) = start_client(&config, &log);
        fetch(socks, &url, &out);
        // What is kept, checked while the daemon runs.
        match case.file {
            "guards.json" => {
                let status = cli_json(&["status"], &config);
                let now: Vec<String> = status["guards"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| g.as_str().unwrap().to_owned())
                    .collect();
                // Status shows guards in short form or whole: compare by prefix.
                for g in &guards {
                    assert!(
                        now.iter().any(|n| g.starts_with(n.as_str()) || n == g),
                        "guard {g} kept: {now:?}"
                    );
                }
            }
            "dark-pins.json" => {
                let kept = std::fs::read_to_string(&path).unwrap();
                assert!(
                    kept.contains("\"demo\"") && !kept.contains("broken"),
                    "{kept}"
                );
                fetch(socks, "http://demo.dark/", &out);
            }
            "services.json" => {
                let list = cli_json(&["service", "list"], &config);
                assert!(
                    list.to_string().contains(&address),
                    "{address} hosted again: {list}"
                );
            }
            "control.cookie" => {
                // The control API answers with the new cookie (the CLI reads the file).
                cli_json(&["status"], &config);
                assert_ne!(std::fs::read(&path).unwrap(), cookie);
            }
            _ => assert!(path.exists(), "a consensus fetched and saved again"),
        }
        daemon.stop();
        let text = std::fs::read_to_string(&log).unwrap();
        let said = text
            .lines()
            .find(|l| l.contains("WARN") && l.contains("moved aside") && l.contains(case.file))
            .unwrap_or_else(|| panic!("the log names {}:\n{text}", case.file));
        assert_eq!(
            std::fs::read(bad(&path)).unwrap(),
            damaged,
            "{} set aside whole",
            case.file
        );
        println!(
            "{}: set aside, daemon served a request, {:.1} s; the log: {}",
            case.file,
            t.elapsed().as_secs_f64(),
            message(said)
        );
    }

    // A relay's DHT routing table with one damaged line.
    let t = Instant::now();
    let relay = &layout["relays"][0];
    let name = relay["name"].as_str().unwrap();
    let rdir = dir.join(name);
    let table = rdir.join("dht-table");
    stop_pid(relay["pid"].as_u64().unwrap() as u32);
    let mut damaged = std::fs::read(&table).unwrap();
    let readable = String::from_utf8_lossy(&damaged)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    assert!(readable > 0, "the relay saved contacts");
    damaged.extend_from_slice(b"this line is not a relay descriptor\n");
    std::fs::write(&table, &damaged).unwrap();
    let log = rdir.join("restart.log");
    let mut relay = Daemon(
        Command::new(anonnet_bin())
            .args(["relay", "--config"])
            .arg(rdir.join("relay.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let said = log_line(&log, "moved aside");
    assert!(
        said.contains("WARN") && said.contains("dht-table"),
        "{said}"
    );
    assert!(
        said.contains(&format!("{readable} contacts kept")),
        "every readable contact kept ({readable}): {said}"
    );
    assert_eq!(std::fs::read(bad(&table)).unwrap(), damaged);
    relay.stop();
    println!(
        "dht-table: set aside, {readable} contacts kept, {:.1} s; the log: {}",
        t.elapsed().as_secs_f64(),
        message(&said)
    );
    drop(net);
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}

/// A tmpfs mounted for one test; unmounted (lazily if still busy) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `mount -t tmpfs -o size=SIZE` on `dir`; `None` when that is not allowed (not root).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=700"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fill the file system of `dir` with `dir/filler` until a write fails (4 MiB at most).
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = [0u8; 4096];
    for _ in 0..1024 {
        if f.write_all(&chunk).and_then(|()| f.sync_all()).is_err() {
            return;
        }
    }
    panic!("{} is not full after 4 MiB", dir.display());
}

/// A full disk (a 1 MiB tmpfs as the client's state directory; root only, else skipped):
/// the consensus the client fetches every period cannot be saved. The daemon keeps
/// serving, its log names the file it could not save (rate-limited), the old file is
/// whole, and no temporary file is left.
#[test]
fn a_full_disk_leaves_the_old_file_no_temporary_file_and_a_warning_naming_it() {
    let dir = temp_dir("state-full-disk");
    let mnt = dir.join("state");
    let Some(tmpfs) = Tmpfs::mount(&mnt, "1m") else {
        println!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let net = Testnet::start(3, &dir);
    let layout = net.layout();
    let site = layout["service"]["target"].as_str().unwrap().to_owned();
    let url = format!("http://{site}/");
    let out = dir.join("body");
    // The testnet's client config, with its state in the tmpfs (its paths are absolute).
    let config = mnt.join("client.toml");
    std::fs::copy(layout["client"]["config"].as_str().unwrap(), &config).unwrap();
    let log = dir.join("full-disk.log");
    let (mut daemon, socks) = start_client(&config, &log);
    fetch(socks, &url, &out);
    let consensus = mnt.join("consensus");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !consensus.exists() {
        assert!(Instant::now() < deadline, "no consensus saved");
        std::thread::sleep(Duration::from_millis(100));
    }
    fill(&mnt);
    let before = std::fs::read(&consensus).unwrap();
    let t = Instant::now();
    // A new consensus every 4 s (the testnet's period): its save fails.
    let said = log_line(&log, "cannot save");
    assert!(
        said.contains("WARN") && said.contains("consensus"),
        "{said}"
    );
    fetch(socks, &url, &out);
    daemon.stop();
    assert_eq!(
        std::fs::read(&consensus).unwrap(),
        before,
        "the old consensus is whole"
    );
    let stray: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
    println!(
        "full disk: save failed {:.1} s after the disk filled; the log: {}",
        t.elapsed().as_secs_f64(),
        message(&said)
    );
    // A restart with the state directory read-only (the first run's ports.json is gone,
    // which freed room on the full disk): nothing in it can be written, and the daemon
    // still starts and serves (issue 18 item 5).
    let cookie = std::fs::read(mnt.join("control.cookie")).unwrap();
    let ro = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ro.success(), "remounting {} read-only", mnt.display());
    let log2 = dir.join("full-disk-restart.log");
    let (mut daemon, socks) = start_client(&config, &log2);
    let said = log_line(&log2, "cannot save ports.json");
    assert!(said.contains("WARN"), "{said}");
    fetch(socks, &url, &out);
    daemon.stop();
    assert_eq!(
        std::fs::read(mnt.join("control.cookie")).unwrap(),
        cookie,
        "the valid cookie was reused, not rewritten"
    );
    drop(net);
    drop(tmpfs);
}
