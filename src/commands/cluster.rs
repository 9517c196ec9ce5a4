//! `cluster …`, `node list` and `kubeconfig`.

use base64::Engine;
use serde::Serialize;

use super::grammar::{ClusterCmd, CredentialCmd, KubeconfigArgs};
use super::{Ctx, Outcome_, Scope, confirm_or_refuse, done, text};
use crate::model::{HostPort, Login, Name, parse_count, parse_gpu_type, quoted};
use crate::operator::render_nodes;
use crate::output::{CmdError, Table, json, or_dash};
use crate::policy::Action;
use crate::store::{Cluster, ClusterConfigChange, Node, format_time};

/// The keys `cluster config` knows, in the order they are shown.
pub const CONFIG_KEYS: &[&str] = &[
    "description",
    "kube_api",
    "dashboard",
    "node_user",
    "kube_ca",
];

/// The Unix login on a cluster's nodes when `node_user` is not set.
pub const DEFAULT_NODE_USER: &str = "ubuntu";

/// A cluster's config with defaults applied, as shown and as used by forwarding.
#[derive(Debug, Serialize)]
pub struct EffectiveConfig {
    pub description: String,
    pub kube_api: Option<String>,
    /// True when `kube_api` is the default (the first node's host, port
    /// 6443) rather than set: forwards use it, the front door does not.
    pub kube_api_is_default: bool,
    pub dashboard: Option<String>,
    pub node_user: String,
    pub kube_ca: Option<String>,
    /// Whether the cluster's Kubernetes credential is set, and since when;
    /// never the credential itself.
    pub credential: CredentialState,
}

/// What may be said of a cluster's credential (`cluster credential set`).
#[derive(Debug, Serialize)]
pub struct CredentialState {
    pub set: bool,
    /// When it was set, as `format_time` writes it.
    pub since: Option<String>,
}

/// The Kubernetes API address: the configured one, else the first node's
/// host on 6443.
pub fn kube_api_of(cluster: &Cluster, nodes: &[Node]) -> Option<String> {
    cluster.kube_api.clone().or_else(|| {
        nodes.first().map(|n| {
            HostPort {
                host: n.host.clone(),
                port: 6443,
            }
            .to_string()
        })
    })
}

fn effective(cluster: &Cluster, nodes: &[Node]) -> EffectiveConfig {
    EffectiveConfig {
        description: cluster.description.clone(),
        kube_api: kube_api_of(cluster, nodes),
        kube_api_is_default: cluster.kube_api.is_none(),
        dashboard: cluster.dashboard.clone(),
        node_user: cluster.node_user.clone(),
        kube_ca: cluster.kube_ca.clone(),
        credential: CredentialState {
            set: cluster.credential_set_at.is_some(),
            since: cluster.credential_set_at.map(format_time),
        },
    }
}

/// Parses and validates one `KEY=VALUE`; an empty value clears an optional key.
pub fn parse_setting(s: &str) -> Result<ClusterConfigChange, CmdError> {
    let known = CONFIG_KEYS.join(", ");
    let (key, value) = s.split_once('=').ok_or_else(|| {
        CmdError::Usage(format!(
            "expected KEY=VALUE, got {}; known keys: {known}",
            quoted(s)
        ))
    })?;
    let optional_addr = |v: &str| -> Result<Option<String>, CmdError> {
        if v.is_empty() {
            Ok(None)
        } else {
            Ok(Some(HostPort::parse(v)?.to_string()))
        }
    };
    Ok(match key {
        "description" => {
            if value.chars().count() > 256
                || value
                    .chars()
                    .any(|c| c.is_control() || crate::model::is_format_char(c))
            {
                return Err(CmdError::Usage(
                    "invalid description: at most 256 characters, no control or invisible formatting characters".into(),
                ));
            }
            ClusterConfigChange::Description(value.to_string())
        }
        "kube_api" => ClusterConfigChange::KubeApi(optional_addr(value)?),
        "dashboard" => ClusterConfigChange::Dashboard(optional_addr(value)?),
        // The Unix login the project's members share on the cluster's nodes;
        // clearing it goes back to the default.
        "node_user" if value.is_empty() => {
            ClusterConfigChange::NodeUser(DEFAULT_NODE_USER.to_string())
        }
        "node_user" => ClusterConfigChange::NodeUser(
            Login::parse(value)
                .map_err(|_| {
                    CmdError::Usage(format!(
                        "invalid node_user {}: the Unix login on the cluster's nodes, 1-32 of a-z 0-9 _ -, starting with a letter or _ (`node_user=` goes back to {DEFAULT_NODE_USER})",
                        quoted(value)
                    ))
                })?
                .to_string(),
        ),
        "kube_ca" => {
            if value.is_empty() {
                ClusterConfigChange::KubeCa(None)
            } else {
                let pem = base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|p| p.contains("-----BEGIN CERTIFICATE-----") && p.len() <= 64 * 1024);
                if pem.is_none() {
                    return Err(CmdError::Usage(
                        "invalid kube_ca: expected the base64 of a PEM CA certificate (base64 -w0 ca.crt)".into(),
                    ));
                }
                ClusterConfigChange::KubeCa(Some(value.to_string()))
            }
        }
        other => {
            return Err(CmdError::Usage(format!(
                "unknown config key {}: known keys are {known}",
                quoted(other)
            )));
        }
    })
}

