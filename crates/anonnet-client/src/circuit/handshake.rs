//! The client's half of each hop's handshake, of either type (§5.1, §5.4), and the
//! `CREATE` / `EXTEND` messages that carry it (§4.2, §6.2).

use super::*;

/// Which circuit handshake the client runs with each relay (§5, §5.4). Every
/// version-2 relay answers both; the client chooses (`client.circuit_handshake`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HandshakeKind {
    /// X25519 + ML-KEM-768 (type 2, §5.4): secret if either holds. The default.
    #[default]
    Hybrid,
    /// X25519 only (type 1, §5.1): for measurement and comparison.
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
    pub(super) fn finish_created(self, cells: &[u8]) -> Result<(HopKeys, [u8; 32]), String> {
        let reply = match &self {
            HopHandshake::Classical(_) => {
                let c = Created::decode(cells).map_err(|_| "no CREATED".to_string())?;
                let mut bytes = c.server_pk.to_vec();
                bytes.extend_from_slice(&c.auth);
                bytes
            }
            HopHandshake::Hybrid(_) => {
                CreatedHybrid::decode(cells)
                    .map_err(|_| "no CREATED".to_string())?
                    .reply
            }
        };
        self.finish(&reply)
    }

    /// Finish with the relay's reply bytes (`Y ‖ AUTH` for type 1, `Y ‖ CT ‖ AUTH` for
    /// type 2); returns the keys and `Y`.
    pub(super) fn finish(self, reply: &[u8]) -> Result<(HopKeys, [u8; 32]), String> {
        let mut y = [0u8; 32];
        y.copy_from_slice(reply.get(..32).ok_or("short handshake reply")?);
        let keys = match self {
            HopHandshake::Classical(hs) => {
                let auth: [u8; 32] = reply
                    .get(32..64)
                    .and_then(|a| a.try_into().ok())
                    .ok_or("short handshake reply")?;
                hs.finish(&anonnet_crypto::ServerReply { server_pk: y, auth })
            }
            HopHandshake::Hybrid(hs) => hs.finish(reply),
        }
        .map_err(|e| e.to_string())?;
        Ok((keys, y))
    }
}

/// Hello bytes in an `EXTEND2` (the rest go in `HANDSHAKE_CONT`s): 700 leaves room for the
/// address (up to 19 bytes) and handshake type within the 802-byte payload (§6.2).
pub(super) const EXTEND2_FIRST_PART: usize = 700;
