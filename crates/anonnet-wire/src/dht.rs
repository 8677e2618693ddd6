//! DHT messages: the Kademlia RPCs relays answer over their QUIC links. Spec:
//! `docs/protocol.md` §11 "DHT".
//!
//! Every message is `type u8 ‖ txid u64 ‖ fields`; one request and its response travel on one
//! QUIC bidirectional stream:
//!
//! - request: `DHT_STREAM_TAG u8 ‖ len u32 ‖ message [len]` (see [`frame_request`]);
//! - response: `len u32 ‖ message [len]` (see [`frame_response`]),
//!
//! with `len ≤` [`MAX_MESSAGE_LEN`]. A contact is a signed relay descriptor in its §3.2
//! encoding (`body_len u16 ‖ body ‖ signature [64]`), so it is self-delimiting. Every count
//! is bounded and checked before anything is allocated; decoders never panic.

use crate::descriptor::MAX_BODY_LEN;
use crate::hs::{DarkRecord, HsDescriptor};
use crate::{invalid, Reader, SignedDescriptor, WireError, Writer};

/// First byte of a QUIC bidirectional stream that carries one DHT request and its response.
/// Circuit legs start with a cell whose first byte is `CREATE` = `0x01` (§4.1), so a relay
/// tells the two apart from this byte.
pub const DHT_STREAM_TAG: u8 = 0x10;
/// Most contacts in one `NODES` or `VALUE` answer (Kademlia's k = 20).
pub const MAX_NODES: usize = 20;
/// Most records in one `VALUE` answer.
pub const MAX_RECORDS: usize = 8;
/// Largest encoded record body (bytes). A relay descriptor record is at most 1090 bytes.
pub const MAX_RECORD_LEN: usize = 4096;
/// Largest encoded message (bytes), not counting the stream tag and length prefix. The
/// largest possible `VALUE` (8 records of 4096 bytes and 20 contacts) is 54 603 bytes.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Bytes of the `len u32` prefix of a framed message.
pub const FRAME_LEN_PREFIX: usize = 4;

/// Message type bytes (§11.2).
mod msg_type {
    pub const PING: u8 = 0x01;
    pub const PONG: u8 = 0x02;
    pub const FIND_NODE: u8 = 0x03;
    pub const NODES: u8 = 0x04;
    pub const FIND_VALUE: u8 = 0x05;
    pub const VALUE: u8 = 0x06;
    pub const STORE: u8 = 0x07;
    pub const STORED: u8 = 0x08;
    pub const ANNOUNCE: u8 = 0x09;
}

/// What a record holds (the `kind` byte of a record, §11.3). Unknown kinds are refused by
/// the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A relay descriptor: the body is [`SignedDescriptor::encode`], stored under
    /// `BLAKE3-derive_key("anonnet 2026 relay descriptor key", NodeId)`.
    RelayDescriptor = 1,
    /// A hidden-service descriptor (§12.6): the body is [`HsDescriptor::encode`], stored
    /// under its descriptor index (§12.3).
    HsDescriptor = 2,
    /// A `.dark` name record (§12.6): the body is [`DarkRecord::encode`], stored under
    /// `BLAKE3-derive_key("anonnet 2026 dark name key", name)` (§12.5).
    DarkName = 3,
}

impl RecordKind {
    /// The kind byte.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// The kind for a byte.
    ///
    /// # Errors
    /// [`WireError::Invalid`] for an unknown kind.
    pub fn from_byte(b: u8) -> Result<Self, WireError> {
        match b {
            1 => Ok(RecordKind::RelayDescriptor),
            2 => Ok(RecordKind::HsDescriptor),
            3 => Ok(RecordKind::DarkName),
            _ => Err(invalid("record kind", "unknown kind")),
        }
    }
}

