//! `bench-vs-tor --wan PROFILE`: a private Tor network started inside the network namespaces
//! of an `anonnet testnet --wan` (issue 15, item 4), so that both networks cross the very
//! same emulated links (daemon/src/wan.rs: one `wirefilter` per host, same delays, rate,
//! loss and queue).
//!
//! Placement, one Tor process per anonnet host:
//!
//! | anonnet host | Tor process |
//! | --- | --- |
//! | `auth-1` … `auth-3` | v3 directory authority `auth1` … `auth3` (non-exit relay) |
//! | `relay-1` … `relay-N` | relay `relay1` … `relayN`, exit to 10.0.0.0/8 only |
//! | `client` | client: SOCKS and control port on 127.0.0.1 inside the namespace |
//! | `service` | v3 onion service, port 80 → the testnet's demo site |
//!
//! A Tor authority is always a relay too, where anonnet's authorities are not. The
//! authorities vote the Guard, Exit and HSDir flags to the relays only
//! (`TestingDirAuthVote…` with the relays' fingerprints) and exit nowhere, so Tor's
//! guards, exits and directories sit on the same hosts as anonnet's relays; an authority
//! may still be a middle. (`ExcludeNodes` on the authorities does not work here: Tor's
//! vanguards-lite then finds no second hop for onion-service circuits among 5 relays.)
//! The table reports each network's circuit round trips, so paths of different length
//! show. Settings otherwise follow `../shared/tools/tor-testnet`
//! (its README explains each): `TestingTorNetwork`, congestion control Vegas
//! (`cc_alg=2`), full descriptors, a fixed 60 s circuit-build timeout. Ports are fixed
//! (below the kernel's ephemeral range, where anonnet's own sockets live).
//!
//! The SOCKS and control ports are reached from the root namespace through
//! `anonnet_daemon::netns::forward_into`, as the testnet forwards anonnet's client.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bounded, curl, log, terminate, Res};

/// Tor's ORPort on every relay and authority host (TCP).
const ORPORT: u16 = 19001;
/// Each authority's DirPort (TCP).
const DIRPORT: u16 = 19030;
/// The client's SOCKS port, on 127.0.0.1 inside the client's namespace.
const SOCKS_PORT: u16 = 19050;
/// The client's control port, on 127.0.0.1 inside the client's namespace.
const CONTROL_PORT: u16 = 19051;
/// Longest wait for the Tor network: bootstrap, an exit GET and an onion GET.
const START_LIMIT: Duration = Duration::from_secs(360);
/// Longest wait for one control-port reply or circuit event.
const CONTROL_LIMIT: Duration = Duration::from_secs(60);

/// One host of the emulated WAN, as `testnet.json` (`wan.hosts`) lists it.
#[derive(Debug, Clone)]
pub struct WanHost {
    /// The testnet's name for it (`relay-3`, `client`, …).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address, alone in its /16.
    pub addr: Ipv4Addr,
    /// One-way delay of its link to the core (milliseconds).
    pub delay_ms: f64,
    /// Rate of its link (bytes per second).
    pub rate_bytes_per_sec: f64,
}

/// Every host of `testnet.json`'s `wan.hosts`.
///
/// # Errors
/// When the layout has no WAN or a host lacks a field.
pub fn hosts(layout: &serde_json::Value) -> Res<Vec<WanHost>> {
    let list = layout["wan"]["hosts"]
        .as_array()
        .ok_or("testnet.json: no wan.hosts (not a --wan testnet?)")?;
    list.iter()
        .map(|h| -> Res<WanHost> {
            let s = |k: &str| {
                h[k].as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("testnet.json: a WAN host has no {k}"))
            };
            let n = |k: &str| {
                h[k].as_f64()
                    .ok_or_else(|| format!("testnet.json: a WAN host has no {k}"))
            };
            Ok(WanHost {
                name: s("name")?,
                netns: s("netns")?,
                addr: s("addr")?.parse()?,
                delay_ms: n("delay_ms")?,
                rate_bytes_per_sec: n("rate_bytes_per_sec")?,
            })
        })
        .collect()
}

