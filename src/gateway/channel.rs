//! Session channels: one command (`ssh gw CMD`) or the interactive shell.
//! The protocol work is here; the commands themselves are in
//! [`crate::commands`].

use std::sync::Arc;
use std::time::Duration;

use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use tokio_util::sync::CancellationToken;

use super::ConnCtx;
use super::channel_io::Io;
use super::line_editor::{Event, LineEditor};
use super::sessions::ChannelKind;
use crate::commands::grammar::completions;
use crate::commands::{Ctx, MAX_LINE, Response, Stdin, decode_line, execute, split_line};
use crate::output::CmdError;

/// Public keys (`key add`) and cluster credentials (`cluster credential
/// set`) arrive on stdin; nothing legitimate is larger.
const MAX_STDIN: usize = 64 * 1024;
const STDIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one session channel until it closes.
pub async fn run(conn: Arc<ConnCtx>, channel: Channel<Msg>, cancel: CancellationToken) {
    let mut channel = Io::new(channel, cancel);
    let mut width: Option<u32> = None;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::RequestPty { col_width, .. }) => width = Some(col_width),
            Some(ChannelMsg::WindowChange { col_width, .. }) => width = Some(col_width),
            Some(ChannelMsg::Exec { command, .. }) => {
                conn.set_channel(channel.id(), ChannelKind::Exec, None);
                let code = exec(&conn, &mut channel, &command, width).await;
                finish(&channel, code).await;
                return;
            }
            Some(ChannelMsg::RequestShell { .. }) => {
                conn.set_channel(channel.id(), ChannelKind::Shell, None);
                let code = match width {
                    Some(w) => Shell::new(&conn, w).run(&mut channel).await,
                    None => batch(&conn, &mut channel).await,
                };
                finish(&channel, code).await;
                return;
            }
            Some(ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    }
}

async fn finish(channel: &Io, code: u32) {
    let _ = channel.exit_status(code).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// Where a command line came from: what it may ask and how the project is chosen.
#[derive(Clone, Copy)]
enum Origin {
    /// `ssh gw CMD`; with a terminal it may ask for confirmation.
    Exec { tty: bool },
    /// A shell line, with a terminal or without (`ssh gw < script`).
    Shell { tty: bool },
}

fn ctx<'a>(
    conn: &'a ConnCtx,
    current: Option<&'a str>,
    origin: Origin,
    stdin: Stdin<'a>,
) -> Ctx<'a> {
    let (interactive, in_shell) = match origin {
        Origin::Exec { tty } => (tty, false),
        Origin::Shell { tty } => (tty, true),
    };
    Ctx {
        store: &conn.shared.store,
        account: &conn.account,
        source: &conn.source,
        current_project: current,
        interactive,
        in_shell,
        stdin,
        stdin_wanted: Default::default(),
        sessions: conn.shared.registry.as_ref(),
        reach: &conn.shared.reach,
        kube_ca_pem: conn.shared.kube.cert_pem(),
        gateway_port: conn.shared.config.listen_addr().ok().map(|a| a.port()),
    }
}

/// Writes a response; with a terminal, newlines become CR LF.
async fn write(channel: &Io, r: &Response, tty: bool) {
    let fix = |s: &str| {
        if tty {
            s.replace('\n', "\r\n")
        } else {
            s.to_string()
        }
    };
    if !r.stdout.is_empty() {
        let _ = channel.data(fix(&r.stdout).as_bytes()).await;
    }
    if let Some(e) = &r.stderr {
        let line = fix(&format!("{e}\n"));
        // On a terminal, stderr shares the screen with stdout, as with sshd's ptys.
        if tty {
            let _ = channel.data(line.as_bytes()).await;
        } else {
            let _ = channel.extended_data(1, line.as_bytes()).await;
        }
    }
}

async fn write_error(channel: &Io, e: &CmdError, tty: bool) -> u32 {
    let r = Response {
        stderr: Some(e.line()),
        code: e.exit_code(),
        ..Response::default()
    };
    write(channel, &r, tty).await;
    r.code
}

