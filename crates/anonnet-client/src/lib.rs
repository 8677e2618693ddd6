#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod circuit;
pub mod directory;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anonnet_net::{Endpoint, LinkManager};
use anonnet_wire::{EndReason, SignedDescriptor, Target};
use tokio::sync::watch;
use tracing::{info, warn};

pub use circuit::{Circuit, CircuitError, DataStream, StreamError};
pub use directory::{Directory, PathError};

/// Attempts at building a circuit for one request before giving up.
const BUILD_ATTEMPTS: usize = 3;
/// Pause between bootstrap attempts while no circuit can be built (doubles up to 30 s).
const BOOTSTRAP_RETRY: Duration = Duration::from_millis(500);

/// What kind of failure an error is, whatever its source. Front ends choose the SOCKS reply
/// code, HTTP status and the words shown to people from this, never from a message string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The exit policy does not allow the destination.
    ExitPolicy,
    /// The destination refused the connection.
    ConnectionRefused,
    /// The exit could not resolve or reach the host.
    HostUnreachable,
    /// A step timed out (building, connecting).
    Timeout,
    /// No circuit could be built or the circuit failed.
    CircuitFailed,
    /// The client has no usable relays yet.
    NotReady,
    /// The destination or request is malformed.
    BadRequest,
    /// Something else went wrong at the exit or here.
    Other,
}

/// Errors of the client API.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// Too few usable relay descriptors to build a circuit.
    #[error("only {usable} usable relay descriptor(s); at least 3 are needed")]
    NotEnoughRelays {
        /// How many verified.
        usable: usize,
    },
    /// No path could be chosen.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Building a circuit failed every attempt.
    #[error("could not build a circuit: {0}")]
    Circuit(#[from] CircuitError),
    /// The stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The QUIC endpoint could not be created.
    #[error("client endpoint: {0}")]
    Endpoint(String),
    /// The destination is malformed.
    #[error("bad destination: {0}")]
    BadTarget(String),
}

impl ClientError {
    /// The kind of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::NotEnoughRelays { .. } | ClientError::Endpoint(_) => ErrorKind::NotReady,
            ClientError::Path(PathError::NoExitForPort(_)) => ErrorKind::ExitPolicy,
            ClientError::Path(_) => ErrorKind::NotReady,
            ClientError::Circuit(CircuitError::Timeout) => ErrorKind::Timeout,
            ClientError::Circuit(_) => ErrorKind::CircuitFailed,
            ClientError::Stream(StreamError::Timeout) => ErrorKind::Timeout,
            ClientError::Stream(StreamError::Circuit(_)) => ErrorKind::CircuitFailed,
            ClientError::Stream(StreamError::Refused(reason)) => match reason {
                EndReason::ExitPolicy => ErrorKind::ExitPolicy,
                EndReason::ConnectRefused => ErrorKind::ConnectionRefused,
                EndReason::ResolveFailed | EndReason::NoRoute => ErrorKind::HostUnreachable,
                EndReason::Timeout => ErrorKind::Timeout,
                _ => ErrorKind::Other,
            },
            ClientError::BadTarget(_) => ErrorKind::BadRequest,
        }
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Relay descriptors to start from (the bootstrap list).
    pub bootstrap: Vec<SignedDescriptor>,
    /// UDP address of the client's QUIC endpoint (it only dials).
    pub quic_bind: SocketAddr,
    /// Longest time one circuit build may take.
    pub circuit_build_timeout: Duration,
    /// Longest time the exit may take to answer `BEGIN`.
    pub stream_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap: Vec::new(),
            quic_bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            circuit_build_timeout: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(30),
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The client: builds circuits and opens streams through them.
pub struct Client {
    config: ClientConfig,
    links: LinkManager,
    directory: RwLock<Directory>,
    circuits: Mutex<Vec<Arc<Circuit>>>,
    ready: watch::Sender<Option<Result<(), ClientError>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Verify the bootstrap descriptors, open the QUIC endpoint and start building a first
    /// circuit in the background.
    ///
    /// # Errors
    /// [`ClientError::NotEnoughRelays`] when fewer than 3 descriptors verify,
    /// [`ClientError::Endpoint`] when the endpoint cannot be bound.
    pub async fn start(config: ClientConfig) -> Result<Arc<Client>, ClientError> {
        let mut directory = Directory::new();
        let now = now_unix();
        for d in &config.bootstrap {
            if let Err(e) = directory.insert(d, now) {
                warn!("ignoring a bootstrap descriptor: {e}");
            }
        }
        if directory.len() < 3 {
            return Err(ClientError::NotEnoughRelays {
                usable: directory.len(),
            });
        }
        let endpoint =
            Endpoint::client(config.quic_bind).map_err(|e| ClientError::Endpoint(e.to_string()))?;
        info!(relays = directory.len(), "client starting");
        let (ready, _) = watch::channel(None);
        let client = Arc::new(Client {
            links: LinkManager::new(endpoint, 256),
            directory: RwLock::new(directory),
            circuits: Mutex::new(Vec::new()),
            config,
            ready,
        });
        tokio::spawn(bootstrap(client.clone()));
        Ok(client)
    }

