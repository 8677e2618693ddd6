//! The Kademlia routing table: 256 k-buckets of [`K`] contacts with LRU-with-liveness
//! replacement. Spec: `docs/protocol.md` §11.4.
//!
//! Bucket `i` holds the contacts whose XOR distance `d` from the own NodeId satisfies
//! `2^i ≤ d < 2^(i+1)`: bucket 255 is the far half of the key space, bucket 0 the one id
//! nearest to ours. Within a bucket, contacts are kept from least to most recently seen. A
//! full bucket never drops a contact that still answers: a newcomer becomes the bucket's
//! *candidate* while its oldest contact is pinged, and replaces it only if the ping fails.

use std::time::{Duration, Instant};

use anonnet_crypto::NodeId;
use anonnet_wire::SignedDescriptor;
use rand::RngExt;

use crate::{distance, Contact, K};

/// Number of k-buckets: one per bit of the 256-bit key space.
pub const BUCKETS: usize = 256;
/// A candidate waits this long for the result of its bucket's ping; after that the ping is
/// taken as lost and the next insertion into the bucket asks for a new one.
pub const PING_PATIENCE: Duration = Duration::from_secs(60);
/// First line of [`RoutingTable::to_persisted`].
pub const PERSISTED_HEADER: &str = "# anonnet DHT routing table v1 (docs/protocol.md §11.4)";
/// Most descriptor lines [`RoutingTable::from_persisted`] reads (twice a full table).
pub const MAX_PERSISTED_LINES: usize = 2 * BUCKETS * K;

/// The bucket of `id` in the table of `own`: the position (0..=255, 0 = least significant)
/// of the highest set bit of `own XOR id`; `None` when `id == own`.
pub fn bucket_index(own: &[u8; 32], id: &[u8; 32]) -> Option<usize> {
    let d = distance(own, id);
    d.iter()
        .enumerate()
        .find(|(_, b)| **b != 0)
        .map(|(i, b)| 255 - (i * 8 + b.leading_zeros() as usize))
}

/// A point of bucket `bucket` (0..=255; larger values are taken as 255) of the table of
/// `own`: `own XOR d` where `d`'s bits above `bucket` are 0, bit `bucket` is 1 and the lower
/// bits come from `random`. Used for bucket refresh.
pub fn id_in_bucket(own: &[u8; 32], bucket: usize, random: &[u8; 32]) -> [u8; 32] {
    let bucket = bucket.min(BUCKETS - 1);
    let top_byte = 31 - bucket / 8;
    let bit = (bucket % 8) as u32;
    let mut d = *random;
    for (i, b) in d.iter_mut().enumerate() {
        if i < top_byte {
            *b = 0;
        } else if i == top_byte {
            let low = (1u8 << bit).wrapping_sub(1);
            *b = (*b & low) | (1u8 << bit);
        }
    }
    distance(own, &d)
}

/// What [`RoutingTable::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insert {
    /// The contact is new and its bucket had room: it is now the most recently seen.
    Added,
    /// The node was already known: it moved to most recently seen, and its descriptor was
    /// replaced if the new one has a larger `published`.
    Updated,
    /// The bucket is full. The contact is kept aside as the bucket's candidate; the caller
    /// must `PING` `ping` (the bucket's least recently seen contact) and report the outcome
    /// with [`RoutingTable::ping_result`]. While that ping is outstanding, further
    /// insertions into the bucket replace the candidate and return the same `ping` again:
    /// one ping in flight to that NodeId is enough.
    Pending {
        /// The contact to ping.
        ping: Contact,
    },
    /// The contact is this node itself; nothing was stored.
    Own,
}

#[derive(Debug, Clone)]
struct Entry {
    contact: Contact,
    last_seen: Instant,
}

#[derive(Debug, Clone)]
struct Candidate {
    contact: Contact,
    /// The contact being pinged on the candidate's behalf.
    ping: NodeId,
    since: Instant,
}

#[derive(Debug, Clone, Default)]
struct KBucket {
    /// Least recently seen first; at most `K`.
    entries: Vec<Entry>,
    candidate: Option<Candidate>,
    last_refreshed: Option<Instant>,
}

impl KBucket {
    fn position(&self, id: &NodeId) -> Option<usize> {
        self.entries.iter().position(|e| e.contact.node_id == *id)
    }

