//! Helpers for the end-to-end tests: find the `anonnet` binary, start a testnet as a real
//! child process, serve files over HTTP on loopback, speak raw SOCKS5 to read reply codes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `anonnet` binary built by `cargo test --workspace` (`target/<profile>/anonnet`).
pub fn anonnet_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("anonnet");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p anonnet` or `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A fresh directory `anonnet-e2e-<name>-XXXXXX` under the OS temp dir, removed when the
/// test ends. A test that panics keeps it (its logs are what one reads next) and prints its
/// path. Derefs to its [`Path`].
pub struct TestDir(tempfile::TempDir);

impl TestDir {
    /// Keep the directory after the test (a failure the test reports itself) and return
    /// its path.
    pub fn keep(mut self) -> PathBuf {
        self.0.disable_cleanup(true);
        self.0.path().to_path_buf()
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.disable_cleanup(true);
            eprintln!(
                "test failed: its files are kept in {}",
                self.0.path().display()
            );
        }
    }
}

/// A new [`TestDir`] for the test `name`.
pub fn temp_dir(name: &str) -> TestDir {
    TestDir(
        tempfile::Builder::new()
            .prefix(&format!("anonnet-e2e-{name}-"))
            .tempdir()
            .unwrap(),
    )
}

/// Spawn `cmd` with its stdout piped; its lines arrive on the returned channel (a thread
/// reads them until the child closes stdout).
pub fn spawn_lines(cmd: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// A running `anonnet testnet` child. Dropping it sends SIGTERM and waits (bounded) for it
/// to stop its relays and client.
pub struct Testnet {
    child: Child,
    pub socks: SocketAddr,
    /// The client's HTTP proxy (`HTTP proxy ready on` line).
    pub http: SocketAddr,
    pub dir: PathBuf,
    pub stdout: Vec<String>,
}

impl Testnet {
    pub fn start(relays: usize, dir: &Path) -> Testnet {
        Testnet::start_with(relays, dir, &[])
    }

    /// As [`Testnet::start`], with more `anonnet testnet` flags (`--guard-after 30`, …).
    pub fn start_with(relays: usize, dir: &Path, extra: &[&str]) -> Testnet {
        Testnet::start_logged(relays, dir, extra, None)
    }

    /// As [`Testnet::start_with`], every daemon logging under the `RUST_LOG` filter
    /// `log` (for a test whose failure should leave the reasons in the kept logs, e.g.
    /// `info,anonnet_proxy=debug`: debug lines name destinations, so never in a test
    /// about what logs contain). `None` leaves the environment as it is.
    pub fn start_logged(relays: usize, dir: &Path, extra: &[&str], log: Option<&str>) -> Testnet {
        let mut command = Command::new(anonnet_bin());
        if let Some(filter) = log {
            command.env("RUST_LOG", filter);
        }
        let (child, rx) = spawn_lines(
            command
                .args([
                    "testnet",
                    "--relays",
                    &relays.to_string(),
                    "--socks",
                    "127.0.0.1:0",
                    "--http",
                    "127.0.0.1:0",
                ])
                .args(extra)
                .arg("--dir")
                .arg(dir)
                .stderr(Stdio::inherit()),
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut lines = Vec::new();
        let mut net = Testnet {
            child,
            socks: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            dir: dir.to_path_buf(),
            stdout: Vec::new(),
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!("testnet did not print `SOCKS5 ready` and `HTTP proxy ready` in time; got {lines:?}")
            });
            lines.push(line.clone());
            if let Some(addr) = line.strip_prefix("SOCKS5 ready on ") {
                net.socks = addr.trim().parse().unwrap();
            }
            if let Some(addr) = line.strip_prefix("HTTP proxy ready on ") {
                net.http = addr.trim().parse().unwrap();
                assert_ne!(net.socks.port(), 0, "SOCKS line comes first: {lines:?}");
                break;
            }
        }
        // Collect the lines printed right after (the curl command).
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            lines.push(line);
        }
        net.stdout = lines;
        net
    }

    /// Every relay's `stats.json` under the testnet directory.
    pub fn relay_stats(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.file_name().is_some_and(|n| n == "stats.json") {
                    if let Ok(v) = serde_json::from_slice(&std::fs::read(&p).unwrap()) {
                        out.push(v);
                    }
                }
            }
        }
        out
    }

    /// Every relay's `stats.json`, read again every 100 ms until `ready` holds for them or
    /// `timeout` has passed (relays write the file once a second when a counter changed,
    /// so a count can lag the event by that much); the last reading either way.
    pub fn relay_stats_when(
        &self,
        timeout: Duration,
        ready: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.relay_stats();
            if ready(&stats) || Instant::now() >= deadline {
                return stats;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `testnet.json`: who is who (authorities, relays, client, service).
    pub fn layout(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("testnet.json")).unwrap()).unwrap()
    }

    /// The client's config file.
    pub fn client_config(&self) -> PathBuf {
        self.dir.join("client").join("client.toml")
    }

    pub fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(15));
    }
}

