//! When to stop: SIGINT (Ctrl-C) or SIGTERM, and for children of `anonnet testnet` also
//! the end of standard input, so a child never outlives a testnet that was killed outright.

use tokio_util::sync::CancellationToken;

/// Waits for the reasons to shut down. Create it early: from then on the signals are
/// caught instead of killing the process, and none is lost between two waits.
pub struct Shutdown {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    parent_gone: CancellationToken,
}

impl Shutdown {
    /// Install the signal handlers; with `exit_with_parent`, also watch standard input
    /// and shut down when it closes.
    ///
    /// # Errors
    /// The I/O error when a signal handler cannot be installed.
    pub fn new(exit_with_parent: bool) -> std::io::Result<Shutdown> {
        let parent_gone = CancellationToken::new();
        if exit_with_parent {
            // A plain thread, not tokio's stdin: a blocked tokio stdin read would hold up
            // runtime shutdown until the read returns.
            let token = parent_gone.clone();
            std::thread::Builder::new()
                .name("parent-watch".into())
                .spawn(move || {
                    use std::io::Read;
                    let mut stdin = std::io::stdin();
                    let mut buf = [0u8; 64];
                    loop {
                        match stdin.read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                    token.cancel();
                })?;
        }
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Shutdown {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
                parent_gone,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Shutdown { parent_gone })
        }
    }

    /// Resolve at the next reason to stop and say which it was. Can be called again.
    pub async fn wait(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
                () = self.parent_gone.cancelled() => "parent exited (stdin closed)",
            }
        }
        #[cfg(not(unix))]
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => "Ctrl-C",
                () = self.parent_gone.cancelled() => "parent exited (stdin closed)",
            }
        }
    }
}