    /// Move the candidate into the bucket if there is room. Returns 1 if it was added.
    fn promote_candidate(&mut self, now: Instant) -> usize {
        if self.entries.len() >= K {
            return 0;
        }
        match self.candidate.take() {
            Some(c) => {
                self.entries.push(Entry {
                    contact: c.contact,
                    last_seen: now,
                });
                1
            }
            None => 0,
        }
    }
}

/// A node's view of the network: 256 k-buckets of at most [`K`] verified contacts (§11.4).
/// Sans-IO: the caller sends the pings it asks for and passes the time in.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    own: NodeId,
    buckets: Vec<KBucket>,
    len: usize,
}

impl RoutingTable {
    /// An empty table for the node `own`.
    pub fn new(own: NodeId) -> Self {
        RoutingTable {
            own,
            buckets: vec![KBucket::default(); BUCKETS],
            len: 0,
        }
    }

    /// The NodeId the table is centred on.
    pub fn own(&self) -> NodeId {
        self.own
    }

    fn bucket_mut(&mut self, id: &[u8; 32]) -> Option<&mut KBucket> {
        let i = bucket_index(&self.own.0, id)?;
        self.buckets.get_mut(i)
    }

    fn bucket(&self, id: &[u8; 32]) -> Option<&KBucket> {
        let i = bucket_index(&self.own.0, id)?;
        self.buckets.get(i)
    }

    /// Record that `c` was seen at `now` (it answered us, or announced itself over a link
    /// whose certificate proves its NodeId). Contacts learned second-hand (from `NODES`)
    /// should only be inserted once they have answered.
    ///
    /// A known node moves to most recently seen ([`Insert::Updated`]) and takes the newer of
    /// the two descriptors (by `published`). A new node joins its bucket if there is room
    /// ([`Insert::Added`]); otherwise see [`Insert::Pending`].
    pub fn insert(&mut self, c: Contact, now: Instant) -> Insert {
        let Some(bucket) = self.bucket_mut(&c.node_id.0) else {
            return Insert::Own;
        };
        if let Some(pos) = bucket.position(&c.node_id) {
            let mut e = bucket.entries.remove(pos);
            if c.published > e.contact.published {
                e.contact = c;
            }
            e.last_seen = now;
            bucket.entries.push(e);
            return Insert::Updated;
        }
        if bucket.entries.len() < K {
            bucket.entries.push(Entry {
                contact: c,
                last_seen: now,
            });
            bucket.candidate = None;
            self.len += 1;
            return Insert::Added;
        }
        // Full: keep the newcomer aside and have the oldest pinged, unless a ping for this
        // bucket is already outstanding (then the newer candidate replaces the older).
        let outstanding = bucket.candidate.as_ref().and_then(|cand| {
            let fresh = now.saturating_duration_since(cand.since) < PING_PATIENCE;
            let pos = bucket.position(&cand.ping)?;
            fresh.then_some(pos)
        });
        let (ping_pos, since) = match (outstanding, &bucket.candidate) {
            (Some(pos), Some(cand)) => (pos, cand.since),
            _ => (0, now),
        };
        let Some(ping) = bucket.entries.get(ping_pos).map(|e| e.contact.clone()) else {
            return Insert::Own; // unreachable: the bucket is full
        };
        let keep_old = matches!(&bucket.candidate, Some(old)
            if old.contact.node_id == c.node_id && old.contact.published >= c.published);
        if !keep_old {
            bucket.candidate = Some(Candidate {
                contact: c,
                ping: ping.node_id,
                since,
            });
        }
        Insert::Pending { ping }
    }

    /// Report the outcome of a ping (or of any request) to `pinged`.
    ///
    /// `alive`: `pinged` moves to most recently seen; if it was pinged for a candidate, the
    /// candidate is dropped (the old contact stays: long-lived nodes are the most reliable).
    /// Not `alive`: `pinged` is evicted and the bucket's candidate, if any, takes its place.
    pub fn ping_result(&mut self, pinged: NodeId, alive: bool, now: Instant) {
        let mut removed = 0;
        let mut added = 0;
        if let Some(bucket) = self.bucket_mut(&pinged.0) {
            let pos = bucket.position(&pinged);
            if alive {
                if let Some(pos) = pos {
                    let mut e = bucket.entries.remove(pos);
                    e.last_seen = now;
                    bucket.entries.push(e);
                }
                if bucket.candidate.as_ref().is_some_and(|c| c.ping == pinged) {
                    bucket.candidate = None;
                }
            } else {
                if let Some(pos) = pos {
                    bucket.entries.remove(pos);
                    removed = 1;
                }
                added = bucket.promote_candidate(now);
            }
        }
        self.len = self.len + added - removed;
    }

