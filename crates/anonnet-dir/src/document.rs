//! Votes and the consensus: byte layouts, signatures and the checks a client makes
//! (`docs/protocol.md` §14.5–§14.6).
//!
//! Vote body:
//! `version u8 (2) ‖ network_id [32] ‖ authority [32] ‖ valid_after u64 ‖ fresh_until u64 ‖
//! valid_until u64 ‖ commit [32] ‖ has_reveal u8 (0|1) ‖ reveal [32]? ‖ n u32 ‖ entry × n`;
//! signed vote: `body_len u32 ‖ body ‖ signature [64]`, the signature by the authority's
//! identity key over `"anonnet vote v1\0" ‖ body`.
//!
//! Consensus body:
//! `version u8 (2) ‖ network_id [32] ‖ valid_after u64 ‖ fresh_until u64 ‖ valid_until u64 ‖
//! srv_current [32] ‖ srv_previous [32] ‖ hs_srv_current [32] ‖ hs_srv_previous [32] ‖
//! n_commits u8 ‖ (authority [32] ‖ commit [32]) ×
//! n_commits ‖ n u32 ‖ entry × n`; signed consensus: `body_len u32 ‖ body ‖ n_sigs u8 ‖
//! (authority [32] ‖ signature [64]) × n_sigs`, each signature over
//! `"anonnet consensus v1\0" ‖ body`. The digest is `BLAKE3(body)`.
//!
//! Entries are sorted by identity with no duplicates; times are Unix seconds with
//! `valid_after < fresh_until <= valid_until`.

use anonnet_crypto::{verify_signature, IdentityKey};
use anonnet_wire::{Reader, WireError, Writer};

use crate::entry::RelayEntry;
use crate::network::{Network, MAX_AUTHORITIES};
use crate::{invalid, DirError, MAX_CLOCK_SKEW};

/// Vote and consensus format version (§14.5, §14.6). Version 2 added `handshakes` to
/// every entry (§14.3); a version-1 document is refused as an unknown version rather than
/// misread.
pub const DOCUMENT_VERSION: u8 = 2;
/// Most relays a vote or consensus may list.
pub const MAX_RELAYS: usize = 100_000;
/// Largest encoded vote or consensus body accepted (bytes): 16 MiB, room for
/// [`MAX_RELAYS`] entries of the common sizes (78–82 bytes; an IPv6 relay with 64 exit
/// ranges takes 346). Encoders refuse a longer body, so nobody signs what readers refuse.
pub const MAX_CONSENSUS_LEN: usize = 16 * 1024 * 1024;
/// Smallest encoded entry (bytes): IPv4, no exit ports.
const MIN_ENTRY_LEN: usize = 78;
const VOTE_CONTEXT: &[u8] = b"anonnet vote v1\0";
const CONSENSUS_CONTEXT: &[u8] = b"anonnet consensus v1\0";

/// A vote: one authority's view of the network for one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// The network's id ([`Network::id`]).
    pub network_id: [u8; 32],
    /// The voting authority's identity key.
    pub authority: [u8; 32],
    /// Start of the period voted for (Unix seconds).
    pub valid_after: u64,
    /// When clients should fetch a newer consensus (Unix seconds).
    pub fresh_until: u64,
    /// When the consensus stops being usable (Unix seconds).
    pub valid_until: u64,
    /// Commitment to the reveal this authority will give next period (§14.7).
    pub commit: [u8; 32],
    /// The reveal for the commitment this authority made last period, when it made one.
    pub reveal: Option<[u8; 32]>,
    /// The relays this authority lists, sorted by identity; `weight` is measured bandwidth.
    pub relays: Vec<RelayEntry>,
}

/// A signed vote as it travels between authorities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedVote {
    /// The encoded [`Vote`] body.
    pub body: Vec<u8>,
    /// Ed25519 signature by the vote's authority.
    pub signature: [u8; 64],
}

