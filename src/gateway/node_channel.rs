//! A node's session: the one command nodes may run, `authorized-keys LOGIN
//! FINGERPRINT`, answered by [`crate::nodes::decide`] and audited.

use std::sync::Arc;
use std::time::Duration;

use russh::server::Msg;
use russh::{Channel, ChannelMsg};

use super::Shared;
use crate::audit::{Event, Outcome};
use crate::nodes::{Answer, Question, decide, gateway_addresses};
use crate::store::AskingNode;

/// A node asks at once; a session that does not is closed.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one session channel of a node until it has asked.
pub async fn run(shared: Arc<Shared>, node: AskingNode, source: String, mut channel: Channel<Msg>) {
    let command = tokio::time::timeout(ASK_TIMEOUT, async {
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Exec { command, .. }) => return Some(command),
                Some(ChannelMsg::RequestShell { .. }) | Some(ChannelMsg::Close) | None => {
                    return None;
                }
                Some(_) => {}
            }
        }
    })
    .await
    .ok()
    .flatten();
    let command = String::from_utf8_lossy(command.as_deref().unwrap_or_default()).into_owned();
    let actor = format!("{}{}", crate::nodes::NODE_LOGIN_PREFIX, node.name);
    let (code, out) = match Question::parse(&command) {
        Ok(q) => {
            // Read afresh at each question: a connection opened before a
            // re-enrolment, a removal or a scale-down answers as the node is
            // now, or not at all.
            let answer = match shared.store.asking_node(&node.name, &node.credential).await {
                Ok(Some(now)) => answer(&shared, &now, &q).await,
                Ok(None) => Answer::Refuse("the node's credential is no longer valid".into()),
                Err(e) => Answer::Refuse(format!("cannot check access ({e})")),
            };
            let (outcome, detail, out) = match &answer {
                Answer::Grant { line, email } => (
                    Outcome::Ok,
                    format!("granted {} as {} to {email}", q.fingerprint, q.login),
                    format!("{line}\n"),
                ),
                Answer::Refuse(why) => (
                    Outcome::Denied,
                    format!("refused {} as {}: {why}", q.fingerprint, q.login),
                    String::new(),
                ),
            };
            tracing::info!(node = %node.name, source = %source, login = %q.login, key = %q.fingerprint, outcome = outcome.as_str(), detail = %detail, "node question");
            // Anyone who reaches the node's sshd makes it ask: refused
            // questions share the node's audit allowance.
            let stored = outcome == Outcome::Ok || crate::audit::admit_denial(&actor);
            let event = Event {
                actor: actor.clone(),
                source: source.clone(),
                project: node.cluster.as_ref().map(|c| c.2.clone()),
                action: "node question".into(),
                target: q.fingerprint.clone(),
                args: command.clone(),
                outcome,
                detail,
            };
            if stored && let Err(e) = shared.store.audit(&event).await {
                tracing::error!(error = %e, "cannot write audit event");
            }
            let _ = shared.store.node_asked(node.id).await;
            (0, out)
        }
        Err(why) => {
            tracing::warn!(node = %node.name, source = %source, reason = %why, "node request refused");
            if crate::audit::admit_denial(&actor) {
                let event = Event {
                    actor: actor.clone(),
                    source: source.clone(),
                    project: None,
                    action: "node request".into(),
                    target: String::new(),
                    args: crate::model::printable(&command, 200),
                    outcome: Outcome::Denied,
                    detail: why,
                };
                let _ = shared.store.audit(&event).await;
            }
            (2, String::new())
        }
    };
    if !out.is_empty() {
        let _ = channel.data(out.as_bytes()).await;
    }
    let _ = channel.exit_status(code).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// Reads the key's holder afresh and decides.
async fn answer(shared: &Shared, node: &AskingNode, q: &Question) -> Answer {
    let Some((cluster_id, ..)) = &node.cluster else {
        return decide(node, q, None, &[]);
    };
    let holder = match shared.store.key_holder(&q.fingerprint, *cluster_id).await {
        Ok(h) => h,
        // Fail closed.
        Err(e) => return Answer::Refuse(format!("cannot check access ({e})")),
    };
    let hosts = crate::net::resolve_host(&node.host).await;
    let from = gateway_addresses(&shared.login_from, &hosts);
    decide(node, q, holder.as_ref(), &from)
}
