//! A stream through a circuit as `AsyncRead + AsyncWrite` (§6.2, §6.4).

use super::*;

/// A stream through a circuit: bytes written go to the destination, bytes read come from
/// it. Reads end with `Ok(0)` when the exit closed the stream normally and with an error
/// when the stream or circuit failed. Dropping it sends `END`. There is no half-close:
/// `shutdown` only flushes.
pub struct DataStream {
    pub(super) circuit: Arc<Circuit>,
    pub(super) id: StreamId,
    pub(super) rx: Option<mpsc::Receiver<StreamEvent>>,
    pub(super) pending: Bytes,
    pub(super) sender: PollSender<Forward>,
    pub(super) ended: bool,
    /// Why the stream ended, when it failed after bytes the last read already returned:
    /// the next read reports it.
    pub(super) failure: Option<io::Error>,
    /// Deliver window: counts consumed cells and says when a stream SENDME is due.
    pub(super) deliver: Arc<Mutex<StreamDeliverWindow>>,
    /// Package windows for writing (§6.4).
    pub(super) circuit_window: PollSemaphore,
    pub(super) stream_window: PollSemaphore,
    /// An optimistic stream (`Circuit::begin_optimistic`) before its `CONNECTED`: `DATA`
    /// now is a protocol violation, an `END` the exit's refusal.
    pub(super) awaiting_connected: bool,
    /// Permits acquired for the next DATA cell (circuit, stream).
    pub(super) permits: (
        Option<tokio::sync::OwnedSemaphorePermit>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    ),
}

impl std::fmt::Debug for DataStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStream")
            .field("circuit", &self.circuit.id)
            .field("stream", &self.id.0)
            .finish()
    }
}

impl DataStream {
    /// The circuit carrying this stream.
    pub fn circuit(&self) -> &Arc<Circuit> {
        &self.circuit
    }

    /// Service side: tell the client its stream is open (`CONNECTED`, §13.5).
    ///
    /// # Errors
    /// [`CircuitError::Closed`] when the circuit is gone.
    pub async fn accept(&self) -> Result<(), CircuitError> {
        self.circuit
            .forward
            .send(Forward {
                hop: self.circuit.exit_hop(),
                cell: RelayCell::new(self.id, RelayMsg::Connected),
            })
            .await
            .map_err(|_| CircuitError::Closed)
    }

    /// Service side: refuse the stream with `END` `reason` (e.g. CONNECTREFUSED when the
    /// local server is down).
    pub fn refuse(mut self, reason: EndReason) {
        self.ended = true;
        let end = Forward {
            hop: self.circuit.exit_hop(),
            cell: RelayCell::new(self.id, RelayMsg::End(reason)),
        };
        let _ = self.circuit.forward.try_send(end);
    }

    /// Take in one event from the circuit reader (`None`: the circuit closed): `DATA`
    /// becomes the pending bytes (and earns stream `SENDME`s as it is consumed),
    /// `CONNECTED` ends an optimistic stream's wait, `END` or a broken rule ends the
    /// stream with the error the next read reports.
    fn on_event(&mut self, event: Option<StreamEvent>) {
        match event {
            Some(StreamEvent::Data(_)) if self.awaiting_connected => {
                self.ended = true;
                self.failure = Some(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "DATA before CONNECTED",
                ));
                self.circuit.close();
            }
            Some(StreamEvent::Data(d)) => {
                self.pending = d;
                let due = self
                    .deliver
                    .lock()
                    .map(|mut w| w.on_consumed())
                    .unwrap_or(0);
                for _ in 0..due {
                    self.send_stream_sendme();
                }
            }
            Some(StreamEvent::Connected) => self.awaiting_connected = false,
            // The reader delivers RESOLVED to resolve streams only; never here.
            Some(StreamEvent::Resolved(_)) => {
                self.ended = true;
                self.failure = Some(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "RESOLVED on a data stream",
                ));
            }
            Some(StreamEvent::End(EndReason::Done)) => self.ended = true,
            // Refused before CONNECTED (an optimistic stream): the reason travels inside
            // the error, for the proxy to map to its reply.
            Some(StreamEvent::End(reason)) if self.awaiting_connected => {
                self.ended = true;
                self.failure = Some(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    super::StreamError::Refused(reason),
                ));
            }
            Some(StreamEvent::End(reason)) => {
                self.ended = true;
                self.failure = Some(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("stream ended by the exit: {reason:?}"),
                ));
            }
            None => {
                self.ended = true;
                self.failure = Some(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "circuit closed",
                ));
            }
        }
    }

    /// Wait for the exit's answer to an optimistic stream's `BEGIN` (§6.5): returns once
    /// `CONNECTED` came, at once for a stream that was not opened optimistically (or whose
    /// `CONNECTED` came already). Reads only that answer: `DATA` the exit sends behind it
    /// stays for the next read.
    ///
    /// # Errors
    /// [`StreamError::Refused`] with the exit's reason when it answered `END` (`DONE`
    /// included) instead; [`StreamError::Circuit`] when the circuit closed first or the
    /// exit sent `DATA` before `CONNECTED` (a protocol violation: the circuit is closed).
    pub async fn connected(&mut self) -> Result<(), StreamError> {
        while self.awaiting_connected && !self.ended {
            let event = match self.rx.as_mut() {
                Some(rx) => rx.recv().await,
                None => None,
            };
            self.on_event(event);
        }
        if !self.awaiting_connected {
            return Ok(());
        }
        let refused = self
            .failure
            .as_ref()
            .and_then(|e| e.get_ref())
            .and_then(|inner| inner.downcast_ref::<StreamError>())
            .cloned();
        match refused {
            Some(e) => Err(e),
            None if self.failure.is_none() => Err(StreamError::Refused(EndReason::Done)),
            None => Err(CircuitError::Closed.into()),
        }
    }

    /// Tell the exit that 50 more cells were consumed. Never waits: when the circuit's
    /// queue is full the SENDME goes from a small task instead.
    pub(super) fn send_stream_sendme(&self) {
        let sendme = Forward {
            hop: self.circuit.exit_hop(),
            cell: RelayCell::new(self.id, RelayMsg::Sendme(None)),
        };
        if let Err(mpsc::error::TrySendError::Full(sendme)) = self.circuit.forward.try_send(sendme)
        {
            let tx = self.circuit.forward.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(sendme).await;
                });
            }
        }
    }
}

