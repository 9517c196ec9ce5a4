//! The operator CLI (interface.md §3): trusted commands run on the gateway
//! host against the database directly. It bootstraps accounts, keys,
//! projects with their first admin, and the node pool. Every change is
//! audited with actor `operator`.

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Subcommand};

mod nodes;
pub use nodes::{EnrolContext, NodeCmd, node, render_nodes};

use crate::audit::{Event, Outcome};
use crate::model::{Email, Login, Name, SshPublicKey, parse_fingerprint};
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
    /// Allow a disabled account to log in again.
    Enable { email: String },
    /// Remove an account, its keys and memberships; ends its sessions.
    /// Refused while it is the last admin of a project.
    Remove { email: String },
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
    /// Delete a project with its memberships, clusters and volumes; the
    /// clusters' nodes go back to the pool and sessions into it end.
    Delete {
        #[arg(allow_hyphen_values = true)]
        name: String,
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
        args: String::new(),
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
                Some(l) => Login::for_account(&l)?,
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
            #[derive(serde::Serialize)]
            struct Row<'a> {
                email: &'a str,
                login: &'a str,
                status: &'static str,
                disabled: bool,
                created: String,
            }
            let rows: Vec<Row> = accounts
                .iter()
                .map(|a| Row {
                    email: &a.email,
                    login: &a.login,
                    status: if a.is_disabled() {
                        "disabled"
                    } else {
                        "active"
                    },
                    disabled: a.is_disabled(),
                    created: format_time(a.created_at),
                })
                .collect();
            if as_json {
                return Ok(json(&rows));
            }
            let mut t = Table::new(&["EMAIL", "LOGIN", "STATUS", "CREATED"]);
            for r in rows {
                t.row(vec![
                    r.email.to_string(),
                    r.login.to_string(),
                    r.status.into(),
                    r.created,
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
        AccountCmd::Enable { email } => {
            let email = Email::parse(&email)?;
            let account = store.account_enable(&email).await?;
            let msg = format!(
                "enabled account {} (login {})",
                account.email, account.login
            );
            store
                .audit(&event("account enable", email.as_str(), None, &msg))
                .await?;
            Ok(format!("{msg}\n"))
        }
        AccountCmd::Remove { email } => {
            let email = Email::parse(&email)?;
            let account = store.account_remove(&email).await?;
            let msg = format!(
                "removed account {} (login {}) with its keys and memberships; its sessions are being ended",
                account.email, account.login
            );
            store
                .audit(&event("account remove", email.as_str(), None, &msg))
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
    #[derive(serde::Serialize)]
    struct Row<'a> {
        fingerprint: &'a str,
        algorithm: &'a str,
        comment: &'a str,
        added: String,
    }
    let rows: Vec<Row> = keys
        .iter()
        .map(|k| Row {
            fingerprint: &k.fingerprint,
            algorithm: &k.algorithm,
            comment: &k.comment,
            added: format_time(k.created_at),
        })
        .collect();
    if as_json {
        return json(&rows);
    }
    let mut t = Table::new(&["FINGERPRINT", "TYPE", "COMMENT", "ADDED"]);
    for r in rows {
        t.row(vec![
            r.fingerprint.to_string(),
            r.algorithm.to_string(),
            or_dash(Some(&crate::model::printable(r.comment, 64))),
            r.added,
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
        ProjectCmd::Delete { name } => {
            let name = Name::parse("project", &name)?;
            let d = store.project_delete(&name).await?;
            let msg = format!(
                "deleted project {name}: {} membership(s), {} cluster(s), {} volume(s); {} node(s) returned to the pool; its sessions are being ended",
                d.members, d.clusters, d.volumes, d.nodes_freed
            );
            store
                .audit(&event(
                    "project delete",
                    name.as_str(),
                    Some(name.as_str()),
                    &msg,
                ))
                .await?;
            Ok(format!("{msg}\n"))
        }
    }
}

/// The audit table, shared by the operator's and the admin's `audit`.
pub fn render_audit(records: &[crate::audit::Record], as_json: bool) -> String {
    if as_json {
        return json(records);
    }
    let mut t = Table::new(&[
        "TIME", "ACTOR", "SOURCE", "PROJECT", "ACTION", "TARGET", "OUTCOME", "DETAIL",
    ]);
    // Everything in a row came from someone; escape it, and clip the long
    // fields (`--json` has them whole).
    let cell = |s: &str, max: usize| crate::model::printable(s, max);
    for r in records {
        let detail = match (r.args.is_empty(), r.detail.is_empty()) {
            (false, false) => format!("{} — {}", r.args, r.detail),
            (false, true) => r.args.clone(),
            _ => r.detail.clone(),
        };
        t.row(vec![
            r.time(),
            cell(&r.actor, 32),
            cell(&r.source, 48),
            or_dash(r.project.as_deref().map(|p| cell(p, 63)).as_deref()),
            cell(&r.action, 32),
            or_dash(Some(&cell(&r.target, 48))),
            r.outcome.clone(),
            cell(&detail, 80),
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
