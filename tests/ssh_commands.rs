//! The SSH command language end to end: the real OpenSSH client against a
//! gateway started by the test, as admin, member and non-member.

mod common;

use common::{Gateway, Key, Run};

/// alice: admin of `train`; bob: member of `train`; carol: admin of
/// `infer` only; dave: an account in no project. Four free h100 nodes.
struct World {
    gw: Gateway,
    alice: Key,
    bob: Key,
    carol: Key,
    dave: Key,
}

fn world() -> Option<World> {
    if !common::have("ssh") {
        return None;
    }
    let mut gw = Gateway::new("");
    let alice = gw.account("alice@example.com");
    let bob = gw.account("bob@example.com");
    let carol = gw.account("carol@example.com");
    let dave = gw.account("dave@example.com");
    gw.cli(&["project", "create", "train", "--admin", "alice@example.com"])
        .ok();
    gw.cli(&["project", "create", "infer", "--admin", "carol@example.com"])
        .ok();
    for i in 1..=4 {
        gw.cli(&[
            "node",
            "register",
            &format!("gpu-{i}"),
            &format!("10.9.0.{i}:22"),
            "--gpu-type",
            "h100",
            "--gpus",
            "8",
        ])
        .ok();
    }
    gw.start();
    let w = World {
        gw,
        alice,
        bob,
        carol,
        dave,
    };
    w.alice(&["member", "add", "bob@example.com"]).ok();
    Some(w)
}

impl World {
    fn alice(&self, args: &[&str]) -> Run {
        self.gw.ssh("alice", &self.alice, args)
    }
    fn bob(&self, args: &[&str]) -> Run {
        self.gw.ssh("bob", &self.bob, args)
    }
    fn carol(&self, args: &[&str]) -> Run {
        self.gw.ssh("carol", &self.carol, args)
    }
    /// What an admin sees of the project: compared before and after refusals.
    fn state(&self) -> String {
        let mut s = String::new();
        for args in [
            &["cluster", "list", "--json"][..],
            &["volume", "list", "--json"],
            &["member", "list", "--json"],
            &["node", "list", "--json"],
        ] {
            s.push_str(&self.alice(args).ok().stdout);
        }
        s.push_str(&self.gw.cli(&["node", "list", "--json"]).ok().stdout);
        s
    }
}

#[test]
fn whoami_and_projects() {
    let Some(w) = world() else { return };
    let r = w.alice(&["whoami"]);
    r.ok();
    assert!(
        r.stdout.contains("alice@example.com") && r.stdout.contains("train (admin)"),
        "{r:?}"
    );
    let j = w.bob(&["whoami", "--json"]).ok().json();
    assert_eq!(j["login"], "bob");
    assert_eq!(j["projects"][0]["project"], "train");
    assert_eq!(j["projects"][0]["role"], "member");
    let j = w.alice(&["project", "list", "--json"]).ok().json();
    assert_eq!(j.as_array().unwrap().len(), 1);
    let r = w.gw.ssh("dave", &w.dave, &["whoami"]);
    r.ok();
    assert!(r.stdout.contains("none"), "{r:?}");
    w.gw.ssh("dave", &w.dave, &["cluster", "list"])
        .fails(3, "not a member of any project");
}

