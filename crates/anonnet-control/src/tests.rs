//! The server and client together over a real loopback socket, with a small handler.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

use crate::server::SERVICES_LATER;
use crate::*;

/// A handler that records what it was asked.
struct TestHandler {
    enabled: AtomicBool,
    new_identities: AtomicU32,
    events: broadcast::Sender<Event>,
}

impl TestHandler {
    fn new(event_capacity: usize) -> Arc<TestHandler> {
        Arc::new(TestHandler {
            enabled: AtomicBool::new(true),
            new_identities: AtomicU32::new(0),
            events: broadcast::channel(event_capacity).0,
        })
    }
}

impl ControlHandler for TestHandler {
    fn status(&self) -> Status {
        Status {
            enabled: self.enabled.load(Ordering::SeqCst),
            bootstrap: Bootstrap {
                percent: 100,
                phase: "ready".into(),
            },
            relays: 5,
            circuits: vec![CircuitInfo {
                id: 1,
                path: vec!["11".repeat(32), "22".repeat(32), "33".repeat(32)],
                addresses: vec![
                    "10.1.0.1:4000".into(),
                    "10.2.0.1:4000".into(),
                    "10.3.0.1:4000".into(),
                ],
                age_secs: 1.0,
                build_ms: 2.0,
                streams: 0,
                state: "clean".into(),
                handshakes: vec!["x25519+mlkem768".into(); 3],
                protocol: 2,
            }],
            streams: 0,
            guards: vec!["ab".repeat(32)],
            vanguards: Vec::new(),
            avoided_relays: Vec::new(),
            counters: Counters::default(),
            consensus: None,
            hs_pow: Vec::new(),
        }
    }

    fn set_proxy(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::SeqCst);
    }

    fn new_identity(&self) {
        self.new_identities.fetch_add(1, Ordering::SeqCst);
    }

    fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// A server on 127.0.0.1:0 serving `handler`; returns its address and cookie.
async fn start(handler: Arc<TestHandler>) -> (SocketAddr, Cookie) {
    let cookie = Cookie::generate().unwrap();
    let server = ControlServer::bind("127.0.0.1:0".parse().unwrap(), cookie.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(handler));
    (addr, cookie)
}

