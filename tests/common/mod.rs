//! Shared harness for the end-to-end tests: a gatehouse started from the
//! built binary, the real OpenSSH client, sshd nodes, a throwaway
//! PostgreSQL. Every wait is bounded; every process is killed on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// With `GATEHOUSE_E2E=required` (CI) a missing tool fails the test.
pub fn required() -> bool {
    std::env::var("GATEHOUSE_E2E").is_ok_and(|v| v == "required")
}

/// Returns false (and says so loudly) when `tool` is missing; panics
/// instead when tools are required.
pub fn have(tool: &str) -> bool {
    if find_tool(tool).is_some() {
        return true;
    }
    let msg =
        format!("\n*** SKIPPED: `{tool}` is not installed; this end-to-end test did not run ***\n");
    if required() {
        panic!("{msg} (GATEHOUSE_E2E=required)");
    }
    eprintln!("{msg}");
    false
}

pub fn find_tool(tool: &str) -> Option<PathBuf> {
    if tool == "sshd" {
        let p = PathBuf::from("/usr/sbin/sshd");
        return p.exists().then_some(p);
    }
    if matches!(tool, "initdb" | "pg_ctl" | "postgres") {
        return pg_bin().map(|d| d.join(tool)).filter(|p| p.exists());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.exists())
    })
}

/// The newest PostgreSQL server bin directory of the system packages.
pub fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// A loopback port free now and never handed out before in this process:
/// tests run in parallel, and the kernel may give a just-released port to
/// the next caller.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Waits until something listens on the loopback `port`. A probe of a port
/// in the ephemeral range that nothing listens on can be given that same
/// port as its source and connect to itself (TCP simultaneous open), which
/// once let a test run `ssh` before the gateway listened; such a probe
/// does not count.
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            let itself = matches!((s.local_addr(), s.peer_addr()), (Ok(l), Ok(p)) if l == p);
            if !itself {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs a command to completion, killing it after `timeout`. Its output
/// is read while it runs, so a command that prints more than a pipe holds
/// (64 KiB) is not stuck writing.
pub fn run_with_timeout(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn command");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    // Bounded: a grandchild that keeps the pipe open (a daemonizing
    // command) leaves what was read within 10 s of the exit.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut all);
            }
            let _ = tx.send(all);
        });
        Drained(rx)
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "command timed out after {timeout:?}: {cmd:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&stdout.join()),
                    String::from_utf8_lossy(&stderr.join())
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout.join(),
        stderr: stderr.join(),
    }
}

/// What a thread read from a child's pipe.
struct Drained(std::sync::mpsc::Receiver<Vec<u8>>);

impl Drained {
    fn join(&self) -> Vec<u8> {
        self.0
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default()
    }
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }

    #[track_caller]
    pub fn fails(&self, code: i32, stderr_has: &str) -> &Self {
        assert_eq!(self.code, code, "expected exit {code}: {self:?}");
        assert!(
            self.stderr.contains(stderr_has),
            "stderr should contain {stderr_has:?}: {self:?}"
        );
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("error: ") || l.starts_with("permission denied: "));
        assert!(
            line.is_some(),
            "one `error: ` / `permission denied: ` line: {self:?}"
        );
        self
    }

    /// The length of the JSON array on stdout.
    #[track_caller]
    pub fn count(&self) -> usize {
        self.json()
            .as_array()
            .map(Vec::len)
            .unwrap_or_else(|| panic!("stdout is not a JSON array: {self:?}"))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs a command to completion (at most 60 s) and keeps what it printed.
pub fn run(cmd: &mut Command) -> Run {
    Run::from(run_with_timeout(cmd, None, Duration::from_secs(60)))
}

/// Sends `msg` through a local forward on `port` and asserts that it comes
/// back unchanged (an echo server at the far end).
#[track_caller]
pub fn assert_echo(port: u16, msg: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the forward's local port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("the echo");
    assert_eq!(back, msg);
}

/// A fresh ed25519 (or other) key pair made by ssh-keygen.
pub struct Key {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl Key {
    pub fn new(dir: &Path, name: &str) -> Key {
        Key::with_type(dir, name, &["-t", "ed25519"])
    }

    pub fn with_type(dir: &Path, name: &str, args: &[&str]) -> Key {
        let private = dir.join(name);
        let out = Command::new("ssh-keygen")
            .args(args)
            .args(["-q", "-N", "", "-C", name, "-f"])
            .arg(&private)
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success(), "ssh-keygen: {out:?}");
        Key {
            public: private.with_extension("pub"),
            private,
        }
    }

    pub fn public_line(&self) -> String {
        std::fs::read_to_string(&self.public)
            .expect("public key")
            .trim()
            .to_string()
    }

    pub fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&self.public)
            .output()
            .expect("ssh-keygen -lf");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }
}

