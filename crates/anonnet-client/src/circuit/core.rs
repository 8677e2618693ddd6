//! The circuit's protocol core, sans-IO: what each cell from the guard means, and how a
//! relay message is sealed for its hop. Spec: `docs/protocol.md` §6.4, §6.6, §7.2, §7.3.
//!
//! quinn-proto is the model: cells go in, events come out. Nothing here reads or writes
//! the network, waits, or sends on a channel, so the tests below drive it with a real
//! onion and no runtime. [`ReaderCore`] owns the backward onion layers and the circuit
//! deliver window and applies every rule a cell from the guard is subject to; the reader
//! task only reads cells and carries out the [`ReaderEvent`]s. [`WriterCore`] owns the
//! forward layers and records the tags the exit's circuit `SENDME`s must echo; the writer
//! task only writes what it seals.

use super::*;
use anonnet_crypto::OnionError;
use anonnet_wire::WireError;

/// What one cell from the guard means ([`ReaderCore::on_cell`]). A circuit `SENDME` due
/// to the exit is not an event of its own (a `DATA` cell can earn one and be delivered
/// too): [`ReaderCore::poll_sendme`] hands it out.
#[derive(Debug)]
pub(super) enum ReaderEvent {
    /// Nothing left to do: `PADDING`, a cell tolerated on a half-closed stream (§6.6), or
    /// a circuit or stream `SENDME` whose package permits are already added (§6.4).
    Nothing,
    /// Deliver `event` to an open stream through `tx`, its channel. After `END` the
    /// stream is already gone from the stream table.
    Stream {
        /// The stream's channel (a clone of the stream table's sender).
        tx: mpsc::Sender<StreamEvent>,
        /// `CONNECTED`, `DATA` (1..=[`anonnet_wire::BACKWARD_MESSAGE_MAX`] − 5 bytes, a
        /// slice of the cell, not a copy) or `END`.
        event: StreamEvent,
    },
    /// A §13 message from the last relay, for [`Circuit::control_messages`].
    Control(RelayMsg),
    /// `BEGIN` from the far end of a rendezvous circuit (service side, §13.5) on stream
    /// `id`, which is not open; the shell accepts or refuses it.
    IncomingBegin {
        /// The stream the far end chose.
        id: StreamId,
        /// The `BEGIN` target as the client wrote it.
        target: Target,
        /// The port asked for.
        port: u16,
    },
}

/// Why the circuit must close, as [`ReaderCore::on_cell`] decides it. The texts are the
/// reader's log lines. [`CloseReason::is_unexpected_cell`] says which count in
/// `counters.unexpected_cells` (§6.6).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub(super) enum CloseReason {
    /// The guard sent `DESTROY` (§4.5); `None` when its reason byte was missing.
    #[error("DESTROY from guard: {0:?}")]
    Destroyed(Option<DestroyReason>),
    /// A cell command the guard may not send on a built circuit (`CREATE`, `CREATED`,
    /// `CONTINUE` or an unknown byte; `None` for an empty cell).
    #[error("unexpected cell (command {0:?})")]
    UnexpectedCommand(Option<u8>),
    /// The onion did not open: a modified, replayed, dropped or reordered cell, or one no
    /// hop originated (§7.3).
    #[error("bad cell: {0}")]
    BadCell(OnionError),
    /// The relay message inside the onion does not decode (§6.1).
    #[error("bad relay message: {0}")]
    BadRelayMessage(WireError),
    /// `DROP` from hop `hop`: no padding is negotiated (§6.6).
    #[error("unexpected DROP from hop {hop}")]
    UnexpectedDrop {
        /// The hop that sent it (0 = guard).
        hop: usize,
    },
    /// A stream cell from the exit for a stream this client never had, or beyond what a
    /// half-closed stream may still receive (§6.6); the text names it.
    #[error("unexpected cell from the exit: {0}")]
    UnexpectedStreamCell(String),
    /// A message hop `hop` does not send (§6.6), e.g. `DATA` from a middle relay, a
    /// circuit `SENDME` from a relay that is not the exit, `BEGIN` from a relay.
    #[error("unexpected {what} from hop {hop}")]
    UnexpectedMessage {
        /// The hop that sent it (0 = guard).
        hop: usize,
        /// The message's name.
        what: &'static str,
    },
    /// A circuit `SENDME` whose tag is not the one recorded, or with none due (§6.4).
    #[error("exit sent a circuit SENDME that proves nothing")]
    BadCircuitSendme,
    /// A stream `SENDME` that would open the package window beyond `STREAM_WINDOW_MAX`
    /// (4000) cells (§6.4).
    #[error("exit sent an unexpected stream SENDME")]
    UnexpectedStreamSendme,
    /// More `DATA` than the stream deliver window allows (500 cells, §6.4).
    #[error("exit broke the window of stream {}", .0 .0)]
    StreamWindowBroken(StreamId),
    /// `TRUNCATED`: the circuit beyond hop `hop` is gone.
    #[error("TRUNCATED by hop {hop}: {reason:?}")]
    Truncated {
        /// The hop that sent it.
        hop: usize,
        /// Its reason.
        reason: DestroyReason,
    },
    /// `BEGIN` from the far end for a stream id already open (§13.5).
    #[error("BEGIN for stream {} already open", .0 .0)]
    BeginOnOpenStream(StreamId),
    /// The stream table's lock was poisoned by a panic elsewhere.
    #[error("stream table poisoned")]
    StreamTablePoisoned,
}

