//! The SSH command language (interface.md §4): parse a command line into an
//! [`grammar::Invocation`], decide with [`crate::policy::authorize`], act on
//! the store, and answer with text or JSON and an exit status. Every command
//! is one audit event. Nothing here knows about SSH.

mod cluster;
pub use cluster::kube_api_of;
pub mod grammar;
mod info;
mod member;
mod session;
mod volume;

use serde::Serialize;

use crate::audit::{Event, Outcome};
use crate::model::{Name, Role};
use crate::output::{CmdError, json};
use crate::policy::{Action, Decision, authorize};
use crate::store::{Account, Store};
use grammar::{Cmd, Invocation};

/// Longest command line accepted, in bytes, exec and shell alike.
pub const MAX_LINE: usize = 4096;

/// A live session as the command layer sees it; the gateway's registry
/// provides these.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: String,
    #[serde(skip)]
    pub account_id: i64,
    pub login: String,
    pub source: String,
    pub started: String,
    pub channels: Vec<ChannelInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    /// `shell`, `exec` or `forward`.
    pub kind: String,
    /// The project it acts in, when known.
    pub project: Option<String>,
    /// For forwards, the target as the client named it.
    pub target: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What the command layer needs from the live-session registry.
pub trait Sessions: Send + Sync {
    fn list(&self) -> Vec<SessionInfo>;
    /// Open forwards on this gateway to these nodes of a project's cluster.
    fn forwards_to(&self, project: &str, cluster: &str, nodes: &[String]) -> usize;
    /// A revocation was just written: apply it now rather than at the next poll.
    fn nudge(&self);
}

/// Who is asking, from where, and how they can be answered.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub account: &'a Account,
    /// `IP:PORT` of the client.
    pub source: &'a str,
    /// The shell's current project (`use`), if any.
    pub current_project: Option<&'a str>,
    /// True when a person can be asked to confirm (a terminal).
    pub interactive: bool,
    /// True in the shell (with or without a terminal), where `use PROJECT`
    /// chooses the project.
    pub in_shell: bool,
    /// The exec channel's standard input, for `key add` and `cluster
    /// credential set`.
    pub stdin: Stdin<'a>,
    /// Set when a command asked for [`Stdin::Pending`] input: it stopped
    /// there, unaudited, and is to be run again with its input. Holds what
    /// its permission to read it rested on (see [`Ctx::stdin`]).
    pub stdin_wanted: std::sync::Mutex<Option<String>>,
    pub sessions: &'a dyn Sessions,
    /// The operator's rules for what forwards may reach: values a project
    /// admin sets (`kube_api`, `dashboard`) are held to them.
    pub reach: &'a crate::reach::Rules,
    /// The gateway's CA certificate (PEM), which `kubeconfig` hands out.
    pub kube_ca_pem: &'a str,
    /// The port the gateway listens on, for the ssh commands it suggests
    /// (`ssh -p 2222 …`); `None` when unknown.
    pub gateway_port: Option<u16>,
}

/// A command's standard input.
#[derive(Clone, Copy, Debug)]
pub enum Stdin<'a> {
    /// None: a shell line, or a command that reads none.
    None,
    /// Not read yet. A command that needs it stops where it asks, after
    /// its permission checks, and [`Response::needs_stdin`] says so: the
    /// channel reads it only then, so nobody waits on a pipe to be told
    /// they may not.
    Pending,
    /// Read, after a first run that stopped at [`Stdin::Pending`] having
    /// checked `checked` (what [`Response::needs_stdin`] carried back), or
    /// `None` when read up front.
    Read {
        text: &'a str,
        checked: Option<&'a str>,
    },
    /// It could not be read (not text, too large, not closed in time, a
    /// terminal): why.
    Unreadable(&'a str),
}

/// The result of one command line.
#[derive(Debug)]
pub struct Response {
    pub stdout: String,
    /// One line, already prefixed `error: ` or `permission denied: `.
    pub stderr: Option<String>,
    pub code: u32,
    /// Set when the command waits for a yes/no; re-run with `yes` to go on.
    pub confirm: Option<String>,
    /// `use PROJECT` succeeded.
    pub switch_project: Option<String>,
    pub exit: bool,
    /// The command's name (`cluster delete`), or `invalid` when it did not
    /// parse: a bounded label for metrics.
    pub command: &'static str,
    /// The command got as far as reading [`Stdin::Pending`] input: run it
    /// again with the input and this (as [`Stdin::Read`]'s `checked`);
    /// nothing was done or audited.
    pub needs_stdin: Option<String>,
}

impl Default for Response {
    fn default() -> Self {
        Response {
            stdout: String::new(),
            stderr: None,
            code: 0,
            confirm: None,
            switch_project: None,
            exit: false,
            command: "invalid",
            needs_stdin: None,
        }
    }
}

