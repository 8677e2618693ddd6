//! Directory requests and answers over QUIC (`docs/protocol.md` §14.2). One request and its
//! answer travel on one bidirectional stream:
//!
//! - request: `DIR_STREAM_TAG u8 (0x11) ‖ len u32 ‖ message [len]`;
//! - answer: `len u32 ‖ message [len]`,
//!
//! with `len ≤` [`MAX_MESSAGE_LEN`]. A message is `type u8 ‖ fields`:
//!
//! | type | message | fields |
//! | --- | --- | --- |
//! | 0x01 | `UPLOAD` | signed relay descriptor (§3.2 encoding) |
//! | 0x02 | `UPLOADED` | `status u8 ‖ reason_len u8 ‖ reason` |
//! | 0x03 | `GET_CONSENSUS` | — |
//! | 0x04 | `CONSENSUS` | `has u8 (0|1) ‖ signed consensus?` (§14.6) |
//! | 0x05 | `POST_VOTE` | signed vote (§14.5) |
//! | 0x06 | `OK` | — |
//! | 0x07 | `GET_VOTE` | `valid_after u64` |
//! | 0x08 | `VOTE` | `has u8 (0|1) ‖ signed vote?` |
//! | 0x09 | `POST_SIGNATURE` | `digest [32] ‖ authority [32] ‖ signature [64]` |
//! | 0x0a | `REFUSED` | `reason_len u8 ‖ reason` |
//! | 0x0b | `REGISTER_NAME` | a `.dark` record (§12.5) |
//! | 0x0c | `NAME_RECEIPT` | `receipt [80]` (§12.5) |
//!
//! Relays answer `GET_CONSENSUS` from their cache (clients' directory guards);
//! authorities answer every request.

use anonnet_wire::hs::{NameReceipt, MAX_DARK_RECORD_LEN};
use anonnet_wire::{Reader, SignedDescriptor, WireError, Writer};

use crate::document::{ConsensusSignature, SignedConsensus, SignedVote, MAX_CONSENSUS_LEN};
use crate::invalid;

/// First byte of a QUIC stream carrying one directory request (after `CREATE` = 0x01 and
/// the DHT's 0x10).
pub const DIR_STREAM_TAG: u8 = 0x11;
/// Largest message (bytes): a signed consensus of the largest size plus its header.
pub const MAX_MESSAGE_LEN: usize = MAX_CONSENSUS_LEN + 4096;
/// Longest reason string (bytes).
pub const MAX_REASON_LEN: usize = 255;

/// Outcome of an authority's reachability test of an uploaded descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum UploadStatus {
    /// The authority dialled the advertised address and the relay proved its NodeId.
    Reachable = 0,
    /// The dial failed or the certificate did not prove the NodeId.
    NotReachable = 1,
    /// The descriptor itself was refused (bad signature, expired, malformed).
    Rejected = 2,
}

/// A directory message (§14.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirMessage {
    /// A relay uploads its signed descriptor.
    Upload(SignedDescriptor),
    /// The authority's answer to [`DirMessage::Upload`].
    Uploaded {
        /// Reachability outcome.
        status: UploadStatus,
        /// Why, for the relay's log (≤ [`MAX_REASON_LEN`] bytes of UTF-8).
        reason: String,
    },
    /// Ask for the newest consensus the peer holds.
    GetConsensus,
    /// The answer: the signed consensus, or `None` when the peer has none.
    Consensus(Option<SignedConsensus>),
    /// An authority pushes its vote to another.
    PostVote(SignedVote),
    /// Accepted.
    Ok,
    /// Ask an authority for its vote for the period starting at `valid_after`.
    GetVote(u64),
    /// The answer to [`DirMessage::GetVote`].
    Vote(Option<SignedVote>),
    /// An authority pushes its signature on the consensus body with this digest.
    PostSignature {
        /// `BLAKE3(body)` of the consensus signed.
        digest: [u8; 32],
        /// The signature.
        signature: ConsensusSignature,
    },
    /// The request was refused (not an authority, unknown peer, malformed).
    Refused(String),
    /// A relay registers a `.dark` name on a client's behalf (§12.5): the encoded record
    /// (`anonnet_wire::hs::DarkRecord`, at most `MAX_DARK_RECORD_LEN` bytes; its receipts
    /// are ignored).
    RegisterName(Vec<u8>),
    /// The authority's answer to [`DirMessage::RegisterName`] when it registered or
    /// renewed the name for the record's owner.
    NameReceipt(NameReceipt),
}

fn put_reason(w: &mut Writer, reason: &str) {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = reason.as_bytes().get(..end).unwrap_or_default();
    w.put_u8(bytes.len() as u8);
    w.put(bytes);
}

fn take_reason(r: &mut Reader<'_>) -> Result<String, WireError> {
    let n = usize::from(r.take_u8()?);
    String::from_utf8(r.take(n)?.to_vec()).map_err(|_| invalid("reason", "not UTF-8"))
}

