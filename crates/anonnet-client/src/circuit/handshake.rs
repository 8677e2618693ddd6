//! The client's half of each hop's handshake, of either type (§5.1, §5.4), and the
//! `CREATE` / `EXTEND` messages that carry it (§4.2, §6.2).

use super::*;
use anonnet_wire::{HandshakeSet, HANDSHAKE_NTOR_V1};

/// A circuit handshake (§5, §5.4): as a setting (`client.circuit_handshake`), the one the
/// client prefers; on a circuit, the one run with a hop, chosen per hop from the types the
/// relay advertises ([`HandshakeKind::for_relay`], §9.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HandshakeKind {
    /// X25519 + ML-KEM-768 (type 2, §5.4): secret if either holds. The default, used with
    /// every relay that advertises type 2.
    #[default]
    Hybrid,
    /// X25519 only (type 1, §5.1): as a setting, used with every relay, for measurement
    /// and comparison.
    Classical,
}

impl HandshakeKind {
    /// The name `circuits --json` shows: `"x25519+mlkem768"` or `"x25519"`.
    pub fn name(self) -> &'static str {
        match self {
            HandshakeKind::Hybrid => "x25519+mlkem768",
            HandshakeKind::Classical => "x25519",
        }
    }

    /// The handshake type number of `CREATE` (§4.2): 2 (hybrid) or 1 (classical).
    pub fn type_number(self) -> u16 {
        match self {
            HandshakeKind::Hybrid => HANDSHAKE_HYBRID_V2,
            HandshakeKind::Classical => HANDSHAKE_NTOR_V1,
        }
    }

    /// The types a relay must advertise one of to be usable with this setting (§9.1):
    /// either (hybrid), type 1 (classical).
    pub fn usable(self) -> HandshakeSet {
        match self {
            HandshakeKind::Hybrid => HandshakeSet::ALL,
            HandshakeKind::Classical => HandshakeSet::NTOR,
        }
    }

    /// The handshake to run, with this setting, with a relay that advertises `offered`
    /// (§9.2): hybrid when the setting is hybrid and the relay answers type 2, else
    /// classical when it answers type 1; `None` when it answers neither usable type.
    pub fn for_relay(self, offered: HandshakeSet) -> Option<HandshakeKind> {
        if self == HandshakeKind::Hybrid && offered.contains(HANDSHAKE_HYBRID_V2) {
            Some(HandshakeKind::Hybrid)
        } else if offered.contains(HANDSHAKE_NTOR_V1) {
            Some(HandshakeKind::Classical)
        } else {
            None
        }
    }
}

/// The client's half of one hop's handshake, of either type.
pub(super) enum HopHandshake {
    Classical(ClientHandshake),
    Hybrid(HybridClientHandshake),
}

impl HopHandshake {
    pub(super) fn start(
        kind: HandshakeKind,
        relay: &HopSpec,
    ) -> Result<Self, anonnet_crypto::HandshakeError> {
        Ok(match kind {
            HandshakeKind::Classical => {
                HopHandshake::Classical(ClientHandshake::start(relay.node_id, relay.onion_key)?)
            }
            HandshakeKind::Hybrid => HopHandshake::Hybrid(HybridClientHandshake::start(
                relay.node_id,
                relay.onion_key,
            )?),
        })
    }

    /// The `CREATE` cells for a guard: one cell (type 1) or two (type 2, §4.2).
    pub(super) fn create(&self) -> Result<Vec<u8>, anonnet_wire::WireError> {
        match self {
            HopHandshake::Classical(hs) => {
                let hello = hs.hello();
                Create {
                    cell_len: CELL_LEN as u16,
                    node_id: hello.node_id,
                    onion_key: hello.onion_key,
                    client_pk: hello.client_pk,
                }
                .encode()
            }
            HopHandshake::Hybrid(hs) => CreateHybrid {
                hello: hs.hello_bytes(),
            }
            .encode(),
        }
    }

