#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod measure;
pub mod names;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anonnet_crypto::{verify_descriptor, IdentityKey, NodeId, VerifiedDescriptor};
use anonnet_dir::document::digest;
use anonnet_dir::msg::MAX_MESSAGE_LEN;
use anonnet_dir::{
    compute_consensus, srv, Consensus, ConsensusSignature, DirMessage, FlagThresholds, Network,
    RelayEntry, RelayFlags, RelayHistory, SignedConsensus, SignedVote, UploadStatus, Vote,
    DIR_STREAM_TAG,
};
use anonnet_net::{rpc, Endpoint, Link, LinkManager};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

pub use measure::MeasureConfig;

/// Most relays an authority keeps descriptors of; uploads of new relays beyond it are
/// refused.
pub const MAX_RELAYS: usize = 20_000;
/// Longest a reachability dial may take.
pub const REACHABILITY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reachability dials run at once.
const MAX_CONCURRENT_TESTS: usize = 32;
/// Largest request accepted from a peer that is not an authority (bytes): an upload (a
/// signed descriptor, at most 1 092 bytes) or a `GET_CONSENSUS`.
const MAX_SMALL_REQUEST: usize = 4096;
/// Streams of one link being served at once.
const MAX_STREAMS_PER_LINK: usize = 16;
/// Longest a peer may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds within which a relay's repeated upload is answered from its last reachability
/// test instead of a new dial.
const MIN_UPLOAD_RETEST_SECS: u64 = 10;
/// Weight voted for a relay not yet measured (bytes per second), unless it reports less.
pub const UNMEASURED_WEIGHT: u32 = 20_000;
/// Signatures received before the consensus they sign was computed, kept at most.
const MAX_EARLY_SIGNATURES: usize = 64;
/// File in the data directory with the shared-random secret (32 bytes, mode 0600).
const SRV_SECRET_FILE: &str = "srv-secret";
/// File in the data directory with the newest consensus.
pub const CONSENSUS_FILE: &str = "consensus";
/// File in the data directory with the relays' signed descriptors, one base64 line each:
/// a restarted authority tests and votes on them again at once instead of waiting up to
/// an hour for every relay's next upload. (Reachability history is not kept: flags that
/// need uptime are earned again.)
pub const DESCRIPTORS_FILE: &str = "descriptors";
/// File under the data directory holding the `.dark` name registry (§12.5), one name per
/// line (`names::NameRegistry::encode`).
pub const NAMES_FILE: &str = "names";

/// Errors starting an authority.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// Keys or the data directory are unusable.
    #[error(transparent)]
    Keys(#[from] anonnet_relay::RelayError),
    /// The QUIC endpoint or the measurement server could not be set up.
    #[error(transparent)]
    Net(#[from] anonnet_net::NetError),
    /// This authority's identity key is not one of the network's authorities.
    #[error(
        "this authority's identity key {0} is not listed in the network file: add an \
         [[authority]] with identity = \"{0}\" and this authority's address"
    )]
    NotInNetwork(String),
    /// The name registry file does not parse (§12.5).
    #[error("{path}: {source}")]
    Names {
        /// The file.
        path: PathBuf,
        /// The line and why.
        source: names::RegistryLineError,
    },
    /// A file of the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl anonnet_error::HasKind for AuthorityError {
    /// The keys' or the network's kind; an authority missing from its own network file
    /// or a damaged registry is [`anonnet_error::ErrorKind::Config`]; a file error by its
    /// I/O kind.
    fn kind(&self) -> anonnet_error::ErrorKind {
        use anonnet_error::HasKind;
        match self {
            AuthorityError::Keys(e) => e.kind(),
            AuthorityError::Net(e) => e.kind(),
            AuthorityError::NotInNetwork(_) | AuthorityError::Names { .. } => {
                anonnet_error::ErrorKind::Config
            }
            AuthorityError::Io { source, .. } => HasKind::kind(source),
        }
    }
}

/// What an authority needs to start.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// Keys, the shared-random secret and the newest consensus live here.
    pub data_dir: PathBuf,
    /// UDP address of the QUIC listener: the address the network file lists for this
    /// authority.
    pub listen: SocketAddr,
    /// The network; this authority's identity must be one of its authorities.
    pub network: Network,
    /// Length of a voting period (seconds, ≥ 2; default 3600).
    pub period: u64,
    /// Time after the period boundary by which votes must be in (seconds, < `period`;
    /// signatures get half as long again).
    pub vote_delay: u64,
    /// Flag thresholds.
    pub thresholds: FlagThresholds,
    /// Bandwidth measurement.
    pub measure: MeasureConfig,
    /// Relays per IP address voted on, the longest-known first (default 2, Tor's
    /// AuthDirMaxServersPerAddr; 0: no limit, for a testnet on one address).
    pub max_relays_per_ip: usize,
}

/// A relay the authority holds a descriptor of.
#[derive(Debug, Clone)]
struct KnownRelay {
    relay: VerifiedDescriptor,
    signed: anonnet_wire::SignedDescriptor,
    history: RelayHistory,
    /// Measured bandwidth (bytes per second) and when (Unix seconds).
    measured: Option<(u32, u64)>,
    /// When the last measurement failed (Unix seconds), to wait before the next try.
    measure_failed: Option<u64>,
}

/// The consensus this authority computed for one period, gathering signatures.
#[derive(Debug, Clone)]
struct Pending {
    consensus: Consensus,
    signed: SignedConsensus,
    digest: [u8; 32],
}

