//! The daemon's config loader (`anonnet_daemon::config`, docs in `config/*.toml`): TOML
//! parsing plus every key's validation, for relay, client and testnet files, through
//! `check_text`, which never touches the file system (files a config names count as
//! unreadable).
//!
//! Nothing may panic; every rejection must name the file it is about, as the operator
//! reads it.
#![no_main]

use std::path::Path;

use anonnet_daemon::config::{check_text, ConfigKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/nonexistent/anonnet-fuzz/anonnet.toml");
    for kind in [ConfigKind::Relay, ConfigKind::Client, ConfigKind::Testnet] {
        if let Err(e) = check_text(kind, path, text) {
            let shown = e.to_string();
            assert!(shown.contains("anonnet.toml"), "{kind:?}: {shown}");
        }
    }
});