/// Round trips of a 3-hop circuit from the configured delays of its hosts (one-way, ms),
/// in seconds: each link's one-way delay is the sum of its two hosts' delays
/// (daemon/src/wan.rs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathTimes {
    /// The circuit's round trip: client→guard→middle→exit and back.
    pub rtt_s: f64,
    /// What a telescoping build waits for: the round trips to the guard, to the middle
    /// and to the exit, added.
    pub build_rtts_s: f64,
    /// The server's part of a request's time to first byte, seen from the exit: two
    /// exit–site round trips (the TCP handshake, then the request and its first byte).
    pub server_s: f64,
}

impl PathTimes {
    /// The times of a path whose client has one-way delay `client_ms`, whose guard,
    /// middle and exit have `hops_ms` and whose destination site has `site_ms`.
    pub fn of(client_ms: f64, hops_ms: [f64; 3], site_ms: f64) -> PathTimes {
        let [g, m, e] = hops_ms;
        let to_guard = 2.0 * (client_ms + g);
        let to_middle = to_guard + 2.0 * (g + m);
        let to_exit = to_middle + 2.0 * (m + e);
        PathTimes {
            rtt_s: to_exit / 1000.0,
            build_rtts_s: (to_guard + to_middle + to_exit) / 1000.0,
            server_s: 2.0 * 2.0 * (e + site_ms) / 1000.0,
        }
    }
}

/// The smallest link rate among `hosts` (MiB/s): every path crosses at least the client's
/// and the site's links, and in every profile all hosts share one rate.
pub fn bottleneck_mib_s(hosts: &[WanHost]) -> Option<f64> {
    hosts
        .iter()
        .map(|h| h.rate_bytes_per_sec / crate::MIB)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.min(r))))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Authority,
    Relay,
    Client,
    Service,
}

struct Node {
    /// Tor nickname (`auth1`, `relay2`, `client`, `hs`).
    name: String,
    role: Role,
    host: WanHost,
    dir: PathBuf,
    /// RSA identity fingerprint, 40 hex digits (relays and authorities).
    fingerprint: Option<String>,
    /// The authority's v3 identity (authorities only).
    v3ident: Option<String>,
}

/// The Tor network inside the WAN testnet's namespaces; stopped by [`TorWan::stop`] (or
/// on drop).
pub struct TorWan {
    nodes: Vec<Node>,
    children: Vec<(String, Child)>,
    /// Runs the two forwarders.
    rt: tokio::runtime::Runtime,
    forwards: Vec<tokio::task::JoinHandle<()>>,
    /// The client's SOCKS port, forwarded to the root namespace's loopback.
    pub socks: SocketAddr,
    /// The client's control port, forwarded likewise.
    control: SocketAddr,
    /// The onion service's address (`….onion`).
    pub onion: String,
    client_delay_ms: f64,
    /// The demo site's configured one-way delay (ms).
    site_delay_ms: f64,
}

