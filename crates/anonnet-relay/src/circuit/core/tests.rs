//! Unit tests of the relay's circuit cores, fed real cells: sealed by a real client onion
//! and carried through the cores of every hop, as relays would (§4.3, §6, §7.3).

use super::*;
use anonnet_crypto::onion::{forward_buffer_len, message_offset};
use anonnet_crypto::{ClientOnion, HopKeys, HybridClientHandshake, OnionKey, RelayOnion};
use anonnet_wire::flow::CIRCUIT_INCREMENT;
use anonnet_wire::FORWARD_MESSAGE_MAX;

fn hop_keys(i: u8) -> HopKeys {
    HopKeys {
        forward: [i; 32],
        backward: [i + 100; 32],
    }
}

/// A client and `hops` relays' cores, with every relay but the last already extended.
struct Path {
    client: ClientOnion,
    forward: Vec<ForwardCore>,
    backward: Vec<BackwardCore>,
    flows: Vec<Arc<CircuitFlow>>,
}

fn path(hops: u8, exit: bool) -> Path {
    let mut p = Path {
        client: ClientOnion::new(),
        forward: Vec::new(),
        backward: Vec::new(),
        flows: Vec::new(),
    };
    for i in 1..=hops {
        p.client.push_hop(&hop_keys(i));
        let onion = RelayOnion::new(&hop_keys(i));
        let flow = Arc::new(CircuitFlow::new());
        let mut core = ForwardCore::new(onion.forward, flow.clone(), exit, 4);
        if i < hops {
            core.next = NextLeg::Extended;
        }
        p.forward.push(core);
        p.backward
            .push(BackwardCore::new(onion.backward, flow.clone()));
        p.flows.push(flow);
    }
    p
}

impl Path {
    /// A cell sealed by the client for `hop`, and the tag of that hop's layer.
    fn seal(&mut self, hop: usize, msg: RelayMsg) -> (BytesMut, [u8; 16]) {
        let mut buf = vec![0u8; forward_buffer_len(hop)];
        let off = message_offset(hop);
        let cell = RelayCell::new(stream_of(&msg), msg);
        let n = cell
            .encode_into(&mut buf[off..off + FORWARD_MESSAGE_MAX])
            .unwrap();
        let tag = self.client.seal_forward(&mut buf, hop, n).unwrap();
        buf.truncate(CELL_LEN);
        (BytesMut::from(&buf[..]), tag)
    }

    /// Carry `cell` from the client through hops `0..hop`, each of which must pass it on
    /// with the same 1024 bytes, and return what hop `hop` decides.
    fn carry(&mut self, hop: usize, mut cell: BytesMut) -> Result<Step, Refusal> {
        for h in 0..hop {
            assert_eq!(cell.len(), CELL_LEN);
            match self.forward[h].on_cell(cell)? {
                Step::ToNext(c) => cell = c,
                _ => panic!("hop {h} did not pass the cell on"),
            }
        }
        assert_eq!(cell.len(), CELL_LEN);
        self.forward[hop].on_cell(cell)
    }

    /// Seal `msg` for `hop` and carry it there.
    fn send(&mut self, hop: usize, msg: RelayMsg) -> Result<Step, Refusal> {
        let (cell, _) = self.seal(hop, msg);
        self.carry(hop, cell)
    }

    /// A message originated by hop `from`, wrapped by every hop before it, opened by the
    /// client: the originating hop, the message and its tag.
    fn back(&mut self, from: usize, msg: &RelayCell) -> (usize, RelayCell, [u8; 16]) {
        let mut batch = BytesMut::new();
        self.backward[from].originate(msg, &mut batch).unwrap();
        for h in (0..from).rev() {
            let mut out = BytesMut::new();
            assert_eq!(self.backward[h].wrap_from_next(&batch, &mut out), Ok(1));
            batch = out;
        }
        assert_eq!(batch.len(), CELL_LEN);
        let (hop, range, tag) = self.client.open_backward(&mut batch).unwrap();
        let msg = RelayCell::decode(&batch.freeze().slice(range)).unwrap();
        (hop, msg, tag)
    }
}

/// The stream id the tests use for each message: 0 for circuit-level ones, 7 otherwise.
fn stream_of(msg: &RelayMsg) -> StreamId {
    match msg {
        RelayMsg::Sendme(Some(_))
        | RelayMsg::Extend { .. }
        | RelayMsg::Extend2 { .. }
        | RelayMsg::HandshakeCont(_)
        | RelayMsg::Drop => StreamId::CIRCUIT,
        m if m.is_hs() => StreamId::CIRCUIT,
        _ => StreamId(7),
    }
}

