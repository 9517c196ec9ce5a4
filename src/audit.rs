//! Audit events: who, from where, what, on what, and how it ended. Every
//! operator change, every SSH command and every refusal is one event.

use serde::Serialize;

use crate::store::{Result, Store, format_time, now_ms};

/// How an audited request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Allowed and done.
    Ok,
    /// Refused by policy or authentication.
    Denied,
    /// Allowed, but it failed (not found, conflict, capacity …).
    Failed,
    /// Not understood: bad syntax or an argument that failed validation.
    Usage,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
            Outcome::Usage => "usage",
        }
    }
}

/// An event about to be recorded.
#[derive(Debug, Clone)]
pub struct Event {
    /// The account login, or `operator` for the operator CLI.
    pub actor: String,
    /// `cli` or the client's `IP:PORT`.
    pub source: String,
    pub project: Option<String>,
    /// What was asked: a command line, `auth`, `forward` …
    pub action: String,
    /// What it was done to (an email, a cluster, a forward target …).
    pub target: String,
    /// The whole request as the user typed it (a command line), if any.
    pub args: String,
    pub outcome: Outcome,
    /// The error or result line.
    pub detail: String,
}

/// A stored event, as `audit` lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Record {
    pub id: i64,
    #[serde(rename = "time", serialize_with = "time_str")]
    pub at: i64,
    pub actor: String,
    pub source: String,
    pub project: Option<String>,
    pub action: String,
    pub target: String,
    pub args: String,
    pub outcome: String,
    pub detail: String,
}

fn time_str<S: serde::Serializer>(ms: &i64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*ms))
}

impl Record {
    pub fn time(&self) -> String {
        format_time(self.at)
    }
}

/// Denied events one account may have stored: a burst of
/// [`DENIAL_BURST`], then [`DENIALS_PER_SECOND`]. Past that they are only
/// logged, so one account cannot grow the audit table without bound.
pub const DENIAL_BURST: f64 = 30.0;
pub const DENIALS_PER_SECOND: f64 = 1.0;

static DENIAL_BUDGETS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
> = std::sync::LazyLock::new(Default::default);

/// Takes one token of `actor`'s denial budget; false when it is spent.
pub fn admit_denial(actor: &str) -> bool {
    let now = std::time::Instant::now();
    let mut map = DENIAL_BUDGETS.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() > 100_000 {
        // Full buckets carry no state worth keeping.
        map.retain(|_, (t, at)| {
            *t + at.elapsed().as_secs_f64() * DENIALS_PER_SECOND < DENIAL_BURST
        });
    }
    let (tokens, at) = map.entry(actor.to_string()).or_insert((DENIAL_BURST, now));
    *tokens =
        (*tokens + now.duration_since(*at).as_secs_f64() * DENIALS_PER_SECOND).min(DENIAL_BURST);
    *at = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        if *tokens > 0.5 {
            tracing::warn!(actor = %actor, "denied requests arrive faster than they are audited; further ones are logged only");
        }
        false
    }
}

/// Longest text kept in one field. A command line is at most 4 KiB
/// (`commands::MAX_LINE`), so `args` is kept whole.
const MAX_FIELD: usize = 4096;

fn clip(s: &str) -> String {
    clip_to(s, MAX_FIELD)
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` when
/// it was cut.
pub fn clip_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Store {
    /// Writes one event. Failing to audit is an error the caller must see:
    /// an action that cannot be audited should not pass silently.
    pub async fn audit(&self, e: &Event) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_events (at, actor, source, project, action, target, args, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(now_ms())
        .bind(clip(&e.actor))
        .bind(clip(&e.source))
        .bind(e.project.clone())
        .bind(clip(&e.action))
        .bind(clip(&e.target))
        .bind(clip(&e.args))
        .bind(e.outcome.as_str())
        .bind(clip(&e.detail))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The newest `limit` events, of one project or of all, newest first.
    pub async fn audit_events(&self, project: Option<&str>, limit: i64) -> Result<Vec<Record>> {
        let rows = match project {
            Some(p) => {
                sqlx::query_as(
                    "SELECT id, at, actor, source, project, action, target, args, outcome, detail FROM audit_events \
                     WHERE project = $1 ORDER BY id DESC LIMIT $2",
                )
                .bind(p)
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query_as(
                    "SELECT id, at, actor, source, project, action, target, args, outcome, detail FROM audit_events \
                     ORDER BY id DESC LIMIT $1",
                )
                .bind(limit)
                .fetch_all(self.pool())
                .await?
            }
        };
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_fields_are_clipped_on_a_char_boundary() {
        let s = "é".repeat(3000);
        let c = super::clip(&s);
        assert!(c.len() <= super::MAX_FIELD + '…'.len_utf8());
        assert!(c.ends_with('…'));
    }
}
