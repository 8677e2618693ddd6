//! `anonnet`: the daemon binary. It is wiring only — read the config, build the role
//! (client, relay, or a whole local testnet), serve until told to stop. The protocol lives
//! in the library crates.
//!
//! Machine-readable lines go to stdout (one per mode, flushed), logs to stderr:
//! - `anonnet relay`: `RELAY ready <node_id_hex> <bound_addr> <descriptor_file_path>`
//! - `anonnet run` and `anonnet testnet`: `SOCKS5 ready on <ADDR>`, then
//!   `HTTP proxy ready on <ADDR>` (both listeners are bound and served by then)
//! - any role with `[metrics] listen`: `Metrics: http://<ADDR>/metrics` once it is served
//!   (a daemon prints it before its other ready lines; `anonnet testnet --metrics` prints
//!   the client's after the proxy lines)

mod browser;
mod cli;
mod control;
mod metrics;
mod resolve;
mod services;
mod shutdown;
mod site;
mod testnet;
mod wan;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anonnet_client::{Client, ClientConfig, ClientError};
use anonnet_error::{ErrorKind, HasKind};
use anonnet_proxy::{HttpProxy, SocksServer};
use anonnet_relay::{Relay, RelayError};
use clap::{Parser, Subcommand};
use tracing::{info, warn};

use crate::shutdown::Shutdown;
use anonnet_daemon::config::{self, ConfigError};

/// Name of the port file `anonnet run` writes in its state directory.
pub const PORTS_FILE: &str = "ports.json";

