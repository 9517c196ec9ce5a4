//! What a forward may land on, decided by the operator and checked on the
//! resolved address at every connect (DNS may change between checks).
//!
//! [`crate::target`] maps the name a client typed to a registered node or a
//! cluster's API server; this module holds the rules no project admin can
//! widen:
//! - no forward lands on the gateway's own listeners (SSH, metrics);
//! - no forward lands on another registered node's sshd address, even when
//!   two nodes share a host (port-mapped VMs, containers);
//! - `kube_api` and `dashboard`, which a project admin sets, must be a host
//!   of the cluster's own nodes, or inside the operator's
//!   `forwarding.api_allow`; never loopback, unspecified, link-local,
//!   multicast or broadcast unless the operator registered a node there;
//! - `NODE.CLUSTER:PORT` reaches only `forwarding.node_ports` of the node's
//!   host when the operator lists them (the registered sshd port always).

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use ipnet::IpNet;

use crate::policy::Action;

/// The operator's rules, and the facts of this gateway they apply to.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The gateway's own listening ports (SSH, metrics).
    pub own_ports: Vec<u16>,
    /// Ranges `kube_api` and `dashboard` may point into, besides the
    /// cluster's own node hosts.
    pub api_allow: Vec<IpNet>,
    /// Ports of a node's host that forwards may reach; empty: any.
    pub node_ports: Vec<RangeInclusive<u16>>,
}

/// What one forward is allowed to land on, with the facts resolved for it.
#[derive(Debug, Clone)]
pub struct Destination<'a> {
    pub rules: &'a Rules,
    /// What the forward serves.
    pub action: Action,
    /// The node it goes to, if it is a node forward (or an API on a node).
    pub node: Option<&'a str>,
    /// That node's registered sshd port (always reachable on its host).
    pub sshd_port: Option<u16>,
    /// Every registered node's sshd address, resolved, with its name.
    pub registered: &'a [(SocketAddr, String)],
    /// The resolved addresses of the cluster's own node hosts.
    pub cluster_hosts: &'a [IpAddr],
}

/// Addresses no value set by a project admin may reach: loopback,
/// unspecified, link-local (169.254.0.0/16, fe80::/10, where cloud metadata
/// services live), multicast, broadcast, and IPv6 unique-local metadata
/// addresses are covered by the allowlist rule (they must be listed).
pub fn is_special(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
        }
    }
}

/// Cloud metadata and platform endpoints that no forward reaches, even
/// inside an allowlisted range: they hand out the machine's credentials.
/// (169.254.0.0/16 and fe80::/10 are refused as link-local anyway.)
pub const METADATA: &[IpAddr] = &[
    // AWS over IPv6 (Nitro).
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    // Alibaba Cloud.
    IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 100, 200)),
    // Azure's wire server.
    IpAddr::V4(std::net::Ipv4Addr::new(168, 63, 129, 16)),
];

/// Whether two addresses may be the same machine: equal, or both this
/// gateway's own (loopback or local interface addresses). Two addresses of
/// one remote multi-homed host cannot be told apart from here; for those
/// the operator's `forwarding.node_ports` is the rule to use.
pub fn same_host(a: IpAddr, b: IpAddr) -> bool {
    let (a, b) = (a.to_canonical(), b.to_canonical());
    a == b || (is_local(a) && is_local(b))
}

