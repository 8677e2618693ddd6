//! The control subcommands — `anonnet status`, `circuits`, `new-identity`, `proxy on|off`,
//! `service list|publish|unpublish` — over the running daemon's control API.
//!
//! The daemon is found through its client config (`--config FILE`, else the OS-standard
//! file, as for `anonnet run`): the config names the state directory, where the daemon
//! keeps `ports.json` and `control.cookie`. Output is for people unless `--json` is given;
//! any failure is one line on stderr and a non-zero exit.

use std::fmt::Write as _;
use std::path::PathBuf;

use anonnet_control::{
    CircuitInfo, ControlClient, ControlError, PublishRequest, ServiceInfo, Status,
};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::{config, print_line, Error};
use anonnet_error::{ErrorKind, HasKind};

/// Hex digits of a relay id shown in human output.
const SHORT_ID: usize = 8;

/// Which daemon to talk to, and how to print.
#[derive(Debug, Clone, Default, Args)]
pub struct Target {
    /// Client config file of the daemon [default: the OS config directory's
    /// anonnet/client.toml, as for `anonnet run`].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON (the control API's answer) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Forward requests through the network.
    On,
    /// Refuse every new request; nothing is sent anywhere.
    Off,
}

/// The control subcommands (flattened into the top-level command list).
#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Show the running daemon: bootstrap progress, proxy on/off, circuits, streams, bytes.
    Status(Target),
    /// List the daemon's circuits: relays (guard → middle → exit), state and age.
    Circuits(Target),
    /// New identity: every current circuit stops taking new streams; new requests get
    /// fresh circuits.
    NewIdentity(Target),
    /// Switch proxying on or off. While off, SOCKS and HTTP requests are refused and
    /// nothing is sent anywhere.
    Proxy {
        /// `on` or `off`.
        #[arg(value_enum)]
        state: OnOff,
        #[command(flatten)]
        target: Target,
    },
    /// Hidden services of the daemon.
    Service {
        #[command(subcommand)]
        action: ServiceCommand,
    },
}

/// `anonnet service …`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List the hidden services.
    List(Target),
    /// Publish a local server as a hidden service and print its .anon address.
    Publish {
        /// The local server: PORT (on 127.0.0.1) or IP:PORT.
        #[arg(value_name = "LOCAL")]
        local: String,
        /// Port on the .anon address [default: 80].
        #[arg(long, value_name = "PORT")]
        port: Option<u16>,
        #[command(flatten)]
        target: Target,
    },
    /// Take a hidden service down.
    Unpublish {
        /// Its .anon address.
        #[arg(value_name = "ADDRESS")]
        address: String,
        #[command(flatten)]
        target: Target,
    },
}

impl ControlCommand {
    fn target(&self) -> &Target {
        match self {
            ControlCommand::Status(t)
            | ControlCommand::Circuits(t)
            | ControlCommand::NewIdentity(t)
            | ControlCommand::Proxy { target: t, .. } => t,
            ControlCommand::Service { action } => match action {
                ServiceCommand::List(t)
                | ServiceCommand::Publish { target: t, .. }
                | ServiceCommand::Unpublish { target: t, .. } => t,
            },
        }
    }
}

/// Where the client config is: `config` if given, else the OS-standard file (which must
/// exist). The same rule as `anonnet run`.
///
/// # Errors
/// [`Error::NoClientConfig`] naming where it looked.
pub fn client_config_path(config: Option<PathBuf>) -> Result<PathBuf, Error> {
    match config {
        Some(p) => Ok(p),
        None => match config::default_client_config() {
            Some(p) if p.exists() => Ok(p),
            Some(p) => Err(Error::NoClientConfig {
                looked: p.display().to_string(),
            }),
            None => Err(Error::NoClientConfig {
                looked: "the OS config directory (none: this user has no home directory)".into(),
            }),
        },
    }
}