impl TorWan {
    /// Write keys and torrcs under `dir` for the hosts of `layout` (an `anonnet testnet
    /// --wan` layout), start every Tor process in its host's namespace, and wait (at most
    /// [`START_LIMIT`]) until the client is bootstrapped and a GET of `probe_url` (on the
    /// demo site) and of the onion service work.
    ///
    /// # Errors
    /// A missing host or tool, a key-generation failure, a Tor process that exits, or a
    /// network that is not ready in time; whatever was started is stopped first.
    pub fn start(
        dir: &Path,
        layout: &serde_json::Value,
        site: SocketAddr,
        probe_url: &str,
    ) -> Res<TorWan> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let hosts = hosts(layout)?;
        let host = |name: &str| {
            hosts
                .iter()
                .find(|h| h.name == name)
                .cloned()
                .ok_or_else(|| format!("testnet.json: no WAN host {name}"))
        };
        let mut nodes = Vec::new();
        for h in hosts.iter() {
            let (name, role) = if let Some(k) = h.name.strip_prefix("auth-") {
                (format!("auth{k}"), Role::Authority)
            } else if let Some(k) = h.name.strip_prefix("relay-") {
                (format!("relay{k}"), Role::Relay)
            } else {
                continue;
            };
            nodes.push(Node {
                dir: dir.join(&name),
                name,
                role,
                host: h.clone(),
                fingerprint: None,
                v3ident: None,
            });
        }
        if !nodes.iter().any(|n| n.role == Role::Authority) {
            return Err("testnet.json: no auth-N host".into());
        }
        for (name, role, h) in [
            ("client", Role::Client, "client"),
            ("hs", Role::Service, "service"),
        ] {
            nodes.push(Node {
                dir: dir.join(name),
                name: name.to_owned(),
                role,
                host: host(h)?,
                fingerprint: None,
                v3ident: None,
            });
        }
        let client_ns = host("client")?.netns;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let mut net = TorWan {
            client_delay_ms: host("client")?.delay_ms,
            site_delay_ms: host("site")?.delay_ms,
            nodes,
            children: Vec::new(),
            rt,
            forwards: Vec::new(),
            socks: SocketAddr::from(([127, 0, 0, 1], 0)),
            control: SocketAddr::from(([127, 0, 0, 1], 0)),
            onion: String::new(),
        };
        match net.launch(site, &client_ns, probe_url) {
            Ok(()) => Ok(net),
            Err(e) => {
                net.stop();
                Err(e)
            }
        }
    }

    fn launch(&mut self, site: SocketAddr, client_ns: &str, probe_url: &str) -> Res<()> {
        log("tor: generating keys");
        for node in self.nodes.iter_mut() {
            std::fs::create_dir_all(&node.dir)?;
            set_private(&node.dir)?;
            if node.role == Role::Authority {
                node.v3ident = Some(authority_key(&node.dir, node.host.addr)?);
            }
            if matches!(node.role, Role::Authority | Role::Relay) {
                node.fingerprint = Some(fingerprint(&node.dir, &node.name, node.host.addr)?);
            }
        }
        let dirauth: String = self
            .nodes
            .iter()
            .filter_map(|n| {
                Some(format!(
                    "DirAuthority {} orport={ORPORT} no-v2 v3ident={} {}:{DIRPORT} {}\n",
                    n.name,
                    n.v3ident.as_ref()?,
                    n.host.addr,
                    n.fingerprint.as_ref()?
                ))
            })
            .collect();
        let relays: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Relay)
            .filter_map(|n| n.fingerprint.as_ref().map(|f| format!("${f}")))
            .collect();
        for node in &self.nodes {
            let conf = torrc(node, &dirauth, &relays.join(","), site);
            std::fs::write(node.dir.join("torrc"), conf)?;
            std::fs::write(node.dir.join("resolv.conf"), "nameserver 127.0.0.1\n")?;
        }
        // Authorities first, then relays, the service and the client (as tor-testnet).
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by_key(|&i| match self.nodes.get(i).map(|n| n.role) {
            Some(Role::Authority) => 0,
            Some(Role::Relay) => 1,
            Some(Role::Service) => 2,
            _ => 3,
        });
        for i in order {
            let Some(node) = self.nodes.get(i) else {
                continue;
            };
            let out = std::fs::File::create(node.dir.join("stdout.log"))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &node.host.netns, "tor"])
                .args(["--defaults-torrc", "/dev/null", "-f"])
                .arg(node.dir.join("torrc"))
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()?;
            self.children.push((node.name.clone(), child));
        }
        log(&format!(
            "tor: {} processes started in the WAN namespaces",
            self.children.len()
        ));
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        for (port, slot) in [(SOCKS_PORT, 0), (CONTROL_PORT, 1)] {
            let target = SocketAddr::from(([127, 0, 0, 1], port));
            let (bound, task) = self.rt.block_on(anonnet_daemon::netns::forward_into(
                local, client_ns, target,
            ))?;
            self.forwards.push(task);
            if slot == 0 {
                self.socks = bound;
            } else {
                self.control = bound;
            }
        }
        let deadline = Instant::now() + START_LIMIT;
        let client_log = self.node_dir("client")?.join("notice.log");
        self.wait("client bootstrap", deadline, || {
            Ok(std::fs::read_to_string(&client_log)
                .map(|l| l.contains("Bootstrapped 100%"))
                .unwrap_or(false))
        })?;
        let hostname = self.node_dir("hs")?.join("hidden_service/hostname");
        self.wait("the onion address", deadline, || Ok(hostname.exists()))?;
        self.onion = std::fs::read_to_string(&hostname)?.trim().to_owned();
        let socks = self.socks;
        self.wait("a GET through an exit", deadline, || {
            Ok(curl(None, Some(socks), None, probe_url, 30)?.ok)
        })?;
        let onion_url = format!("http://{}/", self.onion);
        self.wait("a GET of the onion service", deadline, || {
            Ok(curl(None, Some(socks), None, &onion_url, 60)?.ok)
        })?;
        log(&format!("tor: ready, SOCKS {}", self.socks));
        Ok(())
    }

    fn node_dir(&self, name: &str) -> Res<PathBuf> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.dir.clone())
            .ok_or_else(|| format!("no tor node {name}").into())
    }

    /// Poll `ready` every second until it holds, a Tor process exits, or `deadline`.
    fn wait(
        &mut self,
        what: &str,
        deadline: Instant,
        mut ready: impl FnMut() -> Res<bool>,
    ) -> Res<()> {
        loop {
            for (name, child) in self.children.iter_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("tor {name} exited ({status}) waiting for {what}").into());
                }
            }
            if ready()? {
                log(&format!("tor: {what}: ok"));
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("tor: no {what} within {START_LIMIT:?}").into());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// PIDs of the client and of every relay and authority (for CPU and RSS).
    pub fn pids(&self) -> Res<crate::Pids> {
        let pid = |pred: &dyn Fn(&str) -> bool| -> Vec<u32> {
            self.children
                .iter()
                .filter(|(n, _)| pred(n))
                .map(|(_, c)| c.id())
                .collect()
        };
        Ok(crate::Pids {
            client: *pid(&|n| n == "client").first().ok_or("no tor client")?,
            relays: pid(&|n| n.starts_with("relay") || n.starts_with("auth")),
        })
    }

    fn control(&self) -> Res<Control> {
        Control::connect(
            self.control,
            &self.node_dir("client")?.join("control_auth_cookie"),
        )
    }

    /// `n` 3-hop circuit builds through three distinct relays chosen at random, timed from
    /// `EXTENDCIRCUIT` to the `CIRC … BUILT` event (milliseconds), each built after 0.5 s
    /// of idle links and closed after it (tor sets no TCP_NODELAY: tor-testnet's README).
    pub fn circuit_builds(&self, n: usize) -> Res<Vec<f64>> {
        let relays: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Relay)
            .filter_map(|n| n.fingerprint.as_deref())
            .collect();
        if relays.len() < 3 {
            return Err("fewer than 3 tor relays".into());
        }
        let mut ctl = self.control()?;
        ctl.command("SETEVENTS CIRC")?;
        let mut out = Vec::new();
        for _ in 0..n {
            std::thread::sleep(Duration::from_millis(500));
            let path = pick3(relays.len())?;
            let fps: Vec<&str> = path
                .iter()
                .filter_map(|&i| relays.get(i).copied())
                .collect();
            let t0 = Instant::now();
            // A relay missing from the client's current consensus is answered `552 No such
            // router`: that sample is lost, the run goes on.
            let reply = match ctl.command(&format!("EXTENDCIRCUIT 0 ${}", fps.join(",$"))) {
                Ok(r) => r,
                Err(e) => {
                    log(&format!("tor circuit build not started: {e}"));
                    continue;
                }
            };
            let id = reply
                .last()
                .and_then(|l| l.strip_prefix("250 EXTENDED "))
                .ok_or_else(|| format!("EXTENDCIRCUIT: {reply:?}"))?
                .trim()
                .to_owned();
            let prefix = format!("650 CIRC {id} ");
            let ev = ctl.wait_event(|l| {
                l.starts_with(&prefix)
                    && (l.contains(" BUILT") || l.contains(" FAILED") || l.contains(" CLOSED"))
            })?;
            if ev.contains(" BUILT") {
                out.push(t0.elapsed().as_secs_f64() * 1000.0);
            } else {
                log(&format!("tor circuit build failed: {ev}"));
            }
            std::thread::sleep(Duration::from_millis(500));
            let _ = ctl.command(&format!("CLOSECIRCUIT {id}"));
        }
        Ok(out)
    }

    /// Cold onion-service GETs (milliseconds): `SIGNAL NEWNYM` (which purges the client's
    /// descriptor cache and retires its circuits), then a GET of the service's page: the
    /// descriptor fetch, introduction, rendezvous and the request. Tor rate-limits NEWNYM
    /// to one per 10 s, so runs are 10.5 s apart.
    pub fn hs_cold(&self, n: usize) -> Res<Vec<f64>> {
        let mut ctl = self.control()?;
        let url = format!("http://{}/", self.onion);
        let mut out = Vec::new();
        for i in 0..n {
            std::thread::sleep(Duration::from_millis(10_500));
            ctl.command("SIGNAL NEWNYM")?;
            std::thread::sleep(Duration::from_millis(200));
            let c = curl(None, Some(self.socks), Some(&format!("cold{i}")), &url, 120)?;
            if c.ok {
                out.push(c.total * 1000.0);
            } else {
                log(&format!("tor cold onion GET {i} failed"));
            }
        }
        Ok(out)
    }

    /// [`PathTimes`] of the client's built general-purpose 3-hop circuits (`GETINFO
    /// circuit-status`).
    pub fn circuit_times(&self) -> Res<Vec<PathTimes>> {
        let mut ctl = self.control()?;
        let reply = ctl.command("GETINFO circuit-status")?;
        let delay_of = |fp: &str| {
            self.nodes
                .iter()
                .find(|n| n.fingerprint.as_deref() == Some(fp))
                .map(|n| n.host.delay_ms)
        };
        let mut out = Vec::new();
        for line in reply {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(1) != Some(&"BUILT") || !line.contains("PURPOSE=GENERAL") {
                continue;
            }
            let Some(path) = f.get(2) else { continue };
            let d: Vec<f64> = path
                .split(',')
                .filter_map(|hop| {
                    let fp = hop.trim_start_matches('$').split(['~', '=']).next()?;
                    delay_of(fp)
                })
                .collect();
            if let [g, m, e] = d[..] {
                out.push(PathTimes::of(
                    self.client_delay_ms,
                    [g, m, e],
                    self.site_delay_ms,
                ));
            }
        }
        Ok(out)
    }

    /// Stop every Tor process (SIGTERM, then SIGKILL) and the forwarders.
    pub fn stop(&mut self) {
        if !self.children.is_empty() {
            log("stopping the Tor network");
        }
        for (_, child) in self.children.iter_mut() {
            terminate(child);
        }
        self.children.clear();
        for f in self.forwards.drain(..) {
            f.abort();
        }
    }
}

