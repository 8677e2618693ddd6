//! `anonnet testnet`: a whole network on loopback, each relay and the client a separate
//! process of this same binary, plus the demo site.
//!
//! Layout of the testnet directory:
//! ```text
//! DIR/network.toml           the network: every authority's identity and address
//! DIR/auth-<k>/authority.toml, authority.log, keys, consensus   a directory authority
//! DIR/relay-<i>/relay.toml   generated config (listen 127.0.0.1:0, exit for loopback)
//! DIR/relay-<i>/relay.log    the relay's stderr
//! DIR/relay-<i>/descriptor   its signed descriptor (plus keys and stats.json)
//! DIR/client/client.toml     network = DIR/network.toml, bootstrap = two fallback relays
//! DIR/client/client.log      the client's stderr
//! DIR/client/ports.json      the SOCKS and HTTP addresses actually bound
//! DIR/client/control.cookie  the control API's cookie (and "control" in ports.json)
//! ```
//!
//! With `--metrics`, every authority, relay and the client get `[metrics] listen =
//! "127.0.0.1:0"`; `testnet.json` lists each one's metrics URL and the client's is
//! printed as `Metrics: http://ADDR/metrics`.
//!
//! Children are started with `--exit-with-parent` and a piped stdin, so they exit on their
//! own if this process dies without cleaning up, and with `kill_on_drop` as a backstop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::shutdown::Shutdown;
use crate::site::DemoSite;
use crate::wan::{Host, Wan, WanProfile};
use crate::{create_private_dir, print_line, Error};
use anonnet_daemon::config::{listeners_clash, toml_string};

/// How long all relays together may take to print their ready line.
const RELAY_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client may take to bind SOCKS and HTTP and build its first circuit.
const CLIENT_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait for the service daemon to publish the demo site (descriptor and name).
const SERVICE_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The `.dark` name the testnet registers for its demo site.
pub const DEMO_NAME: &str = "demo";
/// How long children get to exit by themselves once their stdin closes, before SIGKILL.
const GRACEFUL_STOP: Duration = Duration::from_secs(3);
/// How often running children are checked for unexpected exits.
const CHILD_POLL: Duration = Duration::from_millis(500);
/// Lines of a child's log quoted when it fails.
const LOG_TAIL_LINES: usize = 8;
/// The client's (and the testnet's) SOCKS ready line, before the address.
const SOCKS_READY: &str = "SOCKS5 ready on ";
/// The client's (and the testnet's) HTTP proxy ready line, before the address.
const HTTP_READY: &str = "HTTP proxy ready on ";
/// The client's (and the testnet's) consensus line, printed before its proxies are ready.
const CONSENSUS_READY: &str = "consensus ready: ";
/// An authority's ready line: `AUTHORITY ready <node_id> <addr> <identity hex>`.
const AUTHORITY_READY: &str = "AUTHORITY ready ";
/// Default number of directory authorities.
pub const DEFAULT_AUTHORITIES: usize = 3;
/// Most directory authorities in a testnet.
pub const MAX_AUTHORITIES: usize = 9;
/// Default voting period of the testnet's authorities (seconds).
pub const DEFAULT_PERIOD: u64 = 4;

/// The directory side of a testnet.
#[derive(Debug, Clone)]
pub struct NetworkShape {
    /// Directory authority processes (1..=[`MAX_AUTHORITIES`]).
    pub authorities: usize,
    /// `flags.guard_min_known_secs` of the authorities.
    pub guard_after: u64,
    /// `authority.period_secs` of the authorities.
    pub period: u64,
    /// Relays that accept hidden-service descriptors but never serve them (the last
    /// ones), for tests of clients against withholding HSDirs (§12.7).
    pub withholding_hsdirs: usize,
    /// Relays, just before the withholding ones, that keep serving the first revision
    /// of every descriptor.
    pub stale_hsdirs: usize,
    /// The first relays, which claim [`DEMO_NAME`] with back-dated records of their own
    /// (`relay.test_squat_dark_name`), for tests of `.dark` registration (§12.5).
    pub squatting_relays: usize,
    /// `pow_min_effort` of the demo service: the proof-of-work effort it suggests even
    /// when idle (0: the default), for measuring cold connects with effort.
    pub service_pow_effort: u32,
}

impl NetworkShape {
    /// `relay.test_hsdir_behaviour` of relay `i` (1-based) of `relays`.
    fn hsdir_behaviour(&self, i: usize, relays: usize) -> &'static str {
        let withholding_from = relays.saturating_sub(self.withholding_hsdirs) + 1;
        let stale_from = withholding_from.saturating_sub(self.stale_hsdirs);
        if i >= withholding_from {
            "withhold"
        } else if i >= stale_from {
            "stale"
        } else {
            "honest"
        }
    }

    /// `relay.test_squat_dark_name` of relay `i` (1-based): the demo name for the first
    /// [`NetworkShape::squatting_relays`].
    fn squats(&self, i: usize) -> Option<&'static str> {
        (i >= 1 && i <= self.squatting_relays).then_some(DEMO_NAME)
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct TestnetOptions {
    /// Relay processes (at least 3).
    pub relays: usize,
    /// The client's SOCKS5 address (port 0 picks a free port).
    pub socks: SocketAddr,
    /// The client's HTTP proxy address (port 0 picks a free port).
    pub http: SocketAddr,
    /// The directory for everything; `None` creates a fresh one under the OS temp dir.
    pub dir: Option<PathBuf>,
    /// Exit policy lines of every relay (validated).
    pub exit_policy: Vec<String>,
    /// `--log-level` passed on to every child (`error` … `trace`), when given.
    pub log_level: Option<&'static str>,
    /// Authorities and their timing.
    pub shape: NetworkShape,
    /// `client.circuit_handshake` of the client and the hidden-service host: `"hybrid"`
    /// (the default) or `"classical"`.
    pub circuit_handshake: &'static str,
    /// `--metrics`: a Prometheus endpoint on every authority, relay and the client.
    pub metrics: bool,
    /// `--wan PROFILE`: every process in its own network namespace behind an emulated
    /// link (crate::wan), instead of all on 127.0.0.1.
    pub wan: Option<WanOptions>,
    /// `--extra-clients N`: client daemons beside the main one (`client-2` …), each with
    /// its own state, proxies (on loopback, forwarded from its namespace on a WAN) and
    /// namespace; listed in `testnet.json` under `"clients"`, not printed.
    pub extra_clients: usize,
}

