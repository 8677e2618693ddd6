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
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/anonnet-relay.toml"), "{err}");
}

#[test]
fn unknown_config_key_names_file_and_key() {
    let dir = std::env::temp_dir().join(format!("anonnet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("relay.toml");
    std::fs::write(&cfg, "[relay]\nlistne = \"127.0.0.1:0\"\n").unwrap();
    let out = anonnet()
        .args(["relay", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relay.toml") && err.contains("listne"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