impl Drop for TorWan {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The torrc of `node` (settings: this module's doc and tor-testnet's README); `relays`
/// lists the relays' `$FINGERPRINT`s, comma-separated.
fn torrc(node: &Node, dirauth: &str, relays: &str, site: SocketAddr) -> String {
    let d = node.dir.display();
    let a = node.host.addr;
    let mut c = format!(
        "TestingTorNetwork 1\nDataDirectory {d}\nNickname {}\nLog notice file {d}/notice.log\n\
         SafeLogging 0\nShutdownWaitLength 0\nRunAsDaemon 0\n\
         BandwidthRate 2000 MBytes\nBandwidthBurst 2000 MBytes\nPathsNeededToBuildCircuits 0.67\n\
         __OwningControllerProcess {}\n",
        node.name,
        // Tor exits when the bench does, however the bench ends.
        std::process::id()
    );
    match node.role {
        Role::Authority | Role::Relay => {
            c.push_str(&format!(
                "Address {a}\nORPort {a}:{ORPORT}\nAddressDisableIPv6 1\nAssumeReachable 1\n\
                 ContactInfo {}@testnet.invalid\nSocksPort 0\n\
                 ServerDNSResolvConfFile {d}/resolv.conf\nServerDNSDetectHijacking 0\n\
                 ServerDNSAllowBrokenConfig 1\n",
                node.name
            ));
            if node.role == Role::Relay {
                // 10/8 only: the WAN's hosts. The /1 rejects cover the rest of IPv4; the
                // last accept is unreachable but keeps clients from judging every port
                // "probably rejected" for IP-literal streams (tor-testnet's README).
                c.push_str(
                    "ExitRelay 1\nIPv6Exit 0\nExitPolicyRejectPrivate 0\n\
                     ExitPolicyRejectLocalInterfaces 0\nExitPolicy accept 10.0.0.0/8:*\n\
                     ExitPolicy reject 0.0.0.0/1:*\nExitPolicy reject 128.0.0.0/1:*\n\
                     ExitPolicy accept *4:*\n",
                );
            } else {
                c.push_str(&format!(
                    "ExitRelay 0\nExitPolicy reject *:*\n\
                     ConsensusParams cc_alg=2 KISTSchedRunInterval=2\n\
                     AuthoritativeDirectory 1\nV3AuthoritativeDirectory 1\nDirPort {a}:{DIRPORT}\n\
                     TestingV3AuthInitialVotingInterval 20\nTestingV3AuthInitialVoteDelay 4\n\
                     TestingV3AuthInitialDistDelay 4\nV3AuthVotingInterval 30\n\
                     V3AuthVoteDelay 7\nV3AuthDistDelay 7\nV3AuthNIntervalsValid 2\n\
                     TestingDirAuthVoteExit {relays}\nTestingDirAuthVoteGuard {relays}\n\
                     TestingDirAuthVoteHSDir {relays}\nTestingMinExitFlagThreshold 0\n"
                ));
            }
        }
        Role::Client => c.push_str(&format!(
            "SocksPort 127.0.0.1:{SOCKS_PORT}\nControlPort 127.0.0.1:{CONTROL_PORT}\n\
             CookieAuthentication 1\nUseMicrodescriptors 0\nLearnCircuitBuildTimeout 0\n\
             CircuitBuildTimeout 60\n"
        )),
        Role::Service => c.push_str(&format!(
            "SocksPort 0\nHiddenServiceDir {d}/hidden_service\nHiddenServicePort 80 {site}\n\
             LearnCircuitBuildTimeout 0\nCircuitBuildTimeout 60\n"
        )),
    }
    c.push_str(dirauth);
    c
}

/// Tor wants its data directories private (0700).
fn set_private(dir: &Path) -> Res<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Make an authority's v3 keys (`tor-gencert`, empty passphrase) in `dir/keys`; returns
/// its v3 identity fingerprint.
fn authority_key(dir: &Path, addr: Ipv4Addr) -> Res<String> {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys)?;
    set_private(&keys)?;
    let mut child = Command::new("tor-gencert")
        .args(["--create-identity-key", "-m", "12", "-a"])
        .arg(format!("{addr}:{DIRPORT}"))
        .arg("-i")
        .arg(keys.join("authority_identity_key"))
        .arg("-s")
        .arg(keys.join("authority_signing_key"))
        .arg("-c")
        .arg(keys.join("authority_certificate"))
        .args(["--passphrase-fd", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(b"\n")?;
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("tor-gencert failed ({status})").into());
    }
    let cert = std::fs::read_to_string(keys.join("authority_certificate"))?;
    cert.lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .map(|f| f.trim().to_owned())
        .ok_or_else(|| "tor-gencert wrote no fingerprint".into())
}

