//! gatehouse-bench: gatehouse against OpenSSH's sshd as a jump host, side by
//! side on loopback, driven by the same OpenSSH client with the same cipher,
//! runs alternating so machine drift hits both alike.
//!
//! `cargo run --release --bin gatehouse-bench` writes the table to
//! BENCHMARKS.md; `--help` lists the knobs; `--quick` is the smoke run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse-bench",
    about = "Benchmark gatehouse against OpenSSH sshd, side by side"
)]
struct Args {
    /// MiB pushed through `ssh -L` per throughput run
    #[arg(long, default_value = "1024")]
    throughput_mib: u64,
    /// Throughput runs per server
    #[arg(long, default_value = "5")]
    runs: usize,
    /// 64-byte round trips per server
    #[arg(long, default_value = "2000")]
    rtt_count: usize,
    /// `ssh gw CMD` connections per server
    #[arg(long, default_value = "30")]
    setup_count: usize,
    /// Idle session counts at which memory per session is measured
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    sessions: Vec<usize>,
    /// Concurrent sessions to try to hold
    #[arg(long, default_value = "2000")]
    max_sessions: usize,
    /// Idle sessions to hold on gatehouse alone (sshd would need two
    /// processes each); 0 skips it
    #[arg(long, default_value = "10000")]
    gatehouse_sessions: usize,
    /// Also compare connection setup against a database of this many
    /// accounts (two keys each) with one of 10 accounts; 0 skips it
    #[arg(long, default_value = "100000")]
    auth_scale_accounts: usize,
    /// Cipher for both servers
    #[arg(long, default_value = "aes256-gcm@openssh.com")]
    cipher: String,
    /// Where to write the table (between the bench markers); "-" for stdout only
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: String,
    /// Tiny sizes, for the smoke test
    #[arg(long)]
    quick: bool,
    /// Node logins asked through the gateway (AuthorizedKeysCommand) and
    /// node questions at the account scale: how many of each
    #[arg(long, default_value = "20")]
    node_logins: usize,
    /// Measure only these: throughput, rtt, setup, memory, sessions, auth, nodes
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    #[arg(long, hide = true)]
    serve_gateway: Option<PathBuf>,
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    // Both ends of thousands of sessions: the bench's clients and the
    // servers it starts (which inherit the limit).
    gatehouse::gateway::raise_open_files_limit();
    if let Some(config) = args.serve_gateway {
        // Runs the gateway in its own process, so its memory is its own.
        let config = gatehouse::config::Config::load(Some(&config))?;
        let rt = tokio::runtime::Runtime::new()?;
        return rt.block_on(gatehouse::gateway::serve(config));
    }
    if args.quick {
        args.throughput_mib = 8;
        args.runs = 1;
        args.rtt_count = 50;
        args.setup_count = 3;
        args.sessions = vec![5];
        args.max_sessions = 10;
        args.gatehouse_sessions = 20;
        args.auth_scale_accounts = 200;
        args.node_logins = 2;
    }
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(run(&args))?;
    println!("{report}");
    if args.out != "-" {
        write_report(Path::new(&args.out), &report)?;
        eprintln!("wrote {}", args.out);
    }
    Ok(())
}

// ---------------------------------------------------------------- servers

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port}")
}

fn keygen(path: &Path) -> Result<()> {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .context("ssh-keygen")?;
    if !st.success() {
        bail!("ssh-keygen failed");
    }
    Ok(())
}

/// The login used on both servers. As root, a system user with /bin/sh as
/// its shell: sshd runs every command through the user's shell, and root's
/// ~/.bashrc (sourced by bash under sshd) would otherwise be timed as part
/// of OpenSSH's connection setup.
fn user() -> String {
    const BENCH_USER: &str = "gatehouse-bench";
    let me = Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "root".into());
    if me != "root" {
        return me;
    }
    let exists = Command::new("id")
        .arg(BENCH_USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        let made = Command::new("useradd")
            .args([
                "--system",
                "--shell",
                "/bin/sh",
                "--home-dir",
                "/nonexistent",
                "--no-create-home",
                BENCH_USER,
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            return me;
        }
    }
    // useradd locks the password ("!"), and sshd without PAM refuses locked
    // accounts even for keys; "*" means no password, not locked.
    let unlocked = Command::new("usermod")
        .args(["-p", "*", BENCH_USER])
        .status()
        .is_ok_and(|s| s.success());
    if !unlocked {
        return me;
    }
    BENCH_USER.to_string()
}

fn start_sshd(dir: &Path, client_pub: &Path) -> Result<(Proc, u16)> {
    start_sshd_with(dir, client_pub, free_port()?, "")
}

