//! Hidden services, host side (§12, §13): keep introduction points, publish the
//! descriptor (and a `.dark` name) through circuits, answer introductions by meeting the
//! client at its rendezvous point, and connect accepted streams to the local server.
//!
//! The service key lives in one 32-byte file (mode 0600); the introduction encryption key
//! and the `.dark` owner key are derived from it, so the address, the name and its owner
//! stay the same across restarts.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anonnet_crypto::dark::{make_dark_record, DarkName, DARK_POW_BITS};
use anonnet_crypto::hs::{
    descriptor_index, open_introduce, periods_to_publish, seal_descriptor, HsAddress, IntroKey,
    ServiceKey,
};
use anonnet_crypto::{IdentityKey, OnionKey};
use anonnet_wire::dht::RecordKind;
use anonnet_wire::hs::{HsDescriptorBody, IntroPoint, IntroducePlaintext};
use anonnet_wire::relay::ESTABLISH_INTRO_CONTEXT;
use anonnet_wire::{EndReason, RelayMsg};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::circuit::{Circuit, IncomingStream};
use crate::hs::{dht_store, hop_of, link_of, wait_for};
use crate::Client;

/// Introduction points a service keeps.
pub const INTRO_POINTS: usize = 3;
/// Lifetime of a published descriptor (seconds); republished every hour and on change.
pub const DESCRIPTOR_LIFETIME: u64 = 3 * 3600;
/// How often an unchanged descriptor is republished.
pub const REPUBLISH: Duration = Duration::from_secs(3600);
/// Lifetime of a `.dark` record (seconds); republished every 12 hours.
pub const NAME_LIFETIME: u64 = 2 * 86_400;
/// How often the `.dark` record is republished.
pub const NAME_REPUBLISH: Duration = Duration::from_secs(12 * 3600);
/// Rendezvous circuits a service serves at once.
pub const MAX_RENDEZVOUS: usize = 64;
/// How often a service checks whether a new consensus moved its descriptors to other
/// HSDirs (§12.7); it republishes when it did.
const PLACEMENT_CHECK: Duration = Duration::from_secs(5);
/// Introductions remembered to refuse replays.
const REPLAY_CACHE: usize = 16_384;
/// Longest wait for the local server to accept a connection.
const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One hidden service to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The local server streams are connected to (loopback, e.g. `127.0.0.1:8080`).
    pub target: SocketAddr,
    /// Port on the `.anon` address (default 80).
    pub port: u16,
    /// File holding the service key (32 bytes, created 0600 when missing).
    pub key_file: PathBuf,
    /// A `.dark` name to register for the address.
    pub dark_name: Option<String>,
}

