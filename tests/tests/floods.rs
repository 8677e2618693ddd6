//! End to end, real processes: floods (issue 8 item 3, DESIGN §6 "per-peer limits").
//!
//! One 4-relay testnet, three floods in turn, each for [`FLOOD_FOR`]:
//!
//! 1. **circuits**: a peer on another loopback address (127.0.0.2, so it is not the
//!    well-behaved client's IP) opens circuit legs to the client's primary guard as fast
//!    as it can, with valid `CREATE`s, and keeps every circuit it gets;
//! 2. **DHT requests**: a peer sends `FIND_NODE` requests to that relay as fast as it can;
//! 3. **silent SOCKS connections**: thousands of TCP connections to the client's SOCKS port
//!    that never send a byte.
//!
//! During each flood `curl --socks5-hostname` through the testnet must still fetch a page;
//! afterwards the flooded process still runs, its `stats.json` counter shows the limit
//! acting (`circuits_refused_peer_limit`, `dht.rate_limited`), and its peak RSS stayed
//! under [`RELAY_RSS_BOUND_KIB`] / [`CLIENT_RSS_BOUND_KIB`]. Measured figures are printed:
//! `cargo test -p anonnet-tests --test floods -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anonnet_crypto::NodeId;
use anonnet_net::Endpoint;
use anonnet_tests::{curl_socks, serve_files, temp_dir, Testnet};
use anonnet_wire::dht::{frame_request, DhtMessage};
use anonnet_wire::{Create, RelayDescriptor, SignedDescriptor};
use bytes::Bytes;

const PAGE: &[u8] = b"<html><body>served during a flood</body></html>\n";
/// How long each flood runs.
const FLOOD_FOR: Duration = Duration::from_secs(5);
/// Concurrent tasks of the circuit and DHT flooders.
const FLOOD_TASKS: usize = 64;
/// Silent SOCKS connections (fewer when the file-descriptor limit is lower).
const SILENT_CONNECTIONS: usize = 2000;
/// Peak RSS a flooded relay may reach (KiB). A debug-profile relay idles at about
/// 15–20 MiB; the circuit flood adds the per-peer limit's 256 circuits.
const RELAY_RSS_BOUND_KIB: u64 = 96 * 1024;
/// Peak RSS the client daemon may reach while holding the silent connections (KiB).
const CLIENT_RSS_BOUND_KIB: u64 = 96 * 1024;
/// The per-client-IP circuit limit the relays run with (the default).
const PER_CLIENT_IP: u64 = 256;

fn vm_rss_kib(pid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// Sample `pid`'s RSS every 100 ms until `stop`; returns the peak (KiB).
fn watch_rss(pid: u64, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(vm_rss_kib(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
        peak.max(vm_rss_kib(pid))
    })
}

/// The soft limit on open files of `pid` (`/proc/<pid>/limits`).
fn open_files_limit(pid: &str) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

struct Target {
    name: String,
    pid: u64,
    addr: SocketAddr,
    stats: PathBuf,
    desc: RelayDescriptor,
}

/// The client's primary guard, as named in `testnet.json` and `client/guards.json`.
fn primary_guard(dir: &Path) -> Target {
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("testnet.json")).unwrap()).unwrap();
    let guards: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("client/guards.json")).unwrap()).unwrap();
    let guard = guards["guards"][0]["node_id"].as_str().unwrap().to_owned();
    let relay = layout["relays"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node_id"].as_str() == Some(guard.as_str()))
        .expect("the primary guard is a testnet relay");
    let desc_file = PathBuf::from(relay["descriptor"].as_str().unwrap());
    let signed =
        SignedDescriptor::from_base64(std::fs::read_to_string(&desc_file).unwrap().trim()).unwrap();
    let desc = RelayDescriptor::decode_body(&signed.body).unwrap();
    assert_eq!(NodeId::from_identity(&desc.identity).to_hex(), guard);
    Target {
        name: relay["name"].as_str().unwrap().to_owned(),
        pid: relay["pid"].as_u64().unwrap(),
        addr: relay["addr"].as_str().unwrap().parse().unwrap(),
        stats: desc_file.parent().unwrap().join("stats.json"),
        desc,
    }
}