impl CloseReason {
    /// True when the cell is one the client did not expect (§6.6): the shell counts it in
    /// `counters.unexpected_cells`.
    pub(super) fn is_unexpected_cell(&self) -> bool {
        matches!(
            self,
            CloseReason::UnexpectedDrop { .. }
                | CloseReason::UnexpectedStreamCell(_)
                | CloseReason::UnexpectedMessage { .. }
        )
    }
}

/// The backward half of a client circuit as a state machine: whole cells from the guard
/// in, [`ReaderEvent`]s out (§6.4, §6.6, §7.3). After an `Err` the circuit is dead and the
/// core must not be fed again.
pub(super) struct ReaderCore {
    /// One backward layer per hop, guard first, and the end-to-end hop once pushed.
    layers: ClientBackward,
    /// Relays on the circuit: hop `relays − 1` is the last relay, the only one whose §13
    /// messages are taken; a hop beyond it is the end-to-end hop.
    relays: usize,
    /// Counts `DATA` from the exit; every 100th earns a circuit `SENDME`.
    deliver: CircuitDeliverWindow,
    /// The circuit `SENDME` due, until [`ReaderCore::poll_sendme`] takes it.
    sendme: Option<Forward>,
    /// Tags the exit's circuit `SENDME`s must echo, recorded by [`WriterCore::seal`].
    sendme_tags: Arc<Mutex<SendmeTags>>,
    /// The circuit package window for `DATA` to the exit (permits, shared with streams).
    package: Arc<Semaphore>,
}

impl ReaderCore {
    /// A core for a built circuit of `relays` relays whose backward layers are `layers`
    /// (one per relay), sharing the circuit's `sendme_tags` with the [`WriterCore`] and its
    /// `package` window (permits, [`CIRCUIT_WINDOW`] at the start) with the streams.
    pub(super) fn new(
        layers: ClientBackward,
        relays: usize,
        sendme_tags: Arc<Mutex<SendmeTags>>,
        package: Arc<Semaphore>,
    ) -> Self {
        ReaderCore {
            layers,
            relays,
            deliver: CircuitDeliverWindow::default(),
            sendme: None,
            sendme_tags,
            package,
        }
    }

    /// Add the end-to-end hop of a rendezvous circuit (§13.5): from the next cell on, the
    /// exit is the far end. Call it before any cell from that hop arrives.
    pub(super) fn push_end_to_end(&mut self, keys: &EndToEndKeys) {
        self.layers.push_end_to_end(keys);
    }

    /// The hop streams come from: the exit, or the far end of a rendezvous circuit.
    fn exit_hop(&self) -> usize {
        self.layers.len().saturating_sub(1)
    }

    /// The circuit `SENDME` (stream 0, the echo tag, §6.4) the writer must send to the
    /// exit, once; call it after every [`ReaderCore::on_cell`]. At most one falls due per
    /// `DATA` cell.
    pub(super) fn poll_sendme(&mut self) -> Option<Forward> {
        self.sendme.take()
    }

    /// What `cell`, one whole [`CELL_LEN`]-byte cell from the guard, means. `RELAY` cells
    /// are opened in place; a `DATA` payload comes back as a slice of `cell`. `streams` is
    /// the circuit's stream table, locked only after the onion is opened, as briefly as
    /// the one lookup needs.
    ///
    /// # Errors
    /// A [`CloseReason`] when the circuit must close: `DESTROY` or a command other than
    /// `RELAY`/`PADDING` (§4), a cell that fails the onion (§7.3), a malformed message
    /// (§6.1), a broken window or a `SENDME` that proves nothing (§6.4), `TRUNCATED`, or a
    /// cell the client did not expect (§6.6).
    pub(super) fn on_cell(
        &mut self,
        mut cell: BytesMut,
        streams: &Mutex<StreamTable>,
    ) -> Result<ReaderEvent, CloseReason> {
        match cell.first().copied().map(CellCommand::from_byte) {
            Some(Ok(CellCommand::Relay)) => {}
            Some(Ok(CellCommand::Padding)) => return Ok(ReaderEvent::Nothing),
            Some(Ok(CellCommand::Destroy)) => {
                return Err(CloseReason::Destroyed(
                    Destroy::decode(&cell).ok().map(|d| d.reason),
                ))
            }
            _ => return Err(CloseReason::UnexpectedCommand(cell.first().copied())),
        }
        let (hop, range, tag) = self
            .layers
            .open_backward(&mut cell[..])
            .map_err(CloseReason::BadCell)?;
        let RelayCell { stream_id, msg } =
            RelayCell::decode(&cell.freeze().slice(range)).map_err(CloseReason::BadRelayMessage)?;
        let exit = self.exit_hop();
        if hop != exit {
            return self.relay_message(hop, msg);
        }
        match msg {
            RelayMsg::Data(_)
            | RelayMsg::End(_)
            | RelayMsg::Connected
            | RelayMsg::Sendme(None)
            | RelayMsg::Resolved(_) => self.stream_cell(stream_id, msg, tag, streams),
            RelayMsg::Sendme(Some(echo)) => {
                let open = self
                    .sendme_tags
                    .lock()
                    .ok()
                    .and_then(|mut t| t.on_sendme(&echo, std::time::Instant::now()).ok());
                let Some(open) = open else {
                    return Err(CloseReason::BadCircuitSendme);
                };
                anonnet_net::open_window(&self.package, open);
                Ok(ReaderEvent::Nothing)
            }
            RelayMsg::Begin { target, port } if exit >= self.relays => {
                let open = streams
                    .lock()
                    .map_err(|_| CloseReason::StreamTablePoisoned)?
                    .streams
                    .contains_key(&stream_id);
                if open {
                    return Err(CloseReason::BeginOnOpenStream(stream_id));
                }
                Ok(ReaderEvent::IncomingBegin {
                    id: stream_id,
                    target,
                    port,
                })
            }
            other => self.relay_message(hop, other),
        }
    }

