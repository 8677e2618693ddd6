//! End to end, real processes: `anonnet testnet --metrics` serves Prometheus metrics from
//! the client, every relay and every authority; system curl scrapes them, and the text
//! must parse as exposition format 0.0.4 with the counters a fetch moves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anonnet_tests::{curl_socks, serve_files, temp_dir, Testnet};
use bytes::Bytes;
use prometheus_parse::{Scrape, Value};

/// `GET url` with system curl: the HTTP status, the Content-Type and the body.
fn curl_get(url: &str, out: &Path) -> (u16, String, String) {
    let o = anonnet_tests::output_of(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o"])
            .arg(out)
            .args(["-w", "%{http_code} %{content_type}"])
            .arg(url),
    )
    .expect("curl is installed (.ci/run installs it)");
    assert!(
        o.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let written = String::from_utf8(o.stdout).unwrap();
    let (code, content_type) = written.split_once(' ').unwrap_or((&written, ""));
    let body = std::fs::read_to_string(out).unwrap_or_default();
    let _ = std::fs::remove_file(out);
    (code.parse().unwrap(), content_type.to_owned(), body)
}

/// Scrape `url` and parse it; every sample by name (histograms by their base name, the
/// value being the `+Inf` bucket's count).
fn scrape(url: &str, out: &Path) -> HashMap<String, f64> {
    let (code, content_type, body) = curl_get(url, out);
    assert_eq!(code, 200, "{url}: {body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{url}: Content-Type {content_type:?}"
    );
    let parsed = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(!parsed.samples.is_empty(), "{url}: no samples in {body}");
    parsed
        .samples
        .into_iter()
        .map(|s| {
            let v = match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                Value::Histogram(buckets) => buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .map_or(0.0, |b| b.count),
                Value::Summary(_) => f64::NAN,
            };
            (s.metric, v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testnet_metrics_count_the_circuits_and_bytes_of_a_fetch() {
    let dir = temp_dir("metrics");
    let page = Bytes::from_static(b"<html><body>metrics page</body></html>\n");
    let port = serve_files(vec![("/".into(), page.clone())]).await;
    let mut net = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        move || Testnet::start_with(3, &dir, &["--metrics", "--authorities", "1"])
    })
    .await
    .unwrap();
    let url = net
        .stdout
        .iter()
        .find_map(|l| l.strip_prefix("Metrics: "))
        .unwrap_or_else(|| panic!("no `Metrics: URL` line: {:?}", net.stdout))
        .trim()
        .to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/metrics"),
        "{url}"
    );
    let tmp = net.dir.join("scrape.txt");

    let out = net.dir.join("page.html");
    let (code, err) = curl_socks(net.socks, &format!("http://localhost:{port}/"), &out);
    assert_eq!(code, 0, "curl failed: {err}");
    assert_eq!(std::fs::read(&out).unwrap(), page);
    let _ = std::fs::remove_file(&out);

    // The client: circuits built, a stream and its bytes. The build-time histogram counts
    // the circuits built after the endpoint started, which the pool keeps doing.
    let deadline = Instant::now() + Duration::from_secs(15);
    let client = loop {
        let m = scrape(&url, &tmp);
        if m.get("anonnet_client_circuit_build_seconds").copied() > Some(0.0)
            || Instant::now() > deadline
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (name, at_least) in [
        ("anonnet_client_circuits_built_total", 1.0),
        ("anonnet_client_streams_opened_total", 1.0),
        ("anonnet_client_received_bytes_total", page.len() as f64),
        ("anonnet_client_circuits_open", 1.0),
        ("anonnet_client_consensus_relays", 3.0),
        ("anonnet_client_consensus_valid_after_seconds", 1.0),
        ("anonnet_client_bootstrap_percent", 100.0),
        ("anonnet_client_circuit_build_seconds", 1.0),
    ] {
        let got = client.get(name).copied();
        assert!(
            got >= Some(at_least),
            "{name} = {got:?}, want >= {at_least}: {client:?}"
        );
    }
    assert_eq!(
        client.get("anonnet_client_circuit_build_failures_total"),
        Some(&0.0)
    );

    // Other paths are not found.
    let (code, _, _) = curl_get(&url.replace("/metrics", "/other"), &tmp);
    assert_eq!(code, 404);

    // Relays and the authority: testnet.json has their URLs. The fetch went through one
    // exit, and every relay's counters are there.
    let layout = net.layout();
    let mut exit_streams = 0.0;
    let mut created = 0.0;
    for relay in layout["relays"].as_array().unwrap() {
        let m = scrape(relay["metrics"].as_str().unwrap(), &tmp);
        exit_streams += m["anonnet_relay_exit_streams_total"];
        created += m["anonnet_relay_circuits_created_total"];
        assert!(
            m.contains_key("anonnet_relay_cells_rejected_total"),
            "{m:?}"
        );
        assert!(m.contains_key("anonnet_relay_circuits_open"), "{m:?}");
    }
    assert!(exit_streams >= 1.0, "no exit stream counted");
    assert!(created >= 3.0, "a circuit has three hops: {created}");
    let authority = &layout["authorities"][0];
    let m = scrape(authority["metrics"].as_str().unwrap(), &tmp);
    assert!(m["anonnet_authority_relays_known"] >= 3.0, "{m:?}");
    assert!(m["anonnet_authority_consensus_relays"] >= 3.0, "{m:?}");

    net.stop();
}
