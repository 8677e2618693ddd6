//! TCP listeners on this machine, from `/proc/net/tcp` and `/proc/net/tcp6` (Linux).
//!
//! The tray offers "Publish localhost:PORT" for every server a person could reach on
//! loopback. The files are small tables of hex fields (`proc(5)`): a 30-line parser is
//! lighter than a `/proc` crate.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `st` of a listening socket in `/proc/net/tcp*` (`TCP_LISTEN`).
const TCP_LISTEN: &str = "0A";

/// The listening sockets of one `/proc/net/tcp` (IPv4) or `/proc/net/tcp6` table: their
/// local addresses. Lines that do not parse are skipped (the header, a future column
/// layout).
pub fn parse_listeners(table: &str) -> Vec<SocketAddr> {
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _slot = fields.next()?;
            let local = fields.next()?;
            let _remote = fields.next()?;
            let state = fields.next()?;
            if state != TCP_LISTEN {
                return None;
            }
            parse_addr(local)
        })
        .collect()
}

/// `0100007F:1F90` → 127.0.0.1:8080. The address is the kernel's `__be32` words printed
/// as host-order integers, so each 8-digit word goes back through native byte order; the
/// port is a plain number.
fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = field.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip_hex.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip_hex.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Where each listener is reached from this machine, one address per port, by port: a
/// loopback listener at its own address, one on every interface (`0.0.0.0`, `::`) at
/// `127.0.0.1` or `[::1]`; listeners bound to other addresses only are left out (they are
/// not on loopback). IPv4 wins when a port listens on both.
pub fn loopback_targets(listeners: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut by_port: BTreeMap<u16, SocketAddr> = BTreeMap::new();
    for l in listeners {
        let ip = match l.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let target = match ip {
            IpAddr::V4(a) if a.is_loopback() => SocketAddr::new(ip, l.port()),
            IpAddr::V4(a) if a.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), l.port())
            }
            IpAddr::V6(a) if a.is_loopback() || a.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), l.port())
            }
            _ => continue,
        };
        let better = |old: &SocketAddr| {
            target.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) || (old.is_ipv6() && target.is_ipv4())
        };
        match by_port.get(&l.port()) {
            Some(old) if !better(old) => {}
            _ => {
                by_port.insert(l.port(), target);
            }
        }
    }
    by_port.into_values().collect()
}

/// The loopback-reachable TCP listeners of this machine ([`loopback_targets`] of both
/// tables). Empty where `/proc/net` is missing (not Linux).
pub fn read_loopback_targets() -> Vec<SocketAddr> {
    let mut listeners = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            listeners.extend(parse_listeners(&text));
        }
    }
    loopback_targets(&listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    // In the kernel's format on a little-endian machine (x86-64): 127.0.0.1 is printed
    // 0100007F, 10.2.0.15 is 0F00020A; ports are plain hex (1F90 = 8080).
    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41210 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17231 1 0000000000000000 100 0 0 10 0
   2: 3500007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 15020 1 0000000000000000 100 0 0 10 0
   3: 0100007F:1F90 0100007F:D3C2 01 00000000:00000000 00:00000000 00000000  1000        0 41999 1 0000000000000000 20 4 30 10 -1
   4: 0F00020A:1389 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41888 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5123 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17233 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:2328 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5124 1 0000000000000000 100 0 0 10 0
   3: 00000000000000000000000001000000:1F92 00000000000000000000000001000000:D3C2 01 00000000:00000000 00:00000000 00000000  1000        0 5125 1 0000000000000000 100 0 0 10 0
";

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn proc_net_tcp_lists_only_listening_sockets_with_their_addresses() {
        assert_eq!(
            parse_listeners(TCP),
            addrs(&[
                "127.0.0.1:8080",
                "0.0.0.0:22",
                "127.0.0.53:53",
                "10.2.0.15:5001"
            ])
        );
        assert_eq!(
            parse_listeners(TCP6),
            addrs(&["[::1]:8081", "[::]:22", "[::ffff:127.0.0.1]:9000"])
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "garbage\n 0: ZZ:1F90 00000000:0000 0A\n 1: 0100007F 00000000:0000 0A\n\
                    2: 0100007F:1F90 00000000:0000\n 3: 01007F:1F90 00000000:0000 0A\n";
        assert!(parse_listeners(text).is_empty());
        assert!(parse_listeners("").is_empty());
    }

    #[test]
    fn targets_are_reachable_on_loopback_one_per_port_ipv4_first() {
        let listeners = addrs(&[
            "[::1]:8081",
            "127.0.0.1:8080",
            "[::]:22",
            "0.0.0.0:22",
            "127.0.0.53:53",
            "10.2.0.15:5001",
            "[::ffff:127.0.0.1]:9000",
            "[fe80::1]:7000",
        ]);
        assert_eq!(
            loopback_targets(&listeners),
            addrs(&[
                "127.0.0.1:22",
                "127.0.0.53:53",
                "127.0.0.1:8080",
                "[::1]:8081",
                "127.0.0.1:9000"
            ])
        );
    }

    #[test]
    fn this_machine_lists_a_listener_it_just_opened() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if std::path::Path::new("/proc/net/tcp").exists() {
            assert!(
                read_loopback_targets().contains(&SocketAddr::from(([127, 0, 0, 1], port))),
                "port {port} missing"
            );
        }
    }
}