    /// Wait until a first circuit is built.
    ///
    /// # Errors
    /// The error that stopped bootstrapping (no usable path at all).
    pub async fn wait_ready(&self) -> Result<(), ClientError> {
        let mut rx = self.ready.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return Err(ClientError::NotEnoughRelays { usable: 0 });
            }
        }
    }

    /// The circuits open now.
    pub fn circuits(&self) -> Vec<Arc<Circuit>> {
        self.live_circuits()
    }

    fn live_circuits(&self) -> Vec<Arc<Circuit>> {
        match self.circuits.lock() {
            Ok(mut c) => {
                c.retain(|c| !c.is_closed());
                c.clone()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Build a new circuit whose exit allows `port`, retrying other paths up to 3 times.
    ///
    /// # Errors
    /// [`ClientError::Path`] when no path exists, else the last build failure.
    pub async fn build_circuit(&self, port: u16) -> Result<Arc<Circuit>, ClientError> {
        let mut last = ClientError::Circuit(CircuitError::Closed);
        let mut avoid = Vec::new();
        for _ in 0..BUILD_ATTEMPTS {
            let path = {
                let dir = self
                    .directory
                    .read()
                    .map_err(|_| ClientError::NotEnoughRelays { usable: 0 })?;
                match dir.choose_path(port, &avoid, &mut rand::rng()) {
                    Ok(p) => p,
                    // Relays we avoided may be all there is: try them again.
                    Err(_) if !avoid.is_empty() => {
                        avoid.clear();
                        dir.choose_path(port, &avoid, &mut rand::rng())?
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let ids: Vec<_> = path.iter().map(|r| r.node_id).collect();
            match tokio::time::timeout(
                self.config.circuit_build_timeout,
                Circuit::build(&self.links, path),
            )
            .await
            {
                Ok(Ok(c)) => {
                    if let Ok(mut list) = self.circuits.lock() {
                        list.push(c.clone());
                    }
                    return Ok(c);
                }
                Ok(Err(e)) => {
                    warn!("circuit build failed: {e}");
                    // Avoid the relay that failed: the one a hop could not extend to, the
                    // hop whose handshake failed, or the guard whose link failed.
                    match &e {
                        CircuitError::Extend { hop, .. } => avoid.extend(ids.get(hop + 1).copied()),
                        CircuitError::Handshake { hop, .. } => avoid.extend(ids.get(*hop).copied()),
                        CircuitError::Link(..) => avoid.extend(ids.first().copied()),
                        _ => {}
                    }
                    last = e.into();
                }
                Err(_) => {
                    warn!("circuit build timed out");
                    last = ClientError::Circuit(CircuitError::Timeout);
                }
            }
        }
        Err(last)
    }

    /// Open a stream to `target:port`: reuse an open circuit whose exit allows the port, or
    /// build one; a circuit that fails under the stream is replaced and the stream retried.
    /// Host names are passed to the exit unresolved.
    ///
    /// # Errors
    /// [`ClientError`]; [`ClientError::kind`] says which reply a front end should give.
    pub async fn connect(&self, target: Target, port: u16) -> Result<DataStream, ClientError> {
        if port == 0 {
            return Err(ClientError::BadTarget("port 0".into()));
        }
        if let Target::Host(h) = &target {
            anonnet_wire::relay::check_host(h)
                .map_err(|e| ClientError::BadTarget(e.to_string()))?;
        }
        let mut last = ClientError::Circuit(CircuitError::Closed);
        for _ in 0..BUILD_ATTEMPTS {
            let reuse = self
                .live_circuits()
                .into_iter()
                .rev()
                .find(|c| c.exit_allows_port(port) && c.has_stream_capacity());
            let circuit = match reuse {
                Some(c) => c,
                None => self.build_circuit(port).await?,
            };
            match circuit
                .begin(target.clone(), port, self.config.stream_timeout)
                .await
            {
                Ok(s) => return Ok(s),
                // The circuit is fine, only full: the next round picks or builds another.
                Err(StreamError::Circuit(e @ CircuitError::TooManyStreams)) => {
                    last = ClientError::Stream(StreamError::Circuit(e));
                }
                Err(StreamError::Circuit(e)) => {
                    warn!(
                        circuit = circuit.id(),
                        "stream failed on circuit: {e}; retrying"
                    );
                    circuit.close();
                    last = ClientError::Stream(StreamError::Circuit(e));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last)
    }
}

async fn bootstrap(client: Arc<Client>) {
    let mut delay = BOOTSTRAP_RETRY;
    // Prefer an exit for web traffic; fall back to any port an exit allows.
    let port = {
        let dir = client.directory.read();
        match dir {
            Ok(d) if d.has_exit_for(443) => 443,
            Ok(d) => (1..=u16::MAX).find(|p| d.has_exit_for(*p)).unwrap_or(443),
            Err(_) => 443,
        }
    };
    loop {
        match client.build_circuit(port).await {
            Ok(c) => {
                info!(
                    circuit = c.id(),
                    build_ms = c.build_time().as_secs_f64() * 1000.0,
                    "bootstrapped: first circuit built"
                );
                client.ready.send_replace(Some(Ok(())));
                return;
            }
            Err(e @ ClientError::Path(_)) => {
                warn!("cannot bootstrap: {e}");
                client.ready.send_replace(Some(Err(e)));
                return;
            }
            Err(e) => {
                warn!("bootstrap circuit failed: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}
