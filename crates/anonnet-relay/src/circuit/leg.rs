//! Leg I/O: whole cells from a QUIC stream, the `CREATE` that opens a leg and its answer
//! (§4.1–§4.3, §8.2), and `DESTROY` on the way out.

use super::*;

/// Read whole cells of `cell_len` bytes from `recv` into a channel, a batch of whole cells
/// per read. Ends on EOF, error or cancellation; EOF or an error ends the circuit as
/// coming from `origin` (the neighbour on this leg).
///
/// Reads take whatever QUIC has received, up to [`READ_BATCH`] cells at once, rather than
/// one `read_exact` per cell: each read locks the connection, and that per-cell cost was
/// the larger part of a relay's CPU per cell. A batch goes through the channel as one
/// item, with no allocation or copy per cell.
pub(super) fn spawn_leg_reader(
    mut recv: RecvStream,
    cell_len: usize,
    tx: mpsc::Sender<CellBatch>,
    teardown: Arc<Teardown>,
    origin: Origin,
) {
    tokio::spawn(async move {
        // The bytes of a cell split across QUIC chunks. Nothing else is held between
        // reads: `read_chunk` hands over quinn's own buffer, so an idle circuit keeps no
        // read buffer of its own (a buffer of READ_BATCH cells reserved before each read
        // cost 32 KiB per idle circuit: docs/performance.md, idle circuits).
        let mut partial = BytesMut::new();
        loop {
            let read = tokio::select! {
                r = recv.read_chunk(READ_BATCH * cell_len, true) => r,
                () = teardown.token.cancelled() => break,
            };
            let chunk = match read {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) | Err(_) => {
                    teardown.destroy_from(origin, DestroyReason::ChannelClosed);
                    break;
                }
            };
            // One copy into a buffer of our own: the cells are decrypted in place.
            let mut batch = std::mem::take(&mut partial);
            batch.extend_from_slice(&chunk);
            let whole = batch.len() - batch.len() % cell_len;
            if whole == 0 {
                partial = batch;
                continue;
            }
            if whole < batch.len() {
                partial = batch.split_off(whole);
            }
            if tx.send(Box::new(batch)).await.is_err() {
                break;
            }
        }
    });
}

pub(crate) async fn serve_leg(
    shared: Arc<RelayShared>,
    mut send: SendStream,
    mut recv: RecvStream,
    first: u8,
    peer: crate::PeerKey,
    pending: tokio::sync::OwnedSemaphorePermit,
) {
    // The handshake runs in this block and the circuit's future is awaited after it, so
    // nothing of the handshake (the CREATE cells, the keys) is stored in this task's
    // future while the circuit lives (docs/performance.md, idle circuits).
    let (circuit, _permit) = {
        let from_relay = peer.is_relay();
        let mut prefix = [first, 0, 0];
        let created = tokio::time::timeout(EXTEND_TIMEOUT, async {
            recv.read_exact(prefix.get_mut(1..)?).await.ok()?;
            let cell_len = Create::peek_cell_len(&prefix).ok()?;
            let mut cell = vec![0u8; cell_len];
            cell.get_mut(..Create::PREFIX_LEN)?.copy_from_slice(&prefix);
            recv.read_exact(cell.get_mut(Create::PREFIX_LEN..)?)
                .await
                .ok()?;
            match create_handshake_type(&cell)? {
                HANDSHAKE_NTOR_V1 => Some(CreateKind::Ntor(Create::decode(&cell).ok()?)),
                HANDSHAKE_HYBRID_V2 => {
                    // A type-2 CREATE takes a second cell (§4.2).
                    cell.resize(HYBRID_CELLS_LEN, 0);
                    recv.read_exact(cell.get_mut(CELL_LEN..)?).await.ok()?;
                    Some(CreateKind::Hybrid(CreateHybrid::decode(&cell).ok()?))
                }
                _ => None,
            }
        })
        .await;
        drop(pending);
        let cell_len = CELL_LEN;
        let Ok(Some(create)) = created else {
            debug!("leg closed before a valid CREATE");
            return;
        };
        let Some(permit) = shared.circuit_permit(peer) else {
            debug!(from_relay, "circuit limit reached; refusing CREATE");
            if let Ok(d) = (Destroy {
                reason: DestroyReason::ResourceLimit,
            })
            .encode(cell_len)
            {
                let _ = send.write_all(&d).await;
            }
            return;
        };
        // The current onion key, or the previous one during its grace; any other is refused.
        let (bytes, keys, server_pk) = match answer_create(&shared, &create) {
            Ok(r) => r,
            Err(e) => {
                debug!("handshake refused: {e}");
                if let Ok(d) = (Destroy {
                    reason: DestroyReason::Protocol,
                })
                .encode(cell_len)
                {
                    let _ = send.write_all(&d).await;
                }
                return;
            }
        };
        // Neither the CREATE nor the CREATED bytes are needed any more: freed here, not
        // when the circuit ends (about 4 KB per circuit, docs/performance.md).
        let handshake = create.name();
        drop(create);
        if send.write_all(&bytes).await.is_err() {
            return;
        }
        drop(bytes);
        shared
            .stats
            .circuits_created
            .fetch_add(1, Ordering::Relaxed);
        if !from_relay {
            shared
                .stats
                .circuits_from_clients
                .fetch_add(1, Ordering::Relaxed);
        }
        debug!(from_relay, handshake, "circuit created");
        let onion = anonnet_crypto::RelayOnion::new(&keys);
        drop(keys);
        (
            run_circuit(shared, cell_len, onion, server_pk, send, recv),
            permit,
        )
    };
    circuit.await;
}