#[derive(Serialize)]
struct ClusterView<'a> {
    name: &'a str,
    project: &'a str,
    gpu_type: Option<&'a str>,
    node_count: usize,
    created: String,
    config: EffectiveConfig,
    nodes: &'a [Node],
}

fn view<'a>(c: &'a Cluster, nodes: &'a [Node]) -> ClusterView<'a> {
    ClusterView {
        name: &c.name,
        project: &c.project,
        gpu_type: c.gpu_type.as_deref(),
        node_count: nodes.len(),
        created: format_time(c.created_at),
        config: effective(c, nodes),
        nodes,
    }
}

fn render_config(cfg: &EffectiveConfig) -> String {
    let kube_ca = cfg
        .kube_ca
        .as_ref()
        .map(|c| format!("set ({} base64 characters)", c.len()));
    let rows = [
        ("description", or_dash(Some(&cfg.description))),
        (
            "kube_api",
            match (&cfg.kube_api, cfg.kube_api_is_default) {
                (Some(a), true) => format!("{a} (default; set it for kubectl through the gateway)"),
                (a, _) => or_dash(a.as_deref()),
            },
        ),
        ("dashboard", or_dash(cfg.dashboard.as_deref())),
        ("node_user", cfg.node_user.clone()),
        ("kube_ca", or_dash(kube_ca.as_deref())),
        (
            "credential",
            match &cfg.credential.since {
                Some(t) => format!("set since {t}"),
                None => "not set (cluster credential set CLUSTER, on stdin)".into(),
            },
        ),
    ];
    rows.iter().map(|(k, v)| format!("{k:<12} {v}\n")).collect()
}

