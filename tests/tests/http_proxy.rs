//! End to end, real processes: the client's HTTP proxy (`anonnet testnet --http`) in front
//! of 3 relay processes, driven by the system curl — absolute-form `GET http://…`, CONNECT
//! tunnels (`curl -p`), refusals as HTTP statuses, and the PAC files for split routing
//! (evaluated with pacparser's `pactester`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anonnet_tests::{cli_json, curl_http, serve_files, temp_dir, TestDir, Testnet};
use bytes::Bytes;

const PAGE: &[u8] = b"<html><body>hello through the anonnet HTTP proxy</body></html>\n";
/// What the testnet's hidden service serves.
const DEMO: &str = "Hello from the anonnet testnet";

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Send `request` as is and read the whole answer (the proxy closes after a refusal).
fn raw_request(proxy: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A server on loopback that closes the first connection for each request line (method
/// and path) after reading its head, without answering, and answers `200 ok` to the next
/// ones. Returns its port and how many connections each request line got.
fn closes_first_connection() -> (
    u16,
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let counts = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(16) {
            let Ok(mut conn) = conn else { break };
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                match conn.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let text = String::from_utf8_lossy(&head);
            let line: String = text
                .lines()
                .next()
                .unwrap_or("")
                .split(' ')
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            let n = {
                let mut seen = seen.lock().unwrap();
                let n = seen.entry(line).or_insert(0);
                *n += 1;
                *n
            };
            if n > 1 {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        }
    });
    (port, counts)
}

/// curl through the HTTP proxy with extra `args` (`-I`, `-d x`): the status (0 if none).
fn curl_with(proxy: std::net::SocketAddr, args: &[&str], url: &str) -> u16 {
    let o = anonnet_tests::output_of(
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "60",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-x",
            ])
            .arg(format!("http://{proxy}"))
            .args(args)
            .arg(url),
    )
    .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// A 3-relay testnet in a fresh directory, which must outlive it.
