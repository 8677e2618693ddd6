//! Configuration files: TOML, every key validated, relative paths resolved against the
//! directory of the file that names them. The documented defaults live in `config/`.
//!
//! Each error names the file, the line when known, the key (`relay.listen`) and what is
//! allowed, because a config error is the first thing a new operator sees.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anonnet_relay::onion_keys::OnionKeyConfig;
use anonnet_relay::{Action, ExitPolicy, ExitRule, HsDirBehaviour, Limits, RelayConfig};
use anonnet_wire::{HandshakeSet, PortRange, SignedDescriptor};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

/// Default SOCKS5 listener of the client (and of the testnet).
pub const DEFAULT_SOCKS: &str = "127.0.0.1:9050";
/// Default HTTP proxy listener of the client (and of the testnet).
pub const DEFAULT_HTTP: &str = "127.0.0.1:9080";
/// Default control API listener of the client: loopback, a free port (the CLI and tray
/// find it in `ports.json`).
pub const DEFAULT_CONTROL: &str = "127.0.0.1:0";
/// Most pre-built clean exit circuits `client.pool_size` may ask for.
pub const MAX_POOL_SIZE: u64 = 32;
/// Most pre-built hidden-service prefixes `client.hs_prefixes` may ask for.
pub const MAX_HS_PREFIXES: u64 = 8;
/// Longest `client.max_circuit_dirtiness_secs` (one day).
pub const MAX_DIRTINESS_SECS: u64 = 86_400;
/// Default UDP address of a relay's QUIC listener.
pub const DEFAULT_RELAY_LISTEN: &str = "0.0.0.0:9001";
/// Default advertised relay bandwidth (bytes per second).
pub const DEFAULT_BANDWIDTH: u32 = 10_000_000;
/// What `client.network` / `relay.network` say when missing.
const NETWORK_REQUIRED: &str = "is required: the network file (TOML) listing the network's \
     directory authorities, e.g. network = \"network.toml\". `anonnet testnet` writes one as \
     DIR/network.toml; a public network publishes its own";
/// Default number of relays in a testnet.
pub const DEFAULT_TESTNET_RELAYS: usize = 5;
/// Fewest relays in a testnet (guard, middle, exit).
pub const MIN_TESTNET_RELAYS: usize = 3;
/// Most relays in a testnet (each is a process).
pub const MAX_TESTNET_RELAYS: usize = 64;
/// Exit policy of testnet relays: loopback only (the default rules then reject every
/// other private range; public addresses stay allowed).
pub const TESTNET_EXIT_POLICY: &[&str] = &["accept 127.0.0.0/8:*", "accept [::1]/128:*"];

/// Exit policy of `anonnet testnet --wan`'s relays: the emulated hosts' 10.0.0.0/8 (the
/// demo site and every process each have an address in it; nothing there is routed
/// outside the machine).
pub const TESTNET_WAN_EXIT_POLICY: &[&str] = &["accept 10.0.0.0/8:*"];

/// The allowed forms of an exit policy line, quoted in errors.
const POLICY_SYNTAX: &str = "expected \"accept|reject NET:PORTS\" where NET is a CIDR \
     (10.0.0.0/8, [fd00::]/8), a bare IP (1.2.3.4, [::1]) or * (any; *4 / *6 for one \
     family) and PORTS is *, N or N-M (1..=65535), e.g. \"accept 127.0.0.0/8:*\" or \
     \"reject *:25\"";

// Where the OS keeps our files is shared with the CLI and the tray, so it lives in
// anonnet-control (`locate`).
pub use anonnet_control::locate::{default_client_config, project_dirs};

/// A config file that cannot be read or is not valid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file does not exist or cannot be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is read but a key or value is not allowed.
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value, when known.
        line: Option<usize>,
        /// Dotted key (`relay.listen`, `client.bootstrap[2]`), when known.
        key: Option<String>,
        /// What is wrong and what is allowed.
        why: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "config file {}: cannot read: {source}", path.display())
            }
            ConfigError::Invalid {
                path,
                line,
                key,
                why,
            } => {
                write!(f, "config file {}", path.display())?;
                if let Some(line) = line {
                    write!(f, ", line {line}")?;
                }
                if let Some(key) = key {
                    write!(f, ", key `{key}`")?;
                }
                write!(f, ": {why}")
            }
        }
    }
}

impl anonnet_error::HasKind for ConfigError {
    /// A file that does not exist is [`anonnet_error::ErrorKind::NotFound`], one that
    /// cannot be read for permissions [`anonnet_error::ErrorKind::Permission`]; a key or
    /// value that is not allowed is [`anonnet_error::ErrorKind::Config`].
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            ConfigError::Read { source, .. } => match anonnet_error::HasKind::kind(source) {
                k @ (anonnet_error::ErrorKind::NotFound | anonnet_error::ErrorKind::Permission) => {
                    k
                }
                _ => anonnet_error::ErrorKind::Config,
            },
            ConfigError::Invalid { .. } => anonnet_error::ErrorKind::Config,
        }
    }
}

/// Largest file a config names that is read into memory (a relay descriptor file is one
/// base64 line of about 200 bytes): 64 KiB, so a mistaken path (a log, `/dev/zero`) gets
/// an error instead of filling memory.
pub const MAX_NAMED_FILE_BYTES: u64 = 64 * 1024;

/// A file being loaded: its path, its text and the directory relative paths start from.
struct Source {
    path: PathBuf,
    dir: PathBuf,
    text: String,
    /// Whether the files the config names (relay descriptors) are read; when not, they
    /// count as unreadable ([`check_text`]).
    read_named_files: bool,
}

impl Source {
    fn read(path: &Path) -> Result<Source, ConfigError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Source::new(path, text, true))
    }

    fn new(path: PathBuf, text: String, read_named_files: bool) -> Source {
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Source {
            path,
            dir,
            text,
            read_named_files,
        }
    }

    /// The text of a file the config names, at most [`MAX_NAMED_FILE_BYTES`].
    fn read_named(&self, path: &Path) -> std::io::Result<String> {
        use std::io::Read;
        if !self.read_named_files {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "files named by the config are not read in a text-only check",
            ));
        }
        let mut text = String::new();
        std::fs::File::open(path)?
            .take(MAX_NAMED_FILE_BYTES + 1)
            .read_to_string(&mut text)?;
        if text.len() as u64 > MAX_NAMED_FILE_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {MAX_NAMED_FILE_BYTES} bytes"),
            ));
        }
        Ok(text)
    }

    /// The file deserialized into `T`: toml parses it, and `serde_path_to_error` names the
    /// key whose value (or whose name, for an unknown key) was refused.
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let invalid = |e: &toml::de::Error, key: Option<String>| ConfigError::Invalid {
            path: self.path.clone(),
            line: e.span().map(|s| self.line_of(s.start)),
            key,
            why: e.message().trim().to_owned(),
        };
        let document = toml::Deserializer::parse(&self.text).map_err(|e| invalid(&e, None))?;
        serde_path_to_error::deserialize(document)
            .map_err(|e| invalid(e.inner(), dotted_key(e.path())))
    }

    fn line_of(&self, offset: usize) -> usize {
        let before = self.text.get(..offset).unwrap_or(&self.text);
        before.matches('\n').count() + 1
    }

    /// An error about `key`, located at `span` when the value came from the file.
    fn invalid<T>(
        &self,
        key: impl Into<String>,
        at: Option<&Spanned<T>>,
        why: String,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            line: at.map(|s| self.line_of(s.span().start)),
            key: Some(key.into()),
            why,
        }
    }

    /// `value` as a path, relative ones taken from the config file's directory.
    fn path(&self, value: &str) -> PathBuf {
        self.dir.join(value)
    }
}

/// `path` as the dotted key a person writes (`client.socks_listen`, `authorities[0].name`),
/// without the segment toml's `Spanned` adds; `None` for the document itself.
fn dotted_key(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key: k } if k.starts_with("$__serde_spanned_private") => {}
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Unknown => key.push_str(".?"),
        }
    }
    (!key.is_empty()).then_some(key)
}

fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value.trim().parse().map_err(|_| {
        format!("{value:?} is not an address; expected IP:PORT such as \"127.0.0.1:9001\" or \"[::1]:9001\"")
    })
}

fn check_range(value: u64, lo: u64, hi: u64, unit: &str) -> Result<u64, String> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{value} is out of range; allowed {lo}..={hi} {unit}"
        ))
    }
}

// ---------------------------------------------------------------- exit policy lines

/// Parse one Tor-like exit policy line, `ACTION NET:PORTS`. `*` as NET expands to one rule
/// per address family.
///
/// # Errors
/// A message naming the part that is wrong and the allowed syntax.
pub fn parse_policy_line(line: &str) -> Result<Vec<ExitRule>, String> {
    let mut words = line.split_whitespace();
    let (Some(action), Some(target), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("{line:?}: {POLICY_SYNTAX}"));
    };
    let action = match action.to_ascii_lowercase().as_str() {
        "accept" => Action::Accept,
        "reject" => Action::Reject,
        other => {
            return Err(format!(
                "{line:?}: action {other:?} is not accept or reject; {POLICY_SYNTAX}"
            ))
        }
    };
    let Some((net, ports)) = target.rsplit_once(':') else {
        return Err(format!("{line:?}: missing \":PORTS\"; {POLICY_SYNTAX}"));
    };
    let ports = parse_ports(ports).map_err(|why| format!("{line:?}: {why}; {POLICY_SYNTAX}"))?;
    let nets = parse_net(net).map_err(|why| format!("{line:?}: {why}; {POLICY_SYNTAX}"))?;
    Ok(nets
        .into_iter()
        .map(|net| ExitRule { action, net, ports })
        .collect())
}

fn parse_ports(ports: &str) -> Result<PortRange, String> {
    if ports == "*" {
        return Ok(PortRange::ALL);
    }
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!("port {p:?} is not a number in 1..=65535")),
        }
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("port range {ports:?} runs backwards"));
    }
    Ok(PortRange { lo, hi })
}

fn parse_net(net: &str) -> Result<Vec<IpNet>, String> {
    let any: &[&str] = match net {
        "*" => &["0.0.0.0/0", "::/0"],
        "*4" => &["0.0.0.0/0"],
        "*6" => &["::/0"],
        one => return parse_one_net(one).map(|n| vec![n]),
    };
    any.iter().map(|n| parse_one_net(n)).collect()
}

/// A CIDR or a bare IP (a /32 or /128), IPv6 optionally in brackets (`[::1]/128`).
fn parse_one_net(net: &str) -> Result<IpNet, String> {
    let unbracketed;
    let bare = if let Some(rest) = net.strip_prefix('[') {
        let Some((addr, len)) = rest.split_once(']') else {
            return Err(format!("address {net:?} has no closing ']'"));
        };
        unbracketed = format!("{addr}{len}");
        unbracketed.as_str()
    } else {
        net
    };
    let parsed = if bare.contains('/') {
        bare.parse::<IpNet>().map(|n| n.trunc()).ok()
    } else {
        bare.parse::<IpAddr>().map(IpNet::from).ok()
    };
    parsed.ok_or_else(|| format!("address {net:?} is not a CIDR, an IP or *"))
}

