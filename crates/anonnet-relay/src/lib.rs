#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod circuit;
pub mod exit_policy;
pub mod keystore;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anonnet_crypto::{IdentityKey, NodeId, OnionKey};
use anonnet_net::{Endpoint, LinkManager};
use anonnet_wire::descriptor::{FLAG_EXIT, FLAG_GUARD};
use anonnet_wire::{RelayDescriptor, SignedDescriptor};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use exit_policy::{Action, ExitPolicy, ExitRule};

/// How long a relay descriptor is valid (seconds): 24 hours.
pub const DESCRIPTOR_LIFETIME: u64 = 24 * 3600;
/// How often the descriptor file is rewritten with fresh times (seconds): 1 hour.
pub const DESCRIPTOR_REFRESH: Duration = Duration::from_secs(3600);

/// Errors starting a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// A key file or the data directory is unusable.
    #[error("key store {path}: {why}")]
    Keys {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The QUIC endpoint could not be set up (e.g. the port is taken).
    #[error(transparent)]
    Net(#[from] anonnet_net::NetError),
    /// The configuration cannot make a valid descriptor.
    #[error("relay descriptor: {0}")]
    Descriptor(String),
    /// Writing the descriptor or stats file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Resource limits of a relay.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Circuits open at once through this relay; further `CREATE`s get `DESTROY`
    /// (RESOURCELIMIT).
    pub max_circuits: usize,
    /// Exit streams open at once on one circuit; further `BEGIN`s get `END` (RESOURCELIMIT).
    pub max_streams_per_circuit: usize,
    /// Time an exit may spend resolving and connecting a stream.
    pub connect_timeout: Duration,
    /// QUIC links kept to other relays.
    pub max_links: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_circuits: 8192,
            max_streams_per_circuit: 512,
            connect_timeout: Duration::from_secs(15),
            max_links: 1024,
        }
    }
}

/// What the relay needs to start.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where keys, the descriptor and `stats.json` live.
    pub data_dir: PathBuf,
    /// UDP address of the QUIC listener (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Address written in the descriptor; `None` uses the bound address (which must then
    /// not be unspecified).
    pub advertise: Option<SocketAddr>,
    /// Offer the exit role with this policy; `None` for a non-exit relay.
    pub exit_policy: Option<ExitPolicy>,
    /// Offer the guard role.
    pub guard: bool,
    /// Advertised bandwidth (bytes per second).
    pub bandwidth: u32,
    /// Where to write the signed descriptor (base64, one line); default
    /// `data_dir/descriptor`.
    pub descriptor_file: Option<PathBuf>,
    /// Resource limits.
    pub limits: Limits,
}

/// Counters of what this relay did, readable while it runs and written to
/// `data_dir/stats.json` every second when they change.
#[derive(Debug, Default)]
pub struct Stats {
    /// Circuits created here (successful `CREATE`).
    pub circuits_created: AtomicU64,
    /// Of those, circuits whose previous hop was a client (no relay certificate): this
    /// relay was their guard.
    pub circuits_from_clients: AtomicU64,
    /// Circuits this relay extended to a next hop.
    pub circuits_extended: AtomicU64,
    /// Circuits open now.
    pub circuits_open: AtomicUsize,
    /// Relay cells opened from the client side.
    pub cells_forward: AtomicU64,
    /// Relay cells sent towards the client (wrapped from the next hop or originated here).
    pub cells_backward: AtomicU64,
    /// Cells whose tag or sequence number failed (each destroyed its circuit).
    pub cells_rejected: AtomicU64,
    /// Exit streams connected.
    pub exit_streams: AtomicU64,
    /// Bytes read from exit TCP connections.
    pub exit_bytes: AtomicU64,
}

impl Stats {
    /// The counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "circuits_created": g(&self.circuits_created),
            "circuits_from_clients": g(&self.circuits_from_clients),
            "circuits_extended": g(&self.circuits_extended),
            "circuits_open": self.circuits_open.load(Ordering::Relaxed),
            "cells_forward": g(&self.cells_forward),
            "cells_backward": g(&self.cells_backward),
            "cells_rejected": g(&self.cells_rejected),
            "exit_streams": g(&self.exit_streams),
            "exit_bytes": g(&self.exit_bytes),
        })
    }
}

pub(crate) struct RelayShared {
    pub(crate) node_id: NodeId,
    pub(crate) onion_key: OnionKey,
    pub(crate) links: LinkManager,
    pub(crate) exit_policy: Option<Arc<ExitPolicy>>,
    pub(crate) limits: Limits,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutdown: CancellationToken,
}

/// Holds one slot of the circuit limit while a circuit lives.
pub(crate) struct CircuitPermit(Arc<Stats>);

