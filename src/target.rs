//! Forwarding targets (interface.md §5): what a `direct-tcpip` channel may
//! reach, parsed from the host name as the client typed it and resolved
//! against the clusters of the caller's projects. Anything that does not
//! resolve is refused: the gateway is not an open proxy.

use crate::commands::kube_api_of;
use crate::model::{HostPort, Role};
use crate::policy::{Action, Decision, authorize};
use crate::store::{Cluster, Membership, Node};

/// A target as named by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `NODE.CLUSTER[.PROJECT]`; also tried as a registered address.
    Node {
        node: String,
        cluster: String,
        project: Option<String>,
        port: u16,
    },
    /// `kube.CLUSTER[.PROJECT]`
    Kube {
        cluster: String,
        project: Option<String>,
    },
    /// `dashboard.CLUSTER[.PROJECT]`
    Dashboard {
        cluster: String,
        project: Option<String>,
    },
    /// Anything else: only a node's registered `HOST:PORT` resolves.
    Address { host: String, port: u16 },
}

/// Where a permitted forward goes, and what it is, for the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub connect: HostPort,
    pub project: String,
    pub cluster: String,
    /// The node it reaches: a node forward's, or the node whose host an
    /// API or dashboard address points at (so releasing the node ends it).
    pub node: Option<String>,
    pub action: Action,
    /// The node's registered sshd port, for node forwards.
    pub sshd_port: Option<u16>,
    /// The cluster's nodes, `(name, host)`: where `kube_api` and
    /// `dashboard` may point without the operator's allowlist (see
    /// [`crate::reach`]).
    pub cluster_nodes: Vec<(String, String)>,
}

/// Why a forward was refused; the text goes to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn label_ok(l: &str) -> bool {
    crate::model::Name::parse("x", l).is_ok()
}

/// First labels that name a cluster's service, not a node
/// (`kube.CLUSTER`, `dashboard.CLUSTER`): no node may be called so.
pub const SERVICE_LABELS: [&str; 2] = ["kube", "dashboard"];

impl Target {
    pub fn parse(host: &str, port: u32) -> Result<Target, Refusal> {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Refusal(format!("invalid port {port}")))?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() || host.len() > 253 {
            return Err(Refusal("empty or over-long host name".into()));
        }
        let labels: Vec<&str> = host.split('.').collect();
        let named = (2..=3).contains(&labels.len()) && labels.iter().all(|l| label_ok(l));
        if named {
            let project = labels.get(2).map(|s| s.to_string());
            let cluster = labels[1].to_string();
            return Ok(match labels[0] {
                "kube" => Target::Kube { cluster, project },
                "dashboard" => Target::Dashboard { cluster, project },
                node => Target::Node {
                    node: node.to_string(),
                    cluster,
                    project,
                    port,
                },
            });
        }
        let bracketless = host.trim_start_matches('[').trim_end_matches(']');
        if bracketless.parse::<std::net::IpAddr>().is_ok() || crate::model::valid_hostname(&host) {
            return Ok(Target::Address {
                host: bracketless.to_string(),
                port,
            });
        }
        Err(Refusal(format!(
            "invalid host name {}",
            crate::model::quoted(&host)
        )))
    }

    /// Resolves against what the caller can see: their memberships, the
    /// clusters of those projects and their nodes. The role is checked with
    /// the policy table for the kind of access.
    pub fn resolve(
        &self,
        memberships: &[Membership],
        clusters: &[Cluster],
        nodes: &[Node],
    ) -> Result<Resolved, Refusal> {
        let resolved = match self {
            Target::Node {
                node,
                cluster,
                project,
                port,
            } => match find_node(node, cluster, project.as_deref(), nodes)? {
                Some(n) => Some(node_target(n, *port)),
                // A registered host name may look like NODE.CLUSTER.
                None => by_address(
                    &format!(
                        "{node}.{cluster}{}",
                        project
                            .as_ref()
                            .map(|p| format!(".{p}"))
                            .unwrap_or_default()
                    ),
                    *port,
                    nodes,
                ),
            },
            Target::Address { host, port } => by_address(host, *port, nodes),
            Target::Kube { cluster, project } => {
                let c = find_cluster(cluster, project.as_deref(), clusters)?;
                let cluster_nodes = nodes_of(c, nodes);
                let api = kube_api_of(c, &cluster_nodes).ok_or_else(|| {
                    Refusal(format!("cluster {}.{} has no kube_api", c.name, c.project))
                })?;
                Some(service(c, &cluster_nodes, &api, Action::UseKubernetes)?)
            }
            Target::Dashboard { cluster, project } => {
                let c = find_cluster(cluster, project.as_deref(), clusters)?;
                let dash = c.dashboard.as_deref().ok_or_else(|| {
                    Refusal(format!(
                        "cluster {}.{} has no dashboard configured",
                        c.name, c.project
                    ))
                })?;
                Some(service(
                    c,
                    &nodes_of(c, nodes),
                    dash,
                    Action::AccessDashboard,
                )?)
            }
        };
        let r = resolved.ok_or_else(|| {
            Refusal("not a node, API server or dashboard of your projects".into())
        })?;
        let role: Option<Role> = memberships
            .iter()
            .find(|m| m.project == r.project)
            .map(|m| m.role);
        match authorize(role, r.action) {
            Decision::Allow => Ok(r),
            _ => Err(Refusal(format!("not allowed in project {}", r.project))),
        }
    }
}

