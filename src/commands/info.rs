//! Commands about the caller: `whoami`, `project list`, and their own keys.

use serde::Serialize;

use super::grammar::KeyCmd;
use super::{Ctx, Outcome_, done, text};
use crate::model::{SshPublicKey, parse_fingerprint};
use crate::operator::render_keys;
use crate::output::{CmdError, Table, json};
use crate::store::Membership;

pub(super) async fn whoami(ctx: &Ctx<'_>, as_json: bool) -> Outcome_ {
    #[derive(Serialize)]
    struct WhoAmI<'a> {
        login: &'a str,
        email: &'a str,
        projects: &'a [Membership],
    }
    let projects = ctx.store.memberships_of(ctx.account.id).await?;
    if as_json {
        return text(json(&WhoAmI {
            login: &ctx.account.login,
            email: &ctx.account.email,
            projects: &projects,
        }));
    }
    let mut out = format!(
        "login:    {}\nemail:    {}\n",
        ctx.account.login, ctx.account.email
    );
    if projects.is_empty() {
        out.push_str("projects: none (ask a project admin to add you)\n");
    } else {
        let list: Vec<String> = projects
            .iter()
            .map(|m| format!("{} ({})", m.project, m.role))
            .collect();
        out.push_str(&format!("projects: {}\n", list.join(", ")));
    }
    text(out)
}

pub(super) async fn project_list(ctx: &Ctx<'_>, as_json: bool) -> Outcome_ {
    let projects = ctx.store.memberships_of(ctx.account.id).await?;
    if as_json {
        return text(json(&projects));
    }
    let mut t = Table::new(&["PROJECT", "ROLE"]);
    for m in projects {
        t.row(vec![m.project, m.role.to_string()]);
    }
    text(t.render())
}

/// Managing one's own keys needs no project and no role: every account may.
/// `target` is set to the key's fingerprint once known, for the audit log.
pub(super) async fn key(
    ctx: &Ctx<'_>,
    cmd: &KeyCmd,
    as_json: bool,
    target: &mut Option<String>,
) -> Outcome_ {
    match cmd {
        KeyCmd::List => {
            let keys = ctx.store.keys_of(ctx.account.id).await?;
            text(render_keys(&keys, as_json))
        }
        KeyCmd::Add { key } => {
            let line = if key.is_empty() {
                match ctx.stdin("", "")? {
                    Some(s) => s.to_string(),
                    None => {
                        return Err(CmdError::Usage(
                            "give the public key line: `key add ssh-ed25519 AAAA… comment`, or pipe it to `ssh GW key add`"
                                .into(),
                        ));
                    }
                }
            } else {
                key.join(" ")
            };
            let key = SshPublicKey::parse(&line)?;
            *target = Some(key.fingerprint().to_string());
            // Anyone can paste anyone's public key: it counts only once its
            // holder logs in with it, which proves they have the private half.
            ctx.store.key_add_pending(ctx.account, &key).await?;
            done(
                format!(
                    "{} key {} is pending: log in once with it within an hour to confirm it (e.g. `ssh -i NEW_KEY -p PORT {}@GATEWAY whoami`)",
                    key.algorithm(),
                    key.fingerprint(),
                    ctx.account.login
                ),
                as_json,
            )
        }
        KeyCmd::Remove { fingerprint } => {
            let fingerprint = parse_fingerprint(fingerprint)?;
            let keys = ctx.store.keys_of(ctx.account.id).await?;
            if keys.len() == 1 && keys[0].fingerprint == fingerprint {
                return Err(CmdError::Failed(
                    "that is your only key: add another first, or you could not log in again"
                        .into(),
                ));
            }
            ctx.store.key_remove(ctx.account.id, &fingerprint).await?;
            ctx.sessions.nudge();
            done(
                format!("removed key {fingerprint}; sessions that used it are ended"),
                as_json,
            )
        }
    }
}
