//! Exit policy: which destinations this relay connects to as an exit. Spec:
//! `docs/protocol.md` §8.3.
//!
//! Rules are checked in order and the first match decides. The configured rules come first;
//! then, always, the default rejections of private, loopback, link-local, multicast and
//! unspecified ranges (so a destination inside them is refused unless a configured `accept`
//! names it explicitly); then `accept *:*`. The policy is applied to the address the exit
//! actually connects to, after it resolved a host name, so a name cannot smuggle a private
//! address past it.

use std::net::IpAddr;

use anonnet_wire::PortRange;
use ipnet::IpNet;

/// Accept or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Connect.
    Accept,
    /// Refuse with END reason EXITPOLICY.
    Reject,
}

/// One rule: `action` for destinations in `net` on ports `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRule {
    /// What to do on a match.
    pub action: Action,
    /// The address range.
    pub net: IpNet,
    /// The port range.
    pub ports: PortRange,
}

/// Ranges rejected by default, after the configured rules: RFC 1918 and RFC 6598 private,
/// loopback, link-local, multicast, unspecified, IPv6 unique-local.
pub const DEFAULT_REJECT: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// An ordered list of rules ending in the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitPolicy {
    rules: Vec<ExitRule>,
}

impl Default for ExitPolicy {
    fn default() -> Self {
        ExitPolicy::with_rules(Vec::new())
    }
}

impl ExitPolicy {
    /// The policy with `configured` rules first, then the defaults.
    pub fn with_rules(configured: Vec<ExitRule>) -> Self {
        let mut rules = configured;
        for net in DEFAULT_REJECT {
            if let Ok(net) = net.parse() {
                rules.push(ExitRule {
                    action: Action::Reject,
                    net,
                    ports: PortRange::ALL,
                });
            }
        }
        for net in ["0.0.0.0/0", "::/0"] {
            if let Ok(net) = net.parse() {
                rules.push(ExitRule {
                    action: Action::Accept,
                    net,
                    ports: PortRange::ALL,
                });
            }
        }
        ExitPolicy { rules }
    }

    /// True when the policy lets the exit connect to `ip:port`. IPv4-mapped IPv6 addresses
    /// are judged as the IPv4 address they carry.
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.rules
            .iter()
            .find(|r| r.net.contains(&ip) && r.ports.contains(port))
            .is_some_and(|r| r.action == Action::Accept)
    }

    /// True when the policy lets the exit connect to `ip` on at least one port: what a
    /// `RESOLVE` answer or a reverse lookup is judged by (§8.3). Rules are first-match and
    /// piecewise constant in the port, so checking port 1 and the first port of every
    /// rule's range and the port after it covers every case.
    pub fn allows_address(&self, ip: IpAddr) -> bool {
        let mut ports: Vec<u16> = vec![1];
        for r in &self.rules {
            ports.push(r.ports.lo.max(1));
            ports.push(r.ports.hi.saturating_add(1));
        }
        ports.into_iter().any(|p| self.allows(ip, p))
    }

    /// The port summary for the relay descriptor: ports for which some public address is
    /// accepted. With the default tail that is every port unless a configured rule rejects
    /// `0.0.0.0/0` or `::/0` for some ports first.
    pub fn port_summary(&self) -> Vec<PortRange> {
        let mut allowed = vec![false; 65536];
        for port in 1..=u16::MAX {
            let probe_v4 = IpAddr::from([8, 8, 8, 8]);
            let probe_v6: IpAddr = IpAddr::from([0x2001, 0x4860, 0, 0, 0, 0, 0, 0x8888]);
            let ok = self.allows(probe_v4, port) || self.allows(probe_v6, port);
            if let Some(slot) = allowed.get_mut(usize::from(port)) {
                *slot = ok;
            }
        }
        let mut out: Vec<PortRange> = Vec::new();
        for port in 1..=u16::MAX {
            if !allowed.get(usize::from(port)).copied().unwrap_or(false) {
                continue;
            }
            match out.last_mut() {
                Some(r) if r.hi.checked_add(1) == Some(port) => r.hi = port,
                _ => out.push(PortRange { lo: port, hi: port }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_rejects_private_ranges_and_accepts_public() {
        let p = ExitPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.20.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!p.allows(ip.parse().unwrap(), 80), "{ip}");
        }
        assert!(p.allows("93.184.216.34".parse().unwrap(), 443));
        assert!(p.allows("2606:2800:220:1::1".parse().unwrap(), 80));
        assert_eq!(p.port_summary(), vec![PortRange::ALL]);
    }

    #[test]
    fn configured_accept_opens_loopback_and_rejects_close_ports() {
        let p = ExitPolicy::with_rules(vec![
            ExitRule {
                action: Action::Accept,
                net: "127.0.0.0/8".parse().unwrap(),
                ports: PortRange::ALL,
            },
            ExitRule {
                action: Action::Reject,
                net: "0.0.0.0/0".parse().unwrap(),
                ports: PortRange { lo: 25, hi: 25 },
            },
            ExitRule {
                action: Action::Reject,
                net: "::/0".parse().unwrap(),
                ports: PortRange { lo: 25, hi: 25 },
            },
        ]);
        assert!(p.allows("127.0.0.1".parse().unwrap(), 8080));
        assert!(!p.allows("10.0.0.1".parse().unwrap(), 8080));
        assert!(!p.allows("1.1.1.1".parse().unwrap(), 25));
        assert_eq!(
            p.port_summary(),
            vec![PortRange { lo: 1, hi: 24 }, PortRange { lo: 26, hi: 65535 }]
        );
    }

    #[test]
    fn an_address_is_allowed_when_some_port_is() {
        let accept_443_only = |net: &str| ExitRule {
            action: Action::Accept,
            net: net.parse().unwrap(),
            ports: PortRange { lo: 443, hi: 443 },
        };
        let p = ExitPolicy::with_rules(vec![
            accept_443_only("10.1.0.0/16"),
            ExitRule {
                action: Action::Reject,
                net: "0.0.0.0/0".parse().unwrap(),
                ports: PortRange::ALL,
            },
        ]);
        // Only port 443 of 10.1/16 is open: the address counts as allowed.
        assert!(p.allows_address("10.1.2.3".parse().unwrap()));
        assert!(!p.allows_address("10.2.0.1".parse().unwrap()));
        assert!(!p.allows_address("192.0.2.1".parse().unwrap()));
        // The default policy: public yes, private and loopback no.
        let d = ExitPolicy::default();
        assert!(d.allows_address("192.0.2.1".parse().unwrap()));
        assert!(d.allows_address("2001:db8::1".parse().unwrap()));
        for private in ["10.1.2.3", "127.0.0.1", "192.168.1.1", "::1"] {
            assert!(!d.allows_address(private.parse().unwrap()), "{private}");
        }
    }
}