#[test]
fn admin_manages_clusters_volumes_and_members() {
    let Some(w) = world() else { return };
    // Clusters from the pool.
    let r = w.alice(&[
        "cluster",
        "create",
        "c1",
        "--nodes",
        "2",
        "--gpu-type",
        "h100",
    ]);
    r.ok();
    assert!(r.stdout.contains("created cluster c1"), "{r:?}");
    let list = w.alice(&["cluster", "list", "--json"]).ok().json();
    assert_eq!(list[0]["name"], "c1");
    assert_eq!(list[0]["node_count"], 2);
    w.alice(&["cluster", "create", "c2", "--nodes", "3"])
        .fails(1, "2 free in the pool");
    w.alice(&["cluster", "create", "c1", "--nodes", "1"])
        .fails(1, "already exists");
    let show = w.alice(&["cluster", "show", "c1", "--json"]).ok().json();
    assert_eq!(show["config"]["kube_api"], "10.9.0.1:6443");
    assert_eq!(show["config"]["node_user"], "ubuntu");
    assert!(
        w.alice(&["cluster", "show", "c1"])
            .ok()
            .stdout
            .contains("gpu-1.c1.train")
    );
    w.alice(&["cluster", "show", "nope"])
        .fails(1, "no cluster nope");

    // Config: show, modify, unknown key.
    w.alice(&[
        "cluster",
        "config",
        "c1",
        "description=LLM pretraining",
        "dashboard=10.9.0.1:8443",
        "node_user=root",
    ])
    .ok();
    let cfg = w.bob(&["cluster", "config", "c1", "--json"]).ok().json();
    assert_eq!(cfg["description"], "LLM pretraining");
    assert_eq!(cfg["dashboard"], "10.9.0.1:8443");
    assert_eq!(cfg["node_user"], "root");
    w.alice(&["cluster", "config", "c1", "colour=blue"]).fails(
        2,
        "known keys are description, kube_api, dashboard, node_user, kube_ca",
    );
    w.alice(&["cluster", "config", "c1", "kube_api=nowhere"])
        .fails(2, "invalid address");

    // Scale up and down; node list follows.
    w.alice(&["cluster", "scale", "c1", "--nodes", "4"]).ok();
    assert_eq!(w.bob(&["node", "list", "c1", "--json"]).ok().count(), 4);
    w.alice(&["cluster", "scale", "c1", "--nodes", "1"]).ok();
    assert_eq!(w.bob(&["node", "list", "--json"]).ok().count(), 1);
    w.alice(&["cluster", "scale", "c1", "--nodes", "9"])
        .fails(1, "free in the pool");

    // Kubeconfig, both roles.
    let kc = w.bob(&["kubeconfig", "c1"]).ok().stdout.clone();
    // The gateway is the server (its own CA), whatever kube_api is.
    assert!(kc.contains("server: \"https://kube.c1.train:443\""), "{kc}");
    assert!(
        kc.contains("proxy-url: \"socks5://127.0.0.1:1080\""),
        "{kc}"
    );
    assert!(kc.contains("certificate-authority-data: "), "{kc}");
    assert!(!kc.contains("10.9.0.1"), "{kc}");
    assert!(kc.starts_with("# "), "says which ssh command to run: {kc}");
    let local = w
        .bob(&["kubeconfig", "c1", "--local-port", "6443", "--json"])
        .ok()
        .json();
    assert_eq!(
        local["clusters"][0]["cluster"]["server"],
        "https://127.0.0.1:6443"
    );
    assert_eq!(
        local["clusters"][0]["cluster"]["tls-server-name"],
        "kube.c1.train"
    );
    assert!(local["clusters"][0]["cluster"].get("proxy-url").is_none());
    w.bob(&["kubeconfig", "c1", "--local-port", "0"])
        .fails(2, "--local-port");
    w.bob(&[
        "kubeconfig",
        "c1",
        "--local-port",
        "6443",
        "--socks-port",
        "1",
    ])
    .fails(2, "cannot be used with");
    let kj = w
        .bob(&["kubeconfig", "c1", "--socks-port", "1081", "--json"])
        .ok()
        .json();
    assert_eq!(
        kj["clusters"][0]["cluster"]["proxy-url"],
        "socks5://127.0.0.1:1081"
    );

    // Delete with --yes returns the nodes.
    w.alice(&["cluster", "delete", "c1", "--yes"]).ok();
    assert!(
        w.alice(&["cluster", "list", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    let pool = w.gw.cli(&["node", "list", "--json"]).ok().json();
    assert!(
        pool.as_array()
            .unwrap()
            .iter()
            .all(|n| n["cluster"].is_null())
    );

    // Volumes.
    w.alice(&["volume", "create", "data", "--size", "2TiB"])
        .ok();
    w.alice(&["volume", "create", "scratch", "--size", "500GiB"])
        .ok();
    let v = w.bob(&["volume", "show", "data", "--json"]).ok().json();
    assert_eq!(v["size"], "2TiB");
    assert_eq!(v["size_gib"], 2048);
    assert_eq!(w.bob(&["volume", "list", "--json"]).ok().count(), 2);
    w.alice(&["volume", "create", "data", "--size", "1GiB"])
        .fails(1, "already exists");
    w.alice(&["volume", "delete", "scratch", "--yes"]).ok();
    w.alice(&["volume", "delete", "scratch", "--yes"])
        .fails(1, "no volume scratch");

    // Members: role changes and removal.
    w.alice(&["member", "role", "bob@example.com", "admin"])
        .ok();
    w.bob(&["volume", "create", "bobs", "--size", "1GiB"]).ok();
    w.bob(&["member", "role", "alice@example.com", "member"])
        .ok();
    w.alice(&["volume", "create", "nope", "--size", "1GiB"])
        .fails(3, "needs the admin role");
    w.bob(&["member", "role", "alice@example.com", "admin"])
        .ok();
    w.alice(&["member", "remove", "bob@example.com", "--yes"])
        .ok();
    // Removed, or never an account at all: not a member, nothing changes.
    for who in ["bob@example.com", "nobody@example.com"] {
        let gone = format!("{who} is not a member of this project");
        w.alice(&["member", "remove", who, "--yes"]).fails(1, &gone);
    }
    w.alice(&["member", "role", "nobody@example.com", "admin"])
        .fails(1, "nobody@example.com is not a member of this project");
    let members = w.alice(&["member", "list", "--json"]).ok().json();
    assert_eq!(members.as_array().unwrap().len(), 1);
    w.bob(&["cluster", "list", "-p", "train"])
        .fails(3, "no access to project train");

    // Audit: admin only, the project's events.
    let audit = w.alice(&["audit", "--limit", "500", "--json"]).ok().json();
    let actions: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} | {}",
                e["action"].as_str().unwrap(),
                e["args"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        actions
            .iter()
            .any(|a| a == "member remove | member remove bob@example.com --yes"),
        "{actions:?}"
    );
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["project"] == "train")
    );
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["outcome"] == "failed")
    );
}