/// Send one raw HTTP/1.1 request and return (status code, body).
async fn raw(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

async fn next(events: &mut EventStream) -> Event {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "anonnet-control-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn request_without_or_with_wrong_cookie_is_refused_and_changes_nothing() {
    let handler = TestHandler::new(16);
    let (addr, cookie) = start(handler.clone()).await;

    let (code, body) = raw(addr, "POST /v1/proxy HTTP/1.1", r#"{"enabled":false}"#).await;
    assert_eq!(code, 401, "{body}");
    let err: ErrorBody = serde_json::from_str(&body).unwrap();
    assert!(err.error.contains("cookie"), "{body}");
    assert_eq!(err.kind, "not_allowed", "{body}");

    let (code, _) = raw(
        addr,
        "POST /v1/new-identity HTTP/1.1\r\nAuthorization: Basic dXNlcjpwYXNz",
        "",
    )
    .await;
    assert_eq!(code, 401);
    // Unknown paths are refused the same way: nothing is revealed without the cookie.
    let (code, _) = raw(addr, "GET /nope HTTP/1.1", "").await;
    assert_eq!(code, 401);

    let wrong = ControlClient::connect(addr, Cookie::generate().unwrap());
    let e = wrong.set_proxy(false).await.unwrap_err();
    assert!(matches!(e, ControlError::CookieRejected { .. }), "{e}");
    assert!(e.to_string().contains("cookie rejected"), "{e}");
    assert!(!e.daemon_down());

    assert!(handler.enabled.load(Ordering::SeqCst));
    assert_eq!(handler.new_identities.load(Ordering::SeqCst), 0);

    // The right cookie, sent by hand, works.
    let (code, body) = raw(
        addr,
        &format!(
            "POST /v1/proxy HTTP/1.1\r\nAuthorization: Bearer {}",
            cookie.to_hex().as_str()
        ),
        r#"{"enabled":false}"#,
    )
    .await;
    assert_eq!((code, body.trim()), (200, r#"{"enabled":false}"#));
    assert!(!handler.enabled.load(Ordering::SeqCst));
}

#[tokio::test]
async fn client_calls_every_endpoint() {
    let handler = TestHandler::new(16);
    let (addr, cookie) = start(handler.clone()).await;
    let client = ControlClient::connect(addr, cookie);

    let status = client.status().await.unwrap();
    assert_eq!(status, handler.status());
    assert_eq!(client.circuits().await.unwrap(), handler.status().circuits);

    assert!(!client.set_proxy(false).await.unwrap());
    assert!(!handler.enabled.load(Ordering::SeqCst));
    assert!(!client.status().await.unwrap().enabled);
    assert!(client.set_proxy(true).await.unwrap());
    assert!(handler.enabled.load(Ordering::SeqCst));

    client.new_identity().await.unwrap();
    client.new_identity().await.unwrap();
    assert_eq!(handler.new_identities.load(Ordering::SeqCst), 2);

    assert!(client.services().await.unwrap().is_empty());
    let e = client
        .publish(&PublishRequest {
            target: "127.0.0.1:8080".into(),
            port: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::NotImplemented(m) if m == SERVICES_LATER),
        "{e}"
    );
    let e = client.unpublish("x.anon").await.unwrap_err();
    assert!(matches!(e, ControlError::NotImplemented(_)), "{e}");
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let handler = TestHandler::new(16);
    let (addr, cookie) = start(handler.clone()).await;
    let auth = format!("Authorization: {}", cookie.bearer().as_str());

    let (code, body) = raw(addr, &format!("POST /v1/proxy HTTP/1.1\r\n{auth}"), "{}").await;
    assert_eq!(code, 400, "{body}");
    assert!(serde_json::from_str::<ErrorBody>(&body).is_ok(), "{body}");
    let (code, _) = raw(addr, &format!("GET /v1/proxy HTTP/1.1\r\n{auth}"), "").await;
    assert_eq!(code, 405);
    let (code, _) = raw(addr, &format!("GET /v1/nope HTTP/1.1\r\n{auth}"), "").await;
    assert_eq!(code, 404);
    let (code, _) = raw(addr, &format!("GET /status HTTP/1.1\r\n{auth}"), "").await;
    assert_eq!(code, 404);
    let big = "x".repeat(server::MAX_BODY + 1);
    let (code, _) = raw(addr, &format!("POST /v1/proxy HTTP/1.1\r\n{auth}"), &big).await;
    assert_eq!(code, 400);
    let (code, body) = raw(
        addr,
        &format!("POST /v1/services/publish HTTP/1.1\r\n{auth}"),
        r#"{"target":"127.0.0.1:8080","port":80}"#,
    )
    .await;
    assert_eq!(code, 501);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"error": SERVICES_LATER, "kind": "not_implemented"})
    );
    assert!(handler.enabled.load(Ordering::SeqCst));
}

#[tokio::test]
async fn bind_refuses_a_non_loopback_address() {
    let e = ControlServer::bind("0.0.0.0:0".parse().unwrap(), Cookie::generate().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::NotLoopback { .. }), "{e}");
    assert!(
        ControlServer::bind("[::1]:0".parse().unwrap(), Cookie::generate().unwrap())
            .await
            .map(|s| s.local_addr().ip().is_loopback())
            .unwrap_or(true)
    );
}

#[tokio::test]
async fn event_stream_delivers_events_in_order() {
    let handler = TestHandler::new(16);
    let (addr, cookie) = start(handler.clone()).await;
    let client = ControlClient::connect(addr, cookie);
    let mut events = client.events().await.unwrap();
    wait_for("the stream subscribed", || {
        handler.events.receiver_count() == 1
    })
    .await;

    let sent = vec![
        Event::Bootstrap(Bootstrap {
            percent: 100,
            phase: "ready".into(),
        }),
        Event::ProxyEnabled { enabled: false },
        Event::NewIdentity,
        Event::CircuitClosed { id: 4 },
    ];
    for e in &sent {
        handler.events.send(e.clone()).unwrap();
    }
    for e in &sent {
        let got = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.as_ref(), Some(e));
    }
}

