//! Running it in production: the systemd unit, metrics, JSON logs, limits,
//! per-source penalties, graceful shutdown and database outages.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, Key, http_get, metric};

/// Project `train` (admin alice) with cluster `c1` on one node whose host
/// runs an echo server. Call once the gateway is started; returns the port.
fn echo_cluster(gw: &Gateway, alice: &Key) -> u16 {
    gw.cli(&["project", "create", "train", "--admin", "alice@example.com"])
        .ok();
    let echo = common::echo_server();
    gw.cli(&["node", "register", "n1", &format!("127.0.0.1:{echo}")])
        .ok();
    gw.ssh("alice", alice, &["cluster", "create", "c1", "--nodes", "1"])
        .ok();
    echo
}

/// `ssh -W n1.c1:ECHO` through the gateway, used as a byte pipe.
struct EchoForward {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::process::ChildStdout,
}

impl EchoForward {
    fn open(gw: &Gateway, key: &Key, echo: u16) -> EchoForward {
        let mut cmd = gw.ssh_cmd("alice", key);
        cmd.args(["-W", &format!("n1.c1:{echo}")]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        EchoForward {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends `data` and reads it back; false once the forward is gone.
    fn echo(&mut self, data: &[u8]) -> bool {
        if self.stdin.write_all(data).is_err() {
            return false;
        }
        let mut got = vec![0u8; data.len()];
        self.stdout.read_exact(&mut got).is_ok() && got == data
    }

    fn roundtrip(&mut self, b: u8) -> bool {
        self.echo(&[b])
    }
}

impl Drop for EchoForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn systemd_unit_passes_verify() {
    if !common::have("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/gatehouse.service"
    ))
    .unwrap();
    assert!(
        unit.contains("Type=notify")
            && unit.contains("ProtectSystem=strict")
            && unit.contains("CAP_NET_BIND_SERVICE")
    );
    // Documentation= names a file the README's deployment installs.
    let doc = "/usr/local/share/doc/gatehouse/README.md";
    assert!(unit.contains(&format!("Documentation=file://{doc}")));
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains(&format!("install -D -m 0644 README.md {doc}")));
    // verify checks that ExecStart exists: point it at the built binary.
    let path = dir.path().join("gatehouse.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/gatehouse", common::BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("gatehouse.service:"),
        "warnings about the unit: {err}"
    );
}

fn metrics_gateway(extra: &str) -> (Gateway, u16) {
    let mport = common::free_port();
    let gw = Gateway::new(&format!(
        "\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n{extra}"
    ));
    (gw, mport)
}

#[test]
fn metrics_move_as_real_clients_work() {
    if !common::have("ssh") {
        return;
    }
    let (mut gw, mport) = metrics_gateway("");
    let alice = gw.account("alice@example.com");
    gw.start();
    let echo = echo_cluster(&gw, &alice);
    let (code, before) = http_get(mport, "/metrics");
    assert_eq!(code, 200);
    gw.ssh("alice", &alice, &["whoami"]).ok();
    gw.ssh(
        "alice",
        &alice,
        &["volume", "create", "BAD", "--size", "1GiB"],
    )
    .fails(2, "invalid");
    let stranger = Key::new(gw.dir.path(), "stranger");
    assert_eq!(gw.ssh("alice", &stranger, &["whoami"]).code, 255);
    let mut fwd = EchoForward::open(&gw, &alice, echo);
    assert!(fwd.echo(&vec![7u8; 100_000]));
    let (_, during) = http_get(mport, "/metrics");
    assert_eq!(
        metric(&during, "gatehouse_channels_open{kind=\"forward\"}"),
        1.0,
        "{during}"
    );
    assert!(
        metric(
            &during,
            "gatehouse_forward_bytes_total{direction=\"to_target\"}"
        ) >= 100_000.0
    );
    assert!(
        metric(
            &during,
            "gatehouse_forward_bytes_total{direction=\"from_target\"}"
        ) >= 100_000.0
    );
    drop(fwd);
    let (_, after) = http_get(mport, "/metrics");
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    assert!(
        delta("gatehouse_auth_attempts_total{result=\"success\"}") >= 3.0,
        "{after}"
    );
    assert!(
        delta("gatehouse_auth_attempts_total{result=\"failure\"}") >= 1.0,
        "{after}"
    );
    assert_eq!(
        delta("gatehouse_commands_total{command=\"whoami\",outcome=\"ok\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        delta("gatehouse_commands_total{command=\"volume create\",outcome=\"usage\"}"),
        1.0,
        "{after}"
    );
    assert!(after.contains("gatehouse_db_query_seconds_bucket"));
    assert!(after.contains("gatehouse_connections_active"));
    let (code, body) = http_get(mport, "/healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    assert_eq!(http_get(mport, "/nope").0, 404);
    // A request head that arrives in pieces is read whole.
    let mut s = TcpStream::connect(("127.0.0.1", mport)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /hea").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"lthz HTTP/1.1\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn json_logs_are_one_object_per_line_and_hold_no_secrets() {
    if !common::have("ssh") {
        return;
    }
    let mut gw = Gateway::new("\n[log]\nformat = \"json\"\nlevel = \"info\"\n");
    let alice = gw.account("alice@example.com");
    gw.cli(&["project", "create", "train", "--admin", "alice@example.com"])
        .ok();
    gw.start();
    gw.ssh("alice", &alice, &["whoami"]).ok();
    let stranger = Key::new(gw.dir.path(), "stranger");
    gw.ssh("alice", &stranger, &["whoami"]);
    gw.stop();
    let log = gw.log_text();
    let mut events = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        events.push(v);
    }
    assert!(events.iter().any(|e| e["message"] == "authenticated"
        && e["account"] == "alice"
        && e["source"].is_string()));
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "command" && e["command"] == "whoami" && e["outcome"] == "ok")
    );
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "authentication refused")
    );
    let host_key = std::fs::read_to_string(gw.path("data/host_ed25519")).unwrap();
    let secret_line = host_key.lines().nth(1).unwrap();
    assert!(!log.contains(secret_line) && !log.contains("PRIVATE KEY"));
}