impl DirMessage {
    /// Encode.
    ///
    /// # Errors
    /// [`WireError`] when an embedded descriptor cannot be encoded.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::new();
        match self {
            DirMessage::Upload(d) => {
                w.put_u8(0x01);
                w.put(&d.encode()?);
            }
            DirMessage::Uploaded { status, reason } => {
                w.put_u8(0x02);
                w.put_u8(*status as u8);
                put_reason(&mut w, reason);
            }
            DirMessage::GetConsensus => w.put_u8(0x03),
            DirMessage::Consensus(c) => {
                w.put_u8(0x04);
                match c {
                    Some(c) => {
                        w.put_u8(1);
                        w.put(&c.encode());
                    }
                    None => w.put_u8(0),
                }
            }
            DirMessage::PostVote(v) => {
                w.put_u8(0x05);
                w.put(&v.encode());
            }
            DirMessage::Ok => w.put_u8(0x06),
            DirMessage::GetVote(va) => {
                w.put_u8(0x07);
                w.put_u64(*va);
            }
            DirMessage::Vote(v) => {
                w.put_u8(0x08);
                match v {
                    Some(v) => {
                        w.put_u8(1);
                        w.put(&v.encode());
                    }
                    None => w.put_u8(0),
                }
            }
            DirMessage::PostSignature { digest, signature } => {
                w.put_u8(0x09);
                w.put(digest);
                w.put(&signature.authority);
                w.put(&signature.signature);
            }
            DirMessage::Refused(reason) => {
                w.put_u8(0x0a);
                put_reason(&mut w, reason);
            }
            DirMessage::RegisterName(record) => {
                w.put_u8(0x0b);
                w.put(record);
            }
            DirMessage::NameReceipt(receipt) => {
                w.put_u8(0x0c);
                receipt.put(&mut w);
            }
        }
        Ok(w.into_vec())
    }

    /// Decode one message (the bytes inside the frame).
    ///
    /// # Errors
    /// [`WireError`] for an unknown type, truncation, trailing bytes or a malformed field.
    pub fn decode(bytes: &[u8]) -> Result<DirMessage, WireError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(invalid("directory message", "too long"));
        }
        let mut r = Reader::new(bytes);
        let m = match r.take_u8()? {
            0x01 => {
                let d = SignedDescriptor::decode(r.take_rest())?;
                return Ok(DirMessage::Upload(d));
            }
            0x02 => {
                let status = match r.take_u8()? {
                    0 => UploadStatus::Reachable,
                    1 => UploadStatus::NotReachable,
                    2 => UploadStatus::Rejected,
                    _ => return Err(invalid("upload status", "unknown")),
                };
                DirMessage::Uploaded {
                    status,
                    reason: take_reason(&mut r)?,
                }
            }
            0x03 => DirMessage::GetConsensus,
            0x04 => match r.take_u8()? {
                0 => DirMessage::Consensus(None),
                1 => {
                    return Ok(DirMessage::Consensus(Some(SignedConsensus::decode(
                        r.take_rest(),
                    )?)))
                }
                _ => return Err(invalid("has consensus", "not 0 or 1")),
            },
            0x05 => return Ok(DirMessage::PostVote(SignedVote::decode(r.take_rest())?)),
            0x06 => DirMessage::Ok,
            0x07 => DirMessage::GetVote(r.take_u64()?),
            0x08 => match r.take_u8()? {
                0 => DirMessage::Vote(None),
                1 => return Ok(DirMessage::Vote(Some(SignedVote::decode(r.take_rest())?))),
                _ => return Err(invalid("has vote", "not 0 or 1")),
            },
            0x09 => DirMessage::PostSignature {
                digest: r.take_array()?,
                signature: ConsensusSignature {
                    authority: r.take_array()?,
                    signature: r.take_array()?,
                },
            },
            0x0a => DirMessage::Refused(take_reason(&mut r)?),
            0x0b => {
                let record = r.take_rest();
                if record.len() > MAX_DARK_RECORD_LEN {
                    return Err(invalid("name record", "too long"));
                }
                return Ok(DirMessage::RegisterName(record.to_vec()));
            }
            0x0c => DirMessage::NameReceipt(NameReceipt::take(&mut r)?),
            _ => return Err(invalid("directory message type", "unknown")),
        };
        r.finish()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let msgs = vec![
            DirMessage::Uploaded {
                status: UploadStatus::NotReachable,
                reason: "timed out".into(),
            },
            DirMessage::GetConsensus,
            DirMessage::Consensus(None),
            DirMessage::Consensus(Some(SignedConsensus {
                body: vec![1, 2, 3],
                signatures: vec![ConsensusSignature {
                    authority: [1; 32],
                    signature: [2; 64],
                }],
            })),
            DirMessage::Ok,
            DirMessage::GetVote(77),
            DirMessage::Vote(None),
            DirMessage::Vote(Some(SignedVote {
                body: vec![9],
                signature: [3; 64],
            })),
            DirMessage::PostSignature {
                digest: [4; 32],
                signature: ConsensusSignature {
                    authority: [5; 32],
                    signature: [6; 64],
                },
            },
            DirMessage::Refused("no".into()),
            DirMessage::RegisterName(vec![2; 160]),
            DirMessage::NameReceipt(NameReceipt {
                authority: [7; 8],
                expires: 8,
                signature: [9; 64],
            }),
        ];
        for m in msgs {
            let bytes = m.encode().unwrap();
            assert_eq!(DirMessage::decode(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn bad_messages_are_errors() {
        for bad in [
            &[][..],
            &[0xff],
            &[0x02, 9, 0],
            &[0x04, 2],
            &[0x06, 0],
            &[0x0a, 5, b'a'],
            &[0x0c, 1, 2],
        ] {
            assert!(DirMessage::decode(bad).is_err(), "{bad:?}");
        }
        // A long reason is cut at a character boundary.
        let m = DirMessage::Refused("é".repeat(200));
        let DirMessage::Refused(r) = DirMessage::decode(&m.encode().unwrap()).unwrap() else {
            panic!()
        };
        assert!(r.len() <= MAX_REASON_LEN);
    }
}
