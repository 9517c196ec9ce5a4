//! What a new user trips on (issue 10), each case through the built binary
//! and the real OpenSSH client: config paths, the operator's verbs, the
//! reason a forward cannot connect, options with stock `ssh`, the values
//! people type, limits, confirmations, revocation messages and output.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, Key, Term, http_get, metric};

/// alice admin of `train`, bob a member; the gateway started.
fn train(extra: &str) -> Option<(Gateway, Key, Key)> {
    if !common::have("ssh") {
        return None;
    }
    let mut gw = Gateway::new(extra);
    let alice = gw.account("alice@example.com");
    let bob = gw.account("bob@example.com");
    gw.cli(&["project", "create", "train", "--admin", "alice@example.com"])
        .ok();
    gw.start();
    gw.ssh("alice", &alice, &["member", "add", "bob@example.com"])
        .ok();
    Some((gw, alice, bob))
}

fn audit(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.audit_events()
}

/// Waits until the gateway's log mentions `what`.
fn log_shows(gw: &Gateway, what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if gw.log_text().contains(what) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

// 2. A bare file name as the config path.
#[test]
fn a_config_given_as_a_bare_file_name_is_found() {
    let gw = Gateway::new("");
    gw.cli(&["node", "register", "n1", "10.0.0.1:22"]).ok();
    let dir = gw.dir.path();
    let r = common::run(Command::new(common::BIN).current_dir(dir).args([
        "--config",
        "gatehouse.toml",
        "node",
        "list",
    ]));
    r.ok();
    assert!(r.stdout.contains("n1"), "{r:?}");
    let r = common::run(
        Command::new(common::BIN)
            .current_dir(dir)
            .env("GATEHOUSE_CONFIG", "gatehouse.toml")
            .args(["node", "list", "--json"]),
    );
    assert_eq!(r.ok().count(), 1);
    // An empty GATEHOUSE_CONFIG is no setting at all: the default path.
    let r = common::run(
        Command::new(common::BIN)
            .current_dir(dir)
            .env("GATEHOUSE_CONFIG", "")
            .args(["node", "list"]),
    );
    r.fails(2, "no config file at config/gatehouse.toml (the default");
}

// 3. account enable / remove, node remove, project delete.
#[test]
fn the_operator_can_enable_and_remove_accounts() {
    let Some((gw, alice, _bob)) = train("") else {
        return;
    };
    let carol = gw.account("carol@example.com");
    gw.cli(&["account", "disable", "carol@example.com"]).ok();
    gw.ssh("alice", &alice, &["member", "add", "carol@example.com"])
        .fails(1, "gatehouse account enable carol@example.com");
    gw.cli(&["account", "enable", "carol@example.com"]).ok();
    let r = gw.cli(&["account", "enable", "carol@example.com"]);
    r.fails(1, "is not disabled");
    gw.ssh("carol", &carol, &["whoami"]).ok();
    gw.ssh("alice", &alice, &["member", "add", "carol@example.com"])
        .ok();

    // The last admin stays; removing a member-only account takes its keys.
    let r = gw.cli(&["account", "remove", "alice@example.com"]);
    r.fails(1, "is the last admin of project train");
    gw.cli(&["account", "list", "--json"]).ok();
    let mut shell = Term::open(&gw, "carol", &carol);
    shell.expect("carol@train> ");
    gw.cli(&["account", "remove", "carol@example.com"]).ok();
    assert_eq!(shell.exit_code(), 255, "carol's session ended");
    assert_eq!(gw.ssh("carol", &carol, &["whoami"]).code, 255);
    let accounts = gw.cli(&["account", "list", "--json"]).ok().json();
    assert!(
        !accounts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["email"] == "carol@example.com")
    );
    let members = gw
        .ssh("alice", &alice, &["member", "list", "--json"])
        .ok()
        .json();
    assert_eq!(members.as_array().unwrap().len(), 2);
    gw.cli(&["account", "remove", "carol@example.com"])
        .fails(1, "no account for carol@example.com");
    gw.cli(&["account", "remove", "not-an-email"])
        .fails(2, "invalid email");
    // A new account with the same email starts from nothing.
    gw.cli(&["account", "add", "carol@example.com"]).ok();
    let actions: Vec<String> = audit(&gw)
        .iter()
        .map(|e| e["action"].as_str().unwrap_or("").to_string())
        .collect();
    for a in ["account enable", "account remove", "account disable"] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
}

