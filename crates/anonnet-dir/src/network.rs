//! The network: its directory authorities (`docs/protocol.md` §14.1).

use std::net::SocketAddr;

use anonnet_crypto::NodeId;

/// One directory authority: a name for people, an Ed25519 identity key (32 bytes) whose
/// NodeId its QUIC certificate proves, and the UDP address it listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityEntry {
    /// Short name (for logs and `status`), not signed into anything.
    pub name: String,
    /// Ed25519 identity public key.
    pub identity: [u8; 32],
    /// QUIC address.
    pub address: SocketAddr,
}

impl AuthorityEntry {
    /// The authority's NodeId, `BLAKE3(identity)`.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_identity(&self.identity)
    }
}

/// A network: the set of authorities whose majority signs the one consensus (§14.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The network's name (part of its id).
    pub name: String,
    /// The authorities, 1..=[`MAX_AUTHORITIES`], distinct identities.
    pub authorities: Vec<AuthorityEntry>,
}

/// Why [`Network::new`] refused a network description (a config file's `[network]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The name is empty or longer than [`MAX_NAME_LEN`] bytes (its length).
    #[error("a network name has 1 to {MAX_NAME_LEN} bytes, not {0}")]
    NameLength(usize),
    /// Not 1..=[`MAX_AUTHORITIES`] authorities (how many were given).
    #[error("a network has 1 to {MAX_AUTHORITIES} authorities, not {0}")]
    AuthorityCount(usize),
    /// Two authorities share an identity key (the second one's name).
    #[error("authority {0} is listed twice")]
    DuplicateAuthority(String),
}

impl anonnet_error::HasKind for NetworkError {
    /// Always [`anonnet_error::ErrorKind::Config`]: a network comes from configuration.
    fn kind(&self) -> anonnet_error::ErrorKind {
        anonnet_error::ErrorKind::Config
    }
}

/// Most authorities a network may have (one byte counts them in documents).
pub const MAX_AUTHORITIES: usize = 32;
/// Longest network name (bytes).
pub const MAX_NAME_LEN: usize = 255;

impl Network {
    /// A network, checked: a name of 1..=[`MAX_NAME_LEN`] bytes, 1..=[`MAX_AUTHORITIES`]
    /// authorities with distinct identities.
    ///
    /// # Errors
    /// [`NetworkError`] saying what is wrong, for the caller to put in its config error.
    pub fn new(name: String, authorities: Vec<AuthorityEntry>) -> Result<Network, NetworkError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(NetworkError::NameLength(name.len()));
        }
        if authorities.is_empty() || authorities.len() > MAX_AUTHORITIES {
            return Err(NetworkError::AuthorityCount(authorities.len()));
        }
        for (i, a) in authorities.iter().enumerate() {
            if authorities.iter().take(i).any(|b| b.identity == a.identity) {
                return Err(NetworkError::DuplicateAuthority(a.name.clone()));
            }
        }
        Ok(Network { name, authorities })
    }

    /// The network id (32 bytes): `BLAKE3-derive_key("anonnet 2026 network id", name_len
    /// u16 ‖ name ‖ identity [32] × n)` with the identities sorted. Votes and consensuses
    /// carry it, so a document of one network is refused by another.
    pub fn id(&self) -> [u8; 32] {
        let mut ids: Vec<[u8; 32]> = self.authorities.iter().map(|a| a.identity).collect();
        ids.sort_unstable();
        let mut h = blake3::Hasher::new_derive_key("anonnet 2026 network id");
        let name = self.name.as_bytes();
        // `Network::new` bounds the name to 255 bytes, so the length is exact.
        h.update(&(name.len().min(MAX_NAME_LEN) as u16).to_be_bytes());
        h.update(name);
        for id in &ids {
            h.update(id);
        }
        *h.finalize().as_bytes()
    }

    /// Signatures a consensus needs: more than half of the authorities, `n / 2 + 1`.
    pub fn majority(&self) -> usize {
        self.authorities.len() / 2 + 1
    }

    /// The authorities whose receipts a `.dark` record of this network needs (§12.5): its
    /// id, every authority's identity key, and [`Network::majority`] of them.
    pub fn name_authorities(&self) -> anonnet_crypto::dark::NameAuthorities {
        anonnet_crypto::dark::NameAuthorities {
            network_id: self.id(),
            identities: self.authorities.iter().map(|a| a.identity).collect(),
            needed: self.majority(),
        }
    }

    /// The authority with this identity key.
    pub fn authority(&self, identity: &[u8; 32]) -> Option<&AuthorityEntry> {
        self.authorities.iter().find(|a| &a.identity == identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(n: u8) -> AuthorityEntry {
        AuthorityEntry {
            name: format!("a{n}"),
            identity: [n; 32],
            address: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[test]
    fn network_id_ignores_authority_order_and_binds_the_name() {
        let a = Network::new("t".into(), vec![auth(1), auth(2)]).unwrap();
        let b = Network::new("t".into(), vec![auth(2), auth(1)]).unwrap();
        let c = Network::new("u".into(), vec![auth(1), auth(2)]).unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn majority_is_more_than_half() {
        let n = |k: u8| Network::new("t".into(), (1..=k).map(auth).collect()).unwrap();
        assert_eq!(n(1).majority(), 1);
        assert_eq!(n(2).majority(), 2);
        assert_eq!(n(3).majority(), 2);
        assert_eq!(n(4).majority(), 3);
        assert_eq!(n(5).majority(), 3);
    }

    #[test]
    fn network_refuses_duplicates_and_empty() {
        assert!(Network::new("t".into(), vec![]).is_err());
        assert!(Network::new("t".into(), vec![auth(1), auth(1)]).is_err());
        assert!(Network::new(String::new(), vec![auth(1)]).is_err());
        assert!(Network::new("x".repeat(256), vec![auth(1)]).is_err());
    }
}