/// What a command produced when it succeeded.
enum Reply {
    Text(String),
    /// Ask this question, then run again with confirmation.
    Confirm(String),
    Switch(String),
    Exit,
}

type Outcome_ = Result<Reply, CmdError>;

/// Splits an exec request the way a POSIX shell would (quotes, escapes).
pub fn split_line(line: &str) -> Result<Vec<String>, CmdError> {
    if line.len() > MAX_LINE {
        return Err(CmdError::Usage(format!(
            "command line too long ({} bytes, at most {MAX_LINE}); nothing was run",
            line.len()
        )));
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(CmdError::Usage(
            "command line contains control characters or NUL; nothing was run".into(),
        ));
    }
    if line.chars().any(crate::model::is_format_char) {
        return Err(CmdError::Usage(
            "command line contains invisible formatting characters (such as U+202E); nothing was run"
                .into(),
        ));
    }
    shell_words::split(line)
        .map_err(|_| CmdError::Usage("unbalanced quotes in the command line".into()))
}

/// Turns raw exec bytes into a checked line.
pub fn decode_line(bytes: &[u8]) -> Result<String, CmdError> {
    if bytes.len() > MAX_LINE {
        return Err(CmdError::Usage(format!(
            "command line too long ({} bytes, at most {MAX_LINE}); nothing was run",
            bytes.len()
        )));
    }
    String::from_utf8(bytes.to_vec())
        .map_err(|_| CmdError::Usage("command line is not valid UTF-8; nothing was run".into()))
}

/// Parses words with clap; help requests come back as text to print.
fn parse(words: &[String]) -> Result<Result<Invocation, String>, CmdError> {
    use clap::Parser;
    use clap::error::ErrorKind;
    match Invocation::try_parse_from(words) {
        Ok(inv) => Ok(Ok(inv)),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(Err(e.render().to_string())),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
                let rendered = e.render().to_string();
                if words.is_empty() {
                    Ok(Err(rendered))
                } else {
                    Err(CmdError::Usage(format!(
                        "`{}` needs a subcommand; run `help {}`",
                        words.join(" "),
                        words.join(" ")
                    )))
                }
            }
            _ => {
                let rendered = e.render().to_string();
                let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
                let first = lines.next().unwrap_or("invalid command");
                let mut msg = first.strip_prefix("error: ").unwrap_or(first).to_string();
                if msg.ends_with(':') {
                    // "the following required arguments were not provided:"
                    let list: Vec<&str> = lines.take_while(|l| !l.starts_with("Usage:")).collect();
                    msg = format!("{msg} {}", list.join(" "));
                }
                // The (sub)commands named, not their arguments: `help
                // kubeconfig`, never `help kubeconfig a100s`.
                let mut topic = Vec::new();
                let mut level = <Invocation as clap::CommandFactory>::command();
                for w in command_words(words) {
                    let Some(sub) = level.find_subcommand(w).cloned() else {
                        break;
                    };
                    topic.push(w);
                    level = sub;
                }
                let topic = topic.join(" ");
                let hint = if topic.is_empty() || e.kind() == ErrorKind::InvalidSubcommand {
                    "run `help` for the list of commands".to_string()
                } else {
                    format!("run `help {topic}`")
                };
                Err(CmdError::Usage(format!(
                    "{}; {hint}",
                    msg.trim_end_matches('.')
                )))
            }
        },
    }
}

/// The command's name for messages and audit: `cluster delete`.
fn label(cmd: &Cmd) -> &'static str {
    use grammar::*;
    match cmd {
        Cmd::Whoami => "whoami",
        Cmd::Project(_) => "project list",
        Cmd::Cluster(c) => match c {
            ClusterCmd::List => "cluster list",
            ClusterCmd::Show { .. } => "cluster show",
            ClusterCmd::Create { .. } => "cluster create",
            ClusterCmd::Delete { .. } => "cluster delete",
            ClusterCmd::Scale { .. } => "cluster scale",
            ClusterCmd::Config { settings, .. } if settings.is_empty() => "cluster config",
            ClusterCmd::Config { .. } => "cluster config set",
            ClusterCmd::Credential(CredentialCmd::Set { .. }) => "cluster credential set",
            ClusterCmd::Credential(CredentialCmd::Clear { .. }) => "cluster credential clear",
        },
        Cmd::Node(_) => "node list",
        Cmd::Volume(c) => match c {
            VolumeCmd::List => "volume list",
            VolumeCmd::Show { .. } => "volume show",
            VolumeCmd::Create { .. } => "volume create",
            VolumeCmd::Delete { .. } => "volume delete",
        },
        Cmd::Member(c) => match c {
            MemberCmd::List => "member list",
            MemberCmd::Add { .. } => "member add",
            MemberCmd::Remove { .. } => "member remove",
            MemberCmd::Role { .. } => "member role",
        },
        Cmd::Key(c) => match c {
            KeyCmd::List => "key list",
            KeyCmd::Add { .. } => "key add",
            KeyCmd::Remove { .. } => "key remove",
        },
        Cmd::Kubeconfig(_) => "kubeconfig",
        Cmd::Session(c) => match c {
            SessionCmd::List => "session list",
            SessionCmd::Kill { .. } => "session kill",
        },
        Cmd::Audit { .. } => "audit",
        Cmd::Use { .. } => "use",
        Cmd::Exit => "exit",
    }
}