    /// A message that is not a stream's, circuit `SENDME` or `BEGIN` from the exit: only
    /// §13 messages from the last relay and `TRUNCATED` are expected.
    fn relay_message(&self, hop: usize, msg: RelayMsg) -> Result<ReaderEvent, CloseReason> {
        match msg {
            RelayMsg::Drop => Err(CloseReason::UnexpectedDrop { hop }),
            m if m.is_hs() && hop + 1 == self.relays => Ok(ReaderEvent::Control(m)),
            RelayMsg::Truncated(reason) => Err(CloseReason::Truncated { hop, reason }),
            other => Err(CloseReason::UnexpectedMessage {
                hop,
                what: msg_name(&other),
            }),
        }
    }

    /// `DATA`, `END`, `CONNECTED` or a stream `SENDME` from the exit, whose layer tag was
    /// `tag`.
    fn stream_cell(
        &mut self,
        id: StreamId,
        msg: RelayMsg,
        tag: [u8; 16],
        streams: &Mutex<StreamTable>,
    ) -> Result<ReaderEvent, CloseReason> {
        // Every DATA from the exit counts for the circuit window, for an open stream or
        // not (the exit counted it too); every 100th earns it a circuit SENDME.
        if matches!(msg, RelayMsg::Data(_)) {
            if let Some(echo) = self.deliver.on_data(tag) {
                self.sendme = Some(Forward {
                    hop: self.exit_hop(),
                    cell: RelayCell::new(StreamId::CIRCUIT, RelayMsg::Sendme(Some(echo))),
                });
            }
        }
        let mut guard = streams
            .lock()
            .map_err(|_| CloseReason::StreamTablePoisoned)?;
        let table = &mut *guard;
        let Some(entry) = table.streams.get(&id) else {
            // No silent cells (§6.6, DropMark): beyond what a half-closed stream may
            // still receive, a cell for a stream this client does not have closes the
            // circuit, so no pair of relays can signal through it.
            return match table.half_closed.on_cell(id, &msg) {
                Ok(()) => Ok(ReaderEvent::Nothing),
                Err(why) => Err(CloseReason::UnexpectedStreamCell(why)),
            };
        };
        // A resolve stream takes RESOLVED or END; a stream opened by BEGIN never takes
        // RESOLVED (§6.2).
        let fits = match &msg {
            RelayMsg::End(_) => true,
            RelayMsg::Resolved(_) => entry.resolve,
            _ => !entry.resolve,
        };
        if !fits {
            return Err(CloseReason::UnexpectedMessage {
                hop: self.exit_hop(),
                what: msg_name(&msg),
            });
        }
        let event = match msg {
            RelayMsg::Resolved(answers) => {
                let tx = entry.tx.clone();
                table.streams.remove(&id);
                return Ok(ReaderEvent::Stream {
                    tx,
                    event: StreamEvent::Resolved(answers),
                });
            }
            RelayMsg::Sendme(None) => {
                let inc = STREAM_INCREMENT as usize;
                if entry.package.available_permits() + inc > STREAM_WINDOW_MAX as usize {
                    return Err(CloseReason::UnexpectedStreamSendme);
                }
                entry.package.add_permits(inc);
                return Ok(ReaderEvent::Nothing);
            }
            RelayMsg::Data(d) => {
                let within = entry
                    .deliver
                    .lock()
                    .map(|mut w| w.on_data().is_ok())
                    .unwrap_or(false);
                if !within {
                    return Err(CloseReason::StreamWindowBroken(id));
                }
                StreamEvent::Data(d)
            }
            RelayMsg::Connected => StreamEvent::Connected,
            RelayMsg::End(reason) => {
                let tx = entry.tx.clone();
                table.streams.remove(&id);
                return Ok(ReaderEvent::Stream {
                    tx,
                    event: StreamEvent::End(reason),
                });
            }
            other => {
                return Err(CloseReason::UnexpectedMessage {
                    hop: self.exit_hop(),
                    what: msg_name(&other),
                })
            }
        };
        Ok(ReaderEvent::Stream {
            tx: entry.tx.clone(),
            event,
        })
    }
}

/// Why [`WriterCore::seal`] could not seal a relay message; the message is dropped.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub(super) enum SealError {
    /// The message does not encode (too long, or on the wrong stream for its command).
    #[error("relay message does not encode: {0}")]
    Encode(WireError),
    /// The onion refused it (no such hop, or 2^64 cells sealed).
    #[error("onion: {0}")]
    Onion(OnionError),
}

