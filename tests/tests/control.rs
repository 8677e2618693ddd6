//! End to end, real processes: the control API of a testnet's client daemon, driven by the
//! `anonnet` CLI subcommands (`status`, `circuits`, `proxy on|off`, `new-identity`) and by
//! the `anonnet-control` client, with SOCKS requests in between.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anonnet_control::{CircuitInfo, ControlClient, Cookie, Event, EventStream, Status};
use anonnet_tests::{anonnet_bin, curl_socks, serve_files, socks_connect_reply, temp_dir, Testnet};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAGE: &[u8] = b"<html><body>hello through anonnet</body></html>\n";

/// Run `anonnet ARGS` (bounded) and return its output.
async fn anonnet(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(anonnet_bin())
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("anonnet subcommand finished in time")
        .unwrap()
}

/// Run `anonnet ARGS --config CONFIG`, expect success, return stdout.
async fn anonnet_ok(config: &Path, args: &[&str]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    let config = config.to_str().unwrap();
    all.extend(["--config", config]);
    let out = anonnet(&all).await;
    assert!(
        out.status.success(),
        "anonnet {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn circuits_json(config: &Path) -> Vec<CircuitInfo> {
    serde_json::from_str(&anonnet_ok(config, &["circuits", "--json"]).await).unwrap()
}

/// The ids of the circuits carrying the no-auth SOCKS user's streams ("in use").
async fn in_use(config: &Path) -> Vec<u64> {
    circuits_json(config)
        .await
        .iter()
        .filter(|c| c.state == "in use")
        .map(|c| c.id)
        .collect()
}

/// Read events until one matches (other events are skipped), at most 10 s.
async fn wait_event(events: &mut EventStream, want: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.next().await.unwrap() {
                Some(e) if want(&e) => return e,
                Some(_) => continue,
                None => panic!("event stream ended"),
            }
        }
    })
    .await
    .expect("the event arrived in time")
}

