//! One circuit through this relay: the thin async shell around the sans-IO onion layer
//! ([`anonnet_crypto::RelayOnion`]) and the relay-message codec. Spec: `docs/protocol.md`
//! §4 (cells), §7 (layers), §8 (relay behaviour).
//!
//! Tasks per circuit, all stopped by one cancellation token:
//! - a reader per incoming QUIC stream (previous hop, and next hop once extended) that
//!   turns bytes into whole cells and pushes them into a bounded channel;
//! - the forward task: opens the layer of each cell from the previous hop, passes
//!   `FORWARD` cells on to the next hop and handles `DELIVER` messages (EXTEND, BEGIN,
//!   DATA, END);
//! - the backward task: wraps cells from the next hop and seals messages this relay
//!   originates (EXTENDED, CONNECTED, DATA, END), writing them to the previous hop;
//! - per exit stream, a connect-and-write task and a read task.
//!
//! The two directions never wait on each other, and every channel is bounded, so a slow
//! reader pushes back through QUIC flow control instead of filling memory.
//!
//! Files, by concern: `leg` (cells from a QUIC stream, `CREATE`/`CREATED`, `DESTROY`),
//! `forward` (the forward task and the messages delivered here), `backward` (wrap and
//! originate towards the client), `extend` (the next leg, either handshake), `exit` (exit
//! streams, closed-stream tolerance), `hs_roles` (introduction and rendezvous points),
//! `dht` (DHT requests through circuits). The protocol arithmetic they drive is sans-IO
//! elsewhere: onion layers in `anonnet_crypto::onion`, windows and SENDME tags in
//! `anonnet_wire::flow`, messages in `anonnet_wire::relay`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anonnet_crypto::onion::relay_cell_tag;
use anonnet_crypto::{NodeId, RelayBackward, RelayForward};
use anonnet_dht::verify_record_for;
use anonnet_wire::cell::{relay_layout, CellCommand, LayerKind};
use anonnet_wire::dht::{Record, RecordKind};
use anonnet_wire::flow::{
    CircuitDeliverWindow, SendmeTags, StreamDeliverWindow, CIRCUIT_WINDOW, STREAM_INCREMENT,
    STREAM_WINDOW, STREAM_WINDOW_MAX,
};
use anonnet_wire::relay::{
    COOKIE_LEN, DHT_NOT_FOUND, DHT_OK, DHT_REFUSED, DHT_UNAVAILABLE, ESTABLISH_INTRO_CONTEXT,
    INTRODUCE_BUSY, INTRODUCE_OK, INTRODUCE_UNKNOWN,
};
use anonnet_wire::{
    create_handshake_type, Create, CreateHybrid, Created, CreatedHybrid, Destroy, DestroyReason,
    EndReason, RelayCell, RelayMsg, ResolvedAnswer, StreamId, Target, BACKWARD_MESSAGE_MAX,
    CELL_LEN, HANDSHAKE_HYBRID_V2, HANDSHAKE_NTOR_V1, HYBRID_CELLS_LEN, HYBRID_HELLO_LEN,
    RELAY_HEADER_LEN,
};
use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::hs::{IntroEntry, Refused, RendezvousEntry, Splice};
use crate::RelayShared;

/// Batches of cells buffered between a leg reader and the task that consumes them: at
/// most `LEG_QUEUE` reads of up to [`READ_BATCH`] cells each.
const LEG_QUEUE: usize = 4;
/// Most cells a leg reader takes from QUIC in one read.
const READ_BATCH: usize = 32;
/// Most cells the backward task gathers into one QUIC write: the cells already queued when
/// it wakes up, so a lone cell is never delayed.
const WRITE_BATCH: usize = 32;
/// What the backward task takes from its queue (besides the next hop's cells).
pub(crate) enum Out {
    /// A message this relay originates towards the client.
    Cell(RelayCell),
    /// The receiving end of the next-hop queue, created only when the circuit is extended
    /// or joined at a rendezvous point (a circuit that ends here never allocates one).
    NextLeg(mpsc::Receiver<CellBatch>),
}

