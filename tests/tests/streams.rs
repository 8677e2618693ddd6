//! End to end, real processes: rounds of many concurrent SOCKS streams on one client
//! (DESIGN §5 "1,000 concurrent streams all succeed", docs/performance.md).
//!
//! Each round opens [`STREAMS`] SOCKS5 connections at once, each an HTTP/1.0 `GET` of a
//! small page through a 3-hop circuit, more than one circuit's 512 streams, so the client
//! spreads them over several circuits, and later rounds reuse those circuits. Every stream
//! of every round must get the whole page.
//!
//! It guards against a lost circuit window: the exit spent one cell of its circuit package
//! window on each stream's EOF, so after about 1,000 streams a circuit sent no more `DATA`
//! and a later round hung with hundreds of streams connected but never answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anonnet_tests::{serve_files, temp_dir, Testnet};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Streams opened at once per round (more than `MAX_STREAMS_PER_CIRCUIT` = 512).
const STREAMS: usize = 1000;
/// Rounds on the same client.
const ROUNDS: usize = 2;
/// Longest a round may take; a stream not done by then counts as failed.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

const PAGE: &[u8] = b"<html><body>one of many concurrent streams</body></html>\n";

/// One SOCKS5 CONNECT to `127.0.0.1:port`, then `GET /` over HTTP/1.0; true when the whole
/// page came back.
async fn socks_get(socks: SocketAddr, port: u16) -> std::io::Result<bool> {
    let mut s = tokio::net::TcpStream::connect(socks).await?;
    s.set_nodelay(true)?;
    let mut req = vec![5u8, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1];
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).await?;
    if reply[..2] != [5, 0] || reply[3] != 0 {
        return Ok(false);
    }
    s.write_all(format!("GET / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .await?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    Ok(body.starts_with(b"HTTP/1.") && body.ends_with(PAGE))
}

/// Run one round; returns how many streams failed or were not done within
/// [`ROUND_TIMEOUT`], and the time the round took.
async fn round(socks: SocketAddr, port: u16) -> (usize, Duration) {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + ROUND_TIMEOUT;
    let tasks: Vec<_> = (0..STREAMS)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout_at(deadline, socks_get(socks, port))
                    .await
                    .is_ok_and(|r| r.unwrap_or(false))
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        if !t.await.unwrap_or(false) {
            failed += 1;
        }
    }
    (failed, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_of_a_thousand_concurrent_socks_streams_all_complete() {
    let dir = temp_dir("streams");
    let port = serve_files(vec![("/".into(), Bytes::from_static(PAGE))]).await;
    let mut net = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || Testnet::start(4, &dir)
    })
    .await
    .unwrap();
    let socks = net.socks;
    let mut results = Vec::new();
    for _ in 0..ROUNDS {
        results.push(round(socks, port).await);
    }
    for (i, (failed, took)) in results.iter().enumerate() {
        println!(
            "round {}: {STREAMS} streams in {:.2} s, {failed} failed",
            i + 1,
            took.as_secs_f64()
        );
    }
    net.stop();
    assert!(
        results.iter().all(|(failed, _)| *failed == 0),
        "every stream of every round completes: {results:?}"
    );
}