/// True when `ip` is an address of this host: loopback, or one the kernel
/// lets us bind to (an interface address).
pub fn is_local(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

impl Destination<'_> {
    /// Whether the forward may connect to `addr`; the error says why not
    /// (for the audit log and the client).
    pub fn check(&self, addr: SocketAddr) -> Result<(), String> {
        let ip = addr.ip().to_canonical();
        let addr = SocketAddr::new(ip, addr.port());
        if self.rules.own_ports.contains(&addr.port()) && is_local(ip) {
            return Err(format!("{addr} is the gateway's own listener"));
        }
        if let Some((_, other)) = self.registered.iter().find(|(a, name)| {
            a.port() == addr.port() && same_host(a.ip(), ip) && Some(name.as_str()) != self.node
        }) {
            return Err(format!("{addr} is another registered node ({other})"));
        }
        if METADATA.contains(&ip) {
            return Err(format!("{addr} is a cloud metadata endpoint"));
        }
        let on_cluster_host = self.cluster_hosts.contains(&ip);
        let sshd = self.sshd_port == Some(addr.port());
        let listed = self.rules.node_ports.is_empty()
            || self
                .rules
                .node_ports
                .iter()
                .any(|r| r.contains(&addr.port()));
        match self.action {
            Action::UseKubernetes | Action::AccessDashboard => {
                let allowlisted =
                    !is_special(ip) && self.rules.api_allow.iter().any(|n| n.contains(&ip));
                if !on_cluster_host && !allowlisted {
                    return Err(format!(
                        "{addr} is neither a host of the cluster's nodes nor inside forwarding.api_allow"
                    ));
                }
                // On a node's host, a customer-set address is held to the
                // ports the operator opened there, like a node forward.
                if !allowlisted && !listed {
                    return Err(format!(
                        "port {} of a node is not in forwarding.node_ports",
                        addr.port()
                    ));
                }
            }
            _ => {
                if !sshd && !listed {
                    return Err(format!(
                        "port {} of a node is not in forwarding.node_ports",
                        addr.port()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What the rules need to know about the world, read afresh for each
/// check: every registered node's sshd address on the port in question
/// (resolved), and the addresses of the cluster's own node hosts.
pub struct Facts {
    pub registered: Vec<(SocketAddr, String)>,
    pub cluster_hosts: Vec<IpAddr>,
}

impl Facts {
    /// Reads the registered nodes from `store` and resolves the hosts
    /// involved (each within 5 s; a host that does not resolve contributes
    /// no address). `port` is the port about to be reached.
    pub async fn gather(
        store: &crate::store::Store,
        port: u16,
        cluster_hosts: &[String],
    ) -> crate::store::Result<Facts> {
        let mut registered = Vec::new();
        for n in store.nodes().await? {
            // Only nodes on the port being reached can collide with it.
            if n.port != i64::from(port) {
                continue;
            }
            for ip in crate::net::resolve_host(&n.host).await {
                registered.push((SocketAddr::new(ip, port), n.name.clone()));
            }
        }
        let mut hosts = Vec::new();
        for h in cluster_hosts {
            hosts.extend(crate::net::resolve_host(h).await);
        }
        Ok(Facts {
            registered,
            cluster_hosts: hosts,
        })
    }

    pub fn destination<'a>(
        &'a self,
        rules: &'a Rules,
        action: Action,
        node: Option<&'a str>,
        sshd_port: Option<u16>,
    ) -> Destination<'a> {
        Destination {
            rules,
            action,
            node,
            sshd_port,
            registered: &self.registered,
            cluster_hosts: &self.cluster_hosts,
        }
    }
}

/// Parses `forwarding.node_ports` entries: `"8888"` or `"8000-8999"`.
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("invalid port {p:?} in {s:?}: expected 1-65535")),
        }
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!(
                    "invalid port range {s:?}: the first port is larger"
                ));
            }
            Ok(a..=b)
        }
        None => port(s).map(|p| p..=p),
    }
}