#[derive(Default)]
struct State {
    relays: HashMap<NodeId, KnownRelay>,
    /// Verified votes by period (`valid_after`) and authority.
    votes: BTreeMap<u64, HashMap<[u8; 32], (SignedVote, Vote)>>,
    pending: BTreeMap<u64, Pending>,
    early_signatures: Vec<([u8; 32], ConsensusSignature)>,
    /// The newest consensus signed by a majority.
    current: Option<(SignedConsensus, Consensus)>,
    /// `.dark` names registered here (§12.5).
    names: names::NameRegistry,
}

struct Shared {
    identity: IdentityKey,
    config: AuthorityConfig,
    endpoint: Endpoint,
    links: Arc<LinkManager>,
    state: Mutex<State>,
    srv_secret: Zeroizing<[u8; 32]>,
    tests: tokio::sync::Semaphore,
    shutdown: CancellationToken,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// A snapshot of an authority ([`Authority::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityStatus {
    /// Relays whose descriptors the authority holds.
    pub relays_known: usize,
    /// The newest consensus signed by a majority, if any.
    pub consensus: Option<CurrentConsensus>,
}

/// The figures of the consensus an authority holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentConsensus {
    /// Start of validity (Unix seconds).
    pub valid_after: u64,
    /// Clients fetch a newer one after this (Unix seconds).
    pub fresh_until: u64,
    /// Refused at and after this (Unix seconds).
    pub valid_until: u64,
    /// Relays listed.
    pub relays: usize,
    /// Authority signatures it carries.
    pub signatures: usize,
}

/// A running authority.
pub struct Authority {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tasks: TaskTracker,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authority {
    /// Load or create the keys, bind the QUIC listener and the measurement server, and
    /// start the period loop.
    ///
    /// # Errors
    /// [`AuthorityError`] when keys, files or binding fail, or the identity is not in the
    /// network.
    pub async fn start(config: AuthorityConfig) -> Result<Authority, AuthorityError> {
        let (identity, _onion) = anonnet_relay::keystore::load_keys(&config.data_dir)?;
        if config.network.authority(&identity.public()).is_none() {
            return Err(AuthorityError::NotInNetwork(hex::encode(identity.public())));
        }
        let srv_secret = load_srv_secret(&config.data_dir)?;
        let endpoint = Endpoint::relay(&identity, config.listen)?;
        let local_addr = endpoint.local_addr()?;
        let links = Arc::new(LinkManager::new(endpoint.clone(), 256));
        let mut state = State::default();
        let now = now_unix();
        let descriptors_path = config.data_dir.join(DESCRIPTORS_FILE);
        let text = anonnet_state::load(&descriptors_path, |b| {
            String::from_utf8(b.to_vec()).map_err(|_| "is not text")
        })
        .unwrap_or_default();
        let lines: Vec<_> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(MAX_RELAYS)
            .map(|l| (l, anonnet_wire::SignedDescriptor::from_base64(l.trim())))
            .collect();
        let malformed = lines.iter().filter(|(_, d)| d.is_err()).count();
        if malformed > 0 {
            // Keep the damaged file; the next save writes only the descriptors read.
            anonnet_state::set_aside(
                &descriptors_path,
                &format!("has {malformed} lines that are not relay descriptors"),
                &format!("{} descriptors kept", lines.len() - malformed),
            );
        }
        for (_, signed) in lines {
            let Ok(signed) = signed else {
                continue;
            };
            let Ok(relay) = verify_descriptor(&signed, now) else {
                continue;
            };
            // Counted down until the test the period loop runs first thing; dated so that
            // an upload before that test gets a test of its own.
            state.relays.insert(
                relay.node_id,
                KnownRelay {
                    relay,
                    signed,
                    history: RelayHistory::new(now.saturating_sub(MIN_UPLOAD_RETEST_SECS), false),
                    measured: None,
                    measure_failed: None,
                },
            );
        }
        let names_path = config.data_dir.join(NAMES_FILE);
        match std::fs::read_to_string(&names_path) {
            Ok(text) => {
                state.names =
                    names::NameRegistry::decode(&text).map_err(|source| AuthorityError::Names {
                        path: names_path.clone(),
                        source,
                    })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AuthorityError::Io {
                    path: names_path,
                    source,
                })
            }
        }
        if let Some(c) = anonnet_state::load(
            &config.data_dir.join(CONSENSUS_FILE),
            SignedConsensus::decode,
        ) {
            if let Ok(v) = c.verify(&config.network, now_unix()) {
                state.current = Some((c, v));
            }
        }
        let shared = Arc::new(Shared {
            identity,
            config: config.clone(),
            endpoint: endpoint.clone(),
            links,
            state: Mutex::new(state),
            srv_secret,
            tests: tokio::sync::Semaphore::new(MAX_CONCURRENT_TESTS),
            shutdown: CancellationToken::new(),
        });
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(shared.clone()));
        tasks.spawn(period_loop(shared.clone()));
        if config.measure.enabled {
            let server = measure::MeasureServer::start(local_addr.ip(), config.measure.bytes)
                .await
                .map_err(|source| AuthorityError::Io {
                    path: PathBuf::from("measurement server"),
                    source,
                })?;
            tasks.spawn(measure_loop(shared.clone(), server));
        }
        info!(
            node_id = %shared.identity.node_id(),
            %local_addr,
            authorities = config.network.authorities.len(),
            period_secs = config.period,
            "directory authority listening"
        );
        Ok(Authority {
            shared,
            local_addr,
            tasks,
        })
    }

    /// The bound QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This authority's Ed25519 identity key (32 bytes), as the network file lists it.
    pub fn identity(&self) -> [u8; 32] {
        self.shared.identity.public()
    }

    /// This authority's NodeId.
    pub fn node_id(&self) -> NodeId {
        self.shared.identity.node_id()
    }

    /// The newest consensus signed by a majority, if any.
    pub fn consensus(&self) -> Option<SignedConsensus> {
        self.shared.state().current.as_ref().map(|(s, _)| s.clone())
    }

    /// What the authority knows now, for its metrics: relays it holds descriptors of and
    /// the newest consensus signed by a majority.
    pub fn status(&self) -> AuthorityStatus {
        let state = self.shared.state();
        AuthorityStatus {
            relays_known: state.relays.len(),
            consensus: state.current.as_ref().map(|(signed, c)| CurrentConsensus {
                valid_after: c.valid_after,
                fresh_until: c.fresh_until,
                valid_until: c.valid_until,
                relays: c.relays.len(),
                signatures: signed.signatures.len(),
            }),
        }
    }

    /// Stop serving and end the tasks, waiting at most `within`.
    pub async fn shutdown(&self, within: Duration) {
        self.shared.shutdown.cancel();
        self.shared.endpoint.close();
        self.tasks.close();
        let _ = tokio::time::timeout(within, self.tasks.wait()).await;
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared.endpoint.close();
    }
}

