//! `anonnet resolve NAME`: look a host name up (or an address's name, a reverse lookup)
//! through the network, like Tor's `tor-resolve`. The question goes to the running
//! daemon's SOCKS port as Tor's SOCKS5 extension commands `RESOLVE` (0xF0) and
//! `RESOLVE_PTR` (0xF1) (docs/protocol.md §9.3); an exit answers it (§6.2, §8.3), and
//! nothing is resolved on this machine.
//!
//! fast-socks5's client knows only the three RFC 1928 commands, so the few bytes of the
//! request and reply are written and read here, by [`request`] and [`parse_reply`]
//! (sans-IO, unit-tested) around one TCP connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{cli, config, print_line, Error};
use anonnet_error::ErrorKind;

/// How long the whole question may take (the daemon may need to build a circuit first).
const TIMEOUT: Duration = Duration::from_secs(60);

/// `anonnet resolve …`.
#[derive(Debug, Clone, Args)]
pub struct ResolveArgs {
    /// The host name to look up, or an IPv4/IPv6 address whose name to look up.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The daemon's SOCKS address, IP:PORT [default: the `socks` port in the daemon's
    /// state directory's ports.json].
    #[arg(long, value_name = "ADDR")]
    pub socks: Option<SocketAddr>,
    /// Isolation key: sent as the SOCKS username, so the question goes on the circuits of
    /// that isolation group [default: the default group].
    #[arg(long, value_name = "KEY")]
    pub isolation: Option<String>,
    #[command(flatten)]
    pub target: cli::Target,
}

/// What `--json` prints.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct Answer {
    /// The name or address asked about.
    query: String,
    /// The address (for a name) or the name (for an address).
    answer: String,
}

/// A SOCKS5 reply to a resolve request (RFC 1928 §6).
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// REP 0 with an address.
    Address(IpAddr),
    /// REP 0 with a host name (ATYP 3).
    Name(String),
    /// REP other than 0.
    Failed(u8),
}

/// The bytes after the method choice: `VER 5 ‖ CMD ‖ RSV 0 ‖ ATYP ‖ ADDR ‖ PORT 0`, with
/// `RESOLVE_PTR` and ATYP 1/4 for an address, `RESOLVE` and ATYP 3 for a name.
///
/// # Errors
/// A message when the name is longer than 255 bytes.
fn request(query: &str) -> Result<Vec<u8>, String> {
    let mut out = vec![5];
    match query.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => {
            out.extend([anonnet_proxy::SOCKS5_CMD_RESOLVE_PTR, 0, 1]);
            out.extend(a.octets());
        }
        Ok(IpAddr::V6(a)) => {
            out.extend([anonnet_proxy::SOCKS5_CMD_RESOLVE_PTR, 0, 4]);
            out.extend(a.octets());
        }
        Err(_) => {
            let len = u8::try_from(query.len())
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("a name of {} bytes; 1..=255 are allowed", query.len()))?;
            out.extend([anonnet_proxy::SOCKS5_CMD_RESOLVE, 0, 3, len]);
            out.extend(query.as_bytes());
        }
    }
    out.extend([0, 0]);
    Ok(out)
}

/// Parse a whole reply `VER 5 ‖ REP ‖ RSV ‖ ATYP ‖ BND.ADDR ‖ BND.PORT`: `Ok(None)` when
/// more bytes are needed.
///
/// # Errors
/// A message for a reply that is not SOCKS5 or has an unknown address type.
fn parse_reply(bytes: &[u8]) -> Result<Option<Reply>, String> {
    let Some(&[version, rep, _, atyp]) = bytes.get(..4) else {
        return Ok(None);
    };
    if version != 5 {
        return Err(format!("the SOCKS port answered version {version}, not 5"));
    }
    if rep != 0 {
        return Ok(Some(Reply::Failed(rep)));
    }
    let rest = bytes.get(4..).unwrap_or_default();
    let (addr_len, skip) = match atyp {
        1 => (4, 0),
        4 => (16, 0),
        3 => match rest.first() {
            Some(n) => (usize::from(*n), 1),
            None => return Ok(None),
        },
        other => return Err(format!("the reply has address type {other}")),
    };
    let Some(addr) = rest.get(skip..skip + addr_len) else {
        return Ok(None);
    };
    if rest.len() < skip + addr_len + 2 {
        return Ok(None);
    }
    Ok(Some(match atyp {
        1 => Reply::Address(IpAddr::V4(Ipv4Addr::new(
            addr[0], addr[1], addr[2], addr[3],
        ))),
        4 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(addr);
            Reply::Address(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => Reply::Name(String::from_utf8_lossy(addr).into_owned()),
    }))
}

/// The words for a failed reply code (RFC 1928 §6, as the daemon uses them).
fn failure_text(rep: u8) -> &'static str {
    match rep {
        2 => "not allowed (a .anon/.dark name has no address, or the exit may not answer)",
        4 => "does not resolve",
        6 => "the exit's lookup timed out; try again",
        7 => "the SOCKS port does not support RESOLVE (not an anonnet or Tor daemon?)",
        8 => "address type not supported",
        _ => "failed (no circuit, or the proxy is off)",
    }
}

/// The kind of a failed reply code (RFC 1928 §6), for the exit status: the inverse of
/// the proxy's `socks_reply`.
fn reply_kind(rep: u8) -> ErrorKind {
    match rep {
        2 => ErrorKind::NotAllowed,
        4 => ErrorKind::HostUnreachable,
        5 => ErrorKind::ConnectionRefused,
        6 => ErrorKind::Timeout,
        7 | 8 => ErrorKind::NotImplemented,
        _ => ErrorKind::CircuitFailed,
    }
}

