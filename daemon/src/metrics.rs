//! `[metrics] listen`: a Prometheus endpoint, off by default, on the client, relays and
//! authorities. `GET /metrics` answers with the text exposition format 0.0.4, encoded by
//! `prometheus-client`; every figure is read from the role's own status at scrape time,
//! so nothing here keeps counters of its own except the client's circuit build-time
//! histogram (fed by the client's `CircuitBuilt` events).
//!
//! Names: `anonnet_<role>_<what>_total` for counters (the encoder appends `_total`),
//! gauges without it. The endpoint has no authentication: bind it to loopback, or to an
//! address only the scraper reaches.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anonnet_authority::Authority;
use anonnet_client::{Client, ClientEvent};
use anonnet_relay::Relay;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

/// Scrapes served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 8;
/// How long a scraper may take to send its request head (also the keep-alive idle limit).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bounds (seconds) of the circuit build-time histogram's buckets.
const BUILD_SECONDS_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One figure read at scrape time.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Full name; a counter's without `_total`, which the encoder appends.
    name: &'static str,
    /// Help text, with the unit.
    help: &'static str,
    value: Value,
}

#[derive(Debug, Clone, Copy)]
enum Value {
    Counter(u64),
    Gauge(i64),
}

fn counter(name: &'static str, help: &'static str, value: u64) -> Sample {
    Sample {
        name,
        help,
        value: Value::Counter(value),
    }
}

fn gauge(name: &'static str, help: &'static str, value: impl TryInto<i64>) -> Sample {
    Sample {
        name,
        help,
        value: Value::Gauge(value.try_into().unwrap_or(i64::MAX)),
    }
}

/// A role's figures, read on each scrape.
type ReadSamples = Box<dyn Fn() -> Vec<Sample> + Send + Sync>;

/// The [`Collector`] of one role: encodes what `read` returns.
struct Samples(ReadSamples);

impl std::fmt::Debug for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Samples")
    }
}

impl Collector for Samples {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for s in (self.0)() {
            match s.value {
                Value::Counter(v) => {
                    let c = ConstCounter::new(v);
                    c.encode(encoder.encode_descriptor(s.name, s.help, None, c.metric_type())?)?;
                }
                Value::Gauge(v) => {
                    let g = ConstGauge::new(v);
                    g.encode(encoder.encode_descriptor(s.name, s.help, None, g.metric_type())?)?;
                }
            }
        }
        Ok(())
    }
}

fn registry_of(read: ReadSamples) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Samples(read)));
    registry
}

/// The client's metrics: its status counters, its consensus and a histogram of circuit
/// build times (circuits built after this is called; `circuits_built_total` counts all).
pub fn client_registry(client: Arc<Client>) -> Registry {
    let build_seconds = Histogram::new(BUILD_SECONDS_BUCKETS);
    tokio::spawn(record_build_times(client.events(), build_seconds.clone()));
    let mut registry = registry_of(Box::new(move || client_samples(&client)));
    registry.register(
        "anonnet_client_circuit_build_seconds",
        "Time to build a circuit (all hops), in seconds",
        build_seconds,
    );
    registry
}

