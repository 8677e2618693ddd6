//! Bandwidth measurement, sbws-style (`docs/protocol.md` §14.4): the authority builds a
//! 2-hop circuit through the relay under test and an exit (or, when the relay under test
//! is itself an exit that allows the server's port, another relay then it), opens a stream
//! to a TCP server the authority runs, and times the download of a fixed number of bytes.
//!
//! Limits, stated plainly: the figure is one stream through two relays on the authority's
//! own path, so it also reflects the helper relay and the authority's link; a relay can
//! recognise the authority's address and favour its measurements (as with sbws). It can
//! never raise a relay's weight above its self-reported bandwidth.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anonnet_client::circuit::StreamCounters;
use anonnet_client::Circuit;
use anonnet_crypto::VerifiedDescriptor;
use anonnet_net::LinkManager;
use anonnet_wire::Target;
use rand::seq::IndexedRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Measurement settings.
#[derive(Debug, Clone)]
pub struct MeasureConfig {
    /// Measure at all (an authority without exits in its network cannot).
    pub enabled: bool,
    /// Bytes downloaded per measurement (default 1 MiB).
    pub bytes: u64,
    /// Seconds between two measurements of one relay (default 6 hours).
    pub interval: u64,
    /// Seconds before a failed measurement is tried again (default 10 minutes).
    pub retry: u64,
    /// Longest one measurement may take, circuit build included.
    pub timeout: Duration,
}

impl Default for MeasureConfig {
    fn default() -> Self {
        MeasureConfig {
            enabled: true,
            bytes: 1 << 20,
            interval: 6 * 3600,
            retry: 600,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Most downloads served at once.
const MAX_SERVED: usize = 8;

/// The TCP server measurement streams download from: each connection gets `bytes` bytes
/// and is closed.
pub struct MeasureServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MeasureServer {
    /// Bind a free TCP port on `ip` and serve.
    ///
    /// # Errors
    /// The bind error.
    pub async fn start(ip: IpAddr, bytes: u64) -> std::io::Result<MeasureServer> {
        let ip = if ip.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            ip
        };
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SERVED));
        let task = tokio::spawn(async move {
            let chunk = vec![0x5a_u8; 64 * 1024];
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let chunk = chunk.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut left = bytes;
                    while left > 0 {
                        let n = left.min(chunk.len() as u64) as usize;
                        if sock
                            .write_all(chunk.get(..n).unwrap_or_default())
                            .await
                            .is_err()
                        {
                            return;
                        }
                        left -= n as u64;
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        Ok(MeasureServer { addr, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MeasureServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Measure `target` through a 2-hop circuit with one of `helpers`; bytes per second.
pub(crate) async fn measure(
    links: &LinkManager,
    target: &VerifiedDescriptor,
    helpers: &[VerifiedDescriptor],
    server: &MeasureServer,
    cfg: &MeasureConfig,
) -> Result<u32, String> {
    let port = server.addr().port();
    let others: Vec<&VerifiedDescriptor> = helpers
        .iter()
        .filter(|h| h.node_id != target.node_id)
        .collect();
    let path = if target.descriptor.exit_allows_port(port) {
        let first = others.choose(&mut rand::rng()).ok_or("no helper relay")?;
        vec![(*first).clone(), target.clone()]
    } else {
        let exits: Vec<&&VerifiedDescriptor> = others
            .iter()
            .filter(|h| h.descriptor.exit_allows_port(port))
            .collect();
        let exit = exits
            .choose(&mut rand::rng())
            .ok_or("no exit allows the measurement server")?;
        vec![target.clone(), (**exit).clone()]
    };
    let run = async {
        let circuit = Circuit::build(
            links,
            path,
            Arc::new(StreamCounters::default()),
            anonnet_client::circuit::HandshakeKind::default(),
        )
        .await
        .map_err(|e| format!("circuit: {e}"))?;
        let started = Instant::now();
        let result = async {
            let mut stream = circuit
                .begin(Target::Ip(server.addr().ip()), port, cfg.timeout)
                .await
                .map_err(|e| format!("stream: {e}"))?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut got: u64 = 0;
            loop {
                let n = stream
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            Ok::<u64, String>(got)
        }
        .await;
        circuit.close();
        let got = result?;
        if got < cfg.bytes {
            return Err(format!("only {got} of {} bytes arrived", cfg.bytes));
        }
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        Ok((got as f64 / secs).min(f64::from(u32::MAX)) as u32)
    };
    tokio::time::timeout(cfg.timeout, run)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}
