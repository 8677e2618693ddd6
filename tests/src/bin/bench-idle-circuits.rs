//! Idle-circuit benchmark (issue 15 item 5): one relay process holding N idle circuits
//! (10,000 by default), its memory and the CPU it spends while they idle. Run from the
//! repository root:
//!
//! ```sh
//! cargo build --release -p anonnet
//! cargo run --release -p anonnet-tests --bin bench-idle-circuits              # 10,000, 60 s idle
//! cargo run --release -p anonnet-tests --bin bench-idle-circuits -- --circuits 2000 --idle-secs 10
//! ```
//!
//! It starts `anonnet relay` (the binary beside this one) on loopback with its circuit
//! limits raised above N, builds N one-hop circuits to it from this process over a few
//! QUIC links (a link carries at most `anonnet_net::MAX_BIDI_STREAMS` circuits), then
//! leaves them idle. It reads the relay's resident memory (`VmRSS`) and CPU time
//! (`utime + stime`) from `/proc/PID` before, after building and after the idle period,
//! and checks the relay's own `circuits_open` in `stats.json`. Linux only. Every wait is
//! bounded; the relay is killed at the end (and with this process: `--exit-with-parent`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anonnet_client::circuit::{HandshakeKind, StreamCounters};
use anonnet_client::Circuit;
use anonnet_net::{Endpoint, LinkManager};
use clap::Parser;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Longest the relay may take to print its ready line.
const RELAY_START_LIMIT: Duration = Duration::from_secs(60);
/// Longest the whole build phase may take.
const BUILD_LIMIT: Duration = Duration::from_secs(600);

#[derive(Parser, Debug)]
#[command(about = "one relay holding N idle circuits: its RSS and idle CPU")]
struct Opts {
    /// Circuits to build and hold.
    #[arg(long, default_value_t = 10_000)]
    circuits: usize,
    /// Seconds the circuits stay idle while the relay's CPU time is measured.
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    /// Circuits built at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// The `anonnet` binary (default: the one beside this bench).
    #[arg(long)]
    anonnet_bin: Option<PathBuf>,
    /// Run the relay under this program (e.g. `heaptrack`, to see where its memory goes).
    /// The RSS and CPU figures are then those of the wrapper's process.
    #[arg(long)]
    wrap: Option<String>,
}

/// A `/proc/PID` reading: resident memory in KiB and CPU time in clock ticks.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    cpu_ticks: u64,
    at: Instant,
}

fn sample(pid: u32) -> Res<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS in /proc/PID/status")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("bad /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let tick =
        |i: usize| -> Res<u64> { Ok(fields.get(i - 3).ok_or("short /proc/PID/stat")?.parse()?) };
    Ok(Sample {
        rss_kib,
        cpu_ticks: tick(14)? + tick(15)?,
        at: Instant::now(),
    })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when it cannot be asked).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Start `anonnet relay` in `dir` with limits above `circuits`; its child, its pid and
/// the descriptor file from its `RELAY ready` line.
fn start_relay(
    bin: &Path,
    wrap: Option<&str>,
    dir: &Path,
    circuits: usize,
) -> Res<(Child, PathBuf)> {
    let limit = circuits + 1000;
    // A relay belongs to a network; this one's only authority is a port nobody answers
    // on, so the relay serves circuits without ever being in a consensus (its uploads
    // fail, which costs it a retry every few minutes, part of what is measured).
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    std::fs::write(
        dir.join("network.toml"),
        format!(
            "name = \"bench\"\n[[authority]]\nname = \"none\"\nidentity = \"{}\"\n\
             address = \"{nobody}\"\n",
            "3b".repeat(32)
        ),
    )?;
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[relay]\ndata_dir = \"relay\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"network.toml\"\n\n\
             [limits]\nmax_circuits = {limit}\nmax_circuits_per_client_ip = {limit}\n"
        ),
    )?;
    let mut command = match wrap {
        Some(w) => {
            let mut c = Command::new(w);
            c.arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = command
        .args(["relay", "--config"])
        .arg(&config)
        .arg("--exit-with-parent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("relay.log"))?)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no relay stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + RELAY_START_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).map_err(|_| {
            format!(
                "no RELAY ready line in {RELAY_START_LIMIT:?}; see {}",
                dir.join("relay.log").display()
            )
        })?;
        if let Some(rest) = line.strip_prefix("RELAY ready ") {
            let file = rest
                .split_whitespace()
                .nth(2)
                .ok_or("short RELAY ready line")?;
            return Ok((child, PathBuf::from(file)));
        }
    }
}