/// One DHT record: `kind u8 ‖ len u16 ‖ body [len]`, `len ≤` [`MAX_RECORD_LEN`]. The body's
/// signature is checked by the storage node and by the reader, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What the body holds.
    pub kind: RecordKind,
    /// The record itself, 0..=[`MAX_RECORD_LEN`] bytes. For
    /// [`RecordKind::RelayDescriptor`]: [`SignedDescriptor::encode`]; for
    /// [`RecordKind::HsDescriptor`]: [`HsDescriptor::encode`]; for
    /// [`RecordKind::DarkName`]: [`DarkRecord::encode`].
    pub body: Vec<u8>,
}

impl Record {
    /// A relay-descriptor record holding `signed`.
    ///
    /// # Errors
    /// As [`SignedDescriptor::encode`].
    pub fn relay_descriptor(signed: &SignedDescriptor) -> Result<Self, WireError> {
        Ok(Record {
            kind: RecordKind::RelayDescriptor,
            body: signed.encode()?,
        })
    }

    /// A hidden-service descriptor record holding `desc` (§12.6).
    ///
    /// # Errors
    /// As [`HsDescriptor::encode`].
    pub fn hs_descriptor(desc: &HsDescriptor) -> Result<Self, WireError> {
        Ok(Record {
            kind: RecordKind::HsDescriptor,
            body: desc.encode()?,
        })
    }

    /// A `.dark` name record holding `record` (§12.6).
    ///
    /// # Errors
    /// As [`DarkRecord::encode`].
    pub fn dark_name(record: &DarkRecord) -> Result<Self, WireError> {
        Ok(Record {
            kind: RecordKind::DarkName,
            body: record.encode()?,
        })
    }

    fn encode_into(&self, w: &mut Writer) -> Result<(), WireError> {
        if self.body.len() > MAX_RECORD_LEN {
            return Err(WireError::TooLong {
                what: "record body",
                len: self.body.len(),
                room: MAX_RECORD_LEN,
            });
        }
        w.put_u8(self.kind.to_byte());
        w.put_u16(self.body.len() as u16);
        w.put(&self.body);
        Ok(())
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let kind = RecordKind::from_byte(r.take_u8()?)?;
        let len = usize::from(r.take_u16()?);
        if len > MAX_RECORD_LEN {
            return Err(invalid("record", "body longer than 4096 bytes"));
        }
        Ok(Record {
            kind,
            body: r.take(len)?.to_vec(),
        })
    }
}

/// Reason byte of [`StoreStatus::Rejected`]: the record does not parse, its signature does
/// not verify, it has expired or lives too long, or its key does not match its owner.
pub const REJECT_INVALID: u8 = 1;
/// Reason byte of [`StoreStatus::Rejected`]: the node holds a newer (or another of the same
/// age) record of the same owner.
pub const REJECT_STALE: u8 = 2;
/// Reason byte of [`StoreStatus::Rejected`]: the node does not store records (client mode
/// or storage switched off).
pub const REJECT_NOT_STORING: u8 = 3;
/// Reason byte of [`StoreStatus::Rejected`]: the key holds a live `.dark` name record of
/// another owner; names are first come, first served (§12.6).
pub const REJECT_TAKEN: u8 = 4;

/// The answer to `STORE`: `status u8 ‖ reason u8` (§11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreStatus {
    /// Status 0: the record is stored (or was already, byte for byte).
    Stored,
    /// Status 1 with a reason byte ([`REJECT_INVALID`], [`REJECT_STALE`],
    /// [`REJECT_NOT_STORING`], [`REJECT_TAKEN`]; other values are kept as received).
    Rejected(u8),
    /// Status 2: the sender exceeded its request rate; try later.
    RateLimited,
    /// Status 3: a bound (per key, per peer or in total) is reached.
    Full,
}

impl StoreStatus {
    fn to_bytes(self) -> [u8; 2] {
        match self {
            StoreStatus::Stored => [0, 0],
            StoreStatus::Rejected(reason) => [1, reason],
            StoreStatus::RateLimited => [2, 0],
            StoreStatus::Full => [3, 0],
        }
    }