/// `ssh gw CMD`: one command, its exit status back through ssh.
async fn exec(conn: &ConnCtx, channel: &mut Io, command: &[u8], width: Option<u32>) -> u32 {
    let tty = width.is_some();
    let words = match decode_line(command).and_then(|l| split_line(&l)) {
        Ok(w) => w,
        Err(e) => return refuse_line(conn, channel, None, Origin::Exec { tty }, &e).await,
    };
    // A command that reads stdin runs first without it, and stops, unaudited,
    // where it needs it: a member is told no at once instead of after
    // their pipe ends, and nothing is read for a command that cannot run.
    let what = reads_stdin(&words);
    let first = ctx(
        conn,
        None,
        Origin::Exec { tty },
        if what.is_some() {
            Stdin::Pending
        } else {
            Stdin::None
        },
    );
    let mut r = execute(&first, &words, false).await;
    let read: Result<String, String>;
    let checked = r.needs_stdin.take();
    let c = match what {
        Some(what) if checked.is_some() => {
            read = if tty {
                // A terminal sends keystrokes, never an end of input.
                Err(format!(
                    "the {what} is read from a pipe, not typed at a terminal: pipe it, e.g. {}",
                    stdin_example(what)
                ))
            } else {
                read_stdin(channel, what).await
            };
            let stdin = match &read {
                Ok(text) => Stdin::Read {
                    text,
                    checked: checked.as_deref(),
                },
                Err(why) => Stdin::Unreadable(why),
            };
            let c = ctx(conn, None, Origin::Exec { tty }, stdin);
            r = execute(&c, &words, false).await;
            c
        }
        _ => first,
    };
    if let Some(question) = r.confirm.take() {
        let mut editor = LineEditor::new(MAX_LINE, width.unwrap_or(80) as usize, |_| Vec::new());
        editor.start(&format!("{question} [y/N] "));
        let answer = read_answer(channel, &mut editor).await;
        r = if answer {
            execute(&c, &words, true).await
        } else {
            cancelled()
        };
    }
    conn.shared.metrics.command(r.command, r.code);
    write(channel, &r, tty).await;
    r.code
}

/// What a command reads from stdin, if it does: `key add` with no key in
/// its arguments takes the key, `cluster credential set` the credential.
fn reads_stdin(words: &[String]) -> Option<&'static str> {
    match crate::commands::command_words(words).as_slice() {
        ["key", "add"] => Some("public key"),
        ["cluster", "credential", "set", _] => Some("credential"),
        _ => None,
    }
}

fn cancelled() -> Response {
    Response {
        stdout: "cancelled; nothing was changed\n".into(),
        code: 1,
        ..Response::default()
    }
}

/// Reads a yes/no answer through the line editor; anything but y/yes is no.
async fn read_answer(channel: &mut Io, editor: &mut LineEditor) -> bool {
    let _ = channel.data(&editor.take_output()[..]).await;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Data { data }) => {
                let events = editor.feed(&data);
                let _ = channel.data(&editor.take_output()[..]).await;
                if let Some(ev) = events.into_iter().next() {
                    return matches!(ev, Event::Line(l) if matches!(l.trim().to_ascii_lowercase().as_str(), "y" | "yes"));
                }
            }
            Some(ChannelMsg::WindowChange { col_width, .. }) => {
                editor.set_width(col_width as usize)
            }
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return false,
            Some(_) => {}
        }
    }
}

/// How to give a command the `what` it reads on stdin.
fn stdin_example(what: &str) -> &'static str {
    match what {
        "credential" => "`ssh GW cluster credential set CLUSTER < token`",
        _ => "`ssh GW key add < id_ed25519.pub`",
    }
}

/// Refuses a command line that cannot be read as words (not UTF-8, an
/// open quote, control characters, over-long), audited as `invalid`
/// without the line itself.
async fn refuse_line(
    conn: &ConnCtx,
    channel: &Io,
    current: Option<&str>,
    origin: Origin,
    e: &CmdError,
) -> u32 {
    let (Origin::Exec { tty } | Origin::Shell { tty }) = origin;
    crate::commands::audit_unreadable(&ctx(conn, current, origin, Stdin::None), e).await;
    conn.shared.metrics.command("invalid", e.exit_code());
    write_error(channel, e, tty).await
}

