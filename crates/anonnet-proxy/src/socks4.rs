//! SOCKS4 and SOCKS4a requests and replies, sans-IO: [`parse`] takes the bytes received so
//! far and says whether a whole request is there; [`reply`] gives the 8-byte answer.
//!
//! No maintained crate offers a SOCKS4 *server* parser (`fast-socks5` has a SOCKS4 client
//! only), so this is our own, kept to the two messages the SOCKS port needs.
//!
//! Request (SOCKS4; SOCKS4a when `DSTIP` is `0.0.0.x`, `x ≠ 0`, and a host name follows):
//!
//! ```text
//! VN=4 u8 ‖ CD u8 ‖ DSTPORT u16 ‖ DSTIP [4] ‖ USERID ‖ 0x00 [‖ HOSTNAME ‖ 0x00]
//! ```
//!
//! Reply: `0x00 ‖ CD u8 ‖ DSTPORT u16 ‖ DSTIP [4]`, `CD` 90 (granted) or 91 (rejected or
//! failed), port and address zero.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use std::net::Ipv4Addr;

/// The first byte of every SOCKS4 and SOCKS4a request.
pub const VERSION: u8 = 4;
/// `CD` of a `CONNECT` request.
pub const CMD_CONNECT: u8 = 1;
/// `CD` of Tor's `RESOLVE` extension (socks-extensions.txt §2): the reply's `DSTIP` is the
/// host name's IPv4 address, resolved by an exit; no connection.
pub const CMD_RESOLVE: u8 = 0xF0;
/// Reply `CD`: request granted.
pub const REPLY_GRANTED: u8 = 90;
/// Reply `CD`: request rejected or failed (SOCKS4 has no finer codes).
pub const REPLY_REJECTED: u8 = 91;
/// Longest user id and host name accepted, in bytes, without their terminating NUL.
pub const MAX_FIELD_LEN: usize = 255;
/// Bytes before the user id: `VN`, `CD`, `DSTPORT`, `DSTIP`.
const HEADER_LEN: usize = 8;
/// Longest well-formed request, in bytes (header, user id and host name at
/// [`MAX_FIELD_LEN`] each with their NULs): 520. A buffer holding this many bytes without
/// a complete request holds an invalid one.
pub const MAX_REQUEST_LEN: usize = HEADER_LEN + 2 * (MAX_FIELD_LEN + 1);

/// Where a request asks to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// SOCKS4: an IPv4 address.
    Ip(Ipv4Addr),
    /// SOCKS4a: a host name, 1..=[`MAX_FIELD_LEN`] bytes of UTF-8, to be resolved by the
    /// exit (never locally).
    Host(String),
}

/// A complete `CONNECT` or `RESOLVE` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `CD`: [`CMD_CONNECT`] or [`CMD_RESOLVE`].
    pub command: u8,
    /// `DSTPORT`.
    pub port: u16,
    /// `DSTIP`, or for SOCKS4a the host name.
    pub destination: Destination,
    /// `USERID`, 0..=[`MAX_FIELD_LEN`] bytes, any value but NUL.
    pub user_id: Vec<u8>,
}

/// What the bytes received so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a request that may still be valid: read more and parse again.
    Incomplete,
    /// A whole request in the first `len` bytes; bytes after it are the client's data.
    Request {
        /// The request.
        request: Request,
        /// Its length in bytes, 9..=[`MAX_REQUEST_LEN`].
        len: usize,
    },
}

/// Why a request is refused (answered with [`REPLY_REJECTED`], then closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Socks4Error {
    /// The first byte is not 4.
    #[error("not a SOCKS4 request (version {0})")]
    Version(u8),
    /// A whole, well-formed request whose command is neither `CONNECT` nor `RESOLVE`
    /// (`2` is `BIND`).
    #[error("SOCKS4 command {0} not supported")]
    UnsupportedCommand(u8),
    /// No NUL within [`MAX_FIELD_LEN`] bytes of user id.
    #[error("SOCKS4 user id longer than {MAX_FIELD_LEN} bytes")]
    UserIdTooLong,
    /// No NUL within [`MAX_FIELD_LEN`] bytes of host name.
    #[error("SOCKS4a host name longer than {MAX_FIELD_LEN} bytes")]
    HostNameTooLong,
    /// A SOCKS4a host name of zero bytes.
    #[error("SOCKS4a host name empty")]
    EmptyHostName,
    /// A SOCKS4a host name that is not UTF-8.
    #[error("SOCKS4a host name not UTF-8")]
    HostNameNotText,
}