/// A project the caller asked to act in, and their role there (if any).
pub(crate) struct Scope {
    pub name: String,
    pub id: i64,
    pub role: Option<Role>,
}

impl<'a> Ctx<'a> {
    /// The standard input read for this command, if any. `checked` is
    /// what the input is meant for, beyond the caller's permission (which
    /// is checked again anyway): the cluster and API server a credential
    /// is for. Errors: why it could not be read (exit 2); `changed`, exit
    /// status 1, when `checked` is no longer what the first run saw before
    /// the input was read; not read yet ([`Stdin::Pending`]), which
    /// [`execute`] turns into [`Response::needs_stdin`].
    fn stdin(&self, checked: &str, changed: &str) -> Result<Option<&'a str>, CmdError> {
        match self.stdin {
            Stdin::None => Ok(None),
            Stdin::Read {
                checked: Some(before),
                ..
            } if before != checked => Err(CmdError::Failed(changed.to_string())),
            Stdin::Read { text, .. } => Ok(Some(text)),
            Stdin::Unreadable(why) => Err(CmdError::Usage(why.to_string())),
            Stdin::Pending => {
                *self.stdin_wanted.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(checked.to_string());
                Err(CmdError::Failed("standard input not read yet".into()))
            }
        }
    }

    /// Which project a command acts in: `--project`, else the shell's
    /// current one, else the only one the caller belongs to.
    async fn scope(&self, inv: &Invocation) -> Result<Scope, CmdError> {
        let named = inv.project.as_deref().or(self.current_project);
        let name = match named {
            Some(n) => Name::parse("project", n)?.to_string(),
            None => {
                let mine = self.store.memberships_of(self.account.id).await?;
                match mine.as_slice() {
                    [one] => one.project.clone(),
                    [] => {
                        return Err(CmdError::Denied(
                            "you are not a member of any project; ask a project admin to add you"
                                .into(),
                        ));
                    }
                    many => {
                        let names: Vec<&str> = many.iter().map(|m| m.project.as_str()).collect();
                        let how = if self.in_shell {
                            "`use PROJECT` (or add --project NAME)"
                        } else {
                            "--project NAME after the command"
                        };
                        return Err(CmdError::Usage(format!(
                            "you belong to several projects ({}): choose one with {how}",
                            names.join(", ")
                        )));
                    }
                }
            }
        };
        let m = self.store.membership(self.account.id, &name).await?;
        Ok(Scope {
            name,
            id: m.as_ref().map(|m| m.project_id).unwrap_or(0),
            role: m.map(|m| m.role),
        })
    }

    /// The one place commands ask the policy; returns the project id.
    fn authorize(&self, scope: &Scope, action: Action, what: &str) -> Result<i64, CmdError> {
        match authorize(scope.role, action) {
            Decision::Allow => Ok(scope.id),
            Decision::DenyNotMember => Err(no_access(&scope.name)),
            Decision::DenyRole => Err(CmdError::Denied(format!(
                "`{what}` needs the admin role in project {}; you are a member (ask a project admin)",
                scope.name
            ))),
        }
    }
}

/// The answer for a project that does not exist and for one the caller is
/// not in: the same words, so project names do not leak.
pub(crate) fn no_access(project: &str) -> CmdError {
    CmdError::Denied(format!(
        "no access to project {project} (it does not exist or you are not a member)"
    ))
}

/// Confirmation gate of destructive commands.
fn confirm_or_refuse(ctx: &Ctx<'_>, yes: bool, question: String, what: &str) -> Option<Outcome_> {
    if yes {
        None
    } else if ctx.interactive {
        Some(Ok(Reply::Confirm(question)))
    } else {
        Some(Err(CmdError::Usage(format!(
            "`{what}` needs confirmation: add --yes to run it without a terminal; nothing was changed"
        ))))
    }
}

/// What a command learned about itself while running, for its audit event.
#[derive(Default)]
struct Noted {
    /// The project it acted in.
    project: Option<String>,
    /// What it acted on, when only known once it ran (a key's fingerprint).
    target: Option<String>,
}