/// The forward half of a client circuit as a state machine: relay messages in, sealed
/// [`CELL_LEN`]-byte cells for the guard out (§7.2), with the tag of every `DATA` cell to
/// the exit recorded for its circuit `SENDME`s (§6.4).
pub(super) struct WriterCore {
    /// One forward layer per hop, guard first, and the end-to-end hop once pushed.
    layers: ClientForward,
    /// Where the exit's `SENDME` tags are recorded, for [`ReaderCore`] to check.
    sendme_tags: Arc<Mutex<SendmeTags>>,
    /// The sealing buffer, [`forward_buffer_len`] bytes of the last cell's hop; reused,
    /// so a cell costs no allocation.
    buf: Vec<u8>,
}

impl WriterCore {
    /// A core sealing with `layers` (one per relay), recording tags in `sendme_tags`.
    pub(super) fn new(layers: ClientForward, sendme_tags: Arc<Mutex<SendmeTags>>) -> Self {
        WriterCore {
            layers,
            sendme_tags,
            buf: Vec::new(),
        }
    }

    /// Add the end-to-end hop of a rendezvous circuit (§13.5). Call it before any cell to
    /// that hop.
    pub(super) fn push_end_to_end(&mut self, keys: &EndToEndKeys) {
        self.layers.push_end_to_end(keys);
    }

    /// Seal `cell` for hop `hop` (0 = guard): the [`CELL_LEN`] bytes to write to the
    /// guard, valid until the next call.
    ///
    /// # Errors
    /// [`SealError::Encode`] for a message that does not fit [`FORWARD_MESSAGE_MAX`]
    /// (807) bytes or is on the wrong stream, [`SealError::Onion`] for a hop that is not
    /// built or after 2^64 cells.
    pub(super) fn seal(&mut self, hop: usize, cell: &RelayCell) -> Result<&[u8], SealError> {
        self.buf.clear();
        self.buf.resize(forward_buffer_len(hop), 0);
        let area = self
            .buf
            .get_mut(message_offset(hop)..message_offset(hop) + FORWARD_MESSAGE_MAX)
            .ok_or(SealError::Onion(OnionError::Size))?;
        let len = cell.encode_into(area).map_err(SealError::Encode)?;
        let tag = self
            .layers
            .seal_forward(&mut self.buf, hop, len)
            .map_err(SealError::Onion)?;
        if hop + 1 == self.layers.len() && matches!(cell.msg, RelayMsg::Data(_)) {
            if let Ok(mut tags) = self.sendme_tags.lock() {
                tags.on_data_sent(tag, std::time::Instant::now());
            }
        }
        self.buf
            .get(..CELL_LEN)
            .ok_or(SealError::Onion(OnionError::Size))
    }
}

#[cfg(test)]
mod tests {
    //! Scenarios on a real onion: three relays' layers originate and wrap backward cells
    //! exactly as relays do, and open the cells the [`WriterCore`] seals.

    use super::*;
    use anonnet_crypto::RelayOnion;
    use anonnet_wire::cell::{relay_layout, LayerKind};
    use anonnet_wire::BACKWARD_MESSAGE_MAX;

    const GUARD: usize = 0;
    const MIDDLE: usize = 1;
    const EXIT: usize = 2;

    fn hop_keys(i: u8) -> HopKeys {
        HopKeys {
            forward: [i; 32],
            backward: [i + 100; 32],
        }
    }

    /// A built 3-hop circuit: the client's cores and the relays' layers.
    struct Net {
        reader: ReaderCore,
        writer: WriterCore,
        relays: Vec<RelayOnion>,
        streams: Mutex<StreamTable>,
        package: Arc<Semaphore>,
    }

    impl Net {
        fn new() -> Net {
            let mut onion = ClientOnion::new();
            let mut relays = Vec::new();
            for i in 1..=3 {
                onion.push_hop(&hop_keys(i));
                relays.push(RelayOnion::new(&hop_keys(i)));
            }
            let (forward, backward) = onion.split();
            let tags = Arc::new(Mutex::new(SendmeTags::default()));
            let package = Arc::new(Semaphore::new(CIRCUIT_WINDOW as usize));
            Net {
                reader: ReaderCore::new(backward, 3, tags.clone(), package.clone()),
                writer: WriterCore::new(forward, tags),
                relays,
                streams: Mutex::new(StreamTable::default()),
                package,
            }
        }

        /// Open stream `id` as `Circuit::begin` does; the receiver keeps its channel open.
        fn open_stream(&self, id: u16) -> (mpsc::Receiver<StreamEvent>, StreamEntry) {
            self.open(id, false)
        }

        /// Open stream `id` as `Circuit::begin` (`resolve` false) or `Circuit::resolve`
        /// does.
        fn open(&self, id: u16, resolve: bool) -> (mpsc::Receiver<StreamEvent>, StreamEntry) {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            let entry = StreamEntry {
                tx,
                deliver: Arc::new(Mutex::new(StreamDeliverWindow::default())),
                package: Arc::new(Semaphore::new(STREAM_WINDOW as usize)),
                resolve,
            };
            self.streams
                .lock()
                .unwrap()
                .streams
                .insert(StreamId(id), entry.clone());
            (rx, entry)
        }