/// Run one control subcommand. `global_config` is a `--config` given before the
/// subcommand (`anonnet --config FILE status`); one after it wins.
///
/// # Errors
/// [`Error::ControlApi`] for the user (daemon not running, cookie rejected, …),
/// or a config error.
pub async fn run(command: ControlCommand, global_config: Option<PathBuf>) -> Result<(), Error> {
    let target = command.target().clone();
    let path = client_config_path(target.config.clone().or(global_config))?;
    // `components()` drops `.` parts, so messages show `DIR/ports.json`, not `DIR/./…`.
    let state_dir: PathBuf = config::client_state_dir(&path)?.components().collect();
    let client = ControlClient::from_state_dir(&state_dir).map_err(|e| failed(e, &path))?;
    let json = target.json;
    let out = match command {
        ControlCommand::Status(_) => {
            let status = client.status().await.map_err(|e| failed(e, &path))?;
            render(json, &status, format_status)?
        }
        ControlCommand::Circuits(_) => {
            let circuits = client.circuits().await.map_err(|e| failed(e, &path))?;
            render(json, &circuits, |c| format_circuits(c))?
        }
        ControlCommand::NewIdentity(_) => {
            client.new_identity().await.map_err(|e| failed(e, &path))?;
            render(json, &serde_json::json!({"ok": true}), |_| {
                "new identity: every current circuit stops taking new streams".to_owned()
            })?
        }
        ControlCommand::Proxy { state, .. } => {
            let enabled = client
                .set_proxy(state == OnOff::On)
                .await
                .map_err(|e| failed(e, &path))?;
            render(json, &serde_json::json!({"enabled": enabled}), |_| {
                if enabled {
                    "proxy: on".to_owned()
                } else {
                    "proxy: off (SOCKS and HTTP requests are refused until `anonnet proxy on`)"
                        .to_owned()
                }
            })?
        }
        ControlCommand::Service { action } => match action {
            ServiceCommand::List(_) => {
                let services = client.services().await.map_err(|e| failed(e, &path))?;
                render(json, &services, |s| format_services(s))?
            }
            ServiceCommand::Publish { local, port, .. } => {
                let target = if local.bytes().all(|b| b.is_ascii_digit()) {
                    format!("127.0.0.1:{local}")
                } else {
                    local
                };
                let service = client
                    .publish(&PublishRequest { target, port })
                    .await
                    .map_err(|e| failed(e, &path))?;
                render(json, &service, |s| {
                    format!("published {}:{} → {}", s.address, s.port, s.target)
                })?
            }
            ServiceCommand::Unpublish { address, .. } => {
                client
                    .unpublish(&address)
                    .await
                    .map_err(|e| failed(e, &path))?;
                render(json, &serde_json::json!({"ok": true}), |_| {
                    format!("unpublished {address}")
                })?
            }
        },
    };
    print_line(out.trim_end())
}

/// The SOCKS port of the daemon whose state directory is `state_dir`, from its
/// `ports.json`.
///
/// # Errors
/// [`Error::Failed`] of kind [`ErrorKind::DaemonDown`] when the file is missing or
/// unreadable, or names no SOCKS port.
pub fn running_socks_port(state_dir: &std::path::Path) -> Result<std::net::SocketAddr, Error> {
    let ports = anonnet_control::locate::read_ports(state_dir).map_err(|e| {
        Error::failed(
            ErrorKind::DaemonDown,
            format!("{e}; is the daemon running?"),
        )
    })?;
    ports.get("socks").copied().ok_or_else(|| {
        Error::failed(
            ErrorKind::DaemonDown,
            format!(
                "{} names no socks port; is the daemon running?",
                state_dir.join("ports.json").display()
            ),
        )
    })
}

/// The error as one line, with what to do when no daemon answers.
fn failed(e: ControlError, config: &std::path::Path) -> Error {
    let hint = if e.daemon_down() {
        format!(
            "; start it with `anonnet run --config {}`",
            config.display()
        )
    } else {
        String::new()
    };
    Error::ControlApi { source: e, hint }
}

/// `value` as pretty JSON, or as text made by `human`.
fn render<T: Serialize + ?Sized>(
    json: bool,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> Result<String, Error> {
    if json {
        serde_json::to_string_pretty(value)
            .map_err(|e| Error::failed(ErrorKind::Internal, format!("cannot print JSON: {e}")))
    } else {
        Ok(human(value))
    }
}

fn format_status(s: &Status) -> String {
    let count = |state: &str| s.circuits.iter().filter(|c| c.state == state).count();
    let c = &s.counters;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bootstrap: {}% ({})",
        s.bootstrap.percent, s.bootstrap.phase
    );
    let _ = writeln!(out, "proxy:     {}", if s.enabled { "on" } else { "off" });
    let _ = writeln!(out, "relays:    {}", s.relays);
    match &s.consensus {
        Some(k) => {
            let _ = writeln!(
                out,
                "consensus: {} relays, signed by {} of {} authorities, valid until {} (digest {})",
                k.relays,
                k.signatures,
                k.authorities,
                k.valid_until,
                k.digest.get(..16).unwrap_or(&k.digest)
            );
        }
        None => {
            let _ = writeln!(out, "consensus: none yet");
        }
    }
    let _ = writeln!(
        out,
        "circuits:  {} ({} clean, {} in use, {} retired); {} built, {} failed",
        s.circuits.len(),
        count("clean"),
        count("in use"),
        count("retired"),
        c.circuits_built,
        c.circuit_build_failures
    );
    let _ = writeln!(
        out,
        "streams:   {} open; {} opened, {} failed",
        s.streams, c.streams_opened, c.stream_failures
    );
    let _ = writeln!(
        out,
        "traffic:   {} sent, {} received",
        bytes(c.bytes_sent),
        bytes(c.bytes_received)
    );
    out
}