fn load_srv_secret(dir: &Path) -> Result<Zeroizing<[u8; 32]>, AuthorityError> {
    let path = dir.join(SRV_SECRET_FILE);
    let io = |source| AuthorityError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(b) => {
            let b = Zeroizing::new(b);
            anonnet_state::check_private_file(&path)
                .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, e)))?;
            let arr: [u8; 32] = b.as_slice().try_into().map_err(|_| {
                io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not 32 bytes",
                ))
            })?;
            Ok(Zeroizing::new(arr))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = anonnet_crypto::random_bytes::<32>()
                .map_err(|_| io(std::io::Error::other("no randomness for the SRV secret")))?;
            anonnet_state::create_atomically(&path, &secret).map_err(io)?;
            Ok(Zeroizing::new(secret))
        }
        Err(e) => Err(io(e)),
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => i,
            () = shared.shutdown.cancelled() => break,
        };
        match incoming {
            None => break,
            Some(Err(e)) => debug!("link handshake failed: {e}"),
            Some(Ok(link)) => {
                tokio::spawn(serve_link(shared.clone(), link));
            }
        }
    }
}

async fn serve_link(shared: Arc<Shared>, link: Link) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS_PER_LINK));
    let peer = link.peer_node_id();
    // Only authorities send large messages (votes); relays' uploads and clients' requests
    // are small, so nobody else makes us allocate megabytes.
    let from_authority = peer.is_some_and(|p| {
        shared
            .config
            .network
            .authorities
            .iter()
            .any(|a| a.node_id() == p)
    });
    let max = if from_authority {
        MAX_MESSAGE_LEN
    } else {
        MAX_SMALL_REQUEST
    };
    loop {
        let stream = tokio::select! {
            s = link.accept_bi() => s,
            () = shared.shutdown.cancelled() => break,
        };
        let Ok((mut send, mut recv)) = stream else {
            break;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let _ = send.reset(quinn::VarInt::from_u32(0));
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let request = async {
                let mut tag = [0u8; 1];
                recv.read_exact(&mut tag).await.ok()?;
                if tag[0] != DIR_STREAM_TAG {
                    return None;
                }
                rpc::read_frame(&mut recv, max).await.ok()
            };
            let Ok(Some(bytes)) = tokio::time::timeout(REQUEST_TIMEOUT, request).await else {
                let _ = send.reset(quinn::VarInt::from_u32(0));
                return;
            };
            let answer = match DirMessage::decode(&bytes) {
                Ok(m) => handle(&shared, peer, m).await,
                Err(e) => DirMessage::Refused(format!("malformed request: {e}")),
            };
            if let Ok(out) = answer.encode() {
                let _ = rpc::write_frame(&mut send, &out).await;
            }
        });
    }
}

/// Answer one directory request from `peer` (the NodeId its certificate proved; `None`
/// for a client).
async fn handle(shared: &Arc<Shared>, peer: Option<NodeId>, msg: DirMessage) -> DirMessage {
    match msg {
        DirMessage::GetConsensus => {
            let now = now_unix();
            let st = shared.state();
            DirMessage::Consensus(
                st.current
                    .as_ref()
                    .filter(|(_, c)| now < c.valid_until)
                    .map(|(s, _)| s.clone()),
            )
        }
        DirMessage::Upload(signed) => upload(shared, peer, signed).await,
        DirMessage::RegisterName(record) => register_name(shared, &record),
        DirMessage::PostVote(v) => post_vote(shared, peer, v),
        DirMessage::GetVote(valid_after) => {
            let own = shared.identity.public();
            let st = shared.state();
            DirMessage::Vote(
                st.votes
                    .get(&valid_after)
                    .and_then(|m| m.get(&own))
                    .map(|(s, _)| s.clone()),
            )
        }
        DirMessage::PostSignature { digest, signature } => {
            // Only an authority posts its own signature; anyone else could fill the early
            // signatures with junk.
            if peer != Some(NodeId::from_identity(&signature.authority)) {
                return DirMessage::Refused(
                    "a signature is posted by the authority that made it".into(),
                );
            }
            add_signature(shared, digest, signature);
            DirMessage::Ok
        }
        _ => DirMessage::Refused("not a request".into()),
    }
}