/// An onion-routing anonymity network: client daemon, relay, directory authority and local
/// testnet.
#[derive(Debug, Parser)]
#[command(name = "anonnet", version, about, long_about = None)]
struct Cli {
    /// Log verbosity on stderr: error, warn, info, debug or trace. Overrides `RUST_LOG`;
    /// without either, `info`.
    #[arg(long, global = true, value_name = "LEVEL", value_enum)]
    log_level: Option<LogLevel>,
    /// Client config file for `run` and the control subcommands (`anonnet --config FILE
    /// status`); also accepted after the subcommand, which wins.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// `--log-level` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the client daemon: SOCKS5 proxy (default 127.0.0.1:9050) and HTTP proxy
    /// (default 127.0.0.1:9080) over onion circuits.
    Run {
        /// Client config file [default: the OS config directory's anonnet/client.toml].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Exit when standard input closes (used by `anonnet testnet`).
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    },
    /// Run a relay (one UDP port, QUIC); optionally an exit.
    Relay {
        /// Relay config file (see config/relay.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Exit when standard input closes (used by `anonnet testnet`).
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    },
    /// Run a directory authority: takes relays' descriptors, tests and measures them,
    /// votes and signs the consensus with the network's other authorities.
    Authority {
        /// Authority config file (see config/authority.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Exit when standard input closes (used by `anonnet testnet`).
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    },
    /// List the consensus the client holds (its state directory's copy): each relay's
    /// NodeId, address, flags and weight. Reads files only; the daemon need not run.
    Consensus(cli::Target),
    /// Start a whole network on this machine: directory authorities, N relay processes, a
    /// demo web site and the client's SOCKS5 proxy in front. Ctrl-C stops everything.
    Testnet {
        /// Number of relay processes (3..=64) [default: 5].
        #[arg(long, value_name = "N", value_parser = parse_relays)]
        relays: Option<usize>,
        /// Number of directory authority processes (1..=9) [default: 3].
        #[arg(long, value_name = "K", value_parser = parse_authorities)]
        authorities: Option<usize>,
        /// Seconds an authority must know a relay before voting it the Guard flag
        /// [default: 0; a real network uses 8 days].
        #[arg(long, value_name = "SECS")]
        guard_after: Option<u64>,
        /// Circuit handshake of the client and the hidden-service host: "hybrid"
        /// (X25519 + ML-KEM-768) or "classical" (X25519 only) [default: hybrid].
        #[arg(long, value_name = "KIND", value_parser = ["hybrid", "classical"])]
        circuit_handshake: Option<String>,
        /// Length of the authorities' voting period in seconds (2..=3600) [default: 4].
        #[arg(long, value_name = "SECS", value_parser = parse_period)]
        period: Option<u64>,
        /// SOCKS5 address of the client, IP:PORT; "auto" or port 0 picks a free port
        /// [default: 127.0.0.1:9050].
        #[arg(long, value_name = "ADDR", value_parser = config::parse_socks_listen)]
        socks: Option<SocketAddr>,
        /// HTTP proxy address of the client, IP:PORT; "auto" or port 0 picks a free port
        /// [default: 127.0.0.1:9080].
        #[arg(long, value_name = "ADDR", value_parser = config::parse_listen)]
        http: Option<SocketAddr>,
        /// Directory for configs, keys and logs [default: a fresh directory under the OS
        /// temp dir].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Testnet config file (see config/testnet.toml); flags override it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Serve Prometheus metrics on a free loopback port from every authority, relay
        /// and the client; prints `Metrics: http://ADDR/metrics` for the client's.
        #[arg(long)]
        metrics: bool,
        /// For tests: the last N relays accept hidden-service descriptors but never serve
        /// them (hostile HSDirs; docs/protocol.md §12.7).
        #[arg(long, value_name = "N", default_value_t = 0)]
        withholding_hsdirs: usize,
        /// For tests: N relays (before the withholding ones) keep serving the first
        /// revision of every descriptor.
        #[arg(long, value_name = "N", default_value_t = 0)]
        stale_hsdirs: usize,
        /// For tests: the first N relays claim the demo site's `.dark` name with a
        /// back-dated record of their own and store it on every DHT node (hostile name
        /// squatters; docs/protocol.md §12.5).
        #[arg(long, value_name = "N", default_value_t = 0)]
        squatting_relays: usize,
        /// For benchmarks: the demo service suggests at least this proof-of-work effort
        /// even when idle (its `pow_min_effort`), so clients solve puzzles of it.
        #[arg(long, value_name = "EFFORT", default_value_t = 0)]
        service_pow_effort: u32,
        /// Put every process in its own network namespace on an address in its own /16 of
        /// 10.0.0.0/8, joined by emulated links: "lan" (1 ms, 1 Gbit/s), "broadband"
        /// (5-40 ms per host, 100 Mbit/s, 0.1 % loss) or "lossy" (as broadband, 2 % loss,
        /// 20 Mbit/s). Needs root and vde2; the proxies stay reachable on loopback.
        #[arg(long, value_name = "PROFILE", value_parser = wan::WanProfile::parse)]
        wan: Option<wan::WanProfile>,
        /// Seed of the per-host link delays of --wan [default: random; printed in
        /// testnet.json].
        #[arg(long, value_name = "N", requires = "wan")]
        wan_seed: Option<u64>,
        /// For benchmarks: N more client daemons (0..=32) beside the main one, each with
        /// its own state and proxies (in its own namespace with --wan); their SOCKS and
        /// HTTP addresses are listed in testnet.json under "clients".
        #[arg(long, value_name = "N", default_value_t = 0,
              value_parser = clap::value_parser!(u16).range(0..=32))]
        extra_clients: u16,
    },
    /// Look a host name up (or an address's name) through the network, as
    /// `tor-resolve` does: the running daemon's exit answers; nothing is resolved here.
    /// Prints the first address (IPv4 first) or the name.
    Resolve(resolve::ResolveArgs),
    /// Start Chromium or Firefox (whichever is installed) anonymised: a fresh temporary
    /// profile and an isolation key of its own, every connection through the running
    /// daemon, WebRTC kept to the proxy, DNS prefetch and QUIC off. The profile is deleted
    /// when the browser exits.
    Browser(browser::BrowserArgs),
    /// Control subcommands over the running daemon's control API.
    #[command(flatten)]
    Control(cli::ControlCommand),
    /// Write the man pages, anonnet.1 and one per subcommand (anonnet-run.1,
    /// anonnet-service-publish.1, …), into DIR. Hidden: packaging runs it
    /// (scripts/package-deb.sh), so the pages always match this binary.
    #[command(hide = true)]
    Man {
        /// Directory for the pages (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

fn parse_authorities(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=testnet::MAX_AUTHORITIES).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a number of authorities in 1..={}",
            testnet::MAX_AUTHORITIES
        )),
    }
}

