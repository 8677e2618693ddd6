//! One error vocabulary for every anonnet crate (`docs/errors.md`), after Arti's
//! `tor-error`: each error type of each crate implements [`HasKind`], and front ends —
//! the SOCKS and HTTP proxies, the CLI's exit status, the tray's messages, the control
//! API's `kind` field — decide from the [`ErrorKind`], never from a message string.
//!
//! The kinds say *whose* problem it is and *what a person can do*, not which module
//! failed: "the destination refused" and "the exit's policy forbids it" are different
//! kinds because a user reacts differently; two parse errors of two crates are one kind.

#![forbid(unsafe_code)]

use std::fmt;

/// What kind of failure an error is, whatever its source.
///
/// The names are stable: [`ErrorKind::as_str`] is what the control API sends in an
/// error's `kind` field and what [`ErrorKind::parse`] reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The exit relay's policy does not allow the destination (SOCKS reply 2).
    ExitPolicy,
    /// The destination refused the connection (SOCKS reply 5).
    ConnectionRefused,
    /// The destination could not be resolved or reached: a host name that does not
    /// resolve, a hidden service with no descriptor or no answering introduction point,
    /// a `.dark` name with no believable record (SOCKS reply 4).
    HostUnreachable,
    /// A step took longer than its limit (building, connecting, an answer; SOCKS reply 6).
    Timeout,
    /// A circuit could not be built, or broke (SOCKS reply 1).
    CircuitFailed,
    /// The client is not ready: no consensus yet, too few usable relays (SOCKS reply 1).
    NotReady,
    /// The request is malformed: a bad destination, address, name or argument.
    BadRequest,
    /// Proxying is switched off (`anonnet proxy on`): nothing is sent anywhere.
    Disabled,
    /// Refused here on purpose: a `.dark` name whose owner key changed, a non-loopback
    /// control address.
    NotAllowed,
    /// The thing named does not exist (a hosted service, a file the command needs).
    NotFound,
    /// No daemon answers: not running, a stale port file, no control port.
    DaemonDown,
    /// A configuration file or option is invalid (the error names the file and key).
    Config,
    /// A file or directory is not private enough, or cannot be read or written for
    /// permission reasons (key files, the state directory).
    Permission,
    /// A local resource failed: a port that cannot be bound, a full disk, a socket or
    /// file error on this machine.
    LocalResource,
    /// A remote peer broke the protocol (malformed bytes, a bad signature, an answer that
    /// does not fit the question). It loses its circuit or connection.
    Protocol,
    /// A remote peer or this process refused for lack of room: a full table or queue,
    /// a rate limit.
    Busy,
    /// Not available in this version.
    NotImplemented,
    /// A bug or an unexpected state here.
    Internal,
}

/// Implemented by every public error type of every anonnet crate.
pub trait HasKind {
    /// The kind of this failure.
    fn kind(&self) -> ErrorKind;
}

impl HasKind for ErrorKind {
    fn kind(&self) -> ErrorKind {
        *self
    }
}

impl HasKind for std::io::Error {
    /// An I/O error of this machine: permission problems are [`ErrorKind::Permission`],
    /// a missing file [`ErrorKind::NotFound`], a timeout [`ErrorKind::Timeout`], a refused
    /// connection [`ErrorKind::ConnectionRefused`], malformed data
    /// [`ErrorKind::Protocol`], the rest [`ErrorKind::LocalResource`].
    fn kind(&self) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match std::io::Error::kind(self) {
            Io::PermissionDenied | Io::ReadOnlyFilesystem => ErrorKind::Permission,
            Io::NotFound => ErrorKind::NotFound,
            Io::TimedOut => ErrorKind::Timeout,
            Io::ConnectionRefused => ErrorKind::ConnectionRefused,
            Io::InvalidData | Io::UnexpectedEof => ErrorKind::Protocol,
            Io::InvalidInput => ErrorKind::BadRequest,
            _ => ErrorKind::LocalResource,
        }
    }
}

/// Every kind, in declaration order (for tables and tests).
pub const ALL: [ErrorKind; 18] = [
    ErrorKind::ExitPolicy,
    ErrorKind::ConnectionRefused,
    ErrorKind::HostUnreachable,
    ErrorKind::Timeout,
    ErrorKind::CircuitFailed,
    ErrorKind::NotReady,
    ErrorKind::BadRequest,
    ErrorKind::Disabled,
    ErrorKind::NotAllowed,
    ErrorKind::NotFound,
    ErrorKind::DaemonDown,
    ErrorKind::Config,
    ErrorKind::Permission,
    ErrorKind::LocalResource,
    ErrorKind::Protocol,
    ErrorKind::Busy,
    ErrorKind::NotImplemented,
    ErrorKind::Internal,
];

