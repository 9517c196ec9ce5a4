//! The operator's node commands: the pool (register, list, remove), its
//! health (`node check`) and enrolment (`node enroll`, see
//! [`crate::nodes`]).

use std::path::PathBuf;

use clap::Subcommand;

use super::{Output, event};
use crate::model::{HostPort, Login, Name, parse_gpu_type};
use crate::output::{CmdError, Table, json, or_dash};
use crate::store::{Store, format_time};

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Register a node's sshd address into the free pool.
    Register {
        #[arg(allow_hyphen_values = true)]
        name: String,
        #[arg(value_name = "HOST:PORT")]
        address: String,
        #[arg(long, value_name = "TYPE")]
        gpu_type: Option<String>,
        #[arg(
            long,
            value_name = "N",
            default_value = "0",
            allow_hyphen_values = true
        )]
        gpus: String,
    },
    /// List all nodes, free and allocated.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a node from the pool; refused while a cluster holds it.
    Remove {
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Take it out of its cluster first, ending forwards to it
        #[arg(long)]
        force: bool,
    },
    /// Give a node its identity towards the gateway, so that its sshd asks
    /// the gateway who may log in (AuthorizedKeysCommand). Prints a shell
    /// script for a Debian node, or with --dir writes the files there.
    /// Enrolling again replaces the credential at once.
    Enroll {
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// How the node reaches the gateway [default: nodes.gateway]
        #[arg(long, value_name = "HOST:PORT")]
        gateway: Option<String>,
        /// Write sshd_config (for `Include DIR/sshd_config`), the command,
        /// the key and known_hosts into DIR instead of printing a script
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The Unix user sshd runs the command as [default: gatehouse-node
        /// for the script; the current user with --dir]
        #[arg(long, value_name = "USER")]
        command_user: Option<String>,
    },
    /// Try each node's sshd (all, or those named): connect and read its
    /// SSH banner. Exit status 1 when any node fails.
    Check {
        names: Vec<String>,
        /// Seconds to wait for each node
        #[arg(long, value_name = "SECONDS", default_value = "5")]
        timeout: String,
        #[arg(long)]
        json: bool,
    },
}

/// What `node enroll` needs beyond the store: the gateway's public host key
/// and its configured public address.
pub struct EnrolContext {
    pub host_key: PathBuf,
    pub gateway: String,
}

pub async fn node(store: &Store, cmd: NodeCmd, enrol: &EnrolContext) -> Output {
    match cmd {
        NodeCmd::Register {
            name,
            address,
            gpu_type,
            gpus,
        } => {
            // Before the name's own check, whose hint for `KUBE` would be
            // the reserved `kube`.
            let lower = name.to_ascii_lowercase();
            if crate::target::SERVICE_LABELS.contains(&lower.as_str()) {
                return Err(CmdError::Usage(format!(
                    "node name {lower} is reserved: {lower}.CLUSTER names the cluster's {} for ssh -L and -W; choose another",
                    if lower == "kube" {
                        "Kubernetes API"
                    } else {
                        "dashboard"
                    }
                )));
            }
            let name = Name::parse("node", &name)?;
            let addr = HostPort::parse(&address)?;
            let gpu_type = gpu_type.as_deref().map(parse_gpu_type).transpose()?;
            let gpus = match gpus.parse::<i64>() {
                Ok(n) if (0..=1024).contains(&n) => n,
                _ => {
                    return Err(CmdError::Usage(format!(
                        "invalid GPU count {}: expected a whole number from 0 to 1024",
                        crate::model::quoted(&gpus)
                    )));
                }
            };
            let node = store
                .node_register(&name, &addr, gpu_type.as_deref(), gpus)
                .await?;
            let msg = format!(
                "registered node {} at {} into the free pool",
                node.name,
                node.address()
            );
            store
                .audit(&event("node register", name.as_str(), None, &msg))
                .await?;
            Ok(format!("{msg}\n"))
        }
        NodeCmd::List { json: as_json } => {
            let nodes = store.nodes().await?;
            Ok(render_nodes(&nodes, as_json))
        }
        NodeCmd::Remove { name, force } => {
            let name = Name::parse("node", &name)?;
            let node = store.node_remove(&name, force).await?;
            let from = match (&node.cluster, &node.project) {
                (Some(c), Some(p)) => {
                    format!(" (taken out of cluster {c} of project {p}; its forwards end)")
                }
                _ => String::new(),
            };
            let msg = format!("removed node {} at {}{from}", node.name, node.address());
            store
                .audit(&event(
                    "node remove",
                    name.as_str(),
                    node.project.as_deref(),
                    &msg,
                ))
                .await?;
            Ok(format!("{msg}\n"))
        }
        NodeCmd::Check {
            names,
            timeout,
            json: as_json,
        } => node_check(store, &names, &timeout, as_json).await,
        NodeCmd::Enroll {
            name,
            gateway,
            dir,
            command_user,
        } => node_enroll(store, enrol, &name, gateway, dir, command_user).await,
    }
}