/// Run `anonnet resolve`. `global_config` is a `--config` given before the subcommand.
///
/// # Errors
/// [`Error::Failed`] with one line: the daemon is not running, the name does not resolve
/// (with the reason the reply code gives), or the SOCKS port answered something else.
pub async fn run(args: ResolveArgs, global_config: Option<PathBuf>) -> Result<(), Error> {
    let socks = match args.socks {
        Some(a) => a,
        None => {
            let path = cli::client_config_path(args.target.config.clone().or(global_config))?;
            let state_dir: PathBuf = config::client_state_dir(&path)?.components().collect();
            cli::running_socks_port(&state_dir)?
        }
    };
    let query = args.name.trim_start_matches('[').trim_end_matches(']');
    let request = request(query).map_err(|e| Error::failed(ErrorKind::BadRequest, e))?;
    let reply = tokio::time::timeout(TIMEOUT, ask(socks, args.isolation.as_deref(), &request))
        .await
        .map_err(|_| {
            Error::failed(
                ErrorKind::Timeout,
                format!("no answer from the SOCKS port {socks} in 60 s"),
            )
        })?
        .map_err(|e| Error::failed(ErrorKind::DaemonDown, e))?;
    let answer = match reply {
        Reply::Address(ip) => ip.to_string(),
        Reply::Name(name) => name,
        Reply::Failed(rep) => {
            return Err(Error::failed(
                reply_kind(rep),
                format!("{query}: {} (SOCKS reply {rep})", failure_text(rep)),
            ))
        }
    };
    let out = Answer {
        query: query.to_owned(),
        answer,
    };
    if args.target.json {
        let text = serde_json::to_string_pretty(&out)
            .map_err(|e| Error::failed(ErrorKind::Internal, format!("cannot print JSON: {e}")))?;
        print_line(&text)
    } else {
        print_line(&out.answer)
    }
}

/// One SOCKS5 exchange: greeting (no auth, or username/password when `isolation` is
/// given, RFC 1929), `request`, reply.
///
/// # Errors
/// A message naming what failed.
async fn ask(socks: SocketAddr, isolation: Option<&str>, request: &[u8]) -> Result<Reply, String> {
    let mut tcp = tokio::net::TcpStream::connect(socks)
        .await
        .map_err(|e| format!("cannot reach the SOCKS port {socks}: {e}; is the daemon running?"))?;
    let io = |e: std::io::Error| format!("SOCKS port {socks}: {e}");
    let method = if isolation.is_some() { 2 } else { 0 };
    tcp.write_all(&[5, 1, method]).await.map_err(io)?;
    let mut choice = [0u8; 2];
    tcp.read_exact(&mut choice).await.map_err(io)?;
    if choice != [5, method] {
        return Err(format!("the SOCKS port refused the method: {choice:?}"));
    }
    if let Some(user) = isolation {
        let user = user.as_bytes();
        let len = u8::try_from(user.len())
            .map_err(|_| "an isolation key of more than 255 bytes".to_string())?;
        let mut auth = vec![1, len];
        auth.extend(user);
        auth.extend([1, b'x']);
        tcp.write_all(&auth).await.map_err(io)?;
        let mut status = [0u8; 2];
        tcp.read_exact(&mut status).await.map_err(io)?;
        if status[1] != 0 {
            return Err("the SOCKS port refused the isolation key".into());
        }
    }
    tcp.write_all(request).await.map_err(io)?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 300];
    loop {
        if let Some(reply) = parse_reply(&buf)? {
            return Ok(reply);
        }
        let n = tcp.read(&mut chunk).await.map_err(io)?;
        if n == 0 || buf.len() + n > 4 + 1 + 255 + 2 {
            return Err(format!("SOCKS port {socks} closed before a whole reply"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tor_s_socks5_extension() {
        assert_eq!(
            request("localhost").unwrap(),
            b"\x05\xf0\x00\x03\x09localhost\x00\x00".to_vec()
        );
        assert_eq!(
            request("127.0.0.1").unwrap(),
            vec![5, 0xf1, 0, 1, 127, 0, 0, 1, 0, 0]
        );
        let v6 = request("::1").unwrap();
        assert_eq!(&v6[..4], &[5, 0xf1, 0, 4]);
        assert_eq!(v6.len(), 4 + 16 + 2);
        assert!(request(&"a".repeat(256)).is_err());
        assert!(request("").is_err());
    }

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        let v4 = [5, 0, 0, 1, 127, 0, 0, 1, 0, 0];
        for n in 0..v4.len() {
            assert_eq!(parse_reply(&v4[..n]).unwrap(), None, "{n}");
        }
        assert_eq!(
            parse_reply(&v4).unwrap(),
            Some(Reply::Address("127.0.0.1".parse().unwrap()))
        );
        let name = b"\x05\x00\x00\x03\x09localhost\x00\x00";
        assert_eq!(parse_reply(&name[..12]).unwrap(), None);
        assert_eq!(
            parse_reply(name).unwrap(),
            Some(Reply::Name("localhost".into()))
        );
        assert_eq!(
            parse_reply(&[5, 4, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap(),
            Some(Reply::Failed(4))
        );
        assert!(parse_reply(&[4, 0, 0, 1]).is_err());
        assert!(parse_reply(&[5, 0, 0, 9]).is_err());
    }
}