/// Parses `forwarding.api_allow` entries: a CIDR range or a single address.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("invalid range {s:?}: expected a CIDR like 10.20.0.0/16 or an address")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rules() -> Rules {
        Rules {
            own_ports: vec![2222, 9102],
            api_allow: vec![parse_net("10.20.0.0/16").unwrap()],
            node_ports: vec![],
        }
    }

    fn dest<'a>(
        rules: &'a Rules,
        action: Action,
        node: Option<&'a str>,
        registered: &'a [(SocketAddr, String)],
        hosts: &'a [IpAddr],
    ) -> Destination<'a> {
        Destination {
            rules,
            action,
            node,
            sshd_port: Some(22),
            registered,
            cluster_hosts: hosts,
        }
    }

    #[test]
    fn never_the_gateways_own_listeners() {
        let r = rules();
        let hosts = ["127.0.0.1".parse().unwrap()];
        let d = dest(&r, Action::SshToNodes, Some("n1"), &[], &hosts);
        assert!(d.check(sa("127.0.0.1:2222")).is_err());
        assert!(
            d.check(sa("127.0.0.5:9102")).is_err(),
            "any loopback address"
        );
        assert!(
            d.check(sa("[::ffff:127.0.0.1]:2222")).is_err(),
            "mapped too"
        );
        assert!(d.check(sa("127.0.0.1:8888")).is_ok());
    }

    #[test]
    fn never_another_registered_node() {
        let r = rules();
        let reg = vec![
            (sa("10.0.0.1:2201"), "mine".to_string()),
            (sa("10.0.0.1:2202"), "theirs".to_string()),
        ];
        let d = dest(&r, Action::SshToNodes, Some("mine"), &reg, &[]);
        assert!(d.check(sa("10.0.0.1:2201")).is_ok());
        let e = d.check(sa("10.0.0.1:2202")).unwrap_err();
        assert!(e.contains("theirs"), "{e}");
    }

    #[test]
    fn api_values_stay_on_the_cluster_or_the_allowlist() {
        let r = rules();
        let hosts = ["10.0.0.1".parse().unwrap()];
        let d = dest(&r, Action::UseKubernetes, None, &[], &hosts);
        assert!(d.check(sa("10.0.0.1:6443")).is_ok(), "a node host");
        assert!(d.check(sa("10.20.3.4:443")).is_ok(), "allowlisted");
        for bad in [
            "10.0.0.2:6443",
            "127.0.0.1:6443",
            "169.254.169.254:80",
            "[fe80::1]:80",
            "[fd00:ec2::254]:80",
            "0.0.0.0:80",
            "224.0.0.1:80",
            "[::1]:6443",
        ] {
            assert!(d.check(sa(bad)).is_err(), "{bad}");
        }
        // An operator who allowlists loopback still does not open it.
        let wide = Rules {
            api_allow: vec![parse_net("0.0.0.0/0").unwrap()],
            ..rules()
        };
        let d = dest(&wide, Action::AccessDashboard, None, &[], &hosts);
        assert!(d.check(sa("127.0.0.1:8443")).is_err());
        assert!(d.check(sa("169.254.169.254:80")).is_err());
        assert!(d.check(sa("8.8.8.8:443")).is_ok());
    }

    #[test]
    fn a_neighbour_on_another_local_address_is_still_a_neighbour() {
        let r = rules();
        let reg = vec![(sa("127.0.0.2:2202"), "theirs".to_string())];
        let d = dest(&r, Action::SshToNodes, Some("mine"), &reg, &[]);
        assert!(d.check(sa("127.0.0.1:2202")).is_err());
        assert!(d.check(sa("127.0.0.1:2203")).is_ok());
    }

    #[test]
    fn metadata_endpoints_stay_closed_even_when_allowlisted() {
        let wide = Rules {
            api_allow: vec![
                parse_net("fd00::/8").unwrap(),
                parse_net("100.64.0.0/10").unwrap(),
                parse_net("168.63.0.0/16").unwrap(),
            ],
            ..rules()
        };
        let d = dest(&wide, Action::UseKubernetes, None, &[], &[]);
        for bad in [
            "[fd00:ec2::254]:80",
            "100.100.100.200:80",
            "168.63.129.16:80",
        ] {
            assert!(d.check(sa(bad)).is_err(), "{bad}");
        }
        assert!(d.check(sa("100.64.0.1:443")).is_ok());
    }

    #[test]
    fn an_api_on_a_node_host_keeps_to_node_ports() {
        let r = Rules {
            node_ports: vec![parse_port_range("6443").unwrap()],
            ..rules()
        };
        let hosts = ["10.0.0.1".parse().unwrap()];
        let d = dest(&r, Action::UseKubernetes, None, &[], &hosts);
        assert!(d.check(sa("10.0.0.1:6443")).is_ok());
        assert!(d.check(sa("10.0.0.1:5432")).is_err());
        assert!(
            d.check(sa("10.20.0.5:5432")).is_ok(),
            "allowlisted: the operator's word"
        );
    }

    #[test]
    fn node_ports_restrict_other_ports_but_never_sshd() {
        let r = Rules {
            node_ports: vec![
                parse_port_range("8888").unwrap(),
                parse_port_range("6000-6010").unwrap(),
            ],
            ..rules()
        };
        let d = dest(&r, Action::SshToNodes, Some("n1"), &[], &[]);
        assert!(d.check(sa("10.0.0.1:22")).is_ok());
        assert!(d.check(sa("10.0.0.1:8888")).is_ok());
        assert!(d.check(sa("10.0.0.1:6005")).is_ok());
        assert!(d.check(sa("10.0.0.1:5432")).is_err());
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_port_range("80").unwrap(), 80..=80);
        assert!(parse_port_range("0").is_err());
        assert!(parse_port_range("9-1").is_err());
        assert!(parse_port_range("x").is_err());
        assert!(parse_net("10.0.0.0/8").is_ok());
        assert!(parse_net("10.0.0.1").is_ok());
        assert!(parse_net("nope").is_err());
    }
}
