//! End-to-end benchmark, anonnet beside Tor in the same run (issue 7, `../shared/DESIGN.md`
//! §5). Run from the repository root:
//!
//! ```sh
//! cargo run --release -p anonnet-tests --bin bench-vs-tor            # full run, ~6 min
//! cargo run --release -p anonnet-tests --bin bench-vs-tor -- --quick # 64 MiB, fewer samples
//! ```
//!
//! It builds `anonnet` (release), installs `tor` with apt when missing, starts the private Tor
//! network with `../shared/tools/tor-testnet/start` and an `anonnet testnet` (5 relays, a
//! client, the demo hidden service), measures both through their SOCKS ports against the
//! same HTTP server (tor-testnet's `httpd.py`, docroot `WORK/www`), prints one table and
//! stops both networks. Method: docs/performance.md.
//!
//! With `--wan PROFILE` (`lan`, `broadband`, `lossy`; needs root, `vde2`, `tor`) both
//! networks run off loopback: `anonnet testnet --wan PROFILE` puts every anonnet process in
//! its own network namespace behind an emulated link, and [`tor_wan`] starts a private Tor
//! network (3 authorities, one relay per anonnet relay, a client, an onion service) inside
//! the same namespaces, so both cross the same links. Both fetch from the testnet's demo
//! site (`/bytes/N`). The table then adds the bottleneck rate, each network's circuit
//! round trip and the server's part of a first byte (two exit–site round trips), all from
//! the configured delays of the circuits it built, so figures read as fractions of the
//! physical limit. Every run also reports the longest pause between two reads of the bulk
//! body (the `lossy` profile's "no stall longer than 2 s"):
//!
//! ```sh
//! sudo target/release/bench-vs-tor --wan broadband --quick
//! ```
//!
//! Every wait and loop is bounded; a network that does not come up ends the run with an
//! error after stopping what was started.

mod tor_wan;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MIB: f64 = 1024.0 * 1024.0;
/// Longest the Tor network may take to start (its own `--timeout` is shorter).
const TOR_START_LIMIT: Duration = Duration::from_secs(300);
/// Longest the anonnet testnet or a fresh client may take to print its ready lines.
const ANONNET_START_LIMIT: Duration = Duration::from_secs(120);

#[derive(Parser, Debug)]
#[command(about = "anonnet beside a private Tor network: one table (docs/performance.md)")]
struct Opts {
    /// Shorter run: 64 MiB bulk, 20 TTFB samples, 10 circuit builds, 3 cold HS connects.
    #[arg(long)]
    quick: bool,
    /// Bulk transfer size in MiB (default 256, 64 with --quick).
    #[arg(long)]
    bulk_mib: Option<u64>,
    /// Time-to-first-byte samples per network (default 50, 20 with --quick).
    #[arg(long)]
    ttfb_runs: Option<usize>,
    /// Circuit builds per network (default 20, 10 with --quick).
    #[arg(long)]
    circ_runs: Option<usize>,
    /// Cold hidden-service connects per network (default 5, 3 with --quick).
    #[arg(long)]
    hs_runs: Option<usize>,
    /// Concurrent-stream rounds to run (comma-separated; the table shows 100 and 1000).
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000])]
    concurrency: Vec<usize>,
    /// Circuit handshake of the anonnet client: "hybrid" (X25519 + ML-KEM-768, the
    /// default) or "classical" (X25519 only), to compare build times.
    #[arg(long, default_value = "hybrid", value_parser = ["hybrid", "classical"])]
    circuit_handshake: String,
    /// `client.hs_prefixes` of the cold hidden-service clients (pre-built guard → vanguard
    /// prefixes, 0..=8; default: the client's default, 3), to compare with 0.
    #[arg(long)]
    hs_prefixes: Option<u8>,
    /// Proof-of-work effort the anonnet demo service suggests even when idle (`anonnet
    /// testnet --service-pow-effort`), so the cold hidden-service connects include solving
    /// a puzzle of that effort (default 0: none). Tor's service runs without PoW.
    #[arg(long, default_value_t = 0)]
    hs_pow_effort: u32,
    /// Skip Tor (anonnet figures and physical limits only), e.g. while optimising.
    #[arg(long)]
    no_tor: bool,
    /// Run both networks on an emulated WAN of this profile (`lan`, `broadband`, `lossy`)
    /// instead of loopback: every process in its own network namespace (needs root).
    #[arg(long, value_name = "PROFILE", value_parser = ["lan", "broadband", "lossy"])]
    wan: Option<String>,
    /// Seed of the per-host link delays of --wan (default: the testnet's random one,
    /// printed in the table), so a run can be repeated.
    #[arg(long, requires = "wan")]
    wan_seed: Option<u64>,
    /// Tor network base port (tor-testnet `--base-port`; loopback only).
    #[arg(long, default_value_t = 23000)]
    tor_base_port: u16,
    /// Use this `anonnet` binary instead of building one (A/B runs of an optimisation).
    #[arg(long)]
    anonnet_bin: Option<PathBuf>,
    /// Work directory (a fresh temporary one by default); left in place for inspection,
    /// without the bulk file, which is deleted at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// One network's figures; `None` = not measured or failed.
#[derive(Default, Debug, Clone)]
struct Figures {
    bulk_mib_s: Option<f64>,
    /// The longest pause between two reads of the bulk body (ms).
    bulk_longest_pause_ms: Option<f64>,
    cpu_ms_per_mib: Option<f64>,
    ttfb_median_ms: Option<f64>,
    ttfb_p95_ms: Option<f64>,
    /// TTFB of a GET pipelined behind the SOCKS5 request (median, ms).
    ttfb_pipelined_median_ms: Option<f64>,
    build_median_ms: Option<f64>,
    build_p95_ms: Option<f64>,
    hs_cold_median_ms: Option<f64>,
    c100: Option<(f64, usize)>,
    c1000: Option<(f64, usize)>,
    client_rss_mib: Option<f64>,
    relay_rss_mib: Option<f64>,
    client_rss_after_1000_mib: Option<f64>,
}

fn main() {
    let opts = Opts::parse();
    if let Err(e) = run(&opts) {
        eprintln!("bench-vs-tor: {e}");
        std::process::exit(1);
    }
}

fn log(msg: &str) {
    eprintln!("[bench {:>7.1}s] {msg}", started().elapsed().as_secs_f64());
}

