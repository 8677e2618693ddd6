//! The connection manager: one live link per peer NodeId, reused.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anonnet_crypto::NodeId;
use lru::LruCache;
use tokio::sync::oneshot;

use crate::{Endpoint, Link, NetError};

/// One cached peer's link. The async mutex serialises dials to that peer: a second `get`
/// waits for the first one's dial instead of dialing in parallel.
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// A cached link, and (with [`LinkManager::remember_unreachable`]) the guard of the task
/// that watches it close: dropping the entry (replaced, evicted) ends that task, so it
/// never keeps a forgotten link open.
struct Cached {
    link: Link,
    _watch: Option<oneshot::Sender<()>>,
}

/// Peers found unreachable, by NodeId: the address dialed and when.
type Unreachable = Arc<std::sync::Mutex<LruCache<NodeId, (SocketAddr, Instant)>>>;

/// Keeps at most one live [`Link`] per [`NodeId`] and reuses it; dials when the link is
/// missing or closed.
///
/// Bounded: at most `max_links` peers are cached, in an LRU cache (the `lru` crate, O(1)
/// per operation). Inserting one more evicts the least recently used peer; a link that
/// closed is not used again until it is redialed, so it drifts to that end. Evicting only
/// forgets a link: it stays open while others hold clones of it (circuits on it keep
/// working) and closes when the last clone is dropped.
///
/// With [`LinkManager::remember_unreachable`] (relays), a peer whose dial failed, or whose
/// link closed by QUIC idle timeout (it stopped answering: crashed, or cut off), is not
/// dialed again at the same address for a while: [`LinkManager::get`] fails at once with
/// [`NetError::RecentlyUnreachable`] instead of waiting for another handshake timeout.
pub struct LinkManager {
    endpoint: Endpoint,
    slots: std::sync::Mutex<LruCache<NodeId, Slot>>,
    unreachable: Option<(Duration, Unreachable)>,
}

impl fmt::Debug for LinkManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkManager")
            .field("endpoint", &self.endpoint)
            .field("max_links", &self.slots().cap())
            .field("len", &self.len())
            .finish()
    }
}

impl LinkManager {
    /// A manager dialing from `endpoint` and caching at most `max_links` peers (a value of
    /// 0 is treated as 1).
    pub fn new(endpoint: Endpoint, max_links: usize) -> Self {
        let max_links = NonZeroUsize::new(max_links).unwrap_or(NonZeroUsize::MIN);
        LinkManager {
            endpoint,
            slots: std::sync::Mutex::new(LruCache::new(max_links)),
            unreachable: None,
        }
    }

    /// Remember for `memory` each peer found unreachable (a failed dial, or a link closed
    /// by idle timeout), at most as many peers as links are cached, and do not dial it again
    /// at that address meanwhile (docs/protocol.md §10, "Unreachable peers"). A relay sets
    /// this so that `EXTEND`s towards a neighbour that just died fail at once
    /// (`TRUNCATED` with `ConnectFailed`) and the client tries another path, as C tor's
    /// relays remember failed OR connections. Each link dialed then gets a small task
    /// (spawned by [`LinkManager::get`]) that notes its close reason; the task ends when
    /// the link closes or leaves the cache.
    #[must_use]
    pub fn remember_unreachable(mut self, memory: Duration) -> Self {
        let cap = self.slots().cap();
        self.unreachable = Some((memory, Arc::new(std::sync::Mutex::new(LruCache::new(cap)))));
        self
    }

    /// When `node_id` at `addr` was found unreachable less than the memory ago: that time.
    pub(crate) fn unreachable_since(&self, node_id: &NodeId, addr: SocketAddr) -> Option<Instant> {
        let (memory, map) = self.unreachable.as_ref()?;
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        let &(at, since) = map.peek(node_id)?;
        if since.elapsed() >= *memory {
            map.pop(node_id);
            return None;
        }
        (at == addr).then_some(since)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, LruCache<NodeId, Slot>> {
        // A panic elsewhere while holding the lock leaves the map consistent (every update
        // is a single insert/remove), so a poisoned lock is still usable.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A live link to `node_id`: the cached one if it is still open, otherwise a new one
    /// dialed at `addr` (see [`Endpoint::connect`]). A cached link is reused even if `addr`
    /// differs from the address it was dialed at: the identity is what counts.
    ///
    /// Concurrent calls for the same `node_id` share one dial.
    ///
    /// # Errors
    /// Those of [`Endpoint::connect`]; a failed dial is not cached.
    pub async fn get(&self, addr: SocketAddr, node_id: NodeId) -> Result<Link, NetError> {
        let cell = {
            let mut slots = self.slots();
            // `get_or_insert` marks the peer most recently used, and evicts the least
            // recently used one when a new peer does not fit.
            slots
                .get_or_insert(node_id, || Arc::new(tokio::sync::Mutex::new(None)))
                .clone()
        };

        let mut guard = cell.lock().await;
        if let Some(cached) = guard.as_ref() {
            if !cached.link.is_closed() {
                return Ok(cached.link.clone());
            }
        }
        *guard = None;
        let dialed = match self.unreachable_since(&node_id, addr) {
            Some(since) => Err(NetError::RecentlyUnreachable {
                addr,
                ago: since.elapsed(),
            }),
            None => self.endpoint.connect(addr, node_id).await,
        };
        match dialed {
            Ok(link) => {
                let watch = self.watch(&link, node_id, addr);
                *guard = Some(Cached {
                    link: link.clone(),
                    _watch: watch,
                });
                Ok(link)
            }
            Err(e) => {
                if let (Some((_, map)), NetError::Handshake { .. } | NetError::Connect { .. }) =
                    (&self.unreachable, &e)
                {
                    record(map, node_id, addr);
                }
                drop(guard);
                let mut slots = self.slots();
                let ours = slots
                    .peek(&node_id)
                    .is_some_and(|slot| Arc::ptr_eq(slot, &cell));
                // Leave the slot if someone else is using or dialing it right now.
                if ours && Arc::strong_count(&cell) == 2 {
                    slots.pop(&node_id);
                }
                Err(e)
            }
        }
    }

    /// With the memory on: a task that notes the peer unreachable when `link` closes by
    /// idle timeout; it ends when the returned guard is dropped or the link closes.
    fn watch(&self, link: &Link, node_id: NodeId, addr: SocketAddr) -> Option<oneshot::Sender<()>> {
        let (_, map) = self.unreachable.as_ref()?;
        let map = map.clone();
        let conn = link.connection().clone();
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(async move {
            tokio::select! {
                reason = conn.closed() => {
                    if matches!(reason, quinn::ConnectionError::TimedOut) {
                        record(&map, node_id, addr);
                    }
                }
                _ = stopped => {}
            }
        });
        Some(stop)
    }

    /// The endpoint links are dialed from.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Number of peers cached (0..=`max_links`), counting dials in progress.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// Whether no peer is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Note `node_id` at `addr` unreachable from now.
fn record(map: &Unreachable, node_id: NodeId, addr: SocketAddr) {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .put(node_id, (addr, Instant::now()));
}
