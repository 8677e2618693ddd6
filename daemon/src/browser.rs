//! `anonnet browser`: start Chromium or Firefox (whichever is installed) in a browser
//! identity of its own — a fresh temporary profile and an isolation key — with every
//! connection going through the running daemon's SOCKS port, names resolved by the exit,
//! WebRTC kept from sending UDP outside the proxy, DNS prefetching and QUIC off, and a
//! window title that says the window is anonymised.
//!
//! Neither browser can send SOCKS5 credentials, and the credentials are what selects an
//! isolation group on the SOCKS port (README, "Isolation"). So the identity's browser
//! talks to an *identity proxy* this command runs on a free loopback port: it answers the
//! browser's credential-less SOCKS5 greeting itself, logs in to the daemon's SOCKS port
//! with the identity's key as username (RFC 1929), and from then on copies bytes both
//! ways untouched — the browser's request (a host name, never resolved here) and the
//! daemon's reply pass through as they are. No daemon change was needed, and two
//! identities never share a circuit with each other or with other programs.
//!
//! An identity lasts while its browser runs. `anonnet browser` while one runs opens a
//! window in it (same profile, same key; its record is `browser.json` in the daemon's
//! state directory); `--new-identity` always starts a new one. When the browser exits, or
//! on Ctrl-C or SIGTERM, the profile directory is deleted.
//!
//! Everything decided here — which browser, its arguments, the profile's files, the
//! identity proxy's bytes — is plain functions with unit tests; [`run`] is the thin shell
//! that binds, spawns and waits.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use fast_socks5::client::{Config as ClientConfig, Socks5Stream};
use fast_socks5::server::{AuthMethodSuccessState as _, NoAuthentication, Socks5ServerProtocol};
use fast_socks5::AuthenticationMethod;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::shutdown::Shutdown;
use crate::{cli, config, print_line, Error};
use anonnet_error::{ErrorKind, HasKind};

/// The window title (Chromium) and window class (Firefox) of an identity's windows.
pub const WINDOW_TITLE: &str = "anonnet: anonymised browsing";

/// The record of the running identity, in the daemon's state directory.
pub const RECORD_FILE: &str = "browser.json";

/// Browsers looked for on `PATH`, in this order, when `--browser` is not given.
const CANDIDATES: &[&str] = &[
    "chromium",
    "chromium-browser",
    "google-chrome-stable",
    "google-chrome",
    "firefox",
    "firefox-esr",
];

/// How long the identity proxy waits for a browser's greeting and the daemon's answers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the browser may take to exit after it was killed.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// `anonnet browser …`.
#[derive(Debug, Clone, Args)]
pub struct BrowserArgs {
    /// The page to open [default: the browser's start page].
    #[arg(value_name = "URL")]
    pub url: Option<String>,
    /// Start a new identity (a new profile and a new isolation key) even when an
    /// identity's browser is already running.
    #[arg(long)]
    pub new_identity: bool,
    /// The browser: a program name on PATH or a path. Its name says whether it is Firefox
    /// (contains "firefox") or of the Chromium family [default: the first found of
    /// chromium, chromium-browser, google-chrome-stable, google-chrome, firefox,
    /// firefox-esr].
    #[arg(long, value_name = "PROGRAM")]
    pub browser: Option<PathBuf>,
    /// The daemon's SOCKS address, IP:PORT [default: the `socks` port in the daemon's
    /// state directory's ports.json].
    #[arg(long, value_name = "ADDR")]
    pub socks: Option<SocketAddr>,
    /// Client config file of the daemon [default: the OS config directory's
    /// anonnet/client.toml, as for `anonnet run`].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run the browser without a window (for tests).
    #[arg(long, hide = true)]
    pub headless: bool,
    /// More arguments for the browser, after `--`, passed as they are.
    #[arg(last = true, value_name = "BROWSER_ARGS")]
    pub browser_args: Vec<String>,
}

/// The two families of browsers, whose settings differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrowserKind {
    /// Chromium, Google Chrome and other Chromium builds: command-line switches and a
    /// `Default/Preferences` file.
    Chromium,
    /// Firefox and Firefox ESR: a `user.js` in the profile.
    Firefox,
}