/// The emulated WAN of `--wan`.
#[derive(Debug, Clone, Copy)]
pub struct WanOptions {
    /// How the links behave.
    pub profile: WanProfile,
    /// Seed of the per-host delays (`--wan-seed`), so a run can be repeated.
    pub seed: u64,
}

/// The port every authority listens on in its own namespace (a WAN testnet needs no free
/// port search: each host has its own port space).
const WAN_AUTHORITY_PORT: u16 = 7000;
/// The demo site's port in its own namespace.
const WAN_SITE_PORT: u16 = 80;

/// What `--metrics` adds to a generated config: the endpoint on a free loopback port.
const METRICS_SECTION: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// `toml` with the `[metrics]` section when `on`.
fn with_metrics(toml: String, on: bool) -> String {
    if on {
        toml + METRICS_SECTION
    } else {
        toml
    }
}

/// The ready lines to wait for: the metrics line first when metrics are `on`.
fn ready_prefixes<'a>(prefixes: &[&'a str], on: bool) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(prefixes.len() + 1);
    if on {
        out.push(crate::metrics::READY);
    }
    out.extend_from_slice(prefixes);
    out
}

/// The metrics URL among a child's ready lines (JSON null without one).
fn metrics_url(lines: &[String]) -> serde_json::Value {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(crate::metrics::READY))
        .map_or(serde_json::Value::Null, |u| u.trim().into())
}

/// One child process of the testnet.
struct ChildProc {
    name: String,
    /// Its network namespace on a WAN testnet.
    netns: Option<String>,
    log: PathBuf,
    child: Child,
    /// Held open while the child should run: closing it tells the child to exit.
    stdin: Option<ChildStdin>,
    /// Set once the child has exited (and was reported).
    exited: Option<ExitStatus>,
}

impl ChildProc {
    /// The OS process id (0 once it has exited).
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// Everything the testnet started, stopped together.
#[derive(Default)]
struct Testnet {
    children: Vec<ChildProc>,
    site: Option<JoinHandle<()>>,
    /// The emulated WAN (`--wan`), stopped after the children.
    wan: Option<Wan>,
}

impl Testnet {
    /// A namespace of its own for the process `name` when the testnet runs on an emulated
    /// WAN; `None` on loopback.
    async fn place(&mut self, name: &str) -> Result<Option<Host>, Error> {
        match self.wan.as_mut() {
            Some(wan) => wan.add_host(name).await.map(Some),
            None => Ok(None),
        }
    }
}

/// The address a process on `host` listens on: its WAN address, or 127.0.0.1.
fn host_ip(host: Option<&Host>) -> std::net::IpAddr {
    host.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |h| h.addr.into())
}

/// `"netns"` of a process in `testnet.json` (null on loopback).
fn netns_json(host: Option<&Host>) -> serde_json::Value {
    host.map_or(serde_json::Value::Null, |h| h.netns.clone().into())
}

/// A relay's `RELAY ready` line.
#[derive(Debug)]
struct ReadyRelay {
    node_id: String,
    addr: SocketAddr,
    descriptor: PathBuf,
}

/// Start the testnet, print the ready lines, run until a signal, stop every child.
///
/// # Errors
/// [`Error`] when a directory, config or child cannot be set up or a child does not get
/// ready; every child already started is stopped first.
pub async fn run(options: TestnetOptions, shutdown: &mut Shutdown) -> Result<(), Error> {
    let mut net = Testnet::default();
    let started = tokio::select! {
        r = start(&options, &mut net) => r.map(Some),
        why = shutdown.wait() => {
            info!("{why}: stopping the testnet while it was starting");
            Ok(None)
        }
    };
    match started {
        Ok(Some(())) => {
            let why = net.watch(shutdown).await;
            info!("{why}: stopping the testnet");
            net.stop().await;
            Ok(())
        }
        Ok(None) => {
            net.stop().await;
            Ok(())
        }
        Err(e) => {
            net.stop().await;
            Err(e)
        }
    }
}