/// Parse the bytes received so far on a SOCKS4/4a connection (`buf` starts at the
/// connection's first byte). Never panics; looks at no more than [`MAX_REQUEST_LEN`] bytes.
///
/// # Errors
/// [`Socks4Error::Version`] as soon as the first byte is not 4; a too-long field as soon
/// as [`MAX_FIELD_LEN`] bytes of it arrived without a NUL; an empty or non-UTF-8 SOCKS4a
/// host name; [`Socks4Error::UnsupportedCommand`] for a complete request other than
/// `CONNECT` or `RESOLVE` (only once it is complete, so that the reply is not sent while
/// the client is still writing).
pub fn parse(buf: &[u8]) -> Result<Parsed, Socks4Error> {
    let Some(&version) = buf.first() else {
        return Ok(Parsed::Incomplete);
    };
    if version != VERSION {
        return Err(Socks4Error::Version(version));
    }
    let Some(&[_, command, p0, p1, a, b, c, d]) = buf.get(..HEADER_LEN) else {
        return Ok(Parsed::Incomplete);
    };
    let port = u16::from_be_bytes([p0, p1]);
    let ip = Ipv4Addr::new(a, b, c, d);
    let rest = buf.get(HEADER_LEN..).unwrap_or_default();
    let Some((user_id, after_user)) = field(rest, Socks4Error::UserIdTooLong)? else {
        return Ok(Parsed::Incomplete);
    };
    let mut len = HEADER_LEN + user_id.len() + 1;
    // SOCKS4a: 0.0.0.x with x ≠ 0 says a host name follows.
    let destination = if [a, b, c] == [0, 0, 0] && d != 0 {
        let Some((host, _)) = field(after_user, Socks4Error::HostNameTooLong)? else {
            return Ok(Parsed::Incomplete);
        };
        len += host.len() + 1;
        if host.is_empty() {
            return Err(Socks4Error::EmptyHostName);
        }
        let host = std::str::from_utf8(host).map_err(|_| Socks4Error::HostNameNotText)?;
        Destination::Host(host.to_owned())
    } else {
        Destination::Ip(ip)
    };
    if command != CMD_CONNECT && command != CMD_RESOLVE {
        return Err(Socks4Error::UnsupportedCommand(command));
    }
    Ok(Parsed::Request {
        request: Request {
            command,
            port,
            destination,
            user_id: user_id.to_vec(),
        },
        len,
    })
}

/// A NUL-terminated field's value and the bytes after its NUL.
type FieldAndRest<'a> = (&'a [u8], &'a [u8]);

/// A NUL-terminated field at the start of `buf`: `Some((field, bytes after its NUL))`,
/// `None` while its NUL has not arrived, `too_long` when [`MAX_FIELD_LEN`] bytes came
/// without one.
fn field(buf: &[u8], too_long: Socks4Error) -> Result<Option<FieldAndRest<'_>>, Socks4Error> {
    let window = buf.get(..=MAX_FIELD_LEN).unwrap_or(buf);
    match window.iter().position(|&byte| byte == 0) {
        Some(nul) => {
            let (value, rest) = buf.split_at(nul);
            Ok(Some((value, rest.get(1..).unwrap_or_default())))
        }
        None if window.len() > MAX_FIELD_LEN => Err(too_long),
        None => Ok(None),
    }
}

