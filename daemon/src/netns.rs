//! Network namespaces from user space: run a closure inside one, and forward a TCP
//! listener into one. Shared by the WAN testnet (`anonnet testnet --wan`, the binary's
//! `wan` module) and `bench-vs-tor --wan` (which starts Tor inside the same namespaces).
//!
//! Linux only; elsewhere [`in_netns`] fails with `Unsupported`.

use std::net::SocketAddr;
#[cfg(target_os = "linux")]
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::debug;

/// Run `f` on a fresh thread that has entered the network namespace `netns`; sockets it
/// creates stay in that namespace. (A fresh thread, because setns(2) changes the calling
/// thread for good.)
///
/// # Errors
/// The I/O error from opening `/run/netns/NETNS`, from setns(2), or from `f`.
#[cfg(target_os = "linux")]
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = Path::new("/run/netns").join(netns);
    let ns = std::fs::File::open(&path)?;
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("namespace thread panicked"))?
}

/// Network namespaces exist only on Linux: the WAN testnet cannot run elsewhere.
///
/// # Errors
/// Always [`std::io::ErrorKind::Unsupported`].
#[cfg(not(target_os = "linux"))]
pub fn in_netns<T: Send + 'static>(
    _netns: &str,
    _f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "the WAN testnet needs Linux network namespaces",
    ))
}

/// Listen on `listen` (in the calling thread's namespace, normally the root one) and
/// splice every accepted connection to `target` inside the namespace `netns`, so that a
/// listener inside a WAN host is reachable from outside. Returns the bound address and
/// the forwarding task, which runs until aborted. Used by `Wan::forward` (the binary's WAN testnet) and by
/// `bench-vs-tor --wan`, which forwards to the Tor client it starts in the client's
/// namespace.
///
/// # Errors
/// The I/O error from binding `listen` or reading its address.
pub async fn forward_into(
    listen: SocketAddr,
    netns: &str,
    target: SocketAddr,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(forward_loop(listener, netns.to_owned(), target));
    Ok((bound, task))
}

/// Accept on `listener` and splice each connection to `target` inside `netns`.
async fn forward_loop(listener: TcpListener, netns: String, target: SocketAddr) {
    loop {
        let (mut inbound, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!("forwarder accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let netns = netns.clone();
        tokio::spawn(async move {
            let ns = netns.clone();
            let outbound = tokio::task::spawn_blocking(move || {
                in_netns(&ns, move || {
                    let s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(10))?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
            })
            .await;
            let outbound = match outbound {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!("forwarder connect in {netns}: {e}");
                    return;
                }
                Err(e) => {
                    debug!("forwarder task: {e}");
                    return;
                }
            };
            let Ok(mut outbound) = tokio::net::TcpStream::from_std(outbound) else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}
