//! `anonnet testnet --wan PROFILE`: every process of the testnet in a network namespace of
//! its own, on an address in a distinct /16 of 10.0.0.0/8, joined through a user-space
//! link emulator with per-host one-way delay, rate and loss.
//!
//! This machine's kernel (and many CI kernels) has no `netem` qdisc, so the links are
//! emulated by Debian's `vde2`: a `vde_switch` per host with the host's TAP device
//! (`vde_plug2tap`, inside the namespace) on it, a `wirefilter` between that switch and
//! one core `vde_switch`. A packet from host A to host B crosses A's wirefilter and B's, so
//! its one-way delay is `delay(A) + delay(B)` and the rate of the path is the smaller of
//! the two. vde2 was chosen over a home-made TUN forwarder because it is packaged, small,
//! and does delay, loss, rate and a bounded queue per direction already; over `tc` because
//! `tbf`/`htb` here can shape rate but not delay.
//!
//! ```text
//!   ns anonnet-<pid>-relay-1          root namespace (user space)
//!   [wan0 10.3.0.1/8] ─ vde_plug2tap ─ vde_switch ─ wirefilter(d, rate, loss) ─┐
//!   ns anonnet-<pid>-client                                                   ├─ core vde_switch
//!   [wan0 10.8.0.1/8] ─ vde_plug2tap ─ vde_switch ─ wirefilter(d, rate, loss) ─┘
//! ```
//!
//! Every host's interface has prefix /8 on one Ethernet segment, so hosts reach each
//! other without routes while each sits in its own /16 (the client's path rule, protocol
//! §9.1, sees distinct networks). Nothing is routed outside the machine: the root
//! namespace gets no 10/8 address. The client's SOCKS and HTTP listeners are reached from
//! the root namespace through [`Wan::forward`], which listens on the root loopback and connects
//! inside the client's namespace.
//!
//! Needs root (or `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`), `ip` (iproute2), and `vde_switch`,
//! `vde_plug2tap`, `wirefilter` (Debian: `vde2`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rand::{Rng, RngExt, SeedableRng};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use anonnet_daemon::netns::forward_into;

use crate::Error;

/// The interface name of every host's TAP device, inside its namespace.
pub const WAN_IF: &str = "wan0";
/// The prefix of every namespace the WAN testnet creates: `anonnet-<pid>-<host>`.
const NETNS_PREFIX: &str = "anonnet-";
/// Longest wait for a switch's control socket or a host's TAP device to appear.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often setup polls for a socket or a device.
const SETUP_POLL: Duration = Duration::from_millis(20);
/// Ports of the core switch: one per host plus spares (vde_switch's default is 32).
const CORE_PORTS: u32 = 256;
/// Most hosts in one WAN testnet: one /16 each in 10.1.0.0 ..= 10.250.0.0.
pub const MAX_HOSTS: usize = 250;
/// Time worth of traffic at a link's rate that its queue holds (milliseconds), as a router
/// buffer would; more is dropped.
const QUEUE_MS: u64 = 100;
/// Smallest queue of a link (bytes).
const MIN_QUEUE_BYTES: u64 = 64 * 1024;

/// A link profile: how every host's link to the core behaves (issue 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WanProfile {
    /// 1 ms one-way per host, 1 Gbit/s, no loss.
    Lan,
    /// One-way delay per host drawn from 5..=40 ms (circuit RTTs of roughly 60–300 ms),
    /// 100 Mbit/s, 0.1 % loss per link direction.
    Broadband,
    /// As broadband with 2 % loss per link direction and 20 Mbit/s.
    Lossy,
}

impl WanProfile {
    /// The names accepted by `--wan`.
    pub const NAMES: [&'static str; 3] = ["lan", "broadband", "lossy"];

    /// Parse a profile name.
    ///
    /// # Errors
    /// A message naming the allowed profiles.
    pub fn parse(s: &str) -> Result<WanProfile, String> {
        match s {
            "lan" => Ok(WanProfile::Lan),
            "broadband" => Ok(WanProfile::Broadband),
            "lossy" => Ok(WanProfile::Lossy),
            other => Err(format!(
                "unknown WAN profile {other:?}: expected one of {}",
                WanProfile::NAMES.join(", ")
            )),
        }
    }

    /// The profile's name, as `--wan` takes it.
    pub fn name(self) -> &'static str {
        match self {
            WanProfile::Lan => "lan",
            WanProfile::Broadband => "broadband",
            WanProfile::Lossy => "lossy",
        }
    }