async fn start(options: &TestnetOptions, net: &mut Testnet) -> Result<(), Error> {
    let dir = match &options.dir {
        Some(d) => {
            create_private_dir(d)?;
            std::path::absolute(d).map_err(Error::io(format!("resolving {}", d.display())))?
        }
        None => fresh_dir()?,
    };
    let hostile = options.shape.withholding_hsdirs
        + options.shape.stale_hsdirs
        + options.shape.squatting_relays;
    if hostile + 3 > options.relays {
        return Err(Error::Testnet(format!(
            "--withholding-hsdirs, --stale-hsdirs and --squatting-relays ask for {hostile} hostile relays of \
             {}: at least 3 must stay honest",
            options.relays
        )));
    }
    // Fail before starting anything when a proxy port is taken, naming the flag to change
    // (the client would name its generated config file instead).
    if listeners_clash(options.socks, options.http) {
        return Err(Error::Testnet(format!(
            "--socks {} and --http {} ask for the same port: give each its own port, or \
             \"auto\"",
            options.socks, options.http
        )));
    }
    for (flag, proto, addr) in [
        ("--socks", "SOCKS5", options.socks),
        ("--http", "the HTTP proxy", options.http),
    ] {
        if addr.port() == 0 {
            continue;
        }
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(Error::Testnet(format!(
                "cannot listen for {proto} on {addr}: {e}. Port {} is taken (another anonnet \
                 or Tor?): pass {flag} auto to pick a free port, or {flag} 127.0.0.1:PORT",
                addr.port()
            )));
        }
    }
    let exe = std::env::current_exe().map_err(Error::io("finding the anonnet executable"))?;
    info!(dir = %dir.display(), relays = options.relays, "starting testnet");
    if let Some(w) = options.wan {
        net.wan = Some(Wan::start(&dir.join("wan"), w.profile, w.seed).await?);
    }

    let (network_file, authorities_info) = start_authorities(&dir, &exe, options, net).await?;

    // Relay-1 founds the DHT, relay-2 joins through it, and the rest start at once and
    // join through those two, the network's bootstrap relays.
    let deadline = Instant::now() + RELAY_READY_TIMEOUT;
    let mut descriptors = Vec::with_capacity(options.relays);
    let mut ready_info = Vec::with_capacity(options.relays);
    let waves: [std::ops::RangeInclusive<usize>; 3] = [1..=1, 2..=2, 3..=options.relays];
    for wave in waves {
        let first_child = net.children.len();
        let bootstrap: Vec<PathBuf> = descriptors.iter().take(2).cloned().collect();
        for i in wave {
            let rdir = dir.join(format!("relay-{i}"));
            create_private_dir(&rdir)?;
            let host = net.place(&format!("relay-{i}")).await?;
            let config = rdir.join("relay.toml");
            write_file(
                &config,
                &with_metrics(
                    relay_toml(
                        i,
                        SocketAddr::new(host_ip(host.as_ref()), 0),
                        &options.exit_policy,
                        &bootstrap,
                        &network_file,
                        options.shape.hsdir_behaviour(i, options.relays),
                        options.shape.squats(i),
                    ),
                    options.metrics,
                ),
            )?;
            let child = spawn(
                &exe,
                host.as_ref(),
                format!("relay-{i}"),
                &["relay", "--config"],
                &config,
                &rdir.join("relay.log"),
                options.log_level,
            )?;
            net.children.push(child);
        }
        for child in net.children.iter_mut().skip(first_child) {
            let lines = read_ready(
                child,
                &ready_prefixes(&["RELAY ready "], options.metrics),
                deadline,
            )
            .await?;
            let line = lines.last().cloned().unwrap_or_default();
            let relay = parse_relay_ready(&line).ok_or_else(|| {
                Error::Testnet(format!(
                    "{} printed a malformed ready line: {line:?}",
                    child.name
                ))
            })?;
            info!(
                relay = %child.name,
                node = %relay.node_id.get(..8).unwrap_or(&relay.node_id),
                addr = %relay.addr,
                "relay ready"
            );
            let i: usize = child
                .name
                .strip_prefix("relay-")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            ready_info.push(serde_json::json!({
                "name": child.name,
                "hsdir_behaviour": options.shape.hsdir_behaviour(i, options.relays),
                "squats": options.shape.squats(i),
                "pid": child.pid(),
                "netns": child.netns.clone(),
                "node_id": relay.node_id,
                "addr": relay.addr.to_string(),
                "descriptor": relay.descriptor.display().to_string(),
                "metrics": metrics_url(&lines),
            }));
            descriptors.push(relay.descriptor);
        }
    }

    let site_host = net.place("site").await?;
    let site = match &site_host {
        None => DemoSite::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(Error::io("binding the demo site on 127.0.0.1"))?,
        Some(h) => {
            let addr = SocketAddr::new(h.addr.into(), WAN_SITE_PORT);
            let listener = anonnet_daemon::netns::in_netns(&h.netns, move || {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .map_err(Error::io(format!(
                "binding the demo site on {addr} in {}",
                h.netns
            )))?;
            DemoSite::from_std(listener)
                .map_err(Error::io(format!("serving the demo site on {addr}")))?
        }
    };
    let site_addr = site.local_addr();
    net.site = Some(tokio::spawn(site.serve()));
    info!(addr = %site_addr, "demo site listening");

    let cdir = dir.join("client");
    create_private_dir(&cdir)?;
    let client_host = net.place("client").await?;
    // On a WAN the proxies listen inside the client's namespace and are forwarded from
    // the addresses asked for.
    let auto = SocketAddr::from(([127, 0, 0, 1], 0));
    let (client_socks, client_http) = if client_host.is_some() {
        (auto, auto)
    } else {
        (options.socks, options.http)
    };
    let same_subnet = options.wan.is_none();
    let config = cdir.join("client.toml");
    // The client knows the authorities (network.toml) and two fallback relays; the
    // consensus gives it the rest.
    let client_bootstrap: Vec<PathBuf> = descriptors.iter().take(2).cloned().collect();
    write_file(
        &config,
        &with_metrics(
            with_handshake(
                &client_toml(
                    client_socks,
                    client_http,
                    &client_bootstrap,
                    &network_file,
                    same_subnet,
                ),
                options.circuit_handshake,
            ),
            options.metrics,
        ),
    )?;
    let client_log = cdir.join("client.log");
    let mut client = spawn(
        &exe,
        client_host.as_ref(),
        "client".into(),
        &["run", "--config"],
        &config,
        &client_log,
        options.log_level,
    )?;
    // Both lines come only once both listeners are served, so nothing is printed here
    // before either proxy works.
    let ready = read_ready(
        &mut client,
        &ready_prefixes(&[CONSENSUS_READY, SOCKS_READY, HTTP_READY], options.metrics),
        Instant::now() + CLIENT_READY_TIMEOUT,
    )
    .await;
    let client_pid = client.pid();
    net.children.push(client);
    // The demo site as a hidden service, hosted by a daemon of its own.
    let sdir = dir.join("service");
    create_private_dir(&sdir)?;
    let service_host = net.place("service").await?;
    let service_config = sdir.join("service.toml");
    let key_file = anonnet_daemon::config::default_service_key(&sdir, site_addr);
    let address = anonnet_client::host::load_or_create_key(&key_file)
        .map_err(|e| Error::Testnet(e.to_string()))?
        .address();
    write_file(
        &service_config,
        &format!(
            "{}
[[service]]
target = {}
port = 80
name = {}
pow_min_effort = {}
",
            with_handshake(
                &client_toml(auto, auto, &client_bootstrap, &network_file, same_subnet),
                options.circuit_handshake,
            )
            .replace(
                "[client]",
                "[client]
control_listen = \"auto\""
            ),
            toml_string(&site_addr.to_string()),
            toml_string(DEMO_NAME),
            options.shape.service_pow_effort,
        ),
    )?;
    let service_log = sdir.join("service.log");
    let mut service = spawn(
        &exe,
        service_host.as_ref(),
        "service".into(),
        &["run", "--config"],
        &service_config,
        &service_log,
        options.log_level,
    )?;
    let service_pid = service.pid();
    let service_ready = read_ready(
        &mut service,
        &[
            CONSENSUS_READY,
            SOCKS_READY,
            HTTP_READY,
            crate::SERVICE_READY,
        ],
        Instant::now() + SERVICE_READY_TIMEOUT,
    )
    .await;
    net.children.push(service);
    let extra_clients =
        start_extra_clients(&dir, &exe, options, net, &client_bootstrap, &network_file).await?;
    // Who is who, for tools and tests: `testnet.json`.
    let layout = serde_json::json!({
        "network": network_file.display().to_string(),
        "authorities": authorities_info,
        "relays": ready_info,
        "bootstrap": client_bootstrap.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
        "wan": net.wan.as_ref().map_or(serde_json::Value::Null, |w| serde_json::json!({
            "profile": w.profile().name(),
            "seed": w.seed(),
            "hosts": w.hosts().iter().map(Host::to_json).collect::<Vec<_>>(),
        })),
        "site": {
            "addr": site_addr.to_string(),
            "netns": netns_json(site_host.as_ref()),
        },
        "client": {
            "pid": client_pid,
            "netns": netns_json(client_host.as_ref()),
            "config": config.display().to_string(),
            "metrics": ready.as_ref().map_or(serde_json::Value::Null, |l| metrics_url(l)),
        },
        "clients": extra_clients,
        "service": {
            "pid": service_pid,
            "netns": netns_json(service_host.as_ref()),
            "config": service_config.display().to_string(),
            "address": address.to_host(),
            "name": format!("{DEMO_NAME}.dark"),
            "target": site_addr.to_string(),
        },
    });
    write_file(&dir.join("testnet.json"), &layout.to_string())?;
    let lines = ready?;
    let mut socks = ready_addr(&lines, SOCKS_READY, "the client")?;
    let mut http = ready_addr(&lines, HTTP_READY, "the client")?;
    service_ready?;
    if let (Some(wan), Some(host)) = (net.wan.as_mut(), client_host.as_ref()) {
        socks = wan.forward(options.socks, host, socks).await?;
        http = wan.forward(options.http, host, http).await?;
    }

    if let Some(line) = lines.iter().find(|l| l.starts_with(CONSENSUS_READY)) {
        print_line(line)?;
    }
    print_line(&format!("{SOCKS_READY}{socks}"))?;
    // On loopback the exits may reach "localhost"; on a WAN the site has its own address.
    let site_url = if site_host.is_some() {
        format!("http://{site_addr}/")
    } else {
        format!("http://localhost:{}/", site_addr.port())
    };
    print_line(&format!("curl --socks5-hostname {socks} {site_url}"))?;
    print_line(&format!("{HTTP_READY}{http}"))?;
    print_line(&format!("curl -x http://{http} {site_url}"))?;
    if let Some(line) = lines.iter().find(|l| l.starts_with(crate::metrics::READY)) {
        // On a WAN the endpoint listens in the client's namespace: forward it too, so the
        // printed URL works from here (the others stay in their namespaces; testnet.json
        // names each one's).
        let forwarded = match (net.wan.as_mut(), client_host.as_ref()) {
            (Some(wan), Some(host)) => {
                let inner = line
                    .strip_prefix(crate::metrics::READY)
                    .and_then(|u| u.trim().strip_prefix("http://"))
                    .and_then(|u| u.split('/').next())
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                match inner {
                    Some(inner) => {
                        let outer = wan.forward(auto, host, inner).await?;
                        Some(format!("{}http://{outer}/metrics", crate::metrics::READY))
                    }
                    None => None,
                }
            }
            _ => None,
        };
        print_line(forwarded.as_deref().unwrap_or(line))?;
    }
    print_line(&format!(
        "Hidden service: http://{address}/ and http://{DEMO_NAME}.dark/ (the demo site)"
    ))?;
    print_line(&format!("curl --socks5-hostname {socks} http://{address}/"))?;
    print_line(&format!(
        "curl --socks5-hostname {socks} http://{DEMO_NAME}.dark/"
    ))?;
    // On a WAN the control API listens inside the client's namespace.
    let in_ns = client_host
        .as_ref()
        .map(|h| format!("ip netns exec {} ", shell_word(&h.netns)))
        .unwrap_or_default();
    print_line(&format!(
        "{in_ns}anonnet --config {} status",
        shell_word(&config.display().to_string())
    ))?;
    print_line(&format!(
        "Logs: {}/relay-*/relay.log, {} and {}. Ctrl-C stops the testnet.",
        dir.display(),
        client_log.display(),
        service_log.display()
    ))?;
    Ok(())
}

/// The address on the ready line of `lines` that starts with `prefix` (`SOCKS5 ready on
/// ADDR`).
///
/// # Errors
/// [`Error::Testnet`] naming `who` when no such line holds an address.
fn ready_addr(lines: &[String], prefix: &str, who: &str) -> Result<SocketAddr, Error> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| Error::Testnet(format!("{who} printed a malformed ready line: {lines:?}")))
}

