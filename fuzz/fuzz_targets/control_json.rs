//! The control API's JSON types (`anonnet_control::types`) as `serde_json` reads them: the
//! daemon reads request bodies (`ProxyRequest`, `PublishRequest`, `UnpublishRequest`); the
//! CLI and tray read every answer and each line of the event stream. Also the cookie's hex
//! form and the `Authorization: Bearer` check, which see whatever a local process sends.
//!
//! Nothing may panic; whatever parses must serialize and parse back (exactly, for the
//! types without floats).
#![no_main]

use std::fmt::Debug;

use anonnet_control::{
    Ack, Bootstrap, CircuitInfo, Cookie, Counters, ErrorBody, Event, ProxyRequest, PublishRequest,
    ServiceInfo, Status, UnpublishRequest,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Parse; if it parses, serialize and parse again. `exact`: the second parse must equal the
/// first (not asked of types with `f64` fields: serde_json's default float parsing may be
/// one ulp off).
fn check<T>(data: &[u8], exact: bool)
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let Ok(value) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let text = serde_json::to_string(&value).expect("a parsed value serializes");
    let back: T = serde_json::from_str(&text).expect("serialized JSON parses back");
    if exact {
        assert_eq!(back, value, "{text}");
    }
}

fuzz_target!(|data: &[u8]| {
    // Request bodies the daemon parses.
    check::<ProxyRequest>(data, true);
    check::<PublishRequest>(data, true);
    check::<UnpublishRequest>(data, true);
    // Answers and events the CLI and tray parse.
    check::<Status>(data, false);
    check::<CircuitInfo>(data, false);
    check::<Counters>(data, true);
    check::<Bootstrap>(data, true);
    check::<Ack>(data, true);
    check::<ServiceInfo>(data, true);
    check::<Vec<ServiceInfo>>(data, true);
    check::<Vec<CircuitInfo>>(data, false);
    check::<ErrorBody>(data, true);
    check::<Event>(data, false);
    for line in data.split(|&b| b == b'\n').take(16) {
        check::<Event>(line, false);
    }

    // The cookie file and the Authorization header.
    let text = String::from_utf8_lossy(data);
    if let Some(cookie) = Cookie::from_hex(&text) {
        assert!(cookie.matches_header(cookie.bearer().as_bytes()));
    }
    let fixed = Cookie::from_hex(&"ab".repeat(32)).expect("64 hex digits");
    let _ = fixed.matches_header(data);
    let _ = fixed.matches(data);
});