async fn upload(
    shared: &Arc<Shared>,
    peer: Option<NodeId>,
    signed: anonnet_wire::SignedDescriptor,
) -> DirMessage {
    let now = now_unix();
    let relay = match verify_descriptor(&signed, now) {
        Ok(v) => v,
        Err(e) => {
            return DirMessage::Uploaded {
                status: UploadStatus::Rejected,
                reason: format!("descriptor refused: {e}"),
            }
        }
    };
    if peer != Some(relay.node_id) {
        return DirMessage::Uploaded {
            status: UploadStatus::Rejected,
            reason: "uploaded over a link that does not prove the descriptor's NodeId".into(),
        };
    }
    {
        let mut st = shared.state();
        if !st.relays.contains_key(&relay.node_id) && st.relays.len() >= MAX_RELAYS {
            return DirMessage::Uploaded {
                status: UploadStatus::Rejected,
                reason: "the authority holds as many relays as it can".into(),
            };
        }
        // A relay uploading again soon after a test, at the same address, gets that test's
        // result: uploads cannot make the authority dial out faster than this.
        if let Some(k) = st.relays.get_mut(&relay.node_id) {
            let same_addr = k.relay.descriptor.addresses == relay.descriptor.addresses;
            if same_addr && now.saturating_sub(k.history.last_test) < MIN_UPLOAD_RETEST_SECS {
                if k.relay.descriptor.published <= relay.descriptor.published {
                    k.relay = relay.clone();
                    k.signed = signed.clone();
                }
                let addr = relay.descriptor.addresses.first().copied();
                let at = addr.map_or_else(|| "?".to_string(), |a| a.to_string());
                return if k.history.reachable {
                    DirMessage::Uploaded {
                        status: UploadStatus::Reachable,
                        reason: format!("reached at {at} (recent test)"),
                    }
                } else {
                    DirMessage::Uploaded {
                        status: UploadStatus::NotReachable,
                        reason: format!("not reached at {at} in a test a moment ago"),
                    }
                };
            }
        }
    }
    let result = test_reachability(shared, &relay).await;
    let now = now_unix();
    let reachable = result.is_ok();
    {
        let mut st = shared.state();
        match st.relays.get_mut(&relay.node_id) {
            Some(k) => {
                k.history.record(now, reachable, &shared.config.thresholds);
                if k.relay.descriptor.published <= relay.descriptor.published {
                    k.relay = relay.clone();
                    k.signed = signed.clone();
                }
            }
            None => {
                st.relays.insert(
                    relay.node_id,
                    KnownRelay {
                        relay: relay.clone(),
                        signed: signed.clone(),
                        history: RelayHistory::new(now, reachable),
                        measured: None,
                        measure_failed: None,
                    },
                );
            }
        }
    }
    match result {
        Ok(addr) => DirMessage::Uploaded {
            status: UploadStatus::Reachable,
            reason: format!("reached at {addr}"),
        },
        Err(why) => DirMessage::Uploaded {
            status: UploadStatus::NotReachable,
            reason: why,
        },
    }
}

/// Dial the relay's advertised address with a fresh link; its certificate must prove the
/// relay's NodeId.
async fn test_reachability(
    shared: &Shared,
    relay: &VerifiedDescriptor,
) -> Result<SocketAddr, String> {
    let Some(addr) = relay.descriptor.addresses.first().copied() else {
        return Err("no address".into());
    };
    let Ok(_slot) = shared.tests.acquire().await else {
        return Err("authority shutting down".into());
    };
    match tokio::time::timeout(
        REACHABILITY_TIMEOUT,
        shared.endpoint.connect(addr, relay.node_id),
    )
    .await
    {
        Ok(Ok(link)) => {
            link.close();
            Ok(addr)
        }
        Ok(Err(e)) => Err(format!("dial from the authority failed: {e}")),
        Err(_) => Err(format!(
            "no QUIC handshake within {}s",
            REACHABILITY_TIMEOUT.as_secs()
        )),
    }
}

fn post_vote(shared: &Shared, peer: Option<NodeId>, signed: SignedVote) -> DirMessage {
    let vote = match signed.verify(&shared.config.network) {
        Ok(v) => v,
        Err(e) => return DirMessage::Refused(format!("vote refused: {e}")),
    };
    if peer != Some(NodeId::from_identity(&vote.authority)) {
        return DirMessage::Refused("vote posted by another node than its authority".into());
    }
    let now = now_unix();
    let period = shared.config.period;
    let current = now - now % period;
    if vote.valid_after + period < current || vote.valid_after > current + period {
        return DirMessage::Refused("vote for a period not being voted on".into());
    }
    let mut st = shared.state();
    st.votes
        .entry(vote.valid_after)
        .or_default()
        .entry(vote.authority)
        .or_insert((signed, vote));
    DirMessage::Ok
}

