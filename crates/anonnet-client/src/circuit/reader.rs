//! The circuit's reader task: the shell around [`ReaderCore`]. It reads whole cells from
//! the guard, lets the core decide what each means (§6.4, §6.6, §7.3), and carries out
//! the result: a stream event to the stream's channel, a circuit `SENDME` to the writer,
//! a §13 message to its listener, an incoming stream to the service.

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
    layers: ClientBackward,
    mut recv: RecvStream,
    circuit: std::sync::Weak<Circuit>,
    closed: CancellationToken,
) {
    let Some(mut core) = circuit.upgrade().map(|c| {
        ReaderCore::new(
            layers,
            c.ids.len(),
            c.sendme_tags.clone(),
            c.package.clone(),
        )
    }) else {
        closed.cancel();
        return;
    };
    let mut cells = CellReader::default();
    let why = loop {
        let cell = tokio::select! {
            biased;
            () = closed.cancelled() => break "closed locally".to_string(),
            c = cells.next(&mut recv) => c,
        };
        let Ok(cell) = cell else {
            if let Some(c) = circuit.upgrade() {
                c.guard_lost.store(true, Ordering::Relaxed);
            }
            break "link closed".to_string();
        };
        let Some(circ) = circuit.upgrade() else {
            break "circuit dropped".to_string();
        };
        if let Some(keys) = circ.pending.take_open() {
            core.push_end_to_end(&keys);
        }
        let event = core.on_cell(cell, &circ.streams);
        if let Some(sendme) = core.poll_sendme() {
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
        let (tx, event) = match event {
            Ok(ReaderEvent::Nothing) => continue,
            Ok(ReaderEvent::Stream { tx, event, .. }) => (tx, event),
            Ok(ReaderEvent::Control(msg)) => {
                let tx = circ.control.lock().ok().and_then(|c| c.clone());
                if tx.is_none_or(|tx| tx.try_send(msg).is_err()) {
                    debug!(circuit = circ.id, "dropping a §13 message nobody waits for");
                }
                continue;
            }
            Ok(ReaderEvent::IncomingBegin { id, target, port }) => {
                match circ.accept_begin(id, target, port) {
                    Ok(()) => continue,
                    Err(why) => break why,
                }
            }
            Err(why) => {
                if why.is_unexpected_cell() {
                    circ.counters
                        .unexpected_cells
                        .fetch_add(1, Ordering::Relaxed);
                }
                break why.to_string();
            }
        };
        // Count the bytes as buffered before the stream can read them, so the count
        // never goes below zero.
        let data_len = match &event {
            StreamEvent::Data(d) => d.len() as u64,
            _ => 0,
        };
        circ.counters
            .buffered
            .fetch_add(data_len, Ordering::Relaxed);
        // The circuit may go while this waits: hold only the weak reference.
        drop(circ);
        // Waiting here is the back-pressure of a slow stream reader.
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