/// An [`Out`] item, boxed: the backward queue's first block of 32 slots then takes 256
/// bytes with every circuit instead of 4.4 kB (docs/performance.md, idle circuits).
pub(crate) type OutCell = Box<Out>;

/// A message this relay originates, ready for the backward queue.
pub(crate) fn out_cell(cell: RelayCell) -> OutCell {
    Box::new(Out::Cell(cell))
}
/// Messages buffered for the backward task (originated by this relay).
const BACKWARD_QUEUE: usize = 64;
/// `DATA` payloads buffered towards one exit TCP connection: the largest stream window (the
/// queue allocates as it fills), so a client that respects flow control never makes the
/// circuit wait on a slow destination.
const EXIT_WRITE_QUEUE: usize = STREAM_WINDOW_MAX as usize + 12;
/// Most `DATA` cells' worth of bytes an exit stream reads from its TCP connection at once
/// (about 16 KB with 1024-byte client cells): the bound on what one stream holds while it
/// waits for window.
const EXIT_READ_CELLS: usize = 16;
/// How long extending to the next relay may take (seconds).
const EXTEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `DESTROY` write may take when tearing down.
const DESTROY_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Flow control of the `DATA` this relay sends as an exit (§6.4): the package window
/// towards the client (permits, taken by the exit streams, given back by the forward core
/// for each valid circuit `SENDME`) and the tags those `SENDME`s must echo (recorded by the
/// backward core).
struct CircuitFlow {
    package: Arc<Semaphore>,
    tags: Mutex<SendmeTags>,
}

impl CircuitFlow {
    fn new() -> Self {
        CircuitFlow {
            package: Arc::new(Semaphore::new(CIRCUIT_WINDOW as usize)),
            tags: Mutex::new(SendmeTags::default()),
        }
    }
}

/// Shared between the tasks of one circuit: who ended it and why (the first to say so),
/// and the token that ends it.
pub(crate) struct Teardown {
    pub(crate) token: CancellationToken,
    ended: Mutex<Option<(Origin, DestroyReason)>>,
}

impl Teardown {
    pub(crate) fn new(token: CancellationToken) -> Self {
        Teardown {
            token,
            ended: Mutex::new(None),
        }
    }

    /// End the circuit from here (a violation, a limit, a failed write, shutdown).
    pub(crate) fn destroy(&self, reason: DestroyReason) {
        self.destroy_from(Origin::Here, reason);
    }

    /// End the circuit because `origin` did.
    pub(crate) fn destroy_from(&self, origin: Origin, reason: DestroyReason) {
        if let Ok(mut r) = self.ended.lock() {
            r.get_or_insert((origin, reason));
        }
        self.token.cancel();
    }

    /// Who ended the circuit and why; a circuit nobody ended finished here.
    fn ended(&self) -> (Origin, DestroyReason) {
        self.ended
            .lock()
            .ok()
            .and_then(|r| *r)
            .unwrap_or((Origin::Here, DestroyReason::Finished))
    }

    /// The `DESTROY`s to send now that the circuit ended ([`destroy_plan`]).
    fn plan(&self, extended: bool) -> DestroyPlan {
        let (origin, reason) = self.ended();
        destroy_plan(origin, reason, extended)
    }
}

/// Whole cells of one leg, back to back: what a leg reader reads in one go (a cell of
/// `cell_len` bytes at every multiple of `cell_len`). Boxed, like [`OutCell`]: a tokio
/// channel allocates its first block of 32 slots with the channel, so each of a circuit's
/// two leg queues then takes 288 bytes instead of 1,056 (one allocation per read batch,
/// not per cell; docs/performance.md, idle circuits).
pub(crate) type CellBatch = Box<BytesMut>;

