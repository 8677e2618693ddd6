//! The circuit's writer task: the shell around [`WriterCore`]. It takes relay messages
//! from the circuit's queues (circuit `SENDME`s first), lets the core seal each into a
//! forward cell (§7.2) and writes it to the guard.

use super::*;

/// The writer task's queues: circuit `SENDME`s (served first) and every other cell.
pub(super) struct WriterQueues {
    pub(super) sendmes: mpsc::Receiver<Forward>,
    pub(super) cells: mpsc::Receiver<Forward>,
}

/// The core counts hops by the layers it holds; an end-to-end hop joins them when
/// `pending` hands over its keys.
pub(super) async fn writer_task(
    layers: ClientForward,
    mut send: SendStream,
    mut queues: WriterQueues,
    sendme_tags: Arc<Mutex<SendmeTags>>,
    pending: Arc<PendingHop>,
    closed: CancellationToken,
) {
    let mut core = WriterCore::new(layers, sendme_tags);
    loop {
        let next = tokio::select! {
            biased;
            () = closed.cancelled() => break,
            Some(sendme) = queues.sendmes.recv() => Some(sendme),
            n = queues.cells.recv() => n,
        };
        let Some(Forward { hop, cell }) = next else {
            break;
        };
        if let Some(keys) = pending.take_seal() {
            core.push_end_to_end(&keys);
        }
        let sealed = match core.seal(hop, &cell) {
            Ok(sealed) => sealed,
            Err(e) => {
                debug!("dropping an unencodable relay message: {e}");
                continue;
            }
        };
        let ok = tokio::select! {
            r = send.write_all(sealed) => r.is_ok(),
            () = closed.cancelled() => false,
        };
        if !ok {
            break;
        }
    }
    closed.cancel();
    if let Ok(d) = (Destroy {
        reason: DestroyReason::Finished,
    })
    .encode(CELL_LEN)
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), send.write_all(&d)).await;
    }
    let _ = send.finish();
}