/// sshd on `port` with `authorized_keys` and `extra` config lines first.
fn start_sshd_with(
    dir: &Path,
    authorized_keys: &Path,
    port: u16,
    extra: &str,
) -> Result<(Proc, u16)> {
    let host_key = dir.join("sshd_host_key");
    keygen(&host_key)?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "{extra}Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\nUsePAM no\nStrictModes no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin yes\nAllowTcpForwarding yes\n\
             MaxStartups 10000\nMaxSessions 100\nUseDNS no\nLogLevel ERROR\nPerSourcePenalties no\n",
            host_key.display(),
            dir.join("sshd.pid").display(),
            authorized_keys.display()
        ),
    )?;
    let _ = std::fs::create_dir_all("/run/sshd");
    // OpenSSH 9.2 has no PerSourcePenalties; drop the line it would refuse.
    let test = Command::new("/usr/sbin/sshd")
        .args(["-t", "-f"])
        .arg(&config)
        .output()?;
    if !test.status.success() {
        let text = std::fs::read_to_string(&config)?.replace("PerSourcePenalties no\n", "");
        std::fs::write(&config, text)?;
    }
    let mut cmd = Command::new("/usr/sbin/sshd");
    cmd.args(["-D", "-e", "-f"]).arg(&config);
    let proc = spawn_server(
        &mut cmd,
        &dir.join("sshd.log"),
        port,
        "sshd (apt-get install openssh-server)",
    )?;
    Ok((proc, port))
}

/// Starts a server with its stderr in `log`; waits until `port` accepts,
/// and on failure says what the server logged.
fn spawn_server(cmd: &mut Command, log: &Path, port: u16, what: &str) -> Result<Proc> {
    let child = cmd
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let proc = Proc(child);
    wait_port(port).with_context(|| {
        format!(
            "{what} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    })?;
    Ok(proc)
}

async fn start_gatehouse(
    dir: &Path,
    name: &str,
    client_pub: &Path,
    sink: u16,
    echo: u16,
    seed: usize,
) -> Result<(Proc, u16)> {
    use gatehouse::model::{Email, HostPort, Login, Name, SshPublicKey};
    let port = free_port()?;
    let gdir = dir.join(name);
    std::fs::create_dir_all(&gdir)?;
    let config = gdir.join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nhost_key = \"host_key\"\n[database]\nurl = \"sqlite://gatehouse.db\"\n[kube]\nca_key = \"kube_ca.key\"\nca_cert = \"kube_ca.crt\"\n\
             [limits]\nmax_sessions_per_account = 100000\nmax_connections = 100000\npenalty_after_failures = 1000000\nmax_startups = \"100000\"\nper_source_max_startups = 0\nmax_channels_per_account = 1000000\n\
             [log]\nlevel = \"warn\"\n"
        ),
    )?;
    let store =
        gatehouse::store::Store::connect(&format!("sqlite://{}/gatehouse.db", gdir.display()), 2)
            .await?;
    let email = Email::parse("bench@example.com")?;
    let account = store.account_add(&email, &Login::parse(&user())?).await?;
    store
        .key_add(
            &account,
            &SshPublicKey::parse(&std::fs::read_to_string(client_pub)?)?,
        )
        .await?;
    let project = store
        .project_create(&Name::parse("p", "bench")?, account.id)
        .await?;
    for (n, p) in [("sink", sink), ("echo", echo)] {
        store
            .node_register(
                &Name::parse("n", n)?,
                &HostPort::parse(&format!("127.0.0.1:{p}"))?,
                None,
                0,
            )
            .await?;
    }
    store
        .cluster_create(project, &Name::parse("c", "c1")?, 2, None)
        .await?;
    if seed > 0 {
        seed_accounts(&gdir.join("gatehouse.db"), seed).await?;
    }
    drop(store);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--serve-gateway").arg(&config);
    let proc = spawn_server(&mut cmd, &gdir.join("gateway.log"), port, "gatehouse")?;
    Ok((proc, port))
}

/// Fills the account base: `n` accounts with two keys each, in one
/// transaction. The keys are random stand-ins: only their fingerprints are
/// looked up at login.
async fn seed_accounts(db: &Path, n: usize) -> Result<()> {
    use base64::Engine;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db.display())).await?;
    let mut tx = pool.begin().await?;
    let now = gatehouse::store::now_ms();
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut accounts = String::from(
            "INSERT INTO accounts (id, email, email_norm, login, disabled, created_at) VALUES ",
        );
        let mut keys = String::from(
            "INSERT INTO ssh_keys (account_id, fingerprint, algorithm, public_key, comment, created_at) VALUES ",
        );
        for (j, i) in chunk.iter().enumerate() {
            let id = 1_000_000 + i;
            let sep = if j == 0 { "" } else { "," };
            accounts.push_str(&format!(
                "{sep}({id}, 'u{i}@seed.example', 'u{i}@seed.example', 'u{i}', 0, {now})"
            ));
            for k in 0..2 {
                let fp = b64.encode(rand::random::<[u8; 32]>());
                let sep = if j == 0 && k == 0 { "" } else { "," };
                keys.push_str(&format!(
                    "{sep}({id}, 'SHA256:{fp}', 'ssh-ed25519', 'ssh-ed25519 seed', 'seed', {now})"
                ));
            }
        }
        sqlx::query(sqlx::AssertSqlSafe(accounts))
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(keys))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    pool.close().await;
    Ok(())
}