/// A gatehouse gateway run from the built binary in its own directory.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub config: PathBuf,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Gateway {
    /// Config and database only; call [`Gateway::start`] to serve.
    pub fn new(extra_toml: &str) -> Gateway {
        Gateway::with_db(None, extra_toml)
    }

    pub fn with_db(db_url: Option<&str>, extra_toml: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("gatehouse.toml");
        let db = db_url
            .map(str::to_string)
            .unwrap_or_else(|| "sqlite://data/gatehouse.db".into());
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nhost_key = \"data/host_ed25519\"\nshutdown_grace = \"3s\"\n\n[database]\nurl = \"{db}\"\n\n[kube]\nca_key = \"data/kube_ca.key\"\nca_cert = \"data/kube_ca.crt\"\n"
        );
        if !extra_toml.contains("[limits]") {
            // Tests connect and fail on purpose, fast: only the tests of
            // these limits keep them.
            toml.push_str(
                "\n[limits]\npenalty_after_failures = 1000\nper_source_noauth_burst = 100000\nper_source_max_startups = 0\n",
            );
        }
        toml.push_str(extra_toml);
        std::fs::write(&config, toml).expect("write config");
        let log = dir.path().join("gateway.log");
        Gateway {
            dir,
            port,
            config,
            child: None,
            log,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `gatehouse serve` and waits until it accepts connections.
    pub fn start(&mut self) -> &mut Self {
        let log = std::fs::File::create(&self.log).expect("log file");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env(
                "RUST_LOG",
                std::env::var("GATEHOUSE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gatehouse serve");
        self.child = Some(child);
        if !wait_port(self.port, Duration::from_secs(20)) {
            panic!("gateway did not start; log:\n{}", self.log_text());
        }
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("started")
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The newest 1,000 audit events, as the operator CLI's JSON gives them.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.cli(&["audit", "--limit", "1000", "--json"])
            .ok()
            .json()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Runs the operator CLI against this gateway's config.
    pub fn cli(&self, args: &[&str]) -> Run {
        self.cli_stdin(args, None)
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&self.config).args(args);
        Run::from(run_with_timeout(&mut cmd, stdin, Duration::from_secs(30)))
    }

    /// Creates an account with a fresh key; returns the key.
    pub fn account(&self, email: &str) -> Key {
        let login = email.split('@').next().unwrap_or("user");
        let key = Key::new(self.dir.path(), &format!("key-{login}"));
        self.cli(&["account", "add", email]).ok();
        self.cli(&["key", "add", email, "--file", key.public.to_str().unwrap()])
            .ok();
        key
    }

    /// The base `ssh` command to this gateway as `login` with `key`.
    pub fn ssh_cmd(&self, login: &str, key: &Key) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(ssh_opts())
            .arg("-i")
            .arg(&key.private)
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{login}@127.0.0.1"));
        cmd
    }

    /// `ssh LOGIN@gw ARGS...`
    pub fn ssh(&self, login: &str, key: &Key, args: &[&str]) -> Run {
        self.ssh_stdin(login, key, args, None)
    }

    /// Like a careful user, quotes every argument: ssh joins its arguments
    /// with spaces and the gateway splits them again like a shell.
    pub fn ssh_stdin(&self, login: &str, key: &Key, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut cmd = self.ssh_cmd(login, key);
        cmd.arg("--").args(args.iter().map(|a| sh_quote(a)));
        Run::from(run_with_timeout(&mut cmd, stdin, Duration::from_secs(30)))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `gw` with project train (alice admin, bob member) whose cluster
/// c1 is node-1, registered at a free loopback port nothing listens on.
/// Returns alice's and bob's keys.
pub fn train_on_one_node(gw: &mut Gateway) -> (Key, Key) {
    let alice = gw.account("alice@example.com");
    let bob = gw.account("bob@example.com");
    gw.cli(&["project", "create", "train", "--admin", "alice@example.com"])
        .ok();
    let node = format!("127.0.0.1:{}", free_port());
    gw.cli(&["node", "register", "node-1", &node]).ok();
    start_with_c1(gw, &alice, 1);
    (alice, bob)
}

/// Starts `gw`; then alice, admin of her project, adds bob as a member and
/// creates cluster c1 from `nodes` nodes of the pool.
pub fn start_with_c1(gw: &mut Gateway, alice: &Key, nodes: usize) {
    gw.start();
    gw.ssh("alice", alice, &["member", "add", "bob@example.com"])
        .ok();
    gw.ssh(
        "alice",
        alice,
        &["cluster", "create", "c1", "--nodes", &nodes.to_string()],
    )
    .ok();
}

/// Quotes a word for a POSIX shell, only when needed.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Options that make the OpenSSH client predictable in tests.
pub fn ssh_opts() -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A real OpenSSH sshd on a loopback port, standing in for a cluster node.
pub struct Sshd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Sshd {
    /// Starts sshd that lets in the holders of `keys` as any user that exists.
    pub fn start(keys: &[&Key]) -> Sshd {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let host_key = Key::new(dir.path(), "host_key").private;
        let auth = dir.path().join("authorized_keys");
        let lines: Vec<String> = keys.iter().map(|k| k.public_line()).collect();
        std::fs::write(&auth, lines.join("\n") + "\n").expect("authorized_keys");
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin yes\nAllowTcpForwarding yes\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
                host_key.display(),
                dir.path().join("sshd.pid").display(),
                auth.display()
            ),
        )
        .expect("sshd_config");
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sshd");
        assert!(
            wait_port(port, Duration::from_secs(10)),
            "sshd did not start"
        );
        Sshd { port, dir, child }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway PostgreSQL cluster in a temporary directory, run as the
/// unprivileged `postgres` user when the tests run as root.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    next_db: std::sync::atomic::AtomicUsize,
}

fn as_pg_user(bin: &Path, tool: &str) -> Command {
    let is_root = unsafe_geteuid() == 0;
    if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

fn unsafe_geteuid() -> u32 {
    // Reading /proc avoids a libc dependency for one number.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

impl Postgres {
    /// Starts a cluster, or returns None (after a loud notice) when
    /// PostgreSQL is not installed.
    pub fn start() -> Option<Postgres> {
        if !have("initdb") {
            return None;
        }
        let bin = pg_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("gh-pg")
            .tempdir()
            .expect("tempdir");
        if unsafe_geteuid() == 0 {
            let st = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success());
        }
        let data = dir.path().join("data");
        let out = as_pg_user(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut pg = Postgres {
            port,
            dir,
            bin,
            next_db: std::sync::atomic::AtomicUsize::new(0),
        };
        pg.pg_ctl_start();
        Some(pg)
    }

    fn pg_ctl_start(&mut self) {
        let out = as_pg_user(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-k {} -c listen_addresses=127.0.0.1 -p {} -c fsync=off",
                self.dir.path().display(),
                self.port
            ))
            .args(["-w", "-t", "30", "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (for outage tests); [`Postgres::resume`] restarts it.
    pub fn pause(&self) {
        let _ = as_pg_user(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
    }

    pub fn resume(&mut self) {
        self.pg_ctl_start();
    }

    /// A new, empty database; returns its URL.
    pub fn database(&self) -> String {
        let n = self
            .next_db
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("gh{n}");
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-c",
            ])
            .arg(format!("CREATE DATABASE {name}"))
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.pause();
    }
}

/// A TCP server on a loopback port that hands each connection to `serve`
/// on a thread of its own.
fn serve_each(serve: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    port
}

/// A TCP echo server on a loopback port, for forwards to talk to.
pub fn echo_server() -> u16 {
    serve_each(|mut conn| {
        let mut read = conn.try_clone().expect("clone");
        let _ = std::io::copy(&mut read, &mut conn);
    })
}

/// A TCP server that reads until EOF and answers with the SHA-256 (hex) and
/// length of what it got: checks a transfer end to end, half-close included.
pub fn digest_server() -> u16 {
    serve_each(|mut conn| {
        let (sha, n) = sha256_of(&mut conn, u64::MAX);
        let _ = writeln!(conn, "{sha} {n}");
    })
}

/// Reads until EOF, an error or `at_most` bytes; the SHA-256 (hex) and
/// length of what it read.
pub fn sha256_of(r: &mut impl std::io::Read, at_most: u64) -> (String, u64) {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n: u64 = 0;
    while n < at_most {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
        }
    }
    (format!("{:x}", h.finalize()), n)
}

/// The local user name, which the test sshd lets in.
pub fn local_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An ssh_config for `ssh -J`: the jump hop does not take `-o` options.
pub fn jump_config(gw: &Gateway, login: &str, key: &Key) -> PathBuf {
    let path = gw.dir.path().join(format!("ssh_config_{login}"));
    let text = format!(
        "Host gw\n  HostName 127.0.0.1\n  Port {port}\n  User {login}\n  ProxyJump none\n\nHost *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  IdentityAgent none\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n  ConnectTimeout 10\n",
        port = gw.port,
        key = key.private.display()
    );
    std::fs::write(&path, text).expect("ssh_config");
    path
}

/// Waits for a child to exit, up to `timeout`; returns its status if it did.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An interactive shell (`ssh -tt`) of `login` on `gw`, returned once its
/// prompt `prompt` is showing; its output is drained in the background.
pub fn live_shell(gw: &Gateway, login: &str, key: &Key, prompt: &str) -> Child {
    use std::io::Read;
    let mut c = gw.ssh_cmd(login, key);
    c.arg("-tt");
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh -tt");
    let mut out = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(prompt) {
        let n = out.read(&mut buf).expect("shell output");
        assert!(n > 0, "shell ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    std::thread::spawn(move || while out.read(&mut buf).is_ok_and(|n| n > 0) {});
    child
}

/// `GET path` on a loopback HTTP port: the status code and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of one sample line of the Prometheus text, 0 when absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A terminal session (`ssh -tt`) whose output is collected as it comes.
pub struct Term {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<Vec<u8>>>,
    /// Output before this offset has been matched already.
    seen: usize,
}

impl Term {
    pub fn open(gw: &Gateway, login: &str, key: &Key) -> Term {
        Term::run(gw, login, key, &[])
    }

    /// `ssh -tt … ARGS`: with no ARGS, the shell.
    pub fn run(gw: &Gateway, login: &str, key: &Key, args: &[&str]) -> Term {
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

    pub fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits until `needle` appears in new output; returns what came before it.
    #[track_caller]
    pub fn expect(&mut self, needle: &str) -> String {
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
    pub fn exit_code(mut self) -> i32 {
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

/// A russh client that trusts any host key: for requests the OpenSSH
/// client will not send (odd user names, SHA-1 signatures).
pub struct Trusting;

impl russh::client::Handler for Trusting {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Logs in as `user` with `key` through a scripted russh client, signing
/// with `hash` for RSA keys (`None`: `ssh-rsa`, SHA-1; ignored for other
/// kinds). True when the gateway let it in.
pub async fn scripted_login(
    port: u16,
    user: &str,
    key: std::sync::Arc<russh::keys::PrivateKey>,
    hash: Option<russh::keys::HashAlg>,
) -> bool {
    let config = std::sync::Arc::new(russh::client::Config::default());
    let mut session = russh::client::connect(config, ("127.0.0.1", port), Trusting)
        .await
        .expect("connect to the gateway");
    let ok = session
        .authenticate_publickey(user, russh::keys::PrivateKeyWithHashAlg::new(key, hash))
        .await
        .expect("publickey authentication")
        .success();
    // Close now: the runtime that drives this session may not run again.
    let _ = session
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    ok
}