    /// Forget `id` (e.g. its descriptor turned out invalid, or it keeps failing). The
    /// bucket's candidate, if any, takes the freed place.
    pub fn remove(&mut self, id: &NodeId) {
        // A removal has no clock; the promoted candidate counts as seen when it was offered.
        let mut delta: (usize, usize) = (0, 0);
        if let Some(bucket) = self.bucket_mut(&id.0) {
            if bucket
                .candidate
                .as_ref()
                .is_some_and(|c| c.contact.node_id == *id)
            {
                bucket.candidate = None;
            }
            if let Some(pos) = bucket.position(id) {
                bucket.entries.remove(pos);
                delta.0 = 1;
                if let Some(since) = bucket.candidate.as_ref().map(|c| c.since) {
                    delta.1 = bucket.promote_candidate(since);
                }
            }
        }
        self.len = self.len + delta.1 - delta.0;
    }

    /// Drop every contact whose descriptor has expired at `now_unix` (Unix seconds), and
    /// expired candidates. Returns how many contacts were dropped.
    pub fn remove_expired(&mut self, now_unix: u64) -> usize {
        let alive = |c: &Contact| c.expires().is_some_and(|e| e > now_unix);
        let mut dropped = 0;
        for b in &mut self.buckets {
            let before = b.entries.len();
            b.entries.retain(|e| alive(&e.contact));
            dropped += before - b.entries.len();
            if b.candidate.as_ref().is_some_and(|c| !alive(&c.contact)) {
                b.candidate = None;
            }
        }
        self.len -= dropped;
        dropped
    }

    /// The `n` contacts closest to `target` by XOR distance, closest first.
    pub fn closest(&self, target: &[u8; 32], n: usize) -> Vec<Contact> {
        let mut all: Vec<([u8; 32], &Contact)> = self
            .buckets
            .iter()
            .flat_map(|b| b.entries.iter())
            .map(|e| (distance(target, &e.contact.node_id.0), &e.contact))
            .collect();
        if n < all.len() {
            all.select_nth_unstable_by(n, |a, b| a.0.cmp(&b.0));
            all.truncate(n);
        }
        all.sort_unstable_by_key(|a| a.0);
        all.into_iter().map(|(_, c)| c.clone()).collect()
    }

    /// Every contact, bucket 0 to 255, least recently seen first within a bucket.
    pub fn contacts(&self) -> Vec<Contact> {
        self.buckets
            .iter()
            .flat_map(|b| b.entries.iter().map(|e| e.contact.clone()))
            .collect()
    }

    /// Number of contacts (candidates not counted), at most `256 × K`.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the table holds no contact.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The contact with NodeId `id`, if it is in the table.
    pub fn get(&self, id: &NodeId) -> Option<&Contact> {
        let b = self.bucket(&id.0)?;
        b.entries
            .iter()
            .find(|e| e.contact.node_id == *id)
            .map(|e| &e.contact)
    }

    /// When `id` was last seen (inserted, or answered a ping), if it is in the table.
    pub fn last_seen(&self, id: &NodeId) -> Option<Instant> {
        let b = self.bucket(&id.0)?;
        b.entries
            .iter()
            .find(|e| e.contact.node_id == *id)
            .map(|e| e.last_seen)
    }