    fn from_bytes(status: u8, reason: u8) -> Result<Self, WireError> {
        match (status, reason) {
            (0, 0) => Ok(StoreStatus::Stored),
            (1, reason) => Ok(StoreStatus::Rejected(reason)),
            (2, 0) => Ok(StoreStatus::RateLimited),
            (3, 0) => Ok(StoreStatus::Full),
            (0 | 2 | 3, _) => Err(invalid("store reason", "non-zero without Rejected")),
            _ => Err(invalid("store status", "unknown status")),
        }
    }
}

/// One DHT message (§11.2). `txid` is chosen by the requester (random) and echoed in the
/// response; a response whose `txid` or type does not match the request is a protocol
/// violation (see [`DhtMessage::answers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtMessage {
    /// `0x01` request: is the node alive? Answered by [`DhtMessage::Pong`].
    Ping {
        /// Transaction id.
        txid: u64,
    },
    /// `0x02` response to `PING` or `ANNOUNCE`.
    Pong {
        /// Transaction id of the request.
        txid: u64,
    },
    /// `0x03` request: the node's closest contacts to `target`. Answered by `NODES`.
    FindNode {
        /// Transaction id.
        txid: u64,
        /// A 256-bit point of the key space.
        target: [u8; 32],
    },
    /// `0x04` response: up to [`MAX_NODES`] contacts, each a signed relay descriptor.
    Nodes {
        /// Transaction id of the request.
        txid: u64,
        /// The contacts, 0..=[`MAX_NODES`].
        nodes: Vec<SignedDescriptor>,
    },
    /// `0x05` request: the records stored under `key`, else closer contacts. Answered by
    /// `VALUE`.
    FindValue {
        /// Transaction id.
        txid: u64,
        /// The record key.
        key: [u8; 32],
    },
    /// `0x06` response: the records found (may be empty) and closer contacts.
    Value {
        /// Transaction id of the request.
        txid: u64,
        /// Records stored under the key, 0..=[`MAX_RECORDS`].
        records: Vec<Record>,
        /// Contacts closer to the key, 0..=[`MAX_NODES`].
        nodes: Vec<SignedDescriptor>,
    },
    /// `0x07` request: store `record` under `key`. Answered by `STORED`.
    Store {
        /// Transaction id.
        txid: u64,
        /// The record key.
        key: [u8; 32],
        /// The record.
        record: Record,
    },
    /// `0x08` response to `STORE`.
    Stored {
        /// Transaction id of the request.
        txid: u64,
        /// What the storage node did.
        status: StoreStatus,
    },
    /// `0x09` request from a relay: "this is my descriptor; I am alive". The receiver
    /// verifies it, checks that its NodeId is the one the link's certificate proves, and may
    /// add it to its routing table. Answered by [`DhtMessage::Pong`]. Kademlia learns
    /// contacts from the requests it serves; since a request carries no address or keys,
    /// relays announce themselves with this message instead.
    Announce {
        /// Transaction id.
        txid: u64,
        /// The sender's own signed descriptor.
        descriptor: SignedDescriptor,
    },
}

fn put_nodes(w: &mut Writer, nodes: &[SignedDescriptor]) -> Result<(), WireError> {
    if nodes.len() > MAX_NODES {
        return Err(WireError::TooLong {
            what: "DHT contacts",
            len: nodes.len(),
            room: MAX_NODES,
        });
    }
    w.put_u8(nodes.len() as u8);
    for n in nodes {
        w.put(&n.encode()?);
    }
    Ok(())
}

fn take_descriptor(r: &mut Reader<'_>) -> Result<SignedDescriptor, WireError> {
    let len = usize::from(r.take_u16()?);
    if len > MAX_BODY_LEN {
        return Err(invalid("descriptor", "body too long"));
    }
    let body = r.take(len)?.to_vec();
    let signature = r.take_array()?;
    Ok(SignedDescriptor { body, signature })
}

