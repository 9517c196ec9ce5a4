//! The operator CLI through the built binary: success paths, every bad
//! input with its exit status and one-line error, nothing changed after a
//! refusal, and racing processes.

mod common;

use common::{Gateway, Key, Run};

/// Everything the CLI can list, as one comparable snapshot.
fn snapshot(gw: &Gateway) -> String {
    let mut s = String::new();
    for args in [
        &["account", "list", "--json"][..],
        &["project", "list", "--json"],
        &["node", "list", "--json"],
    ] {
        s.push_str(&gw.cli(args).ok().stdout);
    }
    for email in ["alice@example.com", "bob@example.com"] {
        s.push_str(&gw.cli(&["key", "list", email, "--json"]).stdout);
    }
    s
}

#[track_caller]
fn refused(gw: &Gateway, args: &[&str], code: i32, msg: &str) -> Run {
    let before = snapshot(gw);
    let r = gw.cli(args);
    r.fails(code, msg);
    assert_eq!(r.stderr.lines().count(), 1, "one line: {r:?}");
    assert_eq!(snapshot(gw), before, "{args:?} changed nothing");
    r
}

#[test]
fn accounts() {
    let gw = Gateway::new("");
    let r = gw.cli(&["account", "add", "Alice@Example.com"]);
    r.ok();
    assert!(r.stdout.contains("login alice"), "{r:?}");
    gw.cli(&["account", "add", "bob@example.com", "--login", "bobby"])
        .ok();
    let list = gw.cli(&["account", "list", "--json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["login"], "bobby");
    assert!(
        gw.cli(&["account", "list"])
            .ok()
            .stdout
            .contains("Alice@Example.com")
    );

    refused(
        &gw,
        &["account", "add", "alice@EXAMPLE.COM"],
        1,
        "already exists",
    );
    refused(&gw, &["account", "add", "not-an-email"], 2, "invalid email");
    refused(
        &gw,
        &["account", "add", "a b@example.com"],
        2,
        "invalid email",
    );
    refused(
        &gw,
        &["account", "add", "carol@example.com", "--login", "Carol"],
        2,
        "invalid login",
    );
    refused(
        &gw,
        &["account", "add", "carol@example.com", "--login", "1carol"],
        2,
        "invalid login",
    );
    refused(
        &gw,
        &["account", "add", "carol@example.com", "--login", "bobby"],
        1,
        "already taken",
    );
    refused(
        &gw,
        &["account", "add", "alice@other.com"],
        1,
        "login alice is already taken",
    );
    refused(
        &gw,
        &["account", "disable", "nobody@example.com"],
        1,
        "no account for",
    );

    gw.cli(&["account", "disable", "bob@example.com"]).ok();
    refused(
        &gw,
        &["account", "disable", "bob@example.com"],
        1,
        "already disabled",
    );
    let list = gw.cli(&["account", "list", "--json"]).ok().json();
    assert_eq!(list[1]["disabled"], true);
}

#[test]
fn keys() {
    let gw = Gateway::new("");
    gw.cli(&["account", "add", "alice@example.com"]).ok();
    gw.cli(&["account", "add", "bob@example.com"]).ok();
    let dir = gw.dir.path();
    let ed = Key::new(dir, "ed");
    let ecdsa = Key::with_type(dir, "ec", &["-t", "ecdsa", "-b", "384"]);
    let rsa = Key::with_type(dir, "rsa", &["-t", "rsa", "-b", "2048"]);
    for k in [&ed, &ecdsa, &rsa] {
        gw.cli(&[
            "key",
            "add",
            "alice@example.com",
            "--file",
            k.public.to_str().unwrap(),
        ])
        .ok();
    }
    // From stdin too.
    let ed2 = Key::new(dir, "ed2");
    gw.cli_stdin(
        &["key", "add", "bob@example.com", "--file", "-"],
        Some(ed2.public_line().as_bytes()),
    )
    .ok();

    let list = gw
        .cli(&["key", "list", "alice@example.com", "--json"])
        .ok()
        .json();
    let fps: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(
        fps,
        [ed.fingerprint(), ecdsa.fingerprint(), rsa.fingerprint()]
    );

    let short = Key::with_type(dir, "short", &["-t", "rsa", "-b", "1024"]);
    let f = |p: &std::path::Path| p.to_str().unwrap().to_string();
    refused(
        &gw,
        &[
            "key",
            "add",
            "alice@example.com",
            "--file",
            &f(&short.public),
        ],
        2,
        "too short",
    );
    refused(
        &gw,
        &["key", "add", "alice@example.com", "--file", &f(&ed.private)],
        2,
        "private key",
    );
    refused(
        &gw,
        &["key", "add", "bob@example.com", "--file", &f(&ed.public)],
        1,
        "already registered",
    );
    let write = |name: &str, text: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        f(&p)
    };
    let dsa = write("dsa.pub", b"ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZpRV1AIlH7WT2NWPq/xfW6MPbLm1Vs14E7 x\n");
    refused(
        &gw,
        &["key", "add", "alice@example.com", "--file", &dsa],
        2,
        "DSA keys are not accepted",
    );
    refused(
        &gw,
        &[
            "key",
            "add",
            "alice@example.com",
            "--file",
            &write("empty.pub", b""),
        ],
        2,
        "no public key",
    );
    refused(
        &gw,
        &[
            "key",
            "add",
            "alice@example.com",
            "--file",
            &write("junk.pub", b"hello world\n"),
        ],
        2,
        "unsupported or malformed",
    );
    refused(
        &gw,
        &[
            "key",
            "add",
            "alice@example.com",
            "--file",
            &write("bin.pub", b"\x00\xff\xfe\x01"),
        ],
        2,
        "not text",
    );
    refused(
        &gw,
        &[
            "key",
            "add",
            "alice@example.com",
            "--file",
            &write("trunc.pub", b"ssh-ed25519 AAAAC3NzaC1lZDI1 x\n"),
        ],
        2,
        "malformed",
    );
    refused(
        &gw,
        &[
            "key",
            "add",
            "alice@example.com",
            "--file",
            "/nonexistent.pub",
        ],
        1,
        "cannot read",
    );
    refused(
        &gw,
        &[
            "key",
            "add",
            "nobody@example.com",
            "--file",
            &f(&ed2.public),
        ],
        1,
        "no account for",
    );
    refused(
        &gw,
        &["key", "remove", "alice@example.com", "not-a-fingerprint"],
        2,
        "invalid fingerprint",
    );
    refused(
        &gw,
        &[
            "key",
            "remove",
            "alice@example.com",
            "SHA256:AAAAAAAAAAAAAAAAAAAA",
        ],
        1,
        "no key",
    );

    gw.cli(&["key", "remove", "alice@example.com", &rsa.fingerprint()])
        .ok();
    assert_eq!(
        gw.cli(&["key", "list", "alice@example.com", "--json"])
            .ok()
            .count(),
        2
    );
}

#[test]
fn projects_nodes_and_audit() {
    let gw = Gateway::new("");
    gw.cli(&["account", "add", "alice@example.com"]).ok();
    gw.cli(&[
        "project",
        "create",
        "train-a",
        "--admin",
        "alice@example.com",
    ])
    .fails(1, "alice@example.com has no SSH key registered");
    let key = common::Key::new(gw.dir.path(), "alice");
    gw.cli(&[
        "key",
        "add",
        "alice@example.com",
        "--file",
        key.public.to_str().unwrap(),
    ])
    .ok();
    gw.cli(&[
        "project",
        "create",
        "train-a",
        "--admin",
        "alice@example.com",
    ])
    .ok();
    let list = gw.cli(&["project", "list", "--json"]).ok().json();
    assert_eq!(list[0]["name"], "train-a");
    assert_eq!(list[0]["admins"], 1);
    refused(
        &gw,
        &[
            "project",
            "create",
            "train-a",
            "--admin",
            "alice@example.com",
        ],
        1,
        "already exists",
    );
    for bad in ["Train", "-x", "a_b", "a;rm -rf /", "$(id)", &"x".repeat(64)] {
        refused(
            &gw,
            &["project", "create", bad, "--admin", "alice@example.com"],
            2,
            "invalid project name",
        );
    }
    refused(
        &gw,
        &["project", "create", "p2", "--admin", "nobody@example.com"],
        1,
        "no account for",
    );

    gw.cli(&[
        "node",
        "register",
        "gpu-1",
        "10.0.0.1:22",
        "--gpu-type",
        "h100",
        "--gpus",
        "8",
    ])
    .ok();
    gw.cli(&["node", "register", "gpu-2", "[::1]:2222"]).ok();
    let nodes = gw.cli(&["node", "list", "--json"]).ok().json();
    assert_eq!(nodes[0]["gpus"], 8);
    assert_eq!(nodes[1]["host"], "::1");
    refused(
        &gw,
        &["node", "register", "gpu-1", "10.0.0.5:22"],
        1,
        "already exists",
    );
    refused(
        &gw,
        &["node", "register", "gpu-3", "10.0.0.1:22"],
        1,
        "already registered",
    );
    for bad in [
        "10.0.0.1",
        "10.0.0.1:0",
        "10.0.0.1:99999",
        "host name:22",
        "[zz]:22",
        ":22",
        "a;b:22",
    ] {
        refused(
            &gw,
            &["node", "register", "gpu-9", bad],
            2,
            "invalid address",
        );
    }
    refused(
        &gw,
        &["node", "register", "GPU", "10.0.0.9:22"],
        2,
        "invalid node name",
    );
    refused(
        &gw,
        &["node", "register", "gpu-9", "10.0.0.9:22", "--gpus", "-1"],
        2,
        "invalid GPU count",
    );
    refused(
        &gw,
        &[
            "node",
            "register",
            "gpu-9",
            "10.0.0.9:22",
            "--gpu-type",
            "H 100",
        ],
        2,
        "invalid GPU type",
    );

    let audit = gw.cli(&["audit", "--json"]).ok().json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "node register",
            "node register",
            "project create",
            "key add",
            "account add"
        ]
    );
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "operator" && e["time"].is_string())
    );
    assert_eq!(
        gw.cli(&["audit", "--project", "train-a", "--json"])
            .ok()
            .count(),
        1
    );
    assert_eq!(gw.cli(&["audit", "--limit", "1", "--json"]).ok().count(), 1);
    gw.cli(&["audit", "--limit", "0"]).fails(2, "invalid limit");
    gw.cli(&["audit", "--limit", "x"]).fails(2, "invalid limit");
    assert!(gw.cli(&["audit"]).ok().stdout.starts_with("TIME"));
}