fn read_stats(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_default()).unwrap_or_default()
}

/// The relay's `stats.json` once `counter` (a JSON pointer such as `/dht/rate_limited`)
/// reaches `at_least`: the relay rewrites the file every second, so this waits for the
/// write that follows the flood (bounded: 15 s, then the last file read is returned and
/// the caller's assertion says what it held).
async fn stats_once(path: &Path, counter: &str, at_least: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats = read_stats(path);
        let value = stats.pointer(counter).and_then(|v| v.as_u64()).unwrap_or(0);
        if value >= at_least || Instant::now() >= deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fetch the page through SOCKS in a blocking thread; true when the body is right.
async fn fetch(socks: SocketAddr, url: String, out: PathBuf) -> Result<Duration, String> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let _ = std::fs::remove_file(&out);
        let (code, err) = curl_socks(socks, &url, &out);
        if code == 0 && std::fs::read(&out).unwrap_or_default() == PAGE {
            Ok(started.elapsed())
        } else {
            Err(format!("curl exit {code}: {}", err.trim()))
        }
    })
    .await
    .unwrap()
}

/// A client endpoint on 127.0.0.2 linked to `target` (a flooder distinct by IP from the
/// testnet's client).
async fn flood_link(target: &Target) -> anonnet_net::Link {
    let endpoint = Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
    let id = NodeId::from_identity(&target.desc.identity);
    tokio::time::timeout(Duration::from_secs(5), endpoint.connect(target.addr, id))
        .await
        .expect("the flooder's link came up in 5 s")
        .unwrap()
}

