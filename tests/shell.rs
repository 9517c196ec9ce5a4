//! The interactive shell through a real pseudo-terminal session (`ssh -tt`).

mod common;

use common::{Gateway, Key, Term};

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
    gw.account("zed@example.com");
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