/// Stop `child`: SIGTERM, then wait up to `grace` for it to exit (polled every 50 ms),
/// then SIGKILL and reap it. Nothing is done to a child that has already exited.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Testnet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Start a client daemon with a fresh state directory `state` on the testnet whose client
/// config is `template` (its listeners moved to free ports, its log `state/client.log`);
/// returns it and its SOCKS address once it prints `SOCKS5 ready` (at most 120 s). The
/// caller kills and waits for the child.
#[allow(clippy::zombie_processes)]
pub fn start_fresh_client(template: &Path, state: &Path) -> (Child, SocketAddr) {
    std::fs::create_dir_all(state).unwrap();
    let config: String = std::fs::read_to_string(template)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("socks_listen") {
                "socks_listen = \"127.0.0.1:0\"".to_owned()
            } else if l.starts_with("http_listen") {
                "http_listen = \"127.0.0.1:0\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = state.join("client.toml");
    std::fs::write(&path, config).unwrap();
    let (child, rx) = spawn_lines(
        Command::new(anonnet_bin())
            .args(["run", "--exit-with-parent", "--config"])
            .arg(&path)
            .stdin(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(state.join("client.log")).unwrap(),
            )),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the fresh client prints SOCKS5 ready");
        if let Some(addr) = line.strip_prefix("SOCKS5 ready on ") {
            return (child, addr.trim().parse().unwrap());
        }
    }
}

/// Every `*.log` file under `dir` (a testnet directory: relays, authorities, client,
/// service), for tests that check what the logs say.
pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "log") {
                out.push(p);
            }
        }
    }
    out
}

/// `anonnet <args> --json --config CONFIG` (a control or file-reading subcommand of the
/// client whose config is `config`), parsed; panics with its stderr when it fails.
pub fn cli_json(args: &[&str], config: &Path) -> serde_json::Value {
    let out = output_of(
        Command::new(anonnet_bin())
            .args(args)
            .arg("--json")
            .arg("--config")
            .arg(config),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "anonnet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The status of the client daemon whose state directory (control cookie and port) is
/// `state_dir`, through its control API; panics when it does not answer within 10 s.
pub async fn client_status(state_dir: &Path) -> anonnet_control::Status {
    tokio::time::timeout(Duration::from_secs(10), async {
        anonnet_control::ControlClient::from_state_dir(state_dir)
            .unwrap()
            .status()
            .await
            .unwrap()
    })
    .await
    .expect("the control API answered within 10 s")
}

/// Wait, at most `bound`, until the client's guard set holds
/// [`anonnet_client::guards::NUM_GUARDS`] guards, asking its status every 500 ms; returns
/// the last status (the caller asserts on it). A young network flags relays Guard one
/// consensus after another, and the client tops its set up from each consensus it installs
/// (protocol §9.1), without sending anything.
pub async fn wait_for_full_guard_set(state_dir: &Path, bound: Duration) -> anonnet_control::Status {
    let deadline = Instant::now() + bound;
    let mut s = client_status(state_dir).await;
    while s.guards.len() < anonnet_client::guards::NUM_GUARDS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s = client_status(state_dir).await;
    }
    s
}

/// Serve `files` (path → body) over HTTP/1.1 on 127.0.0.1:0 with hyper; returns the port.
pub async fn serve_files(files: Vec<(String, Bytes)>) -> u16 {
    serve_files_at("127.0.0.1:0", files).await.port()
}

/// Serve `files` (path → body) over HTTP/1.1 on `bind` (port 0: a free one, e.g.
/// `"[::1]:0"`) with hyper; returns the bound address.
pub async fn serve_files_at(bind: &str, files: Vec<(String, Bytes)>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let port = listener.local_addr().unwrap();
    let files = std::sync::Arc::new(files);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let files = files.clone();
                    async move {
                        let body = files
                            .iter()
                            .find(|(p, _)| p == req.uri().path())
                            .map(|(_, b)| b.clone());
                        let resp = match body {
                            Some(b) => Response::new(Full::new(b)),
                            None => {
                                let mut r =
                                    Response::new(Full::new(Bytes::from_static(b"not found")));
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    port
}

/// Send a SOCKS5 no-auth CONNECT for `ip:port` (or a host name) and return the reply code
/// byte (RFC 1928 §6: 0 success, 2 not allowed, 4 host unreachable, 5 refused, 7 command
/// not supported …).
pub async fn socks_connect_reply(socks: SocketAddr, cmd: u8, host: &str, port: u16) -> u8 {
    let mut s = tokio::net::TcpStream::connect(socks).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 0]);
    s.write_all(&socks5_request(cmd, host, port)).await.unwrap();
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).await.unwrap();
    reply[1]
}

/// A SOCKS5 request (RFC 1928 §4): `VER 5 ‖ CMD ‖ RSV 0 ‖ ATYP ‖ DST.ADDR ‖ DST.PORT`,
/// the address as IPv4 (ATYP 1) or IPv6 (ATYP 4) when `host` is one, else as a name
/// (ATYP 3, at most 255 bytes: panics beyond).
pub fn socks5_request(cmd: u8, host: &str, port: u16) -> Vec<u8> {
    let mut req = vec![5, cmd, 0];
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.octets());
        }
        Ok(std::net::IpAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.octets());
        }
        Err(_) => {
            req.push(3);
            req.push(u8::try_from(host.len()).expect("a host name of at most 255 bytes"));
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    req
}