/// Open legs with valid `CREATE`s as fast as possible until `until`; keep every circuit
/// created. Returns (created, refused) counts.
async fn flood_circuits(target: &Target, until: Instant) -> CircuitFlood {
    let link = flood_link(target).await;
    let create = Create {
        cell_len: 1024,
        node_id: *NodeId::from_identity(&target.desc.identity).as_bytes(),
        onion_key: target.desc.onion_key,
        client_pk: [0; 32],
    };
    let created = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..FLOOD_TASKS {
        let (link, created, refused) = (link.clone(), created.clone(), refused.clone());
        let mut create = create.clone();
        tasks.spawn(async move {
            let mut kept = Vec::new();
            while Instant::now() < until {
                create.client_pk = anonnet_crypto::random_bytes().unwrap();
                let cell = create.encode().unwrap();
                let attempt = tokio::time::timeout(Duration::from_secs(2), async {
                    let (mut send, mut recv) = link.open_bi().await.ok()?;
                    send.write_all(&cell).await.ok()?;
                    let mut answer = vec![0u8; 1024];
                    recv.read_exact(&mut answer).await.ok()?;
                    Some((answer[0], send, recv))
                })
                .await;
                match attempt {
                    // CREATED (0x02): keep the circuit open.
                    Ok(Some((0x02, send, recv))) => {
                        created.fetch_add(1, Ordering::Relaxed);
                        kept.push((send, recv));
                    }
                    Ok(Some(_)) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            // Which kept circuits the relay has closed meanwhile (a DESTROY or a reset
            // arrived): any read that does not block.
            let mut closed = 0u64;
            for (_send, mut recv) in kept {
                let mut buf = [0u8; 1024];
                if tokio::time::timeout(Duration::from_millis(5), recv.read(&mut buf))
                    .await
                    .is_ok()
                {
                    closed += 1;
                }
            }
            closed
        });
    }
    let mut closed = 0;
    while let Some(done) = tasks.join_next().await {
        closed += done.unwrap_or(0);
    }
    link.close();
    CircuitFlood {
        created: created.load(Ordering::Relaxed),
        closed_by_relay: closed,
        refused: refused.load(Ordering::Relaxed),
    }
}

/// What [`flood_circuits`] got.
struct CircuitFlood {
    /// `CREATED` answers, each circuit then kept.
    created: u64,
    /// Of those, closed by the relay before the flood ended.
    closed_by_relay: u64,
    /// `DESTROY` answers to a `CREATE`.
    refused: u64,
}

/// Send `FIND_NODE` requests as fast as possible until `until`. Returns (answered,
/// refused) counts.
async fn flood_dht(target: &Target, until: Instant) -> (u64, u64) {
    let link = flood_link(target).await;
    let answered = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..FLOOD_TASKS {
        let (link, answered, refused) = (link.clone(), answered.clone(), refused.clone());
        tasks.spawn(async move {
            let mut txid = 0u64;
            while Instant::now() < until {
                txid += 1;
                let msg = DhtMessage::FindNode {
                    txid,
                    target: anonnet_crypto::random_bytes().unwrap(),
                };
                let request = frame_request(&msg).unwrap();
                let attempt = tokio::time::timeout(Duration::from_secs(4), async {
                    let (mut send, mut recv) = link.open_bi().await.ok()?;
                    send.write_all(&request).await.ok()?;
                    let _ = send.finish();
                    let mut len = [0u8; 4];
                    Some(recv.read_exact(&mut len).await.is_ok())
                })
                .await;
                match attempt {
                    Ok(Some(true)) => answered.fetch_add(1, Ordering::Relaxed),
                    Ok(Some(false)) => refused.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        0
                    }
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    link.close();
    (
        answered.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    )
}

/// Run `flood` while fetching the page once through SOCKS a second after it starts; the
/// fetch must succeed. Returns the flood's result and the fetch time.
async fn during<F, T>(net: &Testnet, url: &str, out: &Path, flood: F) -> (T, Duration)
where
    F: std::future::Future<Output = T>,
{
    let socks = net.socks;
    let (url, out) = (url.to_owned(), out.to_path_buf());
    let fetch = async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        fetch(socks, url, out).await
    };
    let (result, fetched) = tokio::join!(flood, fetch);
    let took = fetched.unwrap_or_else(|e| panic!("curl failed during the flood: {e}"));
    (result, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_client_keep_serving_under_circuit_dht_and_silent_socks_floods() {
    let started = Instant::now();
    let dir = temp_dir("floods");
    let net = Testnet::start(4, &dir);
    let port = serve_files(vec![("/page".into(), Bytes::from_static(PAGE))]).await;
    let url = format!("http://127.0.0.1:{port}/page");
    let out = dir.join("page.out");
    // Warm up: the guard set exists once a circuit was built.
    fetch(net.socks, url.clone(), out.clone())
        .await
        .expect("curl works before any flood");
    let target = primary_guard(&dir);
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("testnet.json")).unwrap()).unwrap();
    let client_pid = layout["client"]["pid"].as_u64().unwrap();
    let idle_relay = vm_rss_kib(target.pid);
    let idle_client = vm_rss_kib(client_pid);
    println!(
        "flooding {} (the client's primary guard, pid {}); idle RSS relay {} KiB, client {} KiB",
        target.name, target.pid, idle_relay, idle_client
    );

    // 1. Circuits.
    let phase = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rss = watch_rss(target.pid, stop.clone());
    let (flood, took) = during(
        &net,
        &url,
        &out,
        flood_circuits(&target, Instant::now() + FLOOD_FOR),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let peak = rss.join().unwrap();
    let CircuitFlood {
        created,
        closed_by_relay,
        refused,
    } = flood;
    let stats = stats_once(&target.stats, "/circuits_refused_peer_limit", refused).await;
    let held = created - closed_by_relay;
    println!(
        "circuit flood: {created} created ({closed_by_relay} of them closed by the relay, \
         {held} held at the end), {refused} refused in {FLOOD_FOR:?}; curl took {took:?}; \
         relay peak RSS {peak} KiB; stats circuits_refused_peer_limit {} ({:?})",
        stats["circuits_refused_peer_limit"],
        phase.elapsed()
    );
    assert!(alive(target.pid), "the flooded relay still runs");
    // The per-IP limit caps what the flooder holds at once. (Circuits the relay closed,
    // e.g. after a CREATED the flooder timed out on, free their slots for new ones.)
    assert!(
        (PER_CLIENT_IP / 2..=PER_CLIENT_IP).contains(&held),
        "the per-IP limit caps the flooder: {held} held"
    );
    assert!(refused > 0);
    assert!(stats["circuits_refused_peer_limit"].as_u64().unwrap_or(0) >= refused);
    assert!(
        peak < RELAY_RSS_BOUND_KIB,
        "relay RSS {peak} KiB ≥ {RELAY_RSS_BOUND_KIB}"
    );

    // 2. DHT requests.
    let phase = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rss = watch_rss(target.pid, stop.clone());
    let ((answered, refused), took) = during(
        &net,
        &url,
        &out,
        flood_dht(&target, Instant::now() + FLOOD_FOR),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let peak = rss.join().unwrap();
    let stats = stats_once(&target.stats, "/dht/rate_limited", refused).await;
    println!(
        "DHT flood: {answered} answered, {refused} refused in {FLOOD_FOR:?}; curl took {took:?}; \
         relay peak RSS {peak} KiB; stats dht.rate_limited {} ({:?})",
        stats["dht"]["rate_limited"],
        phase.elapsed()
    );
    assert!(alive(target.pid), "the flooded relay still runs");
    assert!(refused > 0 && answered > 0);
    // 20/s with a burst of 40 for one IP: at most 40 + 20 per second of flood (+1 s slack).
    assert!(
        answered <= 40 + 20 * (FLOOD_FOR.as_secs() + 1),
        "{answered}"
    );
    assert!(stats["dht"]["rate_limited"].as_u64().unwrap_or(0) >= refused);
    assert!(
        peak < RELAY_RSS_BOUND_KIB,
        "relay RSS {peak} KiB ≥ {RELAY_RSS_BOUND_KIB}"
    );

    // 3. Silent SOCKS connections.
    let phase = Instant::now();
    let own = open_files_limit("self");
    let client_fds = open_files_limit(&client_pid.to_string());
    let n = SILENT_CONNECTIONS
        .min(own.saturating_sub(256))
        .min(client_fds.saturating_sub(256));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rss = watch_rss(client_pid, stop.clone());
    let socks = net.socks;
    let ((opened, _held), took) = during(&net, &url, &out, async move {
        let mut held = Vec::with_capacity(n);
        // Opening them may take longer than the flood on a loaded machine: allow 20 s,
        // then hold them all for the flood's duration.
        let opening = Instant::now() + Duration::from_secs(20);
        for _ in 0..n {
            if Instant::now() >= opening {
                break;
            }
            // 5 s: a SYN the kernel dropped is retransmitted after 1 s.
            match tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(socks),
            )
            .await
            {
                Ok(Ok(tcp)) => held.push(tcp),
                _ => break,
            }
        }
        let opened = held.len();
        tokio::time::sleep(FLOOD_FOR).await;
        (opened, held)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let peak = rss.join().unwrap();
    println!(
        "silent SOCKS flood: {opened} of {n} connections held for {FLOOD_FOR:?}; curl took \
         {took:?}; client peak RSS {peak} KiB ({:?})",
        phase.elapsed()
    );
    assert!(alive(client_pid), "the client still runs");
    assert_eq!(opened, n, "every silent connection was accepted");
    assert!(
        peak < CLIENT_RSS_BOUND_KIB,
        "client RSS {peak} KiB ≥ {CLIENT_RSS_BOUND_KIB}"
    );
    println!("floods test took {:?}", started.elapsed());
}