fn take_nodes(r: &mut Reader<'_>) -> Result<Vec<SignedDescriptor>, WireError> {
    let n = usize::from(r.take_u8()?);
    if n > MAX_NODES {
        return Err(invalid("DHT contacts", "more than 20"));
    }
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(take_descriptor(r)?);
    }
    Ok(nodes)
}

impl DhtMessage {
    /// The transaction id.
    pub fn txid(&self) -> u64 {
        match self {
            DhtMessage::Ping { txid }
            | DhtMessage::Pong { txid }
            | DhtMessage::FindNode { txid, .. }
            | DhtMessage::Nodes { txid, .. }
            | DhtMessage::FindValue { txid, .. }
            | DhtMessage::Value { txid, .. }
            | DhtMessage::Store { txid, .. }
            | DhtMessage::Stored { txid, .. }
            | DhtMessage::Announce { txid, .. } => *txid,
        }
    }

    /// True for the messages a requester sends (`PING`, `FIND_NODE`, `FIND_VALUE`, `STORE`,
    /// `ANNOUNCE`); false for responses.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            DhtMessage::Ping { .. }
                | DhtMessage::FindNode { .. }
                | DhtMessage::FindValue { .. }
                | DhtMessage::Store { .. }
                | DhtMessage::Announce { .. }
        )
    }

    /// True when `self` is a valid response to `request`: same `txid` and the matching type
    /// (`PING`/`ANNOUNCE` → `PONG`, `FIND_NODE` → `NODES`, `FIND_VALUE` → `VALUE`,
    /// `STORE` → `STORED`).
    pub fn answers(&self, request: &DhtMessage) -> bool {
        let types_match = matches!(
            (request, self),
            (
                DhtMessage::Ping { .. } | DhtMessage::Announce { .. },
                DhtMessage::Pong { .. }
            ) | (DhtMessage::FindNode { .. }, DhtMessage::Nodes { .. })
                | (DhtMessage::FindValue { .. }, DhtMessage::Value { .. })
                | (DhtMessage::Store { .. }, DhtMessage::Stored { .. })
        );
        types_match && self.txid() == request.txid()
    }

    fn type_byte(&self) -> u8 {
        match self {
            DhtMessage::Ping { .. } => msg_type::PING,
            DhtMessage::Pong { .. } => msg_type::PONG,
            DhtMessage::FindNode { .. } => msg_type::FIND_NODE,
            DhtMessage::Nodes { .. } => msg_type::NODES,
            DhtMessage::FindValue { .. } => msg_type::FIND_VALUE,
            DhtMessage::Value { .. } => msg_type::VALUE,
            DhtMessage::Store { .. } => msg_type::STORE,
            DhtMessage::Stored { .. } => msg_type::STORED,
            DhtMessage::Announce { .. } => msg_type::ANNOUNCE,
        }
    }

    /// Encode: `type u8 ‖ txid u64 ‖ fields` (§11.2), without framing.
    ///
    /// # Errors
    /// [`WireError::TooLong`] when a list holds more than [`MAX_NODES`] contacts or
    /// [`MAX_RECORDS`] records, a record body exceeds [`MAX_RECORD_LEN`], a descriptor body
    /// exceeds 1024 bytes, or the whole message exceeds [`MAX_MESSAGE_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::with_capacity(64);
        w.put_u8(self.type_byte());
        w.put_u64(self.txid());
        match self {
            DhtMessage::Ping { .. } | DhtMessage::Pong { .. } => {}
            DhtMessage::FindNode { target, .. } => w.put(target),
            DhtMessage::Nodes { nodes, .. } => put_nodes(&mut w, nodes)?,
            DhtMessage::FindValue { key, .. } => w.put(key),
            DhtMessage::Value { records, nodes, .. } => {
                if records.len() > MAX_RECORDS {
                    return Err(WireError::TooLong {
                        what: "DHT records",
                        len: records.len(),
                        room: MAX_RECORDS,
                    });
                }
                w.put_u8(records.len() as u8);
                for rec in records {
                    rec.encode_into(&mut w)?;
                }
                put_nodes(&mut w, nodes)?;
            }
            DhtMessage::Store { key, record, .. } => {
                w.put(key);
                record.encode_into(&mut w)?;
            }
            DhtMessage::Stored { status, .. } => w.put(&status.to_bytes()),
            DhtMessage::Announce { descriptor, .. } => w.put(&descriptor.encode()?),
        }
        if w.len() > MAX_MESSAGE_LEN {
            return Err(WireError::TooLong {
                what: "DHT message",
                len: w.len(),
                room: MAX_MESSAGE_LEN,
            });
        }
        Ok(w.into_vec())
    }

    /// Decode one whole message (no framing).
    ///
    /// # Errors
    /// [`WireError`] when the input is longer than [`MAX_MESSAGE_LEN`], truncated, followed
    /// by trailing bytes, of an unknown type, or any count, length, kind or status is out of
    /// range.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(invalid("DHT message", "longer than 65536 bytes"));
        }
        let mut r = Reader::new(bytes);
        let ty = r.take_u8()?;
        let txid = r.take_u64()?;
        let msg = match ty {
            msg_type::PING => DhtMessage::Ping { txid },
            msg_type::PONG => DhtMessage::Pong { txid },
            msg_type::FIND_NODE => DhtMessage::FindNode {
                txid,
                target: r.take_array()?,
            },
            msg_type::NODES => DhtMessage::Nodes {
                txid,
                nodes: take_nodes(&mut r)?,
            },
            msg_type::FIND_VALUE => DhtMessage::FindValue {
                txid,
                key: r.take_array()?,
            },
            msg_type::VALUE => {
                let n = usize::from(r.take_u8()?);
                if n > MAX_RECORDS {
                    return Err(invalid("DHT records", "more than 8"));
                }
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    records.push(Record::decode_from(&mut r)?);
                }
                DhtMessage::Value {
                    txid,
                    records,
                    nodes: take_nodes(&mut r)?,
                }
            }
            msg_type::STORE => DhtMessage::Store {
                txid,
                key: r.take_array()?,
                record: Record::decode_from(&mut r)?,
            },
            msg_type::STORED => {
                let status = r.take_u8()?;
                let reason = r.take_u8()?;
                DhtMessage::Stored {
                    txid,
                    status: StoreStatus::from_bytes(status, reason)?,
                }
            }
            msg_type::ANNOUNCE => DhtMessage::Announce {
                txid,
                descriptor: take_descriptor(&mut r)?,
            },
            _ => return Err(invalid("DHT message type", "unknown type")),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// A request as written on a new stream: `DHT_STREAM_TAG u8 ‖ len u32 ‖ message`.