fn format_circuits(circuits: &[CircuitInfo]) -> String {
    if circuits.is_empty() {
        return "no circuits".to_owned();
    }
    let mut out = format!(
        "{:>6}  {:<8}  {:>7}  {:>9}  {:>7}  {:<15}  PATH (guard → middle → exit)\n",
        "ID", "STATE", "AGE", "BUILD", "STREAMS", "HANDSHAKE"
    );
    for c in circuits {
        // One name when every hop ran the same handshake; else "mixed" and each hop's
        // handshake beside it (chosen per hop, protocol §9.2).
        let mixed = c.handshakes.windows(2).any(|w| w.first() != w.last());
        let path: Vec<String> = c
            .path
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let short = id.get(..SHORT_ID).unwrap_or(id);
                match c.handshakes.get(i) {
                    Some(h) if mixed => format!("{short} ({h})"),
                    _ => short.to_owned(),
                }
            })
            .collect();
        let handshake = if mixed {
            "mixed"
        } else {
            c.handshakes.first().map_or("-", String::as_str)
        };
        let _ = writeln!(
            out,
            "{:>6}  {:<8}  {:>7}  {:>6.1} ms  {:>7}  {:<15}  {}",
            c.id,
            c.state,
            age(c.age_secs),
            c.build_ms,
            c.streams,
            handshake,
            path.join(" → ")
        );
    }
    out
}

fn format_services(services: &[ServiceInfo]) -> String {
    if services.is_empty() {
        return "no hidden services".to_owned();
    }
    let mut out = String::new();
    for s in services {
        let _ = writeln!(
            out,
            "{}:{} → {} ({})",
            s.address,
            s.port,
            s.target,
            if s.published {
                "published"
            } else {
                "not published"
            }
        );
    }
    out
}

