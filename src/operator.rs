//! The operator CLI (interface.md §3): trusted commands run on the gateway
//! host against the database directly. It bootstraps accounts, keys,
//! projects with their first admin, and the node pool. Every change is
//! audited with actor `operator`.

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::audit::{Event, Outcome};
use crate::model::{Email, HostPort, Login, Name, SshPublicKey, parse_fingerprint, parse_gpu_type};
use crate::output::{CmdError, Table, json, or_dash};
use crate::store::{Store, format_time};

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Create an account; the login defaults to the email's local part.
    Add {
        email: String,
        #[arg(long)]
        login: Option<String>,
    },
    /// List accounts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Refuse new logins and end the account's live sessions.
    Disable { email: String },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Register one OpenSSH public key line for an account.
    Add {
        email: String,
        /// File holding the key line; `-` reads standard input.
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
    },
    /// List an account's keys.
    List {
        email: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a key by its SHA256 fingerprint; ends sessions that used it.
    Remove { email: String, fingerprint: String },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project with its first admin.
    Create {
        #[arg(allow_hyphen_values = true)]
        name: String,
        #[arg(long, value_name = "EMAIL")]
        admin: String,
    },
    /// List projects.
    List {
        #[arg(long)]
        json: bool,
    },
}

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
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long, value_name = "NAME")]
    project: Option<String>,
    #[arg(
        long,
        value_name = "N",
        default_value = "50",
        allow_hyphen_values = true
    )]
    limit: String,
    #[arg(long)]
    json: bool,
}

/// What one operator command produced: text for stdout.
pub type Output = Result<String, CmdError>;

fn event(action: &str, target: &str, project: Option<&str>, detail: &str) -> Event {
    Event {
        actor: "operator".into(),
        source: "cli".into(),
        project: project.map(str::to_string),
        action: action.into(),
        target: target.into(),
        outcome: Outcome::Ok,
        detail: detail.into(),
    }
}

/// `audit --limit` and the SSH `audit --limit`: 1 to 10000.
pub fn parse_limit(s: &str) -> Result<i64, CmdError> {
    match s.parse::<i64>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(CmdError::Usage(format!(
            "invalid limit {}: expected a whole number from 1 to 10000",
            crate::model::quoted(s)
        ))),
    }
}

pub async fn account(store: &Store, cmd: AccountCmd) -> Output {
    match cmd {
        AccountCmd::Add { email, login } => {
            let email = Email::parse(&email)?;
            let login = match login {
                Some(l) => Login::parse(&l)?,
                None => email.default_login()?,
            };
            let account = store.account_add(&email, &login).await?;
            let msg = format!("added account {} (login {})", account.email, account.login);
            store
                .audit(&event("account add", email.as_str(), None, &msg))
                .await?;
            Ok(format!("{msg}\n"))
        }
        AccountCmd::List { json: as_json } => {
            let accounts = store.accounts().await?;
            if as_json {
                return Ok(json(&accounts));
            }
            let mut t = Table::new(&["EMAIL", "LOGIN", "STATUS", "CREATED"]);
            for a in accounts {
                let status = if a.is_disabled() {
                    "disabled"
                } else {
                    "active"
                };
                t.row(vec![
                    a.email,
                    a.login,
                    status.into(),
                    format_time(a.created_at),
                ]);
            }
            Ok(t.render())
        }
        AccountCmd::Disable { email } => {
            let email = Email::parse(&email)?;
            let account = store.account_disable(&email).await?;
            let msg = format!(
                "disabled account {} (login {}); its sessions are being ended",
                account.email, account.login
            );
            store
                .audit(&event("account disable", email.as_str(), None, &msg))
                .await?;
            Ok(format!("{msg}\n"))
        }
    }
}

/// Reads a key file, or stdin for `-`, refusing anything larger than a key
/// line could be (so a mistaken `--file /dev/zero` ends at once).
fn read_key_file(path: &PathBuf) -> Result<String, CmdError> {
    const MAX: u64 = 64 * 1024;
    let mut buf = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().take(MAX + 1).read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX + 1).read_to_end(&mut buf))
    };
    read.map_err(|e| CmdError::Failed(format!("cannot read {}: {e}", path.display())))?;
    if buf.len() as u64 > MAX {
        return Err(CmdError::Usage(format!(
            "{} is too large to be a public key",
            path.display()
        )));
    }
    String::from_utf8(buf).map_err(|_| {
        CmdError::Usage("the key is not text: expected one OpenSSH public key line".into())
    })
}