///
/// # Errors
/// As [`DhtMessage::encode`].
pub fn frame_request(msg: &DhtMessage) -> Result<Vec<u8>, WireError> {
    let body = msg.encode()?;
    let mut w = Writer::with_capacity(1 + FRAME_LEN_PREFIX + body.len());
    w.put_u8(DHT_STREAM_TAG);
    w.put_u32(body.len() as u32);
    w.put(&body);
    Ok(w.into_vec())
}

/// A response as written back on the request's stream: `len u32 ‖ message`.
///
/// # Errors
/// As [`DhtMessage::encode`].
pub fn frame_response(msg: &DhtMessage) -> Result<Vec<u8>, WireError> {
    let body = msg.encode()?;
    let mut w = Writer::with_capacity(FRAME_LEN_PREFIX + body.len());
    w.put_u32(body.len() as u32);
    w.put(&body);
    Ok(w.into_vec())
}

/// The message length announced by a 4-byte `len u32` prefix (bytes), for a reader that
/// reads the prefix first and then exactly that many bytes.
///
/// # Errors
/// [`WireError::Invalid`] when the length exceeds [`MAX_MESSAGE_LEN`] (the stream should be
/// reset without reading further).
pub fn frame_len(prefix: [u8; FRAME_LEN_PREFIX]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(invalid("DHT frame length", "longer than 65536 bytes"));
    }
    Ok(len)
}