fn parse_policy(
    src: &Source,
    key: &str,
    lines: &[Spanned<String>],
) -> Result<Vec<ExitRule>, ConfigError> {
    let mut rules = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let parsed = parse_policy_line(line.get_ref())
            .map_err(|why| src.invalid(format!("{key}[{i}]"), Some(line), why))?;
        rules.extend(parsed);
    }
    Ok(rules)
}

/// Read and parse the relay descriptor files listed under `key` (paths relative to the
/// config file); an error names `key[i]`, the file and what is wrong.
fn read_descriptors(
    src: &Source,
    key: &str,
    entries: &[Spanned<String>],
) -> Result<Vec<SignedDescriptor>, ConfigError> {
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("{key}[{i}]");
        let desc_path = src.path(entry.get_ref());
        let text = src.read_named(&desc_path).map_err(|e| {
            src.invalid(
                &key,
                Some(entry),
                format!(
                    "cannot read relay descriptor file {}: {e}",
                    desc_path.display()
                ),
            )
        })?;
        let desc = SignedDescriptor::from_base64(&text).map_err(|e| {
            src.invalid(
                &key,
                Some(entry),
                format!(
                    "{} is not a relay descriptor (one base64 line as written by \
                     `anonnet relay`): {e}",
                    desc_path.display()
                ),
            )
        })?;
        out.push(desc);
    }
    Ok(out)
}

// ---------------------------------------------------------------- relay

/// `[log]`, in every role's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    /// `log.safe`: scrub destinations, `.anon`/`.dark` names, circuit paths and client
    /// addresses from logs (default true).
    safe: Option<bool>,
}

/// `[metrics]`, in every role's config: the Prometheus endpoint (off without `listen`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    listen: Option<Spanned<String>>,
}

/// `relay.circuit_handshakes`: the circuit handshake types the relay answers and
/// advertises (`docs/protocol.md` §3.1, §4.2), by the names `circuits --json` shows;
/// default both.
fn circuit_handshakes_of(
    src: &Source,
    names: Option<&Spanned<Vec<Spanned<String>>>>,
) -> Result<HandshakeSet, ConfigError> {
    const ALLOWED: &str =
        "use \"x25519\" (type 1, classical) and/or \"x25519+mlkem768\" (type 2, hybrid)";
    let Some(list) = names else {
        return Ok(HandshakeSet::ALL);
    };
    let mut set: Option<HandshakeSet> = None;
    for (i, name) in list.get_ref().iter().enumerate() {
        let one = match name.get_ref().as_str() {
            "x25519" => HandshakeSet::NTOR,
            "x25519+mlkem768" => HandshakeSet::HYBRID,
            other => {
                return Err(src.invalid(
                    format!("relay.circuit_handshakes[{i}]"),
                    Some(name),
                    format!("{other:?} is not a circuit handshake: {ALLOWED}"),
                ))
            }
        };
        set = Some(set.map_or(one, |s| s.union(one)));
    }
    set.ok_or_else(|| {
        src.invalid(
            "relay.circuit_handshakes",
            Some(list),
            format!("the list is empty: a relay answers at least one handshake; {ALLOWED} (default: both)"),
        )
    })
}

/// `relay.test_hsdir_behaviour`: `"honest"` (default), or, for tests of clients against
/// hostile HSDirs (`anonnet testnet --withholding-hsdirs/--stale-hsdirs`),
/// `"withhold"` or `"stale"` (`docs/protocol.md` §12.7).
fn hsdir_behaviour_of(
    src: &Source,
    value: Option<&Spanned<String>>,
) -> Result<HsDirBehaviour, ConfigError> {
    let Some(v) = value else {
        return Ok(HsDirBehaviour::Honest);
    };
    match v.get_ref().as_str() {
        "honest" => Ok(HsDirBehaviour::Honest),
        "withhold" => Ok(HsDirBehaviour::Withhold),
        "stale" => Ok(HsDirBehaviour::Stale),
        other => Err(src.invalid(
            "relay.test_hsdir_behaviour",
            Some(v),
            format!("{other:?} is not allowed: use \"honest\" (default), or, in test networks only, \"withhold\" or \"stale\""),
        )),
    }
}

/// `relay.test_squat_dark_name`: absent (honest), or, in test networks only
/// (`anonnet testnet --squatting-relays`), a `.dark` name this relay claims with a
/// back-dated record of its own (`docs/protocol.md` §12.5).
fn squat_name_of(
    src: &Source,
    value: Option<&Spanned<String>>,
) -> Result<Option<String>, ConfigError> {
    let Some(v) = value else {
        return Ok(None);
    };
    match anonnet_crypto::dark::DarkName::parse(v.get_ref()) {
        Ok(name) => Ok(Some(name.as_str().to_owned())),
        Err(e) => Err(src.invalid(
            "relay.test_squat_dark_name",
            Some(v),
            format!("{e}: a .dark name, for hostile test relays only"),
        )),
    }
}

