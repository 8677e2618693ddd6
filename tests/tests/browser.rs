//! End to end, real processes: `anonnet browser` (issue 17 item 4) starts headless
//! Chromium against a testnet's client. The page it loads — through the proxy, counted by
//! the client — tries a WebRTC STUN request to a UDP socket of this test; ICE gathering
//! runs, and not one UDP datagram arrives. A second, `--new-identity` browser gets a new
//! profile and a circuit of its own (a new isolation key). SIGTERM closes both browsers
//! and deletes their profiles. A control run of Chromium through the same SOCKS port but
//! without the WebRTC policy *does* send STUN to the socket, so the zero above means
//! something. No log names the page's address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anonnet_control::ControlClient;
use anonnet_tests::{anonnet_bin, log_files, temp_dir, Testnet};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};

/// The probe page: one RTCPeerConnection with a STUN server at `127.0.0.1:<stun>` (the
/// test's UDP socket), a data channel and an offer set as local description, which starts
/// ICE gathering. When gathering completes, or after 5 s, it reports the gathering states
/// it saw and the number of candidates to `/done`.
const PAGE: &str = r#"<!doctype html>
<title>webrtc probe</title>
<pre id="out">running</pre>
<script>
const q = new URLSearchParams(location.search);
const states = [];
let candidates = 0;
let sent = false;
function done() {
  if (sent) return;
  sent = true;
  const report = 'tag=' + q.get('tag') + '&states=' + states.join(',') + '&candidates=' + candidates;
  document.getElementById('out').textContent = report;
  fetch('/done?' + report);
}
try {
  const pc = new RTCPeerConnection({iceServers: [{urls: 'stun:127.0.0.1:' + q.get('stun')}]});
  pc.onicegatheringstatechange = () => {
    states.push(pc.iceGatheringState);
    if (pc.iceGatheringState === 'complete') done();
  };
  pc.onicecandidate = (e) => { if (e.candidate) candidates++; };
  pc.createDataChannel('probe');
  pc.createOffer().then((o) => pc.setLocalDescription(o)).catch((e) => { states.push('error-' + e.name); done(); });
} catch (e) {
  states.push('error-' + e.name);
  done();
}
setTimeout(done, 5000);
</script>
"#;

/// Every request line (path and query) the page server was asked, in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// Serve [`PAGE`] at `/probe` and answer `/done` on 127.0.0.1:0, recording every request.
async fn serve_probe() -> (u16, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let uri = req.uri();
                    let line = uri
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default();
                    record.lock().unwrap().push(line);
                    let resp = match uri.path() {
                        "/probe" => Response::new(Full::new(Bytes::from_static(PAGE.as_bytes()))),
                        "/done" => Response::new(Full::new(Bytes::from_static(b"ok"))),
                        _ => {
                            let mut r = Response::new(Full::new(Bytes::from_static(b"no")));
                            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                            r
                        }
                    };
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (port, seen)
}

/// A UDP socket on 127.0.0.1 standing in for a STUN server: its port and the number of
/// datagrams it has received so far.
async fn stun_listener() -> (u16, Arc<AtomicUsize>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while sock.recv_from(&mut buf).await.is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, count)
}

/// The report `/done?tag=<tag>&…` the page sent, once it arrived (bounded by `timeout`).
async fn report(seen: &Seen, tag: &str, timeout: Duration) -> String {
    let want = format!("/done?tag={tag}&");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = seen.lock().unwrap().iter().find(|l| l.starts_with(&want)) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no report from the page tagged {tag} in {timeout:?}; requests seen: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Chromium on PATH, or a failure that says how to install it.
fn chromium() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .expect(
            "chromium is not installed: `apt-get install chromium` (.ci/run installs it); \
             the anonnet browser test needs a real Chromium",
        )
}

/// A browser process tree in a process group of its own: dropping it sends SIGTERM to
/// the group, waits (bounded) and then SIGKILLs what is left.
struct Group {
    child: Child,
}

impl Group {
    fn spawn(cmd: &mut Command) -> (Group, mpsc::Receiver<String>) {
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (Group { child }, rx)
    }

    /// SIGTERM to the leader only (as a service manager would), then wait for it at most
    /// `timeout`; whether it exited.
    fn terminate_leader(&mut self, timeout: Duration) -> bool {
        signal(&self.child.id().to_string(), "TERM");
        self.wait(timeout)
    }

    fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        if let Ok(None) = self.child.try_wait() {
            signal(&group, "TERM");
            self.wait(Duration::from_secs(10));
        }
        signal(&group, "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(target: &str, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(target)
        .stderr(Stdio::null())
        .status();
}

/// `anonnet browser --headless` for the testnet client `config`: the running group and
/// the profile directory from its `BROWSER started … profile DIR …` line.
fn anonnet_browser(config: &Path, url: &str, extra: &[&str], log: &Path) -> (Group, PathBuf) {
    let (group, rx) = Group::spawn(
        Command::new(anonnet_bin())
            .args(["browser", "--headless", "--config"])
            .arg(config)
            .args(extra)
            .arg(url)
            // Chromium refuses to run as root without it (CI runs as root).
            .args(["--", "--no-sandbox"])
            .stderr(std::fs::File::create(log).unwrap()),
    );
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("anonnet browser prints its BROWSER started line");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[..2], ["BROWSER", "started"], "{line}");
    let at = words.iter().position(|w| *w == "profile").unwrap();
    let profile = PathBuf::from(words[at + 1]);
    assert!(profile.is_dir(), "{line}");
    (group, profile)
}