/// Generate a relay's identity key in `dir` and return its RSA fingerprint (40 hex digits),
/// with `tor --list-fingerprint` and a throwaway torrc.
fn fingerprint(dir: &Path, name: &str, addr: Ipv4Addr) -> Res<String> {
    let torrc = dir.join("keygen.torrc");
    std::fs::write(
        &torrc,
        format!(
            "DataDirectory {}\nORPort {addr}:{ORPORT}\nAddress {addr}\nNickname {name}\n",
            dir.display()
        ),
    )?;
    let out = bounded(
        Command::new("tor")
            .args(["--defaults-torrc", "/dev/null", "-f"])
            .arg(&torrc)
            .args(["--list-fingerprint", "--quiet"]),
        Duration::from_secs(60),
    )?;
    std::fs::remove_file(&torrc)?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.collect::<String>())
        })
        .filter(|fp| fp.len() == 40)
        .ok_or_else(|| format!("no fingerprint for {name}: {text}").into())
}

/// Three distinct indices below `n`, drawn uniformly (getrandom).
fn pick3(n: usize) -> Res<[usize; 3]> {
    let mut out = [0usize; 3];
    let mut k = 0;
    let mut tries = 0;
    while k < 3 {
        tries += 1;
        if tries > 1000 {
            return Err("could not draw three relays".into());
        }
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).map_err(|e| format!("getrandom: {e}"))?;
        let i = u32::from_le_bytes(b) as usize % n;
        if !out.get(..k).unwrap_or_default().contains(&i) {
            if let Some(slot) = out.get_mut(k) {
                *slot = i;
            }
            k += 1;
        }
    }
    Ok(out)
}