/// Collects stdin up to EOF, bounded in size and time; `what` names what
/// is expected there in errors.
async fn read_stdin(channel: &mut Io, what: &str) -> Result<String, String> {
    let mut buf = Vec::new();
    let read = async {
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    buf.extend_from_slice(&data);
                    if buf.len() > MAX_STDIN {
                        return Err(format!("input too large to be a {what}"));
                    }
                }
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return Ok(()),
                Some(_) => {}
            }
        }
    };
    match tokio::time::timeout(STDIN_TIMEOUT, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(format!(
                "no {what} on stdin within 60 s: pipe it, e.g. {}",
                stdin_example(what)
            ));
        }
    }
    String::from_utf8(buf).map_err(|_| format!("the {what} on stdin is not text"))
}

/// A shell without a terminal (`ssh gw < script`): each line is a command;
/// the exit status is the last command's.
async fn batch(conn: &ConnCtx, channel: &mut Io) -> u32 {
    let mut buf: Vec<u8> = Vec::new();
    let mut code = 0;
    let mut current: Option<String> = None;
    loop {
        let (data, eof) = match channel.wait().await {
            Some(ChannelMsg::Data { data }) => (data.to_vec(), false),
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => (Vec::new(), true),
            Some(_) => continue,
        };
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            // Revoked: nothing queued runs any more.
            if channel.cancelled() {
                return code;
            }
            let line: Vec<u8> = buf.drain(..=pos).collect();
            code = batch_line(conn, channel, &line[..line.len() - 1], &mut current).await;
        }
        if buf.len() > MAX_LINE {
            buf.clear();
            code = write_error(
                channel,
                &CmdError::Usage(format!(
                    "line too long (at most {MAX_LINE} bytes); nothing was run"
                )),
                false,
            )
            .await;
        }
        if eof {
            // A last line without a newline runs at a real end of input,
            // never when the channel was cut.
            if !buf.is_empty() && !channel.cancelled() {
                let line = std::mem::take(&mut buf);
                code = batch_line(conn, channel, &line, &mut current).await;
            }
            return code;
        }
    }
}

async fn batch_line(
    conn: &ConnCtx,
    channel: &Io,
    line: &[u8],
    current: &mut Option<String>,
) -> u32 {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let words = match decode_line(line).and_then(|l| split_line(&l)) {
        Ok(w) if w.is_empty() => return 0,
        Ok(w) => w,
        Err(e) => {
            let origin = Origin::Shell { tty: false };
            return refuse_line(conn, channel, current.as_deref(), origin, &e).await;
        }
    };
    let c = ctx(
        conn,
        current.as_deref(),
        Origin::Shell { tty: false },
        Stdin::None,
    );
    let r = execute(&c, &words, false).await;
    conn.shared.metrics.command(r.command, r.code);
    if let Some(p) = &r.switch_project {
        *current = Some(p.clone());
        conn.set_channel(channel.id(), ChannelKind::Shell, current.clone());
    }
    write(channel, &r, false).await;
    r.code
}

/// The interactive shell: banner, prompt, line editing, history.
struct Shell<'a> {
    conn: &'a ConnCtx,
    editor: LineEditor,
    project: Option<String>,
    /// A destructive command waiting for its yes/no, and the question.
    pending: Option<(Vec<String>, String)>,
}

impl<'a> Shell<'a> {
    fn new(conn: &'a ConnCtx, width: u32) -> Self {
        Shell {
            conn,
            editor: LineEditor::new(MAX_LINE, width as usize, completions),
            project: None,
            pending: None,
        }
    }

    fn prompt(&self) -> String {
        match &self.project {
            Some(p) => format!("{}@{p}> ", self.conn.account.login),
            None => format!("{}> ", self.conn.account.login),
        }
    }