/// One raw HTTP/1.1 request to the control port; returns the status code and the body.
async fn raw_http(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

fn control_addr(state_dir: &Path) -> SocketAddr {
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("ports.json")).unwrap()).unwrap();
    ports["control"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_refuses_without_cookie_and_cli_toggles_proxy_and_identity() {
    let port = serve_files(vec![("/".into(), Bytes::from_static(PAGE))]).await;
    let dir = temp_dir("control");
    let mut net = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Testnet::start(3, &dir))
            .await
            .unwrap()
    };
    let socks = net.socks;
    let state_dir = dir.join("client");
    let config: PathBuf = state_dir.join("client.toml");

    // The testnet tells people how to reach its client.
    let status_line = format!("anonnet --config {} status", config.display());
    assert!(
        net.stdout.iter().any(|l| l == &status_line),
        "testnet prints {status_line:?}: {:?}",
        net.stdout
    );

    // The cookie file is the user's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state_dir.join("control.cookie"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "control.cookie mode {mode:o}");
    }

    // Without the cookie (or with a wrong one) nothing happens: 401, proxying stays on.
    let addr = control_addr(&state_dir);
    assert!(addr.ip().is_loopback());
    let (code, body) = raw_http(addr, "POST /v1/proxy HTTP/1.1", r#"{"enabled":false}"#).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (code, _) = raw_http(
        addr,
        &format!(
            "POST /v1/new-identity HTTP/1.1\r\nAuthorization: Bearer {}",
            "00".repeat(32)
        ),
        "",
    )
    .await;
    assert_eq!(code, 401);
    let e = ControlClient::connect(addr, Cookie::generate().unwrap())
        .status()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cookie rejected"), "{e}");
    let control = ControlClient::from_state_dir(&state_dir).unwrap();
    let status = control.status().await.unwrap();
    assert!(status.enabled, "the refused request changed nothing");
    assert_eq!(status.bootstrap.percent, 100);
    assert_eq!(status.counters.circuits_built_on_demand, 0);

    // Human and JSON status, with --config before or after the subcommand.
    let text = anonnet_ok(&config, &["status"]).await;
    assert!(text.contains("bootstrap: 100% (ready)"), "{text}");
    assert!(text.contains("proxy:     on"), "{text}");
    let out = anonnet(&["--config", config.to_str().unwrap(), "status", "--json"]).await;
    assert!(out.status.success());
    let json: Status = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json.enabled);
    assert_eq!(json.relays, 3);

    let mut events = control.events().await.unwrap();

    // Proxy off: a new SOCKS connection is refused ("not allowed", 2); on again: it works.
    let text = anonnet_ok(&config, &["proxy", "off"]).await;
    assert!(text.starts_with("proxy: off"), "{text}");
    wait_event(&mut events, |e| {
        matches!(e, Event::ProxyEnabled { enabled: false })
    })
    .await;
    assert!(!control.status().await.unwrap().enabled);
    assert_eq!(socks_connect_reply(socks, 1, "127.0.0.1", port).await, 2);
    let (code, _) = curl_socks(
        socks,
        &format!("http://127.0.0.1:{port}/"),
        &dir.join("off.html"),
    );
    assert_ne!(code, 0, "curl must fail while proxying is off");
    let text = anonnet_ok(&config, &["proxy", "on"]).await;
    assert_eq!(text.trim(), "proxy: on");
    wait_event(&mut events, |e| {
        matches!(e, Event::ProxyEnabled { enabled: true })
    })
    .await;
    assert_eq!(socks_connect_reply(socks, 1, "127.0.0.1", port).await, 0);

    // The same SOCKS user keeps its circuit from request to request...
    let fetch = |name: &str| {
        let out = dir.join(name);
        let url = format!("http://127.0.0.1:{port}/");
        async move {
            let (code, err) = tokio::task::spawn_blocking(move || {
                let r = curl_socks(socks, &url, &out);
                assert_eq!(std::fs::read(&out).unwrap_or_default(), PAGE);
                r
            })
            .await
            .unwrap();
            assert_eq!(code, 0, "curl failed: {err}");
        }
    };
    fetch("1.html").await;
    let first = in_use(&config).await;
    assert_eq!(first.len(), 1, "one circuit in use: {first:?}");
    fetch("2.html").await;
    assert_eq!(in_use(&config).await, first, "the circuit is reused");

    // ...until a new identity: the next request uses a circuit that did not exist before.
    let before: HashSet<u64> = circuits_json(&config).await.iter().map(|c| c.id).collect();
    let text = anonnet_ok(&config, &["new-identity"]).await;
    assert!(text.starts_with("new identity"), "{text}");
    wait_event(&mut events, |e| matches!(e, Event::NewIdentity)).await;
    let retired = circuits_json(&config).await;
    assert!(
        retired
            .iter()
            .filter(|c| before.contains(&c.id))
            .all(|c| c.state == "retired"),
        "every old circuit is retired: {retired:?}"
    );
    fetch("3.html").await;
    let after = in_use(&config).await;
    assert_eq!(after.len(), 1, "one circuit in use: {after:?}");
    assert!(
        !before.contains(&after[0]),
        "circuit {} existed before the new identity ({before:?})",
        after[0]
    );
    let text = anonnet_ok(&config, &["circuits"]).await;
    assert!(text.contains("in use") && text.contains(" → "), "{text}");

    // Hidden services through the CLI: none at first; publish a local port, see it
    // listed, take it down again.
    assert_eq!(
        anonnet_ok(&config, &["service", "list"]).await.trim(),
        "no hidden services"
    );
    let published = anonnet_ok(&config, &["service", "publish", "8080"]).await;
    let address = published
        .split_whitespace()
        .find_map(|w| w.split(':').next().filter(|a| a.ends_with(".anon")))
        .unwrap_or_else(|| panic!("no .anon address in {published:?}"))
        .to_owned();
    assert!(published.contains("127.0.0.1:8080"), "{published}");
    let list = anonnet_ok(&config, &["service", "list"]).await;
    assert!(list.contains(&address), "{list}");
    // Publishing the same target again gives the same service.
    let again = anonnet_ok(&config, &["service", "publish", "8080"]).await;
    assert!(again.contains(&address), "{again}");
    anonnet_ok(&config, &["service", "unpublish", &address]).await;
    assert_eq!(
        anonnet_ok(&config, &["service", "list"]).await.trim(),
        "no hidden services"
    );
    // A mistyped address is refused with the reason.
    let out = anonnet(&[
        "service",
        "unpublish",
        "nothere.anon",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothere.anon"), "{err}");

    net.stop();
    // Once the daemon is gone, the CLI says so.
    let out = anonnet(&["status", "--config", config.to_str().unwrap()]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Stopped cleanly it removed ports.json ("daemon not running"); killed, it left a stale
    // one ("connection refused …: the daemon is not running").
    assert!(err.contains("not running"), "{err}");
}

#[tokio::test]
async fn status_without_a_daemon_exits_non_zero_with_a_clear_message() {
    let dir = temp_dir("control-none");
    let config = dir.join("client.toml");
    std::fs::write(&config, "[client]\nstate_dir = \"state\"\n").unwrap();
    let state = dir.join("state");

    // No daemon ever ran: no ports.json.
    for args in [
        vec!["status", "--config", config.to_str().unwrap()],
        vec!["--config", config.to_str().unwrap(), "circuits", "--json"],
        vec!["proxy", "off", "--config", config.to_str().unwrap()],
    ] {
        let out = anonnet(&args).await;
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        let expected = format!(
            "daemon not running (no ports.json at {})",
            state.join("ports.json").display()
        );
        assert!(err.contains(&expected), "{args:?}: {err}");
    }

    // A daemon that died and left its port file behind: "connection refused".
    std::fs::create_dir_all(&state).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    std::fs::write(
        state.join("ports.json"),
        format!(r#"{{"socks":"127.0.0.1:9050","control":"{closed_addr}"}}"#),
    )
    .unwrap();
    Cookie::create_in(&state).unwrap();
    let out = anonnet(&["status", "--config", config.to_str().unwrap()]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("connection refused at {closed_addr}")),
        "{err}"
    );
}
