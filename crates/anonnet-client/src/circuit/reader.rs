//! The circuit's reader task: whole cells from the guard, opened and dispatched to
//! streams, with the windows and the no-silent-cells rule (§6.4, §6.6, §7.3).

use super::*;

/// Most cells the circuit reader takes from QUIC in one read.
pub(super) const READ_BATCH: usize = 32;

/// Whole cells from the guard's QUIC stream, read up to [`READ_BATCH`] at a time: each
/// QUIC read locks the connection, and one read per cell (plus one allocation per cell) was
/// a large part of the reader's cost. The cells are slices of one buffer.
#[derive(Default)]
pub(super) struct CellReader {
    pub(super) staging: BytesMut,
}

impl CellReader {
    /// The next whole cell of [`CELL_LEN`] bytes.
    ///
    /// # Errors
    /// [`CircuitError::Closed`] when the stream ends or fails.
    pub(super) async fn next(&mut self, recv: &mut RecvStream) -> Result<BytesMut, CircuitError> {
        while self.staging.len() < CELL_LEN {
            self.staging
                .reserve(READ_BATCH * CELL_LEN - self.staging.len());
            match recv.read_buf(&mut self.staging).await {
                Ok(0) | Err(_) => return Err(CircuitError::Closed),
                Ok(_) => {}
            }
        }
        Ok(self.staging.split_to(CELL_LEN))
    }
}