/// Take a signature on the consensus with `digest`: into the pending consensus it signs
/// (promoting it to current once a majority signed), or kept for a little while when that
/// consensus is not computed yet.
fn add_signature(shared: &Shared, digest: [u8; 32], sig: ConsensusSignature) {
    let network = &shared.config.network;
    if network.authority(&sig.authority).is_none() {
        return;
    }
    let mut st = shared.state();
    let pending = st.pending.values_mut().find(|p| p.digest == digest);
    match pending {
        Some(p) => {
            if !p.signed.signature_valid(&sig, network) {
                return;
            }
            p.signed.add_signature(sig);
            let p = p.clone();
            promote(shared, &mut st, &p);
        }
        None => {
            if st.early_signatures.len() < MAX_EARLY_SIGNATURES {
                st.early_signatures.push((digest, sig));
            }
        }
    }
}

/// Make `p` the current consensus when a majority signed it and it is newer.
fn promote(shared: &Shared, st: &mut State, p: &Pending) {
    let network = &shared.config.network;
    let signers = p.signed.valid_signers(network).len();
    if signers < network.majority() {
        return;
    }
    let newer = st.current.as_ref().is_none_or(|(s, c)| {
        c.valid_after < p.consensus.valid_after
            || (c.valid_after == p.consensus.valid_after
                && s.valid_signers(network).len() < signers)
    });
    if !newer {
        return;
    }
    let first = st
        .current
        .as_ref()
        .is_none_or(|(_, c)| c.valid_after < p.consensus.valid_after);
    st.current = Some((p.signed.clone(), p.consensus.clone()));
    let path = shared.config.data_dir.join(CONSENSUS_FILE);
    if let Err(e) = anonnet_state::write_atomically(&path, &p.signed.encode()) {
        anonnet_net::warn_limited!("cannot save {}: {e}", path.display());
    }
    if first {
        info!(
            relays = p.consensus.relays.len(),
            signatures = signers,
            authorities = network.authorities.len(),
            valid_after = p.consensus.valid_after,
            digest = %hex::encode(p.digest),
            "consensus published"
        );
    }
}

/// Re-test every relay whose last test is older than half a period (every relay when
/// `all`).
async fn retest_all(shared: &Arc<Shared>, all: bool) {
    let half = shared.config.period / 2;
    let now = now_unix();
    let due: Vec<VerifiedDescriptor> = shared
        .state()
        .relays
        .values()
        .filter(|k| all || k.history.last_test + half <= now)
        .map(|k| k.relay.clone())
        .collect();
    let handles: Vec<_> = due
        .into_iter()
        .map(|relay| {
            let shared = shared.clone();
            tokio::spawn(async move {
                let ok = test_reachability(&shared, &relay).await.is_ok();
                (relay.node_id, ok)
            })
        })
        .collect();
    for h in handles {
        if let Ok((id, ok)) = h.await {
            let now = now_unix();
            let mut st = shared.state();
            if let Some(k) = st.relays.get_mut(&id) {
                k.history.record(now, ok, &shared.config.thresholds);
            }
        }
    }
}

/// The relays this authority votes on, with their address: at most `max` per IP address
/// (Tor's AuthDirMaxServersPerAddr), those known longest, ties by NodeId; `max = 0`: no
/// limit. Cheap identities on one address cannot crowd the consensus. One sort, so
/// O(n log n) in the relays known.
fn listed_per_ip(all: &HashMap<NodeId, KnownRelay>, max: usize) -> Vec<(&KnownRelay, SocketAddr)> {
    let mut ranked: Vec<(&KnownRelay, SocketAddr)> = all
        .values()
        .filter_map(|k| Some((k, *k.relay.descriptor.addresses.first()?)))
        .collect();
    if max == 0 {
        return ranked;
    }
    ranked.sort_by_key(|(k, a)| (a.ip(), k.history.first_seen, k.relay.node_id));
    let mut out = Vec::with_capacity(ranked.len());
    let mut run: Option<(std::net::IpAddr, usize)> = None;
    for (k, a) in ranked {
        let n = match run {
            Some((ip, n)) if ip == a.ip() => n + 1,
            _ => 1,
        };
        run = Some((a.ip(), n));
        if n <= max {
            out.push((k, a));
        }
    }
    out
}

/// `REGISTER_NAME` (§12.5): a record that verifies (signature, work, validity) registers
/// or renews its name for its owner, first come first served in the order registrations
/// arrive here; the answer is this authority's receipt, or `REFUSED` with the reason.
fn register_name(shared: &Shared, record: &[u8]) -> DirMessage {
    use anonnet_crypto::dark::{sign_receipt, verify_dark_record, DARK_POW_BITS};
    let now = now_unix();
    let record = match anonnet_wire::hs::DarkRecord::decode(record) {
        Ok(r) => r,
        Err(e) => return DirMessage::Refused(format!("malformed name record: {e}")),
    };
    if let Err(e) = verify_dark_record(&record, now, DARK_POW_BITS) {
        return DirMessage::Refused(e.to_string());
    }
    let registered = shared
        .state()
        .names
        .register(&record.name, record.owner, now);
    let registration = match registered {
        Ok(r) => r,
        Err(e) => return DirMessage::Refused(e.to_string()),
    };
    if registration.registered == now {
        debug!("name registered");
    }
    save_names(shared);
    DirMessage::NameReceipt(sign_receipt(
        &shared.identity,
        &shared.config.network.id(),
        &record.name,
        &record.owner,
        registration.expires,
    ))
}

/// Write the name registry to [`NAMES_FILE`].
fn save_names(shared: &Shared) {
    let text = shared.state().names.encode();
    let path = shared.config.data_dir.join(NAMES_FILE);
    if let Err(e) = anonnet_state::write_atomically(&path, text.as_bytes()) {
        anonnet_net::warn_limited!("cannot save {}: {e}", path.display());
    }
}

