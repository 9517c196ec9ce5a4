//! The data plane end to end: real sshd nodes on loopback ports, the real
//! OpenSSH client through the gateway (`-J`, `-W`, `-L`, `-D`), scp, kubectl,
//! and live sessions cut when access is revoked.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, Key, Run, Sshd};

struct World {
    gw: Gateway,
    alice: Key,
    bob: Key,
    carol: Key,
    nodes: Vec<Sshd>,
    user: String,
}

/// train (alice admin, bob member) has cluster c1 = node-1, node-2;
/// infer (carol admin) has cluster c9 = node-3. Each node is a real sshd.
fn world() -> Option<World> {
    if !common::have("ssh") || !common::have("sshd") {
        return None;
    }
    let mut gw =
        Gateway::new("[limits]\nconnect_timeout = \"3s\"\npenalty_after_failures = 1000\n");
    let alice = gw.account("alice@example.com");
    let bob = gw.account("bob@example.com");
    let carol = gw.account("carol@example.com");
    gw.cli(&["project", "create", "train", "--admin", "alice@example.com"])
        .ok();
    gw.cli(&["project", "create", "infer", "--admin", "carol@example.com"])
        .ok();
    let nodes: Vec<Sshd> = (0..3)
        .map(|_| Sshd::start(&[&alice, &bob, &carol]))
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        gw.cli(&[
            "node",
            "register",
            &format!("node-{}", i + 1),
            &format!("127.0.0.1:{}", n.port),
        ])
        .ok();
    }
    common::start_with_c1(&mut gw, &alice, 2);
    gw.ssh(
        "carol",
        &carol,
        &["cluster", "create", "c9", "--nodes", "1"],
    )
    .ok();
    Some(World {
        gw,
        alice,
        bob,
        carol,
        nodes,
        user: common::local_user(),
    })
}

impl World {
    /// `ssh -F cfg -J gw USER@TARGET [-p PORT] CMD`
    fn jump(&self, login: &str, key: &Key, target: &str, port: Option<u16>, cmd: &str) -> Run {
        let cfg = common::jump_config(&self.gw, login, key);
        let mut c = Command::new("ssh");
        c.arg("-F").arg(&cfg).args(["-J", "gw"]);
        if let Some(p) = port {
            c.args(["-p", &p.to_string()]);
        }
        c.arg(format!("{}@{target}", self.user)).arg(cmd);
        common::run(&mut c)
    }

    /// `ssh -W TARGET gw` with `stdin`.
    fn stdio_forward(&self, login: &str, key: &Key, target: &str) -> Run {
        // ssh takes the first value of an option: VERBOSE shows the reason
        // a channel open failed.
        let mut c = Command::new("ssh");
        c.args(["-o", "LogLevel=VERBOSE"])
            .args(common::ssh_opts())
            .arg("-i")
            .arg(&key.private)
            .args([
                "-p",
                &self.gw.port.to_string(),
                &format!("{login}@127.0.0.1"),
                "-W",
                target,
            ]);
        common::run(&mut c)
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        self.gw.audit_events()
    }
}

#[test]
fn jump_to_nodes_by_name_and_address() {
    let Some(w) = world() else { return };
    for target in ["node-1.c1", "node-1.c1.train", "NODE-2.C1"] {
        let r = w.jump(
            "bob",
            &w.bob,
            target,
            None,
            "echo hello from $(hostname); exit 3",
        );
        assert_eq!(r.code, 3, "exit status comes back through the jump: {r:?}");
        assert!(r.stdout.contains("hello from"), "{r:?}");
    }
    // By registered address.
    let r = w.jump(
        "alice",
        &w.alice,
        "127.0.0.1",
        Some(w.nodes[0].port),
        "echo by-address",
    );
    r.ok();
    assert!(r.stdout.contains("by-address"));
    let audit = w.audit();
    assert!(audit.iter().any(|e| e["action"] == "forward"
        && e["actor"] == "bob"
        && e["outcome"] == "ok"
        && e["detail"].as_str().unwrap().contains("bytes to target")));
}

#[test]
fn scp_through_the_jump_keeps_every_byte() {
    let Some(w) = world() else { return };
    if !common::have("scp") {
        return;
    }
    let src = w.gw.path("payload.bin");
    let data: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let dest = w.nodes[0].dir.path().join("received.bin");
    let cfg = common::jump_config(&w.gw, "bob", &w.bob);
    let mut c = Command::new("scp");
    c.arg("-F")
        .arg(&cfg)
        .args(["-J", "gw"])
        .arg(&src)
        .arg(format!("{}@node-1.c1:{}", w.user, dest.display()));
    common::run(&mut c).ok();
    use sha2::Digest;
    assert_eq!(
        sha2::Sha256::digest(std::fs::read(&dest).unwrap()),
        sha2::Sha256::digest(&data)
    );
}

