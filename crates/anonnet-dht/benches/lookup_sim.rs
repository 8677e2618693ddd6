//! DHT lookup simulation (a benchmark, not a test): 1,000 relays with real signed
//! descriptors run the real `anonnet-dht` routing tables, lookups and storage over an
//! in-memory transport in simulated time. DESIGN.md §5 target: ≤ ⌈log2 N⌉ rounds and
//! ≥ 99 % success with 20 % of the nodes gone.
//!
//! Run: `cargo bench -p anonnet-dht --bench lookup_sim` (release profile; about 20 s).
//!
//! Model:
//! - Every relay joins through relay 0: it looks up its own NodeId, then refreshes every
//!   bucket from its closest neighbour's outwards (Kademlia §2.3). A queried relay learns
//!   the querier (`ANNOUNCE`), a querier learns every relay that answers; full buckets ping
//!   their oldest contact (answered at once from the simulation's liveness).
//! - Every relay then publishes its descriptor record: a node lookup of its
//!   `descriptor_key`, then `STORE` on the K closest (each verified by `Storage::store`).
//! - Measurement: ≥ 1,000 node lookups for random targets and ≥ 1,000 value lookups for
//!   random relays' descriptor keys, first with every relay up, then after 20 % of the relays
//!   (chosen at random) are gone. Tables are frozen during measurement and are *not* repaired
//!   after the churn: answers still list dead relays, and queries to them time out.
//! - Each answer arrives after a uniformly random 20–120 ms; a query to a dead relay times
//!   out after 1 s. Answers carry `Contact`s that were verified once when the relay was
//!   created; the per-answer signature cost is measured separately and printed.
//! - Success: a node lookup's closest answer is the true nearest live relay to the target
//!   (other than the querier); a value lookup returns the stored record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use anonnet_crypto::{sign_descriptor, IdentityKey, NodeId};
use anonnet_dht::{
    bucket_index, descriptor_key, distance, id_in_bucket, Contact, Insert, Lookup, LookupKind,
    LookupResult, RoutingTable, Storage, StorageLimits, ALPHA, K,
};
use anonnet_wire::dht::Record;
use anonnet_wire::{RelayDescriptor, SignedDescriptor};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const N: usize = 1000;
const LOOKUPS: usize = 1000;
const CHURN: f64 = 0.20;
const NOW_UNIX: u64 = 1_800_000_000;
const TIMEOUT: Duration = Duration::from_secs(1);
const RTT_US: std::ops::RangeInclusive<u64> = 20_000..=120_000;

struct Node {
    contact: Contact,
    table: RoutingTable,
    storage: Storage,
    alive: bool,
}

struct Sim {
    nodes: Vec<Node>,
    index: HashMap<NodeId, usize>,
    rng: StdRng,
    base: Instant,
    seq: u64,
}

struct Outcome {
    result: LookupResult,
    sim_time: Duration,
    cpu: Duration,
}

