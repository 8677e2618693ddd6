//! Iterative Kademlia lookups, event-driven and sans-IO. Spec: `docs/protocol.md` §11.6.
//!
//! A [`Lookup`] keeps the candidates it knows sorted by XOR distance to the target. The
//! caller asks it which contacts to query ([`Lookup::poll_queries`], at most [`ALPHA`] in
//! flight), sends `FIND_NODE` / `FIND_VALUE` to them, and feeds back each answer
//! ([`Lookup::on_nodes`], [`Lookup::on_value`]) or failure ([`Lookup::on_failure`]). Time is
//! passed in: each query has a deadline ([`Lookup::poll_timeout`]); the caller calls
//! [`Lookup::handle_timeout`] when it passes. There is no sleep anywhere, so tests and the
//! simulation drive lookups in simulated time.
//!
//! Driving loop:
//!
//! ```text
//! loop {
//!     for c in lookup.poll_queries(now) { send lookup.request(random_txid()) to c }
//!     if lookup.is_done() { break }
//!     wait for an answer, a failure, or lookup.poll_timeout()
//!     feed it with on_nodes / on_value / on_failure, or call handle_timeout(now)
//! }
//! let result = lookup.result();
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anonnet_crypto::NodeId;
use anonnet_wire::dht::{DhtMessage, Record};

use crate::{distance, Contact, ALPHA, K};

/// Most candidates a lookup remembers (8 × [`K`]); beyond that the farthest unqueried or
/// failed ones are forgotten, so an answering node cannot grow a lookup without bound.
pub const MAX_CANDIDATES: usize = 8 * K;
/// A query unanswered for `timeout / STALL_DIVISOR` stops counting against [`ALPHA`] (it
/// may still answer until its full timeout), so dead nodes do not hold up the lookup.
pub const STALL_DIVISOR: u32 = 4;
/// Most distinct records a value lookup collects.
pub const MAX_LOOKUP_RECORDS: usize = 64;