#[test]
fn local_forward_to_another_port_on_a_node() {
    let Some(w) = world() else { return };
    let echo = common::echo_server();
    let local = common::free_port();
    let mut tunnel = w.gw.ssh_cmd("bob", &w.bob);
    tunnel.args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("{local}:node-1.c1:{echo}"),
    ]);
    let mut tunnel = tunnel
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(common::wait_port(local, Duration::from_secs(10)));
    common::assert_echo(local, b"ping through the gateway");
    let _ = tunnel.kill();
    let _ = tunnel.wait();
}

#[test]
fn the_gateway_is_not_an_open_proxy() {
    let Some(w) = world() else { return };
    let gw_port = w.gw.port.to_string();
    let infer_addr = format!("127.0.0.1:{}", w.nodes[2].port);
    let refused = [
        "node-3.c9".to_string(),
        "node-3.c9.infer".to_string(),
        infer_addr.clone(),
        "unregistered.example.com:22".to_string(),
        "127.0.0.2:22".to_string(),
        format!("127.0.0.1:{gw_port}"),
        "localhost:22".to_string(),
        "kube.c9.infer:443".to_string(),
        "dashboard.c1:443".to_string(),
    ];
    for target in &refused {
        let t = if target.contains(':') {
            target.clone()
        } else {
            format!("{target}:22")
        };
        let r = w.stdio_forward("bob", &w.bob, &t);
        assert_eq!(r.code, 255, "{t}: {r:?}");
        assert!(
            r.stderr.contains("administratively prohibited"),
            "{t}: {r:?}"
        );
    }
    // The owner of those nodes does reach them.
    let r = w.jump("carol", &w.carol, "node-3.c9", None, "echo mine");
    r.ok();

    // Remote forwarding and agent forwarding are refused.
    let mut c = w.gw.ssh_cmd("bob", &w.bob);
    c.args([
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "0:127.0.0.1:22",
        "whoami",
    ]);
    let r = common::run(&mut c);
    assert_eq!(r.code, 255, "{r:?}");
    let agent_sock = w.gw.path("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&agent_sock)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent_sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Command::new("ssh");
    // The first value of an option wins: these override the common ones.
    c.env("SSH_AUTH_SOCK", &agent_sock)
        .args(["-A", "-o", "IdentityAgent=SSH_AUTH_SOCK"])
        .args(common::ssh_opts())
        .arg("-i")
        .arg(&w.bob.private)
        .args(["-p", &w.gw.port.to_string(), "bob@127.0.0.1", "whoami"]);
    common::run(&mut c).ok();
    let _ = agent.kill();
    let _ = agent.wait();

    // Each refusal is audited with its reason.
    let audit = w.audit();
    for target in &refused {
        let t = if target.contains(':') {
            target.clone()
        } else {
            format!("{target}:22")
        };
        assert!(
            audit.iter().any(|e| e["action"] == "forward"
                && e["outcome"] == "denied"
                && e["target"] == t.as_str()
                && e["detail"].as_str().unwrap().starts_with("refused: ")),
            "no audit event for {t}"
        );
    }
    assert!(audit.iter().any(
        |e| e["action"].as_str().unwrap().starts_with("remote forward") && e["outcome"] == "denied"
    ));
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "agent forwarding" && e["outcome"] == "denied")
    );
}

// kubectl through `ssh -D` and `ssh -L` reaches the gateway's Kubernetes
// front door: tests/kube.rs.

fn live_jump(w: &World, key: &Key, login: &str, target: &str) -> Child {
    let cfg = common::jump_config(&w.gw, login, key);
    let mut c = Command::new("ssh");
    c.arg("-F")
        .arg(&cfg)
        .args(["-J", "gw"])
        .arg(format!("{}@{target}", w.user))
        .arg("echo up; sleep 60");
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 3];
    out.read_exact(&mut buf).expect("the jump session is up");
    assert_eq!(&buf, b"up\n");
    child
}

/// An open interactive shell of bob's on the gateway.
fn live_shell(w: &World) -> Child {
    common::live_shell(&w.gw, "bob", &w.bob, "bob@train> ")
}

/// Asserts every child ends soon after `revoke` runs; returns how long it took.
#[track_caller]
fn ended_after(children: &mut [Child], revoke: impl FnOnce()) -> Duration {
    let start = Instant::now();
    revoke();
    for c in children.iter_mut() {
        let st = common::wait_exit(c, Duration::from_secs(3));
        assert!(st.is_some(), "a live session survived the revocation");
    }
    let took = start.elapsed();
    eprintln!("sessions ended {took:?} after the revocation started");
    took
}