    /// One host's link, its delay drawn from `rng` where the profile gives a range.
    pub fn draw_link(self, rng: &mut impl Rng) -> Link {
        match self {
            WanProfile::Lan => Link {
                delay_ms: 1,
                rate_bytes_per_sec: 125_000_000,
                loss_percent: 0.0,
            },
            WanProfile::Broadband => Link {
                delay_ms: rng.random_range(5..=40),
                rate_bytes_per_sec: 12_500_000,
                loss_percent: 0.1,
            },
            WanProfile::Lossy => Link {
                delay_ms: rng.random_range(5..=40),
                rate_bytes_per_sec: 2_500_000,
                loss_percent: 2.0,
            },
        }
    }
}

/// One host's link to the core switch; each value applies in both directions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One-way delay (milliseconds).
    pub delay_ms: u32,
    /// Rate (bytes per second).
    pub rate_bytes_per_sec: u64,
    /// Share of packets dropped (percent, 0..=100).
    pub loss_percent: f64,
}

impl Link {
    /// The link's queue (bytes): [`QUEUE_MS`] of traffic at its rate, at least
    /// [`MIN_QUEUE_BYTES`].
    pub fn queue_bytes(&self) -> u64 {
        (self.rate_bytes_per_sec * QUEUE_MS / 1000).max(MIN_QUEUE_BYTES)
    }

    /// `wirefilter` arguments for this link (delay ms, bandwidth and queue in bytes, loss
    /// in percent; both directions).
    fn wirefilter_args(&self) -> Vec<String> {
        vec![
            "-d".into(),
            self.delay_ms.to_string(),
            "-b".into(),
            self.rate_bytes_per_sec.to_string(),
            "-c".into(),
            self.queue_bytes().to_string(),
            "-l".into(),
            format!("{}", self.loss_percent),
        ]
    }
}

/// One emulated host: a namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    /// The testnet's name for it (`relay-3`, `client`, …).
    pub name: String,
    /// Its network namespace (`ip netns` name).
    pub netns: String,
    /// Its address: `10.N.0.1`, alone in `10.N.0.0/16`.
    pub addr: Ipv4Addr,
    /// Its link to the core.
    pub link: Link,
}

impl Host {
    /// The host for `testnet.json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "netns": self.netns,
            "addr": self.addr.to_string(),
            "delay_ms": self.link.delay_ms,
            "rate_bytes_per_sec": self.link.rate_bytes_per_sec,
            "loss_percent": self.link.loss_percent,
        })
    }
}