pub(super) async fn run(
    ctx: &Ctx<'_>,
    scope: &Scope,
    cmd: &ClusterCmd,
    as_json: bool,
    confirmed: bool,
    what: &str,
) -> Outcome_ {
    let store = ctx.store;
    match cmd {
        ClusterCmd::List => {
            let pid = ctx.authorize(scope, Action::ViewClusters, what)?;
            let clusters = store.clusters(pid).await?;
            let mut views = Vec::new();
            for c in &clusters {
                views.push((c, store.nodes_of_cluster(c.id).await?));
            }
            if as_json {
                let list: Vec<ClusterView> = views.iter().map(|(c, n)| view(c, n)).collect();
                return text(json(&list));
            }
            let mut t = Table::new(&["NAME", "NODES", "GPU-TYPE", "KUBE-API", "DESCRIPTION"]);
            for (c, nodes) in &views {
                t.row(vec![
                    c.name.clone(),
                    nodes.len().to_string(),
                    or_dash(c.gpu_type.as_deref()),
                    or_dash(kube_api_of(c, nodes).as_deref()),
                    or_dash(Some(&c.description)),
                ]);
            }
            text(t.render())
        }
        ClusterCmd::Credential(c) => credential(ctx, scope, c, as_json, what).await,
        ClusterCmd::Show { cluster } => {
            let pid = ctx.authorize(scope, Action::ViewClusters, what)?;
            let c = store
                .cluster(pid, &Name::parse("cluster", cluster)?)
                .await?;
            let nodes = store.nodes_of_cluster(c.id).await?;
            if as_json {
                return text(json(&view(&c, &nodes)));
            }
            let mut out = format!(
                "cluster      {}.{}\ngpu_type     {}\ncreated      {}\n",
                c.name,
                c.project,
                or_dash(c.gpu_type.as_deref()),
                format_time(c.created_at)
            );
            out.push_str(&render_config(&effective(&c, &nodes)));
            out.push_str(&format!("nodes        {}\n", nodes.len()));
            for n in &nodes {
                out.push_str(&format!(
                    "  {}.{}.{}  {}\n",
                    n.name,
                    c.name,
                    c.project,
                    n.address()
                ));
            }
            text(out)
        }
        ClusterCmd::Create {
            cluster,
            nodes,
            gpu_type,
        } => {
            let pid = ctx.authorize(scope, Action::CreateCluster, what)?;
            let name = Name::parse("cluster", cluster)?;
            let count = parse_count(nodes, 1)?;
            let gpu_type = gpu_type.as_deref().map(parse_gpu_type).transpose()?;
            let c = store
                .cluster_create(pid, &name, count, gpu_type.as_deref())
                .await?;
            done(
                format!(
                    "created cluster {} with {count} node(s) in project {}",
                    c.name, scope.name
                ),
                as_json,
            )
        }
        ClusterCmd::Delete { cluster, yes } => {
            let pid = ctx.authorize(scope, Action::DeleteCluster, what)?;
            let name = Name::parse("cluster", cluster)?;
            let c = store.cluster(pid, &name).await?;
            let count = store.nodes_of_cluster(c.id).await?.len();
            let question = format!(
                "Delete cluster {} of project {}? Its {count} node(s) go back to the pool and open forwards end.",
                c.name, scope.name
            );
            if let Some(stop) = confirm_or_refuse(ctx, *yes || confirmed, question, what) {
                return stop;
            }
            let freed = store.cluster_delete(pid, &name).await?;
            ctx.sessions.nudge();
            done(
                format!(
                    "deleted cluster {name}; {} node(s) returned to the pool",
                    freed.len()
                ),
                as_json,
            )
        }
        ClusterCmd::Scale {
            cluster,
            nodes,
            yes,
        } => {
            let pid = ctx.authorize(scope, Action::ScaleCluster, what)?;
            let name = Name::parse("cluster", cluster)?;
            let count = parse_count(nodes, 0)?;
            // Shrinking releases the highest-named nodes (see the store);
            // when that ends open forwards, it is destructive: ask first.
            let c = store.cluster(pid, &name).await?;
            let mut leaving: Vec<String> = store
                .nodes_of_cluster(c.id)
                .await?
                .into_iter()
                .map(|n| n.name)
                .collect();
            leaving.reverse();
            leaving.truncate(leaving.len().saturating_sub(count as usize));
            let live = ctx.sessions.forwards_to(&scope.name, &c.name, &leaving);
            if live > 0 {
                let question = format!(
                    "Scale cluster {} of project {} down to {count}? Node(s) {} go back to the pool and {live} open forward(s) to them end.",
                    c.name,
                    scope.name,
                    leaving.join(", ")
                );
                if let Some(stop) = confirm_or_refuse(ctx, *yes || confirmed, question, what) {
                    return stop;
                }
            }
            let removed = store.cluster_scale(pid, &name, count).await?;
            ctx.sessions.nudge();
            let detail = if removed.is_empty() {
                String::new()
            } else {
                let names: Vec<&str> = removed.iter().map(|n| n.name.as_str()).collect();
                format!(" (released {})", names.join(", "))
            };
            done(
                format!("cluster {name} now has {count} node(s){detail}"),
                as_json,
            )
        }
        ClusterCmd::Config { cluster, settings } if settings.is_empty() => {
            let pid = ctx.authorize(scope, Action::ViewClusterConfig, what)?;
            let c = store
                .cluster(pid, &Name::parse("cluster", cluster)?)
                .await?;
            let nodes = store.nodes_of_cluster(c.id).await?;
            let cfg = effective(&c, &nodes);
            if as_json {
                return text(json(&cfg));
            }
            text(render_config(&cfg))
        }
        ClusterCmd::Config { cluster, settings } => {
            let pid = ctx.authorize(scope, Action::ModifyClusterConfig, what)?;
            let name = Name::parse("cluster", cluster)?;
            // Validate every setting before changing anything.
            let changes = settings
                .iter()
                .map(|s| parse_setting(s))
                .collect::<Result<Vec<_>, _>>()?;
            let mut keys: Vec<&str> = settings
                .iter()
                .filter_map(|s| s.split('=').next())
                .collect();
            keys.sort_unstable();
            if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
                return Err(CmdError::Usage(format!(
                    "{} is given twice; give each key once",
                    w[0]
                )));
            }
            let c = store.cluster(pid, &name).await?;
            for change in &changes {
                if let ClusterConfigChange::KubeApi(Some(v))
                | ClusterConfigChange::Dashboard(Some(v)) = change
                {
                    check_reachable(ctx, &c, change, v).await?;
                }
            }
            let cleared = store.cluster_configure(&c, &changes).await?;
            ctx.sessions.nudge();
            let keys: Vec<&str> = settings
                .iter()
                .filter_map(|s| s.split('=').next())
                .collect();
            let mut said = format!("updated {} of cluster {name}", keys.join(", "));
            if cleared {
                said.push_str(&format!(
                    "; its credential was cleared, as it was given for the old API server: set it again with `cluster credential set {name}`"
                ));
            }
            done(said, as_json)
        }
    }
}