fn nodes_of(c: &Cluster, nodes: &[Node]) -> Vec<Node> {
    nodes
        .iter()
        .filter(|n| {
            n.cluster.as_deref() == Some(&c.name) && n.project.as_deref() == Some(&c.project)
        })
        .cloned()
        .collect()
}

/// A forward to a cluster's API server or dashboard at `addr`.
fn service(
    c: &Cluster,
    cluster_nodes: &[Node],
    addr: &str,
    action: Action,
) -> Result<Resolved, Refusal> {
    let connect = HostPort::parse(addr).map_err(|e| Refusal(e.0))?;
    Ok(Resolved {
        node: cluster_nodes
            .iter()
            .find(|n| n.host == connect.host)
            .map(|n| n.name.clone()),
        connect,
        project: c.project.clone(),
        cluster: c.name.clone(),
        action,
        sshd_port: None,
        cluster_nodes: cluster_nodes
            .iter()
            .map(|n| (n.name.clone(), n.host.clone()))
            .collect(),
    })
}

fn find_node<'a>(
    node: &str,
    cluster: &str,
    project: Option<&str>,
    nodes: &'a [Node],
) -> Result<Option<&'a Node>, Refusal> {
    let found: Vec<&Node> = nodes
        .iter()
        .filter(|n| {
            n.name == node
                && n.cluster.as_deref() == Some(cluster)
                && project.is_none_or(|p| n.project.as_deref() == Some(p))
        })
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(Refusal(format!(
            "{node}.{cluster} is ambiguous among your projects: name it NODE.CLUSTER.PROJECT"
        ))),
    }
}

fn find_cluster<'a>(
    cluster: &str,
    project: Option<&str>,
    clusters: &'a [Cluster],
) -> Result<&'a Cluster, Refusal> {
    let found: Vec<&Cluster> = clusters
        .iter()
        .filter(|c| c.name == cluster && project.is_none_or(|p| c.project == p))
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(Refusal(format!("no cluster {cluster} in your projects"))),
        _ => Err(Refusal(format!(
            "cluster {cluster} is ambiguous among your projects: add .PROJECT"
        ))),
    }
}

fn node_target(n: &Node, port: u16) -> Resolved {
    // Port 22 means "the node's sshd", wherever it was registered.
    let connect = if port == 22 {
        HostPort {
            host: n.host.clone(),
            port: n.port as u16,
        }
    } else {
        HostPort {
            host: n.host.clone(),
            port,
        }
    };
    Resolved {
        connect,
        project: n.project.clone().unwrap_or_default(),
        cluster: n.cluster.clone().unwrap_or_default(),
        node: Some(n.name.clone()),
        action: Action::SshToNodes,
        sshd_port: Some(n.port as u16),
        cluster_nodes: Vec::new(),
    }
}