    async fn banner(&mut self, channel: &Io) {
        let a = &self.conn.account;
        let mut text = format!("gatehouse: logged in as {} ({})\r\n", a.login, a.email);
        match self.conn.shared.store.memberships_of(a.id).await {
            Ok(ms) if ms.is_empty() => {
                text.push_str("projects: none yet (ask a project admin to add you)\r\n")
            }
            Ok(ms) => {
                let list: Vec<String> = ms
                    .iter()
                    .map(|m| format!("{} ({})", m.project, m.role))
                    .collect();
                text.push_str(&format!("projects: {}\r\n", list.join(", ")));
                if let [one] = ms.as_slice() {
                    self.project = Some(one.project.clone());
                }
            }
            Err(e) => text.push_str(&format!("{}\r\n", CmdError::from(e).line())),
        }
        text.push_str("Type `help` for commands, `use PROJECT` to switch project, `exit` or Ctrl-D to leave.\r\n");
        let _ = channel.data(text.as_bytes()).await;
        self.conn
            .set_channel(channel.id(), ChannelKind::Shell, self.project.clone());
    }

    /// Leaving the shell, by `exit` or Ctrl-D, is not an error: status 0.
    async fn run(mut self, channel: &mut Io) -> u32 {
        self.banner(channel).await;
        self.editor.start(&self.prompt());
        self.flush(channel).await;
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    let events = self.editor.feed(&data);
                    self.flush(channel).await;
                    for ev in events {
                        if channel.cancelled() || self.event(channel, ev).await {
                            return 0;
                        }
                    }
                }
                Some(ChannelMsg::WindowChange { col_width, .. }) => {
                    self.editor.set_width(col_width as usize)
                }
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return 0,
                Some(_) => {}
            }
        }
    }

    async fn flush(&mut self, channel: &Io) {
        let out = self.editor.take_output();
        if !out.is_empty() {
            let _ = channel.data(&out[..]).await;
        }
    }

    /// Handles one editor event; true when the shell should end.
    async fn event(&mut self, channel: &Io, ev: Event) -> bool {
        match ev {
            Event::Eof => {
                let _ = channel.data(&b"\r\n"[..]).await;
                return true;
            }
            Event::Cancel => {
                self.pending = None;
            }
            Event::Rejected(msg) => {
                self.pending = None;
                write_error(channel, &CmdError::Usage(msg), true).await;
            }
            Event::Line(line) => {
                if let Some((words, _)) = self.pending.take() {
                    let yes = matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes");
                    let r = if yes {
                        self.execute(&words, true).await
                    } else {
                        cancelled()
                    };
                    write(channel, &r, true).await;
                } else if self.line(channel, &line).await {
                    return true;
                }
            }
        }
        let prompt = match &self.pending {
            Some((_, question)) => format!("{question} [y/N] "),
            None => self.prompt(),
        };
        self.editor.start(&prompt);
        self.flush(channel).await;
        false
    }

    async fn execute(&self, words: &[String], confirmed: bool) -> Response {
        let c = ctx(
            self.conn,
            self.project.as_deref(),
            Origin::Shell { tty: true },
            Stdin::None,
        );
        let r = execute(&c, words, confirmed).await;
        self.conn.shared.metrics.command(r.command, r.code);
        r
    }

    /// Runs a typed line; true when it was `exit`.
    async fn line(&mut self, channel: &Io, line: &str) -> bool {
        self.editor.add_history(line);
        let words = match split_line(line) {
            Ok(w) if w.is_empty() => return false,
            Ok(w) => w,
            Err(e) => {
                let origin = Origin::Shell { tty: true };
                refuse_line(self.conn, channel, self.project.as_deref(), origin, &e).await;
                return false;
            }
        };
        let mut r = self.execute(&words, false).await;
        if r.exit {
            return true;
        }
        if let Some(q) = r.confirm.take() {
            // The next line answers it; see `event`.
            self.pending = Some((words, q));
            return false;
        }
        if let Some(p) = r.switch_project.take() {
            self.project = Some(p);
            self.conn
                .set_channel(channel.id(), ChannelKind::Shell, self.project.clone());
        }
        write(channel, &r, true).await;
        false
    }
}