pub async fn key(store: &Store, cmd: KeyCmd) -> Output {
    match cmd {
        KeyCmd::Add { email, file } => {
            let email = Email::parse(&email)?;
            let text = read_key_file(&file)?;
            let key = SshPublicKey::parse(&text)?;
            let account = store.need_account(&email).await?;
            let record = store.key_add(&account, &key).await?;
            let msg = format!(
                "added {} key {} to {}",
                record.algorithm, record.fingerprint, account.email
            );
            store
                .audit(&event("key add", email.as_str(), None, &msg))
                .await?;
            Ok(format!("{msg}\n"))
        }
        KeyCmd::List {
            email,
            json: as_json,
        } => {
            let email = Email::parse(&email)?;
            let account = store.need_account(&email).await?;
            let keys = store.keys_of(account.id).await?;
            Ok(render_keys(&keys, as_json))
        }
        KeyCmd::Remove { email, fingerprint } => {
            let email = Email::parse(&email)?;
            let fingerprint = parse_fingerprint(&fingerprint)?;
            let account = store.need_account(&email).await?;
            store.key_remove(account.id, &fingerprint).await?;
            let msg = format!("removed key {fingerprint} from {}", account.email);
            store
                .audit(&event("key remove", email.as_str(), None, &msg))
                .await?;
            Ok(format!("{msg}\n"))
        }
    }
}

/// The key table, shared by the operator's and the user's `key list`.
pub fn render_keys(keys: &[crate::store::KeyRecord], as_json: bool) -> String {
    if as_json {
        return json(keys);
    }
    let mut t = Table::new(&["FINGERPRINT", "TYPE", "COMMENT", "ADDED"]);
    for k in keys {
        t.row(vec![
            k.fingerprint.clone(),
            k.algorithm.clone(),
            or_dash(Some(&k.comment)),
            format_time(k.created_at),
        ]);
    }
    t.render()
}

pub async fn project(store: &Store, cmd: ProjectCmd) -> Output {
    match cmd {
        ProjectCmd::Create { name, admin } => {
            let name = Name::parse("project", &name)?;
            let email = Email::parse(&admin)?;
            let account = store.need_account(&email).await?;
            if account.is_disabled() {
                return Err(CmdError::Failed(format!("account {email} is disabled")));
            }
            store.project_create(&name, account.id).await?;
            let msg = format!("created project {name} with admin {}", account.email);
            store
                .audit(&event(
                    "project create",
                    name.as_str(),
                    Some(name.as_str()),
                    &msg,
                ))
                .await?;
            Ok(format!("{msg}\n"))
        }
        ProjectCmd::List { json: as_json } => {
            let projects = store.projects().await?;
            if as_json {
                return Ok(json(&projects));
            }
            let mut t = Table::new(&["NAME", "ADMINS", "MEMBERS", "CLUSTERS"]);
            for p in projects {
                t.row(vec![
                    p.name,
                    p.admins.to_string(),
                    p.members.to_string(),
                    p.clusters.to_string(),
                ]);
            }
            Ok(t.render())
        }
    }
}

pub async fn node(store: &Store, cmd: NodeCmd) -> Output {
    match cmd {
        NodeCmd::Register {
            name,
            address,
            gpu_type,
            gpus,
        } => {
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
    }
}

/// The node table, shared by the operator's and the user's `node list`.
pub fn render_nodes(nodes: &[crate::store::Node], as_json: bool) -> String {
    if as_json {
        return json(nodes);
    }
    let mut t = Table::new(&["NAME", "ADDRESS", "GPU-TYPE", "GPUS", "CLUSTER", "PROJECT"]);
    for n in nodes {
        t.row(vec![
            n.name.clone(),
            n.address(),
            or_dash(n.gpu_type.as_deref()),
            n.gpus.to_string(),
            or_dash(n.cluster.as_deref()),
            or_dash(n.project.as_deref()),
        ]);
    }
    t.render()
}

/// The audit table, shared by the operator's and the admin's `audit`.
pub fn render_audit(records: &[crate::audit::Record], as_json: bool) -> String {
    if as_json {
        return json(records);
    }
    let mut t = Table::new(&[
        "TIME", "ACTOR", "SOURCE", "PROJECT", "ACTION", "TARGET", "OUTCOME", "DETAIL",
    ]);
    for r in records {
        t.row(vec![
            r.time(),
            r.actor.clone(),
            r.source.clone(),
            or_dash(r.project.as_deref()),
            r.action.clone(),
            or_dash(Some(&r.target)),
            r.outcome.clone(),
            r.detail.clone(),
        ]);
    }
    t.render()
}

pub async fn audit(store: &Store, args: AuditArgs) -> Output {
    let project = args
        .project
        .as_deref()
        .map(|p| Name::parse("project", p))
        .transpose()?;
    let limit = parse_limit(&args.limit)?;
    let records = store
        .audit_events(project.as_ref().map(Name::as_str), limit)
        .await?;
    Ok(render_audit(&records, args.json))
}