fn signed_descriptor(i: usize) -> SignedDescriptor {
    let seed = *blake3::hash(format!("anonnet dht simulation relay {i}").as_bytes()).as_bytes();
    let id = IdentityKey::from_seed(&seed);
    let d = RelayDescriptor {
        identity: id.public(),
        onion_key: *blake3::hash(&seed).as_bytes(),
        handshakes: anonnet_wire::HandshakeSet::ALL,
        addresses: vec![std::net::SocketAddr::from((
            [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
            7000,
        ))],
        flags: 0,
        exit_ports: vec![],
        bandwidth: 1_000_000,
        published: NOW_UNIX - 60,
        expires: NOW_UNIX - 60 + 86_400,
    };
    sign_descriptor(&id, &d).unwrap()
}

impl Sim {
    fn new() -> Sim {
        let mut nodes = Vec::with_capacity(N);
        let mut index = HashMap::new();
        for i in 0..N {
            let contact = Contact::from_descriptor(&signed_descriptor(i), NOW_UNIX).unwrap();
            index.insert(contact.node_id, i);
            nodes.push(Node {
                table: RoutingTable::new(contact.node_id),
                contact,
                storage: Storage::new(StorageLimits::default()),
                alive: true,
            });
        }
        Sim {
            nodes,
            index,
            rng: StdRng::seed_from_u64(2026),
            base: Instant::now(),
            seq: 0,
        }
    }

    fn at(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us)
    }

    /// `table[of]` saw `c`; a full bucket's ping is answered from the liveness model.
    fn learn(&mut self, of: usize, c: Contact, now: Instant) {
        if let Insert::Pending { ping } = self.nodes[of].table.insert(c, now) {
            let alive = self.nodes[self.index[&ping.node_id]].alive;
            self.nodes[of].table.ping_result(ping.node_id, alive, now);
        }
    }

    /// Run one lookup from relay `from` to completion in simulated time.
    fn lookup(&mut self, from: usize, target: [u8; 32], kind: LookupKind, learn: bool) -> Outcome {
        let cpu_start = Instant::now();
        let own = self.nodes[from].contact.node_id;
        let seeds = self.nodes[from].table.closest(&target, K);
        let mut lk = Lookup::new(target, kind, seeds, Some(own), self.at(0), TIMEOUT);
        let mut heap: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new();
        let mut queried_dead = Vec::new();
        let mut now_us = 0u64;
        loop {
            for c in lk.poll_queries(self.at(now_us)) {
                let j = self.index[&c.node_id];
                if self.nodes[j].alive {
                    let rtt = self.rng.random_range(RTT_US);
                    self.seq += 1;
                    heap.push(Reverse((now_us + rtt, self.seq, j)));
                    if learn {
                        let me = self.nodes[from].contact.clone();
                        self.learn(j, me, self.at(now_us));
                    }
                } else {
                    queried_dead.push(c.node_id);
                }
            }
            if lk.is_done() {
                break;
            }
            let next_answer = heap.peek().map(|Reverse((t, _, _))| *t);
            let next_timeout = lk
                .poll_timeout()
                .map(|t| t.duration_since(self.base).as_micros() as u64);
            now_us = match (next_answer, next_timeout) {
                (Some(a), Some(t)) => a.min(t),
                (Some(a), None) => a,
                (None, Some(t)) => t,
                (None, None) => break,
            };
            let now = self.at(now_us);
            while let Some(Reverse((t, _, j))) = heap.peek().copied() {
                if t > now_us {
                    break;
                }
                heap.pop();
                let responder = &self.nodes[j];
                let nodes = responder.table.closest(&target, K);
                let id = responder.contact.node_id;
                match kind {
                    LookupKind::Node => lk.on_nodes(id, nodes, now),
                    LookupKind::Value { key } => {
                        let records = responder.storage.get(&key, NOW_UNIX);
                        lk.on_value(id, records, nodes, now);
                    }
                }
                if learn {
                    let c = self.nodes[j].contact.clone();
                    self.learn(from, c, now);
                }
            }
            lk.handle_timeout(now);
        }
        if learn {
            let now = self.at(now_us);
            for dead in queried_dead {
                self.nodes[from].table.ping_result(dead, false, now);
            }
            self.nodes[from].table.mark_refreshed(&target, now);
        }
        Outcome {
            result: lk.result(),
            sim_time: Duration::from_micros(now_us),
            cpu: cpu_start.elapsed(),
        }
    }

    fn join_all(&mut self) {
        let bootstrap = self.nodes[0].contact.clone();
        for i in 1..N {
            let now = self.at(0);
            self.nodes[i].table.insert(bootstrap.clone(), now);
            let own = self.nodes[i].contact.node_id;
            self.lookup(i, own.0, LookupKind::Node, true);
            let first = self.nodes[i]
                .table
                .contacts()
                .iter()
                .filter_map(|c| bucket_index(&own.0, &c.node_id.0))
                .min();
            if let Some(first) = first {
                for b in first..256 {
                    let t = id_in_bucket(&own.0, b, &self.rng.random());
                    self.lookup(i, t, LookupKind::Node, true);
                }
            }
        }
    }

    fn publish_all(&mut self) -> usize {
        let mut stores = 0;
        for i in 0..N {
            let key = descriptor_key(&self.nodes[i].contact.node_id);
            let out = self.lookup(i, key, LookupKind::Node, true);
            let record = Record::relay_descriptor(&self.nodes[i].contact.descriptor).unwrap();
            let from = self.nodes[i].contact.node_id;
            for c in out.result.closest {
                let j = self.index[&c.node_id];
                if self.nodes[j]
                    .storage
                    .store(from, key, record.clone(), NOW_UNIX)
                    .is_ok()
                {
                    stores += 1;
                }
            }
        }
        stores
    }

    fn random_live(&mut self) -> usize {
        loop {
            let i = self.rng.random_range(0..N);
            if self.nodes[i].alive {
                return i;
            }
        }
    }

    fn true_nearest(&self, target: &[u8; 32], except: usize) -> NodeId {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.alive && *i != except)
            .min_by_key(|(_, n)| distance(target, &n.contact.node_id.0))
            .map(|(_, n)| n.contact.node_id)
            .unwrap()
    }

    fn true_k_closest(&self, target: &[u8; 32], except: usize) -> Vec<NodeId> {
        let mut live: Vec<NodeId> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.alive && *i != except)
            .map(|(_, n)| n.contact.node_id)
            .collect();
        live.sort_by_key(|id| distance(target, &id.0));
        live.truncate(K);
        live
    }

    fn measure(&mut self, churn: &str) {
        // Node lookups for random targets.
        let mut stats = Stats::default();
        for _ in 0..LOOKUPS {
            let from = self.random_live();
            let target: [u8; 32] = self.rng.random();
            let out = self.lookup(from, target, LookupKind::Node, false);
            let nearest = self.true_nearest(&target, from);
            let truth = self.true_k_closest(&target, from);
            let found = out
                .result
                .closest
                .iter()
                .filter(|c| truth.contains(&c.node_id))
                .count();
            let ok = out.result.closest.first().map(|c| c.node_id) == Some(nearest);
            stats.add(&out, ok, found as f64 / truth.len().max(1) as f64);
        }
        stats.print(churn, "node");

        // Value lookups for random relays' descriptors.
        let mut stats = Stats::default();
        for _ in 0..LOOKUPS {
            let owner = self.rng.random_range(0..N);
            let key = descriptor_key(&self.nodes[owner].contact.node_id);
            let expect = Record::relay_descriptor(&self.nodes[owner].contact.descriptor).unwrap();
            let from = loop {
                let f = self.random_live();
                if self.nodes[f].storage.get(&key, NOW_UNIX).is_empty() {
                    break f;
                }
            };
            let out = self.lookup(from, key, LookupKind::Value { key }, false);
            let ok = out.result.records.contains(&expect);
            stats.add(&out, ok, f64::NAN);
        }
        stats.print(churn, "value");
    }
}