/// The relay's `circuits_open` from its `stats.json` (written every second on change).
fn circuits_open(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("relay").join("stats.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["circuits_open"].as_u64()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Build `n` one-hop circuits to `relay`, `parallel` at a time, spread over enough links.
async fn build_circuits(
    relay: anonnet_crypto::VerifiedDescriptor,
    n: usize,
    parallel: usize,
) -> Res<Vec<Arc<Circuit>>> {
    let per_link = (anonnet_net::MAX_BIDI_STREAMS as usize)
        .saturating_sub(96)
        .max(1);
    let links: Vec<Arc<LinkManager>> = (0..n.div_ceil(per_link).max(1))
        .map(|_| -> Res<Arc<LinkManager>> {
            let endpoint = Endpoint::client("127.0.0.1:0".parse()?)?;
            Ok(Arc::new(LinkManager::new(endpoint, 4)))
        })
        .collect::<Res<_>>()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let counters = Arc::new(StreamCounters::default());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let links = links[i / per_link].clone();
        let (relay, permits, counters) = (relay.clone(), permits.clone(), counters.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            Circuit::build(&links, vec![relay], counters, HandshakeKind::default())
                .await
                .ok()
        });
    }
    let mut circuits = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + BUILD_LIMIT;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, set.join_next()).await {
        if let Ok(Some(c)) = joined {
            circuits.push(c);
        }
    }
    set.abort_all();
    Ok(circuits)
}

fn main() -> Res<()> {
    let opts = Opts::parse();
    let bin = match &opts.anonnet_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("no exe dir")?
            .join("anonnet"),
    };
    let dir = tempfile::Builder::new()
        .prefix("anonnet-bench-idle-")
        .tempdir()?;
    let (mut relay, desc_file) =
        start_relay(&bin, opts.wrap.as_deref(), dir.path(), opts.circuits)?;
    let pid = relay.id();
    let result = (|| -> Res<()> {
        let signed = anonnet_wire::SignedDescriptor::from_base64(
            std::fs::read_to_string(&desc_file)?.trim(),
        )?;
        let verified = anonnet_crypto::verify_descriptor(&signed, now_unix())?;
        std::thread::sleep(Duration::from_secs(2));
        let base = sample(pid)?;
        let runtime = tokio::runtime::Runtime::new()?;
        let started = Instant::now();
        let circuits = runtime.block_on(build_circuits(verified, opts.circuits, opts.parallel))?;
        let build_time = started.elapsed();
        // Wait (at most 10 s) until the relay's stats.json counts every circuit.
        let settle = Instant::now() + Duration::from_secs(10);
        while circuits_open(dir.path()) < Some(circuits.len() as u64) && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(100));
        }
        let built = sample(pid)?;
        std::thread::sleep(Duration::from_secs(opts.idle_secs));
        let idle = sample(pid)?;
        let open = circuits_open(dir.path());
        let ticks = clock_ticks();
        let idle_cpu =
            (idle.cpu_ticks - built.cpu_ticks) as f64 / ticks / (idle.at - built.at).as_secs_f64();
        let per_circuit = (built.rss_kib.saturating_sub(base.rss_kib)) as f64 * 1024.0
            / circuits.len().max(1) as f64;
        println!("| relay holding idle circuits | value |");
        println!("| --- | --- |");
        println!(
            "| circuits asked / built / open at the relay | {} / {} / {} |",
            opts.circuits,
            circuits.len(),
            open.map_or("?".into(), |o| o.to_string())
        );
        println!(
            "| build time (one hop, {} at once) | {:.1} s ({:.0} circuits/s) |",
            opts.parallel,
            build_time.as_secs_f64(),
            circuits.len() as f64 / build_time.as_secs_f64()
        );
        println!(
            "| relay RSS before / with the circuits | {:.1} MiB / {:.1} MiB |",
            base.rss_kib as f64 / 1024.0,
            built.rss_kib as f64 / 1024.0
        );
        println!("| RSS per circuit | {:.0} bytes |", per_circuit);
        println!(
            "| relay RSS after {} s idle | {:.1} MiB |",
            opts.idle_secs,
            idle.rss_kib as f64 / 1024.0
        );
        println!(
            "| relay CPU while idle | {:.2} % of one core |",
            idle_cpu * 100.0
        );
        for c in &circuits {
            c.close();
        }
        drop(circuits);
        runtime.shutdown_timeout(Duration::from_secs(2));
        Ok(())
    })();
    // Closing its stdin stops the relay (`--exit-with-parent`) and lets a wrapper such as
    // heaptrack write its data; it is killed only if it has not stopped within 30 s.
    drop(relay.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && matches!(relay.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = relay.kill();
    let _ = relay.wait();
    result
}