/// Decode a whole framed response (`len u32 ‖ message`, nothing after it).
///
/// # Errors
/// As [`frame_len`] and [`DhtMessage::decode`]; [`WireError::Trailing`] when bytes follow.
pub fn unframe_response(bytes: &[u8]) -> Result<DhtMessage, WireError> {
    let mut r = Reader::new(bytes);
    let len = frame_len(r.take_array()?)?;
    let msg = DhtMessage::decode(r.take(len)?)?;
    r.finish()?;
    Ok(msg)
}

/// Decode a whole framed request (`DHT_STREAM_TAG u8 ‖ len u32 ‖ message`, nothing after).
///
/// # Errors
/// [`WireError::Invalid`] when the tag is not [`DHT_STREAM_TAG`]; else as
/// [`unframe_response`].
pub fn unframe_request(bytes: &[u8]) -> Result<DhtMessage, WireError> {
    let mut r = Reader::new(bytes);
    if r.take_u8()? != DHT_STREAM_TAG {
        return Err(invalid("DHT stream tag", "not 0x10"));
    }
    unframe_response(r.take_rest())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(n: u8, body_len: usize) -> SignedDescriptor {
        SignedDescriptor {
            body: vec![n; body_len],
            signature: [n; 64],
        }
    }

    fn record(n: u8, len: usize) -> Record {
        Record {
            kind: RecordKind::RelayDescriptor,
            body: vec![n; len],
        }
    }

    fn samples() -> Vec<DhtMessage> {
        vec![
            DhtMessage::Ping { txid: 1 },
            DhtMessage::Pong { txid: u64::MAX },
            DhtMessage::FindNode {
                txid: 3,
                target: [0xab; 32],
            },
            DhtMessage::Nodes {
                txid: 4,
                nodes: vec![],
            },
            DhtMessage::Nodes {
                txid: 4,
                nodes: (0..20).map(|i| signed(i, 100 + usize::from(i))).collect(),
            },
            DhtMessage::FindValue {
                txid: 5,
                key: [7; 32],
            },
            DhtMessage::Value {
                txid: 6,
                records: vec![record(1, 0), record(2, 300)],
                nodes: vec![signed(9, 103)],
            },
            DhtMessage::Value {
                txid: 6,
                records: vec![],
                nodes: vec![],
            },
            DhtMessage::Store {
                txid: 7,
                key: [8; 32],
                record: record(3, 200),
            },
            DhtMessage::Stored {
                txid: 8,
                status: StoreStatus::Stored,
            },
            DhtMessage::Stored {
                txid: 8,
                status: StoreStatus::Rejected(REJECT_STALE),
            },
            DhtMessage::Stored {
                txid: 8,
                status: StoreStatus::RateLimited,
            },
            DhtMessage::Stored {
                txid: 8,
                status: StoreStatus::Full,
            },
            DhtMessage::Announce {
                txid: 9,
                descriptor: signed(5, 103),
            },
        ]
    }

    #[test]
    fn every_dht_message_round_trips_with_and_without_framing() {
        for m in samples() {
            let bytes = m.encode().unwrap();
            assert_eq!(DhtMessage::decode(&bytes).unwrap(), m);
            assert_eq!(unframe_request(&frame_request(&m).unwrap()).unwrap(), m);
            assert_eq!(unframe_response(&frame_response(&m).unwrap()).unwrap(), m);
            let framed = frame_request(&m).unwrap();
            assert_eq!(framed[0], DHT_STREAM_TAG);
            assert_eq!(
                frame_len(framed[1..5].try_into().unwrap()).unwrap(),
                bytes.len()
            );
        }
    }

    #[test]
    fn truncated_dht_messages_are_refused_at_every_length() {
        for m in samples() {
            let bytes = m.encode().unwrap();
            for n in 0..bytes.len() {
                assert!(DhtMessage::decode(&bytes[..n]).is_err(), "{m:?} cut at {n}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(DhtMessage::decode(&long), Err(WireError::Trailing(1)));
            let framed = frame_response(&m).unwrap();
            for n in 0..framed.len() {
                assert!(unframe_response(&framed[..n]).is_err());
            }
        }
    }

    #[test]
    fn oversized_counts_and_lengths_are_refused() {
        // Encoders refuse too many contacts or records, and long record bodies.
        let too_many_nodes = DhtMessage::Nodes {
            txid: 1,
            nodes: (0..21).map(|i| signed(i, 10)).collect(),
        };
        assert!(too_many_nodes.encode().is_err());
        let too_many_records = DhtMessage::Value {
            txid: 1,
            records: (0..9).map(|i| record(i, 1)).collect(),
            nodes: vec![],
        };
        assert!(too_many_records.encode().is_err());
        let long_record = DhtMessage::Store {
            txid: 1,
            key: [0; 32],
            record: record(1, MAX_RECORD_LEN + 1),
        };
        assert!(long_record.encode().is_err());

        // Decoders refuse the same counts written by hand.
        let mut nodes = vec![msg_type::NODES];
        nodes.extend_from_slice(&1u64.to_be_bytes());
        nodes.push(21);
        assert!(matches!(
            DhtMessage::decode(&nodes),
            Err(WireError::Invalid { .. })
        ));
        let mut value = vec![msg_type::VALUE];
        value.extend_from_slice(&1u64.to_be_bytes());
        value.push(9);
        assert!(matches!(
            DhtMessage::decode(&value),
            Err(WireError::Invalid { .. })
        ));
        let mut store = vec![msg_type::STORE];
        store.extend_from_slice(&1u64.to_be_bytes());
        store.extend_from_slice(&[0; 32]);
        store.push(1);
        store.extend_from_slice(&(MAX_RECORD_LEN as u16 + 1).to_be_bytes());
        store.resize(store.len() + MAX_RECORD_LEN + 1, 0);
        assert!(matches!(
            DhtMessage::decode(&store),
            Err(WireError::Invalid { .. })
        ));
        let mut announce = vec![msg_type::ANNOUNCE];
        announce.extend_from_slice(&1u64.to_be_bytes());
        announce.extend_from_slice(&1025u16.to_be_bytes());
        announce.resize(announce.len() + 1025 + 64, 0);
        assert!(DhtMessage::decode(&announce).is_err());

        // Whole messages and frames over 64 KiB.
        assert!(DhtMessage::decode(&vec![msg_type::PING; MAX_MESSAGE_LEN + 1]).is_err());
        assert!(frame_len((MAX_MESSAGE_LEN as u32 + 1).to_be_bytes()).is_err());
        assert_eq!(
            frame_len((MAX_MESSAGE_LEN as u32).to_be_bytes()),
            Ok(MAX_MESSAGE_LEN)
        );

        // The largest legal VALUE fits in a message.
        let largest = DhtMessage::Value {
            txid: 1,
            records: (0..8).map(|i| record(i, MAX_RECORD_LEN)).collect(),
            nodes: (0..20).map(|i| signed(i, MAX_BODY_LEN)).collect(),
        };
        let bytes = largest.encode().unwrap();
        assert_eq!(bytes.len(), 54_603);
        assert_eq!(DhtMessage::decode(&bytes).unwrap(), largest);
    }

    #[test]
    fn unknown_types_kinds_and_statuses_are_refused() {
        let mut m = DhtMessage::Ping { txid: 1 }.encode().unwrap();
        m[0] = 0x0a;
        assert!(DhtMessage::decode(&m).is_err());
        m[0] = 0;
        assert!(DhtMessage::decode(&m).is_err());
        let mut s = DhtMessage::Store {
            txid: 1,
            key: [0; 32],
            record: record(1, 1),
        }
        .encode()
        .unwrap();
        s[41] = 4; // record kind
        assert!(DhtMessage::decode(&s).is_err());
        let mut st = DhtMessage::Stored {
            txid: 1,
            status: StoreStatus::Full,
        }
        .encode()
        .unwrap();
        st[10] = 7; // reason byte with a non-Rejected status
        assert!(DhtMessage::decode(&st).is_err());
        st[9] = 4; // unknown status
        assert!(DhtMessage::decode(&st).is_err());
        let mut req = frame_request(&DhtMessage::Ping { txid: 1 }).unwrap();
        req[0] = 0x01; // a CREATE cell, not a DHT stream
        assert!(unframe_request(&req).is_err());
    }

    #[test]
    fn hidden_service_and_dark_name_records_round_trip() {
        let hs = HsDescriptor {
            blinded_key: [1; 32],
            period: 2,
            revision: 3,
            expires: 4,
            salt: [5; 16],
            ciphertext: vec![6; crate::hs::HS_CIPHERTEXT_LEN],
            signature: [7; 64],
        };
        let dark = DarkRecord {
            name: "example".into(),
            address: [8; 32],
            owner: [9; 32],
            published: 10,
            expires: 11,
            pow_nonce: 12,
            signature: [13; 64],
            receipts: Vec::new(),
        };
        for (record, kind) in [
            (Record::hs_descriptor(&hs).unwrap(), 2),
            (Record::dark_name(&dark).unwrap(), 3),
        ] {
            assert_eq!(record.kind.to_byte(), kind);
            let m = DhtMessage::Store {
                txid: 1,
                key: [0; 32],
                record: record.clone(),
            };
            assert_eq!(DhtMessage::decode(&m.encode().unwrap()).unwrap(), m);
        }
        assert_eq!(
            HsDescriptor::decode(&Record::hs_descriptor(&hs).unwrap().body).unwrap(),
            hs
        );
        assert_eq!(
            DarkRecord::decode(&Record::dark_name(&dark).unwrap().body).unwrap(),
            dark
        );
        assert_eq!(
            StoreStatus::from_bytes(1, REJECT_TAKEN).unwrap(),
            StoreStatus::Rejected(REJECT_TAKEN)
        );
    }

    #[test]
    fn responses_match_their_requests_by_type_and_txid() {
        let find = DhtMessage::FindNode {
            txid: 42,
            target: [0; 32],
        };
        assert!(find.is_request());
        let nodes = DhtMessage::Nodes {
            txid: 42,
            nodes: vec![],
        };
        assert!(!nodes.is_request());
        assert!(nodes.answers(&find));
        assert!(!DhtMessage::Nodes {
            txid: 43,
            nodes: vec![]
        }
        .answers(&find));
        assert!(!DhtMessage::Pong { txid: 42 }.answers(&find));
        let announce = DhtMessage::Announce {
            txid: 5,
            descriptor: signed(1, 10),
        };
        assert!(DhtMessage::Pong { txid: 5 }.answers(&announce));
    }

    /// The vectors printed in `docs/protocol.md` §11.2.
    #[test]
    fn dht_message_test_vectors() {
        let hex = |m: &DhtMessage| {
            frame_request(m)
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(
            hex(&DhtMessage::Ping {
                txid: 0x0102030405060708
            }),
            "1000000009010102030405060708"
        );
        assert_eq!(
            hex(&DhtMessage::FindNode {
                txid: 0x0102030405060708,
                target: [0x11; 32],
            }),
            format!("1000000029030102030405060708{}", "11".repeat(32))
        );
        assert_eq!(
            frame_response(&DhtMessage::Stored {
                txid: 0x0102030405060708,
                status: StoreStatus::Rejected(REJECT_STALE),
            })
            .unwrap(),
            [0, 0, 0, 11, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
        );
        assert_eq!(
            frame_response(&DhtMessage::Nodes {
                txid: 1,
                nodes: vec![signed(0xaa, 2)],
            })
            .unwrap(),
            [
                &[0, 0, 0, 78, 4, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 2, 0xaa, 0xaa][..],
                &[0xaa; 64][..]
            ]
            .concat()
        );
    }
}
