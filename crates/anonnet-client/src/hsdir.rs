//! Hidden-service descriptors on their HSDirs (`docs/protocol.md` §12.7, §13.6): a
//! service stores each descriptor on every responsible HSDir and a client asks a few of
//! them at once, always through a circuit whose last hop is the HSDir itself. Which
//! relays are responsible is the sans-IO [`anonnet_dir::hsdir`]; this is the async edge.

use anonnet_crypto::hs::HsAddress;
use anonnet_crypto::NodeId;
use anonnet_wire::dht::RecordKind;
use bytes::Bytes;
use tracing::debug;

use crate::hs::{dht_fetch, dht_store};
use crate::pool::Client;

/// The responsible HSDirs of `address`'s descriptor for each of `periods`, in the
/// client's current consensus: `(period, relays)` (empty without a consensus, or for a
/// period the consensus cannot place).
pub(crate) fn placement_of(
    client: &Client,
    address: &HsAddress,
    periods: &[u64],
) -> Vec<(u64, Vec<NodeId>)> {
    let Some(placement) = client.hs_placement() else {
        return Vec::new();
    };
    periods
        .iter()
        .map(|&p| {
            let relays = crate::hs::descriptor_key(address, p)
                .map(|key| placement.responsible(p, &key))
                .unwrap_or_default();
            (p, relays)
        })
        .collect()
}

/// Store the encoded descriptor `bytes` of `period` (DHT index `key`) on every HSDir
/// responsible for it, in parallel, each through its own circuit (§12.7). Returns how
/// many stored it.
pub(crate) async fn publish(client: &Client, period: u64, key: [u8; 32], bytes: Vec<u8>) -> usize {
    let Some(placement) = client.hs_placement() else {
        debug!("no consensus: the descriptor cannot be placed");
        return 0;
    };
    let hops = client.hops_of(&placement.responsible(period, &key));
    let stores = hops.into_iter().map(|hop| {
        let bytes = bytes.clone();
        async move {
            let circuit = match client.build_internal(Some(hop), &[]).await {
                Ok(c) => c,
                Err(e) => {
                    debug!("no circuit to an HSDir: {e}");
                    return 0;
                }
            };
            let stored = dht_store(&circuit, key, RecordKind::HsDescriptor, bytes).await;
            circuit.close();
            stored.unwrap_or_else(|e| {
                debug!("descriptor store: {e}");
                0
            })
        }
    });
    futures_util::future::join_all(stores)
        .await
        .into_iter()
        .sum()
}

/// Ask every relay of `hsdirs` at once, each through a circuit that ends at it, for the
/// descriptors under `key` (§13.6); all the records they sent, not yet verified.
pub(crate) async fn fetch(client: &Client, hsdirs: &[NodeId], key: [u8; 32]) -> Vec<Bytes> {
    let fetches = client.hops_of(hsdirs).into_iter().map(|hop| async move {
        client.count_descriptor_fetch();
        let circuit = match client.build_internal(Some(hop), &[]).await {
            Ok(c) => c,
            Err(e) => {
                debug!("no circuit to an HSDir: {e}");
                return Vec::new();
            }
        };
        let records = dht_fetch(&circuit, key, RecordKind::HsDescriptor).await;
        circuit.close();
        records.unwrap_or_else(|e| {
            debug!("descriptor fetch: {e}");
            Vec::new()
        })
    });
    futures_util::future::join_all(fetches)
        .await
        .into_iter()
        .flatten()
        .collect()
}