/// What a lookup looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    /// The [`K`] nodes closest to the target (`FIND_NODE`).
    Node,
    /// The records stored under `key` (`FIND_VALUE`); the lookup ends at the first answer
    /// that carries records, else it behaves like a node lookup. The lookup's target
    /// should be `key`.
    Value {
        /// The record key.
        key: [u8; 32],
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotQueried,
    /// Sent at `sent`; fails at `deadline`; `stalled` once `sent + stall` has passed.
    InFlight {
        sent: Instant,
        deadline: Instant,
        stalled: bool,
    },
    Answered,
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate {
    contact: Contact,
    state: State,
    /// Query depth: 1 for seeds, `d + 1` for a contact learned from an answer at depth `d`.
    depth: usize,
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupResult {
    /// Up to [`K`] contacts that answered, closest to the target first.
    pub closest: Vec<Contact>,
    /// Records collected (value lookups), as answered; the caller has verified them.
    pub records: Vec<Record>,
    /// The longest chain of dependent queries sent: 1 if only seeds were queried. This is
    /// Kademlia's hop count, the figure that is `O(log N)`.
    pub rounds: usize,
    /// Queries sent.
    pub queried: usize,
    /// Queries that failed, timed out, or were still stalled (unanswered after a quarter
    /// of the timeout) when the lookup ended.
    pub failed: usize,
}

/// One iterative lookup (§11.6): α parallel queries, closest unqueried candidate first,
/// finished when the [`K`] closest non-failed candidates have all answered (or a value
/// lookup found records).
#[derive(Debug, Clone)]
pub struct Lookup {
    target: [u8; 32],
    kind: LookupKind,
    own: Option<NodeId>,
    timeout: Duration,
    stall: Duration,
    /// Keyed by distance to `target` (unique per NodeId: XOR is a bijection).
    candidates: BTreeMap<[u8; 32], Candidate>,
    records: Vec<Record>,
    rounds: usize,
    queried: usize,
    failed: usize,
    value_found: bool,
}

impl Lookup {
    /// Start a lookup for `target` from `seeds` (normally `table.closest(target, K)`; a
    /// client passes its bootstrap relays). `own` (a relay's own NodeId) is never queried;
    /// `timeout` is the limit per query, measured from when [`Lookup::poll_queries`] hands
    /// it out. `now` is unused except to keep the clock explicit.
    pub fn new(
        target: [u8; 32],
        kind: LookupKind,
        seeds: Vec<Contact>,
        own: Option<NodeId>,
        now: Instant,
        timeout: Duration,
    ) -> Self {
        let _ = now;
        let mut l = Lookup {
            target,
            kind,
            own,
            timeout,
            stall: timeout / STALL_DIVISOR,
            candidates: BTreeMap::new(),
            records: Vec::new(),
            rounds: 0,
            queried: 0,
            failed: 0,
            value_found: false,
        };
        for s in seeds {
            l.add_candidate(s, 1);
        }
        l
    }

    /// The point looked up.
    pub fn target(&self) -> &[u8; 32] {
        &self.target
    }

    /// What is looked up.
    pub fn kind(&self) -> LookupKind {
        self.kind
    }

    /// The request to send to each contact [`Lookup::poll_queries`] returns: `FIND_NODE`
    /// for the target, or `FIND_VALUE` for the key, with transaction id `txid`.
    pub fn request(&self, txid: u64) -> DhtMessage {
        match self.kind {
            LookupKind::Node => DhtMessage::FindNode {
                txid,
                target: self.target,
            },
            LookupKind::Value { key } => DhtMessage::FindValue { txid, key },
        }
    }

    fn add_candidate(&mut self, c: Contact, depth: usize) {
        if self.own == Some(c.node_id) {
            return;
        }
        let d = distance(&self.target, &c.node_id.0);
        if let Some(old) = self.candidates.get_mut(&d) {
            old.depth = old.depth.min(depth);
            if old.state == State::NotQueried && c.published > old.contact.published {
                old.contact = c;
            }
            return;
        }
        self.candidates.insert(
            d,
            Candidate {
                contact: c,
                state: State::NotQueried,
                depth,
            },
        );
        while self.candidates.len() > MAX_CANDIDATES {
            let victim = self
                .candidates
                .iter()
                .rev()
                .find(|(_, c)| matches!(c.state, State::NotQueried | State::Failed))
                .map(|(d, _)| *d);
            match victim {
                Some(v) => {
                    self.candidates.remove(&v);
                }
                None => break,
            }
        }
    }

    /// Mark queries sent `stall` or more before `now` as stalled; return how many are
    /// still active (count against α).
    fn update_stalls(&mut self, now: Instant) -> usize {
        let mut active = 0;
        for cand in self.candidates.values_mut() {
            if let State::InFlight { sent, stalled, .. } = &mut cand.state {
                if !*stalled && now >= *sent + self.stall {
                    *stalled = true;
                }
                if !*stalled {
                    active += 1;
                }
            }
        }
        active
    }

    /// The contacts to query now: the closest not-yet-queried candidates among the [`K`]
    /// closest viable ones (neither failed nor stalled), as many as keep at most [`ALPHA`] active queries. A query
    /// is active until it is answered, fails, or has been out for a quarter of the timeout
    /// (then it is *stalled*: it stops holding a slot but may still answer until its
    /// deadline, `now + timeout`). Empty when the lookup is done or α queries are active.
    pub fn poll_queries(&mut self, now: Instant) -> Vec<Contact> {
        let mut out = Vec::new();
        if self.is_done() {
            return out;
        }
        let mut active = self.update_stalls(now);
        let mut seen = 0;
        for cand in self.candidates.values_mut() {
            if active >= ALPHA || seen >= K {
                break;
            }
            match cand.state {
                State::Failed | State::InFlight { stalled: true, .. } => continue,
                State::NotQueried => {
                    cand.state = State::InFlight {
                        sent: now,
                        deadline: now + self.timeout,
                        stalled: false,
                    };
                    active += 1;
                    self.queried += 1;
                    self.rounds = self.rounds.max(cand.depth);
                    out.push(cand.contact.clone());
                }
                State::InFlight { .. } | State::Answered => {}
            }
            seen += 1;
        }
        out
    }

    /// Mark `from` as answered; its depth if it was a query of this lookup.
    fn answered(&mut self, from: &NodeId) -> Option<usize> {
        if self.value_found {
            return None;
        }
        let d = distance(&self.target, &from.0);
        let cand = self.candidates.get_mut(&d)?;
        match cand.state {
            State::InFlight { .. } => {}
            // A late answer after its timeout still counts (the failure stays counted).
            State::Failed => {}
            State::NotQueried | State::Answered => return None,
        }
        cand.state = State::Answered;
        Some(cand.depth)
    }

    /// `from` answered with `nodes` (verified contacts, e.g. from
    /// [`Contact::from_answer`]). Answers from nodes this lookup did not query, repeated
    /// answers, and answers after a value was found are ignored.
    pub fn on_nodes(&mut self, from: NodeId, nodes: Vec<Contact>, _now: Instant) {
        let Some(depth) = self.answered(&from) else {
            return;
        };
        for c in nodes {
            self.add_candidate(c, depth + 1);
        }
    }

    /// `from` answered a `FIND_VALUE` with `records` and closer `nodes`. The caller must
    /// have verified each record for this key (`crate::verify_record`) and dropped the bad
    /// ones. Records end a value lookup; an answer without records counts as
    /// [`Lookup::on_nodes`].
    pub fn on_value(
        &mut self,
        from: NodeId,
        records: Vec<Record>,
        nodes: Vec<Contact>,
        now: Instant,
    ) {
        let Some(depth) = self.answered(&from) else {
            return;
        };
        for r in records {
            if self.records.len() < MAX_LOOKUP_RECORDS && !self.records.contains(&r) {
                self.records.push(r);
            }
        }
        if !self.records.is_empty() && matches!(self.kind, LookupKind::Value { .. }) {
            self.value_found = true;
            return;
        }
        let _ = now;
        for c in nodes {
            self.add_candidate(c, depth + 1);
        }
    }

    /// The query to `from` failed (dial, stream, bad answer). Ignored unless it was in
    /// flight.
    pub fn on_failure(&mut self, from: NodeId, _now: Instant) {
        let d = distance(&self.target, &from.0);
        if let Some(cand) = self.candidates.get_mut(&d) {
            if matches!(cand.state, State::InFlight { .. }) {
                cand.state = State::Failed;
                self.failed += 1;
            }
        }
    }

    /// When [`Lookup::handle_timeout`] must next run: the earliest moment a query in
    /// flight stalls (frees its slot) or reaches its deadline; `None` when nothing is in
    /// flight or the lookup is done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_done() {
            return None;
        }
        self.candidates
            .values()
            .filter_map(|c| match c.state {
                State::InFlight {
                    sent,
                    deadline,
                    stalled,
                } => Some(if stalled { deadline } else { sent + self.stall }),
                _ => None,
            })
            .min()
    }

    /// Fail every query whose deadline is at or before `now`, and note which have stalled
    /// (then [`Lookup::poll_queries`] may hand out more).
    pub fn handle_timeout(&mut self, now: Instant) {
        for cand in self.candidates.values_mut() {
            if let State::InFlight { deadline, .. } = cand.state {
                if deadline <= now {
                    cand.state = State::Failed;
                    self.failed += 1;
                }
            }
        }
        self.update_stalls(now);
    }

    /// True when a value lookup found records, or the [`K`] closest *viable* candidates
    /// (neither failed nor stalled) have all answered, so no closer node is left to ask.
    /// With fewer than K viable candidates it is true once every one has answered and no
    /// stalled query is left (so also when every candidate failed). Stalled queries thus
    /// never delay a lookup that already holds K answers.
    pub fn is_done(&self) -> bool {
        if self.value_found {
            return true;
        }
        let mut answered = 0;
        let mut stalled = false;
        for c in self.candidates.values() {
            match c.state {
                State::Failed => {}
                State::InFlight { stalled: true, .. } => stalled = true,
                State::Answered => {
                    answered += 1;
                    if answered == K {
                        return true;
                    }
                }
                State::NotQueried | State::InFlight { stalled: false, .. } => return false,
            }
        }
        // Fewer than K viable candidates, all answered: done unless a stalled query may
        // still bring more.
        !stalled
    }

    /// The outcome so far (final once [`Lookup::is_done`]).
    pub fn result(&self) -> LookupResult {
        LookupResult {
            closest: self
                .candidates
                .values()
                .filter(|c| c.state == State::Answered)
                .take(K)
                .map(|c| c.contact.clone())
                .collect(),
            records: self.records.clone(),
            rounds: self.rounds,
            queried: self.queried,
            failed: self.failed
                + self
                    .candidates
                    .values()
                    .filter(|c| matches!(c.state, State::InFlight { stalled: true, .. }))
                    .count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::routing::RoutingTable;
    use crate::test_support::*;

    /// An in-memory network: every node's routing table, who is alive, and optional records.
    struct Net {
        nodes: Vec<Contact>,
        tables: HashMap<NodeId, RoutingTable>,
        dead: Vec<NodeId>,
        values: HashMap<NodeId, Vec<Record>>,
    }

    impl Net {
        /// `n` nodes, each table filled with every other node it has room for.
        fn new(n: u32) -> Net {
            let nodes: Vec<Contact> = (0..n).map(contact).collect();
            let now = Instant::now();
            let mut tables = HashMap::new();
            for me in &nodes {
                let mut t = RoutingTable::new(me.node_id);
                for other in &nodes {
                    t.insert(other.clone(), now);
                }
                tables.insert(me.node_id, t);
            }
            Net {
                nodes,
                tables,
                dead: vec![],
                values: HashMap::new(),
            }
        }

        fn alive(&self, id: &NodeId) -> bool {
            !self.dead.contains(id)
        }

        fn true_closest(&self, target: &[u8; 32], n: usize) -> Vec<NodeId> {
            let mut live: Vec<NodeId> = self
                .nodes
                .iter()
                .map(|c| c.node_id)
                .filter(|id| self.alive(id))
                .collect();
            live.sort_by_key(|id| distance(target, &id.0));
            live.truncate(n);
            live
        }

        /// Drive `lookup` to the end in simulated time: live nodes answer after 10 ms from
        /// their tables, dead nodes never answer (their queries time out).
        fn run(&self, mut lookup: Lookup, start: Instant) -> (LookupResult, Duration) {
            let mut now = start;
            let mut pending: Vec<(Instant, NodeId)> = vec![];
            loop {
                for c in lookup.poll_queries(now) {
                    if self.alive(&c.node_id) {
                        pending.push((now + Duration::from_millis(10), c.node_id));
                    }
                }
                if lookup.is_done() {
                    break;
                }
                pending.sort();
                let next_answer = pending.first().map(|p| p.0);
                let next = match (next_answer, lookup.poll_timeout()) {
                    (Some(a), Some(t)) => a.min(t),
                    (Some(a), None) => a,
                    (None, Some(t)) => t,
                    (None, None) => break,
                };
                now = next;
                while pending.first().is_some_and(|p| p.0 <= now) {
                    let (_, from) = pending.remove(0);
                    let nodes = self.tables[&from].closest(lookup.target(), K);
                    match lookup.kind() {
                        LookupKind::Node => lookup.on_nodes(from, nodes, now),
                        LookupKind::Value { .. } => {
                            let recs = self.values.get(&from).cloned().unwrap_or_default();
                            lookup.on_value(from, recs, nodes, now);
                        }
                    }
                }
                lookup.handle_timeout(now);
            }
            (lookup.result(), now - start)
        }
    }

    #[test]
    fn node_lookup_finds_the_true_k_closest_in_a_simulated_network() {
        let net = Net::new(300);
        let mut rng = StdRng::seed_from_u64(7);
        let start = Instant::now();
        for _ in 0..30 {
            let from = &net.nodes[rng.random_range(0..net.nodes.len())];
            let target: [u8; 32] = rng.random();
            let seeds = net.tables[&from.node_id].closest(&target, K);
            let l = Lookup::new(
                target,
                LookupKind::Node,
                seeds,
                Some(from.node_id),
                start,
                Duration::from_secs(1),
            );
            let (res, took) = net.run(l, start);
            let mut expect = net.true_closest(&target, K + 1);
            expect.retain(|id| *id != from.node_id);
            expect.truncate(K);
            let got: Vec<NodeId> = res.closest.iter().map(|c| c.node_id).collect();
            assert_eq!(got, expect);
            assert_eq!(res.failed, 0);
            assert!(res.rounds >= 1 && res.rounds <= 9, "rounds {}", res.rounds);
            assert!(took >= Duration::from_millis(10) * res.rounds as u32);
        }
    }

    #[test]
    fn node_lookup_routes_around_dead_nodes_by_timeout() {
        let mut net = Net::new(300);
        let mut rng = StdRng::seed_from_u64(8);
        // 20 % of the nodes die; tables still list them.
        net.dead = net.nodes.iter().step_by(5).map(|c| c.node_id).collect();
        let start = Instant::now();
        let mut total_failed = 0;
        let mut overlap = 0;
        for _ in 0..30 {
            let from = loop {
                let c = &net.nodes[rng.random_range(0..net.nodes.len())];
                if net.alive(&c.node_id) {
                    break c;
                }
            };
            let target: [u8; 32] = rng.random();
            let seeds = net.tables[&from.node_id].closest(&target, K);
            let l = Lookup::new(
                target,
                LookupKind::Node,
                seeds,
                Some(from.node_id),
                start,
                Duration::from_secs(1),
            );
            let (res, took) = net.run(l, start);
            let expect: Vec<NodeId> = net
                .true_closest(&target, K + 1)
                .into_iter()
                .filter(|id| *id != from.node_id)
                .take(K)
                .collect();
            let got: Vec<NodeId> = res.closest.iter().map(|c| c.node_id).collect();
            // Answers list dead nodes too (tables are not repaired here), so the last few
            // of the live k closest may stay unknown; the nearest ones are always found.
            assert_eq!(got[..10], expect[..10], "the true nearest live nodes");
            assert!(got.iter().all(|id| net.alive(id)));
            overlap += got.iter().filter(|id| expect.contains(id)).count();
            total_failed += res.failed;
            assert!(res.failed == 0 || took >= Duration::from_millis(250));
        }
        assert!(total_failed > 0, "dead nodes were queried and timed out");
        assert!(
            overlap >= 30 * K * 9 / 10,
            "found {overlap} of the {} live k-closest",
            30 * K
        );
    }

    #[test]
    fn value_lookup_stops_at_the_first_record() {
        let mut net = Net::new(200);
        let key = [0x99; 32];
        let rec = Record {
            kind: anonnet_wire::dht::RecordKind::RelayDescriptor,
            body: vec![1, 2, 3],
        };
        let holders = net.true_closest(&key, K);
        for h in &holders {
            net.values.insert(*h, vec![rec.clone()]);
        }
        let from = net
            .nodes
            .iter()
            .find(|c| !holders.contains(&c.node_id))
            .unwrap();
        let start = Instant::now();
        let l = Lookup::new(
            key,
            LookupKind::Value { key },
            net.tables[&from.node_id].closest(&key, K),
            Some(from.node_id),
            start,
            Duration::from_secs(1),
        );
        assert_eq!(l.request(5), DhtMessage::FindValue { txid: 5, key });
        let (res, _) = net.run(l, start);
        assert_eq!(res.records, vec![rec]);
        assert!(res.queried < 3 * K);

        // A missing key ends like a node lookup, with no records.
        let other = [0x11; 32];
        let l = Lookup::new(
            other,
            LookupKind::Value { key: other },
            net.tables[&from.node_id].closest(&other, K),
            Some(from.node_id),
            start,
            Duration::from_secs(1),
        );
        let (res, _) = net.run(l, start);
        assert!(res.records.is_empty());
        assert_eq!(res.closest.len(), K);
    }

    #[test]
    fn lookup_keeps_alpha_in_flight_and_ignores_unsolicited_answers() {
        let seeds: Vec<Contact> = (1..=10).map(contact).collect();
        let now = Instant::now();
        let mut l = Lookup::new(
            [0; 32],
            LookupKind::Node,
            seeds.clone(),
            None,
            now,
            Duration::from_secs(2),
        );
        let first = l.poll_queries(now);
        assert_eq!(first.len(), ALPHA);
        assert!(l.poll_queries(now).is_empty(), "α already in flight");
        let secs = |ms: u64| now + Duration::from_millis(ms);
        assert_eq!(
            l.poll_timeout(),
            Some(secs(500)),
            "stall point: timeout / 4"
        );

        // An answer from a node never queried changes nothing.
        let stranger = seeds.iter().find(|c| !first.contains(c)).unwrap();
        l.on_nodes(stranger.node_id, (20..40).map(contact).collect(), now);
        assert_eq!(l.result().closest.len(), 0);

        // One failure frees one slot.
        l.on_failure(first[0].node_id, now);
        assert_eq!(l.poll_queries(now).len(), 1);
        // At the stall point the slow queries free their slots without failing.
        l.handle_timeout(secs(500));
        assert_eq!(
            l.result().failed,
            1 + 3,
            "one failure, three stalled so far"
        );
        assert_eq!(l.poll_queries(secs(500)).len(), ALPHA);
        assert!(l.poll_queries(secs(500)).is_empty());
        assert_eq!(l.poll_timeout(), Some(secs(1000)), "next stall");
        // A stalled query may still answer.
        l.on_nodes(first[1].node_id, vec![], secs(600));
        assert_eq!(l.result().closest, vec![first[1].clone()]);
        assert_eq!(l.result().failed, 1 + 2);
        // At their deadline the other two stalled ones fail; the next three have stalled.
        l.handle_timeout(secs(2000));
        assert_eq!(l.result().failed, 1 + 2 + 3);
        assert!(!l.is_done());
    }

    #[test]
    fn lookup_with_only_dead_seeds_ends_empty() {
        let now = Instant::now();
        let mut l = Lookup::new(
            [0; 32],
            LookupKind::Node,
            (1..=2).map(contact).collect(),
            None,
            now,
            Duration::from_millis(500),
        );
        assert_eq!(l.poll_queries(now).len(), 2);
        let mut t = now;
        while let Some(next) = l.poll_timeout() {
            t = next;
            l.handle_timeout(t);
            assert!(l.poll_queries(t).is_empty(), "nobody left to ask");
        }
        assert_eq!(t, now + Duration::from_millis(500));
        assert!(l.is_done());
        assert!(l.poll_queries(t).is_empty());
        let r = l.result();
        assert!(r.closest.is_empty() && r.failed == 2 && r.queried == 2 && r.rounds == 1);
    }
}
