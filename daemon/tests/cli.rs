//! The `anonnet` binary's command line: clear errors for bad invocations and configs.
//! (Also makes `cargo test --workspace` build the binary the end-to-end tests start.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn anonnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anonnet"))
}

#[test]
fn help_lists_the_modes() {
    let out = anonnet().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for mode in ["run", "relay", "testnet"] {
        assert!(text.contains(mode), "{text}");
    }
}

#[test]
fn missing_relay_config_names_the_file() {
    let out = anonnet()
        .args(["relay", "--config", "/nonexistent/anonnet-relay.toml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // 66: EX_NOINPUT, a file that is not there (docs/errors.md).
    assert_eq!(out.status.code(), Some(66), "{err}");
    assert!(err.contains("/nonexistent/anonnet-relay.toml"), "{err}");
}

/// The exit status tells the kind of failure (docs/errors.md, sysexits.h): a command line
/// that cannot work 64, no daemon at the SOCKS port 69.
#[test]
fn exit_status_tells_the_kind_of_failure() {
    let out = anonnet()
        .args(["--config", "client.toml", "relay", "--config", "relay.toml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("after the subcommand"), "{err}");

    // A port nobody listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let out = anonnet()
        .args(["resolve", "example.com", "--socks"])
        .arg(closed.to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
}

#[test]
fn unknown_config_key_names_file_and_key() {
    let dir = test_dir("unknown-key");
    let cfg = dir.path().join("relay.toml");
    std::fs::write(&cfg, "[relay]\nlistne = \"127.0.0.1:0\"\n").unwrap();
    let out = anonnet()
        .args(["relay", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("relay.toml") && err.contains("listne"),
        "{err}"
    );
}

/// A fresh directory `anonnet-cli-<name>-XXXXXX` for one test, removed when dropped.
fn test_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("anonnet-cli-{name}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn invalid_socks_listen_stops_run_naming_the_key() {
    let dir = test_dir("bad-socks");
    let cfg = dir.path().join("client.toml");
    std::fs::write(&cfg, "[client]\nsocks_listen = \"localhost:9050\"\n").unwrap();
    let out = anonnet()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("client.toml") && err.contains("client.socks_listen"),
        "{err}"
    );
    assert!(err.contains("IP:PORT") && err.contains("auto"), "{err}");
    assert!(out.stdout.is_empty(), "nothing is ready: {out:?}");
}

#[test]
fn socks_and_http_on_one_port_stop_run_naming_both_keys() {
    let dir = test_dir("clash");
    let cfg = dir.path().join("client.toml");
    std::fs::write(
        &cfg,
        "[client]\nsocks_listen = \"127.0.0.1:9150\"\nhttp_listen = \"127.0.0.1:9150\"\n",
    )
    .unwrap();
    let out = anonnet()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("client.http_listen") && err.contains("client.socks_listen"),
        "{err}"
    );
}

#[test]
fn log_level_flag_is_documented_and_checked() {
    let out = anonnet().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--log-level"), "{text}");
    let out = anonnet()
        .args(["--log-level", "loud", "run"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error, warn, info, debug, trace"), "{err}");
}