    /// The relay messages asking the previous hop to extend to `addr`: `EXTEND` (type 1),
    /// or `EXTEND2` and the `HANDSHAKE_CONT`s that carry the rest of the hello (type 2).
    pub(super) fn extend_messages(&self, addr: std::net::SocketAddr) -> Vec<RelayCell> {
        match self {
            HopHandshake::Classical(hs) => {
                let hello = hs.hello();
                vec![RelayCell::new(
                    StreamId::CIRCUIT,
                    RelayMsg::Extend {
                        node_id: hello.node_id,
                        addr,
                        onion_key: hello.onion_key,
                        client_pk: hello.client_pk,
                    },
                )]
            }
            HopHandshake::Hybrid(hs) => {
                let hello = Bytes::from(hs.hello_bytes());
                let (first, rest) = hello.split_at(EXTEND2_FIRST_PART.min(hello.len()));
                let mut out = vec![RelayCell::new(
                    StreamId::CIRCUIT,
                    RelayMsg::Extend2 {
                        addr,
                        handshake_type: HANDSHAKE_HYBRID_V2,
                        part: hello.slice_ref(first),
                    },
                )];
                for chunk in rest.chunks(RelayCell::max_payload(FORWARD_MESSAGE_MAX)) {
                    out.push(RelayCell::new(
                        StreamId::CIRCUIT,
                        RelayMsg::HandshakeCont(hello.slice_ref(chunk)),
                    ));
                }
                out
            }
        }
    }

    /// Finish with the guard's `CREATED` cells; returns the keys and `Y`.
    pub(super) fn finish_created(
        self,
        cells: &[u8],
    ) -> Result<(HopKeys, [u8; 32]), HandshakeFailure> {
        let reply = match &self {
            HopHandshake::Classical(_) => {
                let c = Created::decode(cells).map_err(|_| HandshakeFailure::NoCreated)?;
                let mut bytes = c.server_pk.to_vec();
                bytes.extend_from_slice(&c.auth);
                bytes
            }
            HopHandshake::Hybrid(_) => {
                CreatedHybrid::decode(cells)
                    .map_err(|_| HandshakeFailure::NoCreated)?
                    .reply
            }
        };
        self.finish(&reply)
    }

    /// Finish with the relay's reply bytes (`Y ‖ AUTH` for type 1, `Y ‖ CT ‖ AUTH` for
    /// type 2); returns the keys and `Y`.
    pub(super) fn finish(self, reply: &[u8]) -> Result<(HopKeys, [u8; 32]), HandshakeFailure> {
        let mut y = [0u8; 32];
        y.copy_from_slice(reply.get(..32).ok_or(HandshakeFailure::ShortReply)?);
        let keys = match self {
            HopHandshake::Classical(hs) => {
                let auth: [u8; 32] = reply
                    .get(32..64)
                    .and_then(|a| a.try_into().ok())
                    .ok_or(HandshakeFailure::ShortReply)?;
                hs.finish(&anonnet_crypto::ServerReply { server_pk: y, auth })
            }
            HopHandshake::Hybrid(hs) => hs.finish(reply),
        }?;
        Ok((keys, y))
    }
}

/// Hello bytes in an `EXTEND2` (the rest go in `HANDSHAKE_CONT`s): 700 leaves room for the
/// address (up to 19 bytes) and handshake type within the 802-byte payload (§6.2).
pub(super) const EXTEND2_FIRST_PART: usize = 700;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_setting_runs_hybrid_where_offered_and_classical_elsewhere() {
        let hybrid = HandshakeKind::Hybrid;
        assert_eq!(
            hybrid.for_relay(HandshakeSet::ALL),
            Some(HandshakeKind::Hybrid)
        );
        assert_eq!(
            hybrid.for_relay(HandshakeSet::HYBRID),
            Some(HandshakeKind::Hybrid)
        );
        assert_eq!(
            hybrid.for_relay(HandshakeSet::NTOR),
            Some(HandshakeKind::Classical)
        );
        let classical = HandshakeKind::Classical;
        assert_eq!(
            classical.for_relay(HandshakeSet::ALL),
            Some(HandshakeKind::Classical)
        );
        assert_eq!(
            classical.for_relay(HandshakeSet::NTOR),
            Some(HandshakeKind::Classical)
        );
        // A relay answering type 2 alone is unusable for a classical client, and is left
        // out of its directory.
        assert_eq!(classical.for_relay(HandshakeSet::HYBRID), None);
        assert!(!classical.usable().intersects(HandshakeSet::HYBRID));
        assert!(hybrid.usable().intersects(HandshakeSet::HYBRID));
        assert_eq!(
            (hybrid.type_number(), classical.type_number()),
            (HANDSHAKE_HYBRID_V2, HANDSHAKE_NTOR_V1)
        );
    }
}