#[test]
fn nodes_can_be_removed_and_projects_deleted() {
    let Some((gw, alice, bob)) = train("") else {
        return;
    };
    gw.cli(&["node", "register", "n1", "10.0.0.1:22"]).ok();
    gw.cli(&["node", "register", "n2", "10.0.0.2:22"]).ok();
    gw.cli(&["node", "register", "typo", "10.0.0.99:22"]).ok();
    gw.cli(&["node", "remove", "typo"]).ok();
    gw.cli(&["node", "remove", "typo"]).fails(1, "no node typo");
    gw.cli(&["node", "remove", "Typo"]).fails(2, "use \"typo\"");
    gw.ssh(
        "alice",
        &alice,
        &["cluster", "create", "c1", "--nodes", "2"],
    )
    .ok();
    let r = gw.cli(&["node", "remove", "n2"]);
    r.fails(1, "is in cluster c1 of project train");
    assert!(r.stderr.contains("--force"), "{r:?}");
    gw.cli(&["node", "remove", "n2", "--force"]).ok();
    let nodes = gw.cli(&["node", "list", "--json"]).ok().json();
    assert_eq!(nodes.as_array().unwrap().len(), 1);

    // Deleting the project ends bob's shell, frees its nodes, and leaves
    // the accounts.
    let mut shell = Term::open(&gw, "bob", &bob);
    shell.expect("bob@train> ");
    let r = gw.cli(&["project", "delete", "train"]);
    r.ok();
    assert!(r.stdout.contains("1 node(s) returned to the pool"), "{r:?}");
    shell.expect("access revoked: project train was deleted");
    let nodes = gw.cli(&["node", "list", "--json"]).ok().json();
    assert!(nodes[0]["cluster"].is_null(), "{nodes}");
    assert_eq!(gw.cli(&["project", "list", "--json"]).ok().count(), 0);
    gw.ssh("alice", &alice, &["cluster", "list", "-p", "train"])
        .fails(3, "no access to project train");
    gw.cli(&["project", "delete", "train"])
        .fails(1, "no project train");
    // The name is free again.
    gw.cli(&["project", "create", "train", "--admin", "bob@example.com"])
        .ok();
    assert!(
        audit(&gw)
            .iter()
            .any(|e| e["action"] == "project delete" && e["target"] == "train")
    );
}

// 4. Why a forward could not connect, and `node check`.
#[test]
fn a_node_at_a_wrong_address_says_why_and_node_check_finds_it() {
    let Some((gw, alice, bob)) = train("") else {
        return;
    };
    let closed = common::free_port();
    gw.cli(&["node", "register", "dead", &format!("127.0.0.1:{closed}")])
        .ok();
    gw.cli(&["node", "register", "nowhere", "no-such-node.invalid:22"])
        .ok();
    gw.ssh(
        "alice",
        &alice,
        &["cluster", "create", "c1", "--nodes", "2"],
    )
    .ok();
    // At the client's default log level, as a user runs it.
    let w_to = |target: &str| {
        let mut c = Command::new("ssh");
        let opts = common::ssh_opts();
        let mut it = opts.iter();
        while let Some(o) = it.next() {
            if o == "-o" {
                let v = it.next().unwrap();
                if !v.starts_with("LogLevel") {
                    c.args(["-o", v]);
                }
            } else {
                c.arg(o);
            }
        }
        c.arg("-i").arg(&bob.private).args([
            "-p",
            &gw.port.to_string(),
            "-W",
            target,
            "bob@127.0.0.1",
        ]);
        common::run(&mut c)
    };
    let r = w_to("dead.c1:22");
    assert_eq!(r.code, 255, "{r:?}");
    assert!(
        r.stderr.contains("connect failed") && r.stderr.contains("connection refused"),
        "the reason reaches the user: {r:?}"
    );
    let r = w_to("nowhere.c1:22");
    assert!(
        r.stderr.contains("connect failed")
            && (r.stderr.contains("not resolved") || r.stderr.contains("timed out")),
        "{r:?}"
    );

    // node check: the broken ones fail the command, and say why.
    let r = gw.cli(&["node", "check", "--timeout", "3"]);
    r.fails(1, "2 of 2 node(s) failed the check");
    assert!(r.stdout.contains("connection refused"), "{r:?}");
    let r = gw.cli(&["node", "check", "dead", "--json", "--timeout", "3"]);
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    assert_eq!(j[0]["name"], "dead");
    assert_eq!(j[0]["ok"], false);
    gw.cli(&["node", "check", "ghost"])
        .fails(1, "no node ghost");
    gw.cli(&["node", "check", "--timeout", "0"])
        .fails(2, "invalid --timeout");
    if common::have("sshd") {
        let sshd = common::Sshd::start(&[]);
        gw.cli(&[
            "node",
            "register",
            "good",
            &format!("127.0.0.1:{}", sshd.port),
        ])
        .ok();
        let r = gw.cli(&["node", "check", "good"]);
        r.ok();
        assert!(r.stdout.contains("SSH-2.0-OpenSSH"), "{r:?}");
    }
}