/// Runs one command line (already split into words) and audits it.
/// `confirmed` is true on the second run after the user answered yes.
pub async fn execute(ctx: &Ctx<'_>, words: &[String], confirmed: bool) -> Response {
    let failed_line = Recorded::failed(words);
    let json_wanted = words.iter().any(|w| w == "--json");
    if credential_in_arguments(words) {
        let e = CmdError::Usage(
            "`cluster credential set CLUSTER` takes the credential on stdin, never as an argument (it would stay in shell history and process lists): pipe it, e.g. `ssh GW cluster credential set CLUSTER < token`".into(),
        );
        audit(ctx, "invalid", None, &failed_line, "", Some(&e)).await;
        return error_response(e, json_wanted);
    }
    let parsed = match parse(words) {
        Ok(Ok(inv)) => inv,
        Ok(Err(help)) => {
            return Response {
                stdout: help,
                command: "help",
                ..Response::default()
            };
        }
        Err(e) => {
            audit(
                ctx,
                "invalid",
                None,
                &Recorded::invalid(words),
                "",
                Some(&e),
            )
            .await;
            return error_response(e, json_wanted);
        }
    };
    let mut noted = Noted::default();
    let result = dispatch(ctx, &parsed, confirmed, &mut noted).await;
    let wanted = ctx
        .stdin_wanted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if wanted.is_some() {
        return Response {
            needs_stdin: wanted,
            command: label(&parsed.command),
            ..Response::default()
        };
    }
    let command = label(&parsed.command);
    let target = noted
        .target
        .take()
        .unwrap_or_else(|| target_of(&parsed.command));
    let project = noted.project.as_deref();
    let mut response = match result {
        // Nothing has happened yet; the run after the answer is audited.
        Ok(Reply::Confirm(question)) => Response {
            confirm: Some(question),
            ..Response::default()
        },
        Ok(reply) => {
            if !matches!(parsed.command, Cmd::Use { .. } | Cmd::Exit) {
                audit(ctx, command, project, &Recorded::of(words), &target, None).await;
            }
            match reply {
                Reply::Text(stdout) => Response {
                    stdout,
                    ..Response::default()
                },
                Reply::Switch(p) => Response {
                    switch_project: Some(p),
                    ..Response::default()
                },
                Reply::Exit => Response {
                    exit: true,
                    ..Response::default()
                },
                Reply::Confirm(_) => unreachable!("handled above"),
            }
        }
        Err(e) => {
            audit(ctx, command, project, &failed_line, &target, Some(&e)).await;
            error_response(e, parsed.json)
        }
    };
    response.command = command;
    response
}

/// `{"error": MESSAGE, "kind": "usage", "exit": 2}` under `--json` (the
/// message without the `error: ` prefix the stderr line has).
fn error_response(e: CmdError, as_json: bool) -> Response {
    #[derive(Serialize)]
    struct JsonError<'a> {
        error: &'a str,
        kind: &'a str,
        exit: u32,
    }
    let line = e.line();
    Response {
        stdout: if as_json {
            json(&JsonError {
                error: &e.to_string(),
                kind: e.outcome().as_str(),
                exit: e.exit_code(),
            })
        } else {
            String::new()
        },
        stderr: Some(line),
        code: e.exit_code(),
        ..Response::default()
    }
}

/// The object a command acts on, for the audit log.
fn target_of(cmd: &Cmd) -> String {
    use grammar::*;
    match cmd {
        Cmd::Cluster(
            ClusterCmd::Show { cluster }
            | ClusterCmd::Create { cluster, .. }
            | ClusterCmd::Delete { cluster, .. }
            | ClusterCmd::Scale { cluster, .. }
            | ClusterCmd::Config { cluster, .. }
            | ClusterCmd::Credential(
                CredentialCmd::Set { cluster } | CredentialCmd::Clear { cluster },
            ),
        ) => cluster.clone(),
        Cmd::Kubeconfig(a) => a.cluster.clone(),
        Cmd::Volume(
            VolumeCmd::Show { volume }
            | VolumeCmd::Create { volume, .. }
            | VolumeCmd::Delete { volume, .. },
        ) => volume.clone(),
        Cmd::Member(
            MemberCmd::Add { email, .. }
            | MemberCmd::Remove { email, .. }
            | MemberCmd::Role { email, .. },
        ) => email.clone(),
        Cmd::Key(KeyCmd::Remove { fingerprint }) => fingerprint.clone(),
        Cmd::Session(SessionCmd::Kill { id }) => id.clone(),
        _ => String::new(),
    }
}

