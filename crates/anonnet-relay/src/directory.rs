//! The relay's part of the directory protocol (`docs/protocol.md` §14): upload the signed
//! descriptor to every authority and log what they found, keep the newest consensus and
//! serve it to clients that use this relay as a directory guard.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anonnet_clock::Backoff;
use anonnet_dir::{
    DirMessage, HsDirPlacement, Network, SignedConsensus, UploadStatus, DIR_STREAM_TAG,
};
use anonnet_net::rpc;
use anonnet_net::LinkManager;
use anonnet_wire::SignedDescriptor;
use rand::seq::SliceRandom;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::now_unix;

/// Longest one directory request may take (seconds).
pub const DIR_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failed upload or fetch; doubles up to [`MAX_RETRY`], with
/// jitter ([`Backoff`]).
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Largest directory request a relay reads (bytes).
const MAX_RELAY_REQUEST: usize = 64;
/// File in the data directory holding the newest verified consensus.
pub const CONSENSUS_FILE: &str = "consensus";

/// The newest verified consensus this relay holds, shared by the fetch task and the
/// stream handler.
#[derive(Default)]
pub(crate) struct ConsensusCache {
    current: RwLock<Option<Cached>>,
}

/// A verified consensus with the times the cache decides by (Unix seconds) and the
/// HSDir rings it defines (§12.7).
struct Cached {
    signed: SignedConsensus,
    valid_after: u64,
    valid_until: u64,
    placement: Arc<HsDirPlacement>,
}

impl ConsensusCache {
    /// The cached signed consensus while it is still valid at `now`.
    pub(crate) fn get(&self, now: u64) -> Option<SignedConsensus> {
        let guard = self.current.read().ok()?;
        let c = guard.as_ref()?;
        (now < c.valid_until).then(|| c.signed.clone())
    }

    /// The HSDir rings of the cached consensus while it is valid at `now` (§12.7).
    pub(crate) fn placement(&self, now: u64) -> Option<Arc<HsDirPlacement>> {
        let guard = self.current.read().ok()?;
        let c = guard.as_ref()?;
        (now < c.valid_until).then(|| c.placement.clone())
    }

    /// Keep `signed` (verified, with `c` its decoded body) when it is newer than the
    /// cached one, or the cached one has expired at `now`. True when it was kept.
    fn offer(&self, signed: SignedConsensus, c: &anonnet_dir::Consensus, now: u64) -> bool {
        let Ok(mut g) = self.current.write() else {
            return false;
        };
        let newer = g
            .as_ref()
            .is_none_or(|old| old.valid_until <= now || old.valid_after < c.valid_after);
        if newer {
            *g = Some(Cached {
                signed,
                valid_after: c.valid_after,
                valid_until: c.valid_until,
                placement: Arc::new(HsDirPlacement::from_consensus(c)),
            });
        }
        newer
    }
}

/// Send one directory message to an authority (or relay) and decode the answer.
pub(crate) async fn ask(
    links: &LinkManager,
    addr: std::net::SocketAddr,
    node_id: anonnet_crypto::NodeId,
    msg: &DirMessage,
) -> Result<DirMessage, String> {
    let link = links.get(addr, node_id).await.map_err(|e| e.to_string())?;
    let body = msg.encode().map_err(|e| e.to_string())?;
    let answer = rpc::request(
        &link,
        DIR_STREAM_TAG,
        &body,
        anonnet_dir::msg::MAX_MESSAGE_LEN,
        DIR_REQUEST_TIMEOUT,
    )
    .await
    .map_err(|e| e.to_string())?;
    DirMessage::decode(&answer).map_err(|e| e.to_string())
}

