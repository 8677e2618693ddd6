//! End to end, real processes: at the default log level (`info`) no log file of a testnet
//! names where the user went (issue 16 item 1): after visits to a `.anon` address, a
//! `.dark` name, a plain host and an unresolvable host, through SOCKS5 and the HTTP proxy,
//! none of those names (nor the path asked for) appears in any relay, authority, client or
//! service log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anonnet_tests::{curl_http, curl_socks, log_files, temp_dir, Testnet};

#[test]
fn default_logs_name_no_destination() {
    let dir = temp_dir("log-leaks");
    let mut net = Testnet::start(3, &dir);
    let layout = net.layout();
    let address = layout["service"]["address"].as_str().unwrap().to_owned();
    let name = layout["service"]["name"].as_str().unwrap().to_owned();
    let site = layout["service"]["target"].as_str().unwrap().to_owned();
    let port = site.rsplit(':').next().unwrap().to_owned();
    let secret_path = "leak-check-path-5e1f";
    let bogus_host = "leak-check-host-9c2d.invalid";
    let out = dir.join("body");

    let (code, err) = curl_socks(net.socks, &format!("http://{address}/"), &out);
    assert_eq!(code, 0, ".anon: {err}");
    let (code, err) = curl_socks(net.socks, &format!("http://{name}/"), &out);
    assert_eq!(code, 0, ".dark: {err}");
    let (code, err) = curl_socks(
        net.socks,
        &format!("http://localhost:{port}/{secret_path}"),
        &out,
    );
    assert_eq!(code, 0, "plain host: {err}");
    let (code, _) = curl_socks(net.socks, &format!("http://{bogus_host}/"), &out);
    assert_ne!(code, 0, "an .invalid host cannot resolve");
    let r = curl_http(
        net.http,
        &format!("http://{address}/{secret_path}"),
        false,
        &out,
    );
    assert!(r.exit == 0 && r.status > 0, "HTTP proxy to .anon: {r:?}");
    let r = curl_http(net.http, &format!("http://{bogus_host}/"), true, &out);
    assert!(r.exit != 0 || r.connect_status != 200, "{r:?}");

    net.stop();
    let host = address.trim_end_matches(".anon");
    let forbidden = [
        host,
        name.as_str(),
        name.trim_end_matches(".dark"),
        secret_path,
        bogus_host,
        "localhost",
    ];
    let logs = log_files(&dir);
    assert!(
        logs.len() >= 3 + 3 + 2,
        "expected every process's log: {logs:?}"
    );
    let mut leaks = Vec::new();
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        for (i, line) in text.lines().enumerate() {
            for f in forbidden {
                if line.contains(f) {
                    leaks.push(format!("{}:{}: {f}: {line}", log.display(), i + 1));
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "logs name destinations:\n{}",
        leaks.join("\n")
    );
}