async fn node_enroll(
    store: &Store,
    ctx: &EnrolContext,
    name: &str,
    gateway: Option<String>,
    dir: Option<PathBuf>,
    command_user: Option<String>,
) -> Output {
    let name = Name::parse("node", name)?;
    let gateway = match gateway.filter(|g| !g.is_empty()) {
        Some(g) => g,
        None if !ctx.gateway.is_empty() => ctx.gateway.clone(),
        None => {
            return Err(CmdError::Usage(
                "give --gateway HOST:PORT (how the node reaches the gateway), or set nodes.gateway in the config".into(),
            ));
        }
    };
    let gw = HostPort::parse(&gateway)?;
    let command_user = match command_user {
        Some(u) => Login::parse(&u)?.to_string(),
        None if dir.is_some() => current_user(),
        None => "gatehouse-node".to_string(),
    };
    let host_key = crate::gateway::host_key(&ctx.host_key)
        .map_err(|e| CmdError::Failed(format!("{e:#}")))?
        .public_key()
        .to_openssh()
        .map_err(|e| CmdError::Failed(format!("cannot encode the host key: {e}")))?;
    let (private_key, fingerprint) =
        crate::nodes::new_node_key().map_err(|e| CmdError::Failed(format!("{e:#}")))?;
    let enrolment = crate::nodes::Enrolment {
        node: name.to_string(),
        gateway_host: gw.host.clone(),
        gateway_port: gw.port,
        private_key,
        host_key,
        command_user,
    };
    // Files first: a credential in the database with nothing on disk would
    // lock the node out for nothing.
    let out = match &dir {
        Some(dir) => {
            write_enrolment(dir, &enrolment)?;
            format!(
                "enrolled node {name}: wrote {}/{{sshd_config,authorized-keys,node_key,known_hosts}}; add `Include {}/sshd_config` to the node's sshd_config and reload sshd\n",
                dir.display(),
                dir.display()
            )
        }
        None => enrolment.script(),
    };
    store.node_enroll(&name, &fingerprint).await?;
    let msg = format!(
        "enrolled node {name} with credential {fingerprint}; any earlier credential no longer works"
    );
    store
        .audit(&event("node enroll", name.as_str(), None, &msg))
        .await?;
    Ok(out)
}

/// Writes the enrolment files into `dir` (created 0755 if missing) with
/// their modes; the key is created 0600 and never exists with wider ones.
fn write_enrolment(dir: &std::path::Path, e: &crate::nodes::Enrolment) -> Result<(), CmdError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail = |what: &str, err: std::io::Error| {
        CmdError::Failed(format!("cannot write {what} in {}: {err}", dir.display()))
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|err| fail("the folder", err))?;
    let dir_abs = std::path::absolute(dir).map_err(|err| fail("the folder", err))?;
    let dir_str = dir_abs.display().to_string();
    // The path goes into sshd_config and a shell script unquoted: plain
    // characters only, so it can neither break nor inject.
    if !dir_str
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    {
        return Err(CmdError::Usage(format!(
            "--dir {}: use a path of letters, digits and / . _ - only",
            crate::model::quoted(&dir_str)
        )));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir_abs)
            .map_err(|err| fail("the folder", err))?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            return Err(CmdError::Usage(format!(
                "--dir {dir_str} is writable by group or others (mode {:03o}); sshd refuses a command there",
                mode & 0o777
            )));
        }
    }
    for (name, mode, text) in e.files(&dir_str) {
        let path = dir_abs.join(name);
        if name == crate::nodes::BREAKGLASS && path.exists() {
            // The node's own keys: created once, never replaced.
            continue;
        }
        let tmp = dir_abs.join(format!(".{name}.new"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|err| fail(name, err))?;
        f.write_all(text.as_bytes())
            .map_err(|err| fail(name, err))?;
        if name == "node_key" {
            // The command runs as the command user, who must read the key.
            chown_to(&tmp, &e.command_user).map_err(|err| fail(name, err))?;
        }
        std::fs::rename(&tmp, &path).map_err(|err| fail(name, err))?;
    }
    Ok(())
}