/// The consensus: the one view of the network for one period that every client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consensus {
    /// The network's id.
    pub network_id: [u8; 32],
    /// Start of validity (Unix seconds).
    pub valid_after: u64,
    /// Clients fetch a newer consensus after this (Unix seconds).
    pub fresh_until: u64,
    /// The consensus is refused at and after this (Unix seconds).
    pub valid_until: u64,
    /// The shared random value of this period (§14.7).
    pub srv_current: [u8; 32],
    /// The shared random value of the previous period.
    pub srv_previous: [u8; 32],
    /// The shared random value that places hidden-service descriptors of the current
    /// hidden-service period, the UTC day of `valid_after` (§12.7, §14.7): the
    /// `srv_current` of the day's first consensus, carried unchanged through the day.
    pub hs_srv_current: [u8; 32],
    /// The same for the day before (§12.7).
    pub hs_srv_previous: [u8; 32],
    /// Each voting authority's commitment for the next period, sorted by authority.
    pub commits: Vec<([u8; 32], [u8; 32])>,
    /// The relays, sorted by identity.
    pub relays: Vec<RelayEntry>,
}

/// One authority's signature on a consensus body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsensusSignature {
    /// The signing authority's identity key.
    pub authority: [u8; 32],
    /// Ed25519 signature over `"anonnet consensus v1\0" ‖ body`.
    pub signature: [u8; 64],
}

/// A consensus body with the authorities' signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedConsensus {
    /// The encoded [`Consensus`] body.
    pub body: Vec<u8>,
    /// Signatures, at most one per authority.
    pub signatures: Vec<ConsensusSignature>,
}

fn check_times(valid_after: u64, fresh_until: u64, valid_until: u64) -> Result<(), WireError> {
    if valid_after >= fresh_until || fresh_until > valid_until {
        return Err(invalid("validity", "times out of order"));
    }
    Ok(())
}

fn check_len(body: Vec<u8>) -> Result<Vec<u8>, WireError> {
    if body.len() > MAX_CONSENSUS_LEN {
        return Err(WireError::TooLong {
            what: "directory document",
            len: body.len(),
            room: MAX_CONSENSUS_LEN,
        });
    }
    Ok(body)
}

fn encode_entries(w: &mut Writer, relays: &[RelayEntry]) -> Result<(), WireError> {
    if relays.len() > MAX_RELAYS {
        return Err(invalid("relays", "too many"));
    }
    if relays
        .iter()
        .zip(relays.iter().skip(1))
        .any(|(a, b)| a.identity >= b.identity)
    {
        return Err(invalid("relays", "not sorted by identity or repeated"));
    }
    w.put_u32(relays.len() as u32);
    for e in relays {
        e.encode(w)?;
    }
    Ok(())
}

fn decode_entries(r: &mut Reader<'_>) -> Result<Vec<RelayEntry>, WireError> {
    let n = r.take_u32()? as usize;
    if n > MAX_RELAYS || n.saturating_mul(MIN_ENTRY_LEN) > r.remaining() {
        return Err(invalid("relays", "count larger than the document"));
    }
    let mut relays: Vec<RelayEntry> = Vec::with_capacity(n);
    for _ in 0..n {
        let e = RelayEntry::decode(r)?;
        if relays.last().is_some_and(|p| p.identity >= e.identity) {
            return Err(invalid("relays", "not sorted by identity or repeated"));
        }
        relays.push(e);
    }
    Ok(relays)
}

impl Vote {
    /// Encode the body.
    ///
    /// # Errors
    /// [`WireError`] when times are out of order or the relays are unsorted, repeated or
    /// too many.
    pub fn encode_body(&self) -> Result<Vec<u8>, WireError> {
        check_times(self.valid_after, self.fresh_until, self.valid_until)?;
        let mut w = Writer::with_capacity(200 + self.relays.len() * 84);
        w.put_u8(DOCUMENT_VERSION);
        w.put(&self.network_id);
        w.put(&self.authority);
        w.put_u64(self.valid_after);
        w.put_u64(self.fresh_until);
        w.put_u64(self.valid_until);
        w.put(&self.commit);
        match &self.reveal {
            Some(r) => {
                w.put_u8(1);
                w.put(r);
            }
            None => w.put_u8(0),
        }
        encode_entries(&mut w, &self.relays)?;
        check_len(w.into_vec())
    }

