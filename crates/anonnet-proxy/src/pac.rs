//! Proxy auto-config files (PAC, the `FindProxyForURL` JavaScript browsers evaluate),
//! served by the HTTP proxy for split routing:
//!
//! - `GET /proxy.pac`: every request through anonnet;
//! - `GET /hidden.pac`: only `.anon` and `.dark` hosts through anonnet, everything else
//!   `DIRECT` (the usual way to try a hidden service without anonymising all browsing).
//!
//! Both name the HTTP proxy itself (`PROXY ip:port`, the address the browser fetched the
//! file from), never a SOCKS proxy: with `PROXY` the browser always hands the host name to
//! the proxy, whereas some browsers resolve names locally for a PAC `SOCKS` entry, which
//! would leak every `.anon` lookup to the local resolver. Neither file ever falls back to
//! `DIRECT` for a request it routes through anonnet: when the proxy is down, those requests
//! fail instead of leaving unprotected.

use std::net::SocketAddr;

/// Path of the PAC file that routes everything through anonnet.
pub const ALL_PATH: &str = "/proxy.pac";
/// Path of the PAC file that routes only `.anon` and `.dark` hosts through anonnet.
pub const HIDDEN_PATH: &str = "/hidden.pac";
/// The `Content-Type` browsers expect for a PAC file.
pub const CONTENT_TYPE: &str = "application/x-ns-proxy-autoconfig";

/// Which hosts a PAC file sends through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacMode {
    /// Every host ([`ALL_PATH`]).
    All,
    /// Only `.anon` and `.dark` hosts; others go direct ([`HIDDEN_PATH`]).
    HiddenOnly,
}

impl PacMode {
    /// The mode served at `path` (the request target's path), if any.
    pub fn for_path(path: &str) -> Option<PacMode> {
        match path {
            ALL_PATH => Some(PacMode::All),
            HIDDEN_PATH => Some(PacMode::HiddenOnly),
            _ => None,
        }
    }
}

/// The PAC file for `mode`, naming the HTTP proxy at `proxy` (the local address the
/// browser reached it on; an IPv6 address is written in brackets).
pub fn pac_file(mode: PacMode, proxy: SocketAddr) -> String {
    let directive = format!("PROXY {proxy}");
    match mode {
        PacMode::All => format!(
            "// anonnet: every request through the anonymising proxy. Without the proxy,\n\
             // requests fail; nothing falls back to DIRECT.\n\
             function FindProxyForURL(url, host) {{\n\
             \x20 return \"{directive}\";\n\
             }}\n"
        ),
        PacMode::HiddenOnly => format!(
            "// anonnet: only .anon and .dark hosts through the anonymising proxy; everything\n\
             // else goes DIRECT (not anonymised).\n\
             function FindProxyForURL(url, host) {{\n\
             \x20 host = host.toLowerCase();\n\
             \x20 if (host.charAt(host.length - 1) == \".\") {{\n\
             \x20   host = host.substring(0, host.length - 1);\n\
             \x20 }}\n\
             \x20 if (dnsDomainIs(host, \".anon\") || dnsDomainIs(host, \".dark\")) {{\n\
             \x20   return \"{directive}\";\n\
             \x20 }}\n\
             \x20 return \"DIRECT\";\n\
             }}\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_choose_the_mode_and_files_name_the_proxy() {
        assert_eq!(PacMode::for_path("/proxy.pac"), Some(PacMode::All));
        assert_eq!(PacMode::for_path("/hidden.pac"), Some(PacMode::HiddenOnly));
        assert_eq!(PacMode::for_path("/"), None);
        let v4: SocketAddr = "127.0.0.1:8118".parse().unwrap();
        let all = pac_file(PacMode::All, v4);
        assert!(all.contains("return \"PROXY 127.0.0.1:8118\";"), "{all}");
        assert!(!all.contains("DIRECT\""), "{all}");
        let hidden = pac_file(PacMode::HiddenOnly, "[::1]:8118".parse().unwrap());
        assert!(hidden.contains("\"PROXY [::1]:8118\""), "{hidden}");
        assert!(hidden.contains("return \"DIRECT\";"), "{hidden}");
        assert!(hidden.contains("dnsDomainIs(host, \".dark\")"), "{hidden}");
    }
}