#[test]
fn member_may_look_but_not_change() {
    let Some(w) = world() else { return };
    w.alice(&["cluster", "create", "c1", "--nodes", "1"]).ok();
    w.alice(&["volume", "create", "data", "--size", "10GiB"])
        .ok();
    w.gw.cli(&["account", "add", "erin@example.com"]).ok();
    let erin = Key::new(w.gw.dir.path(), "erin");
    w.gw.cli(&[
        "key",
        "add",
        "erin@example.com",
        "--file",
        erin.public.to_str().unwrap(),
    ])
    .ok();
    for args in [
        &["cluster", "list"][..],
        &["cluster", "show", "c1"],
        &["cluster", "config", "c1"],
        &["node", "list"],
        &["node", "list", "c1"],
        &["volume", "list"],
        &["volume", "show", "data"],
        &["member", "list"],
        &["kubeconfig", "c1"],
        &["session", "list"],
        &["key", "list"],
        &["whoami"],
        &["project", "list"],
    ] {
        w.bob(args).ok();
    }
    let before = w.state();
    for args in [
        &["cluster", "create", "c2", "--nodes", "1"][..],
        &["cluster", "delete", "c1", "--yes"],
        &["cluster", "scale", "c1", "--nodes", "2"],
        &["cluster", "scale", "c1", "--nodes", "0"],
        &["cluster", "config", "c1", "description=mine"],
        &["volume", "create", "v2", "--size", "1GiB"],
        &["volume", "delete", "data", "--yes"],
        &["member", "add", "erin@example.com"],
        &["member", "remove", "alice@example.com", "--yes"],
        &["member", "role", "bob@example.com", "admin"],
        &["member", "role", "alice@example.com", "member"],
        &["audit"],
        &["session", "kill", "x-1"],
        &["cluster", "credential", "set", "c1"],
        &["cluster", "credential", "clear", "c1"],
    ] {
        let r = w.bob(args);
        r.fails(3, "needs the admin role in project train");
        assert!(r.stderr.starts_with("permission denied: "), "{r:?}");
    }
    assert_eq!(w.state(), before, "nothing changed");
    // Every denial is audited.
    let audit = w.alice(&["audit", "--limit", "100", "--json"]).ok().json();
    let denied = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "bob" && e["outcome"] == "denied")
        .count();
    assert_eq!(denied, 15);
}