impl BrowserKind {
    /// The family of `program`, from its file name.
    pub fn of(program: &Path) -> BrowserKind {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.contains("firefox") {
            BrowserKind::Firefox
        } else {
            BrowserKind::Chromium
        }
    }
}

/// The running identity, as `browser.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// The browser program.
    pub program: PathBuf,
    /// Its family.
    pub kind: BrowserKind,
    /// The identity's temporary profile directory.
    pub profile: PathBuf,
    /// The identity proxy's address (loopback).
    pub proxy: SocketAddr,
}

/// The first of `names` that is an executable file in one of `path`'s directories (the
/// value of `PATH`).
pub fn find_in_path(names: &[&str], path: &std::ffi::OsStr) -> Option<PathBuf> {
    names.iter().find_map(|name| {
        std::env::split_paths(path)
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    })
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

/// The program to start: `chosen` (a path, or a name looked up on `path`), else the first
/// of [`CANDIDATES`] found on `path`.
///
/// # Errors
/// A message for the user when nothing usable is found.
pub fn choose_browser(chosen: Option<&Path>, path: &std::ffi::OsStr) -> Result<PathBuf, String> {
    match chosen {
        Some(p) if p.components().count() > 1 => {
            if is_executable(p) {
                Ok(p.to_path_buf())
            } else {
                Err(format!("--browser {}: not an executable file", p.display()))
            }
        }
        Some(name) => {
            let name = name.to_string_lossy();
            find_in_path(&[name.as_ref()], path)
                .ok_or_else(|| format!("--browser {name}: not found on PATH"))
        }
        None => find_in_path(CANDIDATES, path).ok_or_else(|| {
            "no Chromium or Firefox found on PATH (looked for chromium, chromium-browser, \
             google-chrome-stable, google-chrome, firefox, firefox-esr): install one \
             (Debian: apt-get install chromium) or pass --browser PROGRAM"
                .to_owned()
        }),
    }
}

/// Chromium's command line for an identity whose profile is `profile` and whose proxy is
/// `proxy`.
///
/// - `--proxy-server=socks5://…`: every connection through the proxy; Chromium sends
///   host names through SOCKS5 unresolved. `--proxy-bypass-list=<-loopback>` proxies
///   loopback too, so a web page cannot reach this machine's local servers directly.
/// - `--host-resolver-rules`: any name Chromium would still resolve itself (prefetching,
///   anything outside the proxy) resolves to nothing.
/// - `--webrtc-ip-handling-policy=disable_non_proxied_udp` (also in the Preferences):
///   WebRTC sends no UDP, and so no STUN request outside the proxy.
/// - `--disable-quic`: no HTTP/3 (UDP) at all; `--disable-background-networking`,
///   `--disable-component-update`, `--disable-sync`, `--disable-domain-reliability`:
///   nothing the user did not ask for.
/// - `--window-name`: the window title.
pub fn chromium_args(
    profile: &Path,
    proxy: SocketAddr,
    headless: bool,
    url: Option<&str>,
    extra: &[String],
) -> Vec<OsString> {
    let mut dir = OsString::from("--user-data-dir=");
    dir.push(profile);
    let mut args = vec![dir];
    args.extend(
        [
            format!("--proxy-server=socks5://{proxy}"),
            "--proxy-bypass-list=<-loopback>".to_owned(),
            format!(
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE {}",
                proxy.ip()
            ),
            "--webrtc-ip-handling-policy=disable_non_proxied_udp".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-domain-reliability".to_owned(),
            format!("--window-name={WINDOW_TITLE}"),
        ]
        .map(OsString::from),
    );
    if headless {
        args.extend(["--headless", "--disable-gpu"].map(OsString::from));
    }
    args.extend(extra.iter().map(OsString::from));
    if let Some(url) = url {
        args.push(OsString::from(url));
    }
    args
}

/// Chromium's `Default/Preferences` for a fresh profile: WebRTC only through the proxy
/// (no UDP, one route), no network prediction (DNS prefetch, preconnect), no search
/// suggestions, no Safe Browsing lookups and no alternate error pages.
pub fn chromium_preferences() -> String {
    let prefs = serde_json::json!({
        "webrtc": {
            "ip_handling_policy": "disable_non_proxied_udp",
            "multiple_routes_enabled": false,
            "nonproxied_udp_enabled": false,
        },
        // 2 = NETWORK_PREDICTION_NEVER.
        "net": { "network_prediction_options": 2 },
        "dns_prefetching": { "enabled": false },
        "search": { "suggest_enabled": false },
        "safebrowsing": { "enabled": false },
        "alternate_error_pages": { "enabled": false },
        "browser": { "check_default_browser": false },
    });
    prefs.to_string()
}

/// Firefox's command line: its own profile, never the running default instance's.
pub fn firefox_args(
    profile: &Path,
    headless: bool,
    url: Option<&str>,
    extra: &[String],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--profile".into(), profile.into()];
    args.extend(["--no-remote", "--class", "anonnet-browser"].map(OsString::from));
    if headless {
        args.push("--headless".into());
    }
    args.extend(extra.iter().map(OsString::from));
    if let Some(url) = url {
        args.push("--new-window".into());
        args.push(url.into());
    }
    args
}

/// Firefox's `user.js` for a fresh profile whose proxy is `proxy`.
pub fn firefox_user_js(proxy: SocketAddr) -> String {
    let ip = proxy.ip().to_string();
    let port = proxy.port().to_string();
    let prefs: &[(&str, &str)] = &[
        // Every connection through the SOCKS5 proxy, names resolved by the exit.
        ("network.proxy.type", "1"),
        ("network.proxy.socks", &ip),
        ("network.proxy.socks_port", &port),
        ("network.proxy.socks_version", "5"),
        ("network.proxy.socks_remote_dns", "true"),
        ("network.proxy.socks5_remote_dns", "true"),
        ("network.proxy.no_proxies_on", "\"\""),
        ("network.proxy.allow_hijacking_localhost", "true"),
        ("network.proxy.failover_direct", "false"),
        ("network.trr.mode", "5"),
        // WebRTC: candidates only through the proxy, so no UDP outside it.
        ("media.peerconnection.ice.proxy_only", "true"),
        (
            "media.peerconnection.ice.proxy_only_if_behind_proxy",
            "true",
        ),
        ("media.peerconnection.ice.default_address_only", "true"),
        ("media.peerconnection.ice.no_host", "true"),
        // No DNS prefetch, link prefetch, speculative connections or HTTP/3 (QUIC).
        ("network.dns.disablePrefetch", "true"),
        ("network.dns.disablePrefetchFromHTTPS", "true"),
        ("network.prefetch-next", "false"),
        ("network.predictor.enabled", "false"),
        ("network.http.speculative-parallel-limit", "0"),
        ("network.http.http3.enable", "false"),
        // Nothing the user did not ask for.
        ("browser.shell.checkDefaultBrowser", "false"),
        ("browser.startup.homepage_override.mstone", "\"ignore\""),
        ("datareporting.policy.dataSubmissionEnabled", "false"),
        ("toolkit.telemetry.enabled", "false"),
        ("app.normandy.enabled", "false"),
        ("browser.safebrowsing.malware.enabled", "false"),
        ("browser.safebrowsing.phishing.enabled", "false"),
        ("browser.search.suggest.enabled", "false"),
        ("captivedetect.canonicalURL", "\"\""),
        ("network.captive-portal-service.enabled", "false"),
        ("network.connectivity-service.enabled", "false"),
        // A private window: nothing written to the profile for history.
        ("browser.privatebrowsing.autostart", "true"),
    ];
    let mut out = format!("// Written by anonnet browser ({WINDOW_TITLE}); deleted on exit.\n");
    for (name, value) in prefs {
        let value = if *name == "network.proxy.socks" {
            format!("\"{value}\"")
        } else {
            (*value).to_owned()
        };
        out.push_str(&format!("user_pref(\"{name}\", {value});\n"));
    }
    out
}

/// The files a fresh profile gets before the browser starts: (path relative to the
/// profile, contents).
pub fn profile_files(kind: BrowserKind, proxy: SocketAddr) -> Vec<(PathBuf, String)> {
    match kind {
        BrowserKind::Chromium => vec![(
            Path::new("Default").join("Preferences"),
            chromium_preferences(),
        )],
        BrowserKind::Firefox => vec![(PathBuf::from("user.js"), firefox_user_js(proxy))],
    }
}

/// The browser's command line for `kind`.
pub fn browser_args(
    kind: BrowserKind,
    profile: &Path,
    proxy: SocketAddr,
    headless: bool,
    url: Option<&str>,
    extra: &[String],
) -> Vec<OsString> {
    match kind {
        BrowserKind::Chromium => chromium_args(profile, proxy, headless, url, extra),
        BrowserKind::Firefox => firefox_args(profile, headless, url, extra),
    }
}

/// The username/password login (RFC 1929) that carries the identity's `key` to the
/// daemon's SOCKS port as its isolation key (the password is one byte, `x`).
///
/// # Errors
/// A message when `key` is empty or longer than 255 bytes (RFC 1929's `ULEN`).
pub fn login(key: &str) -> Result<AuthenticationMethod, String> {
    if key.is_empty() || key.len() > 255 {
        return Err(format!("an isolation key of {} bytes; 1..=255", key.len()));
    }
    Ok(AuthenticationMethod::Password {
        username: key.to_owned(),
        password: "x".to_owned(),
    })
}

/// A new isolation key: `browser-` and 32 random hex digits.
pub fn new_isolation_key() -> String {
    let bytes: [u8; 16] = rand::random();
    format!("browser-{}", hex::encode(bytes))
}

/// Serve the identity proxy on `listener` until the task is dropped: each connection is
/// logged in to `upstream` with `key`, then spliced.
async fn serve_identity_proxy(listener: TcpListener, upstream: SocketAddr, key: String) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("identity proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let key = key.clone();
        tokio::spawn(async move {
            if let Err(e) = splice_one(tcp, upstream, &key).await {
                debug!("identity proxy: connection ended: {e}");
            }
        });
    }
}