impl ErrorKind {
    /// The stable snake_case name (`"exit_policy"`, `"daemon_down"`, …): the control
    /// API's `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ExitPolicy => "exit_policy",
            ErrorKind::ConnectionRefused => "connection_refused",
            ErrorKind::HostUnreachable => "host_unreachable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::CircuitFailed => "circuit_failed",
            ErrorKind::NotReady => "not_ready",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Disabled => "disabled",
            ErrorKind::NotAllowed => "not_allowed",
            ErrorKind::NotFound => "not_found",
            ErrorKind::DaemonDown => "daemon_down",
            ErrorKind::Config => "config",
            ErrorKind::Permission => "permission",
            ErrorKind::LocalResource => "local_resource",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Busy => "busy",
            ErrorKind::NotImplemented => "not_implemented",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind named `name` ([`ErrorKind::as_str`]); `None` for a name this version does
    /// not know (a newer daemon's kind: treat it as [`ErrorKind::Internal`]).
    pub fn parse(name: &str) -> Option<ErrorKind> {
        ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The process exit status for a command that failed with this kind, from BSD's
    /// `sysexits.h` so scripts can tell causes apart: 64 usage (bad request), 65 data
    /// (protocol), 66 no input (not found), 69 unavailable (daemon down, not ready,
    /// disabled, unreachable, refused, policy), 70 software (internal), 71 OS error (local
    /// resource), 75 temporary failure (timeout, circuit, busy), 77 no permission
    /// (permission, not allowed), 78 config.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::BadRequest => 64,
            ErrorKind::Protocol => 65,
            ErrorKind::NotFound => 66,
            ErrorKind::DaemonDown
            | ErrorKind::NotReady
            | ErrorKind::Disabled
            | ErrorKind::HostUnreachable
            | ErrorKind::ConnectionRefused
            | ErrorKind::ExitPolicy
            | ErrorKind::NotImplemented => 69,
            ErrorKind::Internal => 70,
            ErrorKind::LocalResource => 71,
            ErrorKind::Timeout | ErrorKind::CircuitFailed | ErrorKind::Busy => 75,
            ErrorKind::Permission | ErrorKind::NotAllowed => 77,
            ErrorKind::Config => 78,
        }
    }

    /// A short sentence for people (the tray's messages), naming what they can do. The
    /// error's own text follows it with the details.
    pub fn summary(self) -> &'static str {
        match self {
            ErrorKind::ExitPolicy => "No exit relay allows this destination.",
            ErrorKind::ConnectionRefused => "The destination refused the connection.",
            ErrorKind::HostUnreachable => "The destination could not be found or reached.",
            ErrorKind::Timeout => "It took too long; try again.",
            ErrorKind::CircuitFailed => "No working circuit; try again or ask for new circuits.",
            ErrorKind::NotReady => "anonnet is still connecting to the network.",
            ErrorKind::BadRequest => "The request is not valid.",
            ErrorKind::Disabled => "The proxy is switched off.",
            ErrorKind::NotAllowed => "Refused on purpose.",
            ErrorKind::NotFound => "Not found.",
            ErrorKind::DaemonDown => "The anonnet daemon is not running.",
            ErrorKind::Config => "The configuration is not valid.",
            ErrorKind::Permission => "A file or folder has the wrong permissions.",
            ErrorKind::LocalResource => "A resource on this computer failed.",
            ErrorKind::Protocol => "A relay sent something invalid.",
            ErrorKind::Busy => "Too busy right now; try again later.",
            ErrorKind::NotImplemented => "Not available in this version.",
            ErrorKind::Internal => "Something went wrong inside anonnet.",
        }
    }
}

/// Words for a process exit status that [`ErrorKind::exit_code`] gives (what a front
/// end shows when the daemon it started exited); `None` for other statuses.
pub fn exit_code_meaning(code: i32) -> Option<&'static str> {
    Some(match code {
        64 => "a bad command line or request",
        65 => "a relay or file held invalid data",
        66 => "something it needs was not found",
        69 => "something it needs is unavailable (the daemon, the network or the destination)",
        70 => "an internal error",
        71 => "a resource on this computer failed (a port in use, a full disk)",
        75 => "a temporary failure; try again",
        77 => "a file or folder has the wrong permissions",
        78 => "the configuration is not valid",
        _ => return None,
    })
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_read_back() {
        for (i, a) in ALL.iter().enumerate() {
            assert_eq!(ErrorKind::parse(a.as_str()), Some(*a));
            for b in &ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
        assert_eq!(ErrorKind::parse("from_a_newer_daemon"), None);
    }

    #[test]
    fn exit_codes_are_sysexits_and_never_success() {
        for k in ALL {
            assert!((64..=78).contains(&k.exit_code()), "{k}");
        }
        assert_eq!(ErrorKind::Config.exit_code(), 78);
        assert_eq!(ErrorKind::DaemonDown.exit_code(), 69);
        assert_eq!(ErrorKind::Permission.exit_code(), 77);
    }

    #[test]
    fn every_exit_code_has_words() {
        for k in ALL {
            assert!(exit_code_meaning(i32::from(k.exit_code())).is_some(), "{k}");
        }
        assert_eq!(exit_code_meaning(1), None);
    }

    #[test]
    fn io_errors_map_by_their_kind() {
        let io = |k| std::io::Error::from(k);
        assert_eq!(
            HasKind::kind(&io(std::io::ErrorKind::PermissionDenied)),
            ErrorKind::Permission
        );
        assert_eq!(
            HasKind::kind(&io(std::io::ErrorKind::AddrInUse)),
            ErrorKind::LocalResource
        );
        assert_eq!(
            HasKind::kind(&io(std::io::ErrorKind::TimedOut)),
            ErrorKind::Timeout
        );
    }
}