// ---------------------------------------------------------------- targets

/// Counts bytes until the sender closes, then reports the total.
fn sink_server() -> Result<(u16, std::sync::mpsc::Receiver<(u64, Instant)>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 18];
                let mut n = 0u64;
                while let Ok(k) = conn.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
                // Readiness probes of the tunnel connect and send nothing.
                if n > 0 {
                    let _ = tx.send((n, Instant::now()));
                }
            });
        }
    });
    Ok((port, rx))
}

fn echo_server() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(k) = conn.read(&mut buf) {
                    if k == 0 || conn.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

// ---------------------------------------------------------------- the client

struct Target {
    name: &'static str,
    port: u16,
    /// Host names the forwards use on this server.
    sink_host: String,
    echo_host: String,
    /// The command for connection setup.
    command: &'static str,
    pid: u32,
}

fn ssh_base(dir: &Path, cipher: &str, port: u16) -> Command {
    let mut c = Command::new("ssh");
    c.args([
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
    ])
    .args([
        "-o",
        "LogLevel=ERROR",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
    ])
    .args([
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-c",
        cipher,
    ])
    .arg("-i")
    .arg(dir.join("client_key"))
    .args(["-p", &port.to_string()])
    .arg(format!("{}@127.0.0.1", user()));
    c
}

/// `ssh -N -L LOCAL:HOST:PORT`, ready once LOCAL accepts.
fn tunnel(dir: &Path, cipher: &str, t: &Target, host: &str, port: u16) -> Result<(Proc, u16)> {
    let (proc, locals) = tunnels(dir, cipher, t, &[(host, port)])?;
    Ok((proc, locals[0]))
}

/// One `ssh -N` with a `-L LOCAL:HOST:PORT` per target, ready once every
/// LOCAL accepts; the LOCAL ports in the targets' order.
fn tunnels(
    dir: &Path,
    cipher: &str,
    t: &Target,
    targets: &[(&str, u16)],
) -> Result<(Proc, Vec<u16>)> {
    let mut c = ssh_base(dir, cipher, t.port);
    c.args(["-N", "-o", "ExitOnForwardFailure=yes"]);
    let mut locals = Vec::new();
    for (host, port) in targets {
        let local = free_port()?;
        c.arg("-L").arg(format!("{local}:{host}:{port}"));
        locals.push(local);
    }
    let child = Proc(c.stdin(Stdio::null()).spawn()?);
    for &local in &locals {
        wait_port(local)?;
    }
    Ok((child, locals))
}

fn throughput(
    dir: &Path,
    cipher: &str,
    t: &Target,
    sink: (u16, &std::sync::mpsc::Receiver<(u64, Instant)>),
    bytes: u64,
) -> Result<Transfer> {
    let (tunnel, local) = tunnel(dir, cipher, t, &t.sink_host, sink.0)?;
    let mut s = TcpStream::connect(("127.0.0.1", local))?;
    let block = vec![0x5au8; 1 << 20];
    // The connection to the tunnel exists, so sshd's per-connection
    // processes are already there to be counted.
    let client = tunnel.0.id();
    let cpu_before = (tree_cpu_secs(t.pid), tree_cpu_secs(client));
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        let n = block.len().min((bytes - sent) as usize);
        s.write_all(&block[..n])?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let (got, end) = sink.1.recv_timeout(Duration::from_secs(600))?;
    let cpu_after = (tree_cpu_secs(t.pid), tree_cpu_secs(client));
    if got != bytes {
        bail!("{}: sink got {got} of {bytes} bytes", t.name);
    }
    let secs = end.duration_since(start).as_secs_f64();
    let gib = bytes as f64 / (1u64 << 30) as f64;
    // CPU time comes in clock ticks (10 ms): a shorter run says nothing.
    let timed = secs >= 0.5;
    Ok(Transfer {
        mb_per_s: bytes as f64 / 1e6 / secs,
        server_cpu_ms_per_gib: timed.then(|| (cpu_after.0 - cpu_before.0) * 1000.0 / gib),
        client_busy: timed.then(|| (cpu_after.1 - cpu_before.1) / secs * 100.0),
    })
}

/// One throughput run. The CPU figures are missing from runs too short to
/// time them.
struct Transfer {
    mb_per_s: f64,
    /// CPU time the server spent per GiB forwarded, ms.
    server_cpu_ms_per_gib: Option<f64>,
    /// How busy the ssh client was during the transfer, % of one core.
    client_busy: Option<f64>,
}

fn round_trips(dir: &Path, cipher: &str, t: &Target, echo: u16, count: usize) -> Result<Vec<f64>> {
    let (_tunnel, local) = tunnel(dir, cipher, t, &t.echo_host, echo)?;
    let mut s = TcpStream::connect(("127.0.0.1", local))?;
    s.set_nodelay(true)?;
    let msg = [0x42u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..20 {
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// A target that accepts connections and never reads them, with a small
/// receive buffer so that the stall reaches the server at once.
fn stall_server() -> Result<u16> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_recv_buffer_size(64 * 1024)?;
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    socket.bind(&addr.into())?;
    socket.listen(64)?;
    let l: TcpListener = socket.into();
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        // Held, unread, until the bench ends.
        let held: Vec<TcpStream> = l.incoming().flatten().collect();
        drop(held);
    });
    Ok(port)
}

/// 64-byte round trips on one forward while another forward of the same
/// connection has a target that does not read: a writer fills the stalled
/// forward until it stops moving (at most 20 s), then `count` trips are
/// timed, in µs. OpenSSH holds back only the stalled channel (RFC 4254
/// §5.2 flow control), and so must the gateway.
fn stalled_round_trips(
    dir: &Path,
    cipher: &str,
    t: &Target,
    stall: u16,
    echo: u16,
    count: usize,
) -> Result<Vec<f64>> {
    let (_tunnel, locals) = tunnels(
        dir,
        cipher,
        t,
        &[(&t.sink_host, stall), (&t.echo_host, echo)],
    )?;
    let mut stalled = TcpStream::connect(("127.0.0.1", locals[0]))?;
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = written.clone();
    std::thread::spawn(move || {
        let block = vec![0x5au8; 64 * 1024];
        while stalled.write_all(&block).is_ok() {
            counter.fetch_add(block.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut last, mut since) = (0, Instant::now());
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now > 0 && since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    let mut s = TcpStream::connect(("127.0.0.1", locals[1]))?;
    s.set_nodelay(true)?;
    // A server that freezes the whole connection answers not at all.
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let msg = [0x42u8; 64];
    let mut back = [0u8; 64];
    let mut out = Vec::with_capacity(count);
    for i in 0..count + 20 {
        let start = Instant::now();
        s.write_all(&msg)?;
        if s.read_exact(&mut back).is_err() {
            bail!("{}: no answer within 10 s beside a stalled forward", t.name);
        }
        if i >= 20 {
            out.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

fn setup_once(dir: &Path, cipher: &str, t: &Target) -> Result<f64> {
    let mut c = ssh_base(dir, cipher, t.port);
    c.arg(t.command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let st = c.status()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !st.success() {
        bail!("{}: `ssh {}` failed: {st}", t.name, t.command);
    }
    Ok(ms)
}

// ---------------------------------------------------------------- sessions

struct Quiet;

impl russh::client::Handler for Quiet {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

type Session = russh::client::Handle<Quiet>;

/// Opens `n` authenticated, idle sessions, `parallel` handshakes at a time.
async fn open_sessions(
    port: u16,
    key: Arc<russh::keys::PrivateKey>,
    n: usize,
    parallel: usize,
) -> Vec<Session> {
    let config = Arc::new(russh::client::Config {
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Owned(vec![russh::cipher::AES_256_GCM]),
            ..Default::default()
        },
        ..Default::default()
    });
    let user = user();
    let mut out = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = left.min(parallel);
        left -= batch;
        let mut tasks = Vec::new();
        for _ in 0..batch {
            let (config, key, user) = (config.clone(), key.clone(), user.clone());
            tasks.push(tokio::spawn(async move {
                let mut h = russh::client::connect(config, ("127.0.0.1", port), Quiet)
                    .await
                    .ok()?;
                let auth = h
                    .authenticate_publickey(
                        user,
                        russh::keys::PrivateKeyWithHashAlg::new(key, None),
                    )
                    .await
                    .ok()?;
                auth.success().then_some(h)
            }));
        }
        for t in tasks {
            if let Ok(Some(h)) = t.await {
                out.push(h);
            }
        }
    }
    out
}

/// `pid` and all its descendants (sshd forks per connection).
fn tree(pid: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1)?.parse().ok()) {
                all.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        out.push(p);
        stack.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
    }
    out
}

/// The fields of `/proc/PID/stat` after the command name: state is `[0]`.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit(')').next()?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Memory of `pid` and all its descendants, in KiB: the proportional set
/// size, so pages shared between sshd's per-connection processes count once
/// in total rather than once per process.
fn tree_pss_kib(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| {
            let rollup = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
            rollup
                .lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// CPU time (user and system) used so far by `pid` and its live
/// descendants, in seconds.
fn tree_cpu_secs(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    tree(pid)
        .into_iter()
        .filter_map(|p| {
            let f = stat_fields(p)?;
            // utime and stime are fields 14 and 15 of stat, [11] and [12] here.
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / hz)
        })
        .sum()
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

// ---------------------------------------------------------------- the run

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

struct Row {
    metric: String,
    openssh: f64,
    gatehouse: f64,
    unit: &'static str,
    better: &'static str,
}

impl Row {
    /// The medians of each server's samples (OpenSSH first).
    fn medians(
        metric: String,
        samples: &mut [Vec<f64>; 2],
        unit: &'static str,
        better: &'static str,
    ) -> Row {
        let [o, g] = samples;
        Row {
            metric,
            openssh: median(o),
            gatehouse: median(g),
            unit,
            better,
        }
    }
}

async fn run(args: &Args) -> Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("gatehouse-bench")
        .tempdir()?;
    let d = dir.path();
    // sshd reads authorized_keys as the login user, who must reach the folder.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    keygen(&d.join("client_key"))?;
    let client_pub = d.join("client_key.pub");
    let (sink_port, sink_rx) = sink_server()?;
    let echo = echo_server()?;
    let (sshd, sshd_port) = start_sshd(d, &client_pub)?;
    let (gh, gh_port) = start_gatehouse(d, "gw", &client_pub, sink_port, echo, 0).await?;
    let o = Target {
        name: "OpenSSH",
        port: sshd_port,
        sink_host: "127.0.0.1".into(),
        echo_host: "127.0.0.1".into(),
        command: "true",
        pid: sshd.0.id(),
    };
    let g = Target {
        name: "gatehouse",
        port: gh_port,
        sink_host: "sink.c1".into(),
        echo_host: "echo.c1".into(),
        command: "whoami",
        pid: gh.0.id(),
    };
    let both = [&o, &g];
    let mut rows = Vec::new();
    let c = &args.cipher;
    let want = |what: &str| args.only.is_empty() || args.only.iter().any(|o| o == what);

    // Throughput, alternating.
    let bytes = if want("throughput") {
        args.throughput_mib * 1024 * 1024
    } else {
        0
    };
    // Per server (OpenSSH, gatehouse): MB/s, server CPU, client busy.
    let [mut tp, mut cpu, mut busy] = [(); 3].map(|_| [Vec::new(), Vec::new()]);
    for _ in 0..if bytes > 0 { args.runs } else { 0 } {
        for (i, t) in both.iter().enumerate() {
            let run = throughput(d, c, t, (sink_port, &sink_rx), bytes)?;
            tp[i].push(run.mb_per_s);
            cpu[i].extend(run.server_cpu_ms_per_gib);
            busy[i].extend(run.client_busy);
        }
    }
    rows.push(Row::medians(
        format!("throughput through `ssh -L`, {} MiB", args.throughput_mib),
        &mut tp,
        "MB/s",
        "higher",
    ));
    rows.push(Row::medians(
        "server CPU time per GiB forwarded".into(),
        &mut cpu,
        "ms",
        "lower",
    ));
    rows.push(Row::medians(
        "the ssh client's CPU use during the transfer".into(),
        &mut busy,
        "% of a core",
        "(the bound)",
    ));

    // Round trips, alternating in ten rounds: a two-round split let one
    // burst of machine noise decide the figure (0.87–1.19× run to run).
    let mut rt = [Vec::new(), Vec::new()];
    let rounds = 10.min(args.rtt_count.max(1));
    for _ in 0..if want("rtt") { rounds } else { 0 } {
        for (i, t) in both.iter().enumerate() {
            rt[i].extend(round_trips(d, c, t, echo, args.rtt_count / rounds)?);
        }
    }
    rows.push(Row::medians(
        format!("64-byte round trip through `ssh -L` ({} each)", rt[0].len()),
        &mut rt,
        "µs",
        "lower",
    ));

    // Round trips beside a stalled forward, alternating in rounds.
    let mut st = [Vec::new(), Vec::new()];
    if want("stall") {
        let stall = stall_server()?;
        let rounds = 4;
        for _ in 0..rounds {
            for (i, t) in both.iter().enumerate() {
                st[i].extend(stalled_round_trips(
                    d,
                    c,
                    t,
                    stall,
                    echo,
                    args.rtt_count / 10,
                )?);
            }
        }
    }
    rows.push(Row::medians(
        format!(
            "64-byte round trip beside a stalled forward ({} each)",
            st[0].len()
        ),
        &mut st,
        "µs",
        "lower",
    ));

    // Connection setup, alternating.
    let mut su = [Vec::new(), Vec::new()];
    for _ in 0..if want("setup") { args.setup_count } else { 0 } {
        for (i, t) in both.iter().enumerate() {
            su[i].push(setup_once(d, c, t)?);
        }
    }
    rows.push(Row::medians(
        format!("connection setup, `ssh gw CMD` ({} each)", args.setup_count),
        &mut su,
        "ms",
        "lower",
    ));

    // Memory per idle session, and sessions held.
    let key = Arc::new(russh::keys::load_secret_key(d.join("client_key"), None)?);
    if want("memory") {
        // Warm up: what the first sessions cost once (allocator arenas,
        // database caches) is not a cost per session.
        for t in both {
            drop(open_sessions(t.port, key.clone(), 50, 50).await);
        }
    }
    for &n in if want("memory") {
        &args.sessions[..]
    } else {
        &[]
    } {
        let mut per = [0.0, 0.0];
        for (i, t) in both.iter().enumerate() {
            settle().await;
            let before = tree_pss_kib(t.pid);
            let held = open_sessions(t.port, key.clone(), n, 50).await;
            settle().await;
            let after = tree_pss_kib(t.pid);
            per[i] = after.saturating_sub(before) as f64 / held.len().max(1) as f64;
            drop(held);
        }
        rows.push(Row {
            metric: format!("memory per idle session at {n} sessions"),
            openssh: per[0],
            gatehouse: per[1],
            unit: "KiB",
            better: "lower",
        });
    }
    let mut held = [f64::NAN, f64::NAN];
    for (i, t) in both.iter().enumerate().filter(|_| want("sessions")) {
        settle().await;
        let sessions = open_sessions(t.port, key.clone(), args.max_sessions, 100).await;
        held[i] = sessions.len() as f64;
        drop(sessions);
    }
    rows.push(Row {
        metric: format!("concurrent sessions held (of {} tried)", args.max_sessions),
        openssh: held[0],
        gatehouse: held[1],
        unit: "sessions",
        better: "higher",
    });
    // gatehouse alone at its own scale: as many sessions on sshd would be
    // twice as many processes (15 GB at sshd's 1.5 MiB a session).
    if want("sessions") && args.gatehouse_sessions > 0 {
        let n = args.gatehouse_sessions;
        settle().await;
        let (pss0, cpu0) = (tree_pss_kib(g.pid), tree_cpu_secs(g.pid));
        let sessions = open_sessions(g.port, key.clone(), n, 100).await;
        let cpu1 = tree_cpu_secs(g.pid);
        settle().await;
        let (pss1, cpu2) = (tree_pss_kib(g.pid), tree_cpu_secs(g.pid));
        let idle = Duration::from_secs(if args.quick { 2 } else { 10 });
        tokio::time::sleep(idle).await;
        let cpu3 = tree_cpu_secs(g.pid);
        let held = sessions.len().max(1) as f64;
        let alone = |metric: String, value: f64, unit, better| Row {
            metric,
            openssh: f64::NAN,
            gatehouse: value,
            unit,
            better,
        };
        rows.push(alone(
            format!("sessions held of {n} tried (gatehouse alone)"),
            sessions.len() as f64,
            "sessions",
            "higher",
        ));
        rows.push(alone(
            format!("memory per idle session at {n} sessions (gatehouse alone)"),
            pss1.saturating_sub(pss0) as f64 / held,
            "KiB",
            "lower",
        ));
        rows.push(alone(
            format!("server CPU per session opened, {n} sessions (gatehouse alone)"),
            (cpu1 - cpu0) * 1000.0 / held,
            "ms",
            "lower",
        ));
        rows.push(alone(
            format!(
                "server CPU with {n} sessions idle, over {} s (gatehouse alone)",
                idle.as_secs()
            ),
            (cpu3 - cpu2) / idle.as_secs_f64() * 100.0,
            "% of a core",
            "lower",
        ));
        drop(sessions);
    }
    // A login on a node that asks the gateway, beside one with a plain
    // authorized_keys file (the OpenSSH sshd above).
    let mut node_line = String::new();
    if want("nodes") && args.node_logins > 0 {
        match enrolled_node(d, gh_port).await {
            Ok((node, node_port, _enrolled)) => {
                let n = Target {
                    name: "node asking gatehouse",
                    port: node_port,
                    pid: node.0.id(),
                    command: "true",
                    ..clone_target(&o)
                };
                let mut nl = [Vec::new(), Vec::new()];
                let mut failed = None;
                for _ in 0..args.node_logins {
                    match (setup_once(d, c, &o), setup_once(d, c, &n)) {
                        (Ok(a), Ok(b)) => {
                            nl[0].push(a);
                            nl[1].push(b);
                        }
                        (Err(e), _) | (_, Err(e)) => failed = Some(e),
                    }
                }
                if let Some(e) = failed {
                    node_line = format!("Node logins failed: {e:#}.\n");
                }
                rows.push(Row::medians(
                    format!(
                        "login on a node: authorized_keys vs asking the gateway ({} each)",
                        args.node_logins
                    ),
                    &mut nl,
                    "ms",
                    "lower",
                ));
            }
            Err(e) => node_line = format!("Node logins not measured: {e:#}.\n"),
        }
    }
    drop(gh);

    // Authentication against a large account base.
    let mut scale_line = String::new();
    if args.auth_scale_accounts > 0 && want("auth") {
        let (small, small_port) =
            start_gatehouse(d, "small", &client_pub, sink_port, echo, 9).await?;
        let (big, big_port) = start_gatehouse(
            d,
            "big",
            &client_pub,
            sink_port,
            echo,
            args.auth_scale_accounts,
        )
        .await?;
        let ts = Target {
            port: small_port,
            pid: small.0.id(),
            ..clone_target(&g)
        };
        let tb = Target {
            port: big_port,
            pid: big.0.id(),
            ..clone_target(&g)
        };
        let mut s = [Vec::new(), Vec::new()];
        for _ in 0..args.setup_count {
            s[0].push(setup_once(d, c, &ts)?);
            s[1].push(setup_once(d, c, &tb)?);
        }
        let (ms_small, ms_big) = (median(&mut s[0]), median(&mut s[1]));
        scale_line = format!(
            "Connection setup with {} accounts / {} keys: {ms_big:.1} ms, against {ms_small:.1} ms with 10 accounts: {:+.1}%.\n",
            args.auth_scale_accounts,
            args.auth_scale_accounts * 2,
            (ms_big / ms_small - 1.0) * 100.0
        );
        if want("nodes") && args.node_logins > 0 {
            let mut q = Vec::new();
            let big_n = args.auth_scale_accounts.to_string();
            for (what, t, name) in [("10", &ts, "small"), (big_n.as_str(), &tb, "big")] {
                match node_questions(&d.join(name), t, &client_pub, args.node_logins).await {
                    Ok((ms, cpu)) => q.push(format!(
                        "{ms:.1} ms and {cpu:.2} ms of gateway CPU with {what} accounts"
                    )),
                    Err(e) => q.push(format!("not measured with {what} accounts ({e:#})")),
                }
            }
            scale_line.push_str(&format!(
                "A node question (the node's `authorized-keys` command: a whole SSH login to the gateway and its answer): {}.\n",
                q.join(", against ")
            ));
        }
    }
    scale_line.push_str(&node_line);
    drop(sshd);
    Ok(render(&rows, &scale_line, args))
}

// ---------------------------------------------------------------- nodes

/// A folder sshd accepts an AuthorizedKeysCommand in (root-owned parents,
/// none group- or world-writable): beside this binary, not under /tmp.
fn command_dir() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::MetadataExt;
    let exe = std::env::current_exe()?;
    let beside = exe.parent().context("the bench binary's folder")?;
    let fit = |p: &Path| {
        p.ancestors()
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0))
    };
    let base = if fit(beside) {
        beside
    } else {
        Path::new("/run")
    };
    tempfile::Builder::new()
        .prefix("bench-node")
        .tempdir_in(base)
        .with_context(|| format!("cannot make a command folder in {}", base.display()))
}

/// Enrols node `name` of the gateway in `gdir` (its config) into a fresh
/// command folder, through the built `gatehouse` binary.
fn enrol(gdir: &Path, name: &str, gateway_port: u16) -> Result<tempfile::TempDir> {
    let dir = command_dir()?;
    let cli = std::env::current_exe()?.with_file_name("gatehouse");
    let out = Command::new(&cli)
        .arg("--config")
        .arg(gdir.join("gatehouse.toml"))
        .args(["node", "enroll", name, "--gateway"])
        .arg(format!("127.0.0.1:{gateway_port}"))
        .arg("--dir")
        .arg(dir.path())
        .output()
        .with_context(|| format!("cannot run {} (cargo build --release first)", cli.display()))?;
    if !out.status.success() {
        bail!("node enroll: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(dir)
}

/// Registers node `name` at `port` in a cluster `c-NAME` of the bench
/// project, with the bench user as node_user.
async fn node_in_cluster(gdir: &Path, name: &str, port: u16) -> Result<()> {
    use gatehouse::model::{HostPort, Name};
    use gatehouse::store::ClusterConfigChange;
    let store =
        gatehouse::store::Store::connect(&format!("sqlite://{}/gatehouse.db", gdir.display()), 2)
            .await?;
    store
        .node_register(
            &Name::parse("n", name)?,
            &HostPort::parse(&format!("127.0.0.1:{port}"))?,
            Some("bench-node"),
            0,
        )
        .await?;
    let project = store
        .projects()
        .await?
        .into_iter()
        .find(|p| p.name == "bench")
        .context("the bench project")?;
    let cluster = Name::parse("c", &format!("c-{name}"))?;
    let c = store
        .cluster_create(project.id, &cluster, 1, Some("bench-node"))
        .await?;
    store
        .cluster_configure(&c, &[ClusterConfigChange::NodeUser(user())])
        .await?;
    Ok(())
}

/// An sshd whose only authorized keys come from asking the gateway at
/// `gateway_port` (node `asker` of the gateway in `dir/gw`).
async fn enrolled_node(dir: &Path, gateway_port: u16) -> Result<(Proc, u16, tempfile::TempDir)> {
    let gdir = dir.join("gw");
    let port = free_port()?;
    node_in_cluster(&gdir, "asker", port).await?;
    let enrolled = enrol(&gdir, "asker", gateway_port)?;
    let ndir = dir.join("node");
    std::fs::create_dir_all(&ndir)?;
    let empty = ndir.join("authorized_keys");
    std::fs::write(&empty, "")?;
    let (proc, port) = start_sshd_with(
        &ndir,
        &empty,
        port,
        &format!("Include {}/sshd_config\n", enrolled.path().display()),
    )?;
    Ok((proc, port, enrolled))
}

/// Asks the gateway `count` node questions through the node's command;
/// the median time and the gateway's CPU per question, in ms.
async fn node_questions(
    gdir: &Path,
    t: &Target,
    client_pub: &Path,
    count: usize,
) -> Result<(f64, f64)> {
    let name = "scale";
    node_in_cluster(gdir, name, free_port()?).await?;
    let enrolled = enrol(gdir, name, t.port)?;
    let fp = {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(client_pub)
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    let command = enrolled.path().join("authorized-keys");
    let mut times = Vec::new();
    let cpu_before = tree_cpu_secs(t.pid);
    for _ in 0..count {
        let start = Instant::now();
        let out = Command::new(&command).arg(user()).arg(&fp).output()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        if !String::from_utf8_lossy(&out.stdout).contains("gatehouse:") {
            bail!("the node question was not granted: {out:?}");
        }
    }
    let cpu = (tree_cpu_secs(t.pid) - cpu_before) * 1e3 / count.max(1) as f64;
    Ok((median(&mut times), cpu))
}

fn clone_target(t: &Target) -> Target {
    Target {
        name: t.name,
        port: t.port,
        sink_host: t.sink_host.clone(),
        echo_host: t.echo_host.clone(),
        command: t.command,
        pid: t.pid,
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let ssh = Command::new("ssh")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem} memory, Linux {}, client and sshd: {ssh}",
        kernel.trim()
    )
}

fn render(rows: &[Row], scale_line: &str, args: &Args) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Run on {}; {}. Cipher {}, both servers on loopback, runs alternating.{}\n\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        machine(),
        args.cipher,
        if args.quick {
            " QUICK SMOKE RUN: sizes too small to mean anything."
        } else {
            ""
        }
    ));
    out.push_str("| figure (median) | OpenSSH sshd | gatehouse | gatehouse / OpenSSH | better |\n|---|---:|---:|---:|---|\n");
    // Figures left out with --only have no values.
    for r in rows
        .iter()
        .filter(|r| !(r.openssh.is_nan() && r.gatehouse.is_nan()))
    {
        // A figure measured on gatehouse alone has no OpenSSH value.
        let (openssh, ratio) = match r.openssh.is_nan() {
            true => ("—".to_string(), "—".to_string()),
            false => (
                format!("{:.1} {}", r.openssh, r.unit),
                format!("{:.2}", r.gatehouse / r.openssh),
            ),
        };
        out.push_str(&format!(
            "| {} | {openssh} | {:.1} {} | {ratio} | {} |\n",
            r.metric, r.gatehouse, r.unit, r.better
        ));
    }
    if !scale_line.is_empty() {
        out.push('\n');
        out.push_str(scale_line);
    }
    out
}

const START: &str = "<!-- bench:start -->";
const END: &str = "<!-- bench:end -->";

/// Replaces the table between the markers, keeping the notes around it.
fn write_report(path: &Path, report: &str) -> Result<()> {
    let old = std::fs::read_to_string(path)
        .unwrap_or_else(|_| format!("# Benchmarks\n\n{START}\n{END}\n"));
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{START}\n{report}{}", &old[..a], &old[b..]),
        _ => format!("{old}\n{START}\n{report}{END}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}