fn started() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(opts: &Opts) -> Res<()> {
    started();
    let bulk_mib = opts.bulk_mib.unwrap_or(if opts.quick { 64 } else { 256 });
    let ttfb_runs = opts.ttfb_runs.unwrap_or(if opts.quick { 20 } else { 50 });
    let circ_runs = opts.circ_runs.unwrap_or(if opts.quick { 10 } else { 20 });
    let hs_runs = opts.hs_runs.unwrap_or(if opts.quick { 3 } else { 5 });
    let root = repo_root();
    let tools = root.join("../shared/tools/tor-testnet");
    let work = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("anonnet-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work)?;
    let work = work.canonicalize()?;
    let load_before = load_average();
    log(&format!(
        "work dir {}; load average before: {load_before}",
        work.display()
    ));

    let anonnet = match &opts.anonnet_bin {
        Some(bin) => bin.canonicalize()?,
        None => build_anonnet(&root)?,
    };
    ensure_tools(opts.no_tor)?;
    let runs = Runs {
        bulk_mib,
        ttfb_runs,
        circ_runs,
        hs_runs,
    };
    if let Some(profile) = &opts.wan {
        let (a, t, w) = run_wan(opts, &anonnet, &work, profile, &runs)?;
        return finish(&work, &load_before, &render(&a, &t, &Extra::Wan(w), &runs));
    }

    // The Tor network also brings the HTTP server both networks fetch from.
    let tor_dir = work.join("tor");
    let http_base = format!("http://127.0.0.2:{}", opts.tor_base_port + 80);
    let (tor, mut httpd) = if opts.no_tor {
        (
            None,
            Some(start_httpd(&tools, &tor_dir, opts.tor_base_port + 80)?),
        )
    } else {
        log("starting the Tor network (tor-testnet/start, up to 300 s)");
        (
            Some(TorNet::start(&tools, &tor_dir, opts.tor_base_port)?),
            None,
        )
    };
    let big_file = tor_dir.join("www/big.bin");
    let result = (|| -> Res<(Figures, Figures, Limits)> {
        make_big_file(&big_file, bulk_mib)?;
        log("starting the anonnet testnet");
        log(&format!("circuit handshake: {}", opts.circuit_handshake));
        if opts.hs_pow_effort > 0 {
            log(&format!(
                "demo service proof-of-work effort: {}",
                opts.hs_pow_effort
            ));
        }
        let mut net = AnonNet::start(
            &anonnet,
            &work.join("anonnet"),
            &opts.circuit_handshake,
            opts.hs_pow_effort,
            None,
        )?;
        let measured = (|| -> Res<(Figures, Figures)> {
            let cfg = Plan {
                small_url: format!("{http_base}/small.bin"),
                big_url: format!("{http_base}/big.bin"),
                bulk_mib,
                ttfb_runs,
                concurrency: &opts.concurrency,
            };
            let mut a = measure_common("anonnet", net.socks, &net.pids()?, &cfg)?;
            a.build_median_ms = None;
            let builds = net.circuit_builds(circ_runs, &cfg.small_url)?;
            a.build_median_ms = median(&builds);
            a.build_p95_ms = percentile(&builds, 0.95);
            log(&format!("anonnet circuit builds (ms): {builds:.1?}"));
            let hs = net.hs_cold(&anonnet, hs_runs, opts.hs_prefixes)?;
            log(&format!("anonnet cold HS connects (ms): {hs:.0?}"));
            a.hs_cold_median_ms = median(&hs);
            let mut t = Figures::default();
            if let Some(tor) = &tor {
                t = measure_common("tor", tor.socks, &tor.pids()?, &cfg)?;
                tor.circuit_and_onion(&tools, circ_runs, hs_runs, bulk_mib, &mut t)?;
            }
            Ok((a, t))
        })();
        net.stop();
        let (a, t) = measured?;
        let limits = physical_limits(bulk_mib, &http_base)?;
        Ok((a, t, limits))
    })();
    if let Some(tor) = &tor {
        tor.stop(&tools);
    }
    if let Some(h) = httpd.as_mut() {
        terminate(h);
    }
    // The work dir stays for inspection (logs, configs, the table: a few MiB); the bulk
    // file (`bulk_mib` MiB) goes, or repeated runs fill the temp dir.
    match std::fs::remove_file(&big_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log(&format!("could not remove {}: {e}", big_file.display())),
    }
    let (a, t, limits) = result?;
    finish(
        &work,
        &load_before,
        &render(&a, &t, &Extra::Loopback(limits), &runs),
    )
}

/// Sample counts and sizes of one run.
struct Runs {
    bulk_mib: u64,
    ttfb_runs: usize,
    circ_runs: usize,
    hs_runs: usize,
}

/// What the table shows besides the two networks' figures.
enum Extra {
    /// On loopback: the machine's physical limits.
    Loopback(Limits),
    /// On an emulated WAN: its bottleneck and the circuits' configured round trips.
    Wan(WanFigures),
}

/// The emulated WAN of a `--wan` run.
struct WanFigures {
    profile: String,
    seed: Option<u64>,
    /// The smallest link rate (MiB/s).
    bottleneck_mib_s: Option<f64>,
    /// One TCP download of the bulk object straight from the client's namespace to the
    /// site, over the same two emulated links and no relay (MiB/s): what one TCP
    /// connection of this machine's kernel reaches on the profile.
    direct_mib_s: Option<f64>,
    /// Median circuit round trip of each network's built circuits, from the configured
    /// delays (ms).
    anonnet_rtt_ms: Option<f64>,
    tor_rtt_ms: Option<f64>,
    /// Median of the three build round trips (to guard, middle, exit) added (ms).
    anonnet_build_rtts_ms: Option<f64>,
    tor_build_rtts_ms: Option<f64>,
    /// Median of the server's part of a first byte: two exit–site round trips (ms).
    anonnet_server_ms: Option<f64>,
    tor_server_ms: Option<f64>,
}

/// Both networks on one emulated WAN: the anonnet testnet first (it makes the namespaces
/// and links), then Tor inside its namespaces; anonnet is measured, then Tor; Tor is
/// stopped, then the testnet (which removes the namespaces).
fn run_wan(
    opts: &Opts,
    anonnet: &Path,
    work: &Path,
    profile: &str,
    runs: &Runs,
) -> Res<(Figures, Figures, WanFigures)> {
    log(&format!(
        "starting the anonnet testnet on the {profile} WAN"
    ));
    let wan = WanArgs {
        profile,
        seed: opts.wan_seed,
    };
    let mut net = AnonNet::start(
        anonnet,
        &work.join("anonnet"),
        &opts.circuit_handshake,
        opts.hs_pow_effort,
        Some(&wan),
    )?;
    let result = (|| -> Res<(Figures, Figures, WanFigures)> {
        let hosts = tor_wan::hosts(&net.layout)?;
        let site: SocketAddr = net.layout["site"]["addr"]
            .as_str()
            .ok_or("testnet.json: no site address")?
            .parse()?;
        let plan = Plan {
            small_url: format!("http://{site}/bytes/1024"),
            big_url: format!("http://{site}/bytes/{}", runs.bulk_mib * 1024 * 1024),
            bulk_mib: runs.bulk_mib,
            ttfb_runs: runs.ttfb_runs,
            concurrency: &opts.concurrency,
        };
        let mut tor = if opts.no_tor {
            None
        } else {
            log("starting Tor in the same namespaces (up to 360 s)");
            Some(tor_wan::TorWan::start(
                &work.join("tor"),
                &net.layout,
                site,
                &plan.small_url,
            )?)
        };
        log("direct TCP download from the client's namespace to the site");
        let direct = curl(net.netns.as_deref(), None, None, &plan.big_url, 1200)?;
        let direct_mib_s =
            (direct.ok && direct.total > 0.0).then(|| direct.size as f64 / MIB / direct.total);
        log(&format!("direct: {direct_mib_s:.2?} MiB/s"));
        let mut a = measure_common("anonnet", net.socks, &net.pids()?, &plan)?;
        let anonnet_times = net.circuit_times(&hosts)?;
        let builds = net.circuit_builds(runs.circ_runs, &plan.small_url)?;
        log(&format!("anonnet circuit builds (ms): {builds:.1?}"));
        a.build_median_ms = median(&builds);
        a.build_p95_ms = percentile(&builds, 0.95);
        let hs = net.hs_cold(anonnet, runs.hs_runs, opts.hs_prefixes)?;
        log(&format!("anonnet cold HS connects (ms): {hs:.0?}"));
        a.hs_cold_median_ms = median(&hs);
        let mut t = Figures::default();
        let mut tor_times = Vec::new();
        if let Some(tor) = &tor {
            t = measure_common("tor", tor.socks, &tor.pids()?, &plan)?;
            tor_times = tor.circuit_times()?;
            let builds = tor.circuit_builds(runs.circ_runs)?;
            log(&format!("tor circuit builds (ms): {builds:.1?}"));
            t.build_median_ms = median(&builds);
            t.build_p95_ms = percentile(&builds, 0.95);
            let hs = tor.hs_cold(runs.hs_runs)?;
            log(&format!("tor cold onion connects (ms): {hs:.0?}"));
            t.hs_cold_median_ms = median(&hs);
        }
        if let Some(tor) = tor.as_mut() {
            tor.stop();
        }
        let ms = |v: &[tor_wan::PathTimes], f: fn(&tor_wan::PathTimes) -> f64| {
            median(&v.iter().map(|p| f(p) * 1000.0).collect::<Vec<_>>())
        };
        let w = WanFigures {
            profile: profile.to_owned(),
            seed: net.layout["wan"]["seed"].as_u64(),
            bottleneck_mib_s: tor_wan::bottleneck_mib_s(&hosts),
            direct_mib_s,
            anonnet_rtt_ms: ms(&anonnet_times, |p| p.rtt_s),
            tor_rtt_ms: ms(&tor_times, |p| p.rtt_s),
            anonnet_build_rtts_ms: ms(&anonnet_times, |p| p.build_rtts_s),
            tor_build_rtts_ms: ms(&tor_times, |p| p.build_rtts_s),
            anonnet_server_ms: ms(&anonnet_times, |p| p.server_s),
            tor_server_ms: ms(&tor_times, |p| p.server_s),
        };
        Ok((a, t, w))
    })();
    net.stop();
    result
}

/// Print `table` with the load averages and save it as `work/bench-table.md`.
fn finish(work: &Path, load_before: &str, table: &str) -> Res<()> {
    let load_after = load_average();
    println!("{table}");
    println!("load average before: {load_before}; after: {load_after}");
    let out = work.join("bench-table.md");
    std::fs::write(
        &out,
        format!("{table}\nload average before: {load_before}; after: {load_after}\n"),
    )?;
    log(&format!("table saved to {}", out.display()));
    Ok(())
}

/// Without Tor: tor-testnet's `httpd.py` alone on 127.0.0.2:`port`, docroot `dir/www` with
/// its 1 KiB `small.bin`.
fn start_httpd(tools: &Path, dir: &Path, port: u16) -> Res<Child> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let mut small = [0u8; 1024];
    getrandom::fill(&mut small).map_err(|e| format!("getrandom: {e}"))?;
    std::fs::write(www.join("small.bin"), small)?;
    let child = Command::new("python3")
        .arg(tools.join("httpd.py"))
        .arg(&www)
        .arg(port.to_string())
        .arg("127.0.0.2")
        .stdin(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(child)
}

/// `cargo build --release -p anonnet`; the binary lands beside this one.
fn build_anonnet(root: &Path) -> Res<PathBuf> {
    log("building anonnet (release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let built = bounded(
        Command::new(cargo)
            .args(["build", "--release", "-p", "anonnet"])
            .current_dir(root),
        Duration::from_secs(1800),
    )?;
    if !built.status.success() {
        return Err(format!(
            "cargo build failed: {}",
            String::from_utf8_lossy(&built.stderr)
        )
        .into());
    }
    Ok(std::env::current_exe()?
        .parent()
        .ok_or("no exe dir")?
        .join("anonnet"))
}

/// The 1-, 5- and 15-minute load averages from `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `tor`, `tor-gencert`, `curl` and `python3` must be there; install `tor` and `curl` with
/// apt when missing (the machine's user is root).
fn ensure_tools(no_tor: bool) -> Res<()> {
    let mut missing: Vec<&str> = Vec::new();
    if !have("curl") {
        missing.push("curl");
    }
    if !no_tor && (!have("tor") || !have("tor-gencert")) {
        missing.push("tor");
    }
    if missing.is_empty() {
        return Ok(());
    }
    log(&format!("installing {missing:?} with apt-get"));
    let limit = Duration::from_secs(600);
    bounded(Command::new("apt-get").arg("update"), limit)?;
    let out = bounded(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        limit,
    )?;
    if !out.status.success() {
        return Err(format!(
            "apt-get install {missing:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// Run `cmd` to completion with its output captured; kill it after `limit`.
fn bounded(cmd: &mut Command, limit: Duration) -> Res<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = pipe(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = pipe(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} took longer than {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A `bulk_mib` MiB file of varied bytes (as tor-testnet's `bench` makes its `big.bin`).
fn make_big_file(path: &Path, bulk_mib: u64) -> Res<()> {
    let want = bulk_mib * 1024 * 1024;
    if std::fs::metadata(path).ok().map(|m| m.len()) == Some(want) {
        return Ok(());
    }
    let mut chunk = vec![0u8; 4 << 20];
    getrandom::fill(&mut chunk).map_err(|e| format!("getrandom: {e}"))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let mut left = want;
    let mut i = 0u64;
    while left > 0 {
        if let Some(head) = chunk.get_mut(..8) {
            head.copy_from_slice(&i.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64);
        f.write_all(chunk.get(..n as usize).unwrap_or_default())?;
        left -= n;
        i += 1;
    }
    f.flush()?;
    drop(f);
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// Processes whose CPU and memory are reported: the client and the relays.
struct Pids {
    client: u32,
    relays: Vec<u32>,
}

/// CPU seconds (user + system) of `pid` from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the `(comm)`: state is the 1st, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn total_cpu(p: &Pids) -> f64 {
    cpu_seconds(p.client) + p.relays.iter().map(|&r| cpu_seconds(r)).sum::<f64>()
}

/// What `curl -w` reported.
struct Curl {
    ok: bool,
    size: u64,
    ttfb: f64,
    total: f64,
}

/// One curl GET of `url` (through `socks` when given, as SOCKS user `user` when given),
/// inside the namespace `netns` when given (`ip netns exec`), bounded to `max_s` seconds.
fn curl(
    netns: Option<&str>,
    socks: Option<SocketAddr>,
    user: Option<&str>,
    url: &str,
    max_s: u64,
) -> Res<Curl> {
    let mut cmd = in_netns(netns, Path::new("curl"));
    cmd.args(["-s", "-o", "/dev/null", "--max-time", &max_s.to_string()])
        .args(["-w", WRITE_OUT]);
    if let Some(s) = socks {
        cmd.arg("--socks5-hostname").arg(s.to_string());
    }
    if let Some(u) = user {
        cmd.arg("--proxy-user").arg(format!("{u}:x"));
    }
    let out = bounded(cmd.arg(url), Duration::from_secs(max_s + 10))?;
    Ok(Curl::parse(
        out.status.success(),
        &String::from_utf8_lossy(&out.stdout),
    ))
}

impl Curl {
    /// What curl's `-w` printed ([`WRITE_OUT`]), and whether it exited with success.
    fn parse(success: bool, write_out: &str) -> Curl {
        let f: Vec<&str> = write_out.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        Curl {
            ok: success && f.first() == Some(&"200"),
            size: num(1) as u64,
            ttfb: num(2),
            total: num(3),
        }
    }
}

/// curl's `-w` format: status, bytes, time to first byte and total time (s).
const WRITE_OUT: &str = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}";

/// A bulk GET of `url` through `socks`, the body read here as curl writes it: returns
/// curl's figures and the longest pause between two reads of the body (seconds, from the
/// first byte to the last; pipe reads of up to 256 KiB). curl's `--max-time` bounds it.
fn curl_bulk(socks: SocketAddr, url: &str, max_s: u64) -> Res<(Curl, Option<f64>)> {
    let mut child = Command::new("curl")
        .args(["-s", "-o", "-", "--max-time", &max_s.to_string()])
        .args(["-w", &format!("%{{stderr}}{WRITE_OUT}")])
        .arg("--socks5-hostname")
        .arg(socks.to_string())
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take();
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    let mut longest: Option<f64> = None;
    if let Some(mut body) = child.stdout.take() {
        let mut buf = vec![0u8; 256 * 1024];
        let mut last: Option<Instant> = None;
        loop {
            if matches!(body.read(&mut buf), Ok(0) | Err(_)) {
                break;
            }
            let now = Instant::now();
            if let Some(l) = last {
                let gap = (now - l).as_secs_f64();
                longest = Some(longest.map_or(gap, |m| m.max(gap)));
            }
            last = Some(now);
        }
    }
    let status = child.wait()?;
    let text = err.join().unwrap_or_default();
    Ok((Curl::parse(status.success(), &text), longest))
}

struct Plan<'a> {
    /// A 1 KiB object: tor-testnet's `small.bin`, or the WAN demo site's `/bytes/1024`.
    small_url: String,
    /// The `bulk_mib` MiB object.
    big_url: String,
    bulk_mib: u64,
    ttfb_runs: usize,
    concurrency: &'a [usize],
}

/// Figures measured the same way on both networks: warm-up, TTFB, bulk (with CPU), RSS,
/// 100 and 1,000 concurrent streams.
fn measure_common(name: &str, socks: SocketAddr, pids: &Pids, plan: &Plan<'_>) -> Res<Figures> {
    let mut f = Figures::default();
    log(&format!("{name}: warming up"));
    let mut warm_ok = 0;
    for _ in 0..20 {
        if curl(None, Some(socks), None, &plan.small_url, 60)?.ok {
            warm_ok += 1;
            if warm_ok >= 3 {
                break;
            }
        } else {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    if warm_ok < 3 {
        return Err(format!("{name}: no working GET through SOCKS {socks}").into());
    }
    log(&format!("{name}: time to first byte x{}", plan.ttfb_runs));
    let mut ttfb = Vec::new();
    for _ in 0..plan.ttfb_runs {
        let c = curl(None, Some(socks), None, &plan.small_url, 60)?;
        if c.ok {
            ttfb.push(c.ttfb * 1000.0);
        }
    }
    f.ttfb_median_ms = median(&ttfb);
    f.ttfb_p95_ms = percentile(&ttfb, 0.95);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    log(&format!(
        "{name}: time to first byte, GET pipelined behind the SOCKS request x{}",
        plan.ttfb_runs
    ));
    let (host, port, path) = split_url(&plan.small_url)?;
    let mut pipelined = Vec::new();
    for _ in 0..plan.ttfb_runs {
        let once = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                pipelined_ttfb(socks, &host, port, &path),
            )
            .await
        });
        if let Ok(Ok(Some(secs))) = once {
            pipelined.push(secs * 1000.0);
        }
    }
    f.ttfb_pipelined_median_ms = median(&pipelined);

    log(&format!("{name}: bulk {} MiB", plan.bulk_mib));
    let cpu0 = total_cpu(pids);
    let (big, longest_pause) = curl_bulk(socks, &plan.big_url, 1200)?;
    let cpu1 = total_cpu(pids);
    let want = plan.bulk_mib * 1024 * 1024;
    if big.ok && big.size == want && big.total > 0.0 {
        let mib = want as f64 / MIB;
        f.bulk_mib_s = Some(mib / big.total);
        f.cpu_ms_per_mib = Some((cpu1 - cpu0) * 1000.0 / mib);
        f.bulk_longest_pause_ms = longest_pause.map(|s| s * 1000.0);
        log(&format!(
            "{name}: {:.1} MiB/s, {:.1} CPU ms/MiB, longest pause {:.0} ms",
            mib / big.total,
            (cpu1 - cpu0) * 1000.0 / mib,
            longest_pause.unwrap_or(0.0) * 1000.0
        ));
    } else {
        log(&format!("{name}: bulk failed ({} bytes)", big.size));
    }
    f.client_rss_mib = rss_mib(pids.client);
    f.relay_rss_mib = pids
        .relays
        .iter()
        .filter_map(|&p| rss_mib(p))
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));

    for &n in plan.concurrency {
        log(&format!("{name}: {n} concurrent streams"));
        let (secs, errors) = rt.block_on(concurrent_gets(socks, &plan.small_url, n))?;
        log(&format!(
            "{name}: {n} streams in {secs:.2} s, {errors} errors"
        ));
        if n == 100 {
            f.c100 = Some((secs, errors));
        } else {
            f.c1000 = Some((secs, errors));
        }
    }
    f.client_rss_after_1000_mib = rss_mib(pids.client);
    Ok(f)
}

/// `n` SOCKS5 connections opened at once, each a `GET` of `url` (HTTP/1.0); returns the
/// wall time and how many did not get the whole 200 response within 120 s.
async fn concurrent_gets(socks: SocketAddr, url: &str, n: usize) -> Res<(f64, usize)> {
    let (host, port, path) = split_url(url)?;
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (host, path) = (host.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(120),
                socks_get(socks, &host, port, &path),
            )
            .await
            .is_ok_and(|r| r.unwrap_or(false))
        }));
    }
    let mut errors = 0;
    for t in tasks {
        if !t.await.unwrap_or(false) {
            errors += 1;
        }
    }
    Ok((t0.elapsed().as_secs_f64(), errors))
}