        /// Hop `from` originates `msg` on `stream` and the hops before it wrap it: the
        /// cell as the guard sends it, and the originator's layer tag.
        fn cell_from(&mut self, from: usize, stream: u16, msg: RelayMsg) -> (BytesMut, [u8; 16]) {
            let mut cell = vec![0u8; CELL_LEN];
            let len = RelayCell::new(StreamId(stream), msg)
                .encode_into(
                    &mut cell[relay_layout::INNER..relay_layout::INNER + BACKWARD_MESSAGE_MAX],
                )
                .unwrap();
            let tag = self.relays[from]
                .backward
                .originate(&mut cell, len)
                .unwrap();
            for h in (0..from).rev() {
                self.relays[h].backward.wrap(&mut cell).unwrap();
            }
            (BytesMut::from(&cell[..]), tag)
        }

        /// Hop `from` sends `msg` on `stream` and the client's reader takes it.
        fn receive(
            &mut self,
            from: usize,
            stream: u16,
            msg: RelayMsg,
        ) -> Result<ReaderEvent, CloseReason> {
            let (cell, _) = self.cell_from(from, stream, msg);
            self.reader.on_cell(cell, &self.streams)
        }

        /// The client seals `msg` on `stream` for `hop`; the relays carry it there.
        /// Returns the receiving hop's layer tag.
        fn send(&mut self, hop: usize, stream: u16, msg: RelayMsg) -> [u8; 16] {
            let mut cell = self
                .writer
                .seal(hop, &RelayCell::new(StreamId(stream), msg))
                .unwrap()
                .to_vec();
            for (h, relay) in self.relays.iter_mut().enumerate() {
                if relay.forward.open_forward(&mut cell).unwrap() == LayerKind::Deliver {
                    assert_eq!(h, hop);
                    return anonnet_crypto::onion::relay_cell_tag(&cell).unwrap();
                }
            }
            panic!("no hop took the cell");
        }
    }

    fn data() -> RelayMsg {
        RelayMsg::Data(Bytes::from_static(b"payload"))
    }

    fn assert_unexpected(r: Result<ReaderEvent, CloseReason>) -> CloseReason {
        let why = r.unwrap_err();
        assert!(why.is_unexpected_cell(), "{why} counts as unexpected");
        why
    }

    #[test]
    fn a_drop_from_the_exit_closes_the_circuit_as_an_unexpected_cell() {
        let mut n = Net::new();
        let why = assert_unexpected(n.receive(EXIT, 0, RelayMsg::Drop));
        assert_eq!(why, CloseReason::UnexpectedDrop { hop: EXIT });
        let mut n = Net::new();
        assert_unexpected(n.receive(MIDDLE, 0, RelayMsg::Drop));
    }

    #[test]
    fn stream_cells_for_a_stream_never_opened_close_the_circuit() {
        for msg in [
            data(),
            RelayMsg::End(EndReason::Done),
            RelayMsg::Connected,
            RelayMsg::Sendme(None),
        ] {
            let mut n = Net::new();
            let _open = n.open_stream(1);
            let why = assert_unexpected(n.receive(EXIT, 7, msg.clone()));
            assert!(
                matches!(why, CloseReason::UnexpectedStreamCell(_)),
                "{msg:?}: {why}"
            );
        }
    }

    #[test]
    fn a_half_closed_stream_takes_one_window_of_data_then_the_circuit_closes() {
        let mut n = Net::new();
        n.streams.lock().unwrap().half_closed.close(StreamId(5));
        let mut sendmes = 0;
        // The largest window the stream could have grown to (§6.4).
        for _ in 0..STREAM_WINDOW_MAX {
            assert!(matches!(
                n.receive(EXIT, 5, data()),
                Ok(ReaderEvent::Nothing)
            ));
            sendmes += usize::from(n.reader.poll_sendme().is_some());
        }
        assert_eq!(
            sendmes,
            (STREAM_WINDOW_MAX / CIRCUIT_INCREMENT) as usize,
            "tolerated DATA still counts for the circuit window"
        );
        assert_unexpected(n.receive(EXIT, 5, data()));

        // Its END completes the close: after it, nothing more is tolerated.
        let mut n = Net::new();
        n.streams.lock().unwrap().half_closed.close(StreamId(5));
        assert!(matches!(
            n.receive(EXIT, 5, RelayMsg::End(EndReason::Done)),
            Ok(ReaderEvent::Nothing)
        ));
        assert_unexpected(n.receive(EXIT, 5, data()));
    }

    #[test]
    fn a_circuit_sendme_echoing_the_hundredth_tag_opens_the_package_window() {
        let mut n = Net::new();
        let _open = n.open_stream(1);
        n.package
            .try_acquire_many(CIRCUIT_INCREMENT)
            .unwrap()
            .forget();
        let mut last = [0u8; 16];
        for _ in 0..CIRCUIT_INCREMENT {
            last = n.send(EXIT, 1, data());
        }
        // Cells to other hops and other messages record nothing.
        n.send(MIDDLE, 0, RelayMsg::Drop);
        n.send(EXIT, 1, RelayMsg::Sendme(None));
        assert!(matches!(
            n.receive(EXIT, 0, RelayMsg::Sendme(Some(last))),
            Ok(ReaderEvent::Nothing)
        ));
        assert_eq!(n.package.available_permits(), CIRCUIT_WINDOW as usize);
        // None is due any more.
        assert_eq!(
            n.receive(EXIT, 0, RelayMsg::Sendme(Some(last)))
                .unwrap_err(),
            CloseReason::BadCircuitSendme
        );
    }