async fn start_testnet(name: &str) -> (TestDir, Testnet) {
    let dir = temp_dir(name);
    let path = dir.to_path_buf();
    let net = tokio::task::spawn_blocking(move || Testnet::start(3, &path))
        .await
        .unwrap();
    (dir, net)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_a_page_through_the_http_proxy_by_get_and_by_connect() {
    let port = serve_files(vec![("/".into(), Bytes::from_static(PAGE))]).await;
    let (_dir, net) = start_testnet("http-ok").await;
    let http = net.http;
    assert!(
        net.stdout
            .iter()
            .any(|l| l.starts_with(&format!("curl -x http://{http} http://localhost:"))),
        "testnet prints a ready-to-paste curl -x command: {:?}",
        net.stdout
    );
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(net.dir.join("client/ports.json")).unwrap()).unwrap();
    assert_eq!(ports["http"], http.to_string(), "{ports}");
    assert_eq!(ports["socks"], net.socks.to_string(), "{ports}");

    let dir = net.dir.clone();
    let layout = net.layout();
    let client_config = net.client_config();
    tokio::task::spawn_blocking(move || {
        // Absolute-form GET, by IP.
        let out = dir.join("get.html");
        let r = curl_http(http, &format!("http://127.0.0.1:{port}/"), false, &out);
        assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
        assert_eq!(std::fs::read(&out).unwrap(), PAGE);

        // Absolute-form GET by name: the exit resolves `localhost`, not this machine.
        let out = dir.join("get-name.html");
        let r = curl_http(http, &format!("http://localhost:{port}/"), false, &out);
        assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
        assert_eq!(std::fs::read(&out).unwrap(), PAGE);

        // A missing path is the destination's 404, relayed.
        let out = dir.join("missing.html");
        let r = curl_http(http, &format!("http://127.0.0.1:{port}/nope"), false, &out);
        assert_eq!((r.exit, r.status), (0, 404), "{r:?}");

        // CONNECT tunnel (curl --proxytunnel), then plain HTTP inside it.
        let out = dir.join("tunnel.html");
        let r = curl_http(http, &format!("http://127.0.0.1:{port}/"), true, &out);
        assert_eq!((r.exit, r.connect_status, r.status), (0, 200, 200), "{r:?}");
        assert_eq!(std::fs::read(&out).unwrap(), PAGE);

        // The testnet's hidden service, by `.anon` address. The first GET builds the
        // rendezvous circuit (waiting for the descriptor to be published); the next go
        // optimistically on it, the request right behind `BEGIN` (docs/protocol.md §6.5,
        // §13.5). A port the service does not serve is the service's refusal, 403, and
        // the circuit serves the GET after it.
        let address = layout["service"]["address"].as_str().unwrap().to_owned();
        let url = format!("http://{address}/");
        let out = dir.join("hidden.html");
        let started = std::time::Instant::now();
        let mut r = curl_http(http, &url, false, &out);
        while r.status != 200 && started.elapsed() < std::time::Duration::from_secs(60) {
            std::thread::sleep(std::time::Duration::from_millis(500));
            r = curl_http(http, &url, false, &out);
        }
        assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
        let optimistic = || {
            cli_json(&["status"], &client_config)["counters"]["optimistic_streams"]
                .as_u64()
                .unwrap()
        };
        let before = optimistic();
        let r = curl_http(http, &url, false, &out);
        assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
        assert!(String::from_utf8_lossy(&std::fs::read(&out).unwrap()).contains(DEMO));
        let r = curl_http(http, &format!("http://{address}:81/"), false, &out);
        assert_eq!(r.status, 403, "{r:?}");
        let r = curl_http(http, &url, false, &out);
        assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
        assert!(String::from_utf8_lossy(&std::fs::read(&out).unwrap()).contains(DEMO));
        assert_eq!(
            optimistic(),
            before + 3,
            "the warm GETs to the hidden service went with BEGIN"
        );

        // A destination that closes the connection without answering: an optimistic GET or
        // HEAD is sent once more (and answered), a POST is not (502).
        let (flaky, seen) = closes_first_connection();
        let url = format!("http://127.0.0.1:{flaky}/x");
        assert_eq!(curl_with(http, &[], &url), 200);
        assert_eq!(curl_with(http, &["-I"], &url), 200);
        assert_eq!(curl_with(http, &["-d", "x"], &url), 502);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.get("GET /x"), Some(&2), "{seen:?}");
        assert_eq!(seen.get("HEAD /x"), Some(&2), "{seen:?}");
        assert_eq!(seen.get("POST /x"), Some(&1), "{seen:?}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_answers_403_for_exit_policy_and_502_for_closed_port() {
    let (_dir, net) = start_testnet("http-refusals").await;
    let http = net.http;
    let dir = net.dir.clone();
    tokio::task::spawn_blocking(move || {
        let out = dir.join("refused.txt");
        // 10.0.0.0/8 is outside the testnet exits' policy (loopback only among private
        // ranges): 403, with the reason in the body.
        let r = curl_http(http, "http://10.0.0.1/", false, &out);
        assert_eq!(r.status, 403, "{r:?}");
        let body = std::fs::read_to_string(&out).unwrap();
        assert!(body.contains("policy"), "{body}");

        // The same through CONNECT: curl reports the proxy's 403 and fails.
        let r = curl_http(http, "http://10.0.0.1/", true, &out);
        assert_eq!(r.connect_status, 403, "{r:?}");
        assert_ne!(r.exit, 0, "{r:?}");
        assert!(r.stderr.contains("403"), "{r:?}");

        // A closed port: 502 naming the refusal, for GET and for CONNECT.
        let port = closed_port();
        let r = curl_http(http, &format!("http://127.0.0.1:{port}/"), false, &out);
        assert_eq!(r.status, 502, "{r:?}");
        let body = std::fs::read_to_string(&out).unwrap();
        assert!(body.contains("refused"), "{body}");
        let r = curl_http(http, &format!("http://127.0.0.1:{port}/"), true, &out);
        assert_eq!(r.connect_status, 502, "{r:?}");
        assert!(r.stderr.contains("502"), "{r:?}");

        // https:// in absolute form (those go through CONNECT) and a request that is not
        // for a proxy at all: 400 with the reason.
        for request in [
            "GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        ] {
            let answer = raw_request(http, request);
            assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}: {answer}");
        }

        // Split routing (issue 17 item 3): the proxy serves two PAC files, evaluated here
        // by pacparser's `pactester` as a browser would.
        let pac = dir.join("hidden.pac");
        let answer = raw_request(
            http,
            "GET /hidden.pac HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains("application/x-ns-proxy-autoconfig"),
            "{answer}"
        );
        let status = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o"])
            .arg(&pac)
            .arg(format!("http://{http}/hidden.pac"))
            .status()
            .unwrap();
        assert!(status.success());
        let all = dir.join("proxy.pac");
        let status = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o"])
            .arg(&all)
            .arg(format!("http://{http}/proxy.pac"))
            .status()
            .unwrap();
        assert!(status.success());
        let evaluate = |file: &std::path::Path, url: &str| -> String {
            let host = url.split('/').nth(2).unwrap();
            let o = anonnet_tests::output_of(
                std::process::Command::new("pactester")
                    .arg("-p")
                    .arg(file)
                    .args(["-u", url, "-h", host]),
            )
            .expect("pactester is installed (.ci/run installs libpacparser-dev)");
            assert!(o.status.success(), "{o:?}");
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        };
        let via_proxy = format!("PROXY {http}");
        let anon = "http://v4dkhyzjc4koj42wygojwfondfi6y3tgmkvhppqhkr7sre4dgqoupmqb.anon/";
        assert_eq!(evaluate(&pac, anon), via_proxy);
        assert_eq!(evaluate(&pac, "http://DEMO.dark./"), via_proxy);
        assert_eq!(evaluate(&pac, "http://example.com/"), "DIRECT");
        assert_eq!(evaluate(&pac, "http://anon.example.com/"), "DIRECT");
        assert_eq!(evaluate(&all, "http://example.com/"), via_proxy);
        assert_eq!(evaluate(&all, anon), via_proxy);
    })
    .await
    .unwrap();
}