fn parse_period(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (2..=3600).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a period in 2..=3600 seconds")),
    }
}

fn parse_relays(s: &str) -> Result<usize, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of relays"))?;
    config::check_testnet_relays(n)
}

/// Everything that stops a mode, as the user will read it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `anonnet run` without `--config` and no file at the standard place.
    #[error(
        "no client config: looked for {looked} (not found). Pass --config FILE, or copy \
         config/client.toml there and set `client.network` to the network file of the \
         network to join (its directory authorities; `anonnet testnet` writes one as \
         DIR/network.toml)"
    )]
    NoClientConfig {
        /// Where it looked.
        looked: String,
    },
    /// The relay could not start.
    #[error("relay: {0}")]
    Relay(#[from] RelayError),
    /// A hidden service could not start.
    #[error("hidden service: {source} ([[service]] in {file})")]
    Service {
        /// The client config file naming the service.
        file: String,
        /// Why it could not start.
        source: anonnet_client::ServiceError,
    },
    /// The client could not start or bootstrap.
    #[error("client: {0}")]
    Client(#[from] ClientError),
    /// The SOCKS5 port could not be bound.
    #[error(
        "{source}. Port {port} is taken (another anonnet or Tor?): change `client.socks_listen` \
         in {file}, or set it to \"auto\" to pick a free port"
    )]
    SocksBind {
        /// The port asked for.
        port: u16,
        /// The config file.
        file: String,
        /// The bind error (it names the address).
        source: anonnet_proxy::ProxyError,
    },
    /// The HTTP proxy port could not be bound.
    #[error(
        "{source}. Port {port} is taken: change `client.http_listen` in {file}, or set it to \
         \"auto\" to pick a free port"
    )]
    HttpBind {
        /// The port asked for.
        port: u16,
        /// The config file.
        file: String,
        /// The bind error (it names the address).
        source: anonnet_proxy::ProxyError,
    },
    /// The metrics port could not be bound.
    #[error(
        "cannot listen for metrics on {addr}: {source}. Change `metrics.listen` in {file}, or \
         set it to \"auto\" to pick a free port"
    )]
    MetricsBind {
        /// The address asked for.
        addr: SocketAddr,
        /// The config file.
        file: String,
        /// The bind error.
        source: std::io::Error,
    },
    /// A local I/O step failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The directory authority could not start.
    #[error("authority: {0}")]
    Authority(#[from] anonnet_authority::AuthorityError),
    /// The testnet could not start.
    #[error("testnet: {0}")]
    Testnet(String),
    /// A control subcommand's request to the daemon failed (what to do when no daemon
    /// answers is added to the text).
    #[error("{source}{hint}")]
    ControlApi {
        /// The control client's error.
        source: anonnet_control::ControlError,
        /// Advice appended to it (empty, or `; start it with …`).
        hint: String,
    },
    /// The control API could not start, or a subcommand failed: one line, and the kind
    /// of failure that chooses the exit status.
    #[error("{message}")]
    Failed {
        /// The kind of failure.
        kind: ErrorKind,
        /// What went wrong, for people.
        message: String,
    },
}

impl HasKind for Error {
    /// Each source's own kind; a missing client config is [`ErrorKind::Config`]; a
    /// listener that cannot be bound the bind error's kind; the testnet's failures
    /// [`ErrorKind::LocalResource`] (a process that did not start or become ready).
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(e) => e.kind(),
            Error::NoClientConfig { .. } => ErrorKind::Config,
            Error::Relay(e) => e.kind(),
            Error::Service { source, .. } => source.kind(),
            Error::Client(e) => e.kind(),
            Error::SocksBind { source, .. } | Error::HttpBind { source, .. } => source.kind(),
            Error::MetricsBind { source, .. } | Error::Io { source, .. } => HasKind::kind(source),
            Error::Authority(e) => e.kind(),
            Error::Testnet(_) => ErrorKind::LocalResource,
            Error::ControlApi { source, .. } => source.kind(),
            Error::Failed { kind, .. } => *kind,
        }
    }
}