    /// Decode a body.
    ///
    /// # Errors
    /// [`WireError`] for any malformation [`Vote::encode_body`] would refuse, an unknown
    /// version, truncation or trailing bytes.
    pub fn decode_body(body: &[u8]) -> Result<Vote, WireError> {
        let mut r = Reader::new(body);
        if r.take_u8()? != DOCUMENT_VERSION {
            return Err(invalid("vote version", "unknown version"));
        }
        let network_id = r.take_array()?;
        let authority = r.take_array()?;
        let valid_after = r.take_u64()?;
        let fresh_until = r.take_u64()?;
        let valid_until = r.take_u64()?;
        check_times(valid_after, fresh_until, valid_until)?;
        let commit = r.take_array()?;
        let reveal = match r.take_u8()? {
            0 => None,
            1 => Some(r.take_array()?),
            _ => return Err(invalid("has_reveal", "not 0 or 1")),
        };
        let relays = decode_entries(&mut r)?;
        r.finish()?;
        Ok(Vote {
            network_id,
            authority,
            valid_after,
            fresh_until,
            valid_until,
            commit,
            reveal,
            relays,
        })
    }

    /// Sign the vote with the authority's identity key (whose public key must be
    /// `self.authority`).
    ///
    /// # Errors
    /// [`WireError`] when the body cannot be encoded or `key` is not the vote's authority.
    pub fn sign(&self, key: &IdentityKey) -> Result<SignedVote, WireError> {
        if key.public() != self.authority {
            return Err(invalid("vote authority", "not the signing key"));
        }
        let body = self.encode_body()?;
        let signature = key.sign(&[VOTE_CONTEXT, &body].concat());
        Ok(SignedVote { body, signature })
    }
}

impl SignedVote {
    /// Encode as `body_len u32 ‖ body ‖ signature [64]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.body.len() + 68);
        w.put_u32(self.body.len() as u32);
        w.put(&self.body);
        w.put(&self.signature);
        w.into_vec()
    }

    /// Decode (no signature check; see [`SignedVote::verify`]).
    ///
    /// # Errors
    /// [`WireError`] on truncation, a body longer than [`MAX_CONSENSUS_LEN`], or trailing
    /// bytes.
    pub fn decode(bytes: &[u8]) -> Result<SignedVote, WireError> {
        let mut r = Reader::new(bytes);
        let len = r.take_u32()? as usize;
        if len > MAX_CONSENSUS_LEN {
            return Err(invalid("vote", "too long"));
        }
        let body = r.take(len)?.to_vec();
        let signature = r.take_array()?;
        r.finish()?;
        Ok(SignedVote { body, signature })
    }

    /// Check the vote: well-formed, for `network`, signed by one of its authorities.
    ///
    /// # Errors
    /// [`DirError::Wire`], [`DirError::WrongNetwork`], [`DirError::UnknownAuthority`] or
    /// [`DirError::BadSignature`].
    pub fn verify(&self, network: &Network) -> Result<Vote, DirError> {
        let vote = Vote::decode_body(&self.body)?;
        if vote.network_id != network.id() {
            return Err(DirError::WrongNetwork);
        }
        let who = hex::encode(vote.authority);
        if network.authority(&vote.authority).is_none() {
            return Err(DirError::UnknownAuthority(who));
        }
        verify_signature(
            &vote.authority,
            &[VOTE_CONTEXT, &self.body].concat(),
            &self.signature,
        )
        .map_err(|_| DirError::BadSignature(who))?;
        Ok(vote)
    }
}

impl Consensus {
    /// Encode the body.
    ///
    /// # Errors
    /// [`WireError`] when times are out of order, there are more than 32 commits, or the
    /// relays are unsorted, repeated or too many.
    pub fn encode_body(&self) -> Result<Vec<u8>, WireError> {
        check_times(self.valid_after, self.fresh_until, self.valid_until)?;
        if self.commits.len() > MAX_AUTHORITIES {
            return Err(invalid("commits", "too many"));
        }
        let mut w = Writer::with_capacity(200 + self.relays.len() * 84);
        w.put_u8(DOCUMENT_VERSION);
        w.put(&self.network_id);
        w.put_u64(self.valid_after);
        w.put_u64(self.fresh_until);
        w.put_u64(self.valid_until);
        w.put(&self.srv_current);
        w.put(&self.srv_previous);
        w.put(&self.hs_srv_current);
        w.put(&self.hs_srv_previous);
        w.put_u8(self.commits.len() as u8);
        for (a, c) in &self.commits {
            w.put(a);
            w.put(c);
        }
        encode_entries(&mut w, &self.relays)?;
        check_len(w.into_vec())
    }

