//! End to end, real processes: RESOLVE and RESOLVE_PTR (Tor's SOCKS5 extension commands
//! 0xF0/0xF1, and 0xF0 over SOCKS4a; issue 17 item 1) answered by an exit. Two real
//! clients ask: Debian's `tor-resolve` (Tor's own tool, written against Tor's SocksPort)
//! and `anonnet resolve`.
//! A name resolves to its address and an address to its name at the exit; an address the
//! exit policy refuses is refused without a lookup (reply 2), as is a `.anon`/`.dark`
//! name; the client's and the exits' counters rise; and no log names what was asked.
//!
//! Only names and addresses of the exit's `/etc/hosts` (`localhost`, 127.0.0.1) are asked
//! for, and 10.1.2.3 is refused before any lookup, so no DNS query leaves the machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anonnet_tests::{anonnet_bin, cli_json, log_files, temp_dir, Testnet};

/// `tor-resolve -5 [-x] QUERY SOCKS`: its stdout line, or its exit code and stderr.
fn tor_resolve(socks: &str, reverse: bool, query: &str) -> Result<String, String> {
    tor_resolve_with(socks, if reverse { &["-5", "-x"] } else { &["-5"] }, query)
}

/// `tor-resolve FLAGS QUERY SOCKS`.
fn tor_resolve_with(socks: &str, flags: &[&str], query: &str) -> Result<String, String> {
    let mut cmd = Command::new("tor-resolve");
    cmd.args(flags);
    let out = cmd
        .args([query, socks])
        .output()
        .expect("tor-resolve is installed (.ci/run installs Debian's tor)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "tor-resolve {query}: {:?} {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `anonnet resolve ARGS --config CONFIG`: its stdout, or its stderr.
fn anonnet_resolve(config: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(anonnet_bin())
        .arg("resolve")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[test]
fn tor_resolve_and_anonnet_resolve_are_answered_by_the_exit() {
    let dir = temp_dir("resolve");
    let mut net = Testnet::start(3, &dir);
    let socks = net.socks.to_string();
    let config = net.client_config();
    let layout = net.layout();
    let address = layout["service"]["address"].as_str().unwrap().to_owned();
    let name = layout["service"]["name"].as_str().unwrap().to_owned();

    // A name's address, and an address's name, through Tor's own client.
    assert_eq!(
        tor_resolve(&socks, false, "localhost").unwrap(),
        "127.0.0.1"
    );
    assert_eq!(tor_resolve(&socks, true, "127.0.0.1").unwrap(), "localhost");
    // Over SOCKS4a (Tor's RESOLVE command 0xF0 there too).
    assert_eq!(
        tor_resolve_with(&socks, &["-4"], "localhost").unwrap(),
        "127.0.0.1"
    );
    // The same through `anonnet resolve`, which finds the SOCKS port itself; as JSON, and
    // in an isolation group of its own.
    assert_eq!(
        anonnet_resolve(&config, &["localhost"]).unwrap(),
        "127.0.0.1"
    );
    let json: serde_json::Value =
        serde_json::from_str(&anonnet_resolve(&config, &["127.0.0.1", "--json"]).unwrap()).unwrap();
    assert_eq!(json["query"], "127.0.0.1");
    assert_eq!(json["answer"], "localhost");
    assert_eq!(
        anonnet_resolve(&config, &["--isolation", "alice", "localhost"]).unwrap(),
        "127.0.0.1"
    );

    // Refused: an address the exit policy does not allow (no lookup is made), and hidden
    // service names, which have no address (reply 2, "not allowed").
    assert!(tor_resolve(&socks, true, "10.1.2.3").is_err());
    let err = anonnet_resolve(&config, &["10.1.2.3"]).unwrap_err();
    assert!(err.contains("SOCKS reply 2"), "{err}");
    // Its exit status is that of the reply's kind, not allowed (77, docs/errors.md).
    let refused = Command::new(anonnet_bin())
        .args(["resolve", "10.1.2.3", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(77), "{refused:?}");
    for hidden in [&address, &name] {
        assert!(tor_resolve(&socks, false, hidden).is_err(), "{hidden}");
        let err = anonnet_resolve(&config, &[hidden.as_str()]).unwrap_err();
        assert!(err.contains("SOCKS reply 2"), "{err}");
    }

    // The client sent them (the two refused locally are not counted), and exits answered.
    let status = cli_json(&["status"], &config);
    let resolves = status["counters"]["resolves"].as_u64().unwrap();
    assert!(resolves >= 8, "client resolves: {resolves}");
    let stats = net.relay_stats_when(Duration::from_secs(10), |s| {
        s.iter()
            .map(|r| r["exit_resolves"].as_u64().unwrap_or(0))
            .sum::<u64>()
            >= 8
    });
    let answered: u64 = stats
        .iter()
        .map(|r| r["exit_resolves"].as_u64().unwrap_or(0))
        .sum();
    assert!(answered >= 8, "exits answered {answered}: {stats:?}");

    // No log names what was asked (default level `info`).
    net.stop();
    let forbidden = [
        address.trim_end_matches(".anon"),
        name.trim_end_matches(".dark"),
        "localhost",
        "10.1.2.3",
    ];
    let logs = log_files(&dir);
    assert!(logs.len() >= 5, "{logs:?}");
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for f in forbidden {
            assert!(!text.contains(f), "{} names {f}", log.display());
        }
    }
}