/// One browser connection: log in to the daemon's SOCKS port with the identity's key,
/// accept the browser's greeting (no authentication: browsers do not send SOCKS5
/// credentials), then copy bytes both ways, so the browser's request and the daemon's reply
/// pass through unchanged. Both greetings go through fast-socks5. The daemon prefers
/// username/password when offered (anonnet-proxy lists it first), so the key is always
/// used; `tests/tests/browser.rs` would see two identities share a circuit otherwise.
///
/// # Errors
/// A description of the step that failed; the browser's connection is closed.
async fn splice_one(browser: TcpStream, upstream: SocketAddr, key: &str) -> Result<(), String> {
    let _ = browser.set_nodelay(true);
    let handshake = async {
        let daemon = TcpStream::connect(upstream)
            .await
            .map_err(|e| format!("the daemon's SOCKS port {upstream}: {e}"))?;
        let _ = daemon.set_nodelay(true);
        let daemon = Socks5Stream::use_stream(daemon, Some(login(key)?), ClientConfig::default())
            .await
            .map_err(|e| format!("logging in to the daemon's SOCKS port {upstream}: {e}"))?
            .get_socket();
        let browser = Socks5ServerProtocol::start(browser)
            .negotiate_auth(&[NoAuthentication])
            .await
            .map_err(|e| format!("the browser's greeting: {e}"))?
            .into_inner();
        Ok::<_, String>((browser, daemon))
    };
    let (mut browser, mut daemon) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| "handshake timed out".to_string())??;
    tokio::io::copy_bidirectional(&mut browser, &mut daemon)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A temporary profile directory (mode 0700), deleted when dropped.
