//! Directory messages (`docs/protocol.md` §14.2): the bytes inside one directory request
//! or answer frame, read by relays and authorities from any peer and by clients from their
//! directory guard.
//!
//! `DirMessage::decode` must never panic; whatever decodes must re-encode to exactly the
//! input and decode back to itself. The documents a decoded message carries go through
//! the checks their reader makes: `verify_descriptor` for an upload, `verify` against the
//! fixed 3-authority network of `dir_documents` for a consensus or a vote. A message that
//! does not decode is answered as `serve_dir_stream` answers it, with a `REFUSED` naming
//! the error, which must encode and decode (its reason cut to at most 255 bytes).
#![no_main]

use std::sync::OnceLock;

use anonnet_crypto::{verify_descriptor, IdentityKey};
use anonnet_dir::msg::MAX_REASON_LEN;
use anonnet_dir::network::AuthorityEntry;
use anonnet_dir::{DirMessage, Network};
use libfuzzer_sys::fuzz_target;

/// Inside the validity window of the seed consensus (`make_seeds`).
const NOW: u64 = 1_700_000_000;

fn network() -> &'static Network {
    static NET: OnceLock<Network> = OnceLock::new();
    NET.get_or_init(|| {
        let authorities = [1u8, 2, 3]
            .iter()
            .map(|&i| AuthorityEntry {
                name: format!("auth{i}"),
                identity: IdentityKey::from_seed(&[i; 32]).public(),
                address: ([127, 0, 0, 1], 7100 + u16::from(i) - 1).into(),
            })
            .collect();
        Network::new("fuzz".into(), authorities).expect("a valid network")
    })
}

fuzz_target!(|data: &[u8]| {
    match DirMessage::decode(data) {
        Ok(msg) => {
            let again = msg
                .encode()
                .expect("a decoded directory message re-encodes");
            assert_eq!(
                again, data,
                "directory message does not round-trip: {msg:?}"
            );
            assert_eq!(DirMessage::decode(&again).as_ref(), Ok(&msg));
            match &msg {
                DirMessage::Upload(d) => {
                    let _ = verify_descriptor(d, NOW);
                }
                DirMessage::Consensus(Some(c)) => {
                    let _ = c.verify(network(), NOW);
                }
                DirMessage::PostVote(v) | DirMessage::Vote(Some(v)) => {
                    let _ = v.verify(network());
                }
                DirMessage::Uploaded { reason, .. } | DirMessage::Refused(reason) => {
                    assert!(reason.len() <= MAX_REASON_LEN);
                }
                _ => {}
            }
        }
        Err(e) => {
            let reason = format!("malformed request: {e}");
            let answer = DirMessage::Refused(reason.clone())
                .encode()
                .expect("a refusal encodes");
            match DirMessage::decode(&answer) {
                Ok(DirMessage::Refused(r)) => {
                    assert!(r.len() <= MAX_REASON_LEN && reason.starts_with(&r));
                }
                other => panic!("a refusal decodes as {other:?}"),
            }
        }
    }
});