/// `http://HOST:PORT/PATH` as (host, port, `/PATH`).
fn split_url(url: &str) -> Res<(String, u16, String)> {
    let rest = url.strip_prefix("http://").ok_or("url is not http://")?;
    let (hostport, path) = rest.split_once('/').ok_or("url has no path")?;
    let (host, port) = hostport.rsplit_once(':').ok_or("url has no port")?;
    Ok((host.to_owned(), port.parse()?, format!("/{path}")))
}

/// The SOCKS5 greeting (no authentication) and `CONNECT` request for `host:port` (an
/// IPv4 address or a name, sent unresolved).
fn socks5_connect(host: &str, port: u16) -> Vec<u8> {
    let mut req = vec![5u8, 1, 0];
    req.extend(anonnet_tests::socks5_request(1, host, port));
    req
}

/// A GET of `path` sent in the same write as the SOCKS5 greeting and request, before any
/// reply, as Tor Browser sends it (both networks then send it right behind `BEGIN`, Tor
/// prop 181, anonnet protocol §6.5): seconds from that write to the response's first
/// byte, `None` when a SOCKS reply was not success.
async fn pipelined_ttfb(socks: SocketAddr, host: &str, port: u16, path: &str) -> Res<Option<f64>> {
    let mut s = tokio::net::TcpStream::connect(socks).await?;
    s.set_nodelay(true)?;
    let mut req = socks5_connect(host, port);
    req.extend_from_slice(format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n").as_bytes());
    let t0 = Instant::now();
    s.write_all(&req).await?;
    let mut replies = [0u8; 12];
    s.read_exact(&mut replies).await?;
    if replies[..2] != [5, 0] || replies[3] != 0 {
        return Ok(None);
    }
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await?;
    let secs = t0.elapsed().as_secs_f64();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await?;
    Ok(Some(secs))
}

async fn socks_get(socks: SocketAddr, host: &str, port: u16, path: &str) -> Res<bool> {
    let mut s = tokio::net::TcpStream::connect(socks).await?;
    s.set_nodelay(true)?;
    s.write_all(&socks5_connect(host, port)).await?;
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    if head != [5, 0] || reply.get(1) != Some(&0) {
        return Ok(false);
    }
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n").as_bytes())
        .await?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    Ok(body.starts_with(b"HTTP/1.0 200") || body.starts_with(b"HTTP/1.1 200"))
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn median(v: &[f64]) -> Option<f64> {
    let s = sorted(v);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => s.get(n / 2).copied(),
        _ => Some((s.get(n / 2 - 1)? + s.get(n / 2)?) / 2.0),
    }
}

/// Nearest-rank percentile (`q` in 0..=1).
fn percentile(v: &[f64], q: f64) -> Option<f64> {
    let s = sorted(v);
    if s.is_empty() {
        return None;
    }
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s.get(rank - 1).copied()
}

/// A child whose stdout lines arrive on a channel.
fn spawn_lines(cmd: &mut Command) -> Res<(Child, mpsc::Receiver<String>)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}