struct Profile(PathBuf);

impl Profile {
    /// Create `anonnet-browser-<random>` under the OS temp directory (tempfile: a new
    /// name, mode 0700 on Unix); deleted by [`Profile`]'s `Drop`, which waits for the
    /// browser's helper processes.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be created.
    fn create() -> Result<Profile, Error> {
        let dir = tempfile::Builder::new()
            .prefix("anonnet-browser-")
            .tempdir()
            .map_err(Error::io(
                "creating the browser profile in the temp directory",
            ))?;
        Ok(Profile(dir.keep()))
    }

    /// Write `files` (relative paths) into the profile.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    fn write(&self, files: &[(PathBuf, String)]) -> Result<(), Error> {
        for (rel, body) in files {
            let path = self.0.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(Error::io(format!("creating {}", parent.display())))?;
            }
            std::fs::write(&path, body)
                .map_err(Error::io(format!("writing {}", path.display())))?;
        }
        Ok(())
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        // A browser's helper processes may still write for a moment after it exits.
        for _ in 0..20 {
            match std::fs::remove_dir_all(&self.0) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        warn!("cannot delete the browser profile {}", self.0.display());
    }
}

/// `browser.json` in the state directory while this identity is the current one; removed
/// when dropped if it still names this identity.
struct RecordFile {
    path: PathBuf,
    record: IdentityRecord,
}