    #[test]
    fn a_forged_circuit_sendme_is_refused() {
        // The exit knows its forward key, the sequence number and the content of the
        // 100th cell, but not the client's random padding: its guess of the tag is wrong.
        let mut n = Net::new();
        let mut forger = anonnet_crypto::LayerSealer::new(
            &anonnet_crypto::onion::LayerKeys::from_hop(&hop_keys(3)).forward,
        );
        let mut guess = [0u8; 16];
        let mut real = [0u8; 16];
        for _ in 0..CIRCUIT_INCREMENT {
            real = n.send(EXIT, 1, data());
            let mut region = vec![0u8; CELL_LEN - 1];
            region[relay_layout::BODY - 1] = LayerKind::Deliver as u8;
            RelayCell::new(StreamId(1), data())
                .encode_into(&mut region[relay_layout::INNER - 1..])
                .unwrap();
            forger.seal(&mut region).unwrap();
            guess.copy_from_slice(&region[8..24]);
        }
        assert_ne!(guess, real);
        let permits = n.package.available_permits();
        assert_eq!(
            n.receive(EXIT, 0, RelayMsg::Sendme(Some(guess)))
                .unwrap_err(),
            CloseReason::BadCircuitSendme
        );
        assert_eq!(n.package.available_permits(), permits);

        // One bit off the real tag.
        let mut n = Net::new();
        for _ in 0..CIRCUIT_INCREMENT {
            real = n.send(EXIT, 1, data());
        }
        real[0] ^= 1;
        assert_eq!(
            n.receive(EXIT, 0, RelayMsg::Sendme(Some(real)))
                .unwrap_err(),
            CloseReason::BadCircuitSendme
        );
        // And one before anything was sent.
        let mut n = Net::new();
        assert!(n.receive(EXIT, 0, RelayMsg::Sendme(Some(real))).is_err());
    }

    #[test]
    fn a_stream_sendme_beyond_the_largest_window_closes_the_circuit() {
        // A receiver grows a stream window with extra SENDMEs up to STREAM_WINDOW_MAX;
        // one more than that can only be a peer breaking flow control.
        let mut n = Net::new();
        let (_rx, entry) = n.open_stream(1);
        for _ in 0..(STREAM_WINDOW_MAX - STREAM_WINDOW) / STREAM_INCREMENT {
            assert!(matches!(
                n.receive(EXIT, 1, RelayMsg::Sendme(None)),
                Ok(ReaderEvent::Nothing)
            ));
        }
        assert_eq!(
            entry.package.available_permits(),
            STREAM_WINDOW_MAX as usize
        );
        assert_eq!(
            n.receive(EXIT, 1, RelayMsg::Sendme(None)).unwrap_err(),
            CloseReason::UnexpectedStreamSendme
        );
        // Once 50 cells were sent, one is due again and opens the window.
        let mut n = Net::new();
        let (_rx, entry2) = n.open_stream(1);
        for _ in 0..(STREAM_WINDOW_MAX - STREAM_WINDOW) / STREAM_INCREMENT {
            n.receive(EXIT, 1, RelayMsg::Sendme(None)).unwrap();
        }
        entry2
            .package
            .try_acquire_many(STREAM_INCREMENT)
            .unwrap()
            .forget();
        assert!(matches!(
            n.receive(EXIT, 1, RelayMsg::Sendme(None)),
            Ok(ReaderEvent::Nothing)
        ));
        assert!(n.receive(EXIT, 1, RelayMsg::Sendme(None)).is_err());
    }

    #[test]
    fn every_hundredth_data_cell_from_the_exit_earns_a_circuit_sendme_with_its_tag() {
        let mut n = Net::new();
        let (_rx1, _) = n.open_stream(1);
        let (_rx2, _) = n.open_stream(2);
        let mut due = Vec::new();
        for i in 1..=450u32 {
            let (cell, tag) = n.cell_from(EXIT, 1 + (i % 2) as u16, data());
            let event = n.reader.on_cell(cell, &n.streams).unwrap();
            assert!(matches!(
                event,
                ReaderEvent::Stream {
                    event: StreamEvent::Data(ref d),
                    ..
                } if &d[..] == b"payload"
            ));
            if let Some(sendme) = n.reader.poll_sendme() {
                assert_eq!(sendme.hop, EXIT);
                assert_eq!(sendme.cell.stream_id, StreamId::CIRCUIT);
                assert_eq!(sendme.cell.msg, RelayMsg::Sendme(Some(tag)));
                due.push(i);
            }
            assert!(n.reader.poll_sendme().is_none(), "handed out once");
        }
        assert_eq!(due, [100, 200, 300, 400]);
        // Other cells from the exit do not count.
        for _ in 0..60 {
            n.receive(EXIT, 1, RelayMsg::Connected).unwrap();
            assert!(n.reader.poll_sendme().is_none());
        }
    }

    #[test]
    fn data_beyond_the_stream_window_closes_the_circuit() {
        let mut n = Net::new();
        let (_rx, _) = n.open_stream(1);
        for _ in 0..STREAM_WINDOW {
            n.receive(EXIT, 1, data()).unwrap();
        }
        assert_eq!(
            n.receive(EXIT, 1, data()).unwrap_err(),
            CloseReason::StreamWindowBroken(StreamId(1))
        );
    }