async fn record_build_times(mut events: broadcast::Receiver<ClientEvent>, into: Histogram) {
    loop {
        match events.recv().await {
            Ok(ClientEvent::CircuitBuilt { build_ms, .. }) => into.observe(build_ms / 1000.0),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn client_samples(client: &Client) -> Vec<Sample> {
    let status = client.status();
    let c = &status.counters;
    let mut out = vec![
        counter(
            "anonnet_client_circuits_built",
            "Circuits built since start (pool and on demand)",
            c.circuits_built,
        ),
        counter(
            "anonnet_client_circuits_built_on_demand",
            "Circuits built because a request found no usable circuit",
            c.circuits_built_on_demand,
        ),
        counter(
            "anonnet_client_circuit_build_failures",
            "Circuit builds that failed",
            c.circuit_build_failures,
        ),
        counter(
            "anonnet_client_streams_opened",
            "Streams opened",
            c.streams_opened,
        ),
        counter(
            "anonnet_client_resolves",
            "RESOLVE requests sent to exits",
            c.resolves,
        ),
        counter(
            "anonnet_client_optimistic_streams",
            "Streams opened optimistically (request sent right behind BEGIN)",
            c.optimistic_streams,
        ),
        counter(
            "anonnet_client_stream_failures",
            "Stream requests refused or failed",
            c.stream_failures,
        ),
        counter(
            "anonnet_client_sent_bytes",
            "Bytes sent to destinations",
            c.bytes_sent,
        ),
        counter(
            "anonnet_client_received_bytes",
            "Bytes received from destinations",
            c.bytes_received,
        ),
        counter(
            "anonnet_client_unexpected_cells",
            "Circuits closed because a relay sent a cell the client did not expect",
            c.unexpected_cells,
        ),
        counter(
            "anonnet_client_hs_descriptor_fetches",
            "Hidden-service descriptor lookups",
            c.hs_descriptor_fetches,
        ),
        counter(
            "anonnet_client_hs_connects",
            "Connections to hidden services attempted",
            c.hs_connects,
        ),
        gauge(
            "anonnet_client_buffered_bytes",
            "Bytes received but not yet read by applications, in bytes",
            c.buffered_bytes,
        ),
        gauge(
            "anonnet_client_circuits_open",
            "Circuits open now",
            status.circuits.len(),
        ),
        gauge(
            "anonnet_client_streams_open",
            "Streams open now",
            status.streams,
        ),
        gauge(
            "anonnet_client_relays",
            "Relays in the directory the client builds paths from",
            status.relays,
        ),
        gauge(
            "anonnet_client_bootstrap_percent",
            "Bootstrap progress, 0 to 100 percent",
            status.bootstrap.percent,
        ),
        gauge(
            "anonnet_client_proxy_enabled",
            "1 when the proxy forwards requests, 0 after `proxy off`",
            i64::from(status.enabled),
        ),
    ];
    if let Some(cons) = &status.consensus {
        out.extend([
            gauge(
                "anonnet_client_consensus_valid_after_seconds",
                "Start of validity of the consensus in use, Unix time in seconds",
                cons.valid_after,
            ),
            gauge(
                "anonnet_client_consensus_fresh_until_seconds",
                "When a newer consensus is fetched, Unix time in seconds",
                cons.fresh_until,
            ),
            gauge(
                "anonnet_client_consensus_valid_until_seconds",
                "When the consensus in use expires, Unix time in seconds",
                cons.valid_until,
            ),
            gauge(
                "anonnet_client_consensus_relays",
                "Relays listed in the consensus in use",
                cons.relays,
            ),
            gauge(
                "anonnet_client_consensus_signatures",
                "Authority signatures on the consensus in use",
                cons.signatures,
            ),
        ]);
    }
    out
}

/// A relay's metrics: every counter of its `stats.json`.
pub fn relay_registry(relay: Arc<Relay>) -> Registry {
    registry_of(Box::new(move || relay_samples(&relay)))
}

fn relay_samples(relay: &Relay) -> Vec<Sample> {
    let s = relay.stats();
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let now = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    vec![
        counter(
            "anonnet_relay_circuits_created",
            "Circuits created here (successful CREATE)",
            n(&s.circuits_created),
        ),
        counter(
            "anonnet_relay_circuits_from_clients",
            "Circuits created here whose previous hop was a client (this relay was the guard)",
            n(&s.circuits_from_clients),
        ),
        counter(
            "anonnet_relay_circuits_extended",
            "Circuits this relay extended to a next hop",
            n(&s.circuits_extended),
        ),
        counter(
            "anonnet_relay_circuits_refused_total_limit",
            "CREATEs refused by the relay-wide circuit limit",
            n(&s.circuits_refused_total_limit),
        ),
        counter(
            "anonnet_relay_circuits_refused_peer_limit",
            "CREATEs refused by a per-relay or per-client-IP circuit limit",
            n(&s.circuits_refused_peer_limit),
        ),
        counter(
            "anonnet_relay_cells_forward",
            "Relay cells opened from the client side, in cells",
            n(&s.cells_forward),
        ),
        counter(
            "anonnet_relay_cells_backward",
            "Relay cells sent towards the client, in cells",
            n(&s.cells_backward),
        ),
        counter(
            "anonnet_relay_cells_rejected",
            "Cells whose tag or sequence number failed (each destroyed its circuit)",
            n(&s.cells_rejected),
        ),
        counter(
            "anonnet_relay_cells_unexpected",
            "Cells the relay did not expect (each destroyed its circuit)",
            n(&s.cells_unexpected),
        ),
        counter(
            "anonnet_relay_exit_streams",
            "Exit streams connected",
            n(&s.exit_streams),
        ),
        counter(
            "anonnet_relay_exit_resolves",
            "RESOLVE requests answered (RESOLVED or END)",
            n(&s.exit_resolves),
        ),
        counter(
            "anonnet_relay_exit_bytes",
            "Bytes read from exit TCP connections",
            n(&s.exit_bytes),
        ),
        counter(
            "anonnet_relay_introductions",
            "INTRODUCE2 messages passed to hidden services",
            n(&s.introductions),
        ),
        counter(
            "anonnet_relay_rendezvous_joined",
            "Circuit pairs joined at this rendezvous point",
            n(&s.rendezvous_joined),
        ),
        counter(
            "anonnet_relay_dht_fetches_for_circuits",
            "DHT_FETCH requests served for circuits",
            n(&s.dht_fetches),
        ),
        counter(
            "anonnet_relay_dht_stores_for_circuits",
            "DHT_STORE requests served for circuits",
            n(&s.dht_stores),
        ),
        counter(
            "anonnet_relay_streams_refused",
            "New streams reset because their link had too many pending streams",
            n(&s.streams_refused),
        ),
        counter(
            "anonnet_relay_streams_timed_out",
            "New streams dropped for sending no byte in time",
            n(&s.streams_timed_out),
        ),
        gauge(
            "anonnet_relay_circuits_open",
            "Circuits open now",
            now(&s.circuits_open),
        ),
        gauge(
            "anonnet_relay_intro_points",
            "Introduction-point registrations held now",
            now(&s.intro_points),
        ),
    ]
}

/// An authority's metrics: relays it knows and the consensus it holds.
pub fn authority_registry(authority: Arc<Authority>) -> Registry {
    registry_of(Box::new(move || authority_samples(&authority)))
}

fn authority_samples(authority: &Authority) -> Vec<Sample> {
    let status = authority.status();
    let mut out = vec![gauge(
        "anonnet_authority_relays_known",
        "Relays whose descriptors the authority holds",
        status.relays_known,
    )];
    if let Some(c) = status.consensus {
        out.extend([
            gauge(
                "anonnet_authority_consensus_valid_after_seconds",
                "Start of validity of the newest majority-signed consensus, Unix time in seconds",
                c.valid_after,
            ),
            gauge(
                "anonnet_authority_consensus_fresh_until_seconds",
                "When the newest consensus stops being fresh, Unix time in seconds",
                c.fresh_until,
            ),
            gauge(
                "anonnet_authority_consensus_valid_until_seconds",
                "When the newest consensus expires, Unix time in seconds",
                c.valid_until,
            ),
            gauge(
                "anonnet_authority_consensus_relays",
                "Relays listed in the newest consensus",
                c.relays,
            ),
            gauge(
                "anonnet_authority_consensus_signatures",
                "Authority signatures on the newest consensus",
                c.signatures,
            ),
        ]);
    }
    out
}

/// The line the daemon (and the testnet) prints once the endpoint is served.
pub fn ready_line(addr: SocketAddr) -> String {
    format!("{READY}http://{addr}/metrics")
}

/// Prefix of [`ready_line`].
pub const READY: &str = "Metrics: ";

/// A bound metrics listener, not yet serving.
pub struct MetricsServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl MetricsServer {
    /// Bind the TCP listener (port 0 picks a free port).
    ///
    /// # Errors
    /// The I/O error from binding.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(MetricsServer {
            listener,
            local_addr,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve `registry` on `GET /metrics` until the task is dropped; other paths get 404,
    /// other methods 405.
    pub async fn serve(self, registry: Registry) {
        let registry = Arc::new(registry);
        let limits = anonnet_control::server::LocalHttp {
            what: "metrics",
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
        };
        anonnet_control::server::serve_local_http(self.listener, limits, move |req| {
            let registry = registry.clone();
            async move { respond(&req, &registry) }
        })
        .await;
    }
}

fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
        warn!("encoding metrics: {e}");
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n");
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Bind `addr` when metrics are on (`[metrics] listen` in `file`), before the role
/// starts, so a taken port fails at once.
///
/// # Errors
/// [`crate::Error::MetricsBind`] naming the config file and key.
pub async fn bind(
    addr: Option<SocketAddr>,
    file: &std::path::Path,
) -> Result<Option<MetricsServer>, crate::Error> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    MetricsServer::bind(addr)
        .await
        .map(Some)
        .map_err(|source| crate::Error::MetricsBind {
            addr,
            file: file.display().to_string(),
            source,
        })
}

/// Serve `registry()` on `server` (if metrics are on) and print the ready line. The
/// endpoint is served until the returned handle is dropped.
///
/// # Errors
/// [`crate::Error::Io`] when stdout cannot be written.
pub fn spawn(
    server: Option<MetricsServer>,
    registry: impl FnOnce() -> Registry,
) -> Result<Option<AbortOnDropHandle<()>>, crate::Error> {
    let Some(server) = server else {
        return Ok(None);
    };
    let addr = server.local_addr();
    let task = AbortOnDropHandle::new(tokio::spawn(server.serve(registry())));
    info!(%addr, "metrics listening");
    crate::print_line(&ready_line(addr))?;
    Ok(Some(task))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn samples_encode_as_text_format_0_0_4() {
        let registry = registry_of(Box::new(|| {
            vec![
                counter("anonnet_test_cells", "Cells, in cells", 7),
                gauge("anonnet_test_open", "Open now", 3usize),
            ]
        }));
        let mut body = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut body, &registry).unwrap();
        assert!(
            body.contains("# TYPE anonnet_test_cells_total counter\n"),
            "{body}"
        );
        assert!(body.contains("anonnet_test_cells_total 7\n"), "{body}");
        assert!(body.contains("# TYPE anonnet_test_open gauge\n"), "{body}");
        assert!(body.contains("anonnet_test_open 3\n"), "{body}");
        assert!(
            !body.contains("# EOF"),
            "OpenMetrics trailer in 0.0.4 text: {body}"
        );
    }
}