#[test]
fn strangers_cannot_tell_a_project_exists() {
    let Some(w) = world() else { return };
    w.alice(&["cluster", "create", "c1", "--nodes", "1"]).ok();
    let before = w.state();
    for args in [
        &["cluster", "list"][..],
        &["cluster", "show", "c1"],
        &["cluster", "create", "c2", "--nodes", "1"],
        &["cluster", "delete", "c1", "--yes"],
        &["cluster", "scale", "c1", "--nodes", "2"],
        &["cluster", "config", "c1"],
        &["cluster", "config", "c1", "description=x"],
        &["node", "list"],
        &["volume", "list"],
        &["volume", "show", "data"],
        &["volume", "create", "v", "--size", "1GiB"],
        &["volume", "delete", "v", "--yes"],
        &["member", "list"],
        &["member", "add", "dave@example.com"],
        &["member", "remove", "bob@example.com", "--yes"],
        &["member", "role", "bob@example.com", "admin"],
        &["kubeconfig", "c1"],
        &["session", "list"],
        &["session", "kill", "x-1"],
        &["audit"],
        &["cluster", "credential", "set", "c1"],
        &["cluster", "credential", "clear", "c1"],
    ] {
        let mut real = vec!["-p", "train"];
        real.extend_from_slice(args);
        let mut ghost = vec!["-p", "no-such-project"];
        ghost.extend_from_slice(args);
        let a = w.carol(&real);
        let b = w.carol(&ghost);
        a.fails(
            3,
            "no access to project train (it does not exist or you are not a member)",
        );
        b.fails(
            3,
            "no access to project no-such-project (it does not exist or you are not a member)",
        );
        assert_eq!(
            a.stderr.replace("train", "P"),
            b.stderr.replace("no-such-project", "P"),
            "same answer for {args:?}"
        );
    }
    assert_eq!(w.state(), before);
    w.carol(&["use", "train"])
        .fails(3, "no access to project train");
}

#[test]
fn member_add_follows_the_seed() {
    let Some(w) = world() else { return };
    let before = w.state();
    w.alice(&["member", "add", "nobody@example.com"])
        .fails(1, "no account for nobody@example.com");
    w.gw.cli(&["account", "add", "keyless@example.com"]).ok();
    w.alice(&["member", "add", "keyless@example.com"]).fails(
        1,
        "keyless@example.com has no SSH key registered; it must add one before it can be added",
    );
    w.alice(&["member", "add", "bob@example.com"])
        .fails(1, "already a member");
    w.gw.cli(&["account", "disable", "dave@example.com"]).ok();
    w.alice(&["member", "add", "dave@example.com"])
        .fails(1, "disabled");
    w.alice(&["member", "add", "not an email"])
        .fails(2, "invalid email");
    w.alice(&["member", "add", "carol@example.com", "--role", "owner"])
        .fails(2, "invalid role");
    assert_eq!(w.state(), before, "nobody was added");
    w.alice(&["member", "add", "Carol@Example.com", "--role", "admin"])
        .ok();
    let members = w.alice(&["member", "list", "--json"]).ok().json();
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["email"] == "carol@example.com" && m["role"] == "admin")
    );
    // carol is now in two projects and must say which.
    w.carol(&["cluster", "list"]).fails(2, "--project NAME");
    w.carol(&["cluster", "list", "--project", "train"]).ok();
}

#[test]
fn destructive_commands_need_yes_without_a_terminal() {
    let Some(w) = world() else { return };
    w.alice(&["cluster", "create", "c1", "--nodes", "1"]).ok();
    w.alice(&["volume", "create", "data", "--size", "1GiB"])
        .ok();
    let before = w.state();
    for args in [
        &["cluster", "delete", "c1"][..],
        &["volume", "delete", "data"],
        &["member", "remove", "bob@example.com"],
    ] {
        w.alice(args).fails(2, "--yes");
    }
    assert_eq!(w.state(), before);
}

#[test]
fn a_project_keeps_its_last_admin() {
    let Some(w) = world() else { return };
    w.alice(&["member", "role", "alice@example.com", "member"])
        .fails(1, "last admin");
    w.alice(&["member", "remove", "alice@example.com", "--yes"])
        .fails(1, "last admin");
    let members = w.alice(&["member", "list", "--json"]).ok().json();
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["login"] == "alice" && m["role"] == "admin")
    );
}