    #[test]
    fn end_from_the_exit_closes_the_stream_and_later_cells_for_it_are_unexpected() {
        let mut n = Net::new();
        let (_rx, entry) = n.open_stream(1);
        assert!(matches!(
            n.receive(EXIT, 1, RelayMsg::Connected),
            Ok(ReaderEvent::Stream {
                tx,
                event: StreamEvent::Connected,
            }) if tx.same_channel(&entry.tx)
        ));
        assert!(matches!(
            n.receive(EXIT, 1, RelayMsg::End(EndReason::Done)),
            Ok(ReaderEvent::Stream {
                event: StreamEvent::End(EndReason::Done),
                ..
            })
        ));
        assert!(n.streams.lock().unwrap().streams.is_empty());
        assert_unexpected(n.receive(EXIT, 1, data()));
    }

    #[test]
    fn resolved_answers_a_resolve_stream_and_nothing_else() {
        let answers = vec![ResolvedAnswer::Ip("127.0.0.1".parse().unwrap())];
        // A resolve stream: RESOLVED is delivered and closes it; a late cell for it is
        // unexpected.
        let mut n = Net::new();
        let (_rx, entry) = n.open(1, true);
        assert!(matches!(
            n.receive(EXIT, 1, RelayMsg::Resolved(answers.clone())),
            Ok(ReaderEvent::Stream {
                tx,
                event: StreamEvent::Resolved(ref a),
            }) if tx.same_channel(&entry.tx) && *a == answers
        ));
        assert!(n.streams.lock().unwrap().streams.is_empty());
        assert_unexpected(n.receive(EXIT, 1, RelayMsg::Resolved(answers.clone())));
        // CONNECTED or DATA on a resolve stream, RESOLVED on a BEGIN stream: the circuit
        // closes.
        for (resolve, msg) in [
            (true, RelayMsg::Connected),
            (true, data()),
            (false, RelayMsg::Resolved(answers.clone())),
        ] {
            let mut n = Net::new();
            let (_rx, _) = n.open(1, resolve);
            assert_unexpected(n.receive(EXIT, 1, msg));
        }
        // END refuses a resolve (EXITPOLICY at the exit) like any stream.
        let mut n = Net::new();
        let (_rx, _) = n.open(1, true);
        assert!(matches!(
            n.receive(EXIT, 1, RelayMsg::End(EndReason::ExitPolicy)),
            Ok(ReaderEvent::Stream {
                event: StreamEvent::End(EndReason::ExitPolicy),
                ..
            })
        ));
    }

    #[test]
    fn a_tampered_backward_cell_closes_the_circuit() {
        for pos in [1, 9, 30, 700, CELL_LEN - 1] {
            let mut n = Net::new();
            let (_rx, _) = n.open_stream(1);
            let (mut cell, _) = n.cell_from(EXIT, 1, data());
            cell[pos] ^= 1;
            let why = n.reader.on_cell(cell, &n.streams).unwrap_err();
            assert!(matches!(why, CloseReason::BadCell(_)), "{pos}: {why}");
            assert!(!why.is_unexpected_cell());
        }
    }

    #[test]
    fn a_replayed_backward_cell_closes_the_circuit() {
        let mut n = Net::new();
        let (_rx, _) = n.open_stream(1);
        let (cell, _) = n.cell_from(EXIT, 1, data());
        n.reader.on_cell(cell.clone(), &n.streams).unwrap();
        assert!(matches!(
            n.reader.on_cell(cell, &n.streams),
            Err(CloseReason::BadCell(_))
        ));
    }

    #[test]
    fn a_skipped_backward_cell_closes_the_circuit() {
        let mut n = Net::new();
        let (_rx, _) = n.open_stream(1);
        let _dropped_by_the_middle = n.cell_from(EXIT, 1, data());
        let (second, _) = n.cell_from(EXIT, 1, data());
        assert!(matches!(
            n.reader.on_cell(second, &n.streams),
            Err(CloseReason::BadCell(_))
        ));
    }

    #[test]
    fn destroy_from_the_guard_closes_the_circuit_with_its_reason_and_padding_is_ignored() {
        let mut n = Net::new();
        let padding = BytesMut::zeroed(CELL_LEN);
        assert!(matches!(
            n.reader.on_cell(padding, &n.streams),
            Ok(ReaderEvent::Nothing)
        ));
        // Padding takes no wrap number: relay cells still open after it.
        let (_rx, _) = n.open_stream(1);
        n.receive(EXIT, 1, data()).unwrap();
        let destroy = Destroy {
            reason: DestroyReason::ChannelClosed,
        }
        .encode(CELL_LEN)
        .unwrap();
        let why = n
            .reader
            .on_cell(BytesMut::from(&destroy[..]), &n.streams)
            .unwrap_err();
        assert_eq!(
            why,
            CloseReason::Destroyed(Some(DestroyReason::ChannelClosed))
        );
        assert!(!why.is_unexpected_cell());
        // A CREATED on a built circuit closes it too.
        let mut created = vec![0u8; CELL_LEN];
        created[0] = CellCommand::Created as u8;
        assert_eq!(
            n.reader
                .on_cell(BytesMut::from(&created[..]), &n.streams)
                .unwrap_err(),
            CloseReason::UnexpectedCommand(Some(CellCommand::Created as u8))
        );
    }