/// Why a service could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The key file could not be read or created.
    #[error("service key {path}: {why}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The `.dark` name is not allowed.
    #[error("service name {0}")]
    Name(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Load the 32-byte service key seed from `path`, creating it (mode 0600, parent
/// directories 0700) when it does not exist.
///
/// # Errors
/// [`ServiceError::Key`] when the file cannot be read, has the wrong size or cannot be
/// written.
pub fn load_or_create_key(path: &Path) -> Result<ServiceKey, ServiceError> {
    let err = |why: String| ServiceError::Key {
        path: path.display().to_string(),
        why,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let seed: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| err(format!("{} bytes, expected 32", bytes.len())))?;
            let seed = Zeroizing::new(seed);
            Ok(ServiceKey::from_seed(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ServiceKey::generate().map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            write_secret(path, key.seed().as_slice()).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A key derived from the service seed for `context` (BLAKE3 key derivation, §13.1).
fn derived(key: &ServiceKey, context: &str) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(blake3::derive_key(context, key.seed().as_slice()))
}

/// A published hidden service. Dropping it does not stop it: call [`HostedService::stop`].
#[derive(Debug)]
pub struct HostedService {
    address: HsAddress,
    config: ServiceConfig,
    published: AtomicBool,
    name_registered: AtomicBool,
    introductions: AtomicU64,
    stop: CancellationToken,
}

impl HostedService {
    /// The service's address.
    pub fn address(&self) -> HsAddress {
        self.address
    }

    /// Its configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// True once a descriptor was stored on at least one DHT node.
    pub fn is_published(&self) -> bool {
        self.published.load(Ordering::Relaxed)
    }

    /// True once its `.dark` name was stored on at least one DHT node.
    pub fn is_name_registered(&self) -> bool {
        self.name_registered.load(Ordering::Relaxed)
    }

    /// Introductions answered.
    pub fn introductions(&self) -> u64 {
        self.introductions.load(Ordering::Relaxed)
    }

    /// Stop: close the introduction and rendezvous circuits. The descriptor expires on
    /// its own (it names introduction points that no longer answer).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Ephemeral keys of introductions already answered, oldest first in the queue.
type ReplayCache = (HashSet<[u8; 32]>, VecDeque<[u8; 32]>);

/// One introduction point the service holds.
struct IntroSlot {
    circuit: Arc<Circuit>,
    point: IntroPoint,
}

/// Everything the service's tasks share.
struct Service {
    client: std::sync::Weak<Client>,
    key: ServiceKey,
    intro_key: IntroKey,
    onion_key: OnionKey,
    hosted: Arc<HostedService>,
    intros: Mutex<Vec<IntroSlot>>,
    changed: Notify,
    /// Woken when an introduction circuit closes.
    intro_lost: Notify,
    replays: Mutex<ReplayCache>,
    rendezvous: Arc<Semaphore>,
}

/// Start hosting `config` through `client`: returns at once; introduction points and the
/// descriptor follow in the background.
///
/// # Errors
/// [`ServiceError`] for an unusable key file or name.
pub fn start(
    client: &Arc<Client>,
    config: ServiceConfig,
) -> Result<Arc<HostedService>, ServiceError> {
    let key = load_or_create_key(&config.key_file)?;
    if let Some(name) = &config.dark_name {
        DarkName::parse(name).map_err(|e| ServiceError::Name(format!("{name}: {e}")))?;
    }
    let intro_secret = derived(&key, "anonnet 2026 hs introduction key");
    let intro_key = IntroKey::from_secret(&intro_secret);
    let onion_key = OnionKey::from_secret(&intro_secret);
    let hosted = Arc::new(HostedService {
        address: key.address(),
        config,
        published: AtomicBool::new(false),
        name_registered: AtomicBool::new(false),
        introductions: AtomicU64::new(0),
        stop: CancellationToken::new(),
    });
    let service = Arc::new(Service {
        client: Arc::downgrade(client),
        key,
        intro_key,
        onion_key,
        hosted: hosted.clone(),
        intros: Mutex::new(Vec::new()),
        changed: Notify::new(),
        intro_lost: Notify::new(),
        replays: Mutex::new((HashSet::new(), VecDeque::new())),
        rendezvous: Arc::new(Semaphore::new(MAX_RENDEZVOUS)),
    });
    info!(
        address = %anonnet_net::logging::sensitive(hosted.address),
        target = %anonnet_net::logging::sensitive(hosted.config.target),
        "hosting hidden service"
    );
    tokio::spawn(service.clone().keep_intro_points());
    tokio::spawn(service.clone().publish_descriptors());
    if hosted.config.dark_name.is_some() {
        tokio::spawn(service.publish_name());
    }
    Ok(hosted)
}

impl Service {
    fn stopped(&self) -> bool {
        self.hosted.stop.is_cancelled()
    }

    /// Keep [`INTRO_POINTS`] introduction circuits open; replace those that close.
    async fn keep_intro_points(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            if self.stopped() {
                break;
            }
            let (missing, avoid) = {
                let mut intros = lock(&self.intros);
                let before = intros.len();
                intros.retain(|s| !s.circuit.is_closed());
                if intros.len() != before {
                    self.changed.notify_one();
                }
                let avoid: Vec<_> = intros
                    .iter()
                    .map(|s| anonnet_crypto::NodeId(s.point.relay.node_id))
                    .collect();
                (INTRO_POINTS.saturating_sub(intros.len()), avoid)
            };
            if missing > 0 {
                match self.clone().establish_intro(&avoid).await {
                    Ok(slot) => {
                        lock(&self.intros).push(slot);
                        self.changed.notify_one();
                        backoff = Duration::from_millis(500);
                        continue;
                    }
                    Err(e) => {
                        warn!(service = %anonnet_net::logging::sensitive(self.hosted.address), "introduction point failed: {e}");
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            // Retry a failed build after its backoff; with all introduction points up,
            // wait until one of their circuits closes.
            tokio::select! {
                () = tokio::time::sleep(backoff), if missing > 0 => {}
                () = self.intro_lost.notified(), if missing == 0 => {}
                () = self.hosted.stop.cancelled() => break,
            }
        }
        for s in lock(&self.intros).drain(..) {
            s.circuit.close();
        }
    }

    /// Build a circuit to a new introduction point and register there (§13.2).
    async fn establish_intro(
        self: Arc<Self>,
        avoid: &[anonnet_crypto::NodeId],
    ) -> Result<IntroSlot, String> {
        let client = self.client.upgrade().ok_or("client stopped")?;
        let circuit = client
            .build_internal(None, avoid)
            .await
            .map_err(|e| e.to_string())?;
        let last = circuit.relay_hops().saturating_sub(1);
        let relay = circuit.last_hop().ok_or("circuit without relays")?;
        let binding = circuit.binding(last).ok_or("no handshake key")?;
        let auth = IdentityKey::generate().map_err(|e| e.to_string())?;
        let auth_key = auth.public();
        let mut signed = ESTABLISH_INTRO_CONTEXT.to_vec();
        signed.extend_from_slice(&auth_key);
        signed.extend_from_slice(&binding);
        let mut rx = circuit.control_messages();
        circuit
            .send_to_last_relay(RelayMsg::EstablishIntro {
                auth_key,
                signature: auth.sign(&signed),
            })
            .await
            .map_err(|e| e.to_string())?;
        wait_for(&mut rx, "INTRO_ESTABLISHED", |m| {
            matches!(m, RelayMsg::IntroEstablished).then_some(())
        })
        .await?;
        info!(
            service = %anonnet_net::logging::sensitive(self.hosted.address),
            intro = %relay.node_id.short(),
            "introduction point established"
        );
        tokio::spawn(self.clone().serve_introductions(circuit.clone(), rx));
        Ok(IntroSlot {
            circuit,
            point: IntroPoint {
                relay: link_of(&relay),
                auth_key,
            },
        })
    }

    /// Answer the `INTRODUCE2`s arriving on one introduction circuit.
    async fn serve_introductions(
        self: Arc<Self>,
        circuit: Arc<Circuit>,
        mut rx: mpsc::Receiver<RelayMsg>,
    ) {
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                () = self.hosted.stop.cancelled() => break,
                () = circuit.closed() => break,
            };
            let Some(RelayMsg::Introduce2 { auth_key, sealed }) = msg else {
                if msg.is_none() {
                    break;
                }
                continue;
            };
            let Ok(permit) = self.rendezvous.clone().try_acquire_owned() else {
                debug!("rendezvous limit reached; dropping an introduction");
                continue;
            };
            let service = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = service.rendezvous(&auth_key, &sealed).await {
                    debug!(service = %anonnet_net::logging::sensitive(service.hosted.address), "introduction not served: {e}");
                }
            });
        }
        // The introduction point is gone (or the service stops): let it be replaced.
        circuit.close();
        self.intro_lost.notify_one();
    }

    /// Open an introduction, meet the client at its rendezvous point and serve the
    /// streams it opens (§13.4, §13.5).
    async fn rendezvous(&self, auth_key: &[u8; 32], sealed: &[u8]) -> Result<(), String> {
        let (plain, ephemeral) =
            open_introduce(&self.intro_key, auth_key, sealed).map_err(|e| e.to_string())?;
        {
            let mut replays = lock(&self.replays);
            if !replays.0.insert(ephemeral) {
                return Err("replayed introduction".into());
            }
            replays.1.push_back(ephemeral);
            if replays.1.len() > REPLAY_CACHE {
                if let Some(old) = replays.1.pop_front() {
                    replays.0.remove(&old);
                }
            }
        }
        let intro = IntroducePlaintext::decode(&plain).map_err(|e| e.to_string())?;
        let hello = anonnet_crypto::ClientHello {
            node_id: self.hosted.address.node_id().0,
            onion_key: self.onion_key.public(),
            client_pk: intro.client_pk,
        };
        let (reply, keys) = anonnet_crypto::handshake::server_handshake_hs(
            self.hosted.address.node_id(),
            &self.onion_key,
            &hello,
        )
        .map_err(|e| e.to_string())?;
        self.hosted.introductions.fetch_add(1, Ordering::Relaxed);
        let client = self.client.upgrade().ok_or("client stopped")?;
        let circuit = client
            .build_internal(Some(hop_of(&intro.rendezvous)), &[])
            .await
            .map_err(|e| e.to_string())?;
        let incoming = circuit.incoming_streams();
        circuit.add_end_to_end_hop(&keys, true);
        drop(keys);
        circuit
            .send_to_last_relay(RelayMsg::Rendezvous1 {
                cookie: intro.cookie,
                server_pk: reply.server_pk,
                auth: reply.auth,
            })
            .await
            .map_err(|e| e.to_string())?;
        debug!(service = %anonnet_net::logging::sensitive(self.hosted.address), circuit = circuit.id(), "met a client");
        serve_streams(
            circuit,
            incoming,
            self.hosted.config.clone(),
            self.hosted.stop.clone(),
        )
        .await;
        Ok(())
    }

    /// Publish the descriptor for every period in use, whenever the introduction points
    /// change, whenever a new consensus makes other HSDirs responsible for it (checked
    /// every [`PLACEMENT_CHECK`]), and every [`REPUBLISH`].
    async fn publish_descriptors(self: Arc<Self>) {
        let mut revision = now_unix().saturating_mul(1000);
        loop {
            let placed = self.placement(now_unix());
            let points: Vec<IntroPoint> = lock(&self.intros).iter().map(|s| s.point).collect();
            let mut wait = REPUBLISH;
            // With no introduction point yet there is nothing to publish: the first one
            // to come up wakes this loop through `changed`.
            if !points.is_empty() {
                revision = revision.max(now_unix().saturating_mul(1000)) + 1;
                match self.publish_once(points, revision).await {
                    Ok(stored) if stored > 0 => {
                        if !self.hosted.published.swap(true, Ordering::Relaxed) {
                            info!(service = %anonnet_net::logging::sensitive(self.hosted.address), stored, "descriptor published");
                        }
                    }
                    Ok(_) => {
                        warn!(service = %anonnet_net::logging::sensitive(self.hosted.address), "no HSDir stored the descriptor");
                        wait = Duration::from_secs(2);
                    }
                    Err(e) => {
                        warn!(service = %anonnet_net::logging::sensitive(self.hosted.address), "publishing the descriptor: {e}");
                        wait = Duration::from_secs(2);
                    }
                }
            }
            let next = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => break,
                    () = self.changed.notified() => {
                        // Let a burst of changes settle into one descriptor.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                    () = tokio::time::sleep(PLACEMENT_CHECK) => {
                        if self.placement(now_unix()) != placed {
                            break;
                        }
                    }
                    () = self.hosted.stop.cancelled() => return,
                }
            }
        }
    }

    /// The HSDirs responsible for this service's descriptors now (§12.7).
    fn placement(&self, now: u64) -> Vec<(u64, Vec<anonnet_crypto::NodeId>)> {
        match self.client.upgrade() {
            Some(client) => {
                crate::hsdir::placement_of(&client, &self.hosted.address, &periods_to_publish(now))
            }
            None => Vec::new(),
        }
    }

    async fn publish_once(&self, points: Vec<IntroPoint>, revision: u64) -> Result<usize, String> {
        let client = self.client.upgrade().ok_or("client stopped")?;
        let now = now_unix();
        let body = HsDescriptorBody {
            enc_key: self.intro_key.public(),
            intro_points: points,
        };
        let mut stored = 0;
        for period in periods_to_publish(now) {
            let d = seal_descriptor(
                &self.key,
                period,
                revision,
                now + DESCRIPTOR_LIFETIME,
                &body,
            )
            .map_err(|e| e.to_string())?;
            let key = descriptor_index(&d.blinded_key, period);
            let bytes = d.encode().map_err(|e| e.to_string())?;
            stored += crate::hsdir::publish(&client, period, key, bytes).await;
        }
        Ok(stored)
    }

    /// Register the `.dark` name (proof of work in a blocking task) and keep it fresh.
    async fn publish_name(self: Arc<Self>) {
        let Some(name) = self
            .hosted
            .config
            .dark_name
            .as_deref()
            .and_then(|n| DarkName::parse(n).ok())
        else {
            return;
        };
        let owner = IdentityKey::from_seed(&derived(&self.key, "anonnet 2026 dark owner key"));
        loop {
            let now = now_unix();
            let (owner_c, name_c, address) = (
                IdentityKey::from_seed(&owner.seed()),
                name.clone(),
                self.hosted.address,
            );
            let record = tokio::task::spawn_blocking(move || {
                make_dark_record(
                    &owner_c,
                    &name_c,
                    &address,
                    now,
                    now + NAME_LIFETIME,
                    DARK_POW_BITS,
                )
            })
            .await;
            let mut wait = NAME_REPUBLISH;
            let stored = match (record, self.client.upgrade()) {
                (Ok(record), Some(client)) => {
                    match (record.encode(), client.build_internal(None, &[]).await) {
                        (Ok(bytes), Ok(circuit)) => {
                            let key = anonnet_crypto::dark::dark_key(&name);
                            let r = dht_store(&circuit, key, RecordKind::DarkName, bytes).await;
                            circuit.close();
                            r
                        }
                        (Err(e), _) => Err(e.to_string()),
                        (_, Err(e)) => Err(e.to_string()),
                    }
                }
                _ => Err("client stopped".into()),
            };
            match stored {
                Ok(n) if n > 0 => {
                    self.hosted.name_registered.store(true, Ordering::Relaxed);
                    info!(name = %anonnet_net::logging::sensitive(&name), stored = n, "name registered");
                }
                Ok(_) => {
                    warn!(name = %anonnet_net::logging::sensitive(&name), "no DHT node stored the name (taken by another owner?)");
                    wait = Duration::from_secs(30);
                }
                Err(e) => {
                    warn!(name = %anonnet_net::logging::sensitive(&name), "registering the name: {e}");
                    wait = Duration::from_secs(5);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.hosted.stop.cancelled() => break,
            }
        }
    }
}

/// Connect each stream the client opens on `circuit` to the local server.
async fn serve_streams(
    circuit: Arc<Circuit>,
    mut incoming: mpsc::Receiver<IncomingStream>,
    config: ServiceConfig,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            s = incoming.recv() => s,
            () = circuit.closed() => None,
            () = stop.cancelled() => None,
        };
        let Some(IncomingStream { port, stream, .. }) = next else {
            break;
        };
        if port != config.port {
            stream.refuse(EndReason::ExitPolicy);
            continue;
        }
        let target = config.target;
        tokio::spawn(async move {
            let tcp = tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect(target)).await;
            let mut tcp = match tcp {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    debug!("local server {target}: {e}");
                    stream.refuse(EndReason::ConnectRefused);
                    return;
                }
                Err(_) => {
                    stream.refuse(EndReason::Timeout);
                    return;
                }
            };
            if stream.accept().await.is_err() {
                return;
            }
            let mut stream = stream;
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
        });
    }
    circuit.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_created_private_and_keeps_the_address() {
        let dir = std::env::temp_dir().join(format!("anonnet-host-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("services").join("a").join("service.key");
        let first = load_or_create_key(&path).unwrap().address();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_or_create_key(&path).unwrap().address(), first);
        // A file of the wrong size is an error naming it, not a new key.
        std::fs::write(&path, b"short").unwrap();
        let err = load_or_create_key(&path).unwrap_err().to_string();
        assert!(
            err.contains("service.key") && err.contains("expected 32"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
