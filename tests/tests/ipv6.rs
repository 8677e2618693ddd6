//! IPv6 destinations end to end (issue 17 item 2), real processes: a page served on
//! `[::1]` reached through the testnet by SOCKS5 (ATYP 4 from a raw client and from
//! `curl --socks5-hostname`, and an IPv6 literal sent as a domain name, bare or in
//! brackets) and by the HTTP proxy (absolute-form `GET` and `CONNECT [::1]:port`); an
//! IPv6 destination the exit policy rejects gets SOCKS reply 2 and HTTP 403.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anonnet_tests::{
    curl_http, curl_socks, serve_files_at, socks_connect_reply, temp_dir, Testnet,
};
use bytes::Bytes;

const PAGE: &[u8] = b"<html><body>hello over IPv6 through anonnet</body></html>\n";

/// Rejected by every exit policy (the default tail rejects unique-local fc00::/7 after the
/// testnet's own rules, which accept 127.0.0.0/8 and [::1]).
const REJECTED_V6: &str = "fd00::1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_destinations_through_socks5_and_the_http_proxy() {
    let server = serve_files_at("[::1]:0", vec![("/".into(), Bytes::from_static(PAGE))]).await;
    let port = server.port();
    let dir = temp_dir("ipv6");
    let path = dir.to_path_buf();
    let mut net = tokio::task::spawn_blocking(move || Testnet::start(3, &path))
        .await
        .unwrap();
    let (socks, http) = (net.socks, net.http);

    // SOCKS5 by hand: ATYP 4 (16 address bytes), then the literal as a domain name (ATYP
    // 3), bare and in brackets: all reach [::1] (reply 0 = succeeded).
    assert_eq!(
        socks_connect_reply(socks, 1, "::1", port).await,
        0,
        "ATYP 4"
    );
    assert_eq!(
        socks_connect_reply(socks, 1, "[::1]", port).await,
        0,
        "ATYP 3 [::1]"
    );
    // A rejected IPv6 destination: reply 2 (connection not allowed by ruleset).
    assert_eq!(socks_connect_reply(socks, 1, REJECTED_V6, 80).await, 2);

    tokio::task::spawn_blocking(move || {
        let url = format!("http://[::1]:{port}/");
        let out = net.dir.join("v6.html");
        let (code, err) = curl_socks(socks, &url, &out);
        assert_eq!(code, 0, "curl --socks5-hostname {url}: {err}");
        assert_eq!(std::fs::read(&out).unwrap(), PAGE);

        // HTTP proxy: absolute-form GET and a CONNECT [::1]:port tunnel.
        for tunnel in [false, true] {
            std::fs::remove_file(&out).ok();
            let r = curl_http(http, &url, tunnel, &out);
            assert_eq!(r.status, 200, "tunnel {tunnel}: {r:?}");
            assert_eq!(std::fs::read(&out).unwrap(), PAGE, "tunnel {tunnel}");
        }
        // The rejected destination: 403, by GET and by CONNECT.
        let rejected = format!("http://[{REJECTED_V6}]/");
        let r = curl_http(http, &rejected, false, &out);
        assert_eq!(r.status, 403, "{r:?}");
        let r = curl_http(http, &rejected, true, &out);
        assert_eq!(r.connect_status, 403, "{r:?}");
        net.stop();
    })
    .await
    .unwrap();
}