// Single-threaded on purpose: the burst is sent before the server's task can run, so the
// reader lags by a known amount.
#[tokio::test(flavor = "current_thread")]
async fn slow_event_reader_gets_a_lagged_line_and_the_daemon_never_waits() {
    let handler = TestHandler::new(4);
    let (addr, cookie) = start(handler.clone()).await;
    let client = ControlClient::connect(addr, cookie);
    let mut events = client.events().await.unwrap();
    wait_for("the stream subscribed", || {
        handler.events.receiver_count() == 1
    })
    .await;

    for id in 0..100 {
        // Never blocks, whatever the reader does.
        handler.events.send(Event::CircuitClosed { id }).unwrap();
    }
    assert_eq!(next(&mut events).await, Event::Lagged { missed: 96 });
    for id in 96..100 {
        assert_eq!(next(&mut events).await, Event::CircuitClosed { id });
    }
}

#[tokio::test]
async fn event_stream_ends_when_the_reader_disconnects() {
    let handler = TestHandler::new(16);
    let (addr, cookie) = start(handler.clone()).await;
    let client = ControlClient::connect(addr, cookie);
    let events = client.events().await.unwrap();
    wait_for("the stream subscribed", || {
        handler.events.receiver_count() == 1
    })
    .await;
    drop(events);
    // No event is sent: the server notices the closed connection by itself.
    wait_for("the subscription ended", || {
        handler.events.receiver_count() == 0
    })
    .await;
}

#[tokio::test]
async fn from_state_dir_tells_not_running_refused_and_rejected_apart() {
    let dir = test_dir("state");
    let e = ControlClient::from_state_dir(&dir).unwrap_err();
    assert!(e.daemon_down());
    assert_eq!(
        e.to_string(),
        format!(
            "daemon not running (no ports.json at {})",
            dir.join(PORTS_FILE).display()
        )
    );

    std::fs::write(dir.join(PORTS_FILE), r#"{"socks":"127.0.0.1:9050"}"#).unwrap();
    let e = ControlClient::from_state_dir(&dir).unwrap_err();
    assert!(matches!(e, ControlError::NoControlPort { .. }), "{e}");

    // A stale port file: nothing listens there any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    std::fs::write(
        dir.join(PORTS_FILE),
        format!(r#"{{"socks":"127.0.0.1:9050","control":"{closed_addr}"}}"#),
    )
    .unwrap();
    let e = ControlClient::from_state_dir(&dir).unwrap_err();
    assert!(
        e.to_string().contains(COOKIE_FILE),
        "no cookie file yet: {e}"
    );
    Cookie::create_in(&dir).unwrap();
    let e = ControlClient::from_state_dir(&dir)
        .unwrap()
        .status()
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::ConnectionRefused { .. }), "{e}");
    assert!(e.daemon_down());
    assert!(e.to_string().contains("connection refused at"), "{e}");

    // A running server, but the cookie file is not its cookie.
    let handler = TestHandler::new(16);
    let (addr, cookie) = start(handler).await;
    std::fs::write(
        dir.join(PORTS_FILE),
        format!(r#"{{"socks":"127.0.0.1:9050","control":"{addr}"}}"#),
    )
    .unwrap();
    let e = ControlClient::from_state_dir(&dir)
        .unwrap()
        .status()
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::CookieRejected { .. }), "{e}");
    cookie.write(&dir.join(COOKIE_FILE)).unwrap();
    let status = ControlClient::from_state_dir(&dir)
        .unwrap()
        .status()
        .await
        .unwrap();
    assert_eq!(status.relays, 5);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn silent_and_unauthenticated_connections_cannot_starve_the_cli() {
    let (addr, cookie) = start(TestHandler::new(16)).await;
    // A 401 closes the connection even when the client asked to keep it alive.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /v1/status HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("the server closed the connection after the 401")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    // Every slot held by a connection that sends nothing: the CLI still gets in once the
    // header timeout frees them.
    let mut silent = Vec::new();
    for _ in 0..crate::server::MAX_CONNECTIONS + 8 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let started = std::time::Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        ControlClient::connect(addr, cookie).status(),
    )
    .await
    .expect("the CLI got an answer despite the silent connections")
    .unwrap();
    assert!(status.enabled);
    assert!(started.elapsed() < crate::server::HEADER_TIMEOUT * 3);
}