/// Start `options.extra_clients` more client daemons (`client-2` …), all at once, and wait
/// for each one's ready lines; on a WAN each gets its own namespace and its proxies are
/// forwarded to free loopback ports. Returns their `testnet.json` entries (name, pid,
/// netns, config, socks, http, metrics).
///
/// # Errors
/// [`Error::Testnet`] when one does not start or print its ready lines in time.
async fn start_extra_clients(
    dir: &Path,
    exe: &Path,
    options: &TestnetOptions,
    net: &mut Testnet,
    bootstrap: &[PathBuf],
    network_file: &Path,
) -> Result<Vec<serde_json::Value>, Error> {
    let auto = SocketAddr::from(([127, 0, 0, 1], 0));
    let first = net.children.len();
    let mut placed = Vec::with_capacity(options.extra_clients);
    for i in 2..options.extra_clients + 2 {
        let name = format!("client-{i}");
        let cdir = dir.join(&name);
        create_private_dir(&cdir)?;
        let host = net.place(&name).await?;
        let config = cdir.join("client.toml");
        write_file(
            &config,
            &with_metrics(
                with_handshake(
                    &client_toml(auto, auto, bootstrap, network_file, options.wan.is_none()),
                    options.circuit_handshake,
                ),
                options.metrics,
            ),
        )?;
        let child = spawn(
            exe,
            host.as_ref(),
            name,
            &["run", "--config"],
            &config,
            &cdir.join("client.log"),
            options.log_level,
        )?;
        net.children.push(child);
        placed.push((host, config));
    }
    let deadline = Instant::now() + CLIENT_READY_TIMEOUT;
    let mut out = Vec::with_capacity(placed.len());
    for (k, (host, config)) in placed.into_iter().enumerate() {
        let Some(child) = net.children.get_mut(first + k) else {
            break;
        };
        let lines = read_ready(
            child,
            &ready_prefixes(&[CONSENSUS_READY, SOCKS_READY, HTTP_READY], options.metrics),
            deadline,
        )
        .await?;
        let (name, pid) = (child.name.clone(), child.pid());
        let mut socks = ready_addr(&lines, SOCKS_READY, &name)?;
        let mut http = ready_addr(&lines, HTTP_READY, &name)?;
        if let (Some(wan), Some(h)) = (net.wan.as_mut(), host.as_ref()) {
            socks = wan.forward(auto, h, socks).await?;
            http = wan.forward(auto, h, http).await?;
        }
        out.push(serde_json::json!({
            "name": name,
            "pid": pid,
            "netns": netns_json(host.as_ref()),
            "config": config.display().to_string(),
            "socks": socks.to_string(),
            "http": http.to_string(),
            "metrics": metrics_url(&lines),
        }));
    }
    Ok(out)
}