/// Write the known relays' descriptors to [`DESCRIPTORS_FILE`].
fn save_descriptors(shared: &Shared) {
    let text: String = shared
        .state()
        .relays
        .values()
        .filter_map(|k| k.signed.to_base64().ok())
        .map(|l| l + "\n")
        .collect();
    let path = shared.config.data_dir.join(DESCRIPTORS_FILE);
    if let Err(e) = anonnet_state::write_atomically(&path, text.as_bytes()) {
        anonnet_net::warn_limited!("cannot save {}: {e}", path.display());
    }
}

/// True when the authority votes the relay an exit: its descriptor has the EXIT flag and at
/// least one port range (§14.3).
fn is_voted_exit(d: &anonnet_wire::RelayDescriptor) -> bool {
    d.is_exit() && !d.exit_ports.is_empty()
}

/// A relay's entry in this authority's vote (§14.3, §14.5): identity, onion key, handshake
/// types and exit ports (exits only) from its descriptor, `address` (the one tested), and
/// this authority's `flags` and `weight`.
fn vote_entry(
    d: &anonnet_wire::RelayDescriptor,
    address: SocketAddr,
    flags: RelayFlags,
    weight: u32,
) -> RelayEntry {
    RelayEntry {
        identity: d.identity,
        onion_key: d.onion_key,
        handshakes: d.handshakes,
        address,
        flags,
        weight,
        exit_ports: if is_voted_exit(d) {
            d.exit_ports.clone()
        } else {
            Vec::new()
        },
    }
}

/// This authority's vote for the period starting at `valid_after`.
fn make_vote(shared: &Shared, valid_after: u64) -> Vote {
    let period = shared.config.period;
    let t = &shared.config.thresholds;
    let mut st = shared.state();
    // Drop relays whose descriptor expired.
    st.relays
        .retain(|_, k| k.relay.descriptor.expires > valid_after);
    let mut measured: Vec<u32> = st
        .relays
        .values()
        .filter_map(|k| k.measured.map(|(bw, _)| bw))
        .collect();
    measured.sort_unstable();
    let median = measured
        .get(measured.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0);
    let per_ip = shared.config.max_relays_per_ip;
    let mut relays: Vec<RelayEntry> = listed_per_ip(&st.relays, per_ip)
        .into_iter()
        .map(|(k, address)| {
            let d = &k.relay.descriptor;
            let advertised = d.bandwidth.max(1);
            // Without measurement (switched off), the self-reported figure stands in for
            // Guard's bandwidth test, as in a Tor network without bandwidth authorities.
            let (weight, bw) = match k.measured {
                Some((bw, _)) => (bw.min(advertised).max(1), bw),
                None if !shared.config.measure.enabled => {
                    (UNMEASURED_WEIGHT.min(advertised), advertised)
                }
                None => (UNMEASURED_WEIGHT.min(advertised), 0),
            };
            let exit = is_voted_exit(d);
            let mut flags = k.history.flags(valid_after, t, exit, bw, median);
            if !exit {
                flags = RelayFlags(flags.0 & !RelayFlags::EXIT.0);
            }
            vote_entry(d, address, flags, weight)
        })
        .collect();
    relays.sort_by_key(|e| e.identity);
    Vote {
        network_id: shared.config.network.id(),
        authority: shared.identity.public(),
        valid_after,
        // Fresh until the next consensus exists (its votes and signatures take twice the
        // vote delay after the next boundary), so clients that fetch at `fresh_until`
        // find it and do not ask around in vain.
        fresh_until: valid_after + period + 2 * shared.config.vote_delay.max(1),
        valid_until: valid_after + 3 * period,
        commit: srv::commit(&srv::reveal(&shared.srv_secret, valid_after + period)),
        reveal: Some(srv::reveal(&shared.srv_secret, valid_after)),
        relays,
    }
}

/// Send one directory message to another authority.
async fn ask(
    shared: &Shared,
    to: &anonnet_dir::AuthorityEntry,
    msg: &DirMessage,
) -> Option<DirMessage> {
    let link = shared.links.get(to.address, to.node_id()).await.ok()?;
    let body = msg.encode().ok()?;
    let answer = rpc::request(
        &link,
        DIR_STREAM_TAG,
        &body,
        MAX_MESSAGE_LEN,
        REQUEST_TIMEOUT,
    )
    .await
    .ok()?;
    DirMessage::decode(&answer).ok()
}

fn others(shared: &Shared) -> Vec<anonnet_dir::AuthorityEntry> {
    let own = shared.identity.public();
    shared
        .config
        .network
        .authorities
        .iter()
        .filter(|a| a.identity != own)
        .cloned()
        .collect()
}

/// Send `msg` to every other authority at once, not waiting for answers.
fn broadcast(shared: &Arc<Shared>, msg: DirMessage) {
    for a in others(shared) {
        let shared = shared.clone();
        let msg = msg.clone();
        tokio::spawn(async move {
            if ask(&shared, &a, &msg).await.is_none() {
                debug!(authority = %a.name, "authority did not answer");
            }
        });
    }
}

async fn sleep_until_unix(t: u64) {
    sleep_until_unix_ms(t.saturating_mul(1000)).await;
}

/// Time from now until the Unix time `t_ms` (milliseconds); zero when past.
fn until_unix_ms(t_ms: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_millis(t_ms).saturating_sub(now)
}

