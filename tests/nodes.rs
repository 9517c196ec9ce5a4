//! Nodes trust the gateway (issue 12): real sshd nodes configured only with
//! what `gatehouse node enroll --dir` wrote (no user key in any
//! authorized_keys), asked at each login through their own AuthorizedKeysCommand.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, Key, Run};

/// A folder sshd accepts an AuthorizedKeysCommand in: it and every folder
/// above it root-owned and not writable by group or others (sshd(8)), so
/// not under the world-writable /tmp.
fn command_dir() -> Option<tempfile::TempDir> {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let ok = base.ancestors().all(|p| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
    });
    let base = if ok { base } else { Path::new("/run") };
    tempfile::Builder::new()
        .prefix("gh-node")
        .tempdir_in(base)
        .ok()
}

/// `gatehouse node enroll n1 --gateway GW --dir DIR`.
fn enroll(gw: &Gateway, dir: &Path) {
    gw.cli(&[
        "node",
        "enroll",
        "n1",
        "--gateway",
        &format!("127.0.0.1:{}", gw.port),
        "--dir",
        dir.to_str().unwrap(),
    ])
    .ok();
}

/// A real sshd whose only idea of who may log in is the enrolment in
/// `enrolled` (an `Include` of its sshd_config) plus a break-glass
/// authorized_keys file.
struct Node {
    port: u16,
    dir: tempfile::TempDir,
    breakglass: PathBuf,
    child: Child,
}