/// `word` as one POSIX shell word: as is when it is plain, else in single quotes.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,=@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A new, empty directory `anonnet-testnet-XXXXXX` (mode 0700) under the OS temp dir,
/// made by `tempfile` and kept: the testnet's files stay for the person to read.
fn fresh_dir() -> Result<PathBuf, Error> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("anonnet-testnet-");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    builder
        .tempdir()
        .map(tempfile::TempDir::keep)
        .map_err(Error::io(format!(
            "creating a testnet directory in {}",
            std::env::temp_dir().display()
        )))
}

fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(Error::io(format!("writing {}", path.display())))
}

fn relay_toml(
    i: usize,
    listen: SocketAddr,
    exit_policy: &[String],
    dht_bootstrap: &[PathBuf],
    network: &Path,
    hsdir_behaviour: &str,
    squat: Option<&str>,
) -> String {
    let policy: Vec<String> = exit_policy.iter().map(|l| toml_string(l)).collect();
    let bootstrap: Vec<String> = dht_bootstrap
        .iter()
        .map(|d| toml_string(&d.display().to_string()))
        .collect();
    let squat = squat
        .map(|name| format!("test_squat_dark_name = {}\n", toml_string(name)))
        .unwrap_or_default();
    format!(
        "# Generated by `anonnet testnet` for relay-{i}. Paths are relative to this file.\n\
         [relay]\n\
         data_dir = \".\"\n\
         listen = {}\n\
         guard = true\n\
         network = {}\n\
         test_hsdir_behaviour = {}\n\
         {squat}\
         \n\
         [exit]\n\
         enabled = true\n\
         policy = [{}]\n\
         \n\
         [dht]\n\
         bootstrap = [{}]\n",
        toml_string(&listen.to_string()),
        toml_string(&network.display().to_string()),
        toml_string(hsdir_behaviour),
        policy.join(", "),
        bootstrap.join(", ")
    )
}

/// `toml` (a client config) with `client.circuit_handshake` set to `handshake`.
fn with_handshake(toml: &str, handshake: &str) -> String {
    toml.replacen(
        "[client]\n",
        &format!("[client]\ncircuit_handshake = {}\n", toml_string(handshake)),
        1,
    )
}

fn client_toml(
    socks: SocketAddr,
    http: SocketAddr,
    descriptors: &[PathBuf],
    network: &Path,
    same_subnet: bool,
) -> String {
    let same_subnet = if same_subnet {
        "# Every testnet relay is on 127.0.0.1: allow one /16 in a path (test only).\n\
         allow_same_subnet_paths = true\n"
    } else {
        ""
    };
    let bootstrap: Vec<String> = descriptors
        .iter()
        .map(|d| format!("    {},\n", toml_string(&d.display().to_string())))
        .collect();
    format!(
        "# Generated by `anonnet testnet`. Paths are relative to this file.\n\
         [client]\n\
         socks_listen = {}\n\
         http_listen = {}\n\
         state_dir = \".\"\n\
         network = {}\n\
         {same_subnet}\
         bootstrap = [\n{}]\n",
        toml_string(&socks.to_string()),
        toml_string(&http.to_string()),
        toml_string(&network.display().to_string()),
        bootstrap.concat()
    )
}