/// A helper process of the emulator (a switch, a TAP plug, a wirefilter); it exits when
/// its stdin closes.
struct Helper {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The emulated WAN: namespaces, switches and wirefilters, torn down by [`Wan::stop`].
pub struct Wan {
    profile: WanProfile,
    seed: u64,
    rng: rand::rngs::StdRng,
    /// Where the switches' control sockets live.
    dir: PathBuf,
    /// `anonnet-<pid>-`.
    prefix: String,
    core: PathBuf,
    hosts: Vec<Host>,
    helpers: Vec<Helper>,
    forwards: Vec<JoinHandle<()>>,
}

/// Times a host's TAP plug is started before its setup fails.
const TAP_ATTEMPTS: u32 = 3;

/// The kernel's IPv4 neighbour (ARP) table limits, shared by every network namespace.
const NEIGH_SYSCTL: &str = "/proc/sys/net/ipv4/neigh/default";

/// Make the kernel's neighbour table, which every namespace shares (1,024 entries by
/// default, `gc_thresh3`), hold an entry for every pair of `hosts` hosts on the one L2
/// segment, plus room for the rest of the machine: past the limit the kernel refuses new
/// entries ("neighbor table overflow") and hosts added later cannot reach anyone (with 65
/// hosts, 4,160 entries). The limits are only raised, never lowered, and not restored at
/// stop (another testnet may be running; entries cost memory only while they exist).
///
/// # Errors
/// [`Error::Testnet`] when the limits cannot be read or raised.
fn ensure_neighbour_room(hosts: usize) -> Result<(), Error> {
    // Room for the next power of two of hosts (at least 64), so a growing testnet raises
    // the limits a few times, not at every host.
    let room_for = hosts.next_power_of_two().max(64);
    let needed = room_for * (room_for - 1) + 1024;
    let read = |name: &str| -> Result<usize, Error> {
        let path = format!("{NEIGH_SYSCTL}/{name}");
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| Error::Testnet(format!("cannot read {path}")))
    };
    let (thresh2, thresh3) = (read("gc_thresh2")?, read("gc_thresh3")?);
    if thresh3 >= 2 * needed && thresh2 >= needed {
        return Ok(());
    }
    for (name, value) in [
        ("gc_thresh3", thresh3.max(2 * needed)),
        ("gc_thresh2", thresh2.max(needed)),
    ] {
        let path = format!("{NEIGH_SYSCTL}/{name}");
        std::fs::write(&path, value.to_string()).map_err(|e| {
            Error::Testnet(format!(
                "cannot raise {path} to {value} for {hosts} WAN hosts: {e}"
            ))
        })?;
    }
    info!(
        hosts,
        gc_thresh2 = thresh2.max(needed),
        gc_thresh3 = thresh3.max(2 * needed),
        "raised the kernel's neighbour table limits for the WAN testnet"
    );
    Ok(())
}

impl Wan {
    /// Check the tools, remove namespaces left behind by dead testnets, and start the core
    /// switch with its sockets under `dir`.
    ///
    /// # Errors
    /// [`Error::Testnet`] on a system other than Linux, or naming the missing tool or the
    /// failed step.
    pub async fn start(dir: &Path, profile: WanProfile, seed: u64) -> Result<Wan, Error> {
        if !cfg!(target_os = "linux") {
            return Err(Error::Testnet(
                "--wan needs Linux: it puts every process in its own network namespace".into(),
            ));
        }
        for tool in ["ip", "vde_switch", "vde_plug2tap", "wirefilter"] {
            if !on_path(tool) {
                return Err(Error::Testnet(format!(
                    "--wan needs `{tool}` on PATH (Debian: apt-get install vde2 iproute2)"
                )));
            }
        }
        remove_stale_namespaces().await;
        crate::create_private_dir(dir)?;
        let mut wan = Wan {
            profile,
            seed,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            dir: dir.to_path_buf(),
            prefix: format!("{NETNS_PREFIX}{}-", std::process::id()),
            core: dir.join("core"),
            hosts: Vec::new(),
            helpers: Vec::new(),
            forwards: Vec::new(),
        };
        let core = wan.core.clone();
        wan.helper(
            "core switch",
            Command::new("vde_switch")
                .arg("-s")
                .arg(&core)
                .args(["-n", &CORE_PORTS.to_string()]),
        )?;
        wait_for(&core.join("ctl"), "the core vde_switch").await?;
        info!(profile = profile.name(), seed, "WAN emulator started");
        Ok(wan)
    }

    /// The profile.
    pub fn profile(&self) -> WanProfile {
        self.profile
    }