/// `metrics.listen`, parsed: `None` when metrics are off.
fn metrics_listen_of(src: &Source, m: &MetricsSection) -> Result<Option<SocketAddr>, ConfigError> {
    m.listen
        .as_ref()
        .map(|l| {
            parse_listen(l.get_ref()).map_err(|why| src.invalid("metrics.listen", Some(l), why))
        })
        .transpose()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayFile {
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    relay: RelaySection,
    #[serde(default)]
    exit: ExitSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    dht: DhtSection,
    #[serde(default)]
    metrics: MetricsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DhtSection {
    #[serde(default)]
    bootstrap: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelaySection {
    data_dir: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    advertise: Option<Spanned<String>>,
    guard: Option<bool>,
    bandwidth: Option<Spanned<u32>>,
    descriptor_file: Option<Spanned<String>>,
    network: Option<Spanned<String>>,
    circuit_handshakes: Option<Spanned<Vec<Spanned<String>>>>,
    test_hsdir_behaviour: Option<Spanned<String>>,
    test_squat_dark_name: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExitSection {
    enabled: Option<bool>,
    #[serde(default)]
    policy: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_circuits: Option<Spanned<u64>>,
    max_streams_per_circuit: Option<Spanned<u64>>,
    connect_timeout_secs: Option<Spanned<u64>>,
    max_links: Option<Spanned<u64>>,
    max_intro_points: Option<Spanned<u64>>,
    max_pending_rendezvous: Option<Spanned<u64>>,
    max_dht_requests: Option<Spanned<u64>>,
    max_inbound_links: Option<Spanned<u64>>,
    max_inbound_links_per_ip: Option<Spanned<u64>>,
    max_circuits_per_relay: Option<Spanned<u64>>,
    max_circuits_per_client_ip: Option<Spanned<u64>>,
    max_pending_streams_per_link: Option<Spanned<u64>>,
    first_byte_timeout_secs: Option<Spanned<u64>>,
    max_exit_dns_lookups: Option<Spanned<u64>>,
    onion_key_lifetime_days: Option<Spanned<u64>>,
    onion_key_grace_days: Option<Spanned<u64>>,
}

/// A loaded relay config file.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The file it came from (absolute).
    pub file: PathBuf,
    /// What to start the relay with. `descriptor_file` is always set.
    pub relay: RelayConfig,
    /// Where the relay writes its descriptor.
    pub descriptor_file: PathBuf,
    /// `log.safe` (default true).
    pub safe_logging: bool,
    /// `metrics.listen`: the Prometheus endpoint's TCP address (`None`: off).
    pub metrics_listen: Option<SocketAddr>,
}

/// Load and validate a relay config file.
///
/// # Errors
/// [`ConfigError`] naming the file, key and allowed values.
pub fn load_relay(path: &Path) -> Result<RelaySettings, ConfigError> {
    relay_from(&Source::read(path)?)
}

fn relay_from(src: &Source) -> Result<RelaySettings, ConfigError> {
    let file: RelayFile = src.parse()?;
    let r = &file.relay;

    let data_dir = match &r.data_dir {
        Some(d) => src.path(d.get_ref()),
        None => project_dirs()
            .map(|p| p.data_dir().join("relay"))
            .ok_or_else(|| {
                src.invalid(
                    "relay.data_dir",
                    None::<&Spanned<()>>,
                    "no default: this user has no home directory; set a directory".into(),
                )
            })?,
    };
    let listen = match &r.listen {
        Some(l) => {
            parse_addr(l.get_ref()).map_err(|why| src.invalid("relay.listen", Some(l), why))?
        }
        None => parse_addr(DEFAULT_RELAY_LISTEN)
            .map_err(|why| src.invalid("relay.listen", None::<&Spanned<()>>, why))?,
    };
    let advertise = match &r.advertise {
        Some(a) => {
            let addr = parse_addr(a.get_ref())
                .map_err(|why| src.invalid("relay.advertise", Some(a), why))?;
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(src.invalid(
                    "relay.advertise",
                    Some(a),
                    format!("{addr} is not reachable; expected the public IP:PORT of this relay"),
                ));
            }
            Some(addr)
        }
        None => None,
    };
    if advertise.is_none() && listen.ip().is_unspecified() {
        return Err(src.invalid(
            "relay.advertise",
            r.listen.as_ref(),
            format!(
                "required because `relay.listen` ({listen}) is an unspecified address; \
                 set it to the public IP:PORT clients reach this relay at"
            ),
        ));
    }
    let bandwidth = match &r.bandwidth {
        Some(b) if *b.get_ref() == 0 => {
            return Err(src.invalid(
                "relay.bandwidth",
                Some(b),
                format!("0 is not allowed; bytes per second, 1..={}", u32::MAX),
            ))
        }
        Some(b) => *b.get_ref(),
        None => DEFAULT_BANDWIDTH,
    };
    let descriptor_file = r
        .descriptor_file
        .as_ref()
        .map_or_else(|| data_dir.join("descriptor"), |d| src.path(d.get_ref()));

    let exit_policy = if file.exit.enabled.unwrap_or(false) {
        Some(ExitPolicy::with_rules(parse_policy(
            src,
            "exit.policy",
            &file.exit.policy,
        )?))
    } else {
        // Still validate the lines, so a typo is found before the exit is turned on.
        parse_policy(src, "exit.policy", &file.exit.policy)?;
        None
    };

    let defaults = Limits::default();
    let l = &file.limits;
    let limit = |key: &str, v: &Option<Spanned<u64>>, default: u64, hi: u64, unit: &str| match v {
        Some(s) => check_range(*s.get_ref(), 1, hi, unit)
            .map_err(|why| src.invalid(format!("limits.{key}"), Some(s), why)),
        None => Ok(default),
    };
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    const DAY: u64 = 86_400;
    let lifetime_days = limit(
        "onion_key_lifetime_days",
        &l.onion_key_lifetime_days,
        defaults.onion_keys.lifetime.as_secs() / DAY,
        365,
        "days",
    )?;
    let grace_days = limit(
        "onion_key_grace_days",
        &l.onion_key_grace_days,
        defaults.onion_keys.grace.as_secs() / DAY,
        365,
        "days",
    )?;
    if grace_days > lifetime_days {
        // The relay keeps one previous key: a longer grace would be cut at the next rotation.
        let (key, at) = match &l.onion_key_grace_days {
            Some(g) => ("limits.onion_key_grace_days", Some(g)),
            None => (
                "limits.onion_key_lifetime_days",
                l.onion_key_lifetime_days.as_ref(),
            ),
        };
        return Err(src.invalid(
            key,
            at,
            format!(
                "the onion key grace ({grace_days} days) must not exceed its lifetime \
                 ({lifetime_days} days)"
            ),
        ));
    }
    let limits = Limits {
        max_circuits: as_usize(limit(
            "max_circuits",
            &l.max_circuits,
            as_u64(defaults.max_circuits),
            1_000_000,
            "circuits",
        )?),
        max_streams_per_circuit: as_usize(limit(
            "max_streams_per_circuit",
            &l.max_streams_per_circuit,
            as_u64(defaults.max_streams_per_circuit),
            65_535,
            "streams",
        )?),
        connect_timeout: Duration::from_secs(limit(
            "connect_timeout_secs",
            &l.connect_timeout_secs,
            defaults.connect_timeout.as_secs(),
            600,
            "seconds",
        )?),
        max_links: as_usize(limit(
            "max_links",
            &l.max_links,
            as_u64(defaults.max_links),
            1_000_000,
            "links",
        )?),
        max_intro_points: as_usize(limit(
            "max_intro_points",
            &l.max_intro_points,
            as_u64(defaults.max_intro_points),
            1_000_000,
            "registrations",
        )?),
        max_pending_rendezvous: as_usize(limit(
            "max_pending_rendezvous",
            &l.max_pending_rendezvous,
            as_u64(defaults.max_pending_rendezvous),
            1_000_000,
            "circuits",
        )?),
        max_dht_requests: as_usize(limit(
            "max_dht_requests",
            &l.max_dht_requests,
            as_u64(defaults.max_dht_requests),
            10_000,
            "requests",
        )?),
        max_inbound_links: as_usize(limit(
            "max_inbound_links",
            &l.max_inbound_links,
            as_u64(defaults.max_inbound_links),
            1_000_000,
            "links",
        )?),
        max_inbound_links_per_ip: as_usize(limit(
            "max_inbound_links_per_ip",
            &l.max_inbound_links_per_ip,
            as_u64(defaults.max_inbound_links_per_ip),
            1_000_000,
            "links",
        )?),
        max_circuits_per_relay: as_usize(limit(
            "max_circuits_per_relay",
            &l.max_circuits_per_relay,
            as_u64(defaults.max_circuits_per_relay),
            1_000_000,
            "circuits",
        )?),
        max_circuits_per_client_ip: as_usize(limit(
            "max_circuits_per_client_ip",
            &l.max_circuits_per_client_ip,
            as_u64(defaults.max_circuits_per_client_ip),
            1_000_000,
            "circuits",
        )?),
        max_pending_streams_per_link: as_usize(limit(
            "max_pending_streams_per_link",
            &l.max_pending_streams_per_link,
            as_u64(defaults.max_pending_streams_per_link),
            4096,
            "streams",
        )?),
        first_byte_timeout: Duration::from_secs(limit(
            "first_byte_timeout_secs",
            &l.first_byte_timeout_secs,
            defaults.first_byte_timeout.as_secs(),
            600,
            "seconds",
        )?),
        max_exit_dns_lookups: as_usize(limit(
            "max_exit_dns_lookups",
            &l.max_exit_dns_lookups,
            as_u64(defaults.max_exit_dns_lookups),
            512,
            "lookups",
        )?),
        onion_keys: OnionKeyConfig {
            lifetime: Duration::from_secs(lifetime_days * DAY),
            grace: Duration::from_secs(grace_days * DAY),
        },
    };

    Ok(RelaySettings {
        file: src.path.clone(),
        relay: RelayConfig {
            data_dir,
            listen,
            advertise,
            exit_policy,
            guard: r.guard.unwrap_or(true),
            circuit_handshakes: circuit_handshakes_of(src, r.circuit_handshakes.as_ref())?,
            bandwidth,
            descriptor_file: Some(descriptor_file.clone()),
            limits,
            dht_bootstrap: read_descriptors(src, "dht.bootstrap", &file.dht.bootstrap)?,
            network: Some(network_of(src, "relay.network", r.network.as_ref())?),
            hsdir_behaviour: hsdir_behaviour_of(src, r.test_hsdir_behaviour.as_ref())?,
            squat_dark_name: squat_name_of(src, r.test_squat_dark_name.as_ref())?,
        },
        descriptor_file,
        safe_logging: file.log.safe.unwrap_or(true),
        metrics_listen: metrics_listen_of(src, &file.metrics)?,
    })
}

// ---------------------------------------------------------------- client

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    client: ClientSection,
    /// `[[service]]` tables: hidden services to publish.
    #[serde(default)]
    service: Vec<ServiceSection>,
    /// `[names]`: the local `.dark` address book, `name = "<address>.anon"`.
    #[serde(default)]
    names: std::collections::BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    metrics: MetricsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    target: Option<Spanned<String>>,
    port: Option<Spanned<u64>>,
    name: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    pow: Option<Spanned<bool>>,
    pow_queue_bound: Option<Spanned<u64>>,
    pow_max_effort: Option<Spanned<u64>>,
    pow_min_effort: Option<Spanned<u64>>,
}

/// The default key file of a service published for `target` (in the state directory):
/// `services/<ip>-<port>/service.key`.
pub fn default_service_key(state_dir: &Path, target: SocketAddr) -> PathBuf {
    let label = format!("{}-{}", target.ip(), target.port()).replace(':', "_");
    state_dir.join("services").join(label).join("service.key")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientSection {
    socks_listen: Option<Spanned<String>>,
    http_listen: Option<Spanned<String>>,
    control_listen: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    network: Option<Spanned<String>>,
    #[serde(default)]
    bootstrap: Vec<Spanned<String>>,
    circuit_build_timeout_secs: Option<Spanned<u64>>,
    stream_timeout_secs: Option<Spanned<u64>>,
    handshake_timeout_secs: Option<Spanned<u64>>,
    pool_size: Option<Spanned<u64>>,
    hs_prefixes: Option<Spanned<u64>>,
    max_circuit_dirtiness_secs: Option<Spanned<u64>>,
    allow_same_subnet_paths: Option<Spanned<bool>>,
    hs_pow_max_effort: Option<Spanned<u64>>,
    circuit_handshake: Option<Spanned<String>>,
    guard_lifetime_secs: Option<Spanned<u64>>,
    guard_drop_unlisted_secs: Option<Spanned<u64>>,
}

/// A loaded client config file.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The file it came from (absolute).
    pub file: PathBuf,
    /// Where to bind the SOCKS5 listener (port 0 for "auto").
    pub socks_listen: SocketAddr,
    /// Where to bind the HTTP proxy listener (port 0 for "auto").
    pub http_listen: SocketAddr,
    /// Where to bind the control API (loopback only; port 0 for "auto").
    pub control_listen: SocketAddr,
    /// Where `ports.json` (and later guards and keys) live.
    pub state_dir: PathBuf,
    /// `client.network`: the network's directory authorities.
    pub network: anonnet_dir::Network,
    /// `client.bootstrap`: fallback relays' descriptors, asked for the consensus when no
    /// authority answers (signatures are checked by the client).
    pub bootstrap: Vec<SignedDescriptor>,
    /// `client.circuit_build_timeout_secs`, when set.
    pub circuit_build_timeout: Option<Duration>,
    /// `client.stream_timeout_secs`, when set.
    pub stream_timeout: Option<Duration>,
    /// `client.handshake_timeout_secs`, when set: how long a SOCKS client may take to
    /// send its handshake and request, and an HTTP client a request head.
    pub handshake_timeout: Option<Duration>,
    /// `client.pool_size`: clean exit circuits kept ready, 1..=[`MAX_POOL_SIZE`], when set.
    pub pool_size: Option<usize>,
    /// `client.hs_prefixes`: guard → vanguard prefixes kept built for hidden-service
    /// circuits, 0..=[`MAX_HS_PREFIXES`] (0: none), when set.
    pub hs_prefixes: Option<usize>,
    /// `client.max_circuit_dirtiness_secs`: a circuit takes no new streams this long after
    /// its first use, when set.
    pub max_dirtiness: Option<Duration>,
    /// `client.allow_same_subnet_paths` (default false): let relays of one /16 or /32
    /// share a path — only for test networks on one machine.
    pub allow_same_subnet: bool,
    /// `client.hs_pow_max_effort`: the most proof-of-work effort spent on one
    /// introduction to a hidden service (protocol §13.9), 0..=2^32−1, when set.
    pub hs_pow_max_effort: Option<u32>,
    /// `client.circuit_handshake`: `"hybrid"` (X25519 + ML-KEM-768, the default) or
    /// `"classical"` (X25519 only, for measurement), protocol §5.4.
    pub circuit_handshake: anonnet_client::circuit::HandshakeKind,
    /// `[[service]]` entries: hidden services to publish at start.
    pub services: Vec<anonnet_client::ServiceConfig>,
    /// `[names]`: `.dark` names (without the suffix) resolved locally, overriding the DHT.
    pub address_book: std::collections::HashMap<String, anonnet_crypto::hs::HsAddress>,
    /// `client.guard_lifetime_secs` and `client.guard_drop_unlisted_secs`.
    pub guard_lifetimes: anonnet_client::guards::GuardLifetimes,
    /// `log.safe` (default true).
    pub safe_logging: bool,
    /// `metrics.listen`: the Prometheus endpoint's TCP address (`None`: off).
    pub metrics_listen: Option<SocketAddr>,
}

/// Parse a SOCKS listen value: `"auto"` (127.0.0.1, a free port) or `IP:PORT`.
///
/// # Errors
/// A message naming the allowed forms.
pub fn parse_socks_listen(value: &str) -> Result<SocketAddr, String> {
    parse_listen(value)
}

/// Parse a local listener address (SOCKS, HTTP): `"auto"` (127.0.0.1, a free port) or
/// `IP:PORT` (port 0 also picks a free port).
///
/// # Errors
/// A message naming the allowed forms.
pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    if value.trim().eq_ignore_ascii_case("auto") {
        return Ok(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    parse_addr(value).map_err(|why| format!("{why}, or \"auto\" to pick a free port"))
}

/// Whether two listeners would fight over one port: the same fixed port on the same IP, or
/// on any IP when either is the unspecified address. Port 0 ("auto") never clashes.
pub fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A listener key, its parsed address and its value in the file (for the line number).
type Listener<'a> = (&'a str, SocketAddr, Option<&'a Spanned<String>>);

/// The error for the first pair of `listeners` that clash, naming both keys.
fn check_listeners(src: &Source, listeners: &[Listener<'_>]) -> Result<(), ConfigError> {
    for (i, (key_a, a, _)) in listeners.iter().enumerate() {
        for (key_b, b, at_b) in listeners.iter().skip(i + 1) {
            if listeners_clash(*a, *b) {
                return Err(src.invalid(
                    *key_b,
                    *at_b,
                    format!(
                        "{b} clashes with `{key_a}` ({a}): each listener needs its own \
                         port; choose another IP:PORT or \"auto\" to pick a free port"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Parse `client.control_listen`: `"auto"` or `IP:PORT` on a loopback address (the control
/// API is local only).
///
/// # Errors
/// A message naming the allowed forms.
pub fn parse_control_listen(value: &str) -> Result<SocketAddr, String> {
    let addr = parse_listen(value)?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address; the control API is local only: use \
             \"127.0.0.1:PORT\", \"[::1]:PORT\" or \"auto\""
        ));
    }
    Ok(addr)
}

/// `client.state_dir`, resolved by the rule the CLI and the tray use to find the daemon
/// (`anonnet_control::locate::resolve_state_dir`): relative to the file, else the OS
/// state directory.
fn state_dir_of(src: &Source, c: &ClientSection) -> Result<PathBuf, ConfigError> {
    let configured = c.state_dir.as_ref().map(|d| d.get_ref().as_str());
    anonnet_control::locate::resolve_state_dir(&src.path, configured).ok_or_else(|| {
        src.invalid(
            "client.state_dir",
            None::<&Spanned<()>>,
            "no default: this user has no home directory; set a directory".into(),
        )
    })
}

/// The state directory a client config file names, for the control subcommands: the
/// file's keys are checked, but not the bootstrap descriptor files (a running daemon has
/// read them already).
///
/// # Errors
/// [`ConfigError`] naming the file, key and allowed values.
pub fn client_state_dir(path: &Path) -> Result<PathBuf, ConfigError> {
    let src = Source::read(path)?;
    let file: ClientFile = src.parse()?;
    state_dir_of(&src, &file.client)
}

/// Load and validate a client config file, reading every bootstrap descriptor file.
///
/// # Errors
/// [`ConfigError`] naming the file, key and allowed values; a missing or malformed
/// descriptor file is named too.
pub fn load_client(path: &Path) -> Result<ClientSettings, ConfigError> {
    client_from(&Source::read(path)?)
}

fn client_from(src: &Source) -> Result<ClientSettings, ConfigError> {
    let file: ClientFile = src.parse()?;
    let c = &file.client;

    let socks_listen = match &c.socks_listen {
        Some(s) => parse_socks_listen(s.get_ref())
            .map_err(|why| src.invalid("client.socks_listen", Some(s), why))?,
        None => parse_socks_listen(DEFAULT_SOCKS)
            .map_err(|why| src.invalid("client.socks_listen", None::<&Spanned<()>>, why))?,
    };
    let http_listen = match &c.http_listen {
        Some(s) => parse_listen(s.get_ref())
            .map_err(|why| src.invalid("client.http_listen", Some(s), why))?,
        None => parse_listen(DEFAULT_HTTP)
            .map_err(|why| src.invalid("client.http_listen", None::<&Spanned<()>>, why))?,
    };
    let control_listen = match &c.control_listen {
        Some(s) => parse_control_listen(s.get_ref())
            .map_err(|why| src.invalid("client.control_listen", Some(s), why))?,
        None => parse_control_listen(DEFAULT_CONTROL)
            .map_err(|why| src.invalid("client.control_listen", None::<&Spanned<()>>, why))?,
    };
    let metrics_listen = metrics_listen_of(src, &file.metrics)?;
    let mut listeners = vec![
        ("client.socks_listen", socks_listen, c.socks_listen.as_ref()),
        ("client.http_listen", http_listen, c.http_listen.as_ref()),
        (
            "client.control_listen",
            control_listen,
            c.control_listen.as_ref(),
        ),
    ];
    if let Some(m) = metrics_listen {
        listeners.push(("metrics.listen", m, file.metrics.listen.as_ref()));
    }
    check_listeners(src, &listeners)?;
    let pool_size = c
        .pool_size
        .as_ref()
        .map(|s| {
            check_range(*s.get_ref(), 1, MAX_POOL_SIZE, "circuits")
                .map(|n| usize::try_from(n).unwrap_or(1))
                .map_err(|why| src.invalid("client.pool_size", Some(s), why))
        })
        .transpose()?;
    let hs_prefixes = c
        .hs_prefixes
        .as_ref()
        .map(|s| {
            check_range(*s.get_ref(), 0, MAX_HS_PREFIXES, "prefixes")
                .map(|n| usize::try_from(n).unwrap_or(0))
                .map_err(|why| src.invalid("client.hs_prefixes", Some(s), why))
        })
        .transpose()?;
    let max_dirtiness = c
        .max_circuit_dirtiness_secs
        .as_ref()
        .map(|s| {
            check_range(*s.get_ref(), 1, MAX_DIRTINESS_SECS, "seconds")
                .map(Duration::from_secs)
                .map_err(|why| src.invalid("client.max_circuit_dirtiness_secs", Some(s), why))
        })
        .transpose()?;
    let hs_pow_max_effort = c
        .hs_pow_max_effort
        .as_ref()
        .map(|e| {
            check_range(*e.get_ref(), 0, u64::from(u32::MAX), "effort")
                .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
                .map_err(|why| src.invalid("client.hs_pow_max_effort", Some(e), why))
        })
        .transpose()?;
    let state_dir = state_dir_of(src, c)?;
    let network = network_of(src, "client.network", c.network.as_ref())?;
    let bootstrap = read_descriptors(src, "client.bootstrap", &c.bootstrap)?;
    let secs = |key: &str, v: &Option<Spanned<u64>>| -> Result<Option<Duration>, ConfigError> {
        v.as_ref()
            .map(|s| {
                check_range(*s.get_ref(), 1, 3600, "seconds")
                    .map(Duration::from_secs)
                    .map_err(|why| src.invalid(format!("client.{key}"), Some(s), why))
            })
            .transpose()
    };
    let mut services = Vec::new();
    for (i, sec) in file.service.iter().enumerate() {
        let key = |k: &str| format!("service[{i}].{k}");
        let Some(t) = &sec.target else {
            return Err(src.invalid(
                key("target"),
                None::<&Spanned<()>>,
                "is required: the local server to publish, e.g. target = \"127.0.0.1:8080\"".into(),
            ));
        };
        let target: SocketAddr = t.get_ref().parse().map_err(|_| {
            src.invalid(
                key("target"),
                Some(t),
                format!("{:?} is not IP:PORT (e.g. \"127.0.0.1:8080\")", t.get_ref()),
            )
        })?;
        let port = match &sec.port {
            Some(p) => check_range(*p.get_ref(), 1, 65535, "port")
                .map_err(|why| src.invalid(key("port"), Some(p), why))?
                as u16,
            None => 80,
        };
        let dark_name = match &sec.name {
            Some(n) => {
                let parsed = anonnet_crypto::dark::DarkName::parse(n.get_ref()).map_err(|e| {
                    src.invalid(
                        key("name"),
                        Some(n),
                        format!("{e}: 1 to 63 of a-z, 0-9 and '-', e.g. name = \"demo\""),
                    )
                })?;
                Some(parsed.as_str().to_owned())
            }
            None => None,
        };
        let key_file = match &sec.key_file {
            Some(k) => src.path(k.get_ref()),
            None => default_service_key(&state_dir, target),
        };
        // Proof of work on introductions (protocol §13.9) is on unless `pow = false`:
        // while the service is not loaded it suggests effort 0 and clients solve nothing,
        // so it costs nothing until a flood, when it is what keeps real clients served.
        let pow = if sec.pow.as_ref().is_none_or(|p| *p.get_ref()) {
            let mut cfg = anonnet_client::host::PowConfig::default();
            if let Some(b) = &sec.pow_queue_bound {
                cfg.queue_bound = check_range(*b.get_ref(), 1, 65_536, "introductions")
                    .map_err(|why| src.invalid(key("pow_queue_bound"), Some(b), why))?
                    as usize;
            }
            if let Some(e) = &sec.pow_max_effort {
                cfg.max_effort = check_range(*e.get_ref(), 1, u64::from(u32::MAX), "effort")
                    .map_err(|why| src.invalid(key("pow_max_effort"), Some(e), why))?
                    as u32;
            }
            if let Some(e) = &sec.pow_min_effort {
                cfg.min_effort = check_range(*e.get_ref(), 0, u64::from(cfg.max_effort), "effort")
                    .map_err(|why| src.invalid(key("pow_min_effort"), Some(e), why))?
                    as u32;
            }
            Some(cfg)
        } else {
            None
        };
        services.push(anonnet_client::ServiceConfig {
            target,
            port,
            key_file,
            dark_name,
            pow,
        });
    }
    let mut address_book = std::collections::HashMap::new();
    for (name, addr) in &file.names {
        let n = anonnet_crypto::dark::DarkName::parse(name).map_err(|e| {
            src.invalid(
                format!("names.{name}"),
                Some(addr),
                format!("{e}: names are 1 to 63 of a-z, 0-9 and '-'"),
            )
        })?;
        let a = anonnet_crypto::hs::HsAddress::parse(addr.get_ref()).map_err(|e| {
            src.invalid(
                format!("names.{name}"),
                Some(addr),
                format!("{e}: the value must be a <56 characters>.anon address"),
            )
        })?;
        address_book.insert(n.as_str().to_owned(), a);
    }
    let lifetime_defaults = anonnet_client::guards::GuardLifetimes::default();
    let ten_years = 3650 * 86_400;
    let guard_secs = |key: &str, v: &Option<Spanned<u64>>, default: u64| match v {
        Some(s) => check_range(*s.get_ref(), 60, ten_years, "seconds")
            .map_err(|why| src.invalid(format!("client.{key}"), Some(s), why)),
        None => Ok(default),
    };
    let guard_lifetimes = anonnet_client::guards::GuardLifetimes {
        lifetime: guard_secs(
            "guard_lifetime_secs",
            &c.guard_lifetime_secs,
            lifetime_defaults.lifetime,
        )?,
        drop_unlisted: guard_secs(
            "guard_drop_unlisted_secs",
            &c.guard_drop_unlisted_secs,
            lifetime_defaults.drop_unlisted,
        )?,
    };
    let circuit_handshake = match c.circuit_handshake.as_ref() {
        None => anonnet_client::circuit::HandshakeKind::default(),
        Some(v) => match v.get_ref().as_str() {
            "hybrid" => anonnet_client::circuit::HandshakeKind::Hybrid,
            "classical" => anonnet_client::circuit::HandshakeKind::Classical,
            other => {
                return Err(src.invalid(
                    "client.circuit_handshake",
                    Some(v),
                    format!("{other:?} is not a handshake: use \"hybrid\" (X25519 + ML-KEM-768, the default) or \"classical\" (X25519 only)"),
                ))
            }
        },
    };
    Ok(ClientSettings {
        metrics_listen,
        circuit_handshake,
        safe_logging: file.log.safe.unwrap_or(true),
        guard_lifetimes,
        services,
        address_book,
        file: src.path.clone(),
        socks_listen,
        http_listen,
        control_listen,
        state_dir,
        network,
        bootstrap,
        circuit_build_timeout: secs("circuit_build_timeout_secs", &c.circuit_build_timeout_secs)?,
        stream_timeout: secs("stream_timeout_secs", &c.stream_timeout_secs)?,
        handshake_timeout: secs("handshake_timeout_secs", &c.handshake_timeout_secs)?,
        pool_size,
        hs_prefixes,
        max_dirtiness,
        allow_same_subnet: c
            .allow_same_subnet_paths
            .as_ref()
            .is_some_and(|b| *b.get_ref()),
        hs_pow_max_effort,
    })
}

// ---------------------------------------------------------------- network

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    name: Option<Spanned<String>>,
    #[serde(default)]
    authority: Vec<NetworkAuthority>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkAuthority {
    name: Option<Spanned<String>>,
    identity: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
}

/// Load and validate a network file (docs/protocol.md §14.1):
///
/// ```toml
/// name = "testnet"
/// [[authority]]
/// name = "auth-1"
/// identity = "<64 hex digits: the authority's Ed25519 identity key>"
/// address = "IP:PORT"
/// ```
///
/// # Errors
/// [`ConfigError`] naming the file, key (`authority[1].identity`) and what is allowed.
pub fn load_network(path: &Path) -> Result<anonnet_dir::Network, ConfigError> {
    network_from(&Source::read(path)?)
}

fn network_from(src: &Source) -> Result<anonnet_dir::Network, ConfigError> {
    let file: NetworkFile = src.parse()?;
    let Some(name) = &file.name else {
        return Err(src.invalid(
            "name",
            None::<&Spanned<()>>,
            "is required: the network's name, e.g. name = \"testnet\"".into(),
        ));
    };
    let mut authorities = Vec::new();
    for (i, a) in file.authority.iter().enumerate() {
        let key = |k: &str| format!("authority[{i}].{k}");
        let required = |k: &str, example: &str| {
            src.invalid(
                key(k),
                None::<&Spanned<()>>,
                format!("is required, e.g. {k} = {example}"),
            )
        };
        let aname = a
            .name
            .as_ref()
            .ok_or_else(|| required("name", "\"auth-1\""))?;
        let identity = a
            .identity
            .as_ref()
            .ok_or_else(|| required("identity", "\"<64 hex digits>\""))?;
        let id: [u8; 32] = hex::decode(identity.get_ref())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                src.invalid(
                    key("identity"),
                    Some(identity),
                    "expected 64 hex digits: the authority's Ed25519 identity key, as its \
                     `AUTHORITY ready` line prints it"
                        .into(),
                )
            })?;
        let address = a
            .address
            .as_ref()
            .ok_or_else(|| required("address", "\"198.51.100.7:9030\""))?;
        let addr = parse_addr(address.get_ref())
            .map_err(|why| src.invalid(key("address"), Some(address), why))?;
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(src.invalid(
                key("address"),
                Some(address),
                format!("{addr} cannot be dialled; expected the authority's IP:PORT"),
            ));
        }
        authorities.push(anonnet_dir::AuthorityEntry {
            name: aname.get_ref().clone(),
            identity: id,
            address: addr,
        });
    }
    anonnet_dir::Network::new(name.get_ref().clone(), authorities).map_err(|why| {
        src.invalid(
            "authority",
            None::<&Spanned<()>>,
            format!("{why}; list each as an [[authority]] table"),
        )
    })
}

/// The network file named by `key` (relative to the config file), loaded.
fn network_of(
    src: &Source,
    key: &str,
    value: Option<&Spanned<String>>,
) -> Result<anonnet_dir::Network, ConfigError> {
    let Some(v) = value else {
        return Err(src.invalid(key, None::<&Spanned<()>>, NETWORK_REQUIRED.into()));
    };
    let path = src.path(v.get_ref());
    let text = src.read_named(&path).map_err(|e| {
        src.invalid(
            key,
            Some(v),
            format!("cannot read network file {}: {e}", path.display()),
        )
    })?;
    network_from(&Source::new(path, text, false))
}

// ---------------------------------------------------------------- authority

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorityFile {
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    authority: AuthoritySection,
    #[serde(default)]
    flags: FlagsSection,
    #[serde(default)]
    metrics: MetricsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthoritySection {
    data_dir: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    network: Option<Spanned<String>>,
    period_secs: Option<Spanned<u64>>,
    vote_delay_secs: Option<Spanned<u64>>,
    measure: Option<bool>,
    measure_bytes: Option<Spanned<u64>>,
    measure_interval_secs: Option<Spanned<u64>>,
    max_relays_per_ip: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagsSection {
    stable_mtbf_secs: Option<Spanned<u64>>,
    guard_min_known_secs: Option<Spanned<u64>>,
    guard_min_wfu: Option<Spanned<f64>>,
    guard_min_bandwidth: Option<Spanned<u64>>,
    hsdir_min_uptime_secs: Option<Spanned<u64>>,
    half_life_secs: Option<Spanned<u64>>,
}

/// Longest voting period (one day).
pub const MAX_PERIOD_SECS: u64 = 86_400;

/// A loaded authority config file.
#[derive(Debug, Clone)]
pub struct AuthoritySettings {
    /// The file it came from (absolute).
    pub file: PathBuf,
    /// What to start the authority with.
    pub authority: anonnet_authority::AuthorityConfig,
    /// `log.safe` (default true).
    pub safe_logging: bool,
    /// `metrics.listen`: the Prometheus endpoint's TCP address (`None`: off).
    pub metrics_listen: Option<SocketAddr>,
}

/// Load and validate an authority config file (see config/authority.toml).
///
/// # Errors
/// [`ConfigError`] naming the file, key and allowed values.
pub fn load_authority(path: &Path) -> Result<AuthoritySettings, ConfigError> {
    authority_from(&Source::read(path)?)
}

fn authority_from(src: &Source) -> Result<AuthoritySettings, ConfigError> {
    let file: AuthorityFile = src.parse()?;
    let a = &file.authority;
    let data_dir = match &a.data_dir {
        Some(d) => src.path(d.get_ref()),
        None => project_dirs()
            .map(|p| p.data_dir().join("authority"))
            .ok_or_else(|| {
                src.invalid(
                    "authority.data_dir",
                    None::<&Spanned<()>>,
                    "no default: this user has no home directory; set a directory".into(),
                )
            })?,
    };
    let Some(l) = &a.listen else {
        return Err(src.invalid(
            "authority.listen",
            None::<&Spanned<()>>,
            "is required: the IP:PORT the network file lists for this authority".into(),
        ));
    };
    let listen =
        parse_addr(l.get_ref()).map_err(|why| src.invalid("authority.listen", Some(l), why))?;
    let network = network_of(src, "authority.network", a.network.as_ref())?;
    let num =
        |key: &str, v: &Option<Spanned<u64>>, default: u64, lo: u64, hi: u64, unit: &str| match v {
            Some(s) => check_range(*s.get_ref(), lo, hi, unit)
                .map_err(|why| src.invalid(key.to_owned(), Some(s), why)),
            None => Ok(default),
        };
    let period = num(
        "authority.period_secs",
        &a.period_secs,
        3600,
        2,
        MAX_PERIOD_SECS,
        "seconds",
    )?;
    let vote_delay = num(
        "authority.vote_delay_secs",
        &a.vote_delay_secs,
        (period / 4).clamp(1, 300),
        1,
        (period / 2).max(1),
        "seconds (at most half of period_secs)",
    )?;
    let defaults = anonnet_authority::MeasureConfig::default();
    let measure = anonnet_authority::MeasureConfig {
        enabled: a.measure.unwrap_or(true),
        bytes: num(
            "authority.measure_bytes",
            &a.measure_bytes,
            defaults.bytes,
            1024,
            1 << 30,
            "bytes",
        )?,
        interval: num(
            "authority.measure_interval_secs",
            &a.measure_interval_secs,
            defaults.interval,
            1,
            30 * 86_400,
            "seconds",
        )?,
        retry: defaults.retry.min(period),
        timeout: defaults.timeout,
    };
    let max_relays_per_ip = num(
        "authority.max_relays_per_ip",
        &a.max_relays_per_ip,
        2,
        0,
        1_000_000,
        "relays (0: no limit)",
    )?;
    let f = &file.flags;
    let d = anonnet_dir::FlagThresholds::default();
    let wfu = match &f.guard_min_wfu {
        Some(w) if (0.0..=1.0).contains(w.get_ref()) => *w.get_ref(),
        Some(w) => {
            return Err(src.invalid(
                "flags.guard_min_wfu",
                Some(w),
                "expected a fraction 0.0..=1.0, e.g. 0.98".into(),
            ))
        }
        None => d.guard_min_wfu,
    };
    let year = 365 * 86_400;
    let thresholds = anonnet_dir::FlagThresholds {
        stable_mtbf: num(
            "flags.stable_mtbf_secs",
            &f.stable_mtbf_secs,
            d.stable_mtbf,
            0,
            year,
            "seconds",
        )?,
        guard_min_known: num(
            "flags.guard_min_known_secs",
            &f.guard_min_known_secs,
            d.guard_min_known,
            0,
            year,
            "seconds",
        )?,
        guard_min_wfu: wfu,
        guard_min_bandwidth: u32::try_from(num(
            "flags.guard_min_bandwidth",
            &f.guard_min_bandwidth,
            u64::from(d.guard_min_bandwidth),
            0,
            u64::from(u32::MAX),
            "bytes per second",
        )?)
        .unwrap_or(u32::MAX),
        hsdir_min_uptime: num(
            "flags.hsdir_min_uptime_secs",
            &f.hsdir_min_uptime_secs,
            d.hsdir_min_uptime,
            0,
            year,
            "seconds",
        )?,
        half_life: num(
            "flags.half_life_secs",
            &f.half_life_secs,
            d.half_life,
            1,
            year,
            "seconds",
        )?,
    };
    Ok(AuthoritySettings {
        safe_logging: file.log.safe.unwrap_or(true),
        metrics_listen: metrics_listen_of(src, &file.metrics)?,
        file: src.path.clone(),
        authority: anonnet_authority::AuthorityConfig {
            data_dir,
            listen,
            network,
            period,
            vote_delay,
            thresholds,
            measure,
            max_relays_per_ip: usize::try_from(max_relays_per_ip).unwrap_or(usize::MAX),
        },
    })
}

// ---------------------------------------------------------------- testnet

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestnetFile {
    #[serde(default)]
    testnet: TestnetSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestnetSection {
    relays: Option<Spanned<u64>>,
    socks_listen: Option<Spanned<String>>,
    http_listen: Option<Spanned<String>>,
    dir: Option<Spanned<String>>,
    exit_policy: Option<Vec<Spanned<String>>>,
}

/// A loaded testnet config file (every field optional; command-line flags override).
#[derive(Debug, Clone, Default)]
pub struct TestnetSettings {
    /// `testnet.relays`.
    pub relays: Option<usize>,
    /// `testnet.socks_listen` (port 0 for `"auto"`).
    pub socks_listen: Option<SocketAddr>,
    /// `testnet.http_listen` (port 0 for `"auto"`).
    pub http_listen: Option<SocketAddr>,
    /// `testnet.dir`, resolved.
    pub dir: Option<PathBuf>,
    /// `testnet.exit_policy`, validated lines.
    pub exit_policy: Option<Vec<String>>,
}

/// Check a testnet relay count.
///
/// # Errors
/// A message naming the allowed range.
pub fn check_testnet_relays(n: u64) -> Result<usize, String> {
    check_range(
        n,
        MIN_TESTNET_RELAYS as u64,
        MAX_TESTNET_RELAYS as u64,
        "relays",
    )
    .map(|n| usize::try_from(n).unwrap_or(MAX_TESTNET_RELAYS))
}

/// Load and validate a testnet config file.
///
/// # Errors
/// [`ConfigError`] naming the file, key and allowed values.
pub fn load_testnet(path: &Path) -> Result<TestnetSettings, ConfigError> {
    testnet_from(&Source::read(path)?)
}

fn testnet_from(src: &Source) -> Result<TestnetSettings, ConfigError> {
    let file: TestnetFile = src.parse()?;
    let t = &file.testnet;
    let relays = t
        .relays
        .as_ref()
        .map(|r| {
            check_testnet_relays(*r.get_ref())
                .map_err(|why| src.invalid("testnet.relays", Some(r), why))
        })
        .transpose()?;
    let socks_listen = t
        .socks_listen
        .as_ref()
        .map(|s| {
            parse_socks_listen(s.get_ref())
                .map_err(|why| src.invalid("testnet.socks_listen", Some(s), why))
        })
        .transpose()?;
    let http_listen = t
        .http_listen
        .as_ref()
        .map(|s| {
            parse_listen(s.get_ref())
                .map_err(|why| src.invalid("testnet.http_listen", Some(s), why))
        })
        .transpose()?;
    if let (Some(socks), Some(http)) = (socks_listen, http_listen) {
        check_listeners(
            src,
            &[
                ("testnet.socks_listen", socks, t.socks_listen.as_ref()),
                ("testnet.http_listen", http, t.http_listen.as_ref()),
            ],
        )?;
    }
    let exit_policy = t
        .exit_policy
        .as_ref()
        .map(|lines| {
            parse_policy(src, "testnet.exit_policy", lines)
                .map(|_| lines.iter().map(|l| l.get_ref().clone()).collect())
        })
        .transpose()?;
    Ok(TestnetSettings {
        relays,
        socks_listen,
        http_listen,
        dir: t.dir.as_ref().map(|d| src.path(d.get_ref())),
        exit_policy,
    })
}

/// Which config file [`check_text`] validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// A relay config ([`load_relay`]).
    Relay,
    /// A client config ([`load_client`]).
    Client,
    /// A testnet config ([`load_testnet`]).
    Testnet,
    /// An authority config ([`load_authority`]).
    Authority,
    /// A network file ([`load_network`]).
    Network,
}

/// Validate `text` as a config file of `kind` found at `path`, exactly as the `load_*`
/// function would, but without touching the file system: files the config names (relay
/// descriptor files) count as unreadable. Nothing is created. The config fuzz target
/// (`fuzz/fuzz_targets/config.rs`) drives this.
///
/// # Errors
/// The [`ConfigError`] the matching `load_*` function returns for this text.
pub fn check_text(kind: ConfigKind, path: &Path, text: &str) -> Result<(), ConfigError> {
    let src = Source::new(path.to_path_buf(), text.to_owned(), false);
    match kind {
        ConfigKind::Relay => relay_from(&src).map(drop),
        ConfigKind::Client => client_from(&src).map(drop),
        ConfigKind::Testnet => testnet_from(&src).map(drop),
        ConfigKind::Authority => authority_from(&src).map(drop),
        ConfigKind::Network => network_from(&src).map(drop),
    }
}

/// `s` as a TOML basic string, quoted and escaped, for generated config files.
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A fresh directory `anonnet-config-test-<name>-XXXXXX` for one test, removed when
    /// dropped.
    fn test_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("anonnet-config-test-{name}-"))
            .tempdir()
            .unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Write a valid `network.toml` (one authority) into `dir`; returns the config line
    /// naming it.
    fn network_line(dir: &Path) -> &'static str {
        write(
            dir,
            "network.toml",
            &format!(
                "name = \"t\"\n[[authority]]\nname = \"a\"\nidentity = \"{}\"\n\
                 address = \"127.0.0.1:7000\"\n",
                "3b".repeat(32)
            ),
        );
        "network = \"network.toml\"\n"
    }

    #[test]
    fn network_file_errors_name_the_key() {
        let tmp = test_dir("network");
        let dir = tmp.path();
        network_line(dir);
        let n = load_network(&dir.join("network.toml")).unwrap();
        assert_eq!(n.authorities.len(), 1);
        assert_eq!(n.authorities[0].identity, [0x3b; 32]);
        let bad = write(
            dir,
            "bad.toml",
            "name = \"t\"\n[[authority]]\nname = \"a\"\nidentity = \"xyz\"\naddress = \"127.0.0.1:1\"\n",
        );
        let e = load_network(&bad).unwrap_err().to_string();
        assert!(
            e.contains("authority[0].identity") && e.contains("64 hex"),
            "{e}"
        );
        let none = write(dir, "none.toml", "name = \"t\"\n");
        let e = load_network(&none).unwrap_err().to_string();
        assert!(e.contains("1 to 32 authorities"), "{e}");
    }
    #[test]
    fn relay_config_with_every_key_parses() {
        let tmp = test_dir("relay-full");
        let dir = tmp.path();
        let file = write(
            dir,
            "relay.toml",
            r#"
[relay]
data_dir = "data"
listen = "0.0.0.0:9001"
advertise = "203.0.113.5:9001"
guard = false
bandwidth = 5000
descriptor_file = "out/relay.desc"
network = "network.toml"
circuit_handshakes = ["x25519"]

[exit]
enabled = true
policy = ["accept 127.0.0.0/8:*", "reject *:25", "accept [::1]/128:80-443"]

[limits]
max_circuits = 100
max_streams_per_circuit = 10
connect_timeout_secs = 5
max_links = 50
max_inbound_links = 40
max_inbound_links_per_ip = 4
max_circuits_per_relay = 30
max_circuits_per_client_ip = 20
max_pending_streams_per_link = 16
first_byte_timeout_secs = 3
max_exit_dns_lookups = 8
onion_key_lifetime_days = 14
onion_key_grace_days = 3
"#,
        );
        network_line(dir);
        let s = load_relay(&file).unwrap();
        assert_eq!(
            s.relay.network.as_ref().map(|n| n.authorities.len()),
            Some(1)
        );
        let r = &s.relay;
        assert_eq!(r.data_dir, dir.join("data"));
        assert_eq!(r.listen, "0.0.0.0:9001".parse().unwrap());
        assert_eq!(r.advertise, Some("203.0.113.5:9001".parse().unwrap()));
        assert!(!r.guard);
        assert_eq!(r.circuit_handshakes, HandshakeSet::NTOR);
        assert_eq!(r.bandwidth, 5000);
        assert_eq!(s.descriptor_file, dir.join("out/relay.desc"));
        assert_eq!(r.limits.max_circuits, 100);
        assert_eq!(r.limits.max_streams_per_circuit, 10);
        assert_eq!(r.limits.connect_timeout, Duration::from_secs(5));
        assert_eq!(r.limits.max_links, 50);
        assert_eq!(r.limits.max_inbound_links, 40);
        assert_eq!(r.limits.max_inbound_links_per_ip, 4);
        assert_eq!(r.limits.max_circuits_per_relay, 30);
        assert_eq!(r.limits.max_circuits_per_client_ip, 20);
        assert_eq!(r.limits.max_pending_streams_per_link, 16);
        assert_eq!(r.limits.first_byte_timeout, Duration::from_secs(3));
        assert_eq!(r.limits.max_exit_dns_lookups, 8);
        assert_eq!(
            r.limits.onion_keys.lifetime,
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(r.limits.onion_keys.grace, Duration::from_secs(3 * 86_400));
        let p = r.exit_policy.as_ref().unwrap();
        assert!(p.allows("127.0.0.1".parse().unwrap(), 8080));
        assert!(!p.allows("1.1.1.1".parse().unwrap(), 25));
        assert!(!p.allows("::1".parse().unwrap(), 8080));
        assert!(p.allows("::1".parse().unwrap(), 443));
        assert!(!p.allows("10.0.0.1".parse().unwrap(), 80));
        assert!(p.allows("1.1.1.1".parse().unwrap(), 80));
    }

    #[test]
    fn relay_defaults_apply_to_missing_keys() {
        let tmp = test_dir("relay-defaults");
        let dir = tmp.path();
        let file = write(
            dir,
            "relay.toml",
            &format!("[relay]\nlisten = \"127.0.0.1:0\"\n{}", network_line(dir)),
        );
        let s = load_relay(&file).unwrap();
        assert!(s.safe_logging, "safe logging is the default");
        assert!(s.relay.guard);
        assert_eq!(s.relay.bandwidth, DEFAULT_BANDWIDTH);
        let unsafe_file = write(
            dir,
            "relay-unsafe.toml",
            &format!(
                "[log]\nsafe = false\n[relay]\nlisten = \"127.0.0.1:0\"\n{}",
                network_line(dir)
            ),
        );
        assert!(!load_relay(&unsafe_file).unwrap().safe_logging);
        assert!(s.relay.exit_policy.is_none());
        assert_eq!(s.relay.advertise, None);
        assert_eq!(s.relay.limits.max_circuits, Limits::default().max_circuits);
        assert_eq!(s.relay.limits.onion_keys, OnionKeyConfig::default());
    }

    #[test]
    fn onion_key_grace_longer_than_lifetime_is_refused() {
        let tmp = test_dir("relay-onion-grace");
        let dir = tmp.path();
        let file = write(
            dir,
            "relay.toml",
            &format!(
                "[relay]\nlisten = \"127.0.0.1:0\"\n{}\n[limits]\nonion_key_lifetime_days = 5\n",
                network_line(dir)
            ),
        );
        let e = load_relay(&file).unwrap_err().to_string();
        assert!(e.contains("limits.onion_key_lifetime_days"), "{e}");
        assert!(
            e.contains("grace (7 days)") && e.contains("(5 days)"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_names_file_line_key_and_allowed_keys() {
        let tmp = test_dir("unknown-key");
        let dir = tmp.path();
        let file = write(
            dir,
            "relay.toml",
            "[relay]\nlisten = \"127.0.0.1:0\"\nlistne = \"1.2.3.4:5\"\n",
        );
        let e = load_relay(&file).unwrap_err().to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("relay.listne"), "{e}");
        assert!(e.contains("`listen`") && e.contains("`advertise`"), "{e}");
    }

    #[test]
    fn unknown_section_is_rejected() {
        let tmp = test_dir("unknown-section");
        let dir = tmp.path();
        let file = write(dir, "relay.toml", "[relays]\nlisten = \"127.0.0.1:0\"\n");
        let e = load_relay(&file).unwrap_err().to_string();
        assert!(e.contains("`relays`") && e.contains("`relay`"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let tmp = test_dir("wrong-type");
        let dir = tmp.path();
        let file = write(dir, "relay.toml", "[relay]\nguard = \"yes\"\n");
        let e = load_relay(&file).unwrap_err().to_string();
        assert!(e.contains("relay.guard") && e.contains("line 2"), "{e}");
        assert!(e.contains("bool"), "{e}");
    }

    #[test]
    fn bad_policy_line_names_key_index_and_syntax() {
        let tmp = test_dir("bad-policy");
        let dir = tmp.path();
        let file = write(
            dir,
            "relay.toml",
            "[relay]\nlisten = \"127.0.0.1:0\"\n[exit]\nenabled = true\npolicy = [\n  \"accept 127.0.0.0/8:*\",\n  \"allow 10.0.0.0/8:*\",\n]\n",
        );
        let e = load_relay(&file).unwrap_err().to_string();
        assert!(e.contains("exit.policy[1]"), "{e}");
        assert!(e.contains("line 7"), "{e}");
        assert!(
            e.contains("\"allow\"") && e.contains("accept or reject"),
            "{e}"
        );
    }

    #[test]
    fn policy_lines_parse_like_tor() {
        let one = |l: &str| parse_policy_line(l).unwrap();
        assert_eq!(one("reject *:25").len(), 2);
        assert_eq!(one("accept *4:*").len(), 1);
        let r = &one("accept 10.1.2.3:8000-8080")[0];
        assert_eq!(r.net, "10.1.2.3/32".parse::<IpNet>().unwrap());
        assert_eq!(r.ports, PortRange { lo: 8000, hi: 8080 });
        let r = &one("ACCEPT [::1]:443")[0];
        assert_eq!(r.net, "::1/128".parse::<IpNet>().unwrap());
        assert_eq!(r.action, Action::Accept);
        let r = &one("reject [fd00::]/8:*")[0];
        assert_eq!(r.net, "fd00::/8".parse::<IpNet>().unwrap());
        assert_eq!(r.ports, PortRange::ALL);
        for bad in [
            "accept",
            "accept 127.0.0.1",
            "accept 127.0.0.1:0",
            "accept 127.0.0.1:99999",
            "accept 127.0.0.1:90-80",
            "accept 300.0.0.1:80",
            "accept [::1:80",
            "accept 1.2.3.4:80 extra",
            "deny *:*",
        ] {
            let e = parse_policy_line(bad).unwrap_err();
            assert!(e.contains("accept|reject NET:PORTS"), "{bad}: {e}");
        }
    }

    #[test]
    fn unspecified_listen_needs_advertise() {
        let tmp = test_dir("advertise");
        let dir = tmp.path();
        let file = write(dir, "relay.toml", "[relay]\nlisten = \"0.0.0.0:9001\"\n");
        let e = load_relay(&file).unwrap_err().to_string();
        assert!(e.contains("relay.advertise") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_address_and_range_name_allowed_values() {
        let tmp = test_dir("bad-values");
        let dir = tmp.path();
        let file = write(dir, "relay.toml", "[relay]\nlisten = \"localhost\"\n");
        let e = load_relay(&file).unwrap_err().to_string();
        assert!(e.contains("relay.listen") && e.contains("IP:PORT"), "{e}");
        let file = write(
            dir,
            "relay.toml",
            "[relay]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_circuits = 0\n",
        );
        let e = load_relay(&file).unwrap_err().to_string();
        assert!(
            e.contains("limits.max_circuits") && e.contains("1..="),
            "{e}"
        );
    }

    #[test]
    fn relay_circuit_handshakes_default_to_both_and_name_the_allowed_values() {
        let tmp = test_dir("relay-handshakes");
        let dir = tmp.path();
        let with = |line: &str| {
            let file = write(
                dir,
                "relay.toml",
                &format!(
                    "[relay]\nlisten = \"127.0.0.1:0\"\n{line}\n{}",
                    network_line(dir)
                ),
            );
            load_relay(&file)
        };
        assert_eq!(
            with("").unwrap().relay.circuit_handshakes,
            HandshakeSet::ALL
        );
        assert_eq!(
            with("circuit_handshakes = [\"x25519+mlkem768\", \"x25519\"]")
                .unwrap()
                .relay
                .circuit_handshakes,
            HandshakeSet::ALL
        );
        assert_eq!(
            with("circuit_handshakes = [\"x25519+mlkem768\"]")
                .unwrap()
                .relay
                .circuit_handshakes,
            HandshakeSet::HYBRID
        );
        let e = with("circuit_handshakes = [\"x25519\", \"kyber\"]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("relay.toml")
                && e.contains("relay.circuit_handshakes[1]")
                && e.contains("line 3")
                && e.contains("\"x25519\"")
                && e.contains("\"x25519+mlkem768\""),
            "{e}"
        );
        let e = with("circuit_handshakes = []").unwrap_err().to_string();
        assert!(
            e.contains("relay.circuit_handshakes") && e.contains("empty"),
            "{e}"
        );
    }

    #[test]
    fn missing_config_file_is_named() {
        let tmp = test_dir("missing-file");
        let dir = tmp.path();
        let e = load_client(&dir.join("nope.toml")).unwrap_err().to_string();
        assert!(e.contains("nope.toml") && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn missing_bootstrap_file_names_key_and_path() {
        let tmp = test_dir("missing-bootstrap");
        let dir = tmp.path();
        let file = write(
            dir,
            "client.toml",
            &format!(
                "[client]\n{}bootstrap = [\"r1.desc\", \"r2.desc\", \"r3.desc\"]\n",
                network_line(dir)
            ),
        );
        let e = load_client(&file).unwrap_err().to_string();
        assert!(e.contains("client.bootstrap[0]"), "{e}");
        assert!(
            e.contains(&dir.join("r1.desc").display().to_string()),
            "{e}"
        );
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn service_proof_of_work_is_on_by_default_and_its_bounds_are_checked() {
        let tmp = test_dir("service-pow");
        let dir = tmp.path();
        let service = |extra: &str| {
            format!(
                "[client]\n{}\n[[service]]\ntarget = \"127.0.0.1:8080\"\n{extra}",
                network_line(dir)
            )
        };
        let file = write(dir, "client.toml", &service(""));
        let pow = load_client(&file).unwrap().services[0].pow.unwrap();
        assert_eq!(pow, anonnet_client::host::PowConfig::default());
        let file = write(dir, "client.toml", &service("pow = false\n"));
        assert_eq!(load_client(&file).unwrap().services[0].pow, None);
        let file = write(
            dir,
            "client.toml",
            &service("pow_queue_bound = 100\npow_max_effort = 500\npow_min_effort = 20\n"),
        );
        let pow = load_client(&file).unwrap().services[0].pow.unwrap();
        assert_eq!(
            (pow.queue_bound, pow.max_effort, pow.min_effort),
            (100, 500, 20)
        );
        for (bad, key) in [
            ("pow_queue_bound = 0", "service[0].pow_queue_bound"),
            ("pow_queue_bound = 100000", "service[0].pow_queue_bound"),
            ("pow_max_effort = 0", "service[0].pow_max_effort"),
            (
                "pow_max_effort = 10\npow_min_effort = 11",
                "service[0].pow_min_effort",
            ),
        ] {
            let file = write(dir, "client.toml", &service(&format!("{bad}\n")));
            let e = load_client(&file).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("client.toml"), "{e}");
        }
    }

    #[test]
    fn a_client_without_a_network_is_told_how_to_join_one() {
        let tmp = test_dir("no-network");
        let dir = tmp.path();
        let file = write(dir, "client.toml", "[client]\nbootstrap = []\n");
        let e = load_client(&file).unwrap_err().to_string();
        assert!(
            e.contains("client.network") && e.contains("is required") && e.contains("network.toml"),
            "{e}"
        );
        // With a network, no fallback relay is needed.
        let file = write(
            dir,
            "client.toml",
            &format!("[client]\n{}", network_line(dir)),
        );
        assert!(load_client(&file).unwrap().bootstrap.is_empty());
    }

    #[test]
    fn malformed_descriptor_file_is_reported() {
        let tmp = test_dir("bad-descriptor");
        let dir = tmp.path();
        for n in 1..=3 {
            write(dir, &format!("r{n}.desc"), "not base64!\n");
        }
        let file = write(
            dir,
            "client.toml",
            &format!(
                "[client]\n{}bootstrap = [\"r1.desc\", \"r2.desc\", \"r3.desc\"]\n",
                network_line(dir)
            ),
        );
        let e = load_client(&file).unwrap_err().to_string();
        assert!(e.contains("is not a relay descriptor"), "{e}");
    }

    #[test]
    fn documented_config_files_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        // A relay listening on 0.0.0.0 must name its public address, which the operator
        // fills in.
        // The network file is a named file, not read by a text check: the error it gives
        // comes after every other key was accepted.
        let relay =
            read("relay.toml").replacen("[relay]", "[relay]\nadvertise = \"203.0.113.5:9001\"", 1);
        let e = check_text(ConfigKind::Relay, &dir.join("relay.toml"), &relay)
            .unwrap_err()
            .to_string();
        assert!(e.contains("relay.network") && e.contains("not read"), "{e}");
        let e = check_text(
            ConfigKind::Authority,
            &dir.join("authority.toml"),
            &read("authority.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("authority.network") && e.contains("not read"),
            "{e}"
        );
        check_text(
            ConfigKind::Testnet,
            &dir.join("testnet.toml"),
            &read("testnet.toml"),
        )
        .unwrap();
        // The client's network file is a named file: every other key must be accepted.
        let client = read("client.toml");
        let e = check_text(ConfigKind::Client, &dir.join("client.toml"), &client)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("client.network") && e.contains("not read"),
            "{e}"
        );
    }

    #[test]
    fn oversized_descriptor_file_is_refused_without_reading_it_all() {
        let tmp = test_dir("huge-descriptor");
        let dir = tmp.path();
        let huge = "A".repeat(MAX_NAMED_FILE_BYTES as usize + 1);
        write(dir, "r1.desc", &huge);
        let file = write(
            dir,
            "client.toml",
            &format!("[client]\n{}bootstrap = [\"r1.desc\"]\n", network_line(dir)),
        );
        let e = load_client(&file).unwrap_err().to_string();
        assert!(
            e.contains("client.bootstrap[0]") && e.contains("larger than 65536 bytes"),
            "{e}"
        );
    }

    #[test]
    fn text_check_matches_load_but_reads_no_named_file() {
        let tmp = test_dir("text-check");
        let dir = tmp.path();
        let text = format!(
            "[client]\n{}bootstrap = [\"r1.desc\"]\nsocks_listen = \"auto\"\n",
            network_line(dir)
        );
        // The network and descriptor files exist (the descriptor malformed, so loading
        // reads and rejects it), but a text-only check must read neither.
        write(dir, "r1.desc", "not base64!\n");
        let file = write(dir, "client.toml", &text);
        let e = load_client(&file).unwrap_err().to_string();
        assert!(e.contains("is not a relay descriptor"), "{e}");
        let e = check_text(ConfigKind::Client, &file, &text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("client.network") && e.contains("not read"),
            "{e}"
        );
        // A bad key is reported alike by both.
        let bad = "[relay]\nlisten = \"nowhere\"\n";
        let loaded = load_relay(&write(dir, "relay.toml", bad))
            .unwrap_err()
            .to_string();
        let checked = check_text(ConfigKind::Relay, &dir.join("relay.toml"), bad)
            .unwrap_err()
            .to_string();
        assert_eq!(loaded, checked);
        check_text(
            ConfigKind::Testnet,
            &dir.join("testnet.toml"),
            "[testnet]\nrelays = 5\n",
        )
        .unwrap();
    }

    #[test]
    fn socks_listen_accepts_auto_and_addresses() {
        assert_eq!(
            parse_socks_listen("auto").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            parse_socks_listen("[::1]:9150").unwrap(),
            "[::1]:9150".parse().unwrap()
        );
        let e = parse_socks_listen("9050").unwrap_err();
        assert!(e.contains("\"auto\""), "{e}");
        let tmp = test_dir("socks-listen");
        let dir = tmp.path();
        let file = write(dir, "client.toml", "[client]\nsocks_listen = \"nine\"\n");
        let e = load_client(&file).unwrap_err().to_string();
        assert!(
            e.contains("client.socks_listen") && e.contains("auto"),
            "{e}"
        );
    }

    #[test]
    fn http_listen_is_validated_like_socks_listen() {
        let tmp = test_dir("http-listen");
        let dir = tmp.path();
        let file = write(
            dir,
            "client.toml",
            "[client]\nhttp_listen = \"localhost:80\"\n",
        );
        let e = load_client(&file).unwrap_err().to_string();
        assert!(
            e.contains("client.http_listen") && e.contains("line 2") && e.contains("auto"),
            "{e}"
        );
        assert_eq!(
            parse_listen("AUTO").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
    }

    #[test]
    fn socks_and_http_on_one_port_is_an_error_naming_both_keys() {
        let tmp = test_dir("listen-clash");
        let dir = tmp.path();
        let file = write(
            dir,
            "client.toml",
            "[client]\nsocks_listen = \"127.0.0.1:9050\"\nhttp_listen = \"127.0.0.1:9050\"\n",
        );
        let e = load_client(&file).unwrap_err().to_string();
        assert!(
            e.contains("client.http_listen") && e.contains("client.socks_listen"),
            "{e}"
        );
        assert!(e.contains("line 3"), "{e}");
        // The default SOCKS port against an HTTP listener on every interface.
        let file = write(
            dir,
            "client.toml",
            "[client]\nhttp_listen = \"0.0.0.0:9050\"\n",
        );
        let e = load_client(&file).unwrap_err().to_string();
        assert!(e.contains("clashes with `client.socks_listen`"), "{e}");
        // "auto" never clashes.
        assert!(!listeners_clash(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap()
        ));
        assert!(!listeners_clash(
            "127.0.0.1:9050".parse().unwrap(),
            "127.0.0.2:9050".parse().unwrap()
        ));
        let file = write(
            dir,
            "testnet.toml",
            "[testnet]\nsocks_listen = \"127.0.0.1:7000\"\nhttp_listen = \"127.0.0.1:7000\"\n",
        );
        let e = load_testnet(&file).unwrap_err().to_string();
        assert!(
            e.contains("testnet.http_listen") && e.contains("testnet.socks_listen"),
            "{e}"
        );
    }

    #[test]
    fn pool_size_and_dirtiness_are_range_checked() {
        let tmp = test_dir("pool-keys");
        let dir = tmp.path();
        let file = write(dir, "client.toml", "[client]\npool_size = 0\n");
        let e = load_client(&file).unwrap_err().to_string();
        assert!(
            e.contains("client.pool_size") && e.contains("1..=32"),
            "{e}"
        );
        let file = write(dir, "client.toml", "[client]\nhs_prefixes = 9\n");
        let e = load_client(&file).unwrap_err().to_string();
        assert!(
            e.contains("client.hs_prefixes") && e.contains("0..=8"),
            "{e}"
        );
        let file = write(
            dir,
            "client.toml",
            "[client]\nmax_circuit_dirtiness_secs = 100000\n",
        );
        let e = load_client(&file).unwrap_err().to_string();
        assert!(
            e.contains("client.max_circuit_dirtiness_secs") && e.contains("1..=86400"),
            "{e}"
        );
    }

    #[test]
    fn control_listen_must_be_loopback() {
        let tmp = test_dir("control-listen");
        let dir = tmp.path();
        let file = write(
            dir,
            "client.toml",
            "[client]\ncontrol_listen = \"0.0.0.0:9051\"\n",
        );
        let e = load_client(&file).unwrap_err().to_string();
        assert!(
            e.contains("client.control_listen") && e.contains("loopback") && e.contains("line 2"),
            "{e}"
        );
        assert_eq!(
            parse_control_listen("auto").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            parse_control_listen("[::1]:9051").unwrap(),
            "[::1]:9051".parse().unwrap()
        );
        let file = write(
            dir,
            "client.toml",
            "[client]\nsocks_listen = \"127.0.0.1:9051\"\ncontrol_listen = \"127.0.0.1:9051\"\n",
        );
        let e = load_client(&file).unwrap_err().to_string();
        assert!(e.contains("clashes with `client.socks_listen`"), "{e}");
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_accepts_auto() {
        let tmp = test_dir("metrics-ok");
        let dir = tmp.path();
        let net = network_line(dir);
        let file = write(dir, "client.toml", &format!("[client]\n{net}"));
        assert_eq!(load_client(&file).unwrap().metrics_listen, None);
        let file = write(
            dir,
            "client.toml",
            &format!("[client]\n{net}\n[metrics]\nlisten = \"auto\"\n"),
        );
        assert_eq!(
            load_client(&file).unwrap().metrics_listen,
            Some("127.0.0.1:0".parse().unwrap())
        );
        let file = write(
            dir,
            "relay.toml",
            &format!(
                "[relay]\nlisten = \"127.0.0.1:0\"\n{net}\n[metrics]\nlisten = \"[::1]:9035\"\n"
            ),
        );
        assert_eq!(
            load_relay(&file).unwrap().metrics_listen,
            Some("[::1]:9035".parse().unwrap())
        );
    }

    #[test]
    fn bad_metrics_listen_names_file_line_and_key_in_every_role() {
        let tmp = test_dir("metrics-bad");
        let dir = tmp.path();
        let net = network_line(dir);
        let bad = "\n[metrics]\nlisten = \"localhost:metrics\"\n";
        let cases = [
            ("client.toml", format!("[client]\n{net}{bad}"), 5),
            (
                "relay.toml",
                format!("[relay]\nlisten = \"127.0.0.1:0\"\n{net}{bad}"),
                6,
            ),
            (
                "authority.toml",
                format!("[authority]\nlisten = \"127.0.0.1:7000\"\n{net}{bad}"),
                6,
            ),
        ];
        for (name, text, line) in cases {
            let file = write(dir, name, &text);
            let e = match name {
                "client.toml" => load_client(&file).map(drop),
                "relay.toml" => load_relay(&file).map(drop),
                _ => load_authority(&file).map(drop),
            }
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(&file.display().to_string())
                    && e.contains("key `metrics.listen`")
                    && e.contains(&format!("line {line}"))
                    && e.contains("\"auto\""),
                "{name}: {e}"
            );
        }
        // An unknown key in the section is refused too.
        let file = write(
            dir,
            "client.toml",
            &format!("[client]\n{net}\n[metrics]\nport = 9035\n"),
        );
        let e = load_client(&file).unwrap_err().to_string();
        assert!(e.contains("metrics.port"), "{e}");
    }

    #[test]
    fn metrics_listen_on_the_socks_port_is_a_clash() {
        let tmp = test_dir("metrics-clash");
        let dir = tmp.path();
        let net = network_line(dir);
        let file = write(
            dir,
            "client.toml",
            &format!(
                "[client]\nsocks_listen = \"127.0.0.1:9050\"\n{net}\n[metrics]\nlisten = \"127.0.0.1:9050\"\n"
            ),
        );
        let e = load_client(&file).unwrap_err().to_string();
        assert!(
            e.contains("key `metrics.listen`") && e.contains("clashes with `client.socks_listen`"),
            "{e}"
        );
    }

    #[test]
    fn state_dir_for_the_cli_needs_no_descriptors() {
        let tmp = test_dir("cli-state-dir");
        let dir = tmp.path();
        let file = write(dir, "client.toml", "[client]\nstate_dir = \"st\"\n");
        assert_eq!(client_state_dir(&file).unwrap(), dir.join("st"));
        let file = write(dir, "client.toml", "[client]\nstat_dir = \"st\"\n");
        let e = client_state_dir(&file).unwrap_err().to_string();
        assert!(e.contains("client.stat_dir"), "{e}");
    }

    #[test]
    fn testnet_config_validates_relays_and_policy() {
        let tmp = test_dir("testnet");
        let dir = tmp.path();
        let file = write(
            dir,
            "testnet.toml",
            "[testnet]\nrelays = 4\nsocks_listen = \"auto\"\nhttp_listen = \"auto\"\ndir = \"net\"\nexit_policy = [\"accept 127.0.0.0/8:*\"]\n",
        );
        let t = load_testnet(&file).unwrap();
        assert_eq!(t.relays, Some(4));
        assert_eq!(t.socks_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(t.http_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(t.dir, Some(dir.join("net")));
        let file = write(dir, "testnet.toml", "[testnet]\nrelays = 2\n");
        let e = load_testnet(&file).unwrap_err().to_string();
        assert!(e.contains("testnet.relays") && e.contains("3..=64"), "{e}");
    }

    #[test]
    fn shipped_default_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        // relay.toml listens on 0.0.0.0 and leaves `advertise` for the operator to set:
        // every key parses, and the one error is the missing advertise address.
        let e = load_relay(&root.join("relay.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("relay.advertise"), "{e}");
        let src = Source::read(&root.join("relay.toml")).unwrap();
        let relay: RelayFile = src.parse().unwrap();
        assert_eq!(
            relay.relay.bandwidth.map(|b| *b.get_ref()),
            Some(DEFAULT_BANDWIDTH)
        );
        load_testnet(&root.join("testnet.toml")).unwrap();
        // client.toml and authority.toml need a network file: only the syntax and keys
        // are checked here.
        let src = Source::read(&root.join("client.toml")).unwrap();
        src.parse::<ClientFile>().unwrap();
        let src = Source::read(&root.join("authority.toml")).unwrap();
        src.parse::<AuthorityFile>().unwrap();
    }

    #[test]
    fn toml_string_quotes_and_escapes() {
        let tricky = r#"C:\dir "quoted" 'single'"#;
        let doc = format!("k = {}\n", toml_string(tricky));
        let parsed: toml::Table = toml::from_str(&doc).unwrap();
        assert_eq!(parsed["k"].as_str(), Some(tricky));
    }
}