/// A blocking client of Tor's control port (control-spec §2–4) with cookie authentication:
/// commands, their (possibly multi-line) replies, and queued asynchronous `650` events.
struct Control {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    events: std::collections::VecDeque<String>,
}

impl Control {
    fn connect(addr: SocketAddr, cookie: &Path) -> Res<Control> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(CONTROL_LIMIT))?;
        let mut c = Control {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: std::collections::VecDeque::new(),
        };
        let cookie = std::fs::read(cookie)?;
        c.command(&format!("AUTHENTICATE {}", hex::encode(cookie)))?;
        Ok(c)
    }

    fn line(&mut self) -> Res<String> {
        let mut l = String::new();
        if self.reader.read_line(&mut l)? == 0 {
            return Err("tor control port closed".into());
        }
        Ok(l.trim_end().to_owned())
    }

    /// Send `cmd`; return the reply's lines (data lines of `+` replies included), the last
    /// being the final `NNN text`. A `4xx`/`5xx` reply is an error.
    fn command(&mut self, cmd: &str) -> Res<Vec<String>> {
        self.writer.write_all(format!("{cmd}\r\n").as_bytes())?;
        let mut lines = Vec::new();
        loop {
            let l = self.line()?;
            if l.starts_with("650") {
                self.events.push_back(l);
                continue;
            }
            let sep = l.as_bytes().get(3).copied();
            if sep == Some(b'+') {
                lines.push(l);
                loop {
                    let d = self.line()?;
                    if d == "." {
                        break;
                    }
                    lines.push(d);
                }
                continue;
            }
            let done = sep == Some(b' ');
            lines.push(l);
            if done {
                break;
            }
        }
        match lines.last() {
            Some(l) if l.starts_with('2') => Ok(lines),
            other => Err(format!("tor control `{cmd}`: {other:?}").into()),
        }
    }

    /// The first queued or arriving `650` event that `pred` accepts (others are dropped);
    /// fails after [`CONTROL_LIMIT`] without one.
    fn wait_event(&mut self, pred: impl Fn(&str) -> bool) -> Res<String> {
        while let Some(e) = self.events.pop_front() {
            if pred(&e) {
                return Ok(e);
            }
        }
        let deadline = Instant::now() + CONTROL_LIMIT;
        while Instant::now() < deadline {
            let l = self.line()?;
            if pred(&l) {
                return Ok(l);
            }
        }
        Err("tor control: no matching event".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_circuit_round_trip_crosses_each_link_twice() {
        // client 10 ms, hops 20, 30, 40 ms: links 30 + 50 + 70 = 150 ms one way.
        let t = PathTimes::of(10.0, [20.0, 30.0, 40.0], 5.0);
        assert!((t.rtt_s - 0.300).abs() < 1e-9, "{t:?}");
        // A build waits 60 + 160 + 300 ms.
        assert!((t.build_rtts_s - 0.520).abs() < 1e-9, "{t:?}");
        // The exit–site link is 45 ms one way: two round trips, 180 ms.
        assert!((t.server_s - 0.180).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn three_distinct_relays_are_drawn() {
        for _ in 0..200 {
            let p = pick3(5).unwrap_or([0; 3]);
            assert!(p.iter().all(|&i| i < 5));
            assert!(p[0] != p[1] && p[1] != p[2] && p[0] != p[2], "{p:?}");
        }
    }
}