    /// The seed the hosts' delays were drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Every host added so far.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Add a host: its namespace (loopback up), switch, TAP device with address
    /// `10.N.0.1/8` (N = hosts so far + 1) and its wirefilter to the core.
    ///
    /// # Errors
    /// [`Error::Testnet`] when there are already [`MAX_HOSTS`] hosts or a step fails.
    pub async fn add_host(&mut self, name: &str) -> Result<Host, Error> {
        let n = self.hosts.len() + 1;
        if n > MAX_HOSTS {
            return Err(Error::Testnet(format!(
                "the WAN testnet holds at most {MAX_HOSTS} hosts"
            )));
        }
        ensure_neighbour_room(n)?;
        let octet = u8::try_from(n).unwrap_or(u8::MAX);
        let netns = format!("{}{name}", self.prefix);
        let addr = Ipv4Addr::new(10, octet, 0, 1);
        let link = self.profile.draw_link(&mut self.rng);
        ip(&["netns", "add", &netns]).await?;
        // Pushed at once so that stop() deletes the namespace whatever fails next.
        let host = Host {
            name: name.to_owned(),
            netns: netns.clone(),
            addr,
            link,
        };
        self.hosts.push(host.clone());
        ip(&["-n", &netns, "link", "set", "lo", "up"]).await?;
        let sw = self.dir.join(format!("sw-{name}"));
        self.helper(
            &format!("{name} switch"),
            Command::new("vde_switch").arg("-s").arg(&sw),
        )?;
        wait_for(&sw.join("ctl"), &format!("{name}'s vde_switch")).await?;
        let plugs = format!("{}:{}", sw.display(), self.core.display());
        // The management socket lets a test or a person change the link while it runs
        // (`unixcmd -s DIR/wan/wf-NAME.mgmt loss 5`).
        self.helper(
            &format!("{name} wirefilter"),
            Command::new("wirefilter")
                .args(["-v", &plugs])
                .args(link.wirefilter_args())
                .arg("-M")
                .arg(self.dir.join(format!("wf-{name}.mgmt"))),
        )?;
        // The TAP device lives as long as its vde_plug2tap. One of 65 once exited right
        // after creating it (the address could not be added: "Cannot find device"), so a
        // plug whose device is gone again is started anew, at most TAP_ATTEMPTS times.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tap = format!("{name} tap");
            self.helper(
                &tap,
                Command::new("ip")
                    .args(["netns", "exec", &netns, "vde_plug2tap", "-s"])
                    .arg(&sw)
                    .arg(WAN_IF),
            )?;
            let up = self.configure_tap(name, &netns, addr).await;
            match up {
                Ok(()) => break,
                Err(e) if attempt < TAP_ATTEMPTS => {
                    warn!(
                        host = name,
                        attempt, "TAP device lost, starting its plug again: {e}"
                    );
                    self.drop_helper(&tap).await;
                }
                Err(e) => return Err(e),
            }
        }
        info!(
            host = name,
            %addr,
            delay_ms = link.delay_ms,
            rate = link.rate_bytes_per_sec,
            loss = link.loss_percent,
            "WAN host"
        );
        Ok(host)
    }

    /// A command that runs `program` inside `host`'s namespace (`ip netns exec`).
    pub fn command(host: &Host, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.netns]).arg(program);
        c
    }

    /// Listen on `listen` (root namespace) and forward every connection to `target`
    /// inside `host`'s namespace. Returns the bound address; the forwarder runs until
    /// [`Wan::stop`].
    ///
    /// # Errors
    /// The I/O error from binding `listen`.
    pub async fn forward(
        &mut self,
        listen: SocketAddr,
        host: &Host,
        target: SocketAddr,
    ) -> Result<SocketAddr, Error> {
        let (bound, task) = forward_into(listen, &host.netns, target)
            .await
            .map_err(Error::io(format!("listening on {listen}")))?;
        self.forwards.push(task);
        Ok(bound)
    }

    /// Stop every helper and forwarder and delete every namespace. Processes started in
    /// the namespaces must be stopped first.
    pub async fn stop(&mut self) {
        for f in self.forwards.drain(..) {
            f.abort();
        }
        for h in &mut self.helpers {
            h.stdin = None;
        }
        for h in &mut self.helpers {
            match tokio::time::timeout(Duration::from_secs(2), h.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    debug!(helper = %h.name, "did not exit on EOF; killing it");
                    let _ = h.child.kill().await;
                }
            }
        }
        self.helpers.clear();
        for host in self.hosts.drain(..) {
            if let Err(e) = ip(&["netns", "del", &host.netns]).await {
                warn!("deleting namespace {}: {e}", host.netns);
            }
        }
    }

    /// Wait for `host`'s TAP device in `netns`, give it `addr`/8 and bring it up.
    ///
    /// # Errors
    /// [`Error::Testnet`] when the device does not appear within [`SETUP_TIMEOUT`] or an
    /// `ip` step fails (the device vanished with its plug, say).
    async fn configure_tap(&self, host: &str, netns: &str, addr: Ipv4Addr) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
        while ip(&["-n", netns, "link", "show", WAN_IF]).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Testnet(format!(
                    "{host}: vde_plug2tap did not create {WAN_IF} in {netns} within {}s",
                    SETUP_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(SETUP_POLL).await;
        }
        ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{addr}/8"),
            "dev",
            WAN_IF,
        ])
        .await?;
        ip(&["-n", netns, "link", "set", WAN_IF, "up"]).await
    }

    /// Stop and forget the helper called `name` (killed, waited for).
    async fn drop_helper(&mut self, name: &str) {
        if let Some(i) = self.helpers.iter().position(|h| h.name == name) {
            let mut h = self.helpers.remove(i);
            let _ = h.child.kill().await;
        }
    }

    fn helper(&mut self, name: &str, command: &mut Command) -> Result<(), Error> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::io(format!("starting the {name}")))?;
        let stdin = child.stdin.take();
        self.helpers.push(Helper {
            name: name.to_owned(),
            child,
            stdin,
        });
        Ok(())
    }
}