/// Wait (bounded) for a line starting with `prefix`; returns the rest of it.
fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str, limit: Duration) -> Res<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| format!("no `{prefix}` line within {limit:?}"))?;
        if let Some(rest) = line.strip_prefix(prefix) {
            return Ok(rest.trim().to_owned());
        }
    }
}

/// SIGTERM, then SIGKILL after 15 s.
fn terminate(child: &mut Child) {
    anonnet_tests::terminate(child, Duration::from_secs(15));
}

struct AnonNet {
    child: Child,
    socks: SocketAddr,
    dir: PathBuf,
    layout: serde_json::Value,
    /// The client's namespace on a WAN testnet (fresh clients start there too).
    netns: Option<String>,
    /// The `anonnet` executable.
    exe: PathBuf,
}

/// `--wan PROFILE` and `--wan-seed` for `anonnet testnet`.
struct WanArgs<'a> {
    profile: &'a str,
    seed: Option<u64>,
}

impl AnonNet {
    fn start(
        anonnet: &Path,
        dir: &Path,
        handshake: &str,
        pow_effort: u32,
        wan: Option<&WanArgs<'_>>,
    ) -> Res<AnonNet> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(anonnet);
        if let Some(w) = wan {
            cmd.args(["testnet", "--wan", w.profile]);
            if let Some(seed) = w.seed {
                cmd.args(["--wan-seed", &seed.to_string()]);
            }
        } else {
            cmd.arg("testnet");
        }
        let (child, rx) = spawn_lines(
            cmd.args(["--relays", "5", "--socks", "127.0.0.1:0"])
                .args(["--circuit-handshake", handshake])
                .args(["--service-pow-effort", &pow_effort.to_string()])
                .args(["--http", "127.0.0.1:0", "--dir"])
                .arg(dir)
                // Per-circuit lines (with build_ms) are DEBUG: turn on that module only.
                .env("RUST_LOG", "info,anonnet_client::circuit=debug")
                .stdin(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let mut net = AnonNet {
            child,
            socks: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir: dir.to_path_buf(),
            layout: serde_json::Value::Null,
            netns: None,
            exe: anonnet.to_path_buf(),
        };
        match wait_line(&rx, "SOCKS5 ready on ", ANONNET_START_LIMIT) {
            Ok(addr) => net.socks = addr.parse()?,
            Err(e) => {
                net.stop();
                return Err(e);
            }
        }
        net.layout = serde_json::from_slice(&std::fs::read(dir.join("testnet.json"))?)?;
        net.netns = net.layout["client"]["netns"].as_str().map(str::to_owned);
        Ok(net)
    }

    fn pids(&self) -> Res<Pids> {
        let pid = |v: &serde_json::Value| v.as_u64().and_then(|p| u32::try_from(p).ok());
        Ok(Pids {
            client: pid(&self.layout["client"]["pid"]).ok_or("testnet.json: no client pid")?,
            relays: self.layout["relays"]
                .as_array()
                .map(|rs| rs.iter().filter_map(|r| pid(&r["pid"])).collect())
                .unwrap_or_default(),
        })
    }

    fn client_config(&self) -> Res<PathBuf> {
        Ok(PathBuf::from(
            self.layout["client"]["config"]
                .as_str()
                .ok_or("testnet.json: no client config")?,
        ))
    }

    /// `build_ms` of every `circuit built` line in the client log, after forcing `n` new
    /// circuits with distinct SOCKS usernames (isolation) one at a time.
    fn circuit_builds(&self, n: usize, small_url: &str) -> Res<Vec<f64>> {
        let log_path = self
            .client_config()?
            .parent()
            .ok_or("client config has no dir")?
            .join("client.log");
        let before = parse_build_ms(&std::fs::read_to_string(&log_path)?).len();
        for i in 0..n {
            std::thread::sleep(Duration::from_millis(200));
            curl(
                None,
                Some(self.socks),
                Some(&format!("circ{i}")),
                small_url,
                60,
            )?;
        }
        std::thread::sleep(Duration::from_millis(500));
        let all = parse_build_ms(&std::fs::read_to_string(&log_path)?);
        Ok(all.get(before..).unwrap_or_default().to_vec())
    }

    /// Cold hidden-service connects: each in a brand-new client daemon (fresh state dir, no
    /// descriptor, no circuits), timed from the first GET once the client is bootstrapped.
    fn hs_cold(&self, anonnet: &Path, n: usize, prefixes: Option<u8>) -> Res<Vec<f64>> {
        let address = self.layout["service"]["address"]
            .as_str()
            .ok_or("testnet.json: no service address")?
            .to_owned();
        let base = std::fs::read_to_string(self.client_config()?)?;
        let mut out = Vec::new();
        for i in 0..n {
            let dir = self.dir.join(format!("cold-client-{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let config: String = base
                .lines()
                .map(|l| {
                    if l.starts_with("socks_listen") {
                        "socks_listen = \"127.0.0.1:0\"".to_owned()
                    } else if l.starts_with("http_listen") {
                        "http_listen = \"127.0.0.1:0\"".to_owned()
                    } else if l == "[client]" {
                        match prefixes {
                            Some(n) => format!("[client]\nhs_prefixes = {n}"),
                            None => l.to_owned(),
                        }
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let cfg = dir.join("client.toml");
            std::fs::write(&cfg, config + "\n")?;
            let log_file = std::fs::File::create(dir.join("client.log"))?;
            let (mut child, rx) = spawn_lines(
                in_netns(self.netns.as_deref(), anonnet)
                    .args(["run", "--config"])
                    .arg(&cfg)
                    .arg("--exit-with-parent")
                    .stdin(Stdio::piped())
                    .stderr(log_file),
            )?;
            let measured = (|| -> Res<f64> {
                let socks: SocketAddr =
                    wait_line(&rx, "SOCKS5 ready on ", ANONNET_START_LIMIT)?.parse()?;
                wait_bootstrapped(self.netns.as_deref(), anonnet, &cfg)?;
                let c = curl(
                    self.netns.as_deref(),
                    Some(socks),
                    None,
                    &format!("http://{address}/"),
                    60,
                )?;
                if !c.ok {
                    return Err("cold hidden-service GET failed".into());
                }
                Ok(c.total * 1000.0)
            })();
            terminate(&mut child);
            match measured {
                Ok(ms) => out.push(ms),
                Err(e) => log(&format!("cold HS connect {i}: {e}")),
            }
        }
        Ok(out)
    }

    /// [`tor_wan::PathTimes`] of the client's 3-hop circuits that are not being built
    /// (`anonnet status --json` in the client's namespace; each hop's address mapped to
    /// its WAN host's configured delay).
    fn circuit_times(&self, hosts: &[tor_wan::WanHost]) -> Res<Vec<tor_wan::PathTimes>> {
        let out = bounded(
            in_netns(self.netns.as_deref(), &self.exe)
                .args(["status", "--json", "--config"])
                .arg(self.client_config()?),
            Duration::from_secs(10),
        )?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let delay = |host: &str| {
            let ip: std::net::IpAddr = host.parse::<SocketAddr>().ok()?.ip();
            hosts
                .iter()
                .find(|h| std::net::IpAddr::V4(h.addr) == ip)
                .map(|h| h.delay_ms)
        };
        let delay_of_host = |name: &str| {
            hosts
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.delay_ms)
                .ok_or_else(|| format!("no WAN host {name}"))
        };
        let client = delay_of_host("client")?;
        let site = delay_of_host("site")?;
        let mut times = Vec::new();
        for c in status["circuits"].as_array().into_iter().flatten() {
            if c["state"] == "building" {
                continue;
            }
            let d: Vec<f64> = c["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| delay(a.as_str()?))
                .collect();
            if let [g, m, e] = d[..] {
                times.push(tor_wan::PathTimes::of(client, [g, m, e], site));
            }
        }
        Ok(times)
    }

    fn stop(&mut self) {
        terminate(&mut self.child);
    }
}

/// `program`, run inside the namespace `netns` when given (`ip netns exec`).
fn in_netns(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Poll `anonnet status --json` (inside `netns` when given) until bootstrap is 100 % (at
/// most 60 s).
fn wait_bootstrapped(netns: Option<&str>, anonnet: &Path, cfg: &Path) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let out = bounded(
            in_netns(netns, anonnet)
                .args(["status", "--json", "--config"])
                .arg(cfg),
            Duration::from_secs(10),
        )?;
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            if v["bootstrap"]["percent"].as_u64() == Some(100) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("fresh client did not bootstrap in 60 s".into())
}

/// `build_ms=…` of `circuit built` log lines (ANSI colour codes stripped).
fn parse_build_ms(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("circuit built") && !l.contains("bootstrapped"))
        .filter_map(|l| {
            let plain = strip_ansi(l);
            let rest = plain.split("build_ms=").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct TorNet {
    dir: PathBuf,
    socks: SocketAddr,
    state: serde_json::Value,
}

impl TorNet {
    fn start(tools: &Path, dir: &Path, base_port: u16) -> Res<TorNet> {
        // `start` refuses a work dir with running processes; a stopped one it wipes.
        if dir.join("state.json").exists() {
            let _ = bounded(
                Command::new(tools.join("stop")).arg(dir),
                Duration::from_secs(60),
            );
        }
        std::fs::create_dir_all(dir)?;
        let out = bounded(
            Command::new(tools.join("start")).arg(dir).args([
                "--base-port",
                &base_port.to_string(),
                "--timeout",
                "240",
            ]),
            TOR_START_LIMIT,
        );
        let net = |socks| -> Res<TorNet> {
            Ok(TorNet {
                dir: dir.to_path_buf(),
                socks,
                state: serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)?,
            })
        };
        let out = match out {
            Ok(o) if o.status.success() => o,
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                if let Ok(n) = net(SocketAddr::from(([127, 0, 0, 1], 0))) {
                    n.stop(tools);
                }
                return Err(format!("tor-testnet/start failed: {why}").into());
            }
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let socks = text
            .lines()
            .find_map(|l| l.strip_prefix("SOCKS_PORT="))
            .ok_or("tor-testnet/start printed no SOCKS_PORT=")?
            .trim()
            .parse()?;
        net(socks)
    }

    fn pids(&self) -> Res<Pids> {
        let procs = self.state["procs"]
            .as_array()
            .ok_or("state.json: no procs")?;
        let find = |pred: &dyn Fn(&str) -> bool| -> Vec<u32> {
            procs
                .iter()
                .filter(|p| pred(p["name"].as_str().unwrap_or("")))
                .filter_map(|p| p["pid"].as_u64().and_then(|v| u32::try_from(v).ok()))
                .collect()
        };
        Ok(Pids {
            client: *find(&|n| n == "client")
                .first()
                .ok_or("state.json: no client")?,
            relays: find(&|n| n.starts_with("relay") || n.starts_with("auth")),
        })
    }

    /// Circuit builds (control port `EXTENDCIRCUIT`, `CIRC … BUILT` events) and cold onion
    /// GETs (`SIGNAL NEWNYM` purges the descriptor cache) with tor-testnet's own `bench`.
    fn circuit_and_onion(
        &self,
        tools: &Path,
        circ_runs: usize,
        hs_runs: usize,
        bulk_mib: u64,
        f: &mut Figures,
    ) -> Res<()> {
        log("tor: circuit builds and cold onion connects (tor-testnet/bench --only c,d)");
        let out = bounded(
            Command::new(tools.join("bench")).arg(&self.dir).args([
                "--only",
                "c,d",
                "--circ-runs",
                &circ_runs.to_string(),
                "--onion-runs",
                &hs_runs.to_string(),
                "--fresh-client-runs",
                "0",
                "--bulk-mib",
                &bulk_mib.to_string(),
            ]),
            Duration::from_secs(900),
        )?;
        if !out.status.success() {
            return Err(format!(
                "tor-testnet/bench failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("bench-") && name.ends_with(".json") {
                let m = e.metadata()?.modified()?;
                if newest.as_ref().is_none_or(|(t, _)| m > *t) {
                    newest = Some((m, p));
                }
            }
        }
        let (_, path) = newest.ok_or("tor-testnet/bench wrote no bench-*.json")?;
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
        let builds: Vec<f64> = r["c_circuit_build"]["runs"]
            .as_array()
            .map(|runs| {
                runs.iter()
                    .filter(|x| x["status"] == "BUILT")
                    .filter_map(|x| x["ms"].as_f64())
                    .collect()
            })
            .unwrap_or_default();
        log(&format!("tor circuit builds (ms): {builds:.1?}"));
        f.build_median_ms = median(&builds);
        f.build_p95_ms = percentile(&builds, 0.95);
        f.hs_cold_median_ms = r["d_onion"]["cold_after_newnym"]["total_ms"]["median"].as_f64();
        Ok(())
    }

    fn stop(&self, tools: &Path) {
        log("stopping the Tor network");
        let _ = bounded(
            Command::new(tools.join("stop")).arg(&self.dir),
            Duration::from_secs(60),
        );
    }
}

struct Limits {
    chacha3_mib_s: f64,
    tcp_mib_s: f64,
    direct_http_mib_s: Option<f64>,
}

/// The same bytes through ChaCha20-Poly1305 three times in 1024-byte cells (ring, as the
/// onion layers), a loopback TCP copy in one process, and curl straight from the server.
fn physical_limits(bulk_mib: u64, http_base: &str) -> Res<Limits> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
    log("physical limits");
    let keys: Vec<LessSafeKey> = (1..=3u8)
        .map(|i| {
            UnboundKey::new(&CHACHA20_POLY1305, &[i; 32])
                .map(LessSafeKey::new)
                .map_err(|_| "ring key")
        })
        .collect::<Result<_, _>>()?;
    let cells = bulk_mib * 1024;
    let mut cell = [0u8; 1024];
    let t0 = Instant::now();
    for seq in 0..cells {
        // Each layer seals the region the previous one left (as relays strip 25 bytes).
        for (h, key) in keys.iter().enumerate().rev() {
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&seq.to_be_bytes());
            let body = cell.get_mut(25 * (h + 1)..).unwrap_or_default();
            let tag = key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::empty(), body)
                .map_err(|_| "ring seal")?;
            if let Some(t) = cell.get_mut(25 * h + 9..25 * h + 25) {
                t.copy_from_slice(tag.as_ref());
            }
        }
    }
    let chacha3 = bulk_mib as f64 / t0.elapsed().as_secs_f64();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bytes = bulk_mib * 1024 * 1024;
    let tcp = rt.block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let t0 = Instant::now();
        let writer = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            let buf = vec![0u8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                s.write_all(buf.get(..n).unwrap_or_default()).await?;
                left -= n as u64;
            }
            Ok::<_, std::io::Error>(())
        });
        let (mut r, _) = l.accept().await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        while got < bytes {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        writer.await??;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            got as f64 / MIB / t0.elapsed().as_secs_f64(),
        )
    })?;
    let direct = curl(None, None, None, &format!("{http_base}/big.bin"), 600)?;
    Ok(Limits {
        chacha3_mib_s: chacha3,
        tcp_mib_s: tcp,
        direct_http_mib_s: (direct.ok && direct.total > 0.0)
            .then(|| direct.size as f64 / MIB / direct.total),
    })
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.digits$}"))
}

fn ratio(a: Option<f64>, t: Option<f64>) -> String {
    match (a, t) {
        (Some(a), Some(t)) if t > 0.0 => format!("{:.2}", a / t),
        _ => "–".to_owned(),
    }
}

fn conc(v: Option<(f64, usize)>) -> String {
    v.map_or("–".to_owned(), |(s, e)| format!("{s:.2} s, {e} err"))
}

/// The table: one row per figure, anonnet beside Tor, and the target each figure is held
/// to (DESIGN §5 on loopback, issue 15 on a WAN).
fn render(a: &Figures, t: &Figures, extra: &Extra, runs: &Runs) -> String {
    let Runs {
        bulk_mib,
        ttfb_runs,
        circ_runs,
        hs_runs,
    } = *runs;
    let wan = matches!(extra, Extra::Wan(_));
    let target = |loopback: &'static str, on_wan: &'static str| if wan { on_wan } else { loopback };
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut row = |name: String, av: Option<f64>, tv: Option<f64>, digits: usize, target: &str| {
        rows.push([
            name,
            fmt(av, digits),
            fmt(tv, digits),
            ratio(av, tv),
            target.to_owned(),
        ]);
    };
    row(
        format!("bulk {bulk_mib} MiB, one stream, 3 hops (MiB/s)"),
        a.bulk_mib_s,
        t.bulk_mib_s,
        1,
        target("≥ 80, ≥ 6× Tor", "≥ 70 % of bottleneck, ≥ 2× Tor"),
    );
    row(
        "longest pause in the bulk download (ms)".to_owned(),
        a.bulk_longest_pause_ms,
        t.bulk_longest_pause_ms,
        0,
        target("", "≤ 2,000 on `lossy`"),
    );
    row(
        "CPU per MiB, client + relays (ms/MiB)".to_owned(),
        a.cpu_ms_per_mib,
        t.cpu_ms_per_mib,
        1,
        target("≤ 20", ""),
    );
    row(
        format!("TTFB new SOCKS stream, warm, median of {ttfb_runs} (ms)"),
        a.ttfb_median_ms,
        t.ttfb_median_ms,
        1,
        target("≤ 3", "≤ 1.3 × circuit RTT + server"),
    );
    row(
        "TTFB p95 (ms)".to_owned(),
        a.ttfb_p95_ms,
        t.ttfb_p95_ms,
        1,
        "",
    );
    row(
        format!("TTFB, GET pipelined behind the SOCKS5 request, warm, median of {ttfb_runs} (ms)"),
        a.ttfb_pipelined_median_ms,
        t.ttfb_pipelined_median_ms,
        1,
        target("", "≤ 1.3 × circuit RTT + server"),
    );
    row(
        format!("3-hop circuit build, median of {circ_runs} (ms)"),
        a.build_median_ms,
        t.build_median_ms,
        1,
        target("≤ 5", "≤ 1.2 × the three round trips"),
    );
    row(
        "3-hop circuit build p95 (ms)".to_owned(),
        a.build_p95_ms,
        t.build_p95_ms,
        1,
        "",
    );
    row(
        format!("hidden service cold connect, median of {hs_runs} (ms)"),
        a.hs_cold_median_ms,
        t.hs_cold_median_ms,
        0,
        target("≤ 100", ""),
    );
    let c = |v: Option<(f64, usize)>| v.map(|(s, _)| s);
    rows.push([
        "100 concurrent streams (total, errors)".to_owned(),
        conc(a.c100),
        conc(t.c100),
        ratio(c(a.c100), c(t.c100)),
        String::new(),
    ]);
    rows.push([
        "1,000 concurrent streams (total, errors)".to_owned(),
        conc(a.c1000),
        conc(t.c1000),
        ratio(c(a.c1000), c(t.c1000)),
        "all succeed".to_owned(),
    ]);
    let mut row = |name: &str, av: Option<f64>, tv: Option<f64>, target: &str| {
        rows.push([
            name.to_owned(),
            fmt(av, 1),
            fmt(tv, 1),
            ratio(av, tv),
            target.to_owned(),
        ]);
    };
    row(
        "client RSS after bulk (MiB)",
        a.client_rss_mib,
        t.client_rss_mib,
        "≤ 25",
    );
    row(
        "busiest relay RSS after bulk (MiB)",
        a.relay_rss_mib,
        t.relay_rss_mib,
        "≤ 40",
    );
    row(
        "client RSS after 1,000 streams (MiB)",
        a.client_rss_after_1000_mib,
        t.client_rss_after_1000_mib,
        "≤ 100",
    );
    match extra {
        Extra::Loopback(l) => rows.push([
            "physical limit: 3× ChaCha20-Poly1305 (ring, 1 KiB cells, 1 core) / loopback TCP copy / curl direct from httpd (MiB/s)".to_owned(),
            format!("{:.0} / {:.0} / {}", l.chacha3_mib_s, l.tcp_mib_s, fmt(l.direct_http_mib_s, 0)),
            String::new(),
            String::new(),
            String::new(),
        ]),
        Extra::Wan(w) => {
            let pct = |v: Option<f64>| match (v, w.bottleneck_mib_s) {
                (Some(v), Some(b)) if b > 0.0 => Some(100.0 * v / b),
                _ => None,
            };
            let per = |v: Option<f64>, by: Option<f64>| match (v, by) {
                (Some(v), Some(b)) if b > 0.0 => Some(v / b),
                _ => None,
            };
            let mut row = |name: String, av: Option<f64>, tv: Option<f64>, d: usize, goal: &str| {
                rows.push([name, fmt(av, d), fmt(tv, d), ratio(av, tv), goal.to_owned()]);
            };
            row(
                format!(
                    "emulated WAN `{}` (seed {}): bottleneck link rate (MiB/s)",
                    w.profile,
                    w.seed.map_or("–".to_owned(), |s| s.to_string())
                ),
                w.bottleneck_mib_s,
                w.bottleneck_mib_s,
                2,
                "",
            );
            row(
                "direct TCP download client → site, no relays, same links (MiB/s)".to_owned(),
                w.direct_mib_s,
                w.direct_mib_s,
                2,
                "",
            );
            row(
                "bulk as % of the bottleneck".to_owned(),
                pct(a.bulk_mib_s),
                pct(t.bulk_mib_s),
                0,
                "≥ 70",
            );
            row(
                "circuit RTT from the configured delays, median of built circuits (ms)".to_owned(),
                w.anonnet_rtt_ms,
                w.tor_rtt_ms,
                0,
                "",
            );
            row(
                "server's part of a first byte: two exit–site round trips, median (ms)"
                    .to_owned(),
                w.anonnet_server_ms,
                w.tor_server_ms,
                0,
                "",
            );
            let less = |v: Option<f64>, by: Option<f64>| Some(v? - by?);
            row(
                "(TTFB − server's part) ÷ circuit RTT".to_owned(),
                per(less(a.ttfb_median_ms, w.anonnet_server_ms), w.anonnet_rtt_ms),
                per(less(t.ttfb_median_ms, w.tor_server_ms), w.tor_rtt_ms),
                2,
                "≤ 1.3",
            );
            row(
                "(pipelined TTFB − server's part) ÷ circuit RTT".to_owned(),
                per(less(a.ttfb_pipelined_median_ms, w.anonnet_server_ms), w.anonnet_rtt_ms),
                per(less(t.ttfb_pipelined_median_ms, w.tor_server_ms), w.tor_rtt_ms),
                2,
                "≤ 1.3",
            );
            row(
                "guard + middle + exit round trips, median of built circuits (ms)".to_owned(),
                w.anonnet_build_rtts_ms,
                w.tor_build_rtts_ms,
                0,
                "",
            );
            row(
                "circuit build ÷ those round trips".to_owned(),
                per(a.build_median_ms, w.anonnet_build_rtts_ms),
                per(t.build_median_ms, w.tor_build_rtts_ms),
                2,
                "≤ 1.2",
            );
        }
    }
    let mut s = String::from(if wan {
        "| figure | anonnet | Tor | anonnet ÷ Tor | issue 15 goal |\n| --- | --- | --- | --- | --- |\n"
    } else {
        "| figure | anonnet | Tor | anonnet ÷ Tor | DESIGN §5 target |\n| --- | --- | --- | --- | --- |\n"
    });
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ms_is_read_from_coloured_and_plain_log_lines() {
        let log = "2026 INFO anonnet_client::circuit: circuit built circuit=3 build_ms=2.5 path=a,b,c\n\
                   2026 INFO bootstrapped: first circuit built circuit=1 build_ms=9.0\n\
                   \u{1b}[2m2026\u{1b}[0m circuit built \u{1b}[3mbuild_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m4.25 x\n";
        assert_eq!(parse_build_ms(log), vec![2.5, 4.25]);
    }

    #[test]
    fn median_and_p95_use_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(median(&v), Some(10.5));
        assert_eq!(percentile(&v, 0.95), Some(19.0));
        assert_eq!(median(&[]), None);
    }
}