mod backward;
mod core;
mod dht;
mod exit;
mod extend;
mod forward;
mod hs_roles;
mod leg;

use self::core::*;
use backward::*;
use dht::*;
pub(crate) use dht::{lock_hsdir, store_as_hsdir};
use exit::*;
pub(crate) use leg::serve_leg;
use leg::*;

/// Start a circuit whose `CREATE` was answered: spawn its leg reader and backward task,
/// and return the forward task's future, which ends when the circuit does.
///
/// A plain function, not an `async fn`, on purpose: everything is built before the
/// returned future exists, so the onion keys and the task structs are stored once, inside
/// the future that uses them. An `async fn` keeps its arguments and the locals moved out
/// of them side by side for its whole life, which made each idle circuit's task 6.9 kB
/// (docs/performance.md, idle circuits).
fn run_circuit(
    shared: Arc<RelayShared>,
    cell_len: usize,
    onion: anonnet_crypto::RelayOnion,
    binding: [u8; 32],
    prev_send: SendStream,
    prev_recv: RecvStream,
) -> impl std::future::Future<Output = ()> {
    let teardown = Arc::new(Teardown::new(shared.shutdown.child_token()));
    let (prev_tx, prev_rx) = mpsc::channel(LEG_QUEUE);
    spawn_leg_reader(prev_recv, cell_len, prev_tx, teardown.clone(), Origin::Prev);
    let (out_tx, out_rx) = mpsc::channel(BACKWARD_QUEUE);
    let flow = Arc::new(CircuitFlow::new());
    let backward = tokio::spawn(
        BackwardTask {
            shared: shared.clone(),
            cell_len,
            core: BackwardCore::new(onion.backward, flow.clone()),
            prev_send,
            next_rx: None,
            out_rx,
            teardown: teardown.clone(),
        }
        .run(),
    );
    let core = ForwardCore::new(
        onion.forward,
        flow.clone(),
        shared.exit_policy.is_some(),
        shared.limits.max_streams_per_circuit,
    );
    let forward = ForwardTask {
        shared,
        cell_len,
        core,
        next_send: None,
        forward_out: BytesMut::new(),
        next_opened: false,
        out: out_tx,
        flow,
        teardown: teardown.clone(),
        hs: HsState {
            circuit: NEXT_CIRCUIT.fetch_add(1, Ordering::Relaxed),
            binding,
            splice: Arc::new(OnceLock::new()),
            intro_key: None,
            cookie: None,
            introductions: 0,
            dht_requests: Arc::new(Semaphore::new(DHT_REQUESTS_PER_CIRCUIT)),
        },
    };
    let forward = forward.run(prev_rx);
    async move {
        forward.await;
        let _ = backward.await;
        debug!(ended = ?teardown.ended(), "circuit closed");
    }
}

/// Local numbering of circuits (registrations remember which circuit made them).
static NEXT_CIRCUIT: AtomicU64 = AtomicU64::new(1);
/// DHT requests (§13.6) one circuit may have running at once.
const DHT_REQUESTS_PER_CIRCUIT: usize = 2;
/// Introductions one client circuit may send (§13.4).
const INTRODUCTIONS_PER_CIRCUIT: u32 = 8;
/// Records one `DHT_RESULT` answer carries at most.
const DHT_RESULT_RECORDS: usize = 8;
/// Storage nodes a record published through a circuit goes to.
const DHT_REPLICAS: usize = 8;

/// A circuit's hidden-service state at this relay (§13).
struct HsState {
    circuit: u64,
    /// This hop's handshake key `Y`: what `ESTABLISH_INTRO` signatures bind to.
    binding: [u8; 32],
    /// Set once this circuit is joined to another at a rendezvous point.
    splice: Arc<OnceLock<Splice>>,
    /// The introduction key this circuit registered.
    intro_key: Option<[u8; 32]>,
    /// The rendezvous cookie this circuit registered.
    cookie: Option<[u8; COOKIE_LEN]>,
    /// `INTRODUCE1`s sent on this circuit.
    introductions: u32,
    /// Slots for running DHT requests.
    dht_requests: Arc<Semaphore>,
}

