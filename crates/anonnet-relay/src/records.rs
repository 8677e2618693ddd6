//! The records a relay stores for others, kept across restarts (`docs/protocol.md`
//! §11.7.1): the Kademlia store (relay descriptors, `.dark` records) in `dht-records`, the
//! HSDir store (hidden-service descriptors) in `hsdir-records`. Both are written
//! atomically when they changed (at most every [`RECORDS_SAVE_EVERY`]) and loaded at start,
//! every record checked again as a `STORE` would be.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anonnet_dht::storage::decode_persisted;
use tracing::{info, warn};

use crate::{now_unix, write_atomically, RelayShared};

/// File in the data directory holding the Kademlia store (§11.7.1).
pub const DHT_RECORDS_FILE: &str = "dht-records";
/// File in the data directory holding the HSDir store (§11.7.1, §12.7).
pub const HSDIR_RECORDS_FILE: &str = "hsdir-records";
/// Shortest time between two writes of one records file: 5 s.
pub const RECORDS_SAVE_EVERY: Duration = Duration::from_secs(5);

/// The bytes of `path`; `None` when it does not exist, or (with a warning) when it cannot
/// be read.
fn read(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            warn!("cannot read {}: {e}; starting without it", path.display());
            None
        }
    }
}

/// Move a file that does not parse to `<name>.bad`, so it is neither loaded nor
/// overwritten and can be looked at.
fn set_aside(path: &Path, why: &dyn std::fmt::Display) {
    let aside = path.with_extension("bad");
    warn!(
        "{} is corrupt ({why}); moved to {} and starting without its records",
        path.display(),
        aside.display()
    );
    let _ = std::fs::rename(path, aside);
}

/// Load `dht-records` into the relay's Kademlia store. Call after the name authorities are
/// set, so `.dark` records are checked for their receipts.
pub(crate) fn load_dht_records(shared: &RelayShared, data_dir: &Path) {
    let path = data_dir.join(DHT_RECORDS_FILE);
    let Some(bytes) = read(&path) else { return };
    match shared.dht.load_records(&bytes, now_unix()) {
        Ok(r) => info!(
            read = r.read,
            loaded = r.loaded,
            "loaded stored DHT records"
        ),
        Err(e) => set_aside(&path, &e),
    }
}

/// Load `hsdir-records` into the HSDir store: each descriptor is verified and kept only
/// when this relay is one of its responsible HSDirs under the consensus it holds now.
fn load_hsdir_records(shared: &RelayShared, data_dir: &Path) {
    let path = data_dir.join(HSDIR_RECORDS_FILE);
    let Some(bytes) = read(&path) else { return };
    match decode_persisted(&bytes) {
        Ok(entries) => {
            let read = entries.len();
            let now = now_unix();
            let names = shared.dht.name_authorities();
            let loaded = entries
                .into_iter()
                .filter(|e| e.record.kind == anonnet_wire::dht::RecordKind::HsDescriptor)
                .filter(|e| {
                    anonnet_dht::verify_record_for(&e.key, &e.record, now, names.as_ref()).is_ok()
                })
                .filter(|e| crate::circuit::store_as_hsdir(shared, e.key, e.record.clone(), now))
                .count();
            info!(read, loaded, "loaded stored hidden-service descriptors");
        }
        Err(e) => set_aside(&path, &e),
    }
}

/// A fingerprint of a store's contents: changes whenever a record is stored, replaced or
/// expires.
type Version = (u64, u64, usize);

/// Loads the HSDir store once a consensus is known and writes both files when they changed.
pub(crate) struct RecordKeeper {
    dir: PathBuf,
    dht_saved: Option<Version>,
    hsdir_saved: Option<Version>,
    /// The HSDir file is loaded once the relay holds a consensus (responsibility needs
    /// one); until then it is neither loaded nor overwritten.
    hsdir_loaded: bool,
    next_save: Instant,
}

impl RecordKeeper {
    /// A keeper of the files in `data_dir`; the Kademlia store was loaded already. Its
    /// first tick writes `dht-records` again, without what did not load.
    pub(crate) fn new(data_dir: &Path) -> Self {
        RecordKeeper {
            dir: data_dir.to_path_buf(),
            dht_saved: None,
            hsdir_saved: None,
            hsdir_loaded: false,
            next_save: Instant::now(),
        }
    }

    /// Call about once a second: load the HSDir file when a consensus arrived, and write
    /// the files whose store changed since the last write (at most every
    /// [`RECORDS_SAVE_EVERY`]; `force` ignores that wait, for shutdown).
    pub(crate) fn tick(&mut self, shared: &Arc<RelayShared>, force: bool) {
        let now = now_unix();
        if !self.hsdir_loaded && shared.consensus.placement(now).is_some() {
            load_hsdir_records(shared, &self.dir);
            // Written again at the next save, without what did not load.
            self.hsdir_loaded = true;
            self.hsdir_saved = None;
        }
        if !force && Instant::now() < self.next_save {
            return;
        }
        self.next_save = Instant::now() + RECORDS_SAVE_EVERY;
        let v = dht_version(shared);
        if self.dht_saved != Some(v) {
            if let Some(bytes) = shared.dht.persisted_records(now) {
                match write_atomically(&self.dir.join(DHT_RECORDS_FILE), &bytes) {
                    Ok(()) => self.dht_saved = Some(v),
                    Err(e) => warn!("{e}"),
                }
            }
        }
        let v = hsdir_version(shared);
        if self.hsdir_loaded && self.hsdir_saved != Some(v) {
            let bytes = crate::circuit::lock_hsdir(shared).to_persisted(now);
            match write_atomically(&self.dir.join(HSDIR_RECORDS_FILE), &bytes) {
                Ok(()) => self.hsdir_saved = Some(v),
                Err(e) => warn!("{e}"),
            }
        }
    }
}

fn dht_version(shared: &RelayShared) -> Version {
    let c = shared.dht.storage_counters();
    (c.stored, c.expired, shared.dht.stored_records())
}

fn hsdir_version(shared: &RelayShared) -> Version {
    let store = crate::circuit::lock_hsdir(shared);
    let c = store.counters();
    (c.stored, c.expired, store.len())
}