/// How many times the authorities of a loopback testnet are started, each time on newly
/// drawn ports, when one of them exits with the "local resource" status (71): another
/// process took its port between [`free_udp_port`]'s check and the authority's bind.
const AUTHORITY_START_ATTEMPTS: u32 = 3;

/// A UDP port on 127.0.0.1 for an authority, free when this returns: the network file must
/// name it before the authority starts. It is drawn at random below the kernel's ephemeral
/// range (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default), so that no
/// socket bound to port 0 meanwhile — every relay, client and test of the machine binds
/// that way — can take it. Another process that picks explicit ports still can, in the
/// moment between this check and the authority's bind; [`start_authorities`] then starts
/// the authorities again. Falls back to a port the kernel picks when the range leaves no
/// room below it.
///
/// # Errors
/// [`Error::Io`] when no UDP socket can be bound on 127.0.0.1 at all.
fn free_udp_port() -> Result<u16, Error> {
    /// The lowest port drawn: above the well-known and most registered services' ports.
    const FLOOR: u16 = 10_000;
    let ephemeral_low = ephemeral_low();
    if ephemeral_low > FLOOR + 1_000 {
        for _ in 0..64 {
            let port = rand::random_range(FLOOR..ephemeral_low);
            if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .map_err(Error::io("finding a free UDP port on 127.0.0.1"))?;
    sock.local_addr()
        .map(|a| a.port())
        .map_err(Error::io("reading a UDP socket's port"))
}

/// The lowest port of the kernel's ephemeral range (what a bind to port 0 gets):
/// `/proc/sys/net/ipv4/ip_local_port_range`, or Linux's default 32768 when unreadable.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
}

/// An authority to start: its number, directory, identity key (hex) and WAN host.
struct PlannedAuthority {
    k: usize,
    dir: PathBuf,
    identity: String,
    host: Option<Host>,
}

/// Create the authorities' keys, write `DIR/network.toml` and each `authority.toml`,
/// start the authority processes and wait for their ready lines. Returns the network
/// file and the authorities' entries for `testnet.json`.
///
/// On loopback, an authority that exits with the "local resource" status before it is
/// ready lost its port to another process: every authority of that attempt is stopped and
/// all are started again on new ports, at most [`AUTHORITY_START_ATTEMPTS`] times in all.
async fn start_authorities(
    dir: &Path,
    exe: &Path,
    options: &TestnetOptions,
    net: &mut Testnet,
) -> Result<(PathBuf, Vec<serde_json::Value>), Error> {
    let shape = &options.shape;
    let mut planned = Vec::with_capacity(shape.authorities);
    for k in 1..=shape.authorities {
        let adir = dir.join(format!("auth-{k}"));
        create_private_dir(&adir)?;
        let (identity, _) = anonnet_relay::keystore::load_keys(&adir)
            .map_err(|e| Error::Testnet(format!("authority keys: {e}")))?;
        let host = net.place(&format!("auth-{k}")).await?;
        planned.push(PlannedAuthority {
            k,
            dir: adir,
            identity: hex::encode(identity.public()),
            host,
        });
    }
    let network_file = dir.join("network.toml");
    let local_resource = i32::from(anonnet_error::ErrorKind::LocalResource.exit_code());
    let mut attempt = 1;
    loop {
        let first_child = net.children.len();
        let result = start_authorities_once(&planned, &network_file, exe, options, net).await;
        let lost_port = net.wan.is_none()
            && net.children[first_child..]
                .iter()
                .any(|c| c.exited.and_then(|s| s.code()) == Some(local_resource));
        match result {
            Err(e) if lost_port && attempt < AUTHORITY_START_ATTEMPTS => {
                warn!(
                    attempt,
                    "an authority could not bind its port; starting the authorities again on \
                     other ports: {e}"
                );
                let mut stopped: Vec<ChildProc> = net.children.drain(first_child..).collect();
                stop_children(&mut stopped).await;
                attempt += 1;
            }
            result => return result.map(|info| (network_file, info)),
        }
    }
}

/// One attempt of [`start_authorities`]: draw the loopback ports, write the files, start
/// the authorities (pushed to `net.children`) and wait for their ready lines.
async fn start_authorities_once(
    planned: &[PlannedAuthority],
    network_file: &Path,
    exe: &Path,
    options: &TestnetOptions,
    net: &mut Testnet,
) -> Result<Vec<serde_json::Value>, Error> {
    let mut entries = String::from(
        "# Generated by `anonnet testnet`: the network's directory authorities.\n\
         name = \"testnet\"\n",
    );
    let mut addrs = Vec::with_capacity(planned.len());
    for a in planned {
        let addr = match &a.host {
            Some(h) => SocketAddr::new(h.addr.into(), WAN_AUTHORITY_PORT),
            None => SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)),
        };
        entries.push_str(&format!(
            "\n[[authority]]\nname = \"auth-{}\"\nidentity = \"{}\"\naddress = \"{addr}\"\n",
            a.k, a.identity
        ));
        addrs.push(addr);
    }
    write_file(network_file, &entries)?;
    let first_child = net.children.len();
    for (a, addr) in planned.iter().zip(&addrs) {
        let config = a.dir.join("authority.toml");
        write_file(
            &config,
            &with_metrics(
                authority_toml(*addr, network_file, &options.shape),
                options.metrics,
            ),
        )?;
        let child = spawn(
            exe,
            a.host.as_ref(),
            format!("auth-{}", a.k),
            &["authority", "--config"],
            &config,
            &a.dir.join("authority.log"),
            options.log_level,
        )?;
        net.children.push(child);
    }
    let deadline = Instant::now() + RELAY_READY_TIMEOUT;
    let mut info_out = Vec::with_capacity(planned.len());
    for (child, (a, addr)) in net
        .children
        .iter_mut()
        .skip(first_child)
        .zip(planned.iter().zip(&addrs))
    {
        let lines = read_ready(
            child,
            &ready_prefixes(&[AUTHORITY_READY], options.metrics),
            deadline,
        )
        .await?;
        let line = lines.last().cloned().unwrap_or_default();
        let node_id = line
            .strip_prefix(AUTHORITY_READY)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_default()
            .to_owned();
        info!(authority = %child.name, %addr, "authority ready");
        info_out.push(serde_json::json!({
            "name": child.name,
            "pid": child.pid(),
            "netns": child.netns.clone(),
            "node_id": node_id,
            "addr": addr.to_string(),
            "config": a.dir.join("authority.toml").display().to_string(),
            "metrics": metrics_url(&lines),
        }));
    }
    Ok(info_out)
}