// 5. Options after the command word work with stock ssh; help says so.
#[test]
fn options_after_the_command_reach_the_gateway() {
    let Some((gw, alice, _bob)) = train("") else {
        return;
    };
    let help = gw.ssh("alice", &alice, &["help"]);
    help.ok();
    assert!(
        help.stdout
            .contains("Usage: COMMAND [ARGS...] [--project NAME] [--json]"),
        "{help:?}"
    );
    assert!(help.stdout.contains("ssh gw cluster list -p train --json"));
    // Unquoted, as a person types it: `ssh gw cluster list -p train --json`.
    let mut c = gw.ssh_cmd("alice", &alice);
    c.args(["cluster", "list", "-p", "train", "--json"]);
    let r = common::run(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.trim_start().starts_with('['), "{r:?}");
    let mut c = gw.ssh_cmd("alice", &alice);
    c.args(["--", "-p", "train", "--json", "cluster", "list"]);
    assert_eq!(common::run(&mut c).code, 0);
}

// 6. The operator CLI names the missing argument.
#[test]
fn operator_usage_errors_name_what_is_missing() {
    let gw = Gateway::new("");
    let r = gw.cli(&["account", "add"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.starts_with("error: "), "{r:?}");
    assert!(r.stderr.contains("<EMAIL>"), "names the argument: {r:?}");
    assert!(r.stderr.contains("Usage: gatehouse account add"), "{r:?}");
    let r = gw.cli(&["node", "register", "n1"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("<HOST:PORT>"), "{r:?}");
    // kube.CLUSTER and dashboard.CLUSTER are the cluster's services.
    for reserved in ["kube", "dashboard", "KUBE"] {
        gw.cli(&["node", "register", reserved, "10.0.0.9:22"])
            .fails(2, "is reserved");
    }
    let nodes = gw.cli(&["node", "list", "--json"]).ok().json();
    assert!(
        !nodes.to_string().contains("10.0.0.9"),
        "a refused node was registered: {nodes}"
    );
}

// 7. GPU types as people write them; names suggest lower case.
#[test]
fn gpu_types_match_case_insensitively_and_names_suggest_lower_case() {
    let Some((gw, alice, _bob)) = train("") else {
        return;
    };
    gw.cli(&[
        "node",
        "register",
        "n1",
        "10.0.0.1:22",
        "--gpu-type",
        "H100",
    ])
    .ok();
    gw.cli(&[
        "node",
        "register",
        "n2",
        "10.0.0.2:22",
        "--gpu-type",
        "A100-80GB",
    ])
    .ok();
    gw.cli(&[
        "node",
        "register",
        "n3",
        "10.0.0.3:22",
        "--gpu-type",
        "l40s",
    ])
    .ok();
    gw.cli(&[
        "node",
        "register",
        "n4",
        "10.0.0.4:22",
        "--gpu-type",
        "h_100",
    ])
    .fails(2, "invalid GPU type");
    gw.ssh(
        "alice",
        &alice,
        &[
            "cluster",
            "create",
            "c1",
            "--nodes",
            "1",
            "--gpu-type",
            "h100",
        ],
    )
    .ok();
    gw.ssh(
        "alice",
        &alice,
        &[
            "cluster",
            "create",
            "c2",
            "--nodes",
            "1",
            "--gpu-type",
            "a100-80gb",
        ],
    )
    .ok();
    let nodes = gw.cli(&["node", "list", "--json"]).ok().json();
    assert_eq!(nodes[0]["gpu_type"], "H100", "shown as registered");
    assert_eq!(nodes[0]["cluster"], "c1");
    assert_eq!(nodes[1]["cluster"], "c2");
    gw.ssh(
        "alice",
        &alice,
        &[
            "cluster",
            "create",
            "c3",
            "--nodes",
            "1",
            "--gpu-type",
            "H100",
        ],
    )
    .fails(1, "not enough free H100 nodes");
    gw.ssh("alice", &alice, &["cluster", "list", "-p", "Train"])
        .fails(2, "use \"train\"");
    gw.ssh(
        "alice",
        &alice,
        &["cluster", "create", "Big", "--nodes", "1"],
    )
    .fails(
        2,
        "invalid cluster name \"Big\": names are lower-case DNS labels; use \"big\"",
    );
}

// 8. Sizes: binary exact, decimal converted exactly or refused with a hint.
#[test]
fn sizes_follow_one_rule() {
    let Some((gw, alice, _bob)) = train("") else {
        return;
    };
    let create = |name: &str, size: &str| {
        gw.ssh("alice", &alice, &["volume", "create", name, "--size", size])
    };
    create("a", "500gib").ok();
    create("b", "1.5TiB").ok();
    create("c", "2Ti").ok();
    create("d", "500GB").fails(2, "that is 465.66 GiB");
    create("d", "1TB").fails(2, "use 932GiB or 931GiB");
    create("d", "1.5TB").fails(2, "1396.98 GiB");
    create("d", "500G").fails(2, "465.66 GiB");
    create("d", "2MiB").fails(2, "unknown unit");
    let vols = gw
        .ssh("alice", &alice, &["volume", "list", "--json"])
        .ok()
        .json();
    let sizes: Vec<i64> = vols
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["size_gib"].as_i64().unwrap())
        .collect();
    assert_eq!(sizes, [500, 1536, 2048]);
}

// 9. `node_user=` goes back to the default.
#[test]
fn clearing_node_user_restores_the_default() {
    let Some((gw, alice, _bob)) = train("") else {
        return;
    };
    gw.cli(&["node", "register", "n1", "10.0.0.1:22"]).ok();
    gw.ssh(
        "alice",
        &alice,
        &["cluster", "create", "c1", "--nodes", "1"],
    )
    .ok();
    gw.ssh(
        "alice",
        &alice,
        &["cluster", "config", "c1", "node_user=root"],
    )
    .ok();
    let cfg = |gw: &Gateway| {
        gw.ssh("alice", &alice, &["cluster", "config", "c1", "--json"])
            .ok()
            .json()
    };
    assert_eq!(cfg(&gw)["node_user"], "root");
    gw.ssh("alice", &alice, &["cluster", "config", "c1", "node_user="])
        .ok();
    assert_eq!(cfg(&gw)["node_user"], "ubuntu");
    gw.ssh(
        "alice",
        &alice,
        &["cluster", "config", "c1", "node_user=Root"],
    )
    .fails(2, "the Unix login on the cluster's nodes");
    gw.ssh(
        "alice",
        &alice,
        &[
            "cluster",
            "config",
            "c1",
            "node_user=root",
            "node_user=ubuntu",
        ],
    )
    .fails(2, "node_user is given twice");
    let help = gw.ssh("alice", &alice, &["help", "cluster", "config"]);
    assert!(help.ok().stdout.contains("node_user=LOGIN"), "{help:?}");
}

// 10. A session limit is not a failed login.
#[test]
fn the_session_limit_is_reported_as_such_and_never_penalised() {
    if !common::have("ssh") {
        return;
    }
    let mport = common::free_port();
    let mut gw = Gateway::new(&format!(
        "\n[limits]\nmax_sessions_per_account = 1\npenalty_after_failures = 1\n\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"
    ));
    let alice = gw.account("alice@example.com");
    gw.start();
    let mut hold = gw.ssh_cmd("alice", &alice);
    hold.arg("-N").stdin(Stdio::null()).stderr(Stdio::null());
    let mut first = hold.spawn().unwrap();
    assert!(log_shows(&gw, "authenticated"));
    for _ in 0..3 {
        let r = gw.ssh("alice", &alice, &["whoami"]);
        assert_eq!(r.code, 255, "{r:?}");
        assert!(
            r.stderr.contains("too many sessions") && r.stderr.contains("max_sessions_per_account"),
            "the client says why: {r:?}"
        );
        assert!(!r.stderr.contains("Permission denied"), "{r:?}");
    }
    let (_, m) = http_get(mport, "/metrics");
    assert_eq!(
        metric(
            &m,
            "gatehouse_sessions_refused_total{limit=\"max_sessions_per_account\"}"
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "gatehouse_auth_attempts_total{result=\"failure\"}"),
        0.0
    );
    let _ = first.kill();
    let _ = first.wait();
    // No penalty (it would come after one failure): alice gets in at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.ssh("alice", &alice, &["whoami"]);
        if r.code == 0 {
            break;
        }
        assert!(!r.stderr.contains("Permission denied"), "{r:?}");
        assert!(Instant::now() < deadline, "{r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!gw.log_text().contains("refusing this address"));
}

// 11. A scale-down that ends open forwards asks first.
#[test]
fn scaling_down_under_live_forwards_needs_confirmation() {
    let Some((gw, alice, bob)) = train("") else {
        return;
    };
    let echo = common::echo_server();
    gw.cli(&["node", "register", "n1", &format!("127.0.0.1:{echo}")])
        .ok();
    gw.cli(&["node", "register", "n2", "127.0.0.2:22"]).ok();
    gw.ssh(
        "alice",
        &alice,
        &["cluster", "create", "c1", "--nodes", "2"],
    )
    .ok();
    // Releasing n2, which nothing uses: no question.
    gw.ssh("alice", &alice, &["cluster", "scale", "c1", "--nodes", "1"])
        .ok();
    let mut w = gw.ssh_cmd("bob", &bob);
    w.args(["-W", &format!("n1.c1:{echo}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut fwd = w.spawn().unwrap();
    {
        use std::io::{Read, Write};
        let mut i = fwd.stdin.take().unwrap();
        i.write_all(b"ping\n").unwrap();
        let mut buf = [0u8; 5];
        fwd.stdout.as_mut().unwrap().read_exact(&mut buf).unwrap();
        fwd.stdin = Some(i);
    }
    let r = gw.ssh("alice", &alice, &["cluster", "scale", "c1", "--nodes", "0"]);
    r.fails(2, "`cluster scale` needs confirmation: add --yes");
    assert!(common::wait_exit(&mut fwd, Duration::from_millis(500)).is_none());
    let show = gw
        .ssh("alice", &alice, &["cluster", "show", "c1", "--json"])
        .ok()
        .json();
    assert_eq!(show["node_count"], 1, "nothing changed");
    gw.ssh(
        "alice",
        &alice,
        &["cluster", "scale", "c1", "--nodes", "0", "--yes"],
    )
    .ok();
    assert!(
        common::wait_exit(&mut fwd, Duration::from_secs(3)).is_some(),
        "the forward ended"
    );
}

// 12 and 13. A removed member's shell is told why; several projects hint `use`.
#[test]
fn a_removed_members_shell_is_told_why() {
    let Some((gw, alice, bob)) = train("") else {
        return;
    };
    let mut shell = Term::open(&gw, "bob", &bob);
    shell.expect("bob@train> ");
    gw.ssh(
        "alice",
        &alice,
        &["member", "remove", "bob@example.com", "--yes"],
    )
    .ok();
    shell.expect("gatehouse: access revoked: removed from project train");
}

#[test]
fn the_shell_with_several_projects_says_use_project() {
    let Some((gw, alice, _bob)) = train("") else {
        return;
    };
    gw.cli(&["project", "create", "infer", "--admin", "alice@example.com"])
        .ok();
    let mut shell = Term::open(&gw, "alice", &alice);
    shell.expect("alice> ");
    shell.send(b"cluster list\r");
    shell.expect("choose one with `use PROJECT`");
    shell.send(b"use infer\r");
    shell.expect("alice@infer> ");
    // Over exec, the hint is the option after the command.
    gw.ssh("alice", &alice, &["cluster", "list"])
        .fails(2, "choose one with --project NAME after the command");
}

// 14. The first admin must be able to log in, like any member.
#[test]
fn a_project_admin_needs_a_key() {
    let gw = Gateway::new("");
    gw.cli(&["account", "add", "nokey@example.com"]).ok();
    gw.cli(&["project", "create", "p", "--admin", "nokey@example.com"])
        .fails(1, "nokey@example.com has no SSH key registered");
    assert_eq!(gw.cli(&["project", "list", "--json"]).ok().count(), 0);
}

// 15. An error at start is printed once.
#[test]
fn serve_on_a_busy_port_says_so_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("g.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n"),
    )
    .unwrap();
    let r = common::run(
        Command::new(common::BIN)
            .arg("--config")
            .arg(&config)
            .arg("serve"),
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr.matches("cannot listen on").count(),
        1,
        "once: {r:?}"
    );
}

// 16 and 17. Audit rows, JSON errors, listings with their times.
#[test]
fn audit_rows_name_the_command_and_keep_the_arguments() {
    let Some((gw, alice, bob)) = train("") else {
        return;
    };
    gw.cli(&["node", "register", "n1", "10.0.0.1:22"]).ok();
    gw.ssh(
        "alice",
        &alice,
        &["cluster", "create", "c1", "--nodes", "1"],
    )
    .ok();
    let long = "x".repeat(200);
    gw.ssh(
        "alice",
        &alice,
        &["cluster", "config", "c1", &format!("description={long}")],
    )
    .ok();
    let events = audit(&gw);
    let e = events
        .iter()
        .find(|e| e["action"] == "cluster config set")
        .expect("the change is audited under its name");
    assert!(
        e["args"].as_str().unwrap().contains(&long),
        "whole in JSON: {e}"
    );
    let table = gw.cli(&["audit", "--limit", "5"]).ok().stdout.clone();
    let row = table
        .lines()
        .find(|l| l.contains("cluster config set"))
        .unwrap();
    assert!(row.chars().count() < 300, "clipped in the table: {row}");
    // A self-service key add records the fingerprint.
    let extra = Key::new(gw.dir.path(), "bob-extra");
    gw.ssh_stdin(
        "bob",
        &bob,
        &["key", "add"],
        Some(extra.public_line().as_bytes()),
    )
    .ok();
    assert!(
        audit(&gw)
            .iter()
            .any(|e| e["action"] == "key add" && e["target"] == extra.fingerprint())
    );
    gw.ssh("bob", &extra, &["whoami"]).ok();
    assert!(
        audit(&gw)
            .iter()
            .any(|e| e["action"] == "key confirm" && e["target"] == extra.fingerprint())
    );
    // A refused login records the offered key.
    let stranger = Key::new(gw.dir.path(), "stranger");
    assert_eq!(gw.ssh("alice", &stranger, &["whoami"]).code, 255);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = audit(&gw).iter().any(|e| {
            e["action"] == "auth"
                && e["outcome"] == "denied"
                && e["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&stranger.fingerprint())
        });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refused login audited with its key"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // An unknown command: usage in the audit log and the log alike.
    gw.ssh("bob", &bob, &["frobnicate"])
        .fails(2, "unrecognized");
    assert!(
        audit(&gw)
            .iter()
            .any(|e| e["action"] == "invalid" && e["outcome"] == "usage")
    );
    assert!(log_shows(&gw, "outcome=\"usage\""), "{}", gw.log_text());
}

#[test]
fn json_errors_and_listings_carry_the_facts() {
    let Some((gw, alice, bob)) = train("") else {
        return;
    };
    let r = gw.ssh("alice", &alice, &["cluster", "show", "nope", "--json"]);
    assert_eq!(r.code, 1);
    let j = r.json();
    assert_eq!(j["error"], "no cluster nope in this project");
    assert_eq!(j["kind"], "failed");
    assert_eq!(j["exit"], 1);
    let j = gw
        .ssh("bob", &bob, &["member", "add", "x@example.com", "--json"])
        .json();
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .starts_with("`member add` needs")
    );
    assert_eq!(j["exit"], 3);
    let accounts = gw.cli(&["account", "list", "--json"]).ok().json();
    assert!(accounts[0]["created"].as_str().unwrap().ends_with('Z'));
    assert_eq!(accounts[0]["status"], "active");
    let keys = gw
        .cli(&["key", "list", "bob@example.com", "--json"])
        .ok()
        .json();
    assert!(keys[0]["added"].as_str().unwrap().ends_with('Z'));
    let keys = gw.ssh("bob", &bob, &["key", "list", "--json"]).ok().json();
    assert!(keys[0]["added"].is_string());
    let projects = gw.cli(&["project", "list", "--json"]).ok().json();
    assert_eq!(projects[0]["admins"], 1);
    assert_eq!(projects[0]["members"], 1, "admins are not counted twice");
    let table = gw.cli(&["project", "list"]).ok().stdout.clone();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, ["train", "1", "1", "0"], "{table}");
}

// 19. The README's examples work as written.
#[test]
fn readme_examples_give_port_and_batch_form() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    assert!(readme.contains("ssh -p 2222 -N -L 8888:gpu-1.a100s:8888 bob@gw"));
    assert!(readme.contains("ssh -T -p 2222 bob@gw < "));
    assert!(
        !readme.contains("permissions.md"),
        "cites a file not shipped"
    );
    assert!(readme.contains("| view clusters |"), "the permission table");
}