/// The 8-byte reply: `0x00 ‖ CD ‖ 0x0000 ‖ 0.0.0.0` with `CD` [`REPLY_GRANTED`] when
/// `granted`, else [`REPLY_REJECTED`]. The bound address is not told (the stream leaves
/// from an exit, not from here).
pub fn reply(granted: bool) -> [u8; 8] {
    let code = if granted {
        REPLY_GRANTED
    } else {
        REPLY_REJECTED
    };
    [0, code, 0, 0, 0, 0, 0, 0]
}

/// The 8-byte reply to a granted `RESOLVE`: `0x00 ‖ 90 ‖ 0x0000 ‖ address`.
pub fn resolved(address: Ipv4Addr) -> [u8; 8] {
    let [a, b, c, d] = address.octets();
    [0, REPLY_GRANTED, 0, 0, a, b, c, d]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request with command `cd`, port `port`, address `ip`, user id and (SOCKS4a) host.
    fn encode(cd: u8, port: u16, ip: [u8; 4], user: &[u8], host: Option<&[u8]>) -> Vec<u8> {
        let mut v = vec![VERSION, cd];
        v.extend_from_slice(&port.to_be_bytes());
        v.extend_from_slice(&ip);
        v.extend_from_slice(user);
        v.push(0);
        if let Some(h) = host {
            v.extend_from_slice(h);
            v.push(0);
        }
        v
    }

    #[test]
    fn socks4_connect_to_an_ip_with_a_user_id() {
        // curl --socks4 127.0.0.1:1080 -U alice http://10.1.2.3:8080/
        let bytes = hex("04011f900a010203616c69636500");
        assert_eq!(
            parse(&bytes),
            Ok(Parsed::Request {
                request: Request {
                    command: CMD_CONNECT,
                    port: 8080,
                    destination: Destination::Ip(Ipv4Addr::new(10, 1, 2, 3)),
                    user_id: b"alice".to_vec(),
                },
                len: 14,
            })
        );
    }

    #[test]
    fn socks4a_connect_to_a_host_name_without_a_user_id() {
        let bytes = hex("0401005000000001006578616d706c652e636f6d00");
        assert_eq!(
            parse(&bytes),
            Ok(Parsed::Request {
                request: Request {
                    command: CMD_CONNECT,
                    port: 80,
                    destination: Destination::Host("example.com".into()),
                    user_id: Vec::new(),
                },
                len: bytes.len(),
            })
        );
    }

    #[test]
    fn bytes_after_the_request_are_not_part_of_it() {
        let mut bytes = encode(1, 80, [0, 0, 0, 9], b"u", Some(b"demo.dark"));
        let len = bytes.len();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        match parse(&bytes) {
            Ok(Parsed::Request { request, len: n }) => {
                assert_eq!(n, len);
                assert_eq!(request.destination, Destination::Host("demo.dark".into()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_truncation_of_a_valid_request_is_incomplete() {
        for full in [
            encode(1, 443, [192, 0, 2, 1], b"bob", None),
            encode(1, 443, [0, 0, 0, 1], b"bob", Some(b"example.anon")),
            encode(1, 443, [0, 0, 0, 1], b"", Some(b"x")),
        ] {
            for cut in 0..full.len() {
                assert_eq!(parse(&full[..cut]), Ok(Parsed::Incomplete), "{cut}");
            }
            assert!(matches!(parse(&full), Ok(Parsed::Request { .. })));
        }
    }

    #[test]
    fn bind_and_unknown_commands_are_refused_once_complete() {
        let bind = encode(2, 21, [192, 0, 2, 1], b"", None);
        assert_eq!(
            parse(&bind[..bind.len() - 1]),
            Ok(Parsed::Incomplete),
            "not before the request is whole"
        );
        assert_eq!(parse(&bind), Err(Socks4Error::UnsupportedCommand(2)));
        for cd in [0, 3, 0xf1, 0xff] {
            let req = encode(cd, 80, [0, 0, 0, 1], b"", Some(b"example.com"));
            assert_eq!(parse(&req), Err(Socks4Error::UnsupportedCommand(cd)));
        }
    }

    #[test]
    fn socks4a_resolve_is_tor_s_extension() {
        // tor-resolve -4 localhost: CD 0xF0, port 0, 0.0.0.1, no user id, the name.
        let req = encode(CMD_RESOLVE, 0, [0, 0, 0, 1], b"", Some(b"localhost"));
        match parse(&req) {
            Ok(Parsed::Request { request, .. }) => {
                assert_eq!(request.command, CMD_RESOLVE);
                assert_eq!(request.destination, Destination::Host("localhost".into()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            resolved(Ipv4Addr::new(127, 0, 0, 1)),
            [0, 90, 0, 0, 127, 0, 0, 1]
        );
    }

    #[test]
    fn other_versions_are_refused_at_the_first_byte() {
        assert_eq!(parse(&[5]), Err(Socks4Error::Version(5)));
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(Socks4Error::Version(b'G')));
    }

    #[test]
    fn user_id_and_host_name_of_255_bytes_pass_256_are_refused() {
        let max = vec![b'a'; MAX_FIELD_LEN];
        let req = encode(1, 80, [0, 0, 0, 1], &max, Some(&max));
        assert_eq!(req.len(), MAX_REQUEST_LEN);
        assert!(matches!(parse(&req), Ok(Parsed::Request { len, .. }) if len == MAX_REQUEST_LEN));

        let long = vec![b'a'; MAX_FIELD_LEN + 1];
        let req = encode(1, 80, [1, 2, 3, 4], &long, None);
        assert_eq!(parse(&req), Err(Socks4Error::UserIdTooLong));
        // Refused as soon as the 256th byte arrives without a NUL (missing NUL).
        assert_eq!(
            parse(&req[..HEADER_LEN + MAX_FIELD_LEN]),
            Ok(Parsed::Incomplete)
        );
        assert_eq!(
            parse(&req[..=HEADER_LEN + MAX_FIELD_LEN]),
            Err(Socks4Error::UserIdTooLong)
        );

        let req = encode(1, 80, [0, 0, 0, 1], b"", Some(&long));
        assert_eq!(parse(&req), Err(Socks4Error::HostNameTooLong));
        let no_nul = vec![b'a'; 4096];
        let mut req = encode(1, 80, [0, 0, 0, 1], b"", None);
        req.extend_from_slice(&no_nul);
        assert_eq!(parse(&req), Err(Socks4Error::HostNameTooLong));
    }

    #[test]
    fn empty_or_binary_host_names_are_refused() {
        let req = encode(1, 80, [0, 0, 0, 1], b"u", Some(b""));
        assert_eq!(parse(&req), Err(Socks4Error::EmptyHostName));
        let req = encode(1, 80, [0, 0, 0, 1], b"u", Some(&[0xff, 0xfe]));
        assert_eq!(parse(&req), Err(Socks4Error::HostNameNotText));
    }

    #[test]
    fn address_zero_is_plain_socks4_and_any_user_id_byte_but_nul_is_kept() {
        let user: Vec<u8> = (1..=255).collect();
        let req = encode(1, 80, [0, 0, 0, 0], &user, None);
        match parse(&req) {
            Ok(Parsed::Request { request, .. }) => {
                assert_eq!(request.destination, Destination::Ip(Ipv4Addr::UNSPECIFIED));
                assert_eq!(request.user_id, user);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic stand-in for the fuzzer: xorshift bytes after a valid
        // header, at every length up to past the longest request.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..2000 {
            let len = round % (MAX_REQUEST_LEN + 40);
            let mut buf = vec![VERSION];
            while buf.len() < len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.push(state.to_le_bytes()[0] % 8);
            }
            if let Ok(Parsed::Request { len, .. }) = parse(&buf) {
                assert!(len <= buf.len() && len <= MAX_REQUEST_LEN);
            }
        }
    }

    #[test]
    fn replies_are_eight_bytes_with_zero_port_and_address() {
        assert_eq!(reply(true), [0, 90, 0, 0, 0, 0, 0, 0]);
        assert_eq!(reply(false), [0, 91, 0, 0, 0, 0, 0, 0]);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