impl AsyncRead for DataStream {
    /// Fills `buf` with as many queued `DATA` cells as fit, not one cell per call: the
    /// caller (a SOCKS or HTTP copy loop) then writes many cells to its TCP socket in one
    /// syscall, where one loopback `send` per 998-byte cell was a third of the client's
    /// CPU in bulk transfers.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                let c = &self.circuit.counters;
                c.buffered.fetch_sub(n as u64, Ordering::Relaxed);
                c.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let got_bytes = buf.filled().len() > start;
            if self.ended {
                // An error that came behind bytes already handed out is reported by the
                // next call.
                return match self.failure.take() {
                    Some(e) if !got_bytes => Poll::Ready(Err(e)),
                    Some(e) => {
                        self.failure = Some(e);
                        Poll::Ready(Ok(()))
                    }
                    None => Poll::Ready(Ok(())),
                };
            }
            let Some(rx) = self.rx.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let event = match rx.poll_recv(cx) {
                Poll::Ready(event) => event,
                Poll::Pending if got_bytes => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            };
            self.on_event(event);
        }
    }
}

impl AsyncWrite for DataStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "circuit closed");
        // One DATA cell needs a permit from the stream and the circuit package windows.
        // The stream's first: a stream waiting for its own window (its exit's destination
        // reads slowly) then holds no circuit permit the circuit's other streams need.
        if self.permits.1.is_none() {
            match ready!(self.stream_window.poll_acquire(cx)) {
                Some(p) => self.permits.1 = Some(p),
                None => return Poll::Ready(Err(closed())),
            }
        }
        if self.permits.0.is_none() {
            match ready!(self.circuit_window.poll_acquire(cx)) {
                Some(p) => self.permits.0 = Some(p),
                None => return Poll::Ready(Err(closed())),
            }
        }
        if ready!(self.sender.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(closed()));
        }
        let n = buf.len().min(self.circuit.max_data());
        let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        let item = Forward {
            hop: self.circuit.exit_hop(),
            cell: RelayCell::new(self.id, RelayMsg::Data(data)),
        };
        match self.sender.send_item(item) {
            Ok(()) => {
                if let Some(p) = self.permits.0.take() {
                    p.forget();
                }
                if let Some(p) = self.permits.1.take() {
                    p.forget();
                }
                self.circuit
                    .counters
                    .bytes_sent
                    .fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Ok(n))
            }
            Err(_) => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for DataStream {
    fn drop(&mut self) {
        if self.ended || self.circuit.is_closed() {
            self.circuit.forget_stream(self.id);
        } else {
            self.circuit.half_close_stream(self.id);
        }
        // Bytes delivered but never read leave the buffered count.
        let mut unread = self.pending.len() as u64;
        if let Some(rx) = self.rx.as_mut() {
            rx.close();
            while let Ok(ev) = rx.try_recv() {
                if let StreamEvent::Data(d) = ev {
                    unread += d.len() as u64;
                }
            }
        }
        self.circuit
            .counters
            .buffered
            .fetch_sub(unread, Ordering::Relaxed);
        if self.ended || self.circuit.is_closed() {
            return;
        }
        let end = Forward {
            hop: self.circuit.exit_hop(),
            cell: RelayCell::new(self.id, RelayMsg::End(EndReason::Done)),
        };
        if let Err(mpsc::error::TrySendError::Full(end)) = self.circuit.forward.try_send(end) {
            let tx = self.circuit.forward.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(end).await;
                });
            }
        }
    }
}
