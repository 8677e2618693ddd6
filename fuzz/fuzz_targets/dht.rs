//! DHT messages (`docs/protocol.md` §11): what a relay reads from any peer that opens a DHT
//! stream, and what a client or relay reads back from the node it asked.
//!
//! `DhtMessage::decode`, `unframe_request`, `unframe_response` and `frame_len` must never
//! panic; whatever decodes must re-encode (and re-frame) to exactly the input. The contacts
//! and records of a decoded message go through `verify_descriptor`, as their reader does.
#![no_main]

use anonnet_crypto::verify_descriptor;
use anonnet_wire::dht::{
    frame_len, frame_request, frame_response, unframe_request, unframe_response, DhtMessage,
    RecordKind, FRAME_LEN_PREFIX,
};
use anonnet_wire::SignedDescriptor;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_700_000_000;

fn check_contents(msg: &DhtMessage) {
    let _ = (msg.txid(), msg.is_request(), msg.answers(msg));
    match msg {
        DhtMessage::Nodes { nodes, .. } => {
            for n in nodes {
                let _ = verify_descriptor(n, NOW);
            }
        }
        DhtMessage::Value { records, nodes, .. } => {
            for r in records {
                if r.kind == RecordKind::RelayDescriptor {
                    if let Ok(signed) = SignedDescriptor::decode(&r.body) {
                        let _ = verify_descriptor(&signed, NOW);
                    }
                }
            }
            for n in nodes {
                let _ = verify_descriptor(n, NOW);
            }
        }
        DhtMessage::Store { record, .. } => {
            if let Ok(signed) = SignedDescriptor::decode(&record.body) {
                let _ = verify_descriptor(&signed, NOW);
            }
        }
        DhtMessage::Announce { descriptor, .. } => {
            let _ = verify_descriptor(descriptor, NOW);
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = DhtMessage::decode(data) {
        let again = msg.encode().expect("a decoded DHT message re-encodes");
        assert_eq!(again, data, "DHT message does not round-trip: {msg:?}");
        check_contents(&msg);
    }
    if let Ok(msg) = unframe_request(data) {
        assert_eq!(frame_request(&msg).expect("re-frames"), data);
    }
    if let Ok(msg) = unframe_response(data) {
        assert_eq!(frame_response(&msg).expect("re-frames"), data);
    }
    if let Some(prefix) = data.first_chunk::<FRAME_LEN_PREFIX>() {
        let _ = frame_len(*prefix);
    }
});
