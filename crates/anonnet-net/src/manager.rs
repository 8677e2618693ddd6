//! The connection manager: one live link per peer NodeId, reused.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use anonnet_crypto::NodeId;
use lru::LruCache;

use crate::{Endpoint, Link, NetError};

/// One cached peer's link. The async mutex serialises dials to that peer: a second `get`
/// waits for the first one's dial instead of dialing in parallel.
type Slot = Arc<tokio::sync::Mutex<Option<Link>>>;

/// Keeps at most one live [`Link`] per [`NodeId`] and reuses it; dials when the link is
/// missing or closed.
///
/// Bounded: at most `max_links` peers are cached, in an LRU cache (the `lru` crate, O(1)
/// per operation). Inserting one more evicts the least recently used peer; a link that
/// closed is not used again until it is redialed, so it drifts to that end. Evicting only
/// forgets a link: it stays open while others hold clones of it (circuits on it keep
/// working) and closes when the last clone is dropped.
pub struct LinkManager {
    endpoint: Endpoint,
    slots: std::sync::Mutex<LruCache<NodeId, Slot>>,
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
        }
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
        if let Some(link) = guard.as_ref() {
            if !link.is_closed() {
                return Ok(link.clone());
            }
        }
        *guard = None;
        match self.endpoint.connect(addr, node_id).await {
            Ok(link) => {
                *guard = Some(link.clone());
                Ok(link)
            }
            Err(e) => {
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