/// Holds a `kube_api` or `dashboard` value to the operator's rules now
/// (forwarding checks the resolved address again at every connect): it
/// must resolve, and every address must be one a forward may land on.
async fn check_reachable(
    ctx: &Ctx<'_>,
    c: &Cluster,
    change: &ClusterConfigChange,
    value: &str,
) -> Result<(), CmdError> {
    let (key, action) = match change {
        ClusterConfigChange::KubeApi(_) => ("kube_api", Action::UseKubernetes),
        _ => ("dashboard", Action::AccessDashboard),
    };
    let hp = HostPort::parse(value)?;
    let nodes = ctx.store.nodes_of_cluster(c.id).await?;
    let hosts: Vec<String> = nodes.iter().map(|n| n.host.clone()).collect();
    let facts = crate::reach::Facts::gather(ctx.store, hp.port, &hosts).await?;
    let node = nodes
        .iter()
        .find(|n| n.host == hp.host)
        .map(|n| n.name.as_str());
    let dest = facts.destination(ctx.reach, action, node, None);
    let ips = crate::net::resolve_host(&hp.host).await;
    if ips.is_empty() {
        return Err(CmdError::Usage(format!(
            "{key} {}: the name {} does not resolve",
            quoted(value),
            quoted(&hp.host)
        )));
    }
    for ip in ips {
        if let Err(why) = dest.check(std::net::SocketAddr::new(ip, hp.port)) {
            return Err(CmdError::Usage(format!(
                "{key} {} is not allowed: {why}; {key} must be a host of the cluster's nodes or inside the operator's forwarding.api_allow, and never the gateway or another node's sshd",
                quoted(value)
            )));
        }
    }
    Ok(())
}