impl Error {
    /// A failure of `kind` described by `message` (one line).
    pub fn failed(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error::Failed {
            kind,
            message: message.into(),
        }
    }

    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Man { dir } = &cli.command {
        return match write_man_pages(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("anonnet: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(cli.log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("anonnet: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if cli.config.is_some()
            && matches!(
                cli.command,
                Command::Relay { .. } | Command::Testnet { .. } | Command::Authority { .. }
            )
        {
            return Err(Error::failed(
                ErrorKind::BadRequest,
                "`--config` before the subcommand names a client config; for `relay`, \
                 `authority` and `testnet` put `--config FILE` after the subcommand",
            ));
        }
        match cli.command {
            Command::Run {
                config,
                exit_with_parent,
            } => run_client(config.or(cli.config), exit_with_parent).await,
            Command::Control(command) => cli::run(command, cli.config).await,
            Command::Resolve(args) => resolve::run(args, cli.config).await,
            Command::Browser(args) => browser::run(args, cli.config).await,
            Command::Relay {
                config,
                exit_with_parent,
            } => run_relay(&config, exit_with_parent).await,
            Command::Authority {
                config,
                exit_with_parent,
            } => run_authority(&config, exit_with_parent).await,
            Command::Consensus(target) => cli::consensus(target, cli.config),
            // Answered before the runtime starts.
            Command::Man { .. } => Ok(()),
            Command::Testnet {
                relays,
                authorities,
                guard_after,
                circuit_handshake,
                period,
                socks,
                http,
                dir,
                config,
                metrics,
                withholding_hsdirs,
                stale_hsdirs,
                squatting_relays,
                service_pow_effort,
                wan,
                wan_seed,
                extra_clients,
            } => {
                let shape = testnet::NetworkShape {
                    authorities: authorities.unwrap_or(testnet::DEFAULT_AUTHORITIES),
                    guard_after: guard_after.unwrap_or(0),
                    period: period.unwrap_or(testnet::DEFAULT_PERIOD),
                    withholding_hsdirs,
                    stale_hsdirs,
                    squatting_relays,
                    service_pow_effort,
                };
                let handshake = if circuit_handshake.as_deref() == Some("classical") {
                    "classical"
                } else {
                    "hybrid"
                };
                let wan = wan.map(|profile| testnet::WanOptions {
                    profile,
                    seed: wan_seed.unwrap_or_else(rand::random),
                });
                run_testnet(
                    relays,
                    shape,
                    handshake,
                    socks,
                    http,
                    dir,
                    config,
                    cli.log_level,
                    metrics,
                    wan,
                    usize::from(extra_clients),
                )
                .await
            }
        }
    });
    // Don't wait for tasks still parked on the network.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anonnet: error: {e}");
            // The exit status tells scripts the kind (sysexits.h, docs/errors.md).
            ExitCode::from(e.kind().exit_code())
        }
    }
}

/// `anonnet man DIR`: the man pages of every visible command, generated from the clap
/// definitions above (clap_mangen), so they cannot drift from `--help`.
fn write_man_pages(dir: &Path) -> Result<(), Error> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
        .map_err(Error::io(format!("writing man pages to {}", dir.display())))
}