fn begin() -> RelayMsg {
    RelayMsg::Begin {
        target: Target::Host("example.org".into()),
        port: 80,
    }
}

fn data() -> RelayMsg {
    RelayMsg::Data(Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"))
}

fn slot() -> (ExitSlot, mpsc::Receiver<Bytes>) {
    let (tx, rx) = mpsc::channel(4);
    let slot = ExitSlot {
        data: tx,
        token: CancellationToken::new(),
        package: Arc::new(Semaphore::new(STREAM_WINDOW as usize)),
        deliver: Arc::new(Mutex::new(StreamDeliverWindow::default())),
    };
    (slot, rx)
}

/// Open stream 7 at the exit (hop `exit`) of `p`.
fn open_stream(p: &mut Path, exit: usize) -> Arc<Semaphore> {
    match p.send(exit, begin()) {
        Ok(Step::Begin { id, port, .. }) => {
            assert_eq!((id, port), (StreamId(7), 80));
            let (s, _rx) = slot();
            let package = s.package.clone();
            p.forward[exit].add_stream(id, s);
            package
        }
        other => panic!("BEGIN not passed to the shell: {:?}", other.err()),
    }
}

#[test]
fn three_and_four_hop_circuits_carry_1024_byte_cells_at_every_position() {
    for hops in [3u8, 4] {
        let mut p = path(hops, true);
        let exit = usize::from(hops) - 1;
        // Forward: every hop before the exit passes the same 1024 bytes on (checked in
        // carry); the exit gets the message.
        open_stream(&mut p, exit);
        assert!(matches!(p.send(exit, data()), Ok(Step::Data { id, .. }) if id == StreamId(7)));
        // Every hop may also be the end of a message (an EXTEND, a §13 role).
        for hop in 0..exit {
            let (cell, _) = p.seal(hop, RelayMsg::EstablishRendezvous { cookie: [1; 20] });
            assert_eq!(cell.len(), CELL_LEN);
            assert!(matches!(p.carry(hop, cell), Ok(Step::Role(_))));
        }
        // Backward: from every hop the client gets 1024 bytes and knows who sent it.
        for from in 0..=exit {
            let (hop, msg, _) = p.back(from, &RelayCell::new(StreamId(7), RelayMsg::Connected));
            assert_eq!(hop, from);
            assert_eq!(msg.msg, RelayMsg::Connected);
        }
    }
}

#[test]
fn a_modified_replayed_or_skipped_cell_dies_at_the_next_hop() {
    // Modified between hop 0 and hop 1: hop 0 passes it on, hop 1 rejects it.
    let mut p = path(3, true);
    let (cell, _) = p.seal(2, data());
    let Ok(Step::ToNext(mut cell)) = p.forward[0].on_cell(cell) else {
        panic!("guard did not pass the cell on");
    };
    cell[500] ^= 1;
    assert_eq!(p.forward[1].on_cell(cell).err(), Some(Refusal::Rejected));

    // Replayed to the guard.
    let mut p = path(3, true);
    let (cell, _) = p.seal(2, data());
    assert!(p.forward[0].on_cell(cell.clone()).is_ok());
    assert_eq!(p.forward[0].on_cell(cell).err(), Some(Refusal::Rejected));

    // Skipped: the first cell never arrives, the second is refused.
    let mut p = path(3, true);
    let _lost = p.seal(2, data());
    let (second, _) = p.seal(2, data());
    assert_eq!(p.forward[0].on_cell(second).err(), Some(Refusal::Rejected));

    // Modified by the client's guard-side neighbour before the guard: the guard rejects it.
    let mut p = path(3, true);
    let (mut cell, _) = p.seal(1, data());
    cell[30] ^= 0x80;
    assert_eq!(p.forward[0].on_cell(cell).err(), Some(Refusal::Rejected));
}

#[test]
fn a_drop_or_a_cell_for_a_stream_never_opened_is_unexpected() {
    for msg in [
        RelayMsg::Drop,
        data(),
        RelayMsg::End(EndReason::Done),
        RelayMsg::Sendme(None),
    ] {
        let mut p = path(3, true);
        let got = p.send(2, msg.clone()).err();
        assert!(
            matches!(got, Some(Refusal::Unexpected(_))),
            "{msg:?}: {got:?}"
        );
        assert_eq!(got.map(Refusal::reason), Some(DestroyReason::Protocol));
    }
    // Messages only a relay sends are violations too.
    let mut p = path(3, true);
    assert_eq!(
        p.send(2, RelayMsg::Connected).err(),
        Some(Refusal::Destroy(DestroyReason::Protocol))
    );
}

#[test]
fn a_refused_begin_tolerates_one_stream_window_then_closes() {
    // A relay without an exit policy answers BEGIN with END(EXITPOLICY) ...
    let mut p = path(3, false);
    assert!(matches!(p.send(2, begin()), Ok(Step::Handled)));
    let end = p.forward[2].poll_reply().unwrap();
    assert_eq!(
        (end.stream_id, end.msg),
        (StreamId(7), RelayMsg::End(EndReason::ExitPolicy))
    );
    // ... and tolerates what the client had in flight: the largest stream window of DATA
    // and the SENDMEs such a window earns, every 100th DATA still earning a circuit
    // SENDME.
    let mut last_tag = [0; 16];
    for i in 1..=STREAM_WINDOW_MAX {
        let (cell, tag) = p.seal(2, data());
        assert!(matches!(p.carry(2, cell), Ok(Step::Handled)), "DATA {i}");
        last_tag = tag;
        if i % CIRCUIT_INCREMENT == 0 {
            let sendme = p.forward[2].poll_reply().unwrap();
            assert_eq!(sendme.msg, RelayMsg::Sendme(Some(last_tag)), "DATA {i}");
        }
        assert!(p.forward[2].poll_reply().is_none());
    }
    assert_eq!(last_tag.len(), 16);
    for _ in 0..STREAM_WINDOW_MAX / STREAM_INCREMENT {
        assert!(matches!(
            p.send(2, RelayMsg::Sendme(None)),
            Ok(Step::Handled)
        ));
    }
    assert!(matches!(p.send(2, data()), Err(Refusal::Unexpected(_))));
}

#[test]
fn the_client_end_completes_the_close_and_nothing_is_tolerated_after_it() {
    let mut p = path(3, false);
    assert!(p.send(2, begin()).is_ok());
    assert!(matches!(
        p.send(2, RelayMsg::End(EndReason::Done)),
        Ok(Step::Handled)
    ));
    assert!(matches!(p.send(2, data()), Err(Refusal::Unexpected(_))));
}

#[test]
fn the_stream_limit_refuses_with_resourcelimit_and_a_reused_id_is_a_violation() {
    let mut p = path(3, true);
    open_stream(&mut p, 2);
    // Stream 7 is open: a second BEGIN on it is a violation.
    assert_eq!(
        p.send(2, begin()).err(),
        Some(Refusal::Destroy(DestroyReason::Protocol))
    );
    // Four streams is this core's limit.
    let mut p = path(3, true);
    for id in 1..=5u16 {
        let mut cell = BytesMut::new();
        let mut buf = vec![0u8; forward_buffer_len(2)];
        let off = message_offset(2);
        let n = RelayCell::new(StreamId(id), begin())
            .encode_into(&mut buf[off..off + FORWARD_MESSAGE_MAX])
            .unwrap();
        p.client.seal_forward(&mut buf, 2, n).unwrap();
        cell.extend_from_slice(&buf[..CELL_LEN]);
        match p.carry(2, cell) {
            Ok(Step::Begin { id, .. }) => p.forward[2].add_stream(id, slot().0),
            Ok(Step::Handled) => {
                assert_eq!(id, 5);
                let end = p.forward[2].poll_reply().unwrap();
                assert_eq!(end.msg, RelayMsg::End(EndReason::ResourceLimit));
            }
            _ => panic!("BEGIN {id}"),
        }
    }
}

#[test]
fn circuit_sendmes_must_echo_the_tag_of_a_cell_the_client_received() {
    let mut p = path(3, true);
    let package = p.flows[2].package.clone();
    // No SENDME is due before any DATA.
    let mut q = path(3, true);
    assert_eq!(
        q.send(2, RelayMsg::Sendme(Some([0; 16]))).err(),
        Some(Refusal::Destroy(DestroyReason::Protocol))
    );
    // The exit sends 100 DATA cells (taking 100 permits, as its streams do).
    let mut echo = [0; 16];
    for _ in 0..CIRCUIT_INCREMENT {
        package.try_acquire().unwrap().forget();
        let (hop, msg, tag) = p.back(2, &RelayCell::new(StreamId(7), data()));
        assert_eq!((hop, msg.msg), (2, data()));
        echo = tag;
    }
    // A tag computed from known plaintext without the cell's random padding is wrong.
    let mut forged = echo;
    forged[0] ^= 1;
    let mut r = path(3, true);
    for _ in 0..CIRCUIT_INCREMENT {
        r.back(2, &RelayCell::new(StreamId(7), data()));
    }
    assert_eq!(
        r.send(2, RelayMsg::Sendme(Some(forged))).err(),
        Some(Refusal::Destroy(DestroyReason::Protocol))
    );
    // The true tag gives the window back.
    let before = package.available_permits();
    assert!(matches!(
        p.send(2, RelayMsg::Sendme(Some(echo))),
        Ok(Step::Handled)
    ));
    assert_eq!(
        package.available_permits(),
        before + CIRCUIT_INCREMENT as usize
    );
    // A second SENDME for the same 100 cells is not due.
    assert_eq!(
        p.send(2, RelayMsg::Sendme(Some(echo))).err(),
        Some(Refusal::Destroy(DestroyReason::Protocol))
    );
}

#[test]
fn a_stream_sendme_beyond_the_largest_window_is_refused() {
    // The client may grow the window with extra SENDMEs up to STREAM_WINDOW_MAX (§6.4);
    // one more is a violation.
    let mut p = path(3, true);
    let package = open_stream(&mut p, 2);
    for _ in 0..(STREAM_WINDOW_MAX - STREAM_WINDOW) / STREAM_INCREMENT {
        assert!(matches!(
            p.send(2, RelayMsg::Sendme(None)),
            Ok(Step::Handled)
        ));
    }
    assert_eq!(package.available_permits(), STREAM_WINDOW_MAX as usize);
    assert_eq!(
        p.send(2, RelayMsg::Sendme(None)).err(),
        Some(Refusal::Destroy(DestroyReason::Protocol)),
        "beyond the largest window"
    );
    let mut p = path(3, true);
    let package2 = open_stream(&mut p, 2);
    package2
        .try_acquire_many(STREAM_INCREMENT)
        .unwrap()
        .forget();
    assert!(matches!(
        p.send(2, RelayMsg::Sendme(None)),
        Ok(Step::Handled)
    ));
    assert_eq!(package2.available_permits(), STREAM_WINDOW as usize);
}

#[test]
fn data_beyond_the_stream_deliver_window_closes_the_circuit() {
    let mut p = path(3, true);
    open_stream(&mut p, 2);
    for i in 0..STREAM_WINDOW {
        assert!(
            matches!(p.send(2, data()), Ok(Step::Data { .. })),
            "DATA {i}"
        );
        while p.forward[2].poll_reply().is_some() {}
    }
    assert_eq!(
        p.send(2, data()).err(),
        Some(Refusal::Destroy(DestroyReason::Protocol))
    );
}

#[test]
fn end_removes_the_stream_and_a_gone_stream_tolerates_its_in_flight_cells() {
    let mut p = path(3, true);
    open_stream(&mut p, 2);
    assert!(matches!(
        p.send(2, RelayMsg::End(EndReason::Done)),
        Ok(Step::EndStream(_))
    ));
    assert!(p.forward[2].stream(StreamId(7)).is_none());
    let mut p = path(3, true);
    open_stream(&mut p, 2);
    p.forward[2].stream_gone(StreamId(7));
    assert!(matches!(p.send(2, data()), Ok(Step::Handled)));
    assert!(matches!(
        p.send(2, RelayMsg::End(EndReason::Done)),
        Ok(Step::Handled)
    ));
}

#[test]
fn a_fragmented_extend2_is_assembled_extended_and_answered() {
    let onion_key = OnionKey::generate().unwrap();
    let node_id = NodeId([9; 32]);
    let hello = HybridClientHandshake::start(node_id, onion_key.public())
        .unwrap()
        .hello_bytes();
    assert_eq!(hello.len(), HYBRID_HELLO_LEN);
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut p = path(1, false);
    // The hello in three parts; nothing happens until the last.
    let (a, rest) = hello.split_at(700);
    let (b, c) = rest.split_at(400);
    let first = RelayMsg::Extend2 {
        addr,
        handshake_type: HANDSHAKE_HYBRID_V2,
        part: Bytes::copy_from_slice(a),
    };
    assert!(matches!(p.send(0, first), Ok(Step::Handled)));
    let cont = RelayMsg::HandshakeCont(Bytes::copy_from_slice(b));
    assert!(matches!(p.send(0, cont), Ok(Step::Handled)));
    let cont = RelayMsg::HandshakeCont(Bytes::copy_from_slice(c));
    let Ok(Step::Extend(req)) = p.send(0, cont) else {
        panic!("no extension after the whole hello");
    };
    assert_eq!(
        (req.addr, req.node_id, req.kind),
        (addr, node_id, ExtendKind::Hybrid)
    );
    assert_eq!(req.create.len(), HYBRID_CELLS_LEN);
    // While extending, a cell for a later hop cannot go anywhere.
    assert!(!p.forward[0].is_bare_end());
    // A failed extension is TRUNCATED and may be tried again.
    p.forward[0].extended(ExtendKind::Hybrid, Err(DestroyReason::ConnectFailed));
    assert_eq!(
        p.forward[0].poll_reply().unwrap().msg,
        RelayMsg::Truncated(DestroyReason::ConnectFailed)
    );
    assert!(p.forward[0].is_bare_end());
    // The next relay's answer goes back as EXTENDED2 + HANDSHAKE_CONT: 1152 bytes in all.
    let (reply, _) = anonnet_crypto::server_hybrid_handshake(node_id, &onion_key, &hello).unwrap();
    let cells = CreatedHybrid {
        reply: reply.clone(),
    }
    .encode()
    .unwrap();
    assert!(ExtendKind::Hybrid.valid(&cells));
    p.forward[0].extended(ExtendKind::Hybrid, Ok(cells));
    let mut got = Vec::new();
    while let Some(m) = p.forward[0].poll_reply() {
        match m.msg {
            RelayMsg::Extended2(b) | RelayMsg::HandshakeCont(b) => got.extend_from_slice(&b),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, reply);
    assert!(p.forward[0].is_extended());
    // Once extended, a second EXTEND2 is a violation.
    let again = RelayMsg::Extend2 {
        addr,
        handshake_type: HANDSHAKE_HYBRID_V2,
        part: Bytes::copy_from_slice(a),
    };
    assert_eq!(
        p.send(0, again).err(),
        Some(Refusal::Destroy(DestroyReason::Protocol))
    );
}

#[test]
fn an_oversized_or_unknown_hello_is_a_violation() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut p = path(1, false);
    let wrong_type = RelayMsg::Extend2 {
        addr,
        handshake_type: 9,
        part: Bytes::from_static(&[0; 10]),
    };
    assert_eq!(
        p.send(0, wrong_type).err(),
        Some(Refusal::Destroy(DestroyReason::Protocol))
    );
    let mut p = path(1, false);
    assert_eq!(
        p.send(0, RelayMsg::HandshakeCont(Bytes::from_static(&[0; 10])))
            .err(),
        Some(Refusal::Destroy(DestroyReason::Protocol)),
        "HANDSHAKE_CONT without EXTEND2"
    );
}

#[test]
fn a_forward_cell_with_no_next_hop_goes_to_the_joined_circuit_or_nowhere() {
    // A 2-hop client onion against one relay core that was never extended: the cell for
    // hop 1 is opened and handed to the shell as the end of a joined circuit.
    let mut p = path(2, true);
    p.forward[0].next = NextLeg::None;
    let (cell, _) = p.seal(1, data());
    assert!(matches!(p.forward[0].on_cell(cell), Ok(Step::ToJoined(c)) if c.len() == CELL_LEN));
    // While an extension is under way it is a violation.
    p.forward[0].next = NextLeg::Extending;
    let (cell, _) = p.seal(1, data());
    assert_eq!(
        p.forward[0].on_cell(cell).err(),
        Some(Refusal::Destroy(DestroyReason::Protocol))
    );
}

#[test]
fn destroy_from_either_side_travels_on_and_not_back() {
    // DESTROY from the previous hop.
    let mut p = path(3, true);
    let destroy = Destroy {
        reason: DestroyReason::Requested,
    }
    .encode(CELL_LEN)
    .unwrap();
    let got = p.forward[1].on_cell(BytesMut::from(&destroy[..])).err();
    assert_eq!(got, Some(Refusal::Destroyed));
    assert_eq!(got.map(Refusal::reason), Some(DestroyReason::Requested));
    let plan = destroy_plan(Origin::Prev, DestroyReason::Requested, true);
    assert_eq!(
        plan,
        DestroyPlan {
            to_prev: None,
            to_next: Some(DestroyReason::Requested)
        }
    );
    // DESTROY from the next hop, among its cells: those before it are wrapped, then the
    // circuit ends and the DESTROY goes towards the client only.
    let mut cells = BytesMut::new();
    p.backward[2]
        .originate(
            &RelayCell::new(StreamId(7), RelayMsg::Connected),
            &mut cells,
        )
        .unwrap();
    cells.extend_from_slice(&destroy);
    let mut out = BytesMut::new();
    assert_eq!(
        p.backward[1].wrap_from_next(&cells, &mut out),
        Err(DestroyReason::ChannelClosed)
    );
    assert_eq!(
        out.len(),
        CELL_LEN,
        "the cell before the DESTROY was wrapped"
    );
    let plan = destroy_plan(Origin::Next, DestroyReason::ChannelClosed, true);
    assert_eq!(
        plan,
        DestroyPlan {
            to_prev: Some(DestroyReason::ChannelClosed),
            to_next: None
        }
    );
    // Ended here: both neighbours are told; an unextended circuit has no next hop.
    let plan = destroy_plan(Origin::Here, DestroyReason::Protocol, false);
    assert_eq!(
        plan,
        DestroyPlan {
            to_prev: Some(DestroyReason::Protocol),
            to_next: None
        }
    );
    // The first to end a circuit names it; later causes change nothing.
    let t = Teardown::new(CancellationToken::new());
    t.destroy_from(Origin::Prev, DestroyReason::Requested);
    t.destroy(DestroyReason::ChannelClosed);
    assert!(t.token.is_cancelled());
    assert_eq!(t.ended(), (Origin::Prev, DestroyReason::Requested));
    assert_eq!(t.plan(true).to_prev, None);
    // PADDING is ignored in both directions; any other command is a violation.
    let mut padding = vec![0u8; CELL_LEN];
    padding[0] = CellCommand::Padding as u8;
    assert!(matches!(
        p.forward[0].on_cell(BytesMut::from(&padding[..])),
        Ok(Step::Padding)
    ));
    assert_eq!(
        p.backward[0].wrap_from_next(&padding, &mut BytesMut::new()),
        Ok(0)
    );
    let mut junk = padding.clone();
    junk[0] = 0xEE;
    assert_eq!(
        p.forward[0].on_cell(BytesMut::from(&junk[..])).err(),
        Some(Refusal::Destroy(DestroyReason::Protocol))
    );
}

#[test]
fn resolve_is_refused_by_a_non_exit_and_counts_as_a_stream_at_an_exit() {
    let resolve = || RelayMsg::Resolve(Target::Host("localhost".into()));
    // Not an exit: END(EXITPOLICY), as for BEGIN.
    let mut p = path(3, false);
    assert!(matches!(p.send(2, resolve()), Ok(Step::Handled)));
    let end = p.forward[2].poll_reply().unwrap();
    assert_eq!(
        (end.stream_id, end.msg),
        (StreamId(7), RelayMsg::End(EndReason::ExitPolicy))
    );
    // An exit hands it to the shell, which registers the stream: a BEGIN or a second
    // RESOLVE on the same id is then a violation.
    let mut p = path(3, true);
    match p.send(2, resolve()) {
        Ok(Step::Resolve { id, target }) => {
            assert_eq!(
                (id, target),
                (StreamId(7), Target::Host("localhost".into()))
            );
            p.forward[2].add_stream(id, slot().0);
        }
        _ => panic!("RESOLVE at an exit"),
    }
    for again in [resolve(), begin()] {
        assert_eq!(
            p.send(2, again).err(),
            Some(Refusal::Destroy(DestroyReason::Protocol))
        );
    }
    // RESOLVED from the client is a violation.
    let mut p = path(3, true);
    assert_eq!(
        p.send(
            2,
            RelayMsg::Resolved(vec![anonnet_wire::ResolvedAnswer::Error])
        )
        .err(),
        Some(Refusal::Destroy(DestroyReason::Protocol))
    );
}
