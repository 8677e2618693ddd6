//! The relay's hidden-service roles: introduction point and rendezvous point, and DHT
//! requests made on behalf of a circuit. Spec: `docs/protocol.md` §13.
//!
//! Both registries are bounded maps shared by every circuit of the relay; each entry
//! belongs to one circuit and leaves with it. Joining two circuits at a rendezvous point
//! swaps their backward inputs: a `FORWARD` cell that reaches the end of one circuit is
//! handed, unchanged, to the other circuit's backward task, which wraps it in its own layer
//! as if it came from a next hop (§13.5).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use anonnet_wire::relay::COOKIE_LEN;
use tokio::sync::mpsc;

use crate::circuit::Teardown;
use crate::Stats;

/// Where the forward cells of a joined circuit go: the other circuit's backward input and
/// its teardown.
pub(crate) struct Splice {
    pub(crate) backward: mpsc::Sender<crate::circuit::CellBatch>,
    pub(crate) teardown: Arc<Teardown>,
}

/// One introduction-point registration (`ESTABLISH_INTRO`).
pub(crate) struct IntroEntry {
    /// The service circuit that registered.
    pub(crate) circuit: u64,
    /// Messages this relay originates on that circuit (for `INTRODUCE2`).
    pub(crate) out: mpsc::Sender<crate::circuit::OutCell>,
    /// Room for a relay message on that circuit (bytes of the inner area).
    pub(crate) area: usize,
}

/// A client circuit waiting at this rendezvous point (`ESTABLISH_RENDEZVOUS`).
pub(crate) struct RendezvousEntry {
    pub(crate) circuit: u64,
    pub(crate) cell_len: usize,
    /// Messages this relay originates on the client circuit (for `RENDEZVOUS2`).
    pub(crate) out: mpsc::Sender<crate::circuit::OutCell>,
    /// The client circuit's backward input.
    pub(crate) backward: mpsc::Sender<crate::circuit::CellBatch>,
    /// Set when the service arrives: where the client circuit's forward cells go.
    pub(crate) splice: Arc<OnceLock<Splice>>,
    pub(crate) teardown: Arc<Teardown>,
}

/// Why a registration was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The map is at its bound.
    Full,
    /// The cookie is already in use.
    Duplicate,
}

/// The relay's introduction and rendezvous registries with their bounds.
pub(crate) struct HsRegistry {
    intro: Mutex<HashMap<[u8; 32], IntroEntry>>,
    rendezvous: Mutex<HashMap<[u8; COOKIE_LEN], RendezvousEntry>>,
    max_intro: usize,
    max_rendezvous: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl HsRegistry {
    pub(crate) fn new(max_intro: usize, max_rendezvous: usize) -> Self {
        HsRegistry {
            intro: Mutex::new(HashMap::new()),
            rendezvous: Mutex::new(HashMap::new()),
            max_intro,
            max_rendezvous,
        }
    }

    /// Register `auth_key` for a service circuit. A later registration of the same key
    /// (only its holder can sign one) replaces the earlier.
    pub(crate) fn add_intro(
        &self,
        auth_key: [u8; 32],
        entry: IntroEntry,
        stats: &Stats,
    ) -> Result<(), Refused> {
        let mut map = lock(&self.intro);
        if !map.contains_key(&auth_key) && map.len() >= self.max_intro {
            return Err(Refused::Full);
        }
        map.insert(auth_key, entry);
        stats.intro_points.store(map.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Remove `auth_key` if circuit `circuit` still holds it.
    pub(crate) fn remove_intro(&self, auth_key: &[u8; 32], circuit: u64, stats: &Stats) {
        let mut map = lock(&self.intro);
        if map.get(auth_key).is_some_and(|e| e.circuit == circuit) {
            map.remove(auth_key);
        }
        stats.intro_points.store(map.len(), Ordering::Relaxed);
    }

    /// The service circuit registered under `auth_key`: its message queue and area.
    pub(crate) fn intro(
        &self,
        auth_key: &[u8; 32],
    ) -> Option<(mpsc::Sender<crate::circuit::OutCell>, usize)> {
        lock(&self.intro)
            .get(auth_key)
            .map(|e| (e.out.clone(), e.area))
    }

    /// Register a waiting client circuit under `cookie`.
    pub(crate) fn add_rendezvous(
        &self,
        cookie: [u8; COOKIE_LEN],
        entry: RendezvousEntry,
    ) -> Result<(), Refused> {
        let mut map = lock(&self.rendezvous);
        if map.contains_key(&cookie) {
            return Err(Refused::Duplicate);
        }
        if map.len() >= self.max_rendezvous {
            return Err(Refused::Full);
        }
        map.insert(cookie, entry);
        Ok(())
    }

    /// Take the circuit waiting under `cookie` (the service has arrived).
    pub(crate) fn take_rendezvous(&self, cookie: &[u8; COOKIE_LEN]) -> Option<RendezvousEntry> {
        lock(&self.rendezvous).remove(cookie)
    }

    /// Remove `cookie` if circuit `circuit` still waits under it.
    pub(crate) fn remove_rendezvous(&self, cookie: &[u8; COOKIE_LEN], circuit: u64) {
        let mut map = lock(&self.rendezvous);
        if map.get(cookie).is_some_and(|e| e.circuit == circuit) {
            map.remove(cookie);
        }
    }

    /// Circuits waiting at this rendezvous point now.
    #[cfg(test)]
    pub(crate) fn pending_rendezvous(&self) -> usize {
        lock(&self.rendezvous).len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn teardown() -> Arc<Teardown> {
        Arc::new(Teardown::new(CancellationToken::new()))
    }

    #[test]
    fn registries_are_bounded_and_owned_by_their_circuit() {
        let stats = Stats::default();
        let reg = HsRegistry::new(2, 1);
        let (tx, _rx) = mpsc::channel(1);
        let intro = |circuit| IntroEntry {
            circuit,
            out: tx.clone(),
            area: 900,
        };
        reg.add_intro([1; 32], intro(1), &stats).unwrap();
        reg.add_intro([2; 32], intro(2), &stats).unwrap();
        assert_eq!(reg.add_intro([3; 32], intro(3), &stats), Err(Refused::Full));
        // Re-registering a held key replaces it even at the bound.
        reg.add_intro([2; 32], intro(4), &stats).unwrap();
        // Circuit 2 no longer owns key 2: its cleanup leaves it alone.
        reg.remove_intro(&[2; 32], 2, &stats);
        assert!(reg.intro(&[2; 32]).is_some());
        reg.remove_intro(&[2; 32], 4, &stats);
        assert!(reg.intro(&[2; 32]).is_none());
        assert_eq!(stats.intro_points.load(Ordering::Relaxed), 1);

        let (btx, _brx) = mpsc::channel(1);
        let rend = |circuit| RendezvousEntry {
            circuit,
            cell_len: 974,
            out: tx.clone(),
            backward: btx.clone(),
            splice: Arc::new(OnceLock::new()),
            teardown: teardown(),
        };
        reg.add_rendezvous([9; 20], rend(1)).unwrap();
        assert_eq!(
            reg.add_rendezvous([9; 20], rend(2)).err(),
            Some(Refused::Duplicate)
        );
        assert_eq!(
            reg.add_rendezvous([8; 20], rend(3)).err(),
            Some(Refused::Full)
        );
        reg.remove_rendezvous(&[9; 20], 5);
        assert_eq!(reg.pending_rendezvous(), 1);
        assert!(reg.take_rendezvous(&[9; 20]).is_some());
        assert_eq!(reg.pending_rendezvous(), 0);
    }
}
