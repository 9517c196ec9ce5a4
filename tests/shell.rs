//! The interactive shell through a real pseudo-terminal session (`ssh -tt`).

mod common;

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gateway, Key};

struct Term {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<Vec<u8>>>,
    /// Output before this offset has been matched already.
    seen: usize,
}

impl Term {
    fn open(gw: &Gateway, login: &str, key: &Key) -> Term {
        Term::run(gw, login, key, &[])
    }

    /// `ssh -tt … ARGS`: with no ARGS, the shell.
    fn run(gw: &Gateway, login: &str, key: &Key, args: &[&str]) -> Term {
        let mut cmd = gw.ssh_cmd(login, key);
        cmd.arg("-tt")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("ssh -tt");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Term {
            child,
            stdin,
            out,
            seen: 0,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits until `needle` appears in new output; returns what came before it.
    #[track_caller]
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let out = self.out.lock().unwrap();
                let text = String::from_utf8_lossy(&out[self.seen..]).into_owned();
                if let Some(pos) = text.find(needle) {
                    self.seen += text[..pos + needle.len()].len();
                    return text[..pos].to_string();
                }
                if Instant::now() > deadline {
                    panic!("timed out waiting for {needle:?}; got:\n{text}");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[track_caller]
    fn exit_code(mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("shell did not end");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setup() -> Option<(Gateway, Key)> {
    if !common::have("ssh") {
        return None;
    }
    let mut gw = Gateway::new("");
    let alice = gw.account("alice@example.com");
    gw.cli(&["project", "create", "train", "--admin", "alice@example.com"])
        .ok();
    gw.start();
    gw.ssh(
        "alice",
        &alice,
        &["volume", "create", "data", "--size", "1GiB"],
    )
    .ok();
    Some((gw, alice))
}

#[test]
fn prompt_commands_history_confirmation_and_ctrl_d() {
    let Some((gw, alice)) = setup() else { return };
    let mut t = Term::open(&gw, "alice", &alice);
    let banner = t.expect("\nalice@train> ");
    assert!(
        banner.contains("logged in as alice") && banner.contains("train (admin)"),
        "{banner}"
    );

    t.send(b"whoami\r");
    assert!(t.expect("\nalice@train> ").contains("alice@example.com"));
    // Up arrow recalls the last line.
    t.send(b"\x1b[A\r");
    assert!(t.expect("\nalice@train> ").contains("alice@example.com"));

    // A destructive command asks; `n` keeps the volume.
    t.send(b"volume delete data\r");
    t.expect("[y/N] ");
    t.send(b"n\r");
    assert!(t.expect("\nalice@train> ").contains("cancelled"));
    gw.ssh("alice", &alice, &["volume", "show", "data"]).ok();
    // `y` deletes it.
    t.send(b"volume delete data\r");
    t.expect("[y/N] ");
    t.send(b"y\r");
    assert!(t.expect("\nalice@train> ").contains("deleted volume data"));
    gw.ssh("alice", &alice, &["volume", "show", "data"])
        .fails(1, "no volume data");

    // Errors keep the shell going.
    t.send(b"frobnicate\r");
    assert!(
        t.expect("\nalice@train> ")
            .contains("error: unrecognized subcommand")
    );

    t.send(b"\x04");
    assert_eq!(t.exit_code(), 0);
}

#[test]
fn line_editing_completion_and_ctrl_c() {
    let Some((gw, alice)) = setup() else { return };
    let mut t = Term::open(&gw, "alice", &alice);
    t.expect("\nalice@train> ");
    // Tab completes `volume`, then `list`.
    t.send(b"vol\tli\t\r");
    assert!(t.expect("\nalice@train> ").contains("data"));
    // Backspace, Ctrl-W and Ctrl-U edit the line.
    t.send(b"whoamx\x7fi\r");
    assert!(t.expect("\nalice@train> ").contains("alice@example.com"));
    t.send(b"junk words\x17\x17\x15whoami\r");
    assert!(t.expect("\nalice@train> ").contains("alice@example.com"));
    // Left arrow and insert.
    t.send(b"whomi\x1b[D\x1b[Da\r");
    assert!(t.expect("\nalice@train> ").contains("alice@example.com"));
    // Ctrl-C drops the line without running it.
    t.send(b"volume delete data --yes\x03");
    t.expect("^C");
    t.expect("\nalice@train> ");
    gw.ssh("alice", &alice, &["volume", "show", "data"]).ok();
    t.send(b"exit\r");
    assert_eq!(t.exit_code(), 0);
}

#[test]
fn use_switches_project_and_refuses_strangers() {
    let Some((gw, alice)) = setup() else { return };
    gw.cli(&["account", "add", "zed@example.com"]).ok();
    gw.cli(&["project", "create", "other", "--admin", "zed@example.com"])
        .ok();
    gw.cli(&[
        "project",
        "create",
        "second",
        "--admin",
        "alice@example.com",
    ])
    .ok();
    let mut t = Term::open(&gw, "alice", &alice);
    t.expect("\nalice> ");
    t.send(b"volume list\r");
    assert!(t.expect("\nalice> ").contains("--project NAME"));
    t.send(b"use second\r");
    t.expect("\nalice@second> ");
    t.send(b"use other\r");
    assert!(
        t.expect("\nalice@second> ")
            .contains("permission denied: no access to project other")
    );
    t.send(b"use train\r");
    t.expect("\nalice@train> ");
    t.send(b"volume list\r");
    assert!(t.expect("\nalice@train> ").contains("data"));
}

#[test]
fn huge_lines_and_garbage_get_an_error_and_the_shell_lives_on() {
    let Some((gw, alice)) = setup() else { return };
    let mut t = Term::open(&gw, "alice", &alice);
    t.expect("\nalice@train> ");
    let mut line = vec![b'a'; 1024 * 1024];
    line.push(b'\r');
    t.send(&line);
    assert!(t.expect("\nalice@train> ").contains("line too long"));
    t.send(b"whoami \xff\xfe\r");
    assert!(t.expect("\nalice@train> ").contains("invalid UTF-8"));
    t.send(b"who\x00ami\r");
    assert!(t.expect("\nalice@train> ").contains("NUL"));
    t.send(b"\x1b[99;99;99Zwhoami\r");
    assert!(t.expect("\nalice@train> ").contains("alice@example.com"));
    t.send(b"exit\r");
    assert_eq!(t.exit_code(), 0);
    gw.ssh("alice", &alice, &["volume", "show", "data"]).ok();
}

#[test]
fn a_command_with_a_terminal_asks_for_confirmation_too() {
    let Some((gw, alice)) = setup() else { return };
    let mut t = Term::run(&gw, "alice", &alice, &["volume", "delete", "data"]);
    t.expect("[y/N] ");
    t.send(b"y\r");
    t.expect("deleted volume data");
    assert_eq!(t.exit_code(), 0);
    gw.ssh("alice", &alice, &["volume", "show", "data"])
        .fails(1, "no volume data");
}