#[test]
fn max_auth_attempts_ends_the_connection() {
    if !common::have("ssh") {
        return;
    }
    let mut gw = Gateway::new("\n[limits]\nmax_auth_attempts = 2\npenalty_after_failures = 1000\n");
    let alice = gw.account("alice@example.com");
    gw.start();
    let wrong: Vec<Key> = (0..3)
        .map(|i| Key::new(gw.dir.path(), &format!("wrong{i}")))
        .collect();
    let mut cmd = Command::new("ssh");
    cmd.args(common::ssh_opts());
    for k in &wrong {
        cmd.arg("-i").arg(&k.private);
    }
    cmd.arg("-i").arg(&alice.private).args([
        "-p",
        &gw.port.to_string(),
        "alice@127.0.0.1",
        "whoami",
    ]);
    let out = common::run_with_timeout(&mut cmd, None, Duration::from_secs(30));
    assert_eq!(
        out.status.code(),
        Some(255),
        "the right key, offered fourth, is never reached"
    );
    gw.ssh("alice", &alice, &["whoami"]).ok();
}

#[test]
fn login_grace_time_closes_silent_connections() {
    let mut gw =
        Gateway::new("\n[limits]\nlogin_grace_time = \"1s\"\npenalty_after_failures = 1000\n");
    gw.start();
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"SSH-2.0-silent\r\n").unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(start.elapsed() < Duration::from_secs(15), "never closed"),
        }
    }
    assert!(start.elapsed() < Duration::from_secs(15));
}

#[test]
fn idle_shells_are_warned_then_closed_but_busy_forwards_are_not() {
    if !common::have("ssh") {
        return;
    }
    let mut gw = Gateway::new("\n[limits]\nidle_timeout = \"3s\"\npenalty_after_failures = 1000\n");
    let alice = gw.account("alice@example.com");
    gw.start();
    let echo = echo_cluster(&gw, &alice);

    // A busy forward: bytes every 200 ms for 5 s, longer than the timeout.
    let mut fwd = EchoForward::open(&gw, &alice, echo);
    let busy = std::thread::spawn(move || {
        for i in 0..25u8 {
            assert!(fwd.roundtrip(i));
            std::thread::sleep(Duration::from_millis(200));
        }
    });

    // An idle shell.
    let mut sh = gw.ssh_cmd("alice", &alice);
    sh.arg("-tt");
    let mut child = sh
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _keep_stdin_open = child.stdin.take().unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = out.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    });
    let st = common::wait_exit(&mut child, Duration::from_secs(20));
    assert!(st.is_some(), "the idle shell was closed");
    let text = reader.join().unwrap();
    assert!(text.contains("idle and closes in"), "warned first: {text}");
    busy.join()
        .expect("the busy forward kept working past the idle timeout");
}