fn by_address(host: &str, port: u16, nodes: &[Node]) -> Option<Resolved> {
    nodes
        .iter()
        .find(|n| n.host == host && n.port == i64::from(port) && n.cluster.is_some())
        .map(|n| node_target(n, n.port as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cluster: &str, project: &str, host: &str, port: i64) -> Node {
        Node {
            id: 0,
            name: name.into(),
            host: host.into(),
            port,
            gpu_type: None,
            gpus: 0,
            cluster: Some(cluster.into()),
            project: Some(project.into()),
            enrolled_at: None,
            last_asked: None,
        }
    }

    fn cluster(name: &str, project: &str, dashboard: Option<&str>) -> Cluster {
        Cluster {
            id: 0,
            project_id: 0,
            project: project.into(),
            name: name.into(),
            gpu_type: None,
            description: String::new(),
            kube_api: None,
            dashboard: dashboard.map(str::to_string),
            node_user: "ubuntu".into(),
            kube_ca: None,
            created_at: 0,
            credential_set_at: None,
        }
    }

    fn member(project: &str, role: Role) -> Membership {
        Membership {
            project_id: 0,
            project: project.into(),
            role,
        }
    }

    struct World {
        m: Vec<Membership>,
        c: Vec<Cluster>,
        n: Vec<Node>,
    }

    fn world() -> World {
        World {
            m: vec![member("p1", Role::Member), member("p2", Role::Admin)],
            c: vec![
                cluster("train", "p1", Some("10.0.0.9:443")),
                cluster("train", "p2", None),
                cluster("infer", "p2", None),
            ],
            n: vec![
                node("n1", "train", "p1", "10.0.0.1", 2201),
                node("n2", "train", "p2", "10.0.0.2", 22),
                node("n3", "infer", "p2", "10.0.0.3", 22),
            ],
        }
    }

    fn go(host: &str, port: u32) -> Result<Resolved, Refusal> {
        let w = world();
        Target::parse(host, port)?.resolve(&w.m, &w.c, &w.n)
    }

    #[test]
    fn node_by_name_goes_to_its_sshd_on_22() {
        let r = go("n1.train.p1", 22).unwrap();
        assert_eq!(r.connect.to_string(), "10.0.0.1:2201");
        assert_eq!(r.action, Action::SshToNodes);
        assert_eq!(
            go("n3.infer", 22).unwrap().connect.to_string(),
            "10.0.0.3:22"
        );
        assert_eq!(
            go("N3.Infer.", 22).unwrap().connect.to_string(),
            "10.0.0.3:22"
        );
    }

    #[test]
    fn other_ports_go_to_the_nodes_host() {
        assert_eq!(
            go("n1.train.p1", 8888).unwrap().connect.to_string(),
            "10.0.0.1:8888"
        );
    }

    #[test]
    fn registered_address_resolves_and_nothing_else_does() {
        assert_eq!(go("10.0.0.1", 2201).unwrap().node.as_deref(), Some("n1"));
        assert!(go("10.0.0.1", 22).is_err(), "only the registered port");
        assert!(go("10.0.0.99", 22).is_err());
        assert!(go("127.0.0.1", 22).is_err());
        assert!(go("127.0.0.2", 2222).is_err());
        assert!(go("localhost", 22).is_err());
        assert!(go("example.com", 443).is_err());
    }

    #[test]
    fn kube_and_dashboard() {
        assert_eq!(
            go("kube.infer", 443).unwrap().connect.to_string(),
            "10.0.0.3:6443"
        );
        assert_eq!(
            go("kube.train.p2", 6443).unwrap().action,
            Action::UseKubernetes
        );
        assert_eq!(
            go("dashboard.train.p1", 443).unwrap().connect.to_string(),
            "10.0.0.9:443"
        );
        assert!(go("dashboard.infer", 443).is_err(), "none configured");
    }

    #[test]
    fn ambiguity_asks_for_the_project() {
        let e = go("kube.train", 443).unwrap_err();
        assert!(e.0.contains("ambiguous"), "{e}");
    }

    #[test]
    fn other_projects_are_unreachable() {
        let w = world();
        let only_p1 = vec![member("p1", Role::Member)];
        // The store gives only the caller's clusters and nodes; if something
        // else slipped in, the role check still refuses it.
        let t = Target::parse("n3.infer.p2", 22).unwrap();
        assert!(t.resolve(&only_p1, &w.c, &w.n).is_err());
        let t = Target::parse("10.0.0.3", 22).unwrap();
        assert!(t.resolve(&only_p1, &w.c, &w.n).is_err());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Target::parse("", 22).is_err());
        assert!(Target::parse("a b", 22).is_err());
        assert!(Target::parse("n1.train", 0).is_err());
        assert!(Target::parse("n1.train", 70000).is_err());
        assert!(Target::parse("x\0y", 22).is_err());
    }
}
