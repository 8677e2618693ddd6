//! Errors of the control API, worded for the person at the CLI or the tray.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong talking to (or serving) the control API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No `ports.json` in the state directory: no daemon runs with that config.
    #[error("daemon not running (no ports.json at {})", ports_file.display())]
    NotRunning {
        /// Where `ports.json` was looked for.
        ports_file: PathBuf,
    },
    /// `ports.json` exists but names no control port (a daemon without the control API).
    #[error(
        "the daemon's {} lists no \"control\" port (an older anonnet, or one still starting)",
        ports_file.display()
    )]
    NoControlPort {
        /// The port file.
        ports_file: PathBuf,
    },
    /// Nothing listens at the control address: the daemon stopped (and left a stale
    /// `ports.json`) or is restarting.
    #[error("connection refused at {addr}: the daemon is not running (stale ports.json?)")]
    ConnectionRefused {
        /// The control address tried.
        addr: SocketAddr,
    },
    /// The daemon answered 401: the cookie is not the one it holds (it restarted and wrote
    /// a new one, or the file was replaced).
    #[error(
        "cookie rejected by the daemon at {addr}: the control cookie does not match (did the \
         daemon restart with another state directory?)"
    )]
    CookieRejected {
        /// The control address.
        addr: SocketAddr,
    },
    /// A local file (ports file, cookie) cannot be read, written or is malformed.
    #[error("{}: {why}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The server refuses to listen on a non-loopback address.
    #[error(
        "control API address {addr} is not a loopback address; it is local only \
         (use 127.0.0.1:PORT or [::1]:PORT)"
    )]
    NotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The control port could not be bound.
    #[error("cannot listen for the control API on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// A network step failed other than a refused connection.
    #[error("control API at {addr}: {why}")]
    Transport {
        /// The control address.
        addr: SocketAddr,
        /// What failed.
        why: String,
    },
    /// The daemon did not answer in time.
    #[error("control API at {addr}: no answer within {secs} s")]
    Timeout {
        /// The control address.
        addr: SocketAddr,
        /// The time limit in seconds.
        secs: u64,
    },
    /// The daemon answered with an error status (its message and kind are kept).
    #[error("the daemon answered {status}: {message}")]
    Api {
        /// The HTTP status code.
        status: u16,
        /// The daemon's `error` text.
        message: String,
        /// The daemon's `kind`.
        kind: anonnet_error::ErrorKind,
    },
    /// The daemon's answer is not what this version understands.
    #[error("unexpected answer from the daemon: {0}")]
    Decode(String),
    /// The feature is not available yet in this daemon (HTTP 501).
    #[error("{0}")]
    NotImplemented(String),
}

impl anonnet_error::HasKind for ControlError {
    /// [`anonnet_error::ErrorKind::DaemonDown`] when no daemon answers (as
    /// [`ControlError::daemon_down`]) or the link to it broke; a refused cookie or a
    /// non-loopback address [`anonnet_error::ErrorKind::NotAllowed`]; the daemon's own
    /// kind for its error answers.
    fn kind(&self) -> anonnet_error::ErrorKind {
        use anonnet_error::ErrorKind as K;
        match self {
            ControlError::NotRunning { .. }
            | ControlError::NoControlPort { .. }
            | ControlError::ConnectionRefused { .. }
            | ControlError::Transport { .. } => K::DaemonDown,
            ControlError::CookieRejected { .. } | ControlError::NotLoopback { .. } => K::NotAllowed,
            ControlError::File { .. } | ControlError::Bind { .. } => K::LocalResource,
            ControlError::Timeout { .. } => K::Timeout,
            ControlError::Api { kind, .. } => *kind,
            ControlError::Decode(_) => K::Protocol,
            ControlError::NotImplemented(_) => K::NotImplemented,
        }
    }
}

impl ControlError {
    /// Whether this means "no daemon is reachable" (not running, stale port file, no
    /// control port): what the tray shows as "daemon not running" with "Start daemon".
    pub fn daemon_down(&self) -> bool {
        matches!(
            self,
            ControlError::NotRunning { .. }
                | ControlError::NoControlPort { .. }
                | ControlError::ConnectionRefused { .. }
        )
    }

    pub(crate) fn file(path: impl Into<PathBuf>, why: impl ToString) -> ControlError {
        ControlError::File {
            path: path.into(),
            why: why.to_string(),
        }
    }
}
