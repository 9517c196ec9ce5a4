//! `session list|kill` and `audit`.

use super::grammar::SessionCmd;
use super::{Ctx, Outcome_, Scope, done, text};
use crate::operator::{parse_limit, render_audit};
use crate::output::{CmdError, Table, json};
use crate::policy::{Action, authorize};
use crate::store::Revocation;

pub(super) async fn run(
    ctx: &Ctx<'_>,
    scope: &Scope,
    cmd: &SessionCmd,
    as_json: bool,
    what: &str,
) -> Outcome_ {
    match cmd {
        SessionCmd::List => {
            ctx.authorize(scope, Action::ListOwnSessions, what)?;
            let all = authorize(scope.role, Action::ListAllSessions).allowed();
            let visible = visible_sessions(ctx, scope, all).await?;
            if as_json {
                return text(json(&visible));
            }
            let mut t = Table::new(&["ID", "LOGIN", "SOURCE", "STARTED", "CHANNELS"]);
            for s in visible {
                let chans: Vec<String> = s
                    .channels
                    .iter()
                    .map(|c| match &c.target {
                        Some(t) => format!("{} {t}", c.kind),
                        None => c.kind.clone(),
                    })
                    .collect();
                t.row(vec![s.id, s.login, s.source, s.started, chans.join(", ")]);
            }
            text(t.render())
        }
        SessionCmd::Kill { id } => {
            ctx.authorize(scope, Action::KillSession, what)?;
            let visible = visible_sessions(ctx, scope, true).await?;
            if !visible.iter().any(|s| &s.id == id) {
                return Err(CmdError::Failed(format!(
                    "no session {} of project {} on this gateway; see `session list`",
                    crate::model::quoted(id),
                    scope.name
                )));
            }
            // Only what the session does in this project ends; the session
            // itself ends when it does nothing in another project.
            ctx.store
                .revoke(&Revocation::Session {
                    id: id.clone(),
                    project: Some(scope.name.clone()),
                })
                .await?;
            ctx.sessions.nudge();
            done(
                format!("ended session {id} in project {}", scope.name),
                as_json,
            )
        }
    }
}

/// Admins see the sessions of the project's members; members their own.
/// Either way only the channels in this project are shown: what a person
/// does in other projects is not this project's business.
async fn visible_sessions(
    ctx: &Ctx<'_>,
    scope: &Scope,
    all: bool,
) -> Result<Vec<super::SessionInfo>, CmdError> {
    let sessions = ctx.sessions.list();
    let members = if all {
        ctx.store.members(scope.id).await?
    } else {
        Vec::new()
    };
    Ok(sessions
        .into_iter()
        .filter(|s| {
            s.account_id == ctx.account.id
                || (all && members.iter().any(|m| m.account_id == s.account_id))
        })
        .map(|mut s| {
            s.channels
                .retain(|c| c.project.as_deref() == Some(scope.name.as_str()));
            s
        })
        .collect())
}

pub(super) async fn audit(
    ctx: &Ctx<'_>,
    scope: &Scope,
    limit: &str,
    as_json: bool,
    what: &str,
) -> Outcome_ {
    ctx.authorize(scope, Action::ViewAudit, what)?;
    let limit = parse_limit(limit)?;
    let records = ctx.store.audit_events(Some(&scope.name), limit).await?;
    text(render_audit(&records, as_json))
}
