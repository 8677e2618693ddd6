//! The connection manager: one live link per peer NodeId, reused.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anonnet_crypto::NodeId;

use crate::{Endpoint, Link, NetError};

/// One cached peer. The async mutex serialises dials to that peer: a second `get` waits
/// for the first one's dial instead of dialing in parallel.
struct Slot {
    link: Arc<tokio::sync::Mutex<Option<Link>>>,
    /// Value of `LinkManager::clock` at the last `get`; the smallest is evicted first.
    last_used: u64,
}

/// Keeps at most one live [`Link`] per [`NodeId`] and reuses it; dials when the link is
/// missing or closed.
///
/// Bounded: at most `max_links` peers are cached. Inserting one more evicts a closed link
/// if there is one, else the least recently used. Evicting only forgets a link: it stays
/// open while others hold clones of it (circuits on it keep working) and closes when the
/// last clone is dropped.
pub struct LinkManager {
    endpoint: Endpoint,
    max_links: usize,
    slots: std::sync::Mutex<HashMap<NodeId, Slot>>,
    clock: AtomicU64,
}

impl fmt::Debug for LinkManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkManager")
            .field("endpoint", &self.endpoint)
            .field("max_links", &self.max_links)
            .field("len", &self.len())
            .finish()
    }
}

impl LinkManager {
    /// A manager dialing from `endpoint` and caching at most `max_links` peers (a value of
    /// 0 is treated as 1).
    pub fn new(endpoint: Endpoint, max_links: usize) -> Self {
        LinkManager {
            endpoint,
            max_links: max_links.max(1),
            slots: std::sync::Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Slot>> {
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
            let now = self.clock.fetch_add(1, Ordering::Relaxed);
            let mut slots = self.slots();
            let cell = match slots.get_mut(&node_id) {
                Some(slot) => {
                    slot.last_used = now;
                    slot.link.clone()
                }
                None => {
                    if slots.len() >= self.max_links {
                        evict_one(&mut slots);
                    }
                    let cell = Arc::new(tokio::sync::Mutex::new(None));
                    slots.insert(
                        node_id,
                        Slot {
                            link: cell.clone(),
                            last_used: now,
                        },
                    );
                    cell
                }
            };
            cell
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
                    .get(&node_id)
                    .is_some_and(|slot| Arc::ptr_eq(&slot.link, &cell));
                // Leave the slot if someone else is using or dialing it right now.
                if ours && Arc::strong_count(&cell) == 2 {
                    slots.remove(&node_id);
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

/// Remove one slot: a closed link if any, else the least recently used.
fn evict_one(slots: &mut HashMap<NodeId, Slot>) {
    let closed = slots.iter().find_map(|(id, slot)| {
        // A slot locked right now is being dialed or read: not closed.
        let guard = slot.link.try_lock().ok()?;
        guard.as_ref().is_none_or(Link::is_closed).then_some(*id)
    });
    let victim = closed.or_else(|| {
        slots
            .iter()
            .min_by_key(|(_, slot)| slot.last_used)
            .map(|(id, _)| *id)
    });
    if let Some(id) = victim {
        slots.remove(&id);
    }
}