#[derive(Default)]
struct Stats {
    ok: usize,
    rounds: Vec<usize>,
    queried: Vec<usize>,
    failed: Vec<usize>,
    sim_ms: Vec<f64>,
    cpu_us: Vec<f64>,
    overlap: Vec<f64>,
}

fn pct<T: Copy + PartialOrd>(v: &[T], q: f64) -> T {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

fn mean<T: Copy + Into<f64>>(v: &[T]) -> f64 {
    v.iter().map(|x| (*x).into()).sum::<f64>() / v.len().max(1) as f64
}

impl Stats {
    fn add(&mut self, o: &Outcome, ok: bool, overlap: f64) {
        self.ok += usize::from(ok);
        self.rounds.push(o.result.rounds);
        self.queried.push(o.result.queried);
        self.failed.push(o.result.failed);
        self.sim_ms.push(o.sim_time.as_secs_f64() * 1e3);
        self.cpu_us.push(o.cpu.as_secs_f64() * 1e6);
        if !overlap.is_nan() {
            self.overlap.push(overlap);
        }
    }

    fn print(&self, churn: &str, kind: &str) {
        let n = self.rounds.len();
        let rounds: Vec<u32> = self.rounds.iter().map(|r| *r as u32).collect();
        let queried: Vec<u32> = self.queried.iter().map(|r| *r as u32).collect();
        let failed: Vec<u32> = self.failed.iter().map(|r| *r as u32).collect();
        let overlap = if self.overlap.is_empty() {
            "    –".to_string()
        } else {
            format!("{:5.1}", 100.0 * mean(&self.overlap))
        };
        println!(
            "{churn:>5} {kind:>5} {n:>7} {:>7.1} % {:>5.2} {:>4} {:>4} {:>4} {:>7.1} {:>6.1} {overlap} % {:>7.0} {:>7.0} {:>8.0}",
            100.0 * self.ok as f64 / n as f64,
            mean(&rounds),
            pct(&rounds, 0.5),
            pct(&rounds, 0.99),
            pct(&rounds, 1.0),
            mean(&queried),
            mean(&failed),
            pct(&self.sim_ms, 0.5),
            pct(&self.sim_ms, 0.99),
            mean(&self.cpu_us),
        );
    }
}

fn main() {
    let wall = Instant::now();
    let mut sim = Sim::new();
    let made = wall.elapsed();

    // The signature cost the simulation leaves out: verifying one full NODES answer.
    let answer: Vec<SignedDescriptor> = sim.nodes[..K]
        .iter()
        .map(|n| n.contact.descriptor.clone())
        .collect();
    let t = Instant::now();
    for _ in 0..50 {
        assert_eq!(Contact::from_answer(&answer, NOW_UNIX).len(), K);
    }
    let verify_answer = t.elapsed() / 50;

    let t = Instant::now();
    sim.join_all();
    let joined = t.elapsed();
    let sizes: Vec<u32> = sim.nodes.iter().map(|n| n.table.len() as u32).collect();
    let t = Instant::now();
    let stores = sim.publish_all();
    let published = t.elapsed();

    println!(
        "anonnet-dht lookup simulation: N = {N} relays, k = {K}, α = {ALPHA}, per-query \
         timeout {} ms, answer delay 20–120 ms; target ≤ ⌈log2 N⌉ = {} rounds, ≥ 99 % success",
        TIMEOUT.as_millis(),
        (N as f64).log2().ceil()
    );
    println!(
        "setup: {N} descriptors signed+verified in {:.2} s; joins (own id + bucket refreshes) \
         {:.1} s; routing table size mean {:.0}, min {}, max {}; {stores} descriptor records \
         stored ({:.1} per relay) in {:.1} s; verifying one {K}-contact answer costs {} µs",
        made.as_secs_f64(),
        joined.as_secs_f64(),
        mean(&sizes),
        pct(&sizes, 0.0),
        pct(&sizes, 1.0),
        stores as f64 / N as f64,
        published.as_secs_f64(),
        verify_answer.as_micros(),
    );
    println!(
        "churn  kind lookups success  rounds: mean  p50  p99  max queries failed  k-found  \
         sim ms: p50     p99  cpu µs/lookup"
    );
    sim.measure("0 %");
    let dead = (N as f64 * CHURN).round() as usize;
    let mut killed = 0;
    while killed < dead {
        let i = sim.rng.random_range(0..N);
        if sim.nodes[i].alive {
            sim.nodes[i].alive = false;
            killed += 1;
        }
    }
    sim.measure(&format!("{:.0} %", CHURN * 100.0));
    println!(
        "(rounds = longest chain of dependent queries; k-found = share of the true live k \
         closest returned; cpu = simulation time for the whole network per lookup, without \
         signature checks; total run {:.1} s)",
        wall.elapsed().as_secs_f64()
    );
}