/// `cluster credential set|clear`: "modify cluster configurations". The
/// credential comes on stdin and is never echoed, not even in an error.
async fn credential(
    ctx: &Ctx<'_>,
    scope: &Scope,
    cmd: &CredentialCmd,
    as_json: bool,
    what: &str,
) -> Outcome_ {
    let pid = ctx.authorize(scope, Action::ModifyClusterConfig, what)?;
    match cmd {
        CredentialCmd::Set { cluster } => {
            let name = Name::parse("cluster", cluster)?;
            let c = ctx.store.cluster(pid, &name).await?;
            // The credential belongs to one API server: it is set after the
            // address and CA that name it (changing them clears it).
            let api = match (&c.kube_api, &c.kube_ca) {
                (Some(api), Some(_)) => api.clone(),
                _ => {
                    return Err(CmdError::Failed(format!(
                        "cluster {name} needs kube_api and kube_ca first (the credential is for that API server, and changing them clears it): `cluster config {name} kube_api=HOST:PORT kube_ca=$(base64 -w0 ca.crt)`"
                    )));
                }
            };
            // Only now, with the caller allowed and the cluster ready, is
            // the input read (see Stdin::Pending). It is for this cluster's
            // API server: if that changes while it is piped, nothing is set.
            let server = format!("{}\n{api}\n{}", c.id, c.kube_ca.as_deref().unwrap_or(""));
            let changed = format!(
                "kube_api or kube_ca of cluster {name} changed while the credential was being read; nothing was set: check `cluster config {name}` and set it again"
            );
            let input = ctx.stdin(&server, &changed)?.unwrap_or_default();
            let credential = crate::kube::credential::parse(input).map_err(CmdError::Usage)?;
            ctx.store
                .cluster_credential_set(&c, &credential, &ctx.account.login)
                .await?;
            // Open streams that carry the old credential end now.
            ctx.sessions.nudge();
            done(
                format!(
                    "cluster {name}: credential set ({}); kube requests through the gateway now use it towards the API server at {api}",
                    credential.kind()
                ),
                as_json,
            )
        }
        CredentialCmd::Clear { cluster } => {
            let name = Name::parse("cluster", cluster)?;
            let c = ctx.store.cluster(pid, &name).await?;
            ctx.store
                .cluster_credential_clear(c.id, name.as_str())
                .await?;
            ctx.sessions.nudge();
            done(
                format!("cluster {name}: credential cleared; kube requests fail until one is set"),
                as_json,
            )
        }
    }
}

pub(super) async fn node_list(
    ctx: &Ctx<'_>,
    scope: &Scope,
    cluster: Option<&str>,
    as_json: bool,
    what: &str,
) -> Outcome_ {
    let pid = ctx.authorize(scope, Action::ViewClusters, what)?;
    let nodes = match cluster {
        Some(c) => {
            let c = ctx.store.cluster(pid, &Name::parse("cluster", c)?).await?;
            ctx.store.nodes_of_cluster(c.id).await?
        }
        None => {
            let mut all = Vec::new();
            for c in ctx.store.clusters(pid).await? {
                all.extend(ctx.store.nodes_of_cluster(c.id).await?);
            }
            all
        }
    };
    text(render_nodes(&nodes, as_json))
}

pub(super) async fn kubeconfig(
    ctx: &Ctx<'_>,
    scope: &Scope,
    args: &KubeconfigArgs,
    as_json: bool,
    what: &str,
) -> Outcome_ {
    let pid = ctx.authorize(scope, Action::UseKubernetes, what)?;
    let name = Name::parse("cluster", &args.cluster)?;
    let port = |flag: &str, v: &str| match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(CmdError::Usage(format!(
            "invalid --{flag} {}: expected 1-65535",
            quoted(v)
        ))),
    };
    let via = match &args.local_port {
        Some(p) => Via::Local(port("local-port", p)?),
        None => Via::Socks(port("socks-port", &args.socks_port)?),
    };
    let c = ctx.store.cluster(pid, &name).await?;
    let doc = kubeconfig_doc(&c, ctx.kube_ca_pem, via, &ctx.account.login);
    if as_json {
        return text(json(&doc));
    }
    let port = match ctx.gateway_port {
        Some(p) if p != 22 => format!("-p {p} "),
        _ => String::new(),
    };
    let tunnel = match via {
        Via::Socks(p) => format!("ssh {port}-N -D {p} {}@GATEWAY", ctx.account.login),
        Via::Local(p) => format!(
            "ssh {port}-N -L {p}:kube.{}.{}:443 {}@GATEWAY",
            c.name, c.project, ctx.account.login
        ),
    };
    text(format!(
        "# kubectl reaches cluster {}.{} through the gateway, as you: keep `{tunnel}` running.\n# The token below is a placeholder the gateway removes; your SSH session is your identity.\n{}",
        c.name,
        c.project,
        to_yaml(&doc)
    ))
}

