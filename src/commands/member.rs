//! `member list|add|remove|role`: the seed's add-user and remove-user flow.

use super::grammar::MemberCmd;
use super::{Ctx, Outcome_, Scope, confirm_or_refuse, done, text};
use crate::model::{Email, Role};
use crate::output::{CmdError, Table, json};
use crate::policy::Action;
use crate::store::Account;

pub(super) async fn run(
    ctx: &Ctx<'_>,
    scope: &Scope,
    cmd: &MemberCmd,
    as_json: bool,
    confirmed: bool,
    what: &str,
) -> Outcome_ {
    match cmd {
        MemberCmd::List => {
            let pid = ctx.authorize(scope, Action::ViewMembers, what)?;
            let members = ctx.store.members(pid).await?;
            if as_json {
                return text(json(&members));
            }
            let mut t = Table::new(&["EMAIL", "LOGIN", "ROLE"]);
            for m in members {
                let role = if m.disabled {
                    format!("{} (disabled)", m.role)
                } else {
                    m.role.to_string()
                };
                t.row(vec![m.email, m.login, role]);
            }
            text(t.render())
        }
        MemberCmd::Add { email, role } => {
            let pid = ctx.authorize(scope, Action::AddMember, what)?;
            let email = Email::parse(email)?;
            let role = Role::parse(role)?;
            let account = ctx.store.need_account(&email).await?;
            ctx.store.member_add(pid, account.id, role).await?;
            done(
                format!(
                    "added {} to project {} as {role}",
                    account.email, scope.name
                ),
                as_json,
            )
        }
        MemberCmd::Remove { email, yes } => {
            let pid = ctx.authorize(scope, Action::RemoveMember, what)?;
            let email = Email::parse(email)?;
            let account = known_account(ctx, &email).await?;
            if ctx
                .store
                .membership(account.id, &scope.name)
                .await?
                .is_none()
            {
                return Err(not_member(&email));
            }
            let question = format!(
                "Remove {} from project {}? Their sessions into it end now.",
                account.email, scope.name
            );
            if let Some(stop) = confirm_or_refuse(ctx, *yes || confirmed, question, what) {
                return stop;
            }
            ctx.store
                .member_remove(pid, &scope.name, account.id, account.email.as_str())
                .await?;
            ctx.sessions.nudge();
            done(
                format!("removed {} from project {}", account.email, scope.name),
                as_json,
            )
        }
        MemberCmd::Role { email, role } => {
            let pid = ctx.authorize(scope, Action::AssignRole, what)?;
            let email = Email::parse(email)?;
            let role = Role::parse(role)?;
            let account = known_account(ctx, &email).await?;
            let old = ctx
                .store
                .member_set_role(pid, account.id, &account.email, role)
                .await?;
            // Their Kubernetes front doors act with the old group: cut them.
            ctx.sessions.nudge();
            done(
                format!(
                    "{} is now {role} of project {} (was {old})",
                    account.email, scope.name
                ),
                as_json,
            )
        }
    }
}

fn not_member(email: &Email) -> CmdError {
    CmdError::Failed(format!("{email} is not a member of this project"))
}

/// The account of `email`; one with no account is not a member either.
async fn known_account(ctx: &Ctx<'_>, email: &Email) -> Result<Account, CmdError> {
    ctx.store
        .account_by_email(email)
        .await?
        .ok_or_else(|| not_member(email))
}
