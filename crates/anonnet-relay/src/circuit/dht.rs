//! DHT requests made through a circuit (§13.6).

use super::*;
use crate::HsDirBehaviour;

impl ForwardTask {
    /// `DHT_FETCH` / `DHT_STORE` / `NAME_REGISTER` (§13.6, §12.5): run the request in its
    /// own task (bounded per circuit and per relay) and answer with `DHT_RESULT` or
    /// `NAME_RECEIPTS`.
    pub(super) async fn dht_request(&mut self, request: DhtRequest) {
        let unavailable = if matches!(request, DhtRequest::RegisterName { .. }) {
            RelayMsg::NameReceipts {
                asked: 0,
                refused: 0,
                receipts: Vec::new(),
            }
        } else {
            RelayMsg::DhtResult {
                status: DHT_UNAVAILABLE,
                index: 0,
                count: 0,
                kind: 0,
                body: Bytes::new(),
            }
        };
        let permits = (
            self.hs.dht_requests.clone().try_acquire_owned(),
            self.shared.dht_requests.clone().try_acquire_owned(),
        );
        let (Ok(circuit_slot), Ok(relay_slot)) = permits else {
            self.send_back(StreamId::CIRCUIT, unavailable).await;
            return;
        };
        let shared = self.shared.clone();
        let out = self.out.clone();
        let token = self.teardown.token.clone();
        let area = BACKWARD_MESSAGE_MAX;
        tokio::spawn(async move {
            let _slots = (circuit_slot, relay_slot);
            let answers = tokio::select! {
                a = serve_dht_request(&shared, request, area) => a,
                () = token.cancelled() => return,
            };
            for msg in answers {
                if out
                    .send(out_cell(RelayCell::new(StreamId::CIRCUIT, msg)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}

/// A DHT request made through a circuit (§13.6).
pub(super) enum DhtRequest {
    Fetch {
        key: [u8; 32],
        kind: u8,
    },
    Store {
        key: [u8; 32],
        kind: u8,
        body: Bytes,
    },
    RegisterName {
        record: Bytes,
    },
}

/// Run `request`: hidden-service descriptors (kind 2) on this relay's HSDir store
/// (§12.7), other records on its DHT node (§13.6). The `DHT_RESULT` messages to send
/// back, each fitting an inner area of `area` bytes.
pub(super) async fn serve_dht_request(
    shared: &RelayShared,
    request: DhtRequest,
    area: usize,
) -> Vec<RelayMsg> {
    let result = |status, count, kind, body| RelayMsg::DhtResult {
        status,
        index: 0,
        count,
        kind,
        body,
    };
    let now = crate::now_unix();
    let names = shared.dht.name_authorities();
    match request {
        DhtRequest::RegisterName { record } => vec![register_name(shared, record).await],
        DhtRequest::Fetch { key, kind } => {
            shared.stats.dht_fetches.fetch_add(1, Ordering::Relaxed);
            let Ok(kind) = RecordKind::from_byte(kind) else {
                return vec![result(DHT_NOT_FOUND, 0, 0, Bytes::new())];
            };
            // Room for the record body behind the 4-byte result header.
            let room = RelayCell::max_payload(area).saturating_sub(4);
            // Descriptors live on their HSDirs (§12.7): answered from this relay's own
            // HSDir store, never looked up in the DHT.
            let found = if kind == RecordKind::HsDescriptor {
                if shared.hsdir_behaviour == HsDirBehaviour::Withhold {
                    return vec![result(DHT_NOT_FOUND, 0, 0, Bytes::new())];
                }
                lock_hsdir(shared).get(&key, now)
            } else {
                shared.dht.find_records(key).await
            };
            let records: Vec<Record> = found
                .into_iter()
                .filter(|r| r.kind == kind && r.body.len() <= room)
                .filter(|r| verify_record_for(&key, r, now, names.as_ref()).is_ok())
                .take(DHT_RESULT_RECORDS)
                .collect();
            if records.is_empty() {
                return vec![result(DHT_NOT_FOUND, 0, 0, Bytes::new())];
            }
            let count = records.len() as u8;
            records
                .into_iter()
                .enumerate()
                .map(|(i, r)| RelayMsg::DhtResult {
                    status: DHT_OK,
                    index: i as u8,
                    count,
                    kind: r.kind.to_byte(),
                    body: Bytes::from(r.body),
                })
                .collect()
        }
        DhtRequest::Store { key, kind, body } => {
            shared.stats.dht_stores.fetch_add(1, Ordering::Relaxed);
            let record = RecordKind::from_byte(kind).map(|kind| Record {
                kind,
                body: body.to_vec(),
            });
            let Ok(record) = record else {
                return vec![result(DHT_REFUSED, 0, kind, Bytes::new())];
            };
            if verify_record_for(&key, &record, now, names.as_ref()).is_err() {
                return vec![result(DHT_REFUSED, 0, kind, Bytes::new())];
            }
            let stored = if record.kind == RecordKind::HsDescriptor {
                usize::from(store_as_hsdir(shared, key, record, now))
            } else {
                shared.dht.store_record(key, record, DHT_REPLICAS).await
            };
            let status = if stored > 0 { DHT_OK } else { DHT_REFUSED };
            vec![result(
                status,
                u8::try_from(stored).unwrap_or(u8::MAX),
                kind,
                Bytes::new(),
            )]
        }
    }
}

pub(crate) fn lock_hsdir(
    shared: &RelayShared,
) -> std::sync::MutexGuard<'_, anonnet_dht::storage::Storage> {
    shared
        .hsdir
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keep a verified hidden-service descriptor (`record`, under its DHT index `key`) when
/// this relay is one of its responsible HSDirs under the consensus it holds (§12.7).
/// True when it is stored (or already was).
pub(crate) fn store_as_hsdir(
    shared: &RelayShared,
    key: [u8; 32],
    record: Record,
    now: u64,
) -> bool {
    let Ok(desc) = anonnet_wire::hs::HsDescriptor::decode(&record.body) else {
        return false;
    };
    let responsible = shared
        .consensus
        .placement(now)
        .and_then(|p| {
            p.ring(desc.period)
                .map(|r| r.is_responsible(&shared.node_id, &key))
        })
        .unwrap_or(false);
    if !responsible {
        shared
            .stats
            .hsdir_not_responsible
            .fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let mut store = lock_hsdir(shared);
    if shared.hsdir_behaviour == HsDirBehaviour::Stale && !store.get(&key, now).is_empty() {
        // A hostile HSDir (tests): claims to store the new revision, keeps the old.
        return true;
    }
    let stored = store.store(shared.node_id, key, record, now).is_ok();
    drop(store);
    if stored {
        shared.stats.hsdir_stored.fetch_add(1, Ordering::Relaxed);
    }
    stored
}

/// `NAME_REGISTER` (§12.5): send the record to every authority of this relay's network at
/// once (`REGISTER_NAME`, §14.2) and answer with the receipts they gave (at most
/// `MAX_NAME_RECEIPTS`; the client checks them). A relay outside a network asks nobody.
async fn register_name(shared: &RelayShared, record: Bytes) -> RelayMsg {
    let Some(network) = &shared.network else {
        return RelayMsg::NameReceipts {
            asked: 0,
            refused: 0,
            receipts: Vec::new(),
        };
    };
    shared.stats.names_forwarded.fetch_add(1, Ordering::Relaxed);
    let request = anonnet_dir::DirMessage::RegisterName(record.to_vec());
    let mut asks = tokio::task::JoinSet::new();
    for a in &network.authorities {
        let (links, request, addr, id) = (
            shared.links.clone(),
            request.clone(),
            a.address,
            a.node_id(),
        );
        asks.spawn(async move { crate::directory::ask(&links, addr, id, &request).await });
    }
    let asked = asks.len();
    let mut refused = 0usize;
    let mut receipts = Vec::new();
    while let Some(answer) = asks.join_next().await {
        match answer.unwrap_or_else(|e| Err(e.to_string())) {
            Ok(anonnet_dir::DirMessage::NameReceipt(r)) => {
                if receipts.len() < anonnet_wire::relay::MAX_NAME_RECEIPTS {
                    receipts.push(r);
                }
            }
            Ok(anonnet_dir::DirMessage::Refused(why)) => {
                debug!("name registration refused by an authority: {why}");
                refused += 1;
            }
            Ok(_) | Err(_) => {}
        }
    }
    RelayMsg::NameReceipts {
        asked: u8::try_from(asked).unwrap_or(u8::MAX),
        refused: u8::try_from(refused).unwrap_or(u8::MAX),
        receipts,
    }
}