/// The shell of the forward direction (`forward.rs`): moves cells between the legs and
/// [`ForwardCore`], carries out extensions, exit streams and §13 roles.
struct ForwardTask {
    shared: Arc<RelayShared>,
    cell_len: usize,
    core: ForwardCore,
    next_send: Option<SendStream>,
    /// Cells opened for what follows this hop (the next relay, or the circuit joined at
    /// this rendezvous point), passed on once per batch from the previous hop.
    forward_out: BytesMut,
    /// Whether the next-hop queue exists yet ([`ForwardTask::open_next_queue`]): once the
    /// circuit is extended or joined it does, and it is never opened twice.
    next_opened: bool,
    out: mpsc::Sender<OutCell>,
    flow: Arc<CircuitFlow>,
    teardown: Arc<Teardown>,
    hs: HsState,
}

/// Why the forward task must stop the circuit.
struct Violation(DestroyReason);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn closed_streams_tolerate_one_window_then_nothing_and_forget_the_oldest() {
        let mut c = ClosedStreams::default();
        let (a, never) = (StreamId(1), StreamId(2));
        c.insert(a);
        // The largest window the stream could have grown to (§6.4).
        for _ in 0..STREAM_WINDOW_MAX {
            assert!(c.tolerate_data(a));
        }
        assert!(!c.tolerate_data(a), "beyond a stream window");
        for _ in 0..STREAM_WINDOW_MAX / STREAM_INCREMENT {
            assert!(c.tolerate_sendme(a));
        }
        assert!(!c.tolerate_sendme(a));
        assert!(!c.tolerate_data(never) && !c.tolerate_sendme(never));
        assert!(c.remove(a), "its END completes the close");
        assert!(
            !c.remove(a) && !c.tolerate_data(a),
            "after END nothing more"
        );
        for i in 0..MAX_CLOSED_STREAMS as u16 + 10 {
            c.insert(StreamId(100 + i));
            // A tolerated cell does not make a closed stream younger.
            assert!(i != 1 || c.tolerate_data(StreamId(100)));
        }
        assert_eq!(c.seen.len(), MAX_CLOSED_STREAMS);
        assert!(!c.tolerate_data(StreamId(100)), "the oldest was forgotten");
        assert!(c.tolerate_data(StreamId(100 + MAX_CLOSED_STREAMS as u16 + 9)));
    }

    #[tokio::test]
    async fn exit_lookups_wait_for_a_slot_and_give_it_back() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        // A lookup needs a slot: with the only one taken, it waits.
        let taken = slots.clone().acquire_owned().await.unwrap();
        let waiting = tokio::time::timeout(
            Duration::from_millis(200),
            resolve(&slots, "localhost".into(), 80),
        )
        .await;
        assert!(waiting.is_err(), "resolved without a slot");
        drop(taken);
        // With the slot free it resolves, and the slot comes back each time.
        for _ in 0..3 {
            let addrs = resolve(&slots, "localhost".into(), 80).await.unwrap();
            assert!(addrs.iter().all(|a| a.port() == 80 && a.ip().is_loopback()));
            assert_eq!(slots.available_permits(), 1);
        }
        // A name that cannot resolve is RESOLVEFAILED, and gives its slot back too.
        let e = resolve(&slots, "no-such-host.invalid".into(), 80).await;
        assert!(matches!(e, Err(EndReason::ResolveFailed)), "{e:?}");
        assert_eq!(slots.available_permits(), 1);
        // A closed semaphore (relay shutting down) is RESOLVEFAILED, not a panic.
        slots.close();
        let e = resolve(&slots, "localhost".into(), 80).await;
        assert!(matches!(e, Err(EndReason::ResolveFailed)), "{e:?}");
    }
}
