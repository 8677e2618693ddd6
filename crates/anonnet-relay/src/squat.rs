//! A deliberately hostile relay for tests (`anonnet testnet --squatting-relays`,
//! `relay.test_squat_dark_name`): it claims a `.dark` name that belongs to someone else,
//! the way a relay operator who changed the code could (`docs/protocol.md` §12.5, §12.6;
//! docs/threat-model.md §2.10a).
//!
//! It makes a record for the name with valid work under a key of its own, back-dated by
//! almost a day (so that, if claimed times were believed, it would be the earliest), and
//! pointing at an address nobody serves. It keeps the record in its own storage (it sets
//! no name authorities, so its storage takes records without receipts and it serves them
//! to every lookup) and sends `STORE` to every DHT node it knows, again every
//! [`SQUAT_INTERVAL`] for [`SQUAT_ROUNDS`] rounds. Honest nodes refuse it for want of the
//! authorities' receipts; clients refuse it when it reaches them anyway.
//!
//! Gives no one a capability a modified relay would not have: everything here uses only
//! the relay's own keys and the public DHT messages.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anonnet_crypto::dark::{dark_key, make_dark_record, DarkName, DARK_POW_BITS};
use anonnet_crypto::hs::ServiceKey;
use anonnet_crypto::IdentityKey;
use anonnet_dht_node::DhtNode;
use anonnet_wire::dht::{DhtMessage, Record, StoreStatus};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Stats;

/// Time between two rounds of `STORE`s (seconds: 3).
pub const SQUAT_INTERVAL: Duration = Duration::from_secs(3);
/// Rounds of `STORE`s before the squatter gives up (40 rounds: 2 minutes).
pub const SQUAT_ROUNDS: u32 = 40;
/// How far back the squatter dates its record (seconds: 23 hours; a record may not live
/// more than 3 days, §12.6).
pub const BACKDATE_SECS: u64 = 23 * 3600;

/// Claim `name` (bare, without `.dark`) as described in the module documentation until
/// `shutdown` or [`SQUAT_ROUNDS`] rounds. Counts `STORE`s sent and accepted in `stats`
/// (`squat_stores_sent`, `squat_stores_accepted`).
pub(crate) async fn squat(
    dht: Arc<DhtNode>,
    name: String,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let Ok(name) = DarkName::parse(&name) else {
        warn!("relay.test_squat_dark_name is not a valid .dark name; not squatting");
        return;
    };
    let (Ok(owner), Ok(service)) = (IdentityKey::generate(), ServiceKey::generate()) else {
        warn!("no randomness for the squatter's keys; not squatting");
        return;
    };
    let now = crate::now_unix();
    let published = now.saturating_sub(BACKDATE_SECS);
    let expires = now + 86_400;
    let key = dark_key(&name);
    let address = service.address();
    let made = tokio::task::spawn_blocking(move || {
        make_dark_record(&owner, &name, &address, published, expires, DARK_POW_BITS)
    })
    .await;
    let Some(record) = made.ok().and_then(|r| Record::dark_name(&r).ok()) else {
        warn!("the squatter's record could not be made");
        return;
    };
    info!("TEST SQUATTER: claiming a .dark name with a back-dated record");
    let rounds = async {
        for _ in 0..SQUAT_ROUNDS {
            // Own storage and the closest nodes a lookup finds, then everyone known.
            let _ = dht.store_record(key, record.clone(), 64).await;
            for contact in dht.contacts() {
                stats.squat_stores_sent.fetch_add(1, Ordering::Relaxed);
                let store = DhtMessage::Store {
                    txid: rand::random(),
                    key,
                    record: record.clone(),
                };
                if let Ok(DhtMessage::Stored {
                    status: StoreStatus::Stored,
                    ..
                }) = dht.request(&contact, store).await
                {
                    stats.squat_stores_accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(SQUAT_INTERVAL).await;
        }
    };
    tokio::select! {
        () = rounds => {}
        () = shutdown.cancelled() => {}
    }
}