/// Run `f`, which blocks (it waits for a child process), without stalling the async tasks
/// of the calling test's runtime (such as the servers of [`serve_files`]): on a
/// multi-thread runtime through `tokio::task::block_in_place`, which hands this worker's
/// tasks to the others first; on a thread outside any runtime (or a `spawn_blocking`
/// thread) as it is. On a current-thread runtime nothing else can run meanwhile: such
/// tests must not serve anything from that runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// `cmd`'s output, waited for through [`blocking`].
pub fn output_of(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    blocking(|| cmd.output())
}

/// Run system curl through the SOCKS proxy (`--socks5-hostname`, names resolved by the
/// exit), saving the body to `out`. Returns curl's exit status and stderr. Safe to call
/// from an async test ([`blocking`]).
pub fn curl_socks(socks: SocketAddr, url: &str, out: &Path) -> (i32, String) {
    let o = output_of(
        Command::new("curl")
            .args(["-sS", "--max-time", "120", "--socks5-hostname"])
            .arg(socks.to_string())
            .arg("-o")
            .arg(out)
            .arg(url),
    )
    .expect("curl is installed (.ci/run installs it)");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Run system curl through the HTTP proxy (`-x http://PROXY`; with `tunnel`, `-p` makes it
/// a CONNECT tunnel), body to `out`. Returns the HTTP status curl saw (`%{http_code}`, 0
/// when none), its exit code and stderr. For a refused CONNECT curl prints the proxy's
/// status in its error and `%{http_connect}` holds it. Safe to call from an async test
/// ([`blocking`]).
pub fn curl_http(proxy: SocketAddr, url: &str, tunnel: bool, out: &Path) -> CurlResult {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-x"])
        .arg(format!("http://{proxy}"))
        .args(["-w", "%{http_code} %{http_connect}", "-o"])
        .arg(out);
    if tunnel {
        cmd.arg("-p");
    }
    let o = output_of(cmd.arg(url)).expect("curl is installed (.ci/run installs it)");
    let written = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut codes = written.split_whitespace().map(|c| c.parse().unwrap_or(0));
    CurlResult {
        status: codes.next().unwrap_or(0),
        connect_status: codes.next().unwrap_or(0),
        exit: o.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// What [`curl_http`] saw.
#[derive(Debug)]
pub struct CurlResult {
    /// `%{http_code}`: the final response's status (0 if none).
    pub status: u16,
    /// `%{http_connect}`: the proxy's answer to CONNECT (0 without a tunnel).
    pub connect_status: u16,
    /// curl's exit code.
    pub exit: i32,
    /// curl's stderr.
    pub stderr: String,
}