/// Logs go to stderr, filtered by `--log-level`, else `RUST_LOG`, else `info`.
fn init_logging(level: Option<LogLevel>) {
    let filter = match level {
        Some(level) => tracing_subscriber::EnvFilter::new(level.as_str()),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Print one machine-readable line on stdout and flush it, so a parent reading the pipe
/// sees it at once.
pub fn print_line(line: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(Error::io("writing to stdout"))
}

async fn run_relay(config: &Path, exit_with_parent: bool) -> Result<(), Error> {
    let mut shutdown = Shutdown::new(exit_with_parent).map_err(Error::io("signal handlers"))?;
    let settings = config::load_relay(config)?;
    let _unsafe_logging = unsafe_logging(settings.safe_logging, &settings.file);
    info!(config = %settings.file.display(), "starting relay");
    let metrics = metrics::bind(settings.metrics_listen, &settings.file).await?;
    let relay = Arc::new(Relay::start(settings.relay).await?);
    let _metrics = metrics::spawn(metrics, || metrics::relay_registry(relay.clone()))?;
    print_line(&format!(
        "RELAY ready {} {} {}",
        relay.node_id(),
        relay.local_addr(),
        settings.descriptor_file.display()
    ))?;
    let why = shutdown.wait().await;
    info!("{why}: relay shutting down");
    relay
        .shutdown_gracefully(std::time::Duration::from_secs(2))
        .await;
    Ok(())
}

async fn run_authority(config: &Path, exit_with_parent: bool) -> Result<(), Error> {
    let mut shutdown = Shutdown::new(exit_with_parent).map_err(Error::io("signal handlers"))?;
    let settings = config::load_authority(config)?;
    let _unsafe_logging = unsafe_logging(settings.safe_logging, &settings.file);
    info!(config = %settings.file.display(), "starting directory authority");
    let metrics = metrics::bind(settings.metrics_listen, &settings.file).await?;
    let authority = Arc::new(
        anonnet_authority::Authority::start(settings.authority)
            .await
            .map_err(Error::Authority)?,
    );
    let _metrics = metrics::spawn(metrics, || metrics::authority_registry(authority.clone()))?;
    print_line(&format!(
        "AUTHORITY ready {} {} {}",
        authority.node_id(),
        authority.local_addr(),
        hex::encode(authority.identity())
    ))?;
    let why = shutdown.wait().await;
    info!("{why}: authority shutting down");
    authority.shutdown(std::time::Duration::from_secs(2)).await;
    Ok(())
}

/// With `log.safe = false`, turn safe logging off for as long as the returned guard lives
/// (destinations, `.anon`/`.dark` names and paths are then written out), saying so once.
fn unsafe_logging(safe: bool, file: &Path) -> Option<anonnet_net::logging::UnsafeLoggingGuard> {
    if safe {
        return None;
    }
    match anonnet_net::logging::disable_safe_logging() {
        Ok(g) => {
            warn!(
                config = %file.display(),
                "log.safe = false: logs will name destinations, .anon/.dark names and circuit paths"
            );
            Some(g)
        }
        Err(e) => {
            warn!("cannot turn safe logging off: {e}");
            None
        }
    }
}

/// `ports.json` in the state directory while the client runs; removed when dropped.
struct PortsFile(PathBuf);

impl PortsFile {
    /// Write `{"socks": "IP:PORT", "http": "IP:PORT", …}`, one entry per listener.
    ///
    /// # Errors
    /// The I/O error (with the file's path) when the directory or the file cannot be
    /// written: a read-only or full state directory.
    fn write(state_dir: &Path, ports: &[(&str, SocketAddr)]) -> Result<PortsFile, Error> {
        create_private_dir(state_dir)?;
        let path = state_dir.join(PORTS_FILE);
        let map: serde_json::Map<String, serde_json::Value> = ports
            .iter()
            .map(|(name, addr)| ((*name).to_owned(), addr.to_string().into()))
            .collect();
        let body = serde_json::Value::Object(map).to_string() + "\n";
        anonnet_state::write_atomically(&path, body.as_bytes())
            .map_err(Error::io(format!("writing {}", path.display())))?;
        Ok(PortsFile(path))
    }

    /// [`PortsFile::write`], where failing is not fatal: the proxies work without the
    /// file, only the CLI and the tray cannot find the daemon, which the warning says.
    fn write_or_warn(state_dir: &Path, ports: &[(&str, SocketAddr)]) -> Option<PortsFile> {
        match PortsFile::write(state_dir, ports) {
            Ok(f) => Some(f),
            Err(e) => {
                warn!(
                    "cannot save {PORTS_FILE}: {e}; the proxies run, but `anonnet status` and \
                     the tray cannot find this daemon until the state directory is writable"
                );
                None
            }
        }
    }
}

impl Drop for PortsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Create `dir` (and parents); on Unix the directory itself gets mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    let what = || format!("creating directory {}", dir.display());
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(Error::io(what()))
}

async fn run_client(config: Option<PathBuf>, exit_with_parent: bool) -> Result<(), Error> {
    let mut shutdown = Shutdown::new(exit_with_parent).map_err(Error::io("signal handlers"))?;
    let path = cli::client_config_path(config)?;
    let settings = config::load_client(&path)?;
    let _unsafe_logging = unsafe_logging(settings.safe_logging, &settings.file);
    info!(config = %settings.file.display(), fallbacks = settings.bootstrap.len(), authorities = settings.network.authorities.len(), "starting client");

    let socks = SocksServer::bind(settings.socks_listen)
        .await
        .map_err(|source| Error::SocksBind {
            port: settings.socks_listen.port(),
            file: settings.file.display().to_string(),
            source,
        })?;
    let socks = match settings.handshake_timeout {
        Some(t) => socks.with_handshake_timeout(t),
        None => socks,
    };
    let socks_addr = socks.local_addr();
    let http = HttpProxy::bind(settings.http_listen)
        .await
        .map_err(|source| Error::HttpBind {
            port: settings.http_listen.port(),
            file: settings.file.display().to_string(),
            source,
        })?;
    let http = match settings.handshake_timeout {
        Some(t) => http.with_header_read_timeout(t),
        None => http,
    };
    let http_addr = http.local_addr();
    // The cookie is written before ports.json names the port, so a reader finds both.
    let control = control::bind(&settings).await?;
    let control_addr = control.local_addr();
    let metrics = metrics::bind(settings.metrics_listen, &settings.file).await?;
    let mut ports = vec![
        ("socks", socks_addr),
        ("http", http_addr),
        ("control", control_addr),
    ];
    if let Some(m) = &metrics {
        ports.push(("metrics", m.local_addr()));
    }
    let _ports = PortsFile::write_or_warn(&settings.state_dir, &ports);

    let mut client_config = ClientConfig {
        network: Some(settings.network.clone()),
        bootstrap: settings.bootstrap,
        ..ClientConfig::default()
    };
    if let Some(t) = settings.circuit_build_timeout {
        client_config.circuit_build_timeout = t;
    }
    if let Some(t) = settings.stream_timeout {
        client_config.stream_timeout = t;
    }
    if let Some(n) = settings.hs_prefixes {
        client_config.hs_prefixes = n;
    }
    if let Some(n) = settings.pool_size {
        client_config.pool_size = n;
    }
    if let Some(e) = settings.hs_pow_max_effort {
        client_config.hs_pow_max_effort = e;
    }
    if let Some(t) = settings.max_dirtiness {
        client_config.max_dirtiness = t;
    }
    client_config.state_dir = Some(settings.state_dir.clone());
    client_config.allow_same_subnet = settings.allow_same_subnet;
    client_config.circuit_handshake = settings.circuit_handshake;
    client_config.address_book = settings.address_book.clone();
    client_config.guard_lifetimes = settings.guard_lifetimes;
    let client: Arc<Client> = Client::start(client_config).await?;
    let services = services::Services::start(
        client.clone(),
        &settings.state_dir,
        settings.services.clone(),
    )
    .map_err(|source| Error::Service {
        file: settings.file.display().to_string(),
        source,
    })?;
    // Served during bootstrap too, so the tray can show its progress.
    let _serving_control = control::spawn(control, client.clone(), services);
    let _metrics = metrics::spawn(metrics, || metrics::client_registry(client.clone()))?;
    info!(socks = %socks_addr, http = %http_addr, "building the first circuit");
    tokio::select! {
        r = client.wait_ready() => r?,
        why = shutdown.wait() => {
            info!("{why}: client shutting down before it was ready");
            return Ok(());
        }
    }
    for hosted in client.services() {
        tokio::spawn(announce_when_published(hosted));
    }
    if let Some(c) = client.consensus_status() {
        print_line(&format!(
            "consensus ready: {} relays, signed by {} of {} authorities",
            c.relays, c.signatures, c.authorities
        ))?;
    }
    let serving_socks = tokio::spawn(socks.serve(client.clone()));
    let serving_http = tokio::spawn(http.serve(client.clone()));
    print_line(&format!("SOCKS5 ready on {socks_addr}"))?;
    print_line(&format!("HTTP proxy ready on {http_addr}"))?;
    let why = tokio::select! {
        why = shutdown.wait() => why,
        r = serving_socks => {
            // serve() only returns if the listener fails for good.
            warn!("SOCKS5 listener stopped: {r:?}");
            return Err(Error::Io {
                what: format!("SOCKS5 listener on {socks_addr}"),
                source: std::io::Error::other("stopped accepting connections"),
            });
        }
        r = serving_http => {
            warn!("HTTP proxy listener stopped: {r:?}");
            return Err(Error::Io {
                what: format!("HTTP proxy listener on {http_addr}"),
                source: std::io::Error::other("stopped accepting connections"),
            });
        }
    };
    info!("{why}: client shutting down");
    client.shutdown(std::time::Duration::from_secs(2)).await;
    Ok(())
}

/// Prefix of the line a client daemon prints once a configured hidden service's
/// descriptor (and `.dark` name, if any) is stored: `HIDDEN SERVICE ready <address>
/// <name or ->`.
pub const SERVICE_READY: &str = "HIDDEN SERVICE ready ";
/// How long a daemon waits for a service's first publication before it stops announcing.
const SERVICE_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

async fn announce_when_published(hosted: Arc<anonnet_client::HostedService>) {
    let started = std::time::Instant::now();
    let wants_name = hosted.config().dark_name.is_some();
    while started.elapsed() < SERVICE_READY_WAIT {
        if hosted.is_published() && (!wants_name || hosted.is_name_registered()) {
            let name = hosted
                .config()
                .dark_name
                .as_ref()
                .map(|n| format!("{n}.dark"))
                .unwrap_or_else(|| "-".into());
            let line = format!("{SERVICE_READY}{} {name}", hosted.address());
            if let Err(e) = print_line(&line) {
                warn!("{e}");
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    warn!(
        service = %anonnet_net::logging::sensitive(hosted.address()),
        "not published after {SERVICE_READY_WAIT:?}"
    );
}

#[allow(clippy::too_many_arguments)]
async fn run_testnet(
    relays: Option<usize>,
    shape: testnet::NetworkShape,
    circuit_handshake: &'static str,
    socks: Option<SocketAddr>,
    http: Option<SocketAddr>,
    dir: Option<PathBuf>,
    config: Option<PathBuf>,
    log_level: Option<LogLevel>,
    metrics: bool,
    wan: Option<testnet::WanOptions>,
    extra_clients: usize,
) -> Result<(), Error> {
    let mut shutdown = Shutdown::new(false).map_err(Error::io("signal handlers"))?;
    let file = match &config {
        Some(path) => config::load_testnet(path)?,
        None => config::TestnetSettings::default(),
    };
    let default_socks =
        config::parse_socks_listen(config::DEFAULT_SOCKS).map_err(Error::Testnet)?;
    let default_http = config::parse_listen(config::DEFAULT_HTTP).map_err(Error::Testnet)?;
    let options = testnet::TestnetOptions {
        relays: relays
            .or(file.relays)
            .unwrap_or(config::DEFAULT_TESTNET_RELAYS),
        socks: socks.or(file.socks_listen).unwrap_or(default_socks),
        http: http.or(file.http_listen).unwrap_or(default_http),
        dir: dir.or(file.dir),
        exit_policy: file.exit_policy.unwrap_or_else(|| {
            let policy = if wan.is_some() {
                config::TESTNET_WAN_EXIT_POLICY
            } else {
                config::TESTNET_EXIT_POLICY
            };
            policy.iter().map(|l| (*l).to_owned()).collect()
        }),
        log_level: log_level.map(LogLevel::as_str),
        shape,
        circuit_handshake,
        metrics,
        wan,
        extra_clients,
    };
    testnet::run(options, &mut shutdown).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_visible_subcommand_and_not_the_hidden_one() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("man1");
        write_man_pages(&out).unwrap();
        for page in [
            "anonnet.1",
            "anonnet-run.1",
            "anonnet-relay.1",
            "anonnet-status.1",
            "anonnet-service-publish.1",
            "anonnet-testnet.1",
        ] {
            let text = std::fs::read_to_string(out.join(page)).unwrap();
            let title = format!(".TH {} 1", page.trim_end_matches(".1"));
            assert!(text.contains(&title), "{page}: {text}");
        }
        assert!(!out.join("anonnet-man.1").exists());
        assert!(!out.join("anonnet-help.1").exists());
        let main = std::fs::read_to_string(out.join("anonnet.1")).unwrap();
        assert!(main.contains("anonnet\\-run(1)"), "{main}");
        assert!(!main.contains("anonnet\\-man(1)"), "{main}");
    }
}
