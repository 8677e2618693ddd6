//! Identity-pinned TLS 1.3 for QUIC links (DESIGN §4 "Links").
//!
//! A node's certificate is self-signed with its Ed25519 identity key. Trust does not come
//! from the certificate's contents (names, dates, issuer are all ignored): the dialer checks
//! that the certificate's key hashes to the NodeId it wanted, and the TLS 1.3
//! CertificateVerify signature proves the peer holds the matching secret key.

use std::sync::{Arc, OnceLock};

use anonnet_crypto::{IdentityKey, NodeId};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::NetError;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The subject name written into our certificates. It is never checked by anyone (pinning
/// is by key) and SNI is off, so it says nothing about the node.
pub(crate) const CERT_NAME: &str = "anonnet.invalid";

/// The key exchange groups every link offers (as a client) and accepts (as a server), in
/// order of preference (`docs/protocol.md` §8.1):
///
/// 1. X25519MLKEM768, the hybrid of X25519 and ML-KEM-768 (draft-ietf-tls-ecdhe-mlkem), so
///    that a link recorded today cannot be decrypted later with a quantum computer. The ring
///    provider has no ML-KEM; this one group comes from rustls' aws-lc-rs provider.
/// 2. X25519, for peers that predate the hybrid group (ring's default provider offers
///    X25519, P-256 and P-384, in that order). A dialer sends key shares for both groups in
///    its first flight (rustls reuses the X25519 half of the hybrid share), so an older
///    relay costs no extra round trip. Between two current nodes the server takes the
///    client's first group it supports, i.e. the hybrid one; an on-path attacker cannot
///    strip it, since the transcript both sides sign and MAC covers the ClientHello.
///
/// P-256 and P-384 are no longer offered: every anonnet node has had X25519.
pub(crate) fn kx_groups() -> Vec<&'static dyn SupportedKxGroup> {
    vec![
        rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
        rustls::crypto::ring::kx_group::X25519,
    ]
}

/// The crypto provider used everywhere in this crate, passed explicitly so that no
/// process-wide default is ever consulted: ring's, except for the key exchange groups
/// ([`kx_groups`]). Cipher suites (QUIC packet protection), signature verification (the
/// Ed25519 CertificateVerify checks of [`PinnedServer`] and [`OptionalEd25519Client`]), key
/// loading and randomness all stay ring's.
///
/// With both of rustls' `ring` and `aws_lc_rs` features on, rustls cannot pick a
/// process-wide provider from its crate features: a config built without an explicit
/// provider (`rustls::ClientConfig::builder()`, quinn's `with_single_cert` and the like)
/// would panic. Always build from this one.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: kx_groups(),
        ..rustls::crypto::ring::default_provider()
    })
}

/// The 32-byte Ed25519 public key inside a DER certificate.
///
/// Errors: `rustls::Error` when the certificate does not parse or its key is not Ed25519.
/// Never panics on peer-controlled input.
pub(crate) fn ed25519_key_of_cert(cert: &CertificateDer<'_>) -> Result<[u8; 32], rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    let spki = parsed.subject_public_key_info();
    spki.as_ref()
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .and_then(|key| <[u8; 32]>::try_from(key).ok())
        .ok_or_else(|| rustls::Error::General("peer certificate key is not Ed25519".into()))
}

/// The identity key of the peer of an established connection, read from the certificate it
/// presented (None when it presented none, e.g. an anonymous client).
pub(crate) fn peer_key_of(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().and_then(|c| ed25519_key_of_cert(c).ok())
}

/// A self-signed certificate over `identity`, with its signing key, ready for rustls.
///
/// Errors: [`NetError::Certificate`] when encoding the key or signing the certificate fails.
pub(crate) fn certified_key(
    identity: &IdentityKey,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, NetError> {
    let pkcs8 = identity
        .signing_key()
        .to_pkcs8_der()
        .map_err(|e| NetError::Certificate {
            step: "PKCS#8 encoding",
            source: Box::new(e),
        })?;
    let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
        .map_err(|e| NetError::Certificate {
            step: "loading the key",
            source: Box::new(e),
        })?;
    let mut params = rcgen::CertificateParams::new(vec![CERT_NAME.to_string()]).map_err(|e| {
        NetError::Certificate {
            step: "certificate parameters",
            source: Box::new(e),
        }
    })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| NetError::Certificate {
            step: "signing",
            source: Box::new(e),
        })?;
    let certified = CertifiedKey::from_der(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(pkcs8),
        provider,
    )
    .map_err(|e| NetError::Certificate {
        step: "rustls accepting the key",
        source: Box::new(e),
    })?;
    Ok(Arc::new(certified))
}

