//! End to end, real processes: the SOCKS port speaks SOCKS4 and SOCKS4a beside SOCKS5
//! (issue 17 item 1). The real `curl` fetches a local page by host name (`--socks4a`, the
//! name resolved by the exit) and by IP (`--socks4`), the testnet's hidden service by
//! `.anon` address and by `.dark` name; different SOCKS4 user ids get different circuits
//! (read from the client's counters through its control API); a `BIND` and a `CONNECT` to a
//! closed port sent by hand get reply 91; a connection that speaks neither SOCKS version is
//! closed; and no log names where the user went. A client that pipelines (sends its
//! request before the SOCKS reply) has it travel with `BEGIN`, over SOCKS5 and SOCKS4.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anonnet_control::{ControlClient, Status};
use anonnet_tests::{log_files, serve_files, socks5_request, temp_dir, TestDir, Testnet};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAGE: &[u8] = b"spoken over SOCKS4\n";
const DEMO: &str = "Hello from the anonnet testnet";

/// Run `curl -sS --max-time 30 ARGS URL`; its body, or its exit code and stderr.
async fn curl(args: &[&str], url: &str) -> Result<Vec<u8>, String> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output()
        .await
        .expect("curl is installed (.ci/run installs it)");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "curl {args:?} {url}: {:?} {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// [`curl`], tried up to three times (a hidden service's first fetch can lose a race with