#[test]
fn config_errors_are_clear() {
    let gw = Gateway::new("[log]\nlevle = \"debug\"\n");
    let r = gw.cli(&["account", "list"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("levle"), "names the key: {r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(["--config", "/nonexistent.toml", "account", "list"]);
    let out = common::run_with_timeout(&mut cmd, None, std::time::Duration::from_secs(20));
    let r = (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    let r = common::Run {
        code: r.0.unwrap_or(-1),
        stdout: String::new(),
        stderr: r.1,
    };
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("/nonexistent.toml"), "{r:?}");
    // $GATEHOUSE_CONFIG is honoured.
    let gw = Gateway::new("");
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.env("GATEHOUSE_CONFIG", &gw.config)
        .args(["account", "add", "env@example.com"]);
    let out = common::run_with_timeout(&mut cmd, None, std::time::Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    assert!(
        gw.cli(&["account", "list"])
            .ok()
            .stdout
            .contains("env@example.com")
    );
}

#[test]
fn unknown_commands_are_usage_errors() {
    let gw = Gateway::new("");
    assert_eq!(gw.cli(&["frobnicate"]).code, 2);
    assert_eq!(gw.cli(&["account", "add"]).code, 2);
    assert_eq!(
        gw.cli(&["key", "add", "a@b.com"]).code,
        2,
        "--file is required"
    );
}

/// Many operator processes adding the same email, and the same key, at
/// once: one row each, and every loser gets the clear "already" error.
fn race(gw: &Gateway) {
    let key = Key::new(gw.dir.path(), "race");
    let n = 12;
    let spawn_all = |args: Vec<String>| -> Vec<std::process::Child> {
        (0..n)
            .map(|_| {
                std::process::Command::new(common::BIN)
                    .arg("--config")
                    .arg(&gw.config)
                    .args(&args)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect()
    };
    for (args, msg) in [
        (
            vec!["account".into(), "add".into(), "Same@Example.com".into()],
            "already exists",
        ),
        (
            vec![
                "key".into(),
                "add".into(),
                "same@example.com".into(),
                "--file".into(),
                key.public.display().to_string(),
            ],
            "already registered",
        ),
    ] {
        let mut wins = 0;
        for child in spawn_all(args) {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                wins += 1;
            } else {
                assert_eq!(out.status.code(), Some(1), "{err}");
                assert!(
                    err.contains(msg) && err.lines().count() == 1,
                    "clear error only: {err}"
                );
            }
        }
        assert_eq!(wins, 1);
    }
    assert_eq!(gw.cli(&["account", "list", "--json"]).ok().count(), 1);
    assert_eq!(
        gw.cli(&["key", "list", "same@example.com", "--json"])
            .ok()
            .count(),
        1
    );
}

#[test]
fn racing_operators_on_sqlite() {
    let gw = Gateway::new("");
    gw.cli(&["account", "list"]).ok(); // create the database first
    race(&gw);
}

#[test]
fn racing_operators_on_postgres() {
    let Some(pg) = common::Postgres::start() else {
        return;
    };
    let gw = Gateway::with_db(Some(&pg.database()), "");
    gw.cli(&["account", "list"]).ok();
    race(&gw);
}

/// The README's first command: the shipped config, relative paths, run from
/// the checkout's top folder.
#[test]
fn the_default_layout_works_from_a_relative_config_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/gatehouse.toml"),
        dir.path().join("config/gatehouse.toml"),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.current_dir(dir.path())
        .args(["account", "add", "first@example.com"]);
    let out = common::run_with_timeout(&mut cmd, None, std::time::Duration::from_secs(20));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("data/gatehouse.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the database is private");
}