#[test]
fn max_sessions_per_account_and_max_connections() {
    if !common::have("ssh") {
        return;
    }
    let mut gw = Gateway::new(
        "\n[limits]\nmax_sessions_per_account = 1\nmax_connections = 2\npenalty_after_failures = 1000\n",
    );
    let alice = gw.account("alice@example.com");
    let bob = gw.account("bob@example.com");
    gw.start();
    let mut hold = gw.ssh_cmd("alice", &alice);
    hold.args(["-N"]);
    let mut first = hold.stdin(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log_text().contains("authenticated") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = gw.ssh("alice", &alice, &["whoami"]);
    assert_eq!(r.code, 255, "a second session for alice is refused: {r:?}");
    // bob takes the second connection slot; a third connection is dropped.
    let mut hold = gw.ssh_cmd("bob", &bob);
    hold.args(["-N"]);
    let mut second = hold.stdin(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.log_text().matches("authenticated").count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let carol = gw.account("carol@example.com");
    assert_eq!(gw.ssh("carol", &carol, &["whoami"]).code, 255);
    assert!(gw.log_text().contains("too many connections"));
    let _ = first.kill();
    let _ = second.kill();
    let _ = first.wait();
    let _ = second.wait();
}

#[test]
fn repeated_failures_put_an_address_on_penalty_then_let_it_back() {
    if !common::have("ssh") {
        return;
    }
    let mport = common::free_port();
    let mut gw = Gateway::new(&format!(
        "\n[limits]\npenalty_after_failures = 3\npenalty_base = \"2s\"\npenalty_max = \"4s\"\n\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"
    ));
    let alice = gw.account("alice@example.com");
    gw.start();
    let stranger = Key::new(gw.dir.path(), "stranger");
    for _ in 0..3 {
        assert_eq!(gw.ssh("alice", &stranger, &["whoami"]).code, 255);
    }
    // Give the last failed connection time to be recorded as it closes.
    std::thread::sleep(Duration::from_millis(300));
    let r = gw.ssh("alice", &alice, &["whoami"]);
    assert_eq!(
        r.code, 255,
        "even the right key is refused during the penalty: {r:?}"
    );
    assert!(gw.log_text().contains("refusing this address for a while"));
    let (_, m) = http_get(mport, "/metrics");
    assert!(metric(&m, "gatehouse_source_penalties_total") >= 1.0, "{m}");
    assert!(
        metric(&m, "gatehouse_denials_total{kind=\"penalty\"}") >= 1.0,
        "{m}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    gw.ssh("alice", &alice, &["whoami"]).ok();
}

#[test]
fn sigterm_drains_forwards_then_exits_zero() {
    if !common::have("ssh") {
        return;
    }
    let mut gw = Gateway::new("");
    let alice = gw.account("alice@example.com");
    gw.start();
    let echo = echo_cluster(&gw, &alice);
    let mut fwd = EchoForward::open(&gw, &alice, echo);
    assert!(fwd.roundtrip(1));
    let pid = gw.pid().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // New connections are refused; the open forward still works.
    assert!(
        TcpStream::connect(("127.0.0.1", gw.port)).is_err(),
        "stopped accepting"
    );
    assert!(fwd.roundtrip(2), "the forward drains during the grace time");
    let status =
        common::wait_exit(gw.child(), Duration::from_secs(15)).expect("exits after the grace time");
    assert_eq!(status.code(), Some(0));
    assert!(
        common::wait_exit(&mut fwd.child, Duration::from_secs(10)).is_some(),
        "the forward was closed at the end"
    );
}

#[test]
fn postgres_outage_fails_closed_keeps_forwards_and_recovers() {
    if !common::have("ssh") {
        return;
    }
    let Some(mut pg) = common::Postgres::start() else {
        return;
    };
    let mport = common::free_port();
    let mut gw = Gateway::with_db(
        Some(&pg.database()),
        &format!("\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"),
    );
    let alice = gw.account("alice@example.com");
    gw.start();
    let echo = echo_cluster(&gw, &alice);
    let mut fwd = EchoForward::open(&gw, &alice, echo);
    let mut roundtrip = |b: u8| assert!(fwd.roundtrip(b));
    roundtrip(1);
    assert_eq!(http_get(mport, "/healthz").0, 200);

    pg.pause();
    let r = gw.ssh("alice", &alice, &["whoami"]);
    assert_eq!(r.code, 255, "no one gets in without the database: {r:?}");
    assert!(r.stderr.contains("Permission denied (publickey)"));
    assert!(gw.log_text().contains("database unavailable"));
    roundtrip(2);
    let (code, body) = http_get(mport, "/healthz");
    assert_eq!(code, 503, "{body}");

    pg.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if gw.ssh("alice", &alice, &["whoami"]).code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "recovered by itself");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(http_get(mport, "/healthz").0, 200);
    roundtrip(3);
}

#[test]
fn replicas_on_one_postgres_share_accounts_and_revocations() {
    if !common::have("ssh") {
        return;
    }
    let Some(pg) = common::Postgres::start() else {
        return;
    };
    let url = pg.database();
    let mut a = Gateway::with_db(Some(&url), "");
    let mut b = Gateway::with_db(Some(&url), "");
    let alice = a.account("alice@example.com");
    let bob = a.account("bob@example.com");
    a.cli(&["project", "create", "train", "--admin", "alice@example.com"])
        .ok();
    a.start();
    b.start();
    a.ssh("alice", &alice, &["member", "add", "bob@example.com"])
        .ok();
    // Both replicas know bob; his shell lives on replica b.
    a.ssh("bob", &bob, &["whoami"]).ok();
    let mut child = common::live_shell(&b, "bob", &bob, "bob@train> ");
    // Removed through replica a, cut on replica b.
    a.ssh(
        "alice",
        &alice,
        &["member", "remove", "bob@example.com", "--yes"],
    )
    .ok();
    assert!(
        common::wait_exit(&mut child, Duration::from_secs(3)).is_some(),
        "the revocation reached the other replica"
    );
    b.ssh("bob", &bob, &["cluster", "list", "-p", "train"])
        .fails(3, "no access to project train");
}