impl Node {
    fn start(port: u16, enrolled: &Path) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let host_key = Key::new(dir.path(), "host_key").private;
        // The enrolment's AuthorizedKeysFile comes first and wins over the
        // node's own (~/.ssh/authorized_keys, which a user could write).
        let breakglass = enrolled.join("breakglass_keys");
        let users_own = ".ssh/authorized_keys";
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Include {enrolled}/sshd_config\nPort {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n",
                host_key.display(),
                dir.path().join("sshd.pid").display(),
                users_own,
                enrolled = enrolled.display(),
            ),
        )
        .unwrap();
        let check = Command::new("/usr/sbin/sshd")
            .args(["-T", "-f"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "sshd -T: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let effective = String::from_utf8_lossy(&check.stdout).to_string();
        assert!(
            effective.contains(&format!("authorizedkeysfile {}", breakglass.display())),
            "the enrolment decides where keys may come from: {effective}"
        );
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd");
        assert!(common::wait_port(port, Duration::from_secs(10)));
        Node {
            port,
            dir,
            breakglass,
            child,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// train (alice admin, bob member) with cluster c1 on node n1, whose
/// node_user is the local user; infer (carol admin); dave in no project.
struct World {
    gw: Gateway,
    alice: Key,
    bob: Key,
    carol: Key,
    dave: Key,
    node: Node,
    enrolled: tempfile::TempDir,
    user: String,
}

fn world() -> Option<World> {
    if !common::have("ssh") || !common::have("sshd") {
        return None;
    }
    let enrolled = match command_dir() {
        Some(d) => d,
        None => {
            let msg = "\n*** SKIPPED: no root-owned folder for an AuthorizedKeysCommand (run as root) ***\n";
            assert!(!common::required(), "{msg}");
            eprintln!("{msg}");
            return None;
        }
    };
    let mut gw = Gateway::new("");
    let alice = gw.account("alice@example.com");
    let bob = gw.account("bob@example.com");
    let carol = gw.account("carol@example.com");
    let dave = gw.account("dave@example.com");
    gw.cli(&["project", "create", "train", "--admin", "alice@example.com"])
        .ok();
    gw.cli(&["project", "create", "infer", "--admin", "carol@example.com"])
        .ok();
    let port = common::free_port();
    gw.cli(&["node", "register", "n1", &format!("127.0.0.1:{port}")])
        .ok();
    common::start_with_c1(&mut gw, &alice, 1);
    let user = common::local_user();
    gw.ssh(
        "alice",
        &alice,
        &["cluster", "config", "c1", &format!("node_user={user}")],
    )
    .ok();
    enroll(&gw, enrolled.path());
    let node = Node::start(port, enrolled.path());
    Some(World {
        gw,
        alice,
        bob,
        carol,
        dave,
        node,
        enrolled,
        user,
    })
}

impl World {
    /// `ssh -J LOGIN@gw USER@n1.c1 CMD` with `key` for both hops.
    fn jump(&self, login: &str, key: &Key, cmd: &str) -> Run {
        let cfg = common::jump_config(&self.gw, login, key);
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(&cfg)
            .args(["-J", "gw"])
            .arg(format!("{}@n1.c1", self.user))
            .arg(cmd);
        common::run(&mut c)
    }

    /// Straight to the node, not through the gateway.
    fn direct(&self, key: &Key, user: &str) -> Run {
        let mut c = Command::new("ssh");
        c.args(common::ssh_opts())
            .arg("-i")
            .arg(&key.private)
            .args(["-p", &self.node.port.to_string()])
            .arg(format!("{user}@127.0.0.1"))
            .arg("echo in");
        common::run(&mut c)
    }

    fn questions(&self) -> Vec<serde_json::Value> {
        self.gw
            .audit_events()
            .into_iter()
            .filter(|e| e["action"] == "node question")
            .collect()
    }
}

#[track_caller]
fn refused(r: &Run) {
    assert_eq!(r.code, 255, "{r:?}");
    assert!(r.stderr.contains("Permission denied"), "{r:?}");
}

#[test]
fn a_member_added_by_the_seeds_flow_logs_in_with_nothing_copied() {
    let Some(w) = world() else { return };
    let r = w.jump("bob", &w.bob, "echo hello from the node");
    assert_eq!(r.code, 0, "{r:?}\nsshd: {}", w.node.log());
    assert_eq!(r.stdout, "hello from the node\n");
    // Admins too: the seed gives both roles SSH into nodes.
    assert_eq!(w.jump("alice", &w.alice, "true").code, 0);
    // The node's auth log has the key; the gateway's audit, whose it is.
    let fp = w.bob.fingerprint();
    assert!(
        w.node
            .log()
            .contains(&format!("Accepted publickey for {} from", w.user))
            && w.node.log().contains(&fp),
        "{}",
        w.node.log()
    );
    let q = w.questions();
    assert!(q.iter().any(|e| e["outcome"] == "ok"
        && e["target"] == fp.as_str()
        && e["detail"].as_str().unwrap().contains("to bob@example.com")
        && e["actor"] == "node.n1"));
    let nodes = w.gw.cli(&["node", "list", "--json"]).ok().json();
    assert_eq!(nodes[0]["enrolled"], true);
    assert!(nodes[0]["last_asked"].is_string());
    let table = w.gw.cli(&["node", "list"]).ok().stdout.clone();
    assert!(
        table.contains("ENROLLED") && table.contains("yes"),
        "{table}"
    );

    // scp, rsync and -L on the node, through the gateway.
    let cfg = common::jump_config(&w.gw, "bob", &w.bob);
    let src = w.gw.path("payload.bin");
    std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
    let remote = format!("/tmp/gh-node-{}.bin", std::process::id());
    let mut c = Command::new("scp");
    c.arg("-F")
        .arg(&cfg)
        .args(["-J", "gw"])
        .arg(&src)
        .arg(format!("{}@n1.c1:{remote}", w.user));
    common::run(&mut c).ok();
    assert_eq!(std::fs::read(&remote).unwrap().len(), 1 << 20);
    if common::have("rsync") {
        let dst = w.gw.path("back.bin");
        let mut c = Command::new("rsync");
        c.args(["-a", "-e"])
            .arg(format!("ssh -F {} -J gw", cfg.display()))
            .arg(format!("{}@n1.c1:{remote}", w.user))
            .arg(&dst);
        common::run(&mut c).ok();
        assert_eq!(std::fs::read(&dst).unwrap().len(), 1 << 20);
    }
    let _ = std::fs::remove_file(&remote);
    let echo = common::echo_server();
    let local = common::free_port();
    let mut c = Command::new("ssh");
    c.arg("-F")
        .arg(&cfg)
        .args(["-J", "gw", "-N", "-L"])
        .arg(format!("{local}:127.0.0.1:{echo}"))
        .arg(format!("{}@n1.c1", w.user))
        .stdin(Stdio::null());
    let mut tunnel = c.spawn().unwrap();
    assert!(common::wait_port(local, Duration::from_secs(15)));
    common::assert_echo(local, b"through the node\n");
    let _ = tunnel.kill();
    let _ = tunnel.wait();
}

#[test]
fn the_gateway_refuses_everyone_else_at_the_node() {
    let Some(w) = world() else { return };
    assert_eq!(w.jump("bob", &w.bob, "true").code, 0);
    assert_eq!(
        w.direct(&w.bob, &w.user).code,
        0,
        "direct works while a member"
    );
    // A non-member with a registered key; a member of another project.
    refused(&w.direct(&w.dave, &w.user));
    refused(&w.direct(&w.carol, &w.user));
    // Another Unix user than node_user.
    refused(&w.direct(&w.bob, "nobody"));
    // A disabled account.
    w.gw.cli(&["account", "disable", "bob@example.com"]).ok();
    refused(&w.direct(&w.bob, &w.user));
    w.gw.cli(&["account", "enable", "bob@example.com"]).ok();
    assert_eq!(w.direct(&w.bob, &w.user).code, 0);
    // A key removed from the account: that key only.
    let second = Key::new(w.gw.dir.path(), "bob-second");
    w.gw.cli(&[
        "key",
        "add",
        "bob@example.com",
        "--file",
        second.public.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(w.direct(&second, &w.user).code, 0);
    w.gw.cli(&["key", "remove", "bob@example.com", &second.fingerprint()])
        .ok();
    refused(&w.direct(&second, &w.user));
    assert_eq!(w.direct(&w.bob, &w.user).code, 0);
    // Removed from the project: refused through the gateway and directly.
    w.gw.ssh(
        "alice",
        &w.alice,
        &["member", "remove", "bob@example.com", "--yes"],
    )
    .ok();
    refused(&w.direct(&w.bob, &w.user));
    assert_ne!(w.jump("bob", &w.bob, "true").code, 0);
    // Every question is audited with why.
    let q = w.questions();
    for why in [
        "is not a member of project train",
        "is not node_user",
        "is disabled",
        "the key is not registered",
    ] {
        assert!(
            q.iter()
                .any(|e| e["outcome"] == "denied" && e["detail"].as_str().unwrap().contains(why)),
            "{why}: {q:?}"
        );
    }
}

#[test]
fn a_node_scaled_away_grants_nobody() {
    let Some(w) = world() else { return };
    assert_eq!(w.direct(&w.alice, &w.user).code, 0);
    w.gw.ssh(
        "alice",
        &w.alice,
        &["cluster", "scale", "c1", "--nodes", "0", "--yes"],
    )
    .ok();
    refused(&w.direct(&w.alice, &w.user));
    assert!(
        w.questions()
            .iter()
            .any(|e| e["detail"].as_str().unwrap().contains("is in no cluster"))
    );
}

#[test]
fn with_the_gateway_down_only_break_glass_keys_work() {
    let Some(mut w) = world() else { return };
    let glass = Key::new(w.gw.dir.path(), "breakglass");
    std::fs::write(&w.node.breakglass, glass.public_line() + "\n").unwrap();
    // Re-enrolling keeps the node's break-glass keys.
    enroll(&w.gw, w.enrolled.path());
    assert!(
        std::fs::read_to_string(&w.node.breakglass)
            .unwrap()
            .contains("breakglass")
    );
    assert_eq!(w.direct(&w.bob, &w.user).code, 0);
    w.gw.stop();
    let started = Instant::now();
    refused(&w.direct(&w.bob, &w.user));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the node's wait is bounded"
    );
    assert_eq!(w.direct(&glass, &w.user).code, 0, "break-glass");
}

#[test]
fn a_reenrolled_nodes_old_credential_is_refused() {
    let Some(w) = world() else { return };
    assert_eq!(w.direct(&w.bob, &w.user).code, 0);
    let elsewhere = command_dir().unwrap();
    enroll(&w.gw, elsewhere.path());
    // The running node still holds the old credential.
    refused(&w.direct(&w.bob, &w.user));
    assert!(w.gw.log_text().contains("unknown node or node credential"));
    // The new files work.
    for f in ["node_key", "known_hosts"] {
        std::fs::copy(elsewhere.path().join(f), w.enrolled.path().join(f)).unwrap();
    }
    assert_eq!(w.direct(&w.bob, &w.user).code, 0);
    // Modes: the key is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(elsewhere.path().join("node_key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn the_enrolment_script_installs_on_a_debian_node() {
    let gw = Gateway::new("[nodes]\ngateway = \"gw.example.com:2222\"\n");
    gw.cli(&["node", "register", "gpu-1", "10.0.0.1:22"]).ok();
    let r = gw.cli(&["node", "enroll", "gpu-1"]);
    r.ok();
    let script = &r.stdout;
    assert!(script.starts_with("#!/bin/sh\n"));
    for needle in [
        "/etc/ssh/sshd_config.d/gatehouse.conf",
        "AuthorizedKeysCommand /etc/gatehouse/authorized-keys %u %f",
        "AuthorizedKeysCommandUser gatehouse-node",
        "useradd --system",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "[gw.example.com]:2222 ssh-ed25519 ",
        "node.gpu-1@gw.example.com",
        "sshd -t",
    ] {
        assert!(script.contains(needle), "{needle}:\n{script}");
    }
    if common::have("sh") {
        let out = Command::new("sh")
            .args(["-n", "-c", script])
            .output()
            .unwrap();
        assert!(out.status.success(), "the script parses");
    }
    gw.cli(&["node", "enroll", "ghost"])
        .fails(1, "no node ghost");
    let bare = Gateway::new("");
    bare.cli(&["node", "register", "gpu-1", "10.0.0.1:22"]).ok();
    bare.cli(&["node", "enroll", "gpu-1"])
        .fails(2, "give --gateway HOST:PORT");
    // The private key never reaches the audit log.
    let audit = gw.cli(&["audit", "--json"]).ok().stdout.clone();
    assert!(!audit.contains("PRIVATE KEY") && audit.contains("node enroll"));
}

#[test]
fn a_granted_key_opens_no_listener_on_the_node() {
    let Some(w) = world() else { return };
    let cfg = common::jump_config(&w.gw, "bob", &w.bob);
    let listen = common::free_port();
    let mut c = Command::new("ssh");
    c.arg("-F")
        .arg(&cfg)
        .args(["-J", "gw", "-o", "ExitOnForwardFailure=yes", "-R"])
        .arg(format!("127.0.0.1:{listen}:127.0.0.1:22"))
        .arg(format!("{}@n1.c1", w.user))
        .arg("true");
    let r = common::run(&mut c);
    assert_ne!(r.code, 0, "-R refused: {r:?}");
    assert!(r.stderr.contains("remote port forwarding failed"), "{r:?}");
}

#[test]
fn a_live_node_connection_answers_as_the_node_is_now() {
    let Some(w) = world() else { return };
    // The node's own client, kept open as a control master.
    let sock = w.gw.path("node-master.sock");
    let key = w.enrolled.path().join("node_key");
    let base = |c: &mut Command| {
        c.args(common::ssh_opts())
            .arg("-i")
            .arg(&key)
            .arg("-o")
            .arg(format!("ControlPath={}", sock.display()))
            .args(["-p", &w.gw.port.to_string(), "node.n1@127.0.0.1"]);
    };
    let mut master = Command::new("ssh");
    master.args(["-o", "ControlMaster=yes", "-N"]);
    base(&mut master);
    let mut master = master.stdin(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ask = || {
        let mut c = Command::new("ssh");
        base(&mut c);
        c.args(["authorized-keys", &w.user, &w.bob.fingerprint()]);
        common::run(&mut c)
    };
    assert!(ask().stdout.contains("gatehouse:bob@example.com:train"));
    let elsewhere = command_dir().unwrap();
    enroll(&w.gw, elsewhere.path());
    let r = ask();
    assert!(
        r.stdout.is_empty(),
        "the old credential answers nothing: {r:?}"
    );
    assert!(w.questions().iter().any(|e| {
        e["detail"]
            .as_str()
            .unwrap()
            .contains("credential is no longer valid")
    }));
    let _ = master.kill();
    let _ = master.wait();
}