/// its descriptor's publication).
async fn curl_retried(args: &[&str], url: &str) -> Vec<u8> {
    let mut errors = Vec::new();
    for _ in 0..3 {
        match curl(args, url).await {
            Ok(body) => return body,
            Err(e) => errors.push(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{errors:?}");
}

/// Ids of the client's circuits in use (dirty with some isolation group), sorted.
async fn in_use(control: &ControlClient) -> Vec<u64> {
    let status: Status = control.status().await.unwrap();
    let mut ids: Vec<u64> = status
        .circuits
        .iter()
        .filter(|c| c.state == "in use")
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// A 3-relay testnet in a fresh directory (which must outlive it), and the port of a
/// local server of [`PAGE`].
async fn start(name: &str) -> (TestDir, Testnet, u16) {
    let dir = temp_dir(name);
    let port = serve_files(vec![("/".into(), Bytes::from_static(PAGE))]).await;
    let net = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || Testnet::start(3, &dir)
    })
    .await
    .unwrap();
    (dir, net, port)
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Send raw SOCKS4 `request` bytes and return the reply's `CD` byte, or `None` when the
/// server closed the connection without a reply (bounded: 30 s).
async fn raw_socks4(socks: std::net::SocketAddr, request: &[u8]) -> Option<u8> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(socks).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut reply = [0u8; 8];
        match s.read_exact(&mut reply).await {
            Ok(_) => {
                assert_eq!(reply[0], 0, "reply version: {reply:?}");
                assert_eq!(reply[2..], [0; 6], "port and address are zero: {reply:?}");
                Some(reply[1])
            }
            Err(_) => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("the SOCKS port answered in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks4_and_socks4a_connect_isolate_by_user_id_and_refuse_bind() {
    let (dir, mut net, port) = start("socks4").await;
    let socks = net.socks.to_string();
    let control = ControlClient::from_state_dir(&dir.join("client")).unwrap();
    // Let the pool fill (bounded), so the circuits counted below are the only ones in use.
    for _ in 0..100 {
        let s = control.status().await.unwrap();
        if s.circuits.iter().filter(|c| c.state == "clean").count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SOCKS4a by host name, no user id: the default isolation group.
    let local = format!("http://localhost:{port}/");
    let body = curl(&["--socks4a", &socks], &local).await.unwrap();
    assert_eq!(body, PAGE);
    let default_group = in_use(&control).await;
    assert_eq!(default_group.len(), 1, "{default_group:?}");

    // SOCKS4 by IP, no user id: the same group, so the same circuit.
    let body = curl(&["--socks4", &socks], &format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(body, PAGE);
    assert_eq!(in_use(&control).await, default_group);

    // A user id is an isolation group of its own (curl sends the proxy user as USERID).
    let alice = format!("socks4a://alice@{socks}");
    let bob = format!("socks4a://bob@{socks}");
    assert_eq!(curl(&["-x", &alice], &local).await.unwrap(), PAGE);
    let with_alice = in_use(&control).await;
    assert_eq!(
        with_alice.len(),
        2,
        "alice got her own circuit: {with_alice:?}"
    );
    assert_eq!(curl(&["-x", &bob], &local).await.unwrap(), PAGE);
    let with_bob = in_use(&control).await;
    assert_eq!(with_bob.len(), 3, "bob got his own circuit: {with_bob:?}");
    assert_eq!(curl(&["-x", &alice], &local).await.unwrap(), PAGE);
    assert_eq!(curl(&["-x", &bob], &local).await.unwrap(), PAGE);
    assert_eq!(
        in_use(&control).await,
        with_bob,
        "each user id reused its circuit"
    );

    // The hidden service by `.anon` address and by `.dark` name, over SOCKS4a.
    let layout = net.layout();
    let address = layout["service"]["address"].as_str().unwrap().to_owned();
    let name = layout["service"]["name"].as_str().unwrap().to_owned();
    let body = curl_retried(&["--socks4a", &socks], &format!("http://{address}/")).await;
    assert!(String::from_utf8_lossy(&body).contains(DEMO));
    let body = curl_retried(&["-x", &alice], &format!("http://{name}/")).await;
    assert!(String::from_utf8_lossy(&body).contains(DEMO));

    // By hand: BIND (CD 2) is refused with 91, as is a CONNECT to a closed port.
    let mut bind = vec![4, 2];
    bind.extend_from_slice(&port.to_be_bytes());
    bind.extend_from_slice(&[127, 0, 0, 1, 0]);
    assert_eq!(raw_socks4(net.socks, &bind).await, Some(91));
    let closed = closed_port();
    let mut connect = vec![4, 1];
    connect.extend_from_slice(&closed.to_be_bytes());
    connect.extend_from_slice(&[127, 0, 0, 1, b'c', 0]);
    assert_eq!(raw_socks4(net.socks, &connect).await, Some(91));
    assert!(curl(
        &["--socks4", &socks],
        &format!("http://127.0.0.1:{closed}/")
    )
    .await
    .is_err());
    // Neither SOCKS4 nor SOCKS5: closed without an answer.
    assert_eq!(raw_socks4(net.socks, b"GET / HTTP/1.0\r\n\r\n").await, None);

    // No log names the destinations asked for over SOCKS4/4a (default level `info`).
    net.stop();
    let forbidden = [
        address.trim_end_matches(".anon"),
        name.trim_end_matches(".dark"),
        "localhost",
    ];
    let logs = log_files(&dir);
    assert!(logs.len() >= 3 + 3 + 2, "every process's log: {logs:?}");
    let mut leaks = Vec::new();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap();
        for line in text.lines() {
            if forbidden.iter().any(|f| line.contains(f)) {
                leaks.push(format!("{}: {line}", log.display()));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "logs name destinations:\n{}",
        leaks.join("\n")
    );
}

/// Send `request` (a SOCKS request and the bytes behind it) in one write; return the
/// reply of `reply_len` bytes and everything the proxy sent after it until it closed
/// (bounded: 30 s).
async fn pipelined(
    socks: std::net::SocketAddr,
    request: &[u8],
    reply_len: usize,
) -> (Vec<u8>, Vec<u8>) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(socks).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut reply = vec![0u8; reply_len];
        s.read_exact(&mut reply).await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        (reply, rest)
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("the SOCKS port answered in time")
}

/// Streams opened optimistically so far (the client's counter, docs/protocol.md §6.5).
async fn optimistic(control: &ControlClient) -> u64 {
    control.status().await.unwrap().counters.optimistic_streams
}

/// A client that sends its request behind its SOCKS request, before the reply (as Tor
/// Browser does), has it travel right behind `BEGIN` (docs/protocol.md §6.5) and still
/// gets the reply code of what the exit answered; a client that waits for the reply
/// (curl) opens its stream as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_socks_requests_travel_with_begin() {
    let (dir, mut net, port) = start("socks-pipelined").await;
    let control = ControlClient::from_state_dir(&dir.join("client")).unwrap();
    let get = b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    let socks5 = |port: u16| {
        // Greeting (no authentication), CONNECT 127.0.0.1:port, then the GET.
        let mut r = vec![5, 1, 0];
        r.extend(socks5_request(1, "127.0.0.1", port));
        r.extend_from_slice(get);
        r
    };

    // curl waits for the reply: not optimistic.
    let before = optimistic(&control).await;
    let body = curl_retried(
        &["--socks5-hostname", &net.socks.to_string()],
        &format!("http://127.0.0.1:{port}/"),
    )
    .await;
    assert_eq!(body, PAGE);
    assert_eq!(optimistic(&control).await, before, "curl's stream waited");

    // SOCKS5, pipelined: method reply, success, then the page.
    let (reply, rest) = pipelined(net.socks, &socks5(port), 2 + 10).await;
    assert_eq!(reply[..4], [5, 0, 5, 0], "{reply:?}");
    let answer = String::from_utf8_lossy(&rest);
    assert!(answer.starts_with("HTTP/1."), "{answer}");
    assert!(rest.ends_with(PAGE), "{answer}");
    assert_eq!(optimistic(&control).await, before + 1, "went with BEGIN");

    // SOCKS4, pipelined.
    let mut request = vec![4, 1];
    request.extend_from_slice(&port.to_be_bytes());
    request.extend_from_slice(&[127, 0, 0, 1, 0]);
    request.extend_from_slice(get);
    let (reply, rest) = pipelined(net.socks, &request, 8).await;
    assert_eq!(reply[..2], [0, 90], "{reply:?}");
    assert!(rest.ends_with(PAGE), "{}", String::from_utf8_lossy(&rest));
    assert_eq!(optimistic(&control).await, before + 2, "went with BEGIN");

    // The exit's refusal still chooses the reply: a closed port is 0x05 (connection
    // refused) over SOCKS5 and 91 over SOCKS4, and nothing follows.
    let closed = closed_port();
    let (reply, rest) = pipelined(net.socks, &socks5(closed), 2 + 10).await;
    assert_eq!(reply[..4], [5, 0, 5, 5], "{reply:?}");
    assert!(rest.is_empty(), "{rest:?}");
    let mut request = vec![4, 1];
    request.extend_from_slice(&closed.to_be_bytes());
    request.extend_from_slice(&[127, 0, 0, 1, 0]);
    request.extend_from_slice(get);
    let (reply, _) = pipelined(net.socks, &request, 8).await;
    assert_eq!(reply[..2], [0, 91], "{reply:?}");

    // A hidden service, by `.anon` address (each read below also needs the service to end
    // the stream when its server closes after an HTTP/1.0 response): warmed by curl (the descriptor is published
    // and the default group's rendezvous circuit cached), then pipelined on that circuit;
    // then as a SOCKS5 user of its own, whose first stream is pipelined on a rendezvous
    // circuit built for it.
    let address = net.layout()["service"]["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = curl_retried(
        &["--socks5-hostname", &net.socks.to_string()],
        &format!("http://{address}/"),
    )
    .await;
    assert!(String::from_utf8_lossy(&body).contains(DEMO));
    let hidden = |port: u16, user: Option<&str>| {
        let mut r = match user {
            // Greeting (username/password), then the credentials.
            Some(u) => {
                let mut r = vec![5, 1, 2, 1, u8::try_from(u.len()).unwrap()];
                r.extend_from_slice(u.as_bytes());
                r.extend_from_slice(&[1, b'x']);
                r
            }
            None => vec![5, 1, 0],
        };
        r.extend(socks5_request(1, &address, port));
        r.extend_from_slice(get);
        r
    };
    let count = optimistic(&control).await;
    let (reply, rest) = pipelined(net.socks, &hidden(80, None), 2 + 10).await;
    assert_eq!(reply[..4], [5, 0, 5, 0], "{reply:?}");
    assert!(String::from_utf8_lossy(&rest).contains(DEMO));
    // The service refuses a port it does not serve: the exit-policy reply (0x02); the
    // GET that followed BEGIN did not cost the circuit, which serves the next stream.
    let (reply, rest) = pipelined(net.socks, &hidden(81, None), 2 + 10).await;
    assert_eq!(reply[..4], [5, 0, 5, 2], "{reply:?}");
    assert!(rest.is_empty(), "{rest:?}");
    let (reply, rest) = pipelined(net.socks, &hidden(80, None), 2 + 10).await;
    assert_eq!(reply[..4], [5, 0, 5, 0], "{reply:?}");
    assert!(String::from_utf8_lossy(&rest).contains(DEMO));
    let (reply, rest) = pipelined(net.socks, &hidden(80, Some("carol")), 2 + 2 + 10).await;
    assert_eq!(reply[..6], [5, 2, 1, 0, 5, 0], "{reply:?}");
    assert!(String::from_utf8_lossy(&rest).contains(DEMO));
    assert_eq!(
        optimistic(&control).await,
        count + 3,
        "the three streams the service accepted went with BEGIN"
    );
    net.stop();
}