/// The words of a command line after its global options (`-p NAME`,
/// `--project NAME`, `--project=NAME`, `--json`).
pub(crate) fn command_words(words: &[String]) -> Vec<&str> {
    let mut rest = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "-p" | "--project" => {
                it.next();
            }
            "--json" | "--" => {}
            w if w.starts_with("--project=") => {}
            w => rest.push(w),
        }
    }
    rest
}

/// Whether a `cluster credential …` line carries more than its cluster: a
/// secret typed where it must not go.
fn credential_in_arguments(words: &[String]) -> bool {
    matches!(
        command_words(words).as_slice(),
        ["cluster", "credential", _, _, _, ..]
    )
}

/// A command line as the audit log and the log keep it: whole, except
/// what may be a secret typed in the wrong place, which is recorded as
/// `[not recorded]` there and in the error that quotes it.
pub(crate) struct Recorded {
    pub line: String,
    hidden: Vec<String>,
}

impl Recorded {
    /// A command line that ran: hides the words after `cluster credential
    /// set|clear CLUSTER`, the values of keys `cluster config` does not
    /// know, and any word that looks like a token ([`looks_secret`]).
    pub(crate) fn of(words: &[String]) -> Recorded {
        Recorded::new(words, false)
    }

    /// A command line that failed (or was refused): as [`Recorded::of`],
    /// and a failed `cluster credential …` line keeps only its own words
    /// (`cluster credential set|clear`, `--json`, `-p`): whatever else it
    /// holds may be the credential typed where the cluster or project goes,
    /// which a line that worked cannot (it named a real cluster).
    pub(crate) fn failed(words: &[String]) -> Recorded {
        Recorded::new(words, true)
    }

    /// A command line that did not parse: only the words of the command
    /// language (command names, option names) are kept. It ran nothing,
    /// and what else it holds is as likely a secret pasted into the wrong
    /// place (a token on a shell line of its own, a look-alike of
    /// `credential`) as a misspelt argument.
    pub(crate) fn invalid(words: &[String]) -> Recorded {
        let own = grammar_words();
        let mut hidden = Vec::new();
        let kept: Vec<String> = words
            .iter()
            .map(|w| {
                let (name, value) = match w.split_once('=') {
                    Some((k, v)) if k.starts_with('-') => (k, Some(v)),
                    _ => (w.as_str(), None),
                };
                match value {
                    _ if !own.contains(name) => {
                        hidden.push(w.clone());
                        NOT_RECORDED.to_string()
                    }
                    Some(v) => {
                        hidden.push(v.to_string());
                        format!("{name}={NOT_RECORDED}")
                    }
                    None => w.clone(),
                }
            })
            .collect();
        hidden.retain(|s| !s.is_empty());
        hidden.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Recorded {
            line: shell_words::join(kept),
            hidden,
        }
    }

    fn new(words: &[String], failed: bool) -> Recorded {
        const OWN: [&str; 7] = [
            "cluster",
            "credential",
            "set",
            "clear",
            "--json",
            "-p",
            "--project",
        ];
        let command = command_words(words);
        // A failed line that so much as mentions a credential, misspelt or
        // mis-cased too (`cluster credentials set C TOKEN`, `help cluster
        // credential set TOKEN`), may hold one anywhere.
        let about_credential = failed
            && words
                .iter()
                .any(|w| w.to_ascii_lowercase().contains("cred"));
        let hidden = |w: &str| -> bool {
            let by_place = match command.as_slice() {
                _ if about_credential => !OWN.contains(&w),
                ["cluster", "credential", _, _, more @ ..] => more.contains(&w),
                ["cluster", "config", _, settings @ ..] => {
                    settings.contains(&w)
                        && w.split_once('=')
                            .is_some_and(|(k, _)| !cluster::CONFIG_KEYS.contains(&k))
                }
                _ => false,
            };
            by_place || looks_secret(w.split_once('=').map_or(w, |(_, v)| v))
        };
        let mut secrets = Vec::new();
        let kept: Vec<String> = words
            .iter()
            .map(|w| {
                if !hidden(w) {
                    return w.clone();
                }
                secrets.push(w.clone());
                match w.split_once('=') {
                    Some((k, v)) => {
                        secrets.push(v.to_string());
                        format!("{k}=[not recorded]")
                    }
                    None => "[not recorded]".to_string(),
                }
            })
            .collect();
        // Longest first, so a value inside its `key=value` is not left half.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.retain(|s| !s.is_empty());
        Recorded {
            line: shell_words::join(kept),
            hidden: secrets,
        }
    }