async fn sleep_until_unix_ms(t_ms: u64) {
    tokio::time::sleep(until_unix_ms(t_ms)).await;
}

/// One period after another: re-test, vote, exchange votes, compute, sign, exchange
/// signatures, publish (§14.5).
async fn period_loop(shared: Arc<Shared>) {
    let work = async {
        // Relays remembered from the last run are tested at once (in the background).
        {
            let shared = shared.clone();
            tokio::spawn(async move { retest_all(&shared, true).await });
        }
        loop {
            let period = shared.config.period;
            let now = now_unix();
            let t = (now / period + 1) * period;
            sleep_until_unix(t).await;
            run_period(&shared, t).await;
        }
    };
    tokio::select! {
        () = work => {}
        () = shared.shutdown.cancelled() => {}
    }
}

/// One period (§14.5). Nothing on its way waits for a peer longer than the period's
/// deadlines: votes are made at once from what the reachability tests found so far (the
/// tests run in the background and feed the next vote), missing votes are fetched from
/// all peers at once until the vote deadline, and a dead authority costs no time.
async fn run_period(shared: &Arc<Shared>, t: u64) {
    let vote_delay = shared.config.vote_delay.max(1);
    save_descriptors(shared);
    let vote = make_vote(shared, t);
    let signed = match vote.sign(&shared.identity) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot sign our vote: {e}");
            return;
        }
    };
    {
        let mut st = shared.state();
        st.votes
            .entry(t)
            .or_default()
            .insert(vote.authority, (signed.clone(), vote));
        // Forget periods no longer needed.
        let keep_from = t.saturating_sub(2 * shared.config.period);
        st.votes.retain(|va, _| *va >= keep_from);
        st.pending.retain(|va, _| *va >= keep_from);
    }
    broadcast(shared, DirMessage::PostVote(signed));
    // Test the relays again for the next vote, in the background.
    {
        let shared = shared.clone();
        tokio::spawn(async move { retest_all(&shared, false).await });
    }
    // Halfway to the deadline, fetch the votes still missing, from all peers at once.
    let vote_deadline = t * 1000 + vote_delay * 1000;
    sleep_until_unix_ms(t * 1000 + vote_delay * 500).await;
    let missing: Vec<anonnet_dir::AuthorityEntry> = {
        let st = shared.state();
        let have = st.votes.get(&t);
        others(shared)
            .into_iter()
            .filter(|a| have.is_none_or(|m| !m.contains_key(&a.identity)))
            .collect()
    };
    let pulls: Vec<_> = missing
        .into_iter()
        .map(|a| {
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Some(DirMessage::Vote(Some(v))) =
                    ask(&shared, &a, &DirMessage::GetVote(t)).await
                {
                    let _ = post_vote(&shared, Some(a.node_id()), v);
                }
            })
        })
        .collect();
    let _ = tokio::time::timeout(until_unix_ms(vote_deadline), async {
        for p in pulls {
            let _ = p.await;
        }
    })
    .await;
    sleep_until_unix_ms(vote_deadline).await;
    let (votes, previous) = {
        let st = shared.state();
        let votes: Vec<Vote> = st
            .votes
            .get(&t)
            .map(|m| m.values().map(|(_, v)| v.clone()).collect())
            .unwrap_or_default();
        (votes, st.current.as_ref().map(|(_, c)| c.clone()))
    };
    let n_votes = votes.len();
    let consensus = match compute_consensus(&shared.config.network, &votes, previous.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            warn!("no consensus for this period: {e}");
            return;
        }
    };
    let body = match consensus.encode_body() {
        Ok(b) => b,
        Err(e) => {
            warn!("cannot encode the consensus: {e}");
            return;
        }
    };
    let own_sig = Consensus::sign_body(&body, &shared.identity);
    let d = digest(&body);
    {
        let mut st = shared.state();
        let mut signed = SignedConsensus {
            body,
            signatures: vec![own_sig],
        };
        let early: Vec<ConsensusSignature> = st
            .early_signatures
            .iter()
            .filter(|(ed, _)| *ed == d)
            .map(|(_, s)| *s)
            .collect();
        st.early_signatures.retain(|(ed, _)| *ed != d);
        for s in early {
            if signed.signature_valid(&s, &shared.config.network) {
                signed.add_signature(s);
            }
        }
        let p = Pending {
            consensus,
            signed,
            digest: d,
        };
        st.pending.insert(t, p.clone());
        promote(shared, &mut st, &p);
    }
    debug!(
        votes = n_votes,
        valid_after = t,
        "consensus computed and signed"
    );
    broadcast(
        shared,
        DirMessage::PostSignature {
            digest: d,
            signature: own_sig,
        },
    );
    // When our own computation did not gather a majority in time (we missed a vote, or
    // hold another previous consensus), take the majority's from another authority.
    let signature_deadline = vote_deadline + vote_delay * 500;
    sleep_until_unix_ms(signature_deadline).await;
    let have = shared
        .state()
        .current
        .as_ref()
        .is_some_and(|(_, c)| c.valid_after >= t);
    if !have {
        let asks: Vec<_> = others(shared)
            .into_iter()
            .map(|a| {
                let shared = shared.clone();
                tokio::spawn(async move { ask(&shared, &a, &DirMessage::GetConsensus).await })
            })
            .collect();
        let _ = tokio::time::timeout(
            until_unix_ms(signature_deadline + vote_delay * 500),
            async {
                for a in asks {
                    let Ok(Some(DirMessage::Consensus(Some(s)))) = a.await else {
                        continue;
                    };
                    if let Ok(c) = s.verify(&shared.config.network, now_unix()) {
                        if c.valid_after >= t {
                            let p = Pending {
                                digest: s.digest(),
                                consensus: c,
                                signed: s,
                            };
                            let mut st = shared.state();
                            promote(shared, &mut st, &p);
                            return;
                        }
                    }
                }
            },
        )
        .await;
        let still = shared
            .state()
            .current
            .as_ref()
            .is_some_and(|(_, c)| c.valid_after >= t);
        if !still {
            warn!(
                votes = n_votes,
                authorities = shared.config.network.authorities.len(),
                "no consensus signed by a majority for this period yet"
            );
        }
    }
}