fn authority_toml(listen: SocketAddr, network: &Path, shape: &NetworkShape) -> String {
    format!(
        "# Generated by `anonnet testnet`. Timings in seconds, not the days of a real \
         network,\n# so that flags appear within a minute.\n\
         [authority]\n\
         data_dir = \".\"\n\
         listen = {}\n\
         network = {}\n\
         period_secs = {}\n\
         vote_delay_secs = 1\n\
         measure = true\n\
         measure_bytes = 262144\n\
         measure_interval_secs = 60\n\
         # Every testnet relay is on 127.0.0.1: no per-address limit (test only).\n\
         max_relays_per_ip = 0\n\
         \n\
         [flags]\n\
         stable_mtbf_secs = 0\n\
         guard_min_known_secs = {}\n\
         guard_min_wfu = 0.9\n\
         guard_min_bandwidth = 100000\n\
         hsdir_min_uptime_secs = 0\n\
         half_life_secs = 3600\n",
        toml_string(&listen.to_string()),
        toml_string(&network.display().to_string()),
        shape.period,
        shape.guard_after,
    )
}

/// Start `exe [--log-level L] ARGS CONFIG --exit-with-parent`, stdout piped, stderr to
/// `log`; inside `host`'s namespace when given (`ip netns exec` execs, so the pid is the
/// daemon's).
fn spawn(
    exe: &Path,
    host: Option<&Host>,
    name: String,
    args: &[&str],
    config: &Path,
    log: &Path,
    log_level: Option<&str>,
) -> Result<ChildProc, Error> {
    let stderr =
        std::fs::File::create(log).map_err(Error::io(format!("creating {}", log.display())))?;
    let mut command = match host {
        Some(h) => Wan::command(h, exe),
        None => Command::new(exe),
    };
    if let Some(level) = log_level {
        command.args(["--log-level", level]);
    }
    let mut child = command
        .args(args)
        .arg(config)
        .arg("--exit-with-parent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(Error::io(format!("starting {name} ({})", exe.display())))?;
    debug!(%name, pid = ?child.id(), "started");
    let stdin = child.stdin.take();
    Ok(ChildProc {
        name,
        netns: host.map(|h| h.netns.clone()),
        log: log.to_path_buf(),
        child,
        stdin,
        exited: None,
    })
}

/// Read the child's stdout until it has printed a line starting with each of `prefixes`,
/// in that order, by `deadline`; returns those lines. The rest of its stdout is drained in
/// the background so the child never blocks on a full pipe.
async fn read_ready(
    child: &mut ChildProc,
    prefixes: &[&str],
    deadline: Instant,
) -> Result<Vec<String>, Error> {
    let Some(stdout) = child.child.stdout.take() else {
        return Err(Error::Testnet(format!(
            "{}: stdout is not piped",
            child.name
        )));
    };
    let mut lines = BufReader::new(stdout).lines();
    let mut found = Vec::with_capacity(prefixes.len());
    loop {
        let Some(prefix) = prefixes.get(found.len()) else {
            let name = child.name.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    debug!(child = %name, "stdout: {line}");
                }
            });
            return Ok(found);
        };
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) if line.starts_with(prefix) => found.push(line),
            Ok(Ok(Some(line))) => debug!(child = %child.name, "stdout: {line}"),
            Ok(Ok(None) | Err(_)) => {
                // stdout closed: the child is exiting; give it a moment to be reaped.
                let status = tokio::time::timeout(Duration::from_secs(5), child.child.wait()).await;
                let status = match status {
                    Ok(Ok(s)) => {
                        child.exited = Some(s);
                        s.to_string()
                    }
                    _ => "closed its stdout".to_owned(),
                };
                return Err(Error::Testnet(format!(
                    "{} exited before it was ready ({status}); its log {}:\n{}",
                    child.name,
                    child.log.display(),
                    log_tail(&child.log)
                )));
            }
            Err(_) => {
                return Err(Error::Testnet(format!(
                    "{} did not print \"{}...\" in time; its log {}:\n{}",
                    child.name,
                    prefix.trim(),
                    child.log.display(),
                    log_tail(&child.log)
                )));
            }
        }
    }
}

/// `RELAY ready <node_id_hex> <bound_addr> <descriptor_file_path>`; the path may contain
/// spaces.
fn parse_relay_ready(line: &str) -> Option<ReadyRelay> {
    let rest = line.strip_prefix("RELAY ready ")?;
    let mut parts = rest.splitn(3, ' ');
    let node_id = parts.next()?.to_owned();
    let addr = parts.next()?.parse().ok()?;
    let descriptor = PathBuf::from(parts.next()?);
    Some(ReadyRelay {
        node_id,
        addr,
        descriptor,
    })
}

/// The last lines of a log file, indented, for error messages.
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            let tail: Vec<String> = lines
                .get(start..)
                .unwrap_or_default()
                .iter()
                .map(|l| format!("    {l}"))
                .collect();
            if tail.is_empty() {
                "    (empty)".to_owned()
            } else {
                tail.join("\n")
            }
        }
        Err(e) => format!("    (cannot read: {e})"),
    }
}