    /// `text` (an error, a target) without the hidden words, in any ASCII
    /// case (an error may suggest the lower-case form of a name):
    /// everywhere for those of [`SCRUB_MIN`] characters or more, else only
    /// where they stand as a word of their own (`colour=c` must not blank
    /// every c).
    pub(crate) fn scrub(&self, text: &str) -> String {
        self.hidden.iter().fold(text.to_string(), |t, w| {
            let word_char = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
            // ASCII lower-casing keeps every byte where it was.
            let (lower, wl) = (t.to_ascii_lowercase(), w.to_ascii_lowercase());
            let mut out = String::with_capacity(t.len());
            let mut from = 0;
            while let Some(found) = lower[from..].find(&wl) {
                let at = from + found;
                let end = at + wl.len();
                let alone =
                    !word_char(t[..at].chars().next_back()) && !word_char(t[end..].chars().next());
                out.push_str(&t[from..at]);
                if w.len() >= SCRUB_MIN || alone {
                    out.push_str(NOT_RECORDED);
                } else {
                    out.push_str(&t[at..end]);
                }
                from = end;
            }
            out.push_str(&t[from..]);
            out
        })
    }
}

/// The words of the command language: every command and subcommand name
/// and every option's `--long` and `-s` form, from the grammar itself.
fn grammar_words() -> &'static std::collections::HashSet<String> {
    static WORDS: std::sync::OnceLock<std::collections::HashSet<String>> =
        std::sync::OnceLock::new();
    WORDS.get_or_init(|| {
        fn walk(cmd: &clap::Command, words: &mut std::collections::HashSet<String>) {
            words.insert(cmd.get_name().to_string());
            for arg in cmd.get_arguments() {
                if let Some(l) = arg.get_long() {
                    words.insert(format!("--{l}"));
                }
                if let Some(s) = arg.get_short() {
                    words.insert(format!("-{s}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, words);
            }
        }
        let mut words = std::collections::HashSet::from(["help".to_string(), "--".to_string()]);
        walk(&<Invocation as clap::CommandFactory>::command(), &mut words);
        words
    })
}

/// Whether a word holds something that looks like a token or key material
/// rather than anything a command takes: an unbroken run of at least
/// [`TOKEN_RUN`] base64 or hex characters with letters and digits both,
/// wherever it is in the word (`user:TOKEN`, a token with a trailing
/// no-break space). Names break into short runs at `-` and `.`
/// (`prod-training-cluster-01`); key fingerprints (`SHA256:…`) are public
/// and kept.
fn looks_secret(word: &str) -> bool {
    !word.starts_with("SHA256:")
        && word
            .split(|c: char| !(c.is_ascii_alphanumeric() || "_+/=".contains(c)))
            .any(|run| {
                run.len() >= TOKEN_RUN
                    && run.chars().any(|c| c.is_ascii_digit())
                    && run.chars().any(|c| c.is_ascii_alphabetic())
            })
}

/// The shortest run of token characters taken for a token: 40-character
/// hex tokens and JWT segments are longer, logins and names shorter.
const TOKEN_RUN: usize = 24;

/// Hidden words shorter than this are hidden in the texts that quote them
/// only where they stand alone: a short value (`colour=c`) would blank
/// letters everywhere.
const SCRUB_MIN: usize = 8;

const NOT_RECORDED: &str = "[not recorded]";

/// Records a command line that could not be read as words (not UTF-8, an
/// open quote, control characters, over-long) as an `invalid` event,
/// without the line: it is what could not be shown.
pub async fn audit_unreadable(ctx: &Ctx<'_>, e: &CmdError) {
    let recorded = Recorded {
        line: "[not recorded: the line could not be read]".into(),
        hidden: Vec::new(),
    };
    audit(ctx, "invalid", None, &recorded, "", Some(e)).await;
}

/// Records one command as an audit event and a log line: `command` is its
/// name, `line` the whole command line as typed, `error` how it failed, if
/// it did. The outcome words are the metric's (ok, usage, denied, failed).
async fn audit(
    ctx: &Ctx<'_>,
    command: &str,
    project: Option<&str>,
    recorded: &Recorded,
    target: &str,
    error: Option<&CmdError>,
) {
    let (outcome, detail) = match error {
        None => (Outcome::Ok, String::new()),
        Some(e) => (e.outcome(), recorded.scrub(&e.to_string())),
    };
    let target = recorded.scrub(target);
    let line = recorded.line.as_str();
    let event = Event {
        actor: ctx.account.login.clone(),
        source: ctx.source.to_string(),
        project: project.map(str::to_string),
        action: command.to_string(),
        target,
        args: line.to_string(),
        outcome,
        detail,
    };
    tracing::info!(
        account = %ctx.account.login,
        source = %ctx.source,
        project = project.unwrap_or("-"),
        command = command,
        args = %crate::model::printable(line, 200),
        outcome = outcome.as_str(),
        "command"
    );
    if outcome == Outcome::Denied && !crate::audit::admit_denial(&ctx.account.login) {
        // Logged above; not stored, so one account cannot flood the table.
        return;
    }
    if let Err(e) = ctx.store.audit(&event).await {
        tracing::error!(error = %e, "cannot write audit event");
    }
}

async fn dispatch(ctx: &Ctx<'_>, inv: &Invocation, confirmed: bool, noted: &mut Noted) -> Outcome_ {
    let as_json = inv.json;
    // Commands about the caller themself need no project.
    match &inv.command {
        Cmd::Whoami => return info::whoami(ctx, as_json).await,
        Cmd::Project(_) => return info::project_list(ctx, as_json).await,
        Cmd::Key(k) => return info::key(ctx, k, as_json, &mut noted.target).await,
        Cmd::Exit => return Ok(Reply::Exit),
        Cmd::Use { project } => {
            let name = Name::parse("project", project)?;
            return match ctx.store.membership(ctx.account.id, name.as_str()).await? {
                Some(_) => {
                    noted.project = Some(name.to_string());
                    Ok(Reply::Switch(name.to_string()))
                }
                None => Err(no_access(name.as_str())),
            };
        }
        _ => {}
    }
    let scope = ctx.scope(inv).await?;
    // A stranger's denial is not the project's event: it is stored without
    // the project (which may not even exist yet), so nobody writes into an
    // audit log that is not theirs.
    noted.project = scope.role.map(|_| scope.name.clone());
    let what = label(&inv.command);
    match &inv.command {
        Cmd::Cluster(c) => cluster::run(ctx, &scope, c, as_json, confirmed, what).await,
        Cmd::Node(grammar::NodeCmd::List { cluster }) => {
            cluster::node_list(ctx, &scope, cluster.as_deref(), as_json, what).await
        }
        Cmd::Kubeconfig(a) => cluster::kubeconfig(ctx, &scope, a, as_json, what).await,
        Cmd::Volume(c) => volume::run(ctx, &scope, c, as_json, confirmed, what).await,
        Cmd::Member(c) => member::run(ctx, &scope, c, as_json, confirmed, what).await,
        Cmd::Session(c) => session::run(ctx, &scope, c, as_json, what).await,
        Cmd::Audit { limit } => session::audit(ctx, &scope, limit, as_json, what).await,
        Cmd::Whoami | Cmd::Project(_) | Cmd::Key(_) | Cmd::Exit | Cmd::Use { .. } => {
            unreachable!("handled above")
        }
    }
}

/// `{"result": "..."}` for changes under `--json`, the text otherwise.
fn done(message: String, as_json: bool) -> Outcome_ {
    #[derive(Serialize)]
    struct Done {
        result: String,
    }
    Ok(Reply::Text(if as_json {
        json(&Done { result: message })
    } else {
        format!("{message}\n")
    }))
}

fn text(s: String) -> Outcome_ {
    Ok(Reply::Text(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    fn line(s: &str) -> String {
        Recorded::of(&words(s)).line
    }

    #[test]
    fn secrets_typed_in_the_wrong_place_are_not_recorded() {
        assert_eq!(
            line("cluster credential set c1 tok-123"),
            "cluster credential set c1 '[not recorded]'"
        );
        assert_eq!(
            line("-p train cluster credential set c1 --token tok-123"),
            "-p train cluster credential set c1 '[not recorded]' '[not recorded]'"
        );
        assert_eq!(
            line("cluster credential set c1"),
            "cluster credential set c1"
        );
        assert_eq!(
            line("cluster config c1 token=abc description=x"),
            "cluster config c1 'token=[not recorded]' 'description=x'"
        );
        assert_eq!(line("eyJhbGciOiJSUzI1NiIsImtpZCI6"), "'[not recorded]'");
        assert_eq!(
            line("kubeconfig-u-ab12c:2040fc8d9e1b3a4c5d6e7f80"),
            "'[not recorded]'"
        );
        assert_eq!(
            line("cluster delete prod-training-cluster-01"),
            "cluster delete prod-training-cluster-01"
        );
        assert_eq!(
            line("cluster config c1 node_user=svcaccount2024runner"),
            "cluster config c1 'node_user=svcaccount2024runner'"
        );
        let words: Vec<String> = ["cluster", "config", "c1", "colour=c"]
            .map(String::from)
            .to_vec();
        let r = Recorded::of(&words);
        assert_eq!(r.line, "cluster config c1 'colour=[not recorded]'");
        assert_eq!(
            r.scrub("unknown config key \"colour\""),
            "unknown config key \"colour\"",
            "a short hidden value does not blank letters elsewhere"
        );
        assert_eq!(
            line("cluster config c1 kube_api=abcdef0123456789abcdef0123"),
            "cluster config c1 'kube_api=[not recorded]'"
        );
        assert_eq!(
            line("cluster credential set 4f1c9a7e2b8d60354f1c9a7e"),
            "cluster credential set '[not recorded]'"
        );
        let words: Vec<String> = ["-p", "train", "TTYTOK-3c84aa0912ff7e02d6e5f7a9"]
            .map(String::from)
            .to_vec();
        let r = Recorded::of(&words);
        assert_eq!(
            r.scrub("unrecognized subcommand 'TTYTOK-3c84aa0912ff7e02d6e5f7a9'"),
            "unrecognized subcommand '[not recorded]'"
        );
        assert_eq!(
            line("key remove SHA256:OWw7urdZgcCx1G0atwl/HoOCneMTAKCLwCnm+DFCGF4"),
            "key remove SHA256:OWw7urdZgcCx1G0atwl/HoOCneMTAKCLwCnm+DFCGF4"
        );
        // Ordinary lines, mistakes included, are kept whole.
        assert_eq!(
            line("member add bob@example.com"),
            "member add bob@example.com"
        );
        assert_eq!(line("clster list"), "clster list");
        assert_eq!(line("whoami"), "whoami");
        let words: Vec<String> = ["cluster", "credential", "set", "c1", "x"]
            .map(String::from)
            .to_vec();
        assert!(credential_in_arguments(&words));
        assert!(!credential_in_arguments(&words[..4]));
    }

    #[test]
    fn usage_errors_point_at_help_that_works() {
        let hint = |s: &str| match parse(&words(s)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{s} parsed"),
        };
        assert!(hint("kubeconfig a100s --bogus").ends_with("run `help kubeconfig`"));
        assert!(
            hint("-p train cluster create c1 --bogus").ends_with("run `help cluster create`"),
            "{}",
            hint("-p train cluster create c1 --bogus")
        );
        assert!(hint("--bogus").ends_with("run `help` for the list of commands"));
    }

    #[test]
    fn a_failed_credential_line_keeps_only_its_own_words() {
        let failed = |s: &str| Recorded::failed(&words(s));
        // A short secret where the cluster or project goes, or as an option.
        let r = failed("cluster credential set s3cr3t");
        assert_eq!(r.line, "cluster credential set '[not recorded]'");
        assert_eq!(
            r.scrub("invalid cluster name \"s3cr3t\": no cluster s3cr3t"),
            "invalid cluster name \"[not recorded]\": no cluster [not recorded]"
        );
        assert_eq!(
            failed("cluster credential set --token=TOK a100s").line,
            "cluster credential set '--token=[not recorded]' '[not recorded]'"
        );
        assert_eq!(
            failed("-p TOK --json cluster credential clear c1").line,
            "-p '[not recorded]' --json cluster credential clear '[not recorded]'"
        );
        assert_eq!(
            failed("cluster credential TOK").line,
            "cluster credential '[not recorded]'"
        );
        // A line that worked named a real cluster, and is kept.
        assert_eq!(
            line("-p train cluster credential set c1"),
            "-p train cluster credential set c1"
        );
        // A name-like secret with capitals: errors suggest its lower case.
        let r = failed("cluster credential set HunterTwo9");
        assert_eq!(
            r.scrub("invalid cluster name \"HunterTwo9\": use \"huntertwo9\""),
            "invalid cluster name \"[not recorded]\": use \"[not recorded]\""
        );
        // Misspelt or mis-cased, or under help, it is still about one.
        for line in [
            "cluster credentials set a100s Qz09ke3109ab58bc6",
            "cluster CREDENTIAL set a100s Qz09ke3109ab58bc6",
            "help cluster credential set Qz09ke3109ab58bc6",
            "Qz09ke3109ab58bc6 cluster credential set a100s",
        ] {
            assert!(!failed(line).line.contains("Qz09"), "{line}");
        }
        // A line that does not parse keeps only the command language's
        // words: a token pasted as a line, or after a look-alike.
        let invalid = |s: &str| Recorded::invalid(&words(s));
        let r = invalid("SeCrEtTok3n");
        assert_eq!(r.line, "'[not recorded]'");
        assert_eq!(
            r.scrub("unrecognized subcommand 'SeCrEtTok3n'"),
            "unrecognized subcommand '[not recorded]'"
        );
        assert_eq!(
            invalid("cluster cr\u{435}dential set c1 tok").line,
            "cluster '[not recorded]' set '[not recorded]' '[not recorded]'"
        );
        assert_eq!(
            invalid("cluster list --project=tok --bogus").line,
            "cluster list '--project=[not recorded]' '[not recorded]'"
        );
        assert_eq!(invalid("clster list").line, "'[not recorded]' list");
        // Other failed lines are recorded as typed.
        assert_eq!(
            failed("member add bob@example.com").line,
            "member add bob@example.com"
        );
        assert_eq!(failed("clster list").line, "clster list");
    }
}