    /// Decode a body.
    ///
    /// # Errors
    /// [`WireError`] for an unknown version, truncation, trailing bytes or any field
    /// [`Consensus::encode_body`] would refuse.
    pub fn decode_body(body: &[u8]) -> Result<Consensus, WireError> {
        let mut r = Reader::new(body);
        if r.take_u8()? != DOCUMENT_VERSION {
            return Err(invalid("consensus version", "unknown version"));
        }
        let network_id = r.take_array()?;
        let valid_after = r.take_u64()?;
        let fresh_until = r.take_u64()?;
        let valid_until = r.take_u64()?;
        check_times(valid_after, fresh_until, valid_until)?;
        let srv_current = r.take_array()?;
        let srv_previous = r.take_array()?;
        let hs_srv_current = r.take_array()?;
        let hs_srv_previous = r.take_array()?;
        let n = usize::from(r.take_u8()?);
        if n > MAX_AUTHORITIES {
            return Err(invalid("commits", "too many"));
        }
        let mut commits = Vec::with_capacity(n);
        for _ in 0..n {
            commits.push((r.take_array()?, r.take_array()?));
        }
        let relays = decode_entries(&mut r)?;
        r.finish()?;
        Ok(Consensus {
            network_id,
            valid_after,
            fresh_until,
            valid_until,
            srv_current,
            srv_previous,
            hs_srv_current,
            hs_srv_previous,
            commits,
            relays,
        })
    }

    /// This authority's signature on an encoded body.
    pub fn sign_body(body: &[u8], key: &IdentityKey) -> ConsensusSignature {
        ConsensusSignature {
            authority: key.public(),
            signature: key.sign(&[CONSENSUS_CONTEXT, body].concat()),
        }
    }
}

/// The digest of a consensus body, `BLAKE3(body)` (32 bytes): what two clients compare to
/// know they hold the same consensus.
pub fn digest(body: &[u8]) -> [u8; 32] {
    *blake3::hash(body).as_bytes()
}