/// Whether `program` is an executable file on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Run `ip ARGS`; an error carries its stderr.
async fn ip(args: &[&str]) -> Result<(), Error> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(Error::io("running ip"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Testnet(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Wait until `path` exists (a switch's control socket).
async fn wait_for(path: &Path, what: &str) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    while !path.exists() {
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Testnet(format!(
                "{what} did not create {} within {}s",
                path.display(),
                SETUP_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(SETUP_POLL).await;
    }
    Ok(())
}

/// Delete namespaces `anonnet-<pid>-*` whose testnet process no longer runs (one killed
/// without cleaning up).
async fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output().await else {
        return;
    };
    let listing = String::from_utf8_lossy(&out.stdout);
    for line in listing.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            info!(netns = name, "removing a namespace left by a dead testnet");
            if let Err(e) = ip(&["netns", "del", name]).await {
                warn!("{e}");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_draw_links_in_range() {
        for name in WanProfile::NAMES {
            assert_eq!(WanProfile::parse(name).unwrap().name(), name);
        }
        let e = WanProfile::parse("dialup").unwrap_err();
        assert!(e.contains("lan, broadband, lossy"), "{e}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let links: Vec<Link> = (0..200)
            .map(|_| WanProfile::Broadband.draw_link(&mut rng))
            .collect();
        assert!(links.iter().all(|l| (5..=40).contains(&l.delay_ms)));
        // The draw spreads over the range, not one value.
        assert!(links.iter().any(|l| l.delay_ms <= 10));
        assert!(links.iter().any(|l| l.delay_ms >= 35));
        let lossy = WanProfile::Lossy.draw_link(&mut rng);
        assert_eq!(lossy.rate_bytes_per_sec, 2_500_000);
        assert_eq!(lossy.loss_percent, 2.0);
        let lan = WanProfile::Lan.draw_link(&mut rng);
        assert_eq!((lan.delay_ms, lan.loss_percent), (1, 0.0));
    }

    #[test]
    fn the_same_seed_draws_the_same_links() {
        let draw = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..10)
                .map(|_| WanProfile::Broadband.draw_link(&mut rng).delay_ms)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn wirefilter_gets_the_link_and_a_bounded_queue() {
        let l = Link {
            delay_ms: 17,
            rate_bytes_per_sec: 12_500_000,
            loss_percent: 0.1,
        };
        assert_eq!(l.queue_bytes(), 1_250_000);
        assert_eq!(
            l.wirefilter_args(),
            ["-d", "17", "-b", "12500000", "-c", "1250000", "-l", "0.1"]
        );
        let slow = Link {
            rate_bytes_per_sec: 1000,
            ..l
        };
        assert_eq!(slow.queue_bytes(), MIN_QUEUE_BYTES);
    }
}