impl RecordFile {
    fn write(state_dir: &Path, record: IdentityRecord) -> Option<RecordFile> {
        let path = state_dir.join(RECORD_FILE);
        let body = match serde_json::to_string_pretty(&record) {
            Ok(b) => b + "\n",
            Err(_) => return None,
        };
        match anonnet_state::write_atomically(&path, body.as_bytes()) {
            Ok(()) => Some(RecordFile { path, record }),
            Err(e) => {
                warn!(
                    "cannot save {}: {e}; `anonnet browser` will start a new identity each time",
                    path.display()
                );
                None
            }
        }
    }
}

impl Drop for RecordFile {
    fn drop(&mut self) {
        if read_record(&self.path).as_ref() == Some(&self.record) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn read_record(path: &Path) -> Option<IdentityRecord> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The running identity of the daemon whose state directory is `state_dir`: its record,
/// when the identity proxy still answers and the profile still exists.
async fn running_identity(state_dir: &Path) -> Option<IdentityRecord> {
    let record = read_record(&state_dir.join(RECORD_FILE))?;
    let alive = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(record.proxy))
        .await
        .is_ok_and(|r| r.is_ok());
    (alive && record.profile.is_dir()).then_some(record)
}

/// Run `anonnet browser`. `global_config` is a `--config` given before the subcommand.
///
/// # Errors
/// [`Error::Failed`] with one line: no browser found, the daemon is not running, the
/// browser could not be started; [`Error::Io`] when the profile cannot be written.
pub async fn run(args: BrowserArgs, global_config: Option<PathBuf>) -> Result<(), Error> {
    let mut shutdown = Shutdown::new(false).map_err(Error::io("signal handlers"))?;
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let chosen = choose_browser(args.browser.as_deref(), &path_var)
        .map_err(|e| Error::failed(ErrorKind::NotFound, e))?;
    let config_file = args.config.clone().or(global_config);
    let state_dir: Option<PathBuf> = match (&args.socks, &config_file) {
        (Some(_), None) => None,
        _ => {
            let path = cli::client_config_path(config_file)?;
            Some(config::client_state_dir(&path)?.components().collect())
        }
    };
    let socks = match (args.socks, &state_dir) {
        (Some(a), _) => a,
        (None, None) => {
            return Err(Error::failed(
                ErrorKind::BadRequest,
                "no SOCKS address: pass --socks ADDR or --config FILE",
            ))
        }
        (None, Some(dir)) => cli::running_socks_port(dir)?,
    };

    if !args.new_identity {
        if let Some(dir) = &state_dir {
            if let Some(record) = running_identity(dir).await {
                return open_in_running(&record, &args).await;
            }
        }
    }

    let program = chosen;
    let kind = BrowserKind::of(&program);
    let key = new_isolation_key();
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(Error::io("binding the identity proxy on 127.0.0.1"))?;
    let proxy = listener
        .local_addr()
        .map_err(Error::io("the identity proxy's address"))?;
    let serving = tokio::spawn(serve_identity_proxy(listener, socks, key));
    let _stop_serving = AbortOnDrop(serving);

    let profile = Profile::create()?;
    profile.write(&profile_files(kind, proxy))?;
    let argv = browser_args(
        kind,
        &profile.0,
        proxy,
        args.headless,
        args.url.as_deref(),
        &args.browser_args,
    );
    let mut child = tokio::process::Command::new(&program)
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Error::failed(
                HasKind::kind(&e),
                format!("cannot start {}: {e}", program.display()),
            )
        })?;
    let _record = state_dir.as_deref().and_then(|dir| {
        RecordFile::write(
            dir,
            IdentityRecord {
                program: program.clone(),
                kind,
                profile: profile.0.clone(),
                proxy,
            },
        )
    });
    info!(browser = %program.display(), "anonymised browser started");
    print_line(&format!(
        "BROWSER started {} profile {} proxy {proxy} (through {socks})",
        program.display(),
        profile.0.display()
    ))?;
    let status = tokio::select! {
        status = child.wait() => status.map_err(Error::io("waiting for the browser"))?,
        why = shutdown.wait() => {
            info!("{why}: closing the browser");
            let _ = child.start_kill();
            match tokio::time::timeout(EXIT_WAIT, child.wait()).await {
                Ok(Ok(s)) => s,
                _ => {
                    warn!("the browser did not exit in {EXIT_WAIT:?}");
                    return Ok(());
                }
            }
        }
    };
    info!(%status, "browser exited; deleting its profile");
    Ok(())
}