    /// Targets for bucket refresh: a random point inside each non-empty bucket that no
    /// lookup has refreshed ([`RoutingTable::mark_refreshed`]) for `every` (a bucket never
    /// refreshed is due at once). The caller runs a node lookup for each and marks it.
    pub fn refresh_targets(&self, now: Instant, every: Duration) -> Vec<[u8; 32]> {
        let mut rng = rand::rng();
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                !b.entries.is_empty()
                    && b.last_refreshed
                        .is_none_or(|t| now.saturating_duration_since(t) >= every)
            })
            .map(|(i, _)| id_in_bucket(&self.own.0, i, &rng.random()))
            .collect()
    }

    /// Targets for joining (Kademlia §2.3): after a lookup of its own NodeId, a new node
    /// refreshes every bucket farther than its closest neighbour — a random point in each
    /// bucket from the closest neighbour's up to 255. Empty when the table is empty.
    pub fn join_targets(&self) -> Vec<[u8; 32]> {
        let mut rng = rand::rng();
        let Some(first) = self.buckets.iter().position(|b| !b.entries.is_empty()) else {
            return Vec::new();
        };
        (first..BUCKETS)
            .map(|i| id_in_bucket(&self.own.0, i, &rng.random()))
            .collect()
    }

    /// Record that a lookup for `target` finished at `now`: the bucket containing `target`
    /// is refreshed (a lookup of the own NodeId refreshes bucket 0).
    pub fn mark_refreshed(&mut self, target: &[u8; 32], now: Instant) {
        let i = bucket_index(&self.own.0, target).unwrap_or(0);
        if let Some(b) = self.buckets.get_mut(i) {
            b.last_refreshed = Some(now);
        }
    }

    /// The table as a file (§11.4): a header line, then each contact's signed descriptor in
    /// its text form (§3.2), one per line, least recently seen first within a bucket, so that
    /// [`RoutingTable::from_persisted`] restores the order.
    pub fn to_persisted(&self) -> Vec<u8> {
        let mut out = String::with_capacity(64 + self.len * 200);
        out.push_str(PERSISTED_HEADER);
        out.push('\n');
        for b in &self.buckets {
            for e in &b.entries {
                if let Ok(line) = e.contact.descriptor.to_base64() {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        }
        out.into_bytes()
    }

    /// How many lines of a persisted table are neither blank, a `#` comment, nor a
    /// descriptor in base64 (damage, not age: an expired or forged descriptor that still
    /// decodes is not counted). Lines beyond [`MAX_PERSISTED_LINES`] are not looked at.
    pub fn malformed_persisted_lines(bytes: &[u8]) -> usize {
        bytes
            .split(|b| *b == b'\n')
            .take(MAX_PERSISTED_LINES)
            .filter(|line| match std::str::from_utf8(line) {
                Err(_) => true,
                Ok(text) => {
                    let text = text.trim();
                    !text.is_empty()
                        && !text.starts_with('#')
                        && SignedDescriptor::from_base64(text).is_err()
                }
            })
            .count()
    }

    /// Rebuild a table from [`RoutingTable::to_persisted`] output. Every descriptor is
    /// verified again at `now_unix` (Unix seconds); lines that do not parse or verify
    /// (forged, expired, from the future), the own NodeId and lines beyond
    /// [`MAX_PERSISTED_LINES`] are skipped, as are blank lines and lines starting with `#`.
    /// Contacts count as seen at `now`; bucket overflow is dropped (no candidates).
    pub fn from_persisted(own: NodeId, bytes: &[u8], now_unix: u64, now: Instant) -> Self {
        let mut table = RoutingTable::new(own);
        for line in bytes.split(|b| *b == b'\n').take(MAX_PERSISTED_LINES) {
            let Ok(text) = std::str::from_utf8(line) else {
                continue;
            };
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let Ok(signed) = SignedDescriptor::from_base64(text) else {
                continue;
            };
            if let Ok(c) = Contact::from_descriptor(&signed, now_unix) {
                table.insert(c, now);
            }
        }
        for b in &mut table.buckets {
            b.candidate = None;
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;

    /// Test relays whose NodeIds fall in bucket `bucket` of `own`'s table.
    fn relays_in_bucket(own: &NodeId, bucket: usize, n: usize) -> Vec<Contact> {
        (1000..)
            .map(contact)
            .filter(|c| bucket_index(&own.0, &c.node_id.0) == Some(bucket))
            .take(n)
            .collect()
    }

    #[test]
    fn bucket_index_is_the_highest_differing_bit() {
        let own = [0u8; 32];
        let mut id = [0u8; 32];
        assert_eq!(bucket_index(&own, &id), None);
        id[31] = 1;
        assert_eq!(bucket_index(&own, &id), Some(0));
        id[31] = 0x80;
        assert_eq!(bucket_index(&own, &id), Some(7));
        id[0] = 0x80;
        assert_eq!(bucket_index(&own, &id), Some(255));
        let own = [0x5a; 32];
        for bucket in [0, 1, 7, 8, 100, 254, 255] {
            for r in [[0u8; 32], [0xff; 32], [0x3c; 32]] {
                let t = id_in_bucket(&own, bucket, &r);
                assert_eq!(bucket_index(&own, &t), Some(bucket));
            }
        }
    }

    #[test]
    fn table_adds_updates_and_refuses_own_id() {
        let own = contact(0);
        let mut t = RoutingTable::new(own.node_id);
        let now = Instant::now();
        assert_eq!(t.insert(own.clone(), now), Insert::Own);
        assert!(t.is_empty());
        let a = contact(1);
        assert_eq!(t.insert(a.clone(), now), Insert::Added);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(&a.node_id), Some(&a));

        // A newer descriptor replaces the older; an older one does not.
        let newer = Contact::from_descriptor(&descriptor_at(1, NOW - 60), NOW).unwrap();
        assert_eq!(t.insert(newer.clone(), now), Insert::Updated);
        assert_eq!(t.get(&a.node_id), Some(&newer));
        assert_eq!(t.insert(a.clone(), now), Insert::Updated);
        assert_eq!(t.get(&a.node_id).unwrap().published, NOW - 60);
        assert_eq!(t.len(), 1);

        t.remove(&a.node_id);
        assert!(t.get(&a.node_id).is_none() && t.is_empty());
    }

    #[test]
    fn full_bucket_keeps_oldest_contact_that_answers_its_ping() {
        let own = contact(0).node_id;
        let mut t = RoutingTable::new(own);
        let now = Instant::now();
        let far = relays_in_bucket(&own, 255, K + 2);
        for c in &far[..K] {
            assert_eq!(t.insert(c.clone(), now), Insert::Added);
        }
        let Insert::Pending { ping } = t.insert(far[K].clone(), now) else {
            panic!("full bucket must ask for a ping");
        };
        assert_eq!(ping.node_id, far[0].node_id, "the oldest is pinged");
        // A second newcomer while the ping is out: same ping, newer candidate.
        let Insert::Pending { ping: again } = t.insert(far[K + 1].clone(), now) else {
            panic!()
        };
        assert_eq!(again.node_id, far[0].node_id);

        t.ping_result(far[0].node_id, true, now);
        assert_eq!(t.len(), K);
        assert!(t.get(&far[0].node_id).is_some());
        assert!(t.get(&far[K].node_id).is_none() && t.get(&far[K + 1].node_id).is_none());
        // The oldest answered, so it is now the most recent: the next ping goes to far[1].
        let Insert::Pending { ping } = t.insert(far[K].clone(), now) else {
            panic!()
        };
        assert_eq!(ping.node_id, far[1].node_id);
    }

    #[test]
    fn full_bucket_evicts_oldest_contact_that_fails_its_ping() {
        let own = contact(0).node_id;
        let mut t = RoutingTable::new(own);
        let now = Instant::now();
        let far = relays_in_bucket(&own, 255, K + 1);
        for c in &far[..K] {
            t.insert(c.clone(), now);
        }
        let Insert::Pending { ping } = t.insert(far[K].clone(), now) else {
            panic!()
        };
        t.ping_result(ping.node_id, false, now);
        assert_eq!(t.len(), K);
        assert!(t.get(&far[0].node_id).is_none(), "dead oldest evicted");
        assert!(t.get(&far[K].node_id).is_some(), "candidate added");
        // The candidate is the most recent: the next ping goes to far[1].
        let Insert::Pending { ping } = t.insert(far[0].clone(), now) else {
            panic!()
        };
        assert_eq!(ping.node_id, far[1].node_id);
    }

    #[test]
    fn unanswered_ping_is_retried_after_patience() {
        let own = contact(0).node_id;
        let mut t = RoutingTable::new(own);
        let now = Instant::now();
        let far = relays_in_bucket(&own, 255, K + 1);
        for c in &far[..K] {
            t.insert(c.clone(), now);
        }
        assert!(matches!(
            t.insert(far[K].clone(), now),
            Insert::Pending { .. }
        ));
        // The oldest answered someone else in the meantime (moved to most recent), and the
        // ping result never came: after PING_PATIENCE the new oldest is pinged.
        t.insert(far[0].clone(), now);
        let later = now + PING_PATIENCE;
        let Insert::Pending { ping } = t.insert(far[K].clone(), later) else {
            panic!()
        };
        assert_eq!(ping.node_id, far[1].node_id);
    }

    #[test]
    fn closest_returns_k_nearest_in_xor_order() {
        let own = contact(0).node_id;
        let mut t = RoutingTable::new(own);
        let now = Instant::now();
        let all: Vec<Contact> = (1..200).map(contact).collect();
        for c in &all {
            t.insert(c.clone(), now);
        }
        let target = [0x42; 32];
        let got = t.closest(&target, K);
        assert_eq!(got.len(), K);
        let mut expect = t.contacts();
        expect.sort_by_key(|c| distance(&target, &c.node_id.0));
        expect.truncate(K);
        assert_eq!(got, expect);
        assert!(got
            .windows(2)
            .all(|w| distance(&target, &w[0].node_id.0) < distance(&target, &w[1].node_id.0)));
        assert_eq!(t.closest(&target, 0), vec![]);
        assert_eq!(t.closest(&target, 10_000).len(), t.len());
    }

    #[test]
    fn refresh_targets_name_stale_nonempty_buckets() {
        let own = contact(0).node_id;
        let mut t = RoutingTable::new(own);
        let now = Instant::now();
        let every = Duration::from_secs(3600);
        assert!(t.refresh_targets(now, every).is_empty());
        let c = relays_in_bucket(&own, 255, 1).remove(0);
        t.insert(c, now);
        let targets = t.refresh_targets(now, every);
        assert_eq!(targets.len(), 1);
        assert_eq!(bucket_index(&own.0, &targets[0]), Some(255));
        t.mark_refreshed(&targets[0], now);
        assert!(t.refresh_targets(now + every / 2, every).is_empty());
        assert_eq!(t.refresh_targets(now + every, every).len(), 1);
        // Joining refreshes every bucket from the closest neighbour's outwards.
        let joins = t.join_targets();
        assert_eq!(joins.len(), 1);
        let near = relays_in_bucket(&own, 250, 1).remove(0);
        t.insert(near, now);
        assert_eq!(t.join_targets().len(), 6);
    }

    #[test]
    fn persisted_table_round_trips_and_drops_forged_entries() {
        let own = contact(0).node_id;
        let mut t = RoutingTable::new(own);
        let now = Instant::now();
        for n in 1..40 {
            t.insert(contact(n), now);
        }
        let bytes = t.to_persisted();
        let back = RoutingTable::from_persisted(own, &bytes, NOW, now);
        assert_eq!(back.len(), t.len());
        assert_eq!(back.contacts(), t.contacts());

        // Forge one line (flip a bit of a signature) and append garbage and own id.
        let text = String::from_utf8(bytes).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let mut forged = SignedDescriptor::from_base64(&lines[3]).unwrap();
        forged.signature[10] ^= 4;
        lines[3] = forged.to_base64().unwrap();
        lines.push("not base64 at all".into());
        lines.push(contact(0).descriptor.to_base64().unwrap());
        let joined = lines.join("\n");
        let back = RoutingTable::from_persisted(own, joined.as_bytes(), NOW, now);
        assert_eq!(back.len(), t.len() - 1);
        // Only the garbage line is damage: the forged one decodes (and fails to verify).
        assert_eq!(
            RoutingTable::malformed_persisted_lines(joined.as_bytes()),
            1
        );
        assert_eq!(
            RoutingTable::malformed_persisted_lines(&t.to_persisted()),
            0
        );
        assert!(back
            .contacts()
            .iter()
            .all(|c| c.descriptor.signature != forged.signature));

        // A day later every descriptor has expired.
        let back = RoutingTable::from_persisted(own, &t.to_persisted(), NOW + 86_400, now);
        assert!(back.is_empty());
    }

    #[test]
    fn expired_contacts_are_dropped() {
        let own = contact(0).node_id;
        let mut t = RoutingTable::new(own);
        let now = Instant::now();
        t.insert(contact(1), now);
        t.insert(
            Contact::from_descriptor(&descriptor_at(2, NOW), NOW).unwrap(),
            now,
        );
        // contact(1) was published at NOW - 3600 and expires a day later.
        assert_eq!(t.remove_expired(NOW + 86_400 - 3600), 1);
        assert_eq!(t.len(), 1);
        assert!(t.get(&contact(2).node_id).is_some());
    }
}