/// A leg's `CREATE`, of either handshake type (§4.2).
pub(super) enum CreateKind {
    Ntor(Create),
    Hybrid(CreateHybrid),
}

impl CreateKind {
    pub(super) fn name(&self) -> &'static str {
        match self {
            CreateKind::Ntor(_) => "x25519",
            CreateKind::Hybrid(_) => "x25519+mlkem768",
        }
    }
}

/// Answer a `CREATE` with the onion key it names (current, or previous during its grace,
/// §2.1): the `CREATED` cells to send, the hop keys and the handshake key `Y`.
///
/// # Errors
/// The handshake's error: a handshake type this relay does not answer (§3.1, §4.2), an
/// unknown onion key or NodeId, a malformed hello, a non-contributory key.
pub(super) fn answer_create(
    shared: &RelayShared,
    create: &CreateKind,
) -> Result<(Vec<u8>, anonnet_crypto::HopKeys, [u8; 32]), anonnet_crypto::HandshakeError> {
    use anonnet_crypto::HandshakeError;
    let asked = match create {
        CreateKind::Ntor(_) => HANDSHAKE_NTOR_V1,
        CreateKind::Hybrid(_) => HANDSHAKE_HYBRID_V2,
    };
    if !shared.handshakes.contains(asked) {
        return Err(HandshakeError::NotAnswered);
    }
    match create {
        CreateKind::Ntor(c) => {
            let hello = anonnet_crypto::ClientHello {
                node_id: c.node_id,
                onion_key: c.onion_key,
                client_pk: c.client_pk,
            };
            let key = shared
                .onion_key_for(&c.onion_key)
                .ok_or(HandshakeError::WrongRelay)?;
            let (reply, keys) =
                anonnet_crypto::handshake::server_handshake(shared.node_id, &key, &hello)?;
            let bytes = Created {
                server_pk: reply.server_pk,
                auth: reply.auth,
            }
            .encode(CELL_LEN)
            .map_err(|_| HandshakeError::Malformed)?;
            Ok((bytes, keys, reply.server_pk))
        }
        CreateKind::Hybrid(c) => {
            let (_, onion_key) =
                anonnet_crypto::hello_names(&c.hello).ok_or(HandshakeError::Malformed)?;
            let key = shared
                .onion_key_for(&onion_key)
                .ok_or(HandshakeError::WrongRelay)?;
            let (reply, keys) =
                anonnet_crypto::server_hybrid_handshake(shared.node_id, &key, &c.hello)?;
            let mut server_pk = [0u8; 32];
            server_pk.copy_from_slice(reply.get(..32).ok_or(HandshakeError::Malformed)?);
            let bytes = CreatedHybrid { reply }
                .encode()
                .map_err(|_| HandshakeError::Malformed)?;
            Ok((bytes, keys, server_pk))
        }
    }
}

/// Write a `DESTROY` on `send` (best effort, bounded in time) and finish the stream.
pub(super) async fn send_destroy(send: &mut SendStream, cell_len: usize, reason: DestroyReason) {
    if let Ok(cell) = (Destroy { reason }).encode(cell_len) {
        let _ = tokio::time::timeout(DESTROY_WRITE_TIMEOUT, send.write_all(&cell)).await;
    }
    let _ = send.finish();
}