/// How kubectl reaches the gateway's Kubernetes front door.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// `ssh -D PORT`: kubectl sends `kube.CLUSTER.PROJECT` to the SOCKS proxy.
    Socks(u16),
    /// `ssh -L PORT:kube.CLUSTER.PROJECT:443`: kubectl connects to
    /// 127.0.0.1:PORT and checks the certificate for the real name.
    Local(u16),
}

/// What the kubeconfig's user sends: kubectl asks for a username when a
/// user has no credential at all (and fails without a terminal), so it
/// gets this token, which the gateway strips from every request.
pub const PLACEHOLDER_TOKEN: &str = "gatehouse-placeholder-not-a-credential";

/// The kubeconfig as a JSON value; kubectl reads JSON and YAML alike. The
/// server is the gateway's front door for the cluster, verified with the
/// gateway's CA (`ca_pem`).
fn kubeconfig_doc(c: &Cluster, ca_pem: &str, via: Via, login: &str) -> serde_json::Value {
    let ctx_name = format!("{}.{}", c.name, c.project);
    let front = format!("kube.{}.{}", c.name, c.project);
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let cluster = match via {
        Via::Socks(p) => serde_json::json!({
            "server": format!("https://{front}:443"),
            "proxy-url": format!("socks5://127.0.0.1:{p}"),
            "certificate-authority-data": ca,
        }),
        Via::Local(p) => serde_json::json!({
            "server": format!("https://127.0.0.1:{p}"),
            "tls-server-name": front,
            "certificate-authority-data": ca,
        }),
    };
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": ctx_name, "cluster": cluster}],
        "users": [{"name": login, "user": {"token": PLACEHOLDER_TOKEN}}],
        "contexts": [{"name": ctx_name, "context": {"cluster": ctx_name, "user": login, "namespace": c.project}}],
        "current-context": ctx_name,
    })
}

/// Plain YAML for the small, fixed shape of a kubeconfig. Every scalar is
/// written as a JSON string, which is valid YAML and needs no escaping rules
/// of its own.
fn to_yaml(v: &serde_json::Value) -> String {
    fn scalar(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
            other => other.to_string(),
        }
    }
    fn emit(v: &serde_json::Value, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        match v {
            serde_json::Value::Object(map) => {
                for (k, val) in map {
                    match val {
                        serde_json::Value::Object(m) if m.is_empty() => {
                            out.push_str(&format!("{pad}{k}: {{}}\n"))
                        }
                        serde_json::Value::Object(_) => {
                            out.push_str(&format!("{pad}{k}:\n"));
                            emit(val, indent + 2, out);
                        }
                        serde_json::Value::Array(items) => {
                            out.push_str(&format!("{pad}{k}:\n"));
                            for item in items {
                                let mut inner = String::new();
                                emit(item, indent + 2, &mut inner);
                                let trimmed = inner.trim_start_matches(' ');
                                out.push_str(&format!("{pad}- {trimmed}"));
                            }
                        }
                        _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(val))),
                    }
                }
            }
            other => out.push_str(&format!("{pad}{}\n", scalar(other))),
        }
    }
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated() {
        assert_eq!(
            parse_setting("kube_api=10.0.0.1:6443").unwrap(),
            ClusterConfigChange::KubeApi(Some("10.0.0.1:6443".into()))
        );
        assert_eq!(
            parse_setting("dashboard=").unwrap(),
            ClusterConfigChange::Dashboard(None)
        );
        assert!(parse_setting("node_user=Root").is_err());
        assert_eq!(
            parse_setting("node_user=").unwrap(),
            ClusterConfigChange::NodeUser("ubuntu".into())
        );
        assert_eq!(
            parse_setting("node_user=root").unwrap(),
            ClusterConfigChange::NodeUser("root".into())
        );
        assert!(parse_setting("kube_api=nope").is_err());
        assert!(parse_setting("kube_ca=!!!").is_err());
        let e = parse_setting("colour=blue").unwrap_err();
        assert!(e.to_string().contains("known keys are description"), "{e}");
        assert!(parse_setting("description").is_err());
        assert!(parse_setting("description=a\u{1b}[31m").is_err());
    }
}
