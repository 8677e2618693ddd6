//! TCP listeners on this machine, from `/proc/net/tcp` and `/proc/net/tcp6` (Linux).
//!
//! The tray offers "Publish localhost:PORT" for every server a person could reach on
//! loopback. The files are small tables of hex fields (`proc(5)`): a 30-line parser is
//! lighter than a `/proc` crate.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `st` of a listening socket in `/proc/net/tcp*` (`TCP_LISTEN`).
const TCP_LISTEN: &str = "0A";

/// One listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// Its local address.
    pub addr: SocketAddr,
    /// Owner's user id.
    pub uid: u32,
    /// Socket inode: the kernel hands them out in increasing order, so a larger one is
    /// (almost always) a newer socket.
    pub inode: u64,
}

/// The listening sockets of one `/proc/net/tcp` (IPv4) or `/proc/net/tcp6` table. Lines
/// that do not parse are skipped (the header, a future column layout).
pub fn parse_listeners(table: &str) -> Vec<Listener> {
    table
        .lines()
        .filter_map(|line| {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&TCP_LISTEN) {
                return None;
            }
            Some(Listener {
                addr: parse_addr(fields.get(1)?)?,
                uid: fields.get(7)?.parse().ok()?,
                inode: fields.get(9)?.parse().ok()?,
            })
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

/// Where the listeners of user `uid` (every user's with `None`) are reached from this
/// machine, one address per port, newest first: a loopback listener at its own address,
/// one on every interface (`0.0.0.0`, `::`) at `127.0.0.1` or `[::1]`; listeners bound to
/// other addresses only are left out (they are not on loopback). IPv4 wins when a port
/// listens on both.
pub fn loopback_targets(listeners: &[Listener], uid: Option<u32>) -> Vec<SocketAddr> {
    // port → (address, newest inode)
    let mut by_port: BTreeMap<u16, (SocketAddr, u64)> = BTreeMap::new();
    for l in listeners.iter().filter(|l| uid.is_none_or(|u| u == l.uid)) {
        let port = l.addr.port();
        let ip = match l.addr.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let target = match ip {
            IpAddr::V4(a) if a.is_loopback() => SocketAddr::new(ip, port),
            IpAddr::V4(a) if a.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)
            }
            IpAddr::V6(a) if a.is_loopback() || a.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)
            }
            _ => continue,
        };
        let entry = by_port.entry(port).or_insert((target, l.inode));
        entry.1 = entry.1.max(l.inode);
        let better = target.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)
            || (entry.0.is_ipv6() && target.is_ipv4());
        if better {
            entry.0 = target;
        }
    }
    let mut targets: Vec<(SocketAddr, u64)> = by_port.into_values().collect();
    targets.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.port().cmp(&b.0.port())));
    targets.into_iter().map(|(addr, _)| addr).collect()
}

/// The user id this process runs as (the owner of `/proc/self`).
fn own_uid() -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").ok().map(|m| m.uid())
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// This user's loopback-reachable TCP listeners, newest first ([`loopback_targets`] of
/// both tables). Empty where `/proc/net` is missing (not Linux).
pub fn read_loopback_targets() -> Vec<SocketAddr> {
    let mut listeners = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            listeners.extend(parse_listeners(&text));
        }
    }
    loopback_targets(&listeners, own_uid())
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

    fn listener(addr: &str, uid: u32, inode: u64) -> Listener {
        Listener {
            addr: addr.parse().unwrap(),
            uid,
            inode,
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn proc_net_tcp_lists_only_listening_sockets_with_owner_and_inode() {
        assert_eq!(
            parse_listeners(TCP),
            [
                listener("127.0.0.1:8080", 1000, 41210),
                listener("0.0.0.0:22", 0, 17231),
                listener("127.0.0.53:53", 101, 15020),
                listener("10.2.0.15:5001", 1000, 41888),
            ]
        );
        assert_eq!(
            parse_listeners(TCP6),
            [
                listener("[::1]:8081", 1000, 5123),
                listener("[::]:22", 0, 17233),
                listener("[::ffff:127.0.0.1]:9000", 1000, 5124),
            ]
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "garbage\n 0: ZZ:1F90 00000000:0000 0A 0:0 0:0 0 1000 0 1\n\
                    1: 0100007F 00000000:0000 0A 0:0 0:0 0 1000 0 1\n\
                    2: 0100007F:1F90 00000000:0000\n\
                    3: 01007F:1F90 00000000:0000 0A 0:0 0:0 0 1000 0 1\n\
                    4: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 x 0 1\n";
        assert!(parse_listeners(text).is_empty());
        assert!(parse_listeners("").is_empty());
    }

    #[test]
    fn targets_are_reachable_on_loopback_one_per_port_newest_first() {
        let listeners = [
            listener("[::1]:8081", 1000, 50),
            listener("127.0.0.1:8080", 1000, 40),
            listener("[::]:2222", 1000, 10),
            listener("0.0.0.0:2222", 1000, 11),
            listener("127.0.0.53:5353", 1000, 5),
            listener("10.2.0.15:5001", 1000, 60),
            listener("[::ffff:127.0.0.1]:9000", 1000, 70),
            listener("[fe80::1]:7000", 1000, 80),
            listener("127.0.0.1:3000", 0, 90),
        ];
        assert_eq!(
            loopback_targets(&listeners, Some(1000)),
            addrs(&[
                "127.0.0.1:9000",
                "[::1]:8081",
                "127.0.0.1:8080",
                "127.0.0.1:2222",
                "127.0.0.53:5353",
            ])
        );
        // Another user's server is offered only when every user's are asked for.
        assert_eq!(
            loopback_targets(&listeners, None)[0],
            addrs(&["127.0.0.1:3000"])[0]
        );
    }

    #[test]
    fn this_machine_lists_a_listener_it_just_opened() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if std::path::Path::new("/proc/net/tcp").exists() {
            let targets = read_loopback_targets();
            let mine = SocketAddr::from(([127, 0, 0, 1], port));
            assert!(targets.contains(&mine), "port {port} missing: {targets:?}");
        }
    }
}