#[test]
fn removing_a_member_ends_their_jump_and_shell() {
    let Some(w) = world() else { return };
    let mut live = vec![live_jump(&w, &w.bob, "bob", "node-1.c1"), live_shell(&w)];
    // alice's own session is untouched.
    let mut alices = live_jump(&w, &w.alice, "alice", "node-2.c1");
    ended_after(&mut live, || {
        w.gw.ssh(
            "alice",
            &w.alice,
            &["member", "remove", "bob@example.com", "--yes"],
        )
        .ok();
    });
    assert!(
        alices.try_wait().unwrap().is_none(),
        "others keep their sessions"
    );
    let _ = alices.kill();
    let _ = alices.wait();
    w.stdio_forward("bob", &w.bob, "node-1.c1:22");
    assert_ne!(w.stdio_forward("bob", &w.bob, "node-1.c1:22").code, 0);
}

#[test]
fn disabling_an_account_ends_all_its_sessions() {
    let Some(w) = world() else { return };
    let mut live = vec![live_jump(&w, &w.bob, "bob", "node-1.c1"), live_shell(&w)];
    ended_after(&mut live, || {
        w.gw.cli(&["account", "disable", "bob@example.com"]).ok();
    });
}

#[test]
fn removing_the_key_ends_the_sessions_that_used_it() {
    let Some(w) = world() else { return };
    let spare = Key::new(w.gw.dir.path(), "spare");
    w.gw.cli(&[
        "key",
        "add",
        "bob@example.com",
        "--file",
        spare.public.to_str().unwrap(),
    ])
    .ok();
    // The node must let the spare key in too; the gateway decides the rest.
    for n in &w.nodes {
        let auth = n.dir.path().join("authorized_keys");
        let mut keys = std::fs::read_to_string(&auth).unwrap();
        keys.push_str(&spare.public_line());
        keys.push('\n');
        std::fs::write(&auth, keys).unwrap();
    }
    let mut live = vec![live_jump(&w, &w.bob, "bob", "node-1.c1")];
    let mut other = live_jump(&w, &spare, "bob", "node-2.c1");
    ended_after(&mut live, || {
        w.gw.cli(&["key", "remove", "bob@example.com", &w.bob.fingerprint()])
            .ok();
    });
    assert!(
        other.try_wait().unwrap().is_none(),
        "the session of the other key lives on"
    );
    let _ = other.kill();
    let _ = other.wait();
}

#[test]
fn deleting_or_shrinking_a_cluster_ends_forwards_to_its_nodes() {
    let Some(w) = world() else { return };
    // Scale down releases node-2 (the last by name): its forward ends, node-1's stays.
    let mut on_two = vec![live_jump(&w, &w.bob, "bob", "node-2.c1")];
    let mut on_one = live_jump(&w, &w.bob, "bob", "node-1.c1");
    ended_after(&mut on_two, || {
        w.gw.ssh(
            "alice",
            &w.alice,
            // It ends a live forward, so it asks first.
            &["cluster", "scale", "c1", "--nodes", "1", "--yes"],
        )
        .ok();
    });
    assert!(on_one.try_wait().unwrap().is_none());
    let mut on_one = vec![on_one];
    ended_after(&mut on_one, || {
        w.gw.ssh("alice", &w.alice, &["cluster", "delete", "c1", "--yes"])
            .ok();
    });
}

#[test]
fn session_kill_ends_a_session() {
    let Some(w) = world() else { return };
    let mut live = vec![live_jump(&w, &w.bob, "bob", "node-1.c1")];
    let list =
        w.gw.ssh("bob", &w.bob, &["session", "list", "--json"])
            .ok()
            .json();
    let mine: Vec<&serde_json::Value> = list.as_array().unwrap().iter().collect();
    assert!(
        mine.iter().all(|s| s["login"] == "bob"),
        "members see their own sessions only"
    );
    let all =
        w.gw.ssh("alice", &w.alice, &["session", "list", "--json"])
            .ok()
            .json();
    let target = all
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["login"] == "bob"
                && s["channels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["kind"] == "forward")
        })
        .expect("bob's jump session is listed with its forward")["id"]
        .as_str()
        .unwrap()
        .to_string();
    ended_after(&mut live, || {
        w.gw.ssh("alice", &w.alice, &["session", "kill", &target])
            .ok();
    });
    w.gw.ssh("alice", &w.alice, &["session", "kill", "nope-1"])
        .fails(1, "no session");
}