/// Measure the relays one after another: those never measured first, then those whose
/// measurement is older than the configured interval.
async fn measure_loop(shared: Arc<Shared>, server: measure::MeasureServer) {
    let Ok(endpoint) = Endpoint::client(SocketAddr::new(server.addr().ip(), 0)) else {
        warn!("cannot open the measurement endpoint; relays stay unmeasured");
        return;
    };
    let links = LinkManager::new(endpoint, 64);
    let cfg = shared.config.measure.clone();
    let work = async {
        loop {
            let now = now_unix();
            let (target, helpers) = {
                let st = shared.state();
                let running: Vec<&KnownRelay> =
                    st.relays.values().filter(|k| k.history.reachable).collect();
                let next = running
                    .iter()
                    .filter(|k| k.measured.is_none_or(|(_, at)| at + cfg.interval <= now))
                    .filter(|k| k.measure_failed.is_none_or(|at| at + cfg.retry <= now))
                    .min_by_key(|k| k.measured.map_or(0, |(_, at)| at + 1))
                    .map(|k| k.relay.clone());
                let helpers: Vec<VerifiedDescriptor> =
                    running.iter().map(|k| k.relay.clone()).collect();
                (next, helpers)
            };
            let Some(target) = target else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let result = measure::measure(&links, &target, &helpers, &server, &cfg).await;
            let now = now_unix();
            if let Some(k) = shared.state().relays.get_mut(&target.node_id) {
                match result {
                    Ok(bw) => {
                        debug!(relay = %target.node_id.short(), bytes_per_sec = bw, "measured");
                        k.measured = Some((bw, now));
                        k.measure_failed = None;
                    }
                    Err(e) => {
                        // Try again after `retry`, not in a tight loop; an older figure
                        // stays as it was.
                        debug!(relay = %target.node_id.short(), "measurement failed: {e}");
                        k.measure_failed = Some(now);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = work => {}
        () = shared.shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonnet_wire::RelayDescriptor;

    fn known(seed: u8, ip: [u8; 4], first_seen: u64) -> (NodeId, KnownRelay) {
        let key = IdentityKey::from_seed(&[seed; 32]);
        let d = RelayDescriptor {
            identity: key.public(),
            onion_key: [seed; 32],
            handshakes: anonnet_wire::HandshakeSet::ALL,
            addresses: vec![SocketAddr::from((ip, 9001))],
            flags: 0,
            exit_ports: Vec::new(),
            bandwidth: 1000,
            published: 1,
            expires: 10_000,
        };
        let signed = anonnet_crypto::sign_descriptor(&key, &d).unwrap();
        let relay = verify_descriptor(&signed, 2).unwrap();
        (
            relay.node_id,
            KnownRelay {
                relay,
                signed,
                history: RelayHistory::new(first_seen, true),
                measured: None,
                measure_failed: None,
            },
        )
    }

    #[test]
    fn only_the_longest_known_relays_of_one_address_are_voted() {
        let mut all = HashMap::new();
        // Five relays on one address, known from t = 10, 20, ... 50; one elsewhere.
        for i in 1..=5u8 {
            let (id, k) = known(i, [203, 0, 113, 7], u64::from(i) * 10);
            all.insert(id, k);
        }
        let (other, k) = known(9, [198, 51, 100, 1], 99);
        all.insert(other, k);
        let voted: Vec<u64> = listed_per_ip(&all, 2)
            .into_iter()
            .map(|(k, _)| k.history.first_seen)
            .collect();
        let mut voted = voted;
        voted.sort_unstable();
        assert_eq!(voted, vec![10, 20, 99]);
        assert_eq!(listed_per_ip(&all, 0).len(), 6);
    }

    #[test]
    fn vote_entry_takes_keys_and_handshake_types_from_the_descriptor() {
        let (_, k) = known(3, [203, 0, 113, 9], 10);
        let mut d = k.relay.descriptor.clone();
        d.handshakes = anonnet_wire::HandshakeSet::NTOR;
        let address = SocketAddr::from(([203, 0, 113, 9], 9001));
        let e = vote_entry(&d, address, RelayFlags::RUNNING, 500);
        assert_eq!(e.handshakes, anonnet_wire::HandshakeSet::NTOR);
        assert_eq!((e.identity, e.onion_key), (d.identity, d.onion_key));
        assert_eq!((e.address, e.weight), (address, 500));
        assert!(e.exit_ports.is_empty());
        let d = k.relay.descriptor;
        assert_eq!(
            vote_entry(&d, address, RelayFlags::RUNNING, 500).handshakes,
            anonnet_wire::HandshakeSet::ALL
        );
    }
}