impl Drop for CircuitPermit {
    fn drop(&mut self) {
        self.0.circuits_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RelayShared {
    pub(crate) fn circuit_permit(&self) -> Option<CircuitPermit> {
        let open = self.stats.circuits_open.fetch_add(1, Ordering::Relaxed);
        let permit = CircuitPermit(self.stats.clone());
        (open < self.limits.max_circuits).then_some(permit)
    }
}

/// A running relay.
pub struct Relay {
    node_id: NodeId,
    local_addr: SocketAddr,
    descriptor: SignedDescriptor,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    endpoint: Endpoint,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Relay {
    /// Load or create the keys, bind the QUIC listener, write the descriptor and start
    /// serving. Returns once the listener is bound.
    ///
    /// # Errors
    /// [`RelayError`] when keys, binding or the descriptor fail.
    pub async fn start(config: RelayConfig) -> Result<Relay, RelayError> {
        let (identity, onion_key) = keystore::load_keys(&config.data_dir)?;
        let node_id = identity.node_id();
        let endpoint = Endpoint::relay(&identity, config.listen)?;
        let local_addr = endpoint.local_addr()?;
        let advertise = config.advertise.unwrap_or(local_addr);
        if advertise.ip().is_unspecified() {
            return Err(RelayError::Descriptor(format!(
                "listen address {local_addr} is unspecified; set `advertise` to a reachable address"
            )));
        }
        let exit_policy = config.exit_policy.clone().map(Arc::new);
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let descriptor = make_descriptor(&identity, &onion_key, &config, advertise)?;
        let descriptor_file = config
            .descriptor_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("descriptor"));
        write_atomically(&descriptor_file, descriptor_text(&descriptor)?.as_bytes())?;
        let shared = Arc::new(RelayShared {
            node_id,
            onion_key,
            links: LinkManager::new(endpoint.clone(), config.limits.max_links),
            exit_policy,
            limits: config.limits.clone(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
        });
        info!(%node_id, %local_addr, exit = config.exit_policy.is_some(), "relay listening");
        tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        tokio::spawn(maintenance(
            identity,
            shared,
            config.clone(),
            advertise,
            descriptor_file,
        ));
        Ok(Relay {
            node_id,
            local_addr,
            descriptor,
            stats,
            shutdown,
            endpoint,
        })
    }

    /// This relay's NodeId.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The bound QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The descriptor written at start.
    pub fn descriptor(&self) -> &SignedDescriptor {
        &self.descriptor
    }

    /// Live counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Stop accepting, destroy every circuit and close the endpoint.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        self.endpoint.close();
    }
}

fn descriptor_text(d: &SignedDescriptor) -> Result<String, RelayError> {
    d.to_base64()
        .map(|t| t + "\n")
        .map_err(|e| RelayError::Descriptor(e.to_string()))
}

fn make_descriptor(
    identity: &IdentityKey,
    onion_key: &OnionKey,
    config: &RelayConfig,
    advertise: SocketAddr,
) -> Result<SignedDescriptor, RelayError> {
    let published = now_unix();
    let mut flags = 0;
    if config.exit_policy.is_some() {
        flags |= FLAG_EXIT;
    }
    if config.guard {
        flags |= FLAG_GUARD;
    }
    let desc = RelayDescriptor {
        identity: identity.public(),
        onion_key: onion_key.public(),
        addresses: vec![advertise],
        flags,
        exit_ports: config
            .exit_policy
            .as_ref()
            .map(ExitPolicy::port_summary)
            .unwrap_or_default(),
        bandwidth: config.bandwidth,
        published,
        expires: published + DESCRIPTOR_LIFETIME,
    };
    anonnet_crypto::sign_descriptor(identity, &desc)
        .map_err(|e| RelayError::Descriptor(e.to_string()))
}

/// Write `bytes` to `path` through a temporary file and a rename, so readers never see a
/// half-written file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), RelayError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| RelayError::Write {
            path: path.to_path_buf(),
            source,
        })
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<RelayShared>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            () = shared.shutdown.cancelled() => break,
        };
        match incoming {
            None => break,
            Some(Err(e)) => debug!("link handshake failed: {e}"),
            Some(Ok(link)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let from_relay = link.peer_node_id().is_some();
                    loop {
                        let stream = tokio::select! {
                            s = link.accept_bi() => s,
                            () = shared.shutdown.cancelled() => break,
                        };
                        match stream {
                            Ok((send, recv)) => {
                                tokio::spawn(circuit::serve_leg(
                                    shared.clone(),
                                    send,
                                    recv,
                                    from_relay,
                                ));
                            }
                            Err(_) => break,
                        }
                    }
                });
            }
        }
    }
}

/// Rewrite `stats.json` when counters change and the descriptor every
/// [`DESCRIPTOR_REFRESH`].
async fn maintenance(
    identity: IdentityKey,
    shared: Arc<RelayShared>,
    config: RelayConfig,
    advertise: SocketAddr,
    descriptor_file: PathBuf,
) {
    let stats_file = config.data_dir.join("stats.json");
    let mut last = serde_json::Value::Null;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut refresh = tokio::time::interval(DESCRIPTOR_REFRESH);
    refresh.tick().await;
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            _ = tick.tick() => {
                let now = shared.stats.to_json();
                if now != last {
                    if let Err(e) = write_atomically(&stats_file, now.to_string().as_bytes()) {
                        warn!("{e}");
                    }
                    last = now;
                }
            }
            _ = refresh.tick() => {
                let written = make_descriptor(&identity, &shared.onion_key, &config, advertise)
                    .and_then(|d| descriptor_text(&d))
                    .and_then(|t| write_atomically(&descriptor_file, t.as_bytes()));
                if let Err(e) = written {
                    warn!("refreshing descriptor: {e}");
                }
            }
        }
    }
}