#[test]
fn a_quarter_gigabyte_through_a_forward_arrives_intact() {
    let Some(w) = world() else { return };
    let sink = common::digest_server();
    let mut child = stdio_forward(&w, &format!("node-1.c1:{sink}"));
    let stdin = child.stdin.take().unwrap();
    let total: usize = 256 * 1024 * 1024;
    let writer = std::thread::spawn(move || {
        let sha = write_stream(stdin, total, 12345).expect("wrote every byte");
        format!("{sha} {total}")
    });
    let status =
        common::wait_exit(&mut child, Duration::from_secs(300)).expect("transfer finished");
    let expected = writer.join().unwrap();
    let mut got = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        got.trim(),
        expected,
        "every byte arrived, and the half-close too"
    );
}

#[test]
fn fifty_forwards_at_once() {
    let Some(w) = world() else { return };
    let echo = common::echo_server();
    let local = common::free_port();
    let mut tunnel = w.gw.ssh_cmd("alice", &w.alice);
    tunnel.args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("{local}:node-2.c1:{echo}"),
    ]);
    let mut tunnel = tunnel.stdin(Stdio::null()).spawn().unwrap();
    assert!(common::wait_port(local, Duration::from_secs(10)));
    let streams: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(("127.0.0.1", local)).unwrap())
        .collect();
    // Each thread hands its stream back, so all 50 stay open for the count.
    let handles: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let msg = format!("forward number {i:02} ").repeat(1000);
                s.write_all(msg.as_bytes()).unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).unwrap();
                assert_eq!(back, msg.as_bytes());
                s
            })
        })
        .collect();
    let open: Vec<TcpStream> = handles
        .into_iter()
        .map(|h| h.join().expect("every forward echoed its own bytes"))
        .collect();
    let sessions =
        w.gw.ssh("alice", &w.alice, &["session", "list", "--json"])
            .ok()
            .json();
    let forwards: usize = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["channels"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["kind"] == "forward")
                .count()
        })
        .sum();
    assert_eq!(forwards, 50, "all 50 are live at once");
    drop(open);
    let _ = tunnel.kill();
    let _ = tunnel.wait();
}

/// Both directions full at once: an echo target sends everything back while
/// the client is still sending. Nothing may wedge between the two.
#[test]
fn a_forward_carries_heavy_traffic_both_ways_at_once() {
    let Some(w) = world() else { return };
    let echo = common::echo_server();
    let mut child = stdio_forward(&w, &format!("node-1.c1:{echo}"));
    let stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let total: usize = 64 * 1024 * 1024;
    let writer = std::thread::spawn(move || write_stream(stdin, total, 777));
    let reader = std::thread::spawn(move || common::sha256_of(&mut stdout, total as u64));
    // Bounded: a wedged forward must fail the test, not hang it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let finished = reader.is_finished();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        finished,
        "the echo did not come back within 120 s: the forward wedged"
    );
    let (got, n) = reader.join().unwrap();
    assert_eq!(n, total as u64, "every byte came back");
    let sent = writer.join().unwrap().expect("wrote every byte");
    assert_eq!(got, sent, "and unchanged");
}

/// `ssh -W TARGET` through the gateway as bob, with all three pipes.
fn stdio_forward(w: &World, target: &str) -> Child {
    let mut c = w.gw.ssh_cmd("bob", &w.bob);
    c.args(["-W", target]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Writes `total` bytes (whole MiB) of a xorshift stream seeded with
/// `seed`, then closes `out`; the SHA-256 (hex) of what was written.
fn write_stream(mut out: impl Write, total: usize, seed: u32) -> std::io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    let mut x = seed;
    for _ in 0..total / block.len() {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        h.update(&block);
        out.write_all(&block)?;
    }
    Ok(format!("{:x}", h.finalize()))
}

/// A target nobody listens on: the client is told the open failed and the
/// audit says why, with the address tried.
#[test]
fn a_target_that_refuses_is_reported_and_audited() {
    let Some(w) = world() else { return };
    let closed = common::free_port();
    let mut child = stdio_forward(&w, &format!("node-1.c1:{closed}"));
    let status = common::wait_exit(&mut child, Duration::from_secs(30)).expect("ssh ended");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "{status:?}");
    assert!(err.contains("forwarding failed"), "{err}");
    let wanted = format!("(127.0.0.1:{closed}): connection refused");
    assert!(
        w.audit().iter().any(|e| e["action"] == "forward"
            && e["actor"] == "bob"
            && e["outcome"] == "failed"
            && e["detail"].as_str().unwrap().contains(&wanted)),
        "no failed forward to {closed} in the audit"
    );
}