/// Upload the descriptor to every authority whenever it changes (the maintenance task
/// re-signs it hourly) and log one `reachability:` line per round. A round that no
/// authority confirmed is retried with backoff.
pub(crate) async fn upload_descriptors(
    links: Arc<LinkManager>,
    network: Network,
    mut descriptor: watch::Receiver<SignedDescriptor>,
    shutdown: CancellationToken,
) {
    let mut retry = Backoff::new(FIRST_RETRY, MAX_RETRY);
    loop {
        let desc = descriptor.borrow_and_update().clone();
        let addr = anonnet_crypto::verify_descriptor(&desc, now_unix())
            .ok()
            .and_then(|v| v.descriptor.addresses.first().copied());
        let addr_text = addr.map_or_else(|| "?".to_string(), |a| a.to_string());
        let mut rounds = tokio::task::JoinSet::new();
        for a in &network.authorities {
            let links = links.clone();
            let desc = desc.clone();
            let (addr, id) = (a.address, a.node_id());
            rounds.spawn(async move { ask(&links, addr, id, &DirMessage::Upload(desc)).await });
        }
        let answers = tokio::select! {
            a = rounds.join_all() => a,
            () = shutdown.cancelled() => return,
        };
        let k = network.authorities.len();
        let mut confirmed = 0;
        let mut reasons = Vec::new();
        for a in answers {
            match a {
                Ok(DirMessage::Uploaded {
                    status: UploadStatus::Reachable,
                    ..
                }) => confirmed += 1,
                Ok(DirMessage::Uploaded { reason, .. }) | Ok(DirMessage::Refused(reason)) => {
                    reasons.push(reason)
                }
                Ok(other) => reasons.push(format!("unexpected answer {other:?}")),
                Err(e) => reasons.push(format!("authority unreachable: {e}")),
            }
        }
        let wait = if confirmed > 0 {
            info!("reachability: reachable at {addr_text} (confirmed by {confirmed} of {k} authorities)");
            retry.reset();
            None
        } else {
            reasons.dedup();
            warn!(
                "reachability: NOT reachable at {addr_text}: {}",
                reasons.join("; ")
            );
            Some(retry.next_delay())
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = descriptor.changed() => if changed.is_err() { return },
            () = sleep_opt(wait) => {}
        }
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Fetch the consensus from the authorities (in random order) whenever the cached one is
/// no longer fresh, verify it and keep it for clients. Warns once when `onion_grace` (the
/// time a replaced onion key is still answered) is too short for the network's consensus
/// validity ([`crate::onion_keys::min_grace_for_consensus`]).
pub(crate) async fn fetch_consensus(
    links: Arc<LinkManager>,
    network: Network,
    cache: Arc<ConsensusCache>,
    data_dir: std::path::PathBuf,
    onion_grace: Duration,
    shutdown: CancellationToken,
) {
    let mut grace_warned = false;
    let mut check_grace = |c: &anonnet_dir::Consensus| {
        let validity = Duration::from_secs(c.valid_until.saturating_sub(c.valid_after));
        let needed = crate::onion_keys::min_grace_for_consensus(validity);
        if onion_grace < needed && !grace_warned {
            grace_warned = true;
            warn!(
                grace_secs = onion_grace.as_secs(),
                needed_secs = needed.as_secs(),
                "the onion key grace is shorter than this network's consensuses need: \
                 clients may build circuits with a replaced onion key after this relay \
                 stopped answering it; raise limits.onion_key_grace_days"
            );
        }
    };
    let file = data_dir.join(CONSENSUS_FILE);
    // A cache: one that does not decode is set aside (`consensus.bad`) and fetched again.
    if let Some(c) = anonnet_state::load(&file, SignedConsensus::decode) {
        let now = now_unix();
        if let Ok(v) = c.verify(&network, now) {
            check_grace(&v);
            cache.offer(c, &v, now);
        }
    }
    let mut retry = Backoff::new(FIRST_RETRY, MAX_RETRY);
    loop {
        let mut order: Vec<_> = network.authorities.clone();
        order.shuffle(&mut rand::rng());
        let mut next = None;
        for a in &order {
            let fetched = tokio::select! {
                r = ask(&links, a.address, a.node_id(), &DirMessage::GetConsensus) => r,
                () = shutdown.cancelled() => return,
            };
            let Ok(DirMessage::Consensus(Some(signed))) = fetched else {
                debug!(authority = %a.name, "no consensus from this authority");
                continue;
            };
            let now = now_unix();
            match signed.verify(&network, now) {
                Ok(c) if c.fresh_until > now => {
                    check_grace(&c);
                    let bytes = signed.encode();
                    if cache.offer(signed, &c, now) {
                        if let Err(e) = crate::write_atomically(&file, &bytes) {
                            anonnet_net::warn_limited!("{e}");
                        }
                        debug!(relays = c.relays.len(), "consensus cached");
                    }
                    next = Some(c.fresh_until);
                    break;
                }
                Ok(_) => debug!(authority = %a.name, "consensus no longer fresh"),
                Err(e) => debug!(authority = %a.name, "consensus refused: {e}"),
            }
        }
        let wait = match next {
            Some(fresh_until) => {
                retry.reset();
                Duration::from_secs(fresh_until.saturating_sub(now_unix()))
                    + Duration::from_millis(rand::random_range(500..1500))
            }
            None => retry.next_delay(),
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Answer one directory request on a relay: `GET_CONSENSUS` from the cache, anything
/// else `REFUSED` (only authorities take uploads, votes and signatures).
pub(crate) async fn serve_dir_stream(
    cache: &ConsensusCache,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    // A relay only answers GET_CONSENSUS (one byte): anything long is refused unread.
    let Ok(Ok(request)) = tokio::time::timeout(
        DIR_REQUEST_TIMEOUT,
        rpc::read_frame(&mut recv, MAX_RELAY_REQUEST),
    )
    .await
    else {
        return;
    };
    let answer = match DirMessage::decode(&request) {
        Ok(DirMessage::GetConsensus) => DirMessage::Consensus(cache.get(now_unix())),
        Ok(_) => DirMessage::Refused("not a directory authority".into()),
        Err(e) => DirMessage::Refused(format!("malformed request: {e}")),
    };
    if let Ok(bytes) = answer.encode() {
        let _ = rpc::write_frame(&mut send, &bytes).await;
    }
}