    #[test]
    fn cells_only_the_exit_may_send_close_the_circuit_when_a_middle_sends_them() {
        let cases = [
            (MIDDLE, data()),
            (MIDDLE, RelayMsg::Connected),
            (GUARD, RelayMsg::End(EndReason::Done)),
            (MIDDLE, RelayMsg::Sendme(None)),
        ];
        for (hop, msg) in cases {
            let mut n = Net::new();
            let (_rx, _) = n.open_stream(1);
            let why = assert_unexpected(n.receive(hop, 1, msg.clone()));
            assert!(
                matches!(why, CloseReason::UnexpectedMessage { hop: h, .. } if h == hop),
                "{msg:?}: {why}"
            );
        }
        let mut n = Net::new();
        assert_unexpected(n.receive(MIDDLE, 0, RelayMsg::Sendme(Some([1; 16]))));
        // A §13 message is taken from the last relay (here the exit), from no other hop.
        let mut n = Net::new();
        assert!(matches!(
            n.receive(EXIT, 0, RelayMsg::IntroduceAck(0)),
            Ok(ReaderEvent::Control(RelayMsg::IntroduceAck(0)))
        ));
        let mut n = Net::new();
        let why = assert_unexpected(n.receive(MIDDLE, 0, RelayMsg::IntroduceAck(0)));
        assert_eq!(
            why,
            CloseReason::UnexpectedMessage {
                hop: MIDDLE,
                what: "relay message"
            }
        );
        let mut n = Net::new();
        assert_unexpected(n.receive(
            EXIT,
            3,
            RelayMsg::Begin {
                target: Target::Host("a.example".into()),
                port: 80,
            },
        ));
    }

    #[test]
    fn truncated_closes_the_circuit_with_the_hop_and_reason() {
        let mut n = Net::new();
        let why = n
            .receive(MIDDLE, 0, RelayMsg::Truncated(DestroyReason::ChannelClosed))
            .unwrap_err();
        assert_eq!(
            why,
            CloseReason::Truncated {
                hop: MIDDLE,
                reason: DestroyReason::ChannelClosed
            }
        );
        assert!(!why.is_unexpected_cell());
    }

    /// A rendezvous circuit on the service's side: the 3 relays end at the rendezvous
    /// point, the end-to-end hop is the client. The client's cells reach the service sealed
    /// for the end-to-end hop and wrapped by each relay on the way (§13.5).
    struct Rendezvous {
        net: Net,
        far_end: ClientForward,
    }

    impl Rendezvous {
        fn new() -> Rendezvous {
            let mut net = Net::new();
            net.reader
                .push_end_to_end(&EndToEndKeys::new(&hop_keys(50), false));
            let mut far_end = ClientForward::new();
            far_end.push_end_to_end(&EndToEndKeys::new(&hop_keys(50), true));
            Rendezvous { net, far_end }
        }

        fn receive_from_far_end(
            &mut self,
            stream: u16,
            msg: RelayMsg,
        ) -> Result<ReaderEvent, CloseReason> {
            let mut cell = vec![0u8; CELL_LEN];
            let len = RelayCell::new(StreamId(stream), msg)
                .encode_into(&mut cell[message_offset(0)..message_offset(0) + FORWARD_MESSAGE_MAX])
                .unwrap();
            self.far_end.seal_forward(&mut cell, 0, len).unwrap();
            for relay in self.net.relays.iter_mut().rev() {
                relay.backward.wrap(&mut cell).unwrap();
            }
            self.net
                .reader
                .on_cell(BytesMut::from(&cell[..]), &self.net.streams)
        }
    }

    fn begin() -> RelayMsg {
        RelayMsg::Begin {
            target: Target::Host("service.anon".into()),
            port: 80,
        }
    }

    #[test]
    fn begin_is_taken_only_from_the_far_end_of_a_rendezvous_circuit() {
        let mut r = Rendezvous::new();
        assert!(matches!(
            r.receive_from_far_end(4, begin()),
            Ok(ReaderEvent::IncomingBegin {
                id: StreamId(4),
                port: 80,
                ..
            })
        ));
        let (_rx, entry) = r.net.open_stream(4);
        assert!(matches!(
            r.receive_from_far_end(4, data()),
            Ok(ReaderEvent::Stream { tx, .. }) if tx.same_channel(&entry.tx)
        ));
        assert_eq!(
            r.receive_from_far_end(4, begin()).unwrap_err(),
            CloseReason::BeginOnOpenStream(StreamId(4))
        );
        // From a relay, BEGIN is unexpected.
        let mut r = Rendezvous::new();
        assert_unexpected(r.net.receive(MIDDLE, 4, begin()));
    }

    #[test]
    fn on_a_rendezvous_circuit_only_the_far_end_sends_stream_cells() {
        // The rendezvous point is no longer the exit: its §13 messages are still taken,
        // DATA from it is unexpected.
        let mut r = Rendezvous::new();
        let (_rx, _) = r.net.open_stream(1);
        assert!(matches!(
            r.net.receive(EXIT, 0, RelayMsg::RendezvousEstablished),
            Ok(ReaderEvent::Control(_))
        ));
        assert_unexpected(r.net.receive(EXIT, 1, data()));
        // The far end is not a relay: §13 messages from it are unexpected.
        let mut r = Rendezvous::new();
        assert_unexpected(r.receive_from_far_end(0, RelayMsg::RendezvousEstablished));
    }
}