/// Checks a TLS 1.3 CertificateVerify signature: Ed25519 only.
fn verify_ed25519_signature(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoSignatureSchemesInCommon,
        ));
    }
    // Proves the peer holds the secret half of the key we pinned or recorded.
    verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

/// Dialer side: accepts exactly the server whose certificate key hashes to `expected`.
#[derive(Debug)]
pub(crate) struct PinnedServer {
    expected: NodeId,
    provider: Arc<CryptoProvider>,
    /// Set when a certificate was refused: the NodeId it proved, or None when its key was
    /// not Ed25519. Lets `connect` report [`NetError::IdentityMismatch`] precisely.
    refused: OnceLock<Option<NodeId>>,
}

impl PinnedServer {
    pub(crate) fn new(expected: NodeId, provider: Arc<CryptoProvider>) -> Self {
        PinnedServer {
            expected,
            provider,
            refused: OnceLock::new(),
        }
    }

    /// `Some(actual)` when this verifier refused a certificate during the handshake.
    pub(crate) fn refused(&self) -> Option<Option<NodeId>> {
        self.refused.get().copied()
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = match ed25519_key_of_cert(end_entity) {
            Ok(key) => key,
            Err(e) => {
                let _ = self.refused.set(None);
                return Err(e);
            }
        };
        let actual = NodeId::from_identity(&key);
        if actual == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            let _ = self.refused.set(Some(actual));
            Err(rustls::Error::General(format!(
                "relay identity mismatch: expected {}, certificate proves {}",
                self.expected.short(),
                actual.short()
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Relay side: client certificates are offered but optional. Any Ed25519 certificate is
/// accepted (the relay learns who the dialing relay is); anything else is refused. Clients
/// send none and stay anonymous.
#[derive(Debug)]
pub(crate) struct OptionalEd25519Client {
    provider: Arc<CryptoProvider>,
}

impl OptionalEd25519Client {
    pub(crate) fn new(provider: Arc<CryptoProvider>) -> Self {
        OptionalEd25519Client { provider }
    }
}

impl ClientCertVerifier for OptionalEd25519Client {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        ed25519_key_of_cert(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_prefer_the_hybrid_group_and_keep_ring_for_the_rest() {
        use rustls::NamedGroup;

        let ours = provider();
        let groups: Vec<NamedGroup> = ours.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups, [NamedGroup::X25519MLKEM768, NamedGroup::X25519]);
        assert!(ours.kx_groups[0].usable_for_version(rustls::ProtocolVersion::TLSv1_3));

        // Everything but the key exchange is ring's, in ring's order.
        let ring = rustls::crypto::ring::default_provider();
        let suites = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(suites(&ours), suites(&ring));
        let schemes = ours.signature_verification_algorithms.supported_schemes();
        assert_eq!(
            schemes,
            ring.signature_verification_algorithms.supported_schemes()
        );
        assert!(schemes.contains(&SignatureScheme::ED25519));
        assert_eq!(
            format!("{:?}", ours.key_provider),
            format!("{:?}", ring.key_provider)
        );
        assert_eq!(
            format!("{:?}", ours.secure_random),
            format!("{:?}", ring.secure_random)
        );
    }

    #[test]
    fn certificate_carries_the_identity_key() {
        let identity = IdentityKey::generate().unwrap();
        let ck = certified_key(&identity, &provider()).unwrap();
        let key = ed25519_key_of_cert(ck.end_entity_cert().unwrap()).unwrap();
        assert_eq!(key, identity.public());
    }

    #[test]
    fn garbage_certificate_is_an_error_not_a_panic() {
        for bytes in [
            &[][..],
            &[0x30][..],
            &[0x30, 0x03, 0x02, 0x01, 0x00][..],
            &ED25519_SPKI_PREFIX[..],
        ] {
            assert!(ed25519_key_of_cert(&CertificateDer::from(bytes.to_vec())).is_err());
        }
    }

    #[test]
    fn non_ed25519_certificate_is_refused() {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![CERT_NAME.to_string()])
            .unwrap()
            .self_signed(&key_pair)
            .unwrap();
        assert!(ed25519_key_of_cert(cert.der()).is_err());
    }
}
