//! The client's consensus (`docs/protocol.md` §14.6): fetched from an authority or a
//! fallback relay at first start, then from the client's own guards over one hop (Tor's
//! directory guards); checked against the network's authorities; the only source of the
//! relays a client builds paths through.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anonnet_crypto::NodeId;
use anonnet_dir::msg::MAX_MESSAGE_LEN;
use anonnet_dir::{Consensus, DirMessage, Network, SignedConsensus, DIR_STREAM_TAG};
use anonnet_net::{rpc, LinkManager};
use serde::Serialize;

/// File in the state directory with the newest verified consensus (its §14.6 encoding).
pub const CONSENSUS_FILE: &str = "consensus";
/// Longest one consensus request may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the status reports about the consensus in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsensusStatus {
    /// Start of validity (Unix seconds).
    pub valid_after: u64,
    /// A newer one is fetched after this (Unix seconds).
    pub fresh_until: u64,
    /// Refused at and after this (Unix seconds).
    pub valid_until: u64,
    /// Relays listed (all flags).
    pub relays: usize,
    /// Valid signatures by distinct authorities of the network.
    pub signatures: usize,
    /// The network's authorities.
    pub authorities: usize,
    /// `BLAKE3(body)`, hex (64 characters): equal on every client of the network that holds
    /// this consensus.
    pub digest: String,
}

/// A consensus the client checked, with what the status needs.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The signed document as received (saved to the state directory).
    pub signed: SignedConsensus,
    /// The decoded consensus.
    pub consensus: Consensus,
    /// Status figures.
    pub status: ConsensusStatus,
}

/// Check `signed` for `network` at `now` (Unix seconds).
///
/// # Errors
/// The [`anonnet_dir::DirError`] of [`SignedConsensus::verify`].
pub fn check(
    signed: SignedConsensus,
    network: &Network,
    now: u64,
) -> Result<Checked, anonnet_dir::DirError> {
    let (consensus, signatures) = signed.verify_counting(network, now)?;
    let status = ConsensusStatus {
        valid_after: consensus.valid_after,
        fresh_until: consensus.fresh_until,
        valid_until: consensus.valid_until,
        relays: consensus.relays.len(),
        signatures,
        authorities: network.authorities.len(),
        digest: hex::encode(signed.digest()),
    };
    Ok(Checked {
        signed,
        consensus,
        status,
    })
}

/// The consensus saved in `state_dir`, when it is still valid at `now`. A file that does
/// not decode is set aside as `consensus.bad` ([`anonnet_state::load`]); one that is only
/// stale stays (the next save replaces it).
pub fn load(state_dir: &Path, network: &Network, now: u64) -> Option<Checked> {
    let signed = anonnet_state::load(&state_dir.join(CONSENSUS_FILE), SignedConsensus::decode)?;
    check(signed, network, now).ok()
}

/// Save `signed` in `state_dir` (atomically: a temporary file, fsync, rename).
///
/// # Errors
/// The I/O error.
pub fn save(state_dir: &Path, signed: &SignedConsensus) -> std::io::Result<()> {
    anonnet_state::write_atomically(&state_dir.join(CONSENSUS_FILE), &signed.encode())
}

/// Ask the node at `addr` (proving `node_id`) for its consensus over one hop.
///
/// # Errors
/// A message: the link, the request or the answer failed, or the node has none.
pub async fn fetch(
    links: &LinkManager,
    addr: SocketAddr,
    node_id: NodeId,
) -> Result<SignedConsensus, String> {
    let link = links.get(addr, node_id).await.map_err(|e| e.to_string())?;
    fetch_on(&link).await
}

/// Ask for the consensus on `link`, a link already open to the node (§14.2: a directory
/// stream), waiting at most [`FETCH_TIMEOUT`].
///
/// # Errors
/// As [`fetch`], but for the link.
pub async fn fetch_on(link: &anonnet_net::Link) -> Result<SignedConsensus, String> {
    let body = DirMessage::GetConsensus
        .encode()
        .map_err(|e| e.to_string())?;
    let answer = rpc::request(link, DIR_STREAM_TAG, &body, MAX_MESSAGE_LEN, FETCH_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    match DirMessage::decode(&answer).map_err(|e| e.to_string())? {
        DirMessage::Consensus(Some(c)) => Ok(c),
        DirMessage::Consensus(None) => Err("it holds no consensus".into()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}