/// Gives `path` to the Unix user `user` (when run as root; otherwise the
/// file stays the caller's, who is then the only user that can be meant).
fn chown_to(path: &std::path::Path, user: &str) -> std::io::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let out = std::process::Command::new("id")
        .args(["-u", user])
        .output()?;
    let uid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("no Unix user {user} on this machine")))?;
    std::os::unix::fs::chown(path, Some(uid), None)
}

/// The user running the CLI, for `AuthorizedKeysCommandUser` with --dir.
fn current_user() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return "root".to_string();
    }
    std::env::var("USER")
        .ok()
        .filter(|u| Login::parse(u).is_ok())
        .unwrap_or_else(|| "root".to_string())
}

/// `node check`: the table (or JSON) goes to stdout whatever the result;
/// a node that fails makes the command fail (exit 1) after it.
async fn node_check(store: &Store, names: &[String], timeout: &str, as_json: bool) -> Output {
    #[derive(serde::Serialize)]
    struct Row {
        name: String,
        address: String,
        ok: bool,
        status: &'static str,
        detail: String,
    }
    let timeout = match timeout.parse::<u64>() {
        Ok(n) if (1..=300).contains(&n) => std::time::Duration::from_secs(n),
        _ => {
            return Err(CmdError::Usage(format!(
                "invalid --timeout {}: expected whole seconds from 1 to 300",
                crate::model::quoted(timeout)
            )));
        }
    };
    let wanted = names
        .iter()
        .map(|n| Name::parse("node", n))
        .collect::<Result<Vec<_>, _>>()?;
    let mut nodes = store.nodes().await?;
    for w in &wanted {
        if !nodes.iter().any(|n| n.name == w.as_str()) {
            return Err(CmdError::Failed(format!("no node {w}")));
        }
    }
    if !wanted.is_empty() {
        nodes.retain(|n| wanted.iter().any(|w| w.as_str() == n.name));
    }
    // All at once, so the whole check takes one timeout, not one per node.
    let mut set = tokio::task::JoinSet::new();
    for (i, n) in nodes.iter().enumerate() {
        let (host, port) = (n.host.clone(), n.port as u16);
        set.spawn(async move { (i, crate::net::ssh_banner(&host, port, timeout).await) });
    }
    let mut results = vec![None; nodes.len()];
    while let Some(joined) = set.join_next().await {
        if let Ok((i, r)) = joined {
            results[i] = Some(r);
        }
    }
    let rows: Vec<Row> = nodes
        .iter()
        .zip(results)
        .map(|(n, r)| {
            let (ok, status, detail) = match r {
                Some(Ok(banner)) => (true, "ok", banner),
                Some(Err(e)) => (false, "unreachable", e),
                None => (false, "unreachable", "the check did not finish".to_string()),
            };
            Row {
                name: n.name.clone(),
                address: n.address(),
                ok,
                status,
                detail,
            }
        })
        .collect();
    let out = if as_json {
        json(&rows)
    } else {
        let mut t = Table::new(&["NAME", "ADDRESS", "STATUS", "DETAIL"]);
        for r in &rows {
            t.row(vec![
                r.name.clone(),
                r.address.clone(),
                r.status.into(),
                crate::model::printable(&r.detail, 80),
            ]);
        }
        t.render()
    };
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.name.as_str())
        .collect();
    if failed.is_empty() {
        return Ok(out);
    }
    print!("{out}");
    Err(CmdError::Failed(format!(
        "{} of {} node(s) failed the check: {}",
        failed.len(),
        rows.len(),
        failed.join(", ")
    )))
}

/// The node table, shared by the operator's and the user's `node list`.
pub fn render_nodes(nodes: &[crate::store::Node], as_json: bool) -> String {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        #[serde(flatten)]
        node: &'a crate::store::Node,
        address: String,
        enrolled: bool,
        last_asked: Option<String>,
    }
    let rows: Vec<Row> = nodes
        .iter()
        .map(|n| Row {
            node: n,
            address: n.address(),
            enrolled: n.enrolled_at.is_some(),
            last_asked: n.last_asked.map(format_time),
        })
        .collect();
    if as_json {
        return json(&rows);
    }
    let mut t = Table::new(&[
        "NAME",
        "ADDRESS",
        "GPU-TYPE",
        "GPUS",
        "CLUSTER",
        "PROJECT",
        "ENROLLED",
        "LAST-ASKED",
    ]);
    for r in rows {
        let n = r.node;
        t.row(vec![
            n.name.clone(),
            r.address,
            or_dash(n.gpu_type.as_deref()),
            n.gpus.to_string(),
            or_dash(n.cluster.as_deref()),
            or_dash(n.project.as_deref()),
            if r.enrolled { "yes" } else { "no" }.into(),
            or_dash(r.last_asked.as_deref()),
        ]);
    }
    t.render()
}