#[test]
fn own_keys() {
    let Some(w) = world() else { return };
    let extra = Key::new(w.gw.dir.path(), "extra");
    // On stdin, as the spec has it, and as arguments.
    w.gw.ssh_stdin(
        "bob",
        &w.bob,
        &["key", "add"],
        Some(extra.public_line().as_bytes()),
    )
    .ok();
    // Pending until its holder logs in with it.
    let keys = w.bob(&["key", "list", "--json"]).ok().json();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    w.gw.ssh("bob", &extra, &["whoami"]).ok();
    let keys = w.bob(&["key", "list", "--json"]).ok().json();
    assert_eq!(keys.as_array().unwrap().len(), 2);
    // Another account's key: accepted as pending, says nothing about
    // alice, and never works for bob, who cannot sign with it.
    let alices = w.alice.public_line();
    let parts: Vec<&str> = alices.split_whitespace().collect();
    let r = w.bob(&["key", "add", parts[0], parts[1]]);
    r.ok();
    assert!(
        r.stdout.contains("pending") && !r.stdout.contains("alice"),
        "{r:?}"
    );
    assert_eq!(w.gw.ssh("bob", &w.alice, &["whoami"]).code, 255);
    w.alice(&["whoami"]).ok();
    assert_eq!(w.bob(&["key", "list", "--json"]).ok().count(), 2);
    // Adding one's own registered key again says so.
    let extra_line = extra.public_line();
    let extra_body = extra_line.split_whitespace().nth(1).unwrap();
    w.bob(&["key", "add", parts[0], extra_body])
        .fails(1, "already registered to your account");
    w.gw.ssh_stdin(
        "bob",
        &w.bob,
        &["key", "add"],
        Some(b"ssh-dss AAAAB3NzaC1kc3M= x\n"),
    )
    .fails(2, "DSA");
    w.gw.ssh_stdin("bob", &w.bob, &["key", "add"], Some(b""))
        .fails(2, "no public key");
    w.bob(&["key", "remove", &extra.fingerprint()]).ok();
    w.gw.ssh("bob", &extra, &["whoami"]);
    assert_eq!(w.bob(&["key", "list", "--json"]).ok().count(), 1);
    w.bob(&["key", "remove", &w.bob.fingerprint()])
        .fails(1, "only key");
    w.bob(&["key", "remove", "SHA256:nope"]).fails(1, "no key");
}

#[test]
fn every_listing_is_json() {
    let Some(w) = world() else { return };
    w.alice(&["cluster", "create", "c1", "--nodes", "1"]).ok();
    w.alice(&["volume", "create", "data", "--size", "1GiB"])
        .ok();
    for args in [
        &["whoami", "--json"][..],
        &["project", "list", "--json"],
        &["cluster", "list", "--json"],
        &["cluster", "show", "c1", "--json"],
        &["cluster", "config", "c1", "--json"],
        &["node", "list", "--json"],
        &["volume", "list", "--json"],
        &["volume", "show", "data", "--json"],
        &["member", "list", "--json"],
        &["key", "list", "--json"],
        &["session", "list", "--json"],
        &["audit", "--json"],
        &["kubeconfig", "c1", "--json"],
        &["--json", "volume", "create", "v2", "--size", "2GiB"],
    ] {
        w.alice(args).ok().json();
    }
    // Errors under --json are JSON on stdout too, with the line on stderr.
    let r = w.alice(&["volume", "show", "ghost", "--json"]);
    r.fails(1, "no volume ghost");
    assert_eq!(r.json()["exit"], 1);
}

