//! End to end, real processes: malformed input at the client daemon's local listeners
//! (issue 8 item 6; docs/threat-model.md §3.5).
//!
//! A 3-relay testnet, plus a second client daemon (`anonnet run`) on the same relays with
//! `handshake_timeout_secs = 2`. Its SOCKS5 port, HTTP proxy port and control API get, all
//! at once:
//! - random bytes (a fixed-seed generator, 1 B – 8 KiB per connection), with and without a
//!   half-close after them;
//! - every prefix of a valid request (a truncated handshake), left open;
//! - requests the front end cannot serve (SOCKS4 BIND, SOCKS5 BIND and UDP ASSOCIATE, a
//!   255-byte binary host name, an HTTP `CONNECT` without a port);
//! - oversized heads: a 256 KiB header, 2,000 headers, a 1 MiB request line.
//!
//! Every connection must end with an error reply or a close, within the handshake
//! timeout plus slack ([`CLOSE_WITHIN`]): nothing waits forever. Then the daemon still
//! runs and serves `curl --socks5-hostname`, `curl -x` and the control API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anonnet_control::ControlClient;
use anonnet_tests::{
    anonnet_bin, curl_http, curl_socks, serve_files, spawn_lines, temp_dir, Testnet,
};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PAGE: &[u8] = b"<html><body>still serving</body></html>\n";
/// `client.handshake_timeout_secs` of the daemon under test.
const HANDSHAKE_TIMEOUT_SECS: u64 = 2;
/// The control API's own header timeout (`anonnet_control::HEADER_TIMEOUT`, 3 s) plus
/// slack for a loaded 2-core machine: every malformed connection must be closed by then.
const CLOSE_WITHIN: Duration = Duration::from_secs(12);
/// Random-byte connections per listener.
const RANDOM_CONNECTIONS: usize = 100;

/// xorshift64*: reproducible bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// How one malformed connection ended.
#[derive(Debug)]
struct Ended {
    /// Every byte the daemon sent before closing.
    reply: Vec<u8>,
    /// From the connect to the close.
    took: Duration,
}