pub(super) async fn reader_task(
    mut layers: ClientBackward,
    mut recv: RecvStream,
    circuit: std::sync::Weak<Circuit>,
    closed: CancellationToken,
) {
    let mut deliver = CircuitDeliverWindow::default();
    let mut cells = CellReader::default();
    let why = loop {
        let cell = tokio::select! {
            biased;
            () = closed.cancelled() => break "closed locally".to_string(),
            c = cells.next(&mut recv) => c,
        };
        let Ok(mut cell) = cell else {
            if let Some(c) = circuit.upgrade() {
                c.guard_lost.store(true, Ordering::Relaxed);
            }
            break "link closed".to_string();
        };
        match cell.first().copied().map(CellCommand::from_byte) {
            Some(Ok(CellCommand::Relay)) => {}
            Some(Ok(CellCommand::Padding)) => continue,
            Some(Ok(CellCommand::Destroy)) => {
                break format!(
                    "DESTROY from guard: {:?}",
                    Destroy::decode(&cell).map(|d| d.reason)
                );
            }
            _ => break "unexpected cell".to_string(),
        }
        if let Some(c) = circuit.upgrade() {
            if let Some(keys) = c.pending.take_open() {
                layers.push_end_to_end(&keys);
            }
        }
        let (hop, range, tag) = match layers.open_backward(&mut cell[..]) {
            Ok(r) => r,
            Err(e) => break format!("bad cell: {e}"),
        };
        let msg = match RelayCell::decode(&cell.freeze().slice(range)) {
            Ok(m) => m,
            Err(e) => break format!("bad relay message: {e}"),
        };
        let Some(circ) = circuit.upgrade() else {
            break "circuit dropped".to_string();
        };
        let exit = circ.exit_hop();
        let entry = circ
            .streams
            .lock()
            .ok()
            .and_then(|t| t.streams.get(&msg.stream_id).cloned());
        let last_relay = circ.ids.len().saturating_sub(1);
        // Every DATA from the exit counts for the circuit window, for an open stream or not
        // (the exit counted it too); every 100th earns it a circuit SENDME.
        if hop == exit && matches!(msg.msg, RelayMsg::Data(_)) {
            if let Some(echo) = deliver.on_data(tag) {
                let sendme = Forward {
                    hop: exit,
                    cell: RelayCell::new(StreamId::CIRCUIT, RelayMsg::Sendme(Some(echo))),
                };
                match circ.sendmes.try_send(sendme) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        break "exit overran the circuit window".to_string();
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        break "circuit closed".to_string();
                    }
                }
            }
        }
        // No silent cells (§6.6, DropMark): a DROP this client never asked for, or a stream
        // cell for a stream it does not have (beyond what a half-closed stream may still
        // receive), closes the circuit, so no pair of relays can signal through it.
        let stream_cell = matches!(
            msg.msg,
            RelayMsg::Data(_) | RelayMsg::End(_) | RelayMsg::Connected | RelayMsg::Sendme(None)
        );
        if entry.is_none() && stream_cell && hop == exit {
            match circ.tolerate_closed_stream(msg.stream_id, &msg.msg) {
                Ok(()) => continue,
                Err(why) => {
                    circ.counters
                        .unexpected_cells
                        .fetch_add(1, Ordering::Relaxed);
                    break format!("unexpected cell from the exit: {why}");
                }
            }
        }
        let event = match msg.msg {
            RelayMsg::Drop => {
                circ.counters
                    .unexpected_cells
                    .fetch_add(1, Ordering::Relaxed);
                break format!("unexpected DROP from hop {hop}");
            }
            m if m.is_hs() && hop == last_relay => {
                let tx = circ.control.lock().ok().and_then(|c| c.clone());
                let delivered = tx.is_some_and(|tx| tx.try_send(m).is_ok());
                if !delivered {
                    debug!(circuit = circ.id, "dropping a §13 message nobody waits for");
                }
                continue;
            }
            RelayMsg::Begin { target, port } if hop == exit && exit >= circ.ids.len() => {
                match circ.accept_begin(msg.stream_id, target, port) {
                    Ok(()) => continue,
                    Err(why) => break why,
                }
            }
            RelayMsg::Sendme(Some(echo)) if hop == exit => {
                let ok = circ
                    .sendme_tags
                    .lock()
                    .map(|mut t| t.on_sendme(&echo).is_ok())
                    .unwrap_or(false);
                if !ok {
                    break "exit sent a circuit SENDME that proves nothing".to_string();
                }
                circ.package.add_permits(CIRCUIT_INCREMENT as usize);
                continue;
            }
            RelayMsg::Sendme(None) if hop == exit => {
                if let Some(e) = &entry {
                    let inc = STREAM_INCREMENT as usize;
                    if e.package.available_permits() + inc > STREAM_WINDOW as usize {
                        break "exit sent an unexpected stream SENDME".to_string();
                    }
                    e.package.add_permits(inc);
                }
                continue;
            }
            RelayMsg::Data(d) if hop == exit => {
                if let Some(e) = &entry {
                    let ok = e
                        .deliver
                        .lock()
                        .map(|mut w| w.on_data().is_ok())
                        .unwrap_or(false);
                    if !ok {
                        break format!("exit broke the window of stream {}", msg.stream_id.0);
                    }
                }
                StreamEvent::Data(d)
            }
            RelayMsg::Truncated(reason) => break format!("TRUNCATED by hop {hop}: {reason:?}"),
            RelayMsg::Connected if hop == exit => StreamEvent::Connected,
            RelayMsg::End(r) if hop == exit => StreamEvent::End(r),
            other => {
                circ.counters
                    .unexpected_cells
                    .fetch_add(1, Ordering::Relaxed);
                break format!("unexpected {} from hop {hop}", msg_name(&other));
            }
        };
        let is_end = matches!(event, StreamEvent::End(_));
        let data_len = match &event {
            StreamEvent::Data(d) => d.len() as u64,
            _ => 0,
        };
        drop(circ);
        if let Some(StreamEntry { tx, .. }) = entry {
            // Waiting here is the back-pressure of a slow stream reader.
            // Count the bytes as buffered before the stream can read them, so the count
            // never goes below zero.
            if let Some(c) = circuit.upgrade() {
                c.counters.buffered.fetch_add(data_len, Ordering::Relaxed);
            }
            let delivered = tokio::select! {
                r = tx.send(event) => r.is_ok(),
                () = closed.cancelled() => false,
            };
            if !delivered {
                if let Some(c) = circuit.upgrade() {
                    c.counters.buffered.fetch_sub(data_len, Ordering::Relaxed);
                }
                if closed.is_cancelled() {
                    break "closed locally".to_string();
                }
            }
            if is_end {
                if let Some(c) = circuit.upgrade() {
                    c.forget_stream(msg.stream_id);
                }
            }
        }
    };
    debug!("circuit reader stopped: {why}");
    closed.cancel();
    // Dropping the senders tells every open stream that the circuit is gone.
    if let Some(c) = circuit.upgrade() {
        if let Ok(mut t) = c.streams.lock() {
            t.streams.clear();
        }
    }
}
