//! The circuit's writer task: seals relay messages into forward cells and writes them to
//! the guard (§7.2).

use super::*;

/// The writer task's queues: circuit `SENDME`s (served first) and every other cell.
pub(super) struct WriterQueues {
    pub(super) sendmes: mpsc::Receiver<Forward>,
    pub(super) cells: mpsc::Receiver<Forward>,
}

pub(super) async fn writer_task(
    mut layers: ClientForward,
    mut send: SendStream,
    mut queues: WriterQueues,
    sendme_tags: Arc<Mutex<SendmeTags>>,
    hops: Arc<AtomicUsize>,
    pending: Arc<PendingHop>,
    closed: CancellationToken,
) {
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
            layers.push_end_to_end(&keys);
        }
        let exit = hops.load(Ordering::SeqCst).saturating_sub(1);
        let mut buf = vec![0u8; forward_buffer_len(hop)];
        let encoded = buf
            .get_mut(message_offset(hop)..message_offset(hop) + FORWARD_MESSAGE_MAX)
            .and_then(|area| cell.encode_into(area).ok());
        let tag = match encoded.map(|len| layers.seal_forward(&mut buf, hop, len)) {
            Some(Ok(tag)) => tag,
            _ => {
                debug!("dropping an unencodable relay message");
                continue;
            }
        };
        buf.truncate(CELL_LEN);
        if hop == exit && matches!(cell.msg, RelayMsg::Data(_)) {
            if let Ok(mut tags) = sendme_tags.lock() {
                tags.on_data_sent(tag);
            }
        }
        let ok = tokio::select! {
            r = send.write_all(&buf) => r.is_ok(),
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