/// Connect, send `bytes` (write errors ignored: the daemon may close first), half-close if
/// `half_close`, then read until the daemon closes. Panics if it has not closed within
/// [`CLOSE_WITHIN`]: a connection left hanging is the bug this test looks for.
async fn send_and_wait_close(
    addr: SocketAddr,
    bytes: Vec<u8>,
    half_close: bool,
    what: String,
) -> Ended {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(&bytes).await;
    if half_close {
        let _ = tcp.shutdown().await;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // A bounded record: the daemon's error replies are short.
                    if reply.len() < 64 * 1024 {
                        reply.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
    };
    if tokio::time::timeout(CLOSE_WITHIN, read_all).await.is_err() {
        panic!(
            "{what}: {addr} still open after {CLOSE_WITHIN:?} ({} bytes sent)",
            bytes.len()
        );
    }
    Ended {
        reply,
        took: started.elapsed(),
    }
}

/// The status code of an HTTP/1 response, if `reply` starts with one.
fn http_status(reply: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(reply.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// A valid SOCKS5 greeting plus no-auth CONNECT to `example.anon`-style host `host`.
fn socks_connect_request(host: &[u8], port: u16) -> Vec<u8> {
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host);
    req.extend_from_slice(&port.to_be_bytes());
    req
}

/// Start `anonnet run --config CONFIG` and read its SOCKS and HTTP lines.
#[allow(clippy::zombie_processes)]
fn start_client(config: &Path) -> (Child, SocketAddr, SocketAddr) {
    let (child, rx) = spawn_lines(
        Command::new(anonnet_bin())
            .args(["run", "--exit-with-parent", "--config"])
            .arg(config)
            .stdin(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(config.with_file_name("client.log")).unwrap(),
            )),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut socks = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the client daemon prints its SOCKS and HTTP lines");
        if let Some(a) = line.strip_prefix("SOCKS5 ready on ") {
            socks = Some(a.trim().parse().unwrap());
        }
        if let Some(a) = line.strip_prefix("HTTP proxy ready on ") {
            return (child, socks.unwrap(), a.trim().parse().unwrap());
        }
    }
}

fn alive(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_at_socks_http_and_control_gets_an_error_or_a_close() {
    let dir = temp_dir("malformed");
    let port = serve_files(vec![("/".into(), Bytes::from_static(PAGE))]).await;
    let _net = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || Testnet::start(3, &dir)
    })
    .await
    .unwrap();

    // A second client on the testnet's relays, with a short handshake timeout. Its config
    // sits beside the testnet client's, so the relative descriptor paths still hold.
    let state = dir.join("client-malformed");
    std::fs::create_dir_all(&state).unwrap();
    let base = std::fs::read_to_string(dir.join("client/client.toml")).unwrap();
    let mut config = String::new();
    for line in base.lines() {
        if line.starts_with("socks_listen") {
            config.push_str("socks_listen = \"auto\"\n");
        } else if line.starts_with("http_listen") {
            config.push_str("http_listen = \"auto\"\n");
        } else {
            config.push_str(line);
            config.push('\n');
            if line == "[client]" {
                config.push_str(&format!(
                    "control_listen = \"auto\"\nhandshake_timeout_secs = {HANDSHAKE_TIMEOUT_SECS}\n"
                ));
            }
        }
    }
    let config_path = state.join("client.toml");
    std::fs::write(&config_path, config).unwrap();
    let (mut child, socks, http) = start_client(&config_path);
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("ports.json")).unwrap()).unwrap();
    let control: SocketAddr = ports["control"].as_str().unwrap().parse().unwrap();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut tasks = tokio::task::JoinSet::new();
    let mut spawn = |addr: SocketAddr,
                     bytes: Vec<u8>,
                     half_close: bool,
                     what: String,
                     check: fn(&Ended) -> Result<(), String>| {
        tasks.spawn(async move {
            let ended = send_and_wait_close(addr, bytes, half_close, what.clone()).await;
            check(&ended).map_err(|e| format!("{what}: {e}"))?;
            Ok::<_, String>((what, ended.took))
        });
    };
    let any: fn(&Ended) -> Result<(), String> = |_| Ok(());

    // Random bytes at every listener.
    for (name, addr) in [("SOCKS", socks), ("HTTP", http), ("control", control)] {
        for i in 0..RANDOM_CONNECTIONS {
            let len = 1 + (rng.next() % 8192) as usize;
            let bytes = rng.bytes(len);
            spawn(addr, bytes, i % 2 == 0, format!("{name} random #{i}"), any);
        }
    }
    // HTTP answers garbage with 400 or a close, never a success.
    let not_success: fn(&Ended) -> Result<(), String> = |e| match http_status(&e.reply) {
        Some(s) if s < 400 => Err(format!("answered {s}")),
        _ => Ok(()),
    };
    for i in 0..20 {
        let mut bytes = rng.bytes(64);
        bytes.extend_from_slice(b"\r\n\r\n");
        spawn(
            http,
            bytes,
            false,
            format!("HTTP random head #{i}"),
            not_success,
        );
    }

    // Truncated handshakes, left open: the handshake timeout closes them.
    let full = socks_connect_request(b"example.invalid", 80);
    for cut in 1..full.len() {
        spawn(
            socks,
            full[..cut].to_vec(),
            false,
            format!("SOCKS prefix {cut}"),
            any,
        );
    }
    let head = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    for cut in [1, 3, 10, 30, head.len() - 2] {
        let bytes = head.as_bytes()[..cut].to_vec();
        spawn(
            http,
            bytes.clone(),
            false,
            format!("HTTP prefix {cut}"),
            any,
        );
        spawn(control, bytes, false, format!("control prefix {cut}"), any);
    }

    // Requests the SOCKS front end cannot serve get a reply code, then a close.
    for (cmd, what) in [(2u8, "BIND"), (3, "UDP ASSOCIATE")] {
        let mut req = full.clone();
        req[4] = cmd;
        spawn(socks, req, false, format!("SOCKS {what}"), |e| {
            // After the method choice [5, 0], the reply [5, REP, …] with REP 7.
            match e.reply.get(..4) {
                Some([5, 0, 5, 7]) => Ok(()),
                _ => Err(format!(
                    "expected reply 7 (command not supported), got {:?}",
                    e.reply
                )),
            }
        });
    }
    // SOCKS4 BIND (command 2): the SOCKS4 front end serves CONNECT only → reply 91.
    spawn(
        socks,
        b"\x04\x02\x00\x50\x7f\x00\x00\x01anon\x00".to_vec(),
        false,
        "SOCKS4 BIND".into(),
        |e| match e.reply.get(..2) {
            Some([0, 0x5b]) => Ok(()),
            r => Err(format!("a SOCKS4 BIND got {r:?}, expected reply 91")),
        },
    );
    let binary_host: Vec<u8> = (0..255).map(|i| (i as u8) ^ 0xA5).collect();
    spawn(
        socks,
        socks_connect_request(&binary_host, 80),
        false,
        "SOCKS binary host".into(),
        |e| match e.reply.get(..4) {
            Some([5, 0, 5, 0]) => Err("a binary host name was connected".into()),
            _ => Ok(()),
        },
    );
    spawn(
        socks,
        socks_connect_request(b"x.invalid", 0),
        false,
        "SOCKS port 0".into(),
        |e| match e.reply.get(..4) {
            Some([5, 0, 5, 0]) => Err("port 0 was connected".into()),
            _ => Ok(()),
        },
    );

    // Oversized heads: 431 or 400 or a close, never a forwarded request.
    let huge_header = format!(
        "GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(256 * 1024)
    );
    let many_headers = format!(
        "GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..2000)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let long_line = format!(
        "GET http://127.0.0.1:{port}/{} HTTP/1.1\r\n\r\n",
        "p".repeat(1 << 20)
    );
    for (what, text) in [
        ("256 KiB header", &huge_header),
        ("2000 headers", &many_headers),
        ("1 MiB request line", &long_line),
    ] {
        spawn(
            http,
            text.clone().into_bytes(),
            false,
            format!("HTTP {what}"),
            not_success,
        );
        spawn(
            control,
            text.clone().into_bytes(),
            false,
            format!("control {what}"),
            not_success,
        );
    }
    spawn(
        http,
        b"CONNECT 127.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
        false,
        "HTTP CONNECT without port".into(),
        |e| match http_status(&e.reply) {
            Some(400) => Ok(()),
            other => Err(format!("expected 400, got {other:?}")),
        },
    );

    let started = Instant::now();
    let mut count = 0;
    let mut slowest = (String::new(), Duration::ZERO);
    while let Some(done) = tasks.join_next().await {
        let (what, took) = done.unwrap().unwrap_or_else(|e| panic!("{e}"));
        count += 1;
        if took > slowest.1 {
            slowest = (what, took);
        }
    }
    println!(
        "{count} malformed connections all ended in {:?}; slowest: {} after {:?}",
        started.elapsed(),
        slowest.0,
        slowest.1
    );
    assert!(alive(&mut child), "the client daemon still runs");

    // The daemon still serves well-behaved clients on all three listeners.
    let url = format!("http://127.0.0.1:{port}/");
    let out = dir.join("page");
    let (code, err) = tokio::task::spawn_blocking({
        let (url, out) = (url.clone(), out.clone());
        move || curl_socks(socks, &url, &out)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "SOCKS after the malformed input: {err}");
    assert_eq!(std::fs::read(&out).unwrap(), PAGE);
    let got = tokio::task::spawn_blocking({
        let out = out.clone();
        move || curl_http(http, &url, false, &out)
    })
    .await
    .unwrap();
    assert_eq!(
        got.status, 200,
        "HTTP proxy after the malformed input: {got:?}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), PAGE);
    let status = ControlClient::from_state_dir(&state)
        .unwrap()
        .status()
        .await
        .unwrap();
    assert!(status.enabled, "{status:?}");
    assert!(alive(&mut child), "the client daemon still runs");
    let _ = child.kill();
    let _ = child.wait();
}