impl Testnet {
    /// Run until a signal, reporting children that exit on their own.
    async fn watch(&mut self, shutdown: &mut Shutdown) -> &'static str {
        let mut tick = tokio::time::interval(CHILD_POLL);
        loop {
            tokio::select! {
                why = shutdown.wait() => return why,
                _ = tick.tick() => {
                    for c in &mut self.children {
                        if c.exited.is_some() {
                            continue;
                        }
                        if let Ok(Some(status)) = c.child.try_wait() {
                            c.exited = Some(status);
                            warn!(
                                "{} exited unexpectedly ({status}); its log {}:\n{}",
                                c.name,
                                c.log.display(),
                                log_tail(&c.log)
                            );
                        }
                    }
                }
            }
        }
    }

    /// Stop every child and wait for it: close stdin (they exit by themselves), then
    /// SIGKILL whatever is still running after [`GRACEFUL_STOP`].
    async fn stop(&mut self) {
        if let Some(site) = self.site.take() {
            site.abort();
        }
        stop_children(&mut self.children).await;
        if let Some(mut wan) = self.wan.take() {
            wan.stop().await;
        }
    }
}

/// Stop `children`: close each one's stdin (its signal to exit), wait up to
/// [`GRACEFUL_STOP`] for all of them together, then kill those still running.
async fn stop_children(children: &mut [ChildProc]) {
    for c in children.iter_mut() {
        c.stdin = None;
    }
    let deadline = Instant::now() + GRACEFUL_STOP;
    for c in children.iter_mut() {
        if c.exited.is_some() {
            continue;
        }
        match tokio::time::timeout_at(deadline, c.child.wait()).await {
            Ok(Ok(status)) => {
                debug!(child = %c.name, %status, "stopped");
                c.exited = Some(status);
            }
            Ok(Err(e)) => warn!("waiting for {}: {e}", c.name),
            Err(_) => {
                warn!("{} did not stop in time; killing it", c.name);
                if let Err(e) = c.child.kill().await {
                    warn!("killing {}: {e}", c.name);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn authority_ports_are_drawn_below_the_ephemeral_range() {
        let low = ephemeral_low();
        assert!(
            std::path::Path::new("/proc/sys/net/ipv4/ip_local_port_range").exists(),
            "the test reads the kernel's range"
        );
        for _ in 0..20 {
            let port = free_udp_port().unwrap();
            assert!((10_000..low).contains(&port), "{port} not below {low}");
            std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
        }
    }

    #[test]
    fn relay_ready_line_parses_with_spaces_in_path() {
        let r = parse_relay_ready("RELAY ready abcd 127.0.0.1:4000 /tmp/a dir/descriptor").unwrap();
        assert_eq!(r.node_id, "abcd");
        assert_eq!(r.addr, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(r.descriptor, PathBuf::from("/tmp/a dir/descriptor"));
        assert!(parse_relay_ready("RELAY ready abcd notanaddr /x").is_none());
        assert!(parse_relay_ready("SOCKS5 ready on 127.0.0.1:1").is_none());
    }

    #[test]
    fn generated_configs_load() {
        let tmp = tempfile::Builder::new()
            .prefix("anonnet-testnet-unit-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let policy: Vec<String> = anonnet_daemon::config::TESTNET_EXIT_POLICY
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let relay = dir.join("relay.toml");
        let auto: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let network = dir.join("network.toml");
        std::fs::write(
            &network,
            format!(
                "name = \"t\"\n[[authority]]\nname = \"a\"\nidentity = \"{}\"\naddress = \"127.0.0.1:7000\"\n",
                "11".repeat(32)
            ),
        )
        .unwrap();
        std::fs::write(
            &relay,
            relay_toml(1, auto, &policy, &[], &network, "honest", Some(DEMO_NAME)),
        )
        .unwrap();
        let s = anonnet_daemon::config::load_relay(&relay).unwrap();
        assert_eq!(s.relay.squat_dark_name.as_deref(), Some(DEMO_NAME));
        std::fs::write(
            &relay,
            relay_toml(1, auto, &policy, &[], &network, "honest", None),
        )
        .unwrap();
        let s = anonnet_daemon::config::load_relay(&relay).unwrap();
        assert_eq!(s.relay.squat_dark_name, None);
        assert_eq!(s.relay.data_dir, dir.join("."));
        let p = s.relay.exit_policy.unwrap();
        assert!(p.allows("127.0.0.1".parse().unwrap(), 8080));
        assert!(p.allows("::1".parse().unwrap(), 8080));
        assert!(!p.allows("10.0.0.1".parse().unwrap(), 8080));
        // The client config parses up to the (missing) descriptor files.
        let client = dir.join("client.toml");
        let descs: Vec<PathBuf> = (1..=3)
            .map(|i| dir.join(format!("r \"{i}\".desc")))
            .collect();
        std::fs::write(&client, client_toml(auto, auto, &descs, &network, true)).unwrap();
        let auth = dir.join("authority.toml");
        let shape = NetworkShape {
            authorities: 1,
            guard_after: 5,
            period: 4,
            withholding_hsdirs: 0,
            stale_hsdirs: 0,
            squatting_relays: 0,
            service_pow_effort: 0,
        };
        std::fs::write(
            &auth,
            authority_toml("127.0.0.1:7000".parse().unwrap(), &network, &shape),
        )
        .unwrap();
        let a = anonnet_daemon::config::load_authority(&auth).unwrap();
        assert_eq!(a.authority.period, 4);
        assert_eq!(a.authority.thresholds.guard_min_known, 5);
        let e = anonnet_daemon::config::load_client(&client)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("client.bootstrap[0]") && e.contains("r \"1\".desc"),
            "{e}"
        );
    }
}