impl SignedConsensus {
    /// Encode as `body_len u32 ‖ body ‖ n_sigs u8 ‖ (authority [32] ‖ signature [64]) ×
    /// n_sigs`.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.signatures.len().min(MAX_AUTHORITIES);
        let mut w = Writer::with_capacity(self.body.len() + 5 + 96 * n);
        w.put_u32(self.body.len() as u32);
        w.put(&self.body);
        w.put_u8(n as u8);
        for s in self.signatures.iter().take(n) {
            w.put(&s.authority);
            w.put(&s.signature);
        }
        w.into_vec()
    }

    /// Decode (no signature check; see [`SignedConsensus::verify`]).
    ///
    /// # Errors
    /// [`WireError`] on truncation, a body longer than [`MAX_CONSENSUS_LEN`], more than 32
    /// signatures, or trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<SignedConsensus, WireError> {
        let mut r = Reader::new(bytes);
        let len = r.take_u32()? as usize;
        if len > MAX_CONSENSUS_LEN {
            return Err(invalid("consensus", "too long"));
        }
        let body = r.take(len)?.to_vec();
        let n = usize::from(r.take_u8()?);
        if n > MAX_AUTHORITIES {
            return Err(invalid("signatures", "too many"));
        }
        let mut signatures = Vec::with_capacity(n);
        for _ in 0..n {
            signatures.push(ConsensusSignature {
                authority: r.take_array()?,
                signature: r.take_array()?,
            });
        }
        r.finish()?;
        Ok(SignedConsensus { body, signatures })
    }

    /// `BLAKE3(body)`.
    pub fn digest(&self) -> [u8; 32] {
        digest(&self.body)
    }

    /// How many distinct authorities of `network` signed the body validly. Signatures by
    /// others, repeated ones and bad ones are not counted.
    pub fn valid_signers(&self, network: &Network) -> Vec<[u8; 32]> {
        let msg = [CONSENSUS_CONTEXT, &self.body].concat();
        let mut ok: Vec<[u8; 32]> = Vec::new();
        for s in &self.signatures {
            if ok.contains(&s.authority) || network.authority(&s.authority).is_none() {
                continue;
            }
            if verify_signature(&s.authority, &msg, &s.signature).is_ok() {
                ok.push(s.authority);
            }
        }
        ok
    }

    /// True when `sig` is a valid signature on this body by an authority of `network`
    /// (one signature checked; the body is not copied).
    pub fn signature_valid(&self, sig: &ConsensusSignature, network: &Network) -> bool {
        network.authority(&sig.authority).is_some()
            && verify_signature(
                &sig.authority,
                &[CONSENSUS_CONTEXT, &self.body].concat(),
                &sig.signature,
            )
            .is_ok()
    }

    /// Add `sig` unless that authority already signed; `false` when it was already there.
    pub fn add_signature(&mut self, sig: ConsensusSignature) -> bool {
        if self.signatures.iter().any(|s| s.authority == sig.authority) {
            return false;
        }
        self.signatures.push(sig);
        true
    }

    /// The checks a client makes before it uses a consensus (§14.6): well-formed, for
    /// `network`, signed by more than half of its authorities, and valid at `now` (Unix
    /// seconds; up to [`MAX_CLOCK_SKEW`] early is tolerated).
    ///
    /// # Errors
    /// [`DirError::Wire`], [`DirError::WrongNetwork`], [`DirError::TooFewSignatures`] or
    /// [`DirError::NotValidNow`].
    pub fn verify(&self, network: &Network, now: u64) -> Result<Consensus, DirError> {
        self.verify_counting(network, now).map(|(c, _)| c)
    }

    /// [`SignedConsensus::verify`], also returning how many distinct authorities of
    /// `network` signed validly (each signature is checked once).
    ///
    /// # Errors
    /// As [`SignedConsensus::verify`].
    pub fn verify_counting(
        &self,
        network: &Network,
        now: u64,
    ) -> Result<(Consensus, usize), DirError> {
        let (c, signers) = self.verify_signed_counting(network)?;
        if now.saturating_add(MAX_CLOCK_SKEW) < c.valid_after || now >= c.valid_until {
            return Err(DirError::NotValidNow {
                now,
                valid_after: c.valid_after,
                valid_until: c.valid_until,
            });
        }
        Ok((c, signers))
    }

    /// [`SignedConsensus::verify`] without the time check (for a consensus read from disk
    /// to report on, or one whose window the caller judges itself).
    ///
    /// # Errors
    /// As [`SignedConsensus::verify`], without [`DirError::NotValidNow`].
    pub fn verify_signed(&self, network: &Network) -> Result<Consensus, DirError> {
        self.verify_signed_counting(network).map(|(c, _)| c)
    }

    fn verify_signed_counting(&self, network: &Network) -> Result<(Consensus, usize), DirError> {
        let c = Consensus::decode_body(&self.body)?;
        if c.network_id != network.id() {
            return Err(DirError::WrongNetwork);
        }
        let valid = self.valid_signers(network).len();
        if valid < network.majority() {
            return Err(DirError::TooFewSignatures {
                valid,
                authorities: network.authorities.len(),
            });
        }
        Ok((c, valid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::tests::entry;
    use crate::network::AuthorityEntry;

    pub(crate) fn keys(n: u8) -> Vec<IdentityKey> {
        (1..=n).map(|i| IdentityKey::from_seed(&[i; 32])).collect()
    }

    pub(crate) fn network_of(keys: &[IdentityKey]) -> Network {
        Network::new(
            "test".into(),
            keys.iter()
                .enumerate()
                .map(|(i, k)| AuthorityEntry {
                    name: format!("a{i}"),
                    identity: k.public(),
                    address: "127.0.0.1:1".parse().unwrap(),
                })
                .collect(),
        )
        .unwrap()
    }

    fn consensus(net: &Network) -> Consensus {
        let mut relays: Vec<RelayEntry> = (1..=5).map(entry).collect();
        relays.sort_by_key(|e| e.identity);
        Consensus {
            network_id: net.id(),
            valid_after: 1000,
            fresh_until: 1030,
            valid_until: 1090,
            srv_current: [7; 32],
            srv_previous: [6; 32],
            hs_srv_current: [5; 32],
            hs_srv_previous: [4; 32],
            commits: vec![([1; 32], [2; 32])],
            relays,
        }
    }

    fn signed(c: &Consensus, signers: &[IdentityKey]) -> SignedConsensus {
        let body = c.encode_body().unwrap();
        SignedConsensus {
            signatures: signers
                .iter()
                .map(|k| Consensus::sign_body(&body, k))
                .collect(),
            body,
        }
    }

    #[test]
    fn consensus_signed_by_a_majority_is_accepted_in_its_window() {
        let k = keys(3);
        let net = network_of(&k);
        let c = consensus(&net);
        let s = signed(&c, &k[..2]);
        let bytes = s.encode();
        let back = SignedConsensus::decode(&bytes).unwrap();
        assert_eq!(back.verify(&net, 1000).unwrap(), c);
        assert_eq!(back.verify(&net, 1089).unwrap(), c);
    }

    #[test]
    fn consensus_with_too_few_signatures_is_refused() {
        let k = keys(3);
        let net = network_of(&k);
        let s = signed(&consensus(&net), &k[..1]);
        assert_eq!(
            s.verify(&net, 1000),
            Err(DirError::TooFewSignatures {
                valid: 1,
                authorities: 3
            })
        );
        // The same signature twice counts once.
        let mut twice = s.clone();
        twice.signatures.push(twice.signatures[0]);
        assert!(matches!(
            twice.verify(&net, 1000),
            Err(DirError::TooFewSignatures { valid: 1, .. })
        ));
    }

    #[test]
    fn consensus_with_forged_signatures_is_refused() {
        let k = keys(3);
        let net = network_of(&k);
        let mut s = signed(&consensus(&net), &k[..2]);
        s.signatures[1].signature[0] ^= 1;
        assert!(matches!(
            s.verify(&net, 1000),
            Err(DirError::TooFewSignatures { valid: 1, .. })
        ));
        // Signatures by outsiders do not count either.
        let outsiders = keys(6);
        let s = signed(&consensus(&net), &outsiders[3..]);
        assert!(matches!(
            s.verify(&net, 1000),
            Err(DirError::TooFewSignatures { valid: 0, .. })
        ));
        // A changed body invalidates every signature.
        let mut s = signed(&consensus(&net), &k);
        let last = s.body.len() - 1;
        s.body[last] ^= 1;
        assert!(s.verify(&net, 1000).is_err());
    }

    #[test]
    fn expired_or_future_consensus_is_refused() {
        let k = keys(3);
        let net = network_of(&k);
        let s = signed(&consensus(&net), &k);
        assert!(matches!(
            s.verify(&net, 1090),
            Err(DirError::NotValidNow { .. })
        ));
        assert!(matches!(
            s.verify(&net, 1000 - MAX_CLOCK_SKEW - 1),
            Err(DirError::NotValidNow { .. })
        ));
        assert!(s.verify(&net, 1000 - MAX_CLOCK_SKEW).is_ok());
    }

    #[test]
    fn consensus_for_another_network_is_refused() {
        let k = keys(3);
        let net = network_of(&k);
        let mut other = net.clone();
        other.name = "other".into();
        let s = signed(&consensus(&other), &k);
        assert_eq!(s.verify(&net, 1000), Err(DirError::WrongNetwork));
    }

    #[test]
    fn vote_round_trips_and_checks_its_signer() {
        let k = keys(3);
        let net = network_of(&k);
        let mut relays: Vec<RelayEntry> = (1..=3).map(entry).collect();
        relays.sort_by_key(|e| e.identity);
        let v = Vote {
            network_id: net.id(),
            authority: k[0].public(),
            valid_after: 10,
            fresh_until: 20,
            valid_until: 40,
            commit: [3; 32],
            reveal: Some([4; 32]),
            relays,
        };
        let s = v.sign(&k[0]).unwrap();
        let back = SignedVote::decode(&s.encode()).unwrap();
        assert_eq!(back.verify(&net).unwrap(), v);
        let mut bad = back.clone();
        bad.signature[5] ^= 1;
        assert!(matches!(bad.verify(&net), Err(DirError::BadSignature(_))));
        assert!(v.sign(&k[1]).is_err());
        let stranger = IdentityKey::from_seed(&[99; 32]);
        let mut v2 = v.clone();
        v2.authority = stranger.public();
        let s2 = v2.sign(&stranger).unwrap();
        assert!(matches!(
            s2.verify(&net),
            Err(DirError::UnknownAuthority(_))
        ));
    }

    #[test]
    fn unsorted_or_oversized_documents_are_refused() {
        let k = keys(1);
        let net = network_of(&k);
        let mut c = consensus(&net);
        c.relays.swap(0, 1);
        assert!(c.encode_body().is_err());
        // A count larger than the bytes that follow is refused before allocating.
        let mut body = consensus(&net).encode_body().unwrap();
        let count_at = 1 + 32 + 24 + 128 + 1 + 64;
        body[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Consensus::decode_body(&body).is_err());
        assert!(SignedConsensus::decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
