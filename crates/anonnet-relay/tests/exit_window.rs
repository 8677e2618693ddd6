//! A real exit relay (in process, real QUIC and TCP on loopback) keeps its circuit package
//! window exact however many streams end on the circuit (§6.4): it sends exactly
//! `CIRCUIT_WINDOW` `DATA` cells before the first circuit `SENDME`, then stops, and each
//! `SENDME` lets it go on.
//!
//! Before the fix the exit took a window permit before each read from the destination,
//! and the read that met the destination's EOF used it for no cell: every stream that ended
//! lost the circuit one cell of window, for good. After some 1,000 short streams a circuit
//! sent nothing more, and every later stream on it hung after `CONNECTED`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anonnet_crypto::onion::message_offset;
use anonnet_crypto::ClientOnion;
use anonnet_net::Endpoint;
use anonnet_relay::Relay;
use anonnet_wire::flow::{CircuitDeliverWindow, CIRCUIT_WINDOW};
use anonnet_wire::{EndReason, RelayCell, RelayMsg, StreamId, Target, CELL_LEN};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Streams opened at once (below the exit's 512 per circuit).
const BATCH: usize = 100;
/// Longest wait for any one answer from the exit.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A destination that answers every connection with one byte, then closes it: each stream
/// carries exactly one `DATA` cell, then the exit's `END`.
async fn one_byte_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.write_all(b"x").await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    port
}

/// A one-hop circuit to `relay` (which is its exit): cells go out through [`Circuit::send`];
/// every backward message arrives on `messages` with the layer tag a circuit `SENDME`
/// echoes.
struct Circuit {
    send: quinn::SendStream,
    onion: std::sync::Arc<std::sync::Mutex<ClientOnion>>,
    messages: mpsc::UnboundedReceiver<(RelayCell, [u8; 16])>,
    _endpoint: Endpoint,
}

impl Circuit {
    async fn open(relay: &Relay) -> Circuit {
        let (send, mut recv, onion, endpoint) = common::one_hop(relay).await;
        let onion = std::sync::Arc::new(std::sync::Mutex::new(onion));
        let (tx, messages) = mpsc::unbounded_channel();
        let reader_onion = onion.clone();
        tokio::spawn(async move {
            loop {
                let mut cell = vec![0u8; CELL_LEN];
                if recv.read_exact(&mut cell).await.is_err() {
                    break;
                }
                // Anything but a relay cell (the DESTROY when the test fails) ends the
                // circuit.
                let Ok((_, range, tag)) = reader_onion.lock().unwrap().open_backward(&mut cell)
                else {
                    break;
                };
                let msg = RelayCell::decode(&Bytes::from(cell).slice(range)).unwrap();
                if tx.send((msg, tag)).is_err() {
                    break;
                }
            }
        });
        Circuit {
            send,
            onion,
            messages,
            _endpoint: endpoint,
        }
    }

    async fn send(&mut self, msg: RelayCell) {
        let mut cell = vec![0u8; CELL_LEN];
        let len = msg.encode_into(&mut cell[message_offset(0)..]).unwrap();
        self.onion
            .lock()
            .unwrap()
            .seal_forward(&mut cell, 0, len)
            .unwrap();
        self.send.write_all(&cell).await.unwrap();
    }

    async fn begin(&mut self, id: u16, port: u16) {
        let target = Target::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        self.send(RelayCell::new(
            StreamId(id),
            RelayMsg::Begin { target, port },
        ))
        .await;
    }

    /// The next backward message, or `None` when none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<(RelayCell, [u8; 16])> {
        tokio::time::timeout(wait, self.messages.recv())
            .await
            .ok()
            .flatten()
    }
}

/// What one stream has received so far.
#[derive(Default, Debug)]
struct Seen {
    connected: bool,
    data: usize,
    ended: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_sends_a_whole_circuit_window_however_many_streams_end() {
    let relay = common::exit_relay("window").await;
    let port = one_byte_server().await;
    let mut circuit = Circuit::open(&relay).await;
    let window = CIRCUIT_WINDOW as usize;

    // Open streams in batches, none of them SENDME'd yet: each carries one DATA cell, so
    // CIRCUIT_WINDOW streams use exactly the window.
    let mut deliver = CircuitDeliverWindow::default();
    let mut sendmes_due = Vec::new();
    let mut data_cells = 0usize;
    let mut next_id = 1u16;
    while data_cells < window {
        let batch = BATCH.min(window - data_cells);
        let mut seen: HashMap<u16, Seen> = HashMap::new();
        for _ in 0..batch {
            circuit.begin(next_id, port).await;
            seen.insert(next_id, Seen::default());
            next_id += 1;
        }
        while seen.values().any(|s| !s.ended) {
            let Some((msg, tag)) = circuit.next(ANSWER_TIMEOUT).await else {
                let stuck = seen.values().filter(|s| s.connected && !s.ended).count();
                panic!(
                    "the exit stopped after {data_cells} DATA cells on {} streams, with \
                     {} of {window} cells of circuit window unused; {stuck} streams of \
                     this batch are connected and get nothing",
                    next_id - 1 - batch as u16,
                    window - data_cells,
                );
            };
            let s = seen
                .get_mut(&msg.stream_id.0)
                .expect("a message for a stream of this batch");
            match msg.msg {
                RelayMsg::Connected => s.connected = true,
                RelayMsg::Data(d) => {
                    assert_eq!(&d[..], b"x");
                    s.data += 1;
                    data_cells += 1;
                    sendmes_due.extend(deliver.on_data(tag));
                }
                RelayMsg::End(EndReason::Done) => s.ended = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(seen.values().all(|s| s.connected && s.data == 1));
    }
    assert_eq!(data_cells, window);
    assert_eq!(sendmes_due.len(), window / 100);

    // The window is used up: one more stream connects, but its DATA waits for a SENDME.
    let last = next_id;
    circuit.begin(last, port).await;
    let (msg, _) = circuit.next(ANSWER_TIMEOUT).await.expect("CONNECTED");
    assert!(matches!(msg.msg, RelayMsg::Connected), "{msg:?}");
    if let Some((msg, _)) = circuit.next(Duration::from_millis(300)).await {
        panic!("the exit sent {msg:?} beyond its circuit window");
    }
    for tag in sendmes_due {
        circuit
            .send(RelayCell::new(
                StreamId::CIRCUIT,
                RelayMsg::Sendme(Some(tag)),
            ))
            .await;
    }
    let (msg, _) = circuit
        .next(ANSWER_TIMEOUT)
        .await
        .expect("DATA after SENDME");
    assert_eq!(msg.stream_id, StreamId(last));
    assert!(matches!(msg.msg, RelayMsg::Data(_)), "{msg:?}");
    let (msg, _) = circuit.next(ANSWER_TIMEOUT).await.expect("END");
    assert!(matches!(msg.msg, RelayMsg::End(EndReason::Done)), "{msg:?}");
    relay.stop().await;
}