/// Ids of the client's circuits in use (dirty with some isolation group).
async fn in_use(control: &ControlClient) -> Vec<u64> {
    let status = control.status().await.unwrap();
    let mut ids: Vec<u64> = status
        .circuits
        .iter()
        .filter(|c| c.state == "in use")
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

async fn streams_opened(control: &ControlClient) -> u64 {
    control.status().await.unwrap().counters.streams_opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonnet_browser_loads_through_the_proxy_and_webrtc_sends_no_udp() {
    let chromium = chromium();
    let started = Instant::now();
    let dir = temp_dir("browser");
    let (port, seen) = serve_probe().await;
    let (stun, udp) = stun_listener().await;
    let net = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || Testnet::start(3, &dir)
    })
    .await
    .unwrap();
    let config = net.client_config();
    let control = ControlClient::from_state_dir(&dir.join("client")).unwrap();
    let streams_before = streams_opened(&control).await;
    let circuits_before = in_use(&control).await;

    // The anonymised browser: the page comes through the testnet, ICE gathering runs, and
    // no STUN request (nor any other datagram) reaches the UDP socket.
    let url = format!("http://127.0.0.1:{port}/probe?stun={stun}&tag=anon");
    let (mut first, first_profile) =
        anonnet_browser(&config, &url, &[], &dir.join("browser-1.log"));
    let anon = report(&seen, "anon", Duration::from_secs(120)).await;
    assert!(
        anon.contains("states=gathering"),
        "ICE gathering ran: {anon}"
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("/probe?") && l.ends_with("tag=anon")),
        "the server served the page: {:?}",
        seen.lock().unwrap()
    );
    let streams_after = streams_opened(&control).await;
    assert!(
        streams_after > streams_before,
        "the page came through the client: {streams_before} -> {streams_after}"
    );
    let with_first = in_use(&control).await;
    assert!(
        with_first.len() > circuits_before.len(),
        "the identity's key got a circuit: {circuits_before:?} -> {with_first:?}"
    );
    // Two more seconds for a late STUN retransmission.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        udp.load(Ordering::SeqCst),
        0,
        "a UDP datagram reached the STUN listener from the anonymised browser ({anon})"
    );
    let record = dir.join("client").join("browser.json");
    assert!(record.exists(), "the running identity is recorded");

    // A new identity: a new profile, and a new isolation key, so a new circuit.
    let url2 = format!("http://127.0.0.1:{port}/probe?stun={stun}&tag=anon2");
    let (mut second, second_profile) = anonnet_browser(
        &config,
        &url2,
        &["--new-identity"],
        &dir.join("browser-2.log"),
    );
    assert_ne!(first_profile, second_profile);
    let anon2 = report(&seen, "anon2", Duration::from_secs(120)).await;
    assert!(anon2.contains("states=gathering"), "{anon2}");
    let with_second = in_use(&control).await;
    assert!(
        with_second.len() > with_first.len(),
        "the new identity did not share the first one's circuit: {with_first:?} -> {with_second:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(udp.load(Ordering::SeqCst), 0, "({anon2})");

    // SIGTERM (as Ctrl-C would): each closes its browser and deletes its profile.
    for (group, profile) in [(&mut second, &second_profile), (&mut first, &first_profile)] {
        assert!(
            group.terminate_leader(Duration::from_secs(20)),
            "anonnet browser exits on SIGTERM"
        );
        assert!(!profile.exists(), "{} deleted", profile.display());
    }
    assert!(!record.exists(), "the identity record is removed");
    let anonymised_run = started.elapsed();

    // The control run: plain Chromium through the same SOCKS port (the daemon's own, so
    // the page still comes through the testnet) but without the WebRTC policy. Its STUN
    // requests do reach the socket: the page really tries, and the proxy alone does not
    // stop it.
    let (ctl_stun, ctl_udp) = stun_listener().await;
    let ctl_profile = temp_dir("browser-control");
    let ctl_url = format!("http://127.0.0.1:{port}/probe?stun={ctl_stun}&tag=control");
    let streams_before_control = streams_opened(&control).await;
    let (_control_run, _) = Group::spawn(
        Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--proxy-bypass-list=<-loopback>",
            ])
            .arg(format!("--proxy-server=socks5://{}", net.socks))
            .arg(format!("--user-data-dir={}", ctl_profile.display()))
            .arg(&ctl_url)
            .stderr(Stdio::null()),
    );
    let ctl = report(&seen, "control", Duration::from_secs(60)).await;
    assert!(
        streams_opened(&control).await > streams_before_control,
        "the control run's page came through the client too"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctl_udp.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ctl_udp.load(Ordering::SeqCst) > 0,
        "the control run (Chromium through the proxy, no WebRTC policy) sent no STUN request \
         either, so the test proves nothing: {ctl}"
    );
    eprintln!(
        "anonymised runs: {anon} / {anon2}, 0 datagrams ({anonymised_run:?}); control run: \
         {ctl}, {} datagrams",
        ctl_udp.load(Ordering::SeqCst)
    );
    drop(_control_run);

    // No log names the page's address (default level).
    drop(net);
    let destination = format!("127.0.0.1:{port}");
    for log in log_files(&dir) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !text.contains(&destination) && !text.contains("/probe"),
            "{} names the destination",
            log.display()
        );
    }
}