/// Open `args.url` (or a new window) in the running identity's browser: the same program,
/// profile and proxy, so a Chromium hands it to its running instance; then return.
///
/// # Errors
/// [`Error::Failed`] when the browser cannot be started.
async fn open_in_running(record: &IdentityRecord, args: &BrowserArgs) -> Result<(), Error> {
    let mut argv = browser_args(
        record.kind,
        &record.profile,
        record.proxy,
        args.headless,
        args.url.as_deref(),
        &args.browser_args,
    );
    if record.kind == BrowserKind::Firefox {
        // Hand the URL to the running instance instead of refusing the profile in use.
        argv.retain(|a| a != "--no-remote");
    }
    let status = tokio::process::Command::new(&record.program)
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| {
            Error::failed(
                HasKind::kind(&e),
                format!("cannot start {}: {e}", record.program.display()),
            )
        })?;
    print_line(&format!(
        "BROWSER opened in the running identity: profile {} ({status}); \
         `anonnet browser --new-identity` starts a new one",
        record.profile.display()
    ))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use fast_socks5::server::{StandardAuthentication, StandardAuthenticationStarted};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn chromium_goes_through_the_identity_proxy_with_webrtc_and_quic_off() {
        let proxy: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let args = strings(&chromium_args(
            Path::new("/tmp/p"),
            proxy,
            false,
            Some("http://example.com/"),
            &["--no-sandbox".into()],
        ));
        for want in [
            "--user-data-dir=/tmp/p",
            "--proxy-server=socks5://127.0.0.1:4242",
            "--proxy-bypass-list=<-loopback>",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--webrtc-ip-handling-policy=disable_non_proxied_udp",
            "--disable-quic",
            "--disable-background-networking",
            "--window-name=anonnet: anonymised browsing",
            "--no-sandbox",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing: {args:?}");
        }
        assert_eq!(
            args.last().unwrap(),
            "http://example.com/",
            "the URL comes last"
        );
        assert!(!args.iter().any(|a| a == "--headless"));
        let headless = strings(&chromium_args(Path::new("/p"), proxy, true, None, &[]));
        assert!(headless.iter().any(|a| a == "--headless"));
    }

    #[test]
    fn chromium_preferences_keep_webrtc_to_the_proxy_and_prediction_off() {
        let prefs: serde_json::Value = serde_json::from_str(&chromium_preferences()).unwrap();
        assert_eq!(
            prefs["webrtc"]["ip_handling_policy"],
            "disable_non_proxied_udp"
        );
        assert_eq!(prefs["webrtc"]["nonproxied_udp_enabled"], false);
        assert_eq!(prefs["net"]["network_prediction_options"], 2);
        let files = profile_files(BrowserKind::Chromium, "127.0.0.1:1".parse().unwrap());
        assert_eq!(files[0].0, Path::new("Default").join("Preferences"));
    }

    #[test]
    fn firefox_user_js_sets_remote_dns_webrtc_proxy_only_and_no_prefetch_or_http3() {
        let js = firefox_user_js("127.0.0.1:4242".parse().unwrap());
        for want in [
            "user_pref(\"network.proxy.type\", 1);",
            "user_pref(\"network.proxy.socks\", \"127.0.0.1\");",
            "user_pref(\"network.proxy.socks_port\", 4242);",
            "user_pref(\"network.proxy.socks_remote_dns\", true);",
            "user_pref(\"media.peerconnection.ice.proxy_only\", true);",
            "user_pref(\"network.dns.disablePrefetch\", true);",
            "user_pref(\"network.http.http3.enable\", false);",
            "user_pref(\"network.proxy.no_proxies_on\", \"\");",
        ] {
            assert!(js.contains(want), "{want} missing:\n{js}");
        }
        let args = strings(&firefox_args(Path::new("/p"), true, Some("http://x/"), &[]));
        assert_eq!(
            args,
            [
                "--profile",
                "/p",
                "--no-remote",
                "--class",
                "anonnet-browser",
                "--headless",
                "--new-window",
                "http://x/"
            ]
        );
    }

    #[test]
    fn browser_kind_comes_from_the_program_name() {
        assert_eq!(
            BrowserKind::of(Path::new("/usr/bin/firefox-esr")),
            BrowserKind::Firefox
        );
        assert_eq!(
            BrowserKind::of(Path::new("/usr/bin/chromium")),
            BrowserKind::Chromium
        );
        assert_eq!(
            BrowserKind::of(Path::new("google-chrome")),
            BrowserKind::Chromium
        );
    }

    #[cfg(unix)]
    #[test]
    fn browsers_are_found_on_path_in_order_and_missing_ones_are_an_error() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
        assert!(choose_browser(None, &path)
            .unwrap_err()
            .contains("no Chromium or Firefox"));
        let firefox = make("firefox", 0o755);
        make("chromium", 0o644); // not executable: skipped
        assert_eq!(choose_browser(None, &path).unwrap(), firefox);
        let chromium = make("chromium", 0o755);
        assert_eq!(choose_browser(None, &path).unwrap(), chromium);
        assert_eq!(
            choose_browser(Some(Path::new("firefox")), &path).unwrap(),
            firefox
        );
        assert!(choose_browser(Some(Path::new("opera")), &path).is_err());
        assert_eq!(choose_browser(Some(&firefox), &path).unwrap(), firefox);
    }

    #[test]
    fn isolation_keys_are_new_each_time_and_fit_a_login() {
        assert!(login("").is_err());
        assert!(login(&"k".repeat(256)).is_err());
        assert!(login(&"k".repeat(255)).is_ok());
        let (a, b) = (new_isolation_key(), new_isolation_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), "browser-".len() + 32);
        assert!(login(&a).is_ok());
    }

    #[tokio::test]
    async fn identity_proxy_splices_after_logging_in_upstream() {
        // A fake daemon SOCKS port: expects the login with the key.
        let daemon = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = daemon.local_addr().unwrap();
        // It negotiates as the daemon does (anonnet-proxy), then echoes.
        let fake = tokio::spawn(async move {
            let (s, _) = daemon.accept().await.unwrap();
            let started = Socks5ServerProtocol::start(s)
                .negotiate_auth(StandardAuthentication::allow_no_auth(true))
                .await
                .unwrap();
            let StandardAuthenticationStarted::PasswordAuthentication(a) = started else {
                panic!("the identity proxy logged in without its key");
            };
            let (user, pass, a) = a.read_username_password().await.unwrap();
            assert_eq!((user.as_str(), pass.as_str()), ("key1", "x"));
            let mut s = a.accept().await.unwrap().into_inner();
            let mut rest = [0u8; 5];
            s.read_exact(&mut rest).await.unwrap();
            s.write_all(&rest).await.unwrap();
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let _serving = AbortOnDrop(tokio::spawn(serve_identity_proxy(
            listener,
            upstream,
            "key1".into(),
        )));
        let mut b = TcpStream::connect(proxy).await.unwrap();
        b.write_all(&[5, 1, 0]).await.unwrap();
        let mut choice = [0u8; 2];
        b.read_exact(&mut choice).await.unwrap();
        assert_eq!(choice, [5, 0]);
        b.write_all(b"hello").await.unwrap();
        let mut echo = [0u8; 5];
        b.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"hello");
        fake.await.unwrap();
    }
}