#[test]
fn help_and_usage_errors() {
    let Some(w) = world() else { return };
    let r = w.alice(&["help"]);
    r.ok();
    assert!(
        r.stdout.contains("cluster") && r.stdout.contains("member"),
        "{r:?}"
    );
    assert!(
        w.alice(&["help", "cluster", "create"])
            .ok()
            .stdout
            .contains("--nodes")
    );
    assert!(
        w.alice(&["cluster", "--help"])
            .ok()
            .stdout
            .contains("scale")
    );
    w.alice(&["frobnicate"]).fails(2, "unrecognized subcommand");
    w.alice(&["cluster", "explode"])
        .fails(2, "unrecognized subcommand");
    w.alice(&["cluster", "create", "c1"]).fails(2, "--nodes");
    w.alice(&["cluster", "list", "--bogus"])
        .fails(2, "unexpected argument");
    w.alice(&["cluster"]).fails(2, "needs a subcommand");
    w.alice(&["use", "train"]).ok();
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let Some(w) = world() else { return };
    let before = w.state();
    let cases: &[(&[&str], &str)] = &[
        (
            &["cluster", "create", "Bad", "--nodes", "1"],
            "invalid cluster name",
        ),
        (
            &["cluster", "create", "a;rm -rf /", "--nodes", "1"],
            "invalid cluster name",
        ),
        (
            &["cluster", "create", "$(reboot)", "--nodes", "1"],
            "invalid cluster name",
        ),
        (
            &["cluster", "create", "a`id`", "--nodes", "1"],
            "invalid cluster name",
        ),
        (
            &["cluster", "create", &"x".repeat(64), "--nodes", "1"],
            "invalid cluster name",
        ),
        (
            &["cluster", "create", "ok", "--nodes", "-1"],
            "invalid node count",
        ),
        (
            &["cluster", "create", "ok", "--nodes", "0"],
            "invalid node count",
        ),
        (
            &["cluster", "create", "ok", "--nodes", "two"],
            "invalid node count",
        ),
        (
            &["cluster", "create", "ok", "--nodes", "1.5"],
            "invalid node count",
        ),
        (
            &["cluster", "create", "ok", "--nodes", "99999999999999999999"],
            "invalid node count",
        ),
        (
            &[
                "cluster",
                "create",
                "ok",
                "--nodes",
                "1",
                "--gpu-type",
                "H100!",
            ],
            "invalid GPU type",
        ),
        (
            &["volume", "create", "v", "--size", "-5GiB"],
            "invalid size",
        ),
        (&["volume", "create", "v", "--size", "0GiB"], "invalid size"),
        (&["volume", "create", "v", "--size", "lots"], "invalid size"),
        (&["volume", "create", "v", "--size", "5"], "invalid size"),
        (&["volume", "create", "v", "--size", "5PB"], "invalid size"),
        (
            &["volume", "create", "v", "--size", "99999999999999TiB"],
            "invalid size",
        ),
        (
            &["volume", "create", "V!", "--size", "5GiB"],
            "invalid volume name",
        ),
        (&["member", "add", "bob"], "invalid email"),
        (
            &["member", "role", "bob@example.com", "root"],
            "invalid role",
        ),
        (&["cluster", "list", "-p", "Train"], "invalid project name"),
        (&["key", "remove", "md5:aa"], "invalid fingerprint"),
        (&["audit", "--limit", "-3"], "invalid limit"),
        (
            &["kubeconfig", "c1", "--socks-port", "70000"],
            "invalid --socks-port",
        ),
        (
            &["cluster", "create", "ok", "--nodes", "1", "extra"],
            "unexpected argument",
        ),
    ];
    for (args, msg) in cases {
        let r = w.alice(args);
        r.fails(2, msg);
        assert_eq!(r.stderr.lines().count(), 1, "one line: {r:?}");
    }
    // Quoting in the exec string is parsed like a shell would.
    {
        let mut cmd = w.gw.ssh_cmd("alice", &w.alice);
        cmd.arg("cluster create 'unbalanced --nodes 1");
        let out = common::run_with_timeout(&mut cmd, None, std::time::Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("unbalanced quotes"));
    }
    // Invalid UTF-8 in the command.
    {
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = w.gw.ssh_cmd("alice", &w.alice);
        cmd.arg(std::ffi::OsStr::from_bytes(b"whoami \xff\xfe"));
        let out = common::run_with_timeout(&mut cmd, None, std::time::Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not valid UTF-8"));
    }
    // A 200 KiB command line gets the clear error; 1 MiB exceeds the SSH
    // transport's 256 KiB packet limit and is dropped there, as by sshd.
    let piece = "a".repeat(100 * 1024);
    let mut big: Vec<&str> = vec!["volume", "create"];
    big.extend(std::iter::repeat_n(piece.as_str(), 2));
    w.alice(&big).fails(2, "command line too long");
    big.extend(std::iter::repeat_n(piece.as_str(), 8));
    assert_eq!(w.alice(&big).code, 255);
    // NUL and garbage through a terminal-less shell.
    let r = w.gw.ssh_stdin(
        "alice",
        &w.alice,
        &[],
        Some(b"whoami\x00\nvolume create x --size 1GiB\xff\n"),
    );
    assert!(
        r.stderr.contains("control characters or NUL") && r.stderr.contains("not valid UTF-8"),
        "{r:?}"
    );
    let junk: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let r = w.gw.ssh_stdin("alice", &w.alice, &[], Some(&junk));
    assert_ne!(r.code, 0);
    assert_eq!(w.state(), before, "nothing changed");
    // Every refused line is still an audit event, without the line.
    let unreadable =
        w.gw.audit_events()
            .into_iter()
            .filter(|e| {
                e["action"] == "invalid"
                    && e["actor"] == "alice"
                    && e["args"] == "[not recorded: the line could not be read]"
            })
            .count();
    assert!(unreadable >= 4, "{unreadable} unreadable lines audited");
    // Still serving.
    w.alice(&["whoami"]).ok();
}

#[test]
fn batch_shell_runs_lines_in_order() {
    let Some(w) = world() else { return };
    let r = w.gw.ssh_stdin(
        "alice",
        &w.alice,
        &[],
        Some(b"use train\nvolume create d1 --size 1GiB\nvolume list\n"),
    );
    r.ok();
    assert!(r.stdout.contains("d1"), "{r:?}");
    let r =
        w.gw.ssh_stdin("alice", &w.alice, &[], Some(b"volume show nope\n"));
    assert_eq!(r.code, 1, "the last command's status: {r:?}");
}

#[test]
fn authentication_is_publickey_only_and_exact() {
    let Some(w) = world() else { return };
    let denied = |r: Run| {
        assert_eq!(r.code, 255, "{r:?}");
        assert!(r.stderr.contains("Permission denied (publickey)"), "{r:?}");
    };
    // Right key, wrong login; another account's key; unknown key; no such user.
    denied(w.gw.ssh("bob", &w.alice, &["whoami"]));
    denied(w.gw.ssh("root", &w.alice, &["whoami"]));
    let stranger = Key::new(w.gw.dir.path(), "stranger");
    denied(w.gw.ssh("alice", &stranger, &["whoami"]));
    denied(w.gw.ssh("ALICE", &w.alice, &["whoami"]));
    // Passwords and keyboard-interactive are not offered.
    let mut cmd = std::process::Command::new("ssh");
    cmd.args(common::ssh_opts())
        .args([
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "PubkeyAuthentication=no",
        ])
        .args(["-p", &w.gw.port.to_string(), "alice@127.0.0.1", "whoami"]);
    let out = common::run_with_timeout(&mut cmd, None, std::time::Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied (publickey)"));
    // A disabled account.
    w.gw.cli(&["account", "disable", "bob@example.com"]).ok();
    denied(w.bob(&["whoami"]));
    // Failures are audited.
    let audit = w.gw.cli(&["audit", "--limit", "100", "--json"]).ok().json();
    let failed = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "auth" && e["outcome"] == "denied")
        .count();
    assert!(failed >= 5, "{failed} audited failures");
    w.alice(&["whoami"]).ok();
}

#[test]
fn host_key_is_created_private_and_kept() {
    if !common::have("ssh-keyscan") {
        return;
    }
    let mut gw = Gateway::new("");
    gw.start();
    let key_path = gw.path("data/host_ed25519");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let scan = |port: u16| {
        let mut cmd = std::process::Command::new("ssh-keyscan");
        cmd.args(["-t", "ed25519", "-p", &port.to_string(), "127.0.0.1"]);
        let out = common::run_with_timeout(&mut cmd, None, std::time::Duration::from_secs(20));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let first = scan(gw.port);
    assert!(first.contains("ssh-ed25519"), "{first}");
    gw.stop();
    gw.start();
    assert_eq!(scan(gw.port), first, "same host key after a restart");
    let log = gw.log_text();
    assert!(
        !log.contains("BEGIN OPENSSH PRIVATE KEY"),
        "the key is never logged"
    );
}

#[test]
fn a_world_readable_host_key_is_refused() {
    let mut gw = Gateway::new("");
    gw.start();
    gw.stop();
    let key_path = gw.path("data/host_ed25519");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.arg("--config").arg(&gw.config).arg("serve");
    let out = common::run_with_timeout(&mut cmd, None, std::time::Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("host_ed25519") && err.contains("chmod 600"),
        "{err}"
    );
}