/// `42s`, `3m05s`, `2h03m`.
fn age(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `512 B`, `1.5 KiB`, `64.0 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use anonnet_control::{Bootstrap, Counters};

    #[test]
    fn human_status_shows_progress_proxy_circuits_and_bytes() {
        let status = Status {
            enabled: false,
            bootstrap: Bootstrap {
                percent: 40,
                phase: "building first circuit".into(),
            },
            relays: 5,
            circuits: vec![CircuitInfo {
                id: 3,
                path: vec![
                    "a1b2c3d4".repeat(8),
                    "e5f6a7b8".repeat(8),
                    "01234567".repeat(8),
                ],
                addresses: vec![
                    "10.1.0.1:4000".into(),
                    "10.2.0.1:4000".into(),
                    "10.3.0.1:4000".into(),
                ],
                age_secs: 65.2,
                build_ms: 4.25,
                streams: 1,
                state: "in use".into(),
                handshakes: vec!["x25519+mlkem768".into(); 3],
                protocol: 2,
            }],
            streams: 1,
            guards: Vec::new(),
            vanguards: Vec::new(),
            avoided_relays: Vec::new(),
            counters: Counters {
                bytes_sent: 512,
                bytes_received: 64 << 20,
                ..Counters::default()
            },
            hs_pow: Vec::new(),
            consensus: Some(anonnet_control::ConsensusInfo {
                valid_after: 10,
                fresh_until: 14,
                valid_until: 22,
                relays: 5,
                signatures: 2,
                authorities: 3,
                digest: "ab".repeat(32),
            }),
        };
        let text = format_status(&status);
        assert!(
            text.contains("consensus: 5 relays, signed by 2 of 3 authorities"),
            "{text}"
        );
        assert!(
            text.contains("bootstrap: 40% (building first circuit)"),
            "{text}"
        );
        assert!(text.contains("proxy:     off"), "{text}");
        assert!(text.contains("1 in use"), "{text}");
        assert!(text.contains("512 B sent, 64.0 MiB received"), "{text}");
        let table = format_circuits(&status.circuits);
        assert!(table.contains("a1b2c3d4 → e5f6a7b8 → 01234567"), "{table}");
        assert!(
            table.contains("1m05s") && table.contains("4.2 ms"),
            "{table}"
        );
        assert_eq!(format_circuits(&[]), "no circuits");
        let mut mixed = status.circuits[0].clone();
        mixed.handshakes[1] = "x25519".into();
        let table = format_circuits(&[mixed]);
        assert!(
            table.contains("mixed")
                && table.contains("a1b2c3d4 (x25519+mlkem768) → e5f6a7b8 (x25519) → "),
            "{table}"
        );
    }

    #[test]
    fn ages_and_sizes_read_well() {
        assert_eq!(age(0.4), "0s");
        assert_eq!(age(59.9), "59s");
        assert_eq!(age(3600.0 * 2.0 + 180.0), "2h03m");
        assert_eq!(age(f64::NAN), "0s");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}

/// One relay of `anonnet consensus --json`.
#[derive(Debug, Serialize)]
struct ConsensusRelay {
    node_id: String,
    address: String,
    flags: Vec<&'static str>,
    /// The circuit handshakes the relay answers (protocol §14.3): `"x25519"` (type 1),
    /// `"x25519+mlkem768"` (type 2).
    handshakes: Vec<&'static str>,
    /// Consensus weight (bytes per second, measured).
    weight: u32,
    /// Exit ports, `lo-hi`.
    exit_ports: Vec<String>,
}

/// `anonnet consensus --json`.
#[derive(Debug, Serialize)]
struct ConsensusListing {
    valid_after: u64,
    fresh_until: u64,
    valid_until: u64,
    /// Whether it is within its validity window now.
    valid_now: bool,
    signatures: usize,
    authorities: usize,
    digest: String,
    relays: Vec<ConsensusRelay>,
}

/// `anonnet consensus`: list the consensus saved in the client's state directory, checked
/// against the network file its config names (signatures; the time window is reported, not
/// required, so an expired one can still be inspected).
///
/// # Errors
/// A config error, or [`Error::Failed`] when there is no consensus file or it does not
/// verify.
pub fn consensus(target: Target, global_config: Option<PathBuf>) -> Result<(), Error> {
    let path = client_config_path(target.config.clone().or(global_config))?;
    let settings = config::load_client(&path)?;
    let file = settings
        .state_dir
        .join(anonnet_client::consensus::CONSENSUS_FILE);
    let bytes = std::fs::read(&file).map_err(|e| {
        Error::failed(
            ErrorKind::NotReady,
            format!(
                "no consensus at {}: {e} (the client saves one once it has bootstrapped)",
                file.display()
            ),
        )
    })?;
    let signed = anonnet_dir::SignedConsensus::decode(&bytes)
        .map_err(|e| Error::failed(e.kind(), format!("{}: {e}", file.display())))?;
    let c = signed
        .verify_signed(&settings.network)
        .map_err(|e| Error::failed(e.kind(), format!("{}: {e}", file.display())))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let listing = ConsensusListing {
        valid_after: c.valid_after,
        fresh_until: c.fresh_until,
        valid_until: c.valid_until,
        valid_now: signed.verify(&settings.network, now).is_ok(),
        signatures: signed.valid_signers(&settings.network).len(),
        authorities: settings.network.authorities.len(),
        digest: hex::encode(signed.digest()),
        relays: c
            .relays
            .iter()
            .map(|e| ConsensusRelay {
                node_id: e.node_id().to_hex(),
                address: e.address.to_string(),
                flags: e.flags.names(),
                handshakes: e
                    .handshakes
                    .types()
                    .into_iter()
                    .map(|t| match t {
                        anonnet_wire::HANDSHAKE_NTOR_V1 => "x25519",
                        anonnet_wire::HANDSHAKE_HYBRID_V2 => "x25519+mlkem768",
                        _ => "unknown",
                    })
                    .collect(),
                weight: e.weight,
                exit_ports: e
                    .exit_ports
                    .iter()
                    .map(|r| format!("{}-{}", r.lo, r.hi))
                    .collect(),
            })
            .collect(),
    };
    if target.json {
        let text = serde_json::to_string_pretty(&listing)
            .map_err(|e| Error::failed(ErrorKind::Internal, format!("encoding JSON: {e}")))?;
        return print_line(&text);
    }
    let mut out = format!(
        "consensus {} (valid {}..{}, fresh until {}, {}), signed by {} of {} authorities\n",
        &listing.digest[..16],
        listing.valid_after,
        listing.valid_until,
        listing.fresh_until,
        if listing.valid_now {
            "valid now"
        } else {
            "NOT valid now"
        },
        listing.signatures,
        listing.authorities,
    );
    for r in &listing.relays {
        let _ = writeln!(
            out,
            "  {}  {:<22} {:>12} B/s  {}",
            &r.node_id[..SHORT_ID.min(r.node_id.len())],
            r.address,
            r.weight,
            r.flags.join(" ")
        );
    }
    print_line(out.trim_end())
}
