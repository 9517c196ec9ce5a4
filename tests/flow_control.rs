//! Per-channel flow control (RFC 4254 §5.2), end to end with the real
//! OpenSSH client: one forward whose target stops reading holds back only
//! that forward. The other forwards of the connection, new multiplexed
//! sessions and keepalives go on, the gateway holds at most the channel's
//! window for it, and the stalled stream resumes intact.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::{Gateway, Key};

/// The gateway's channel window (`src/gateway/mod.rs`), in bytes.
const WINDOW: u64 = 2 * 1024 * 1024;

struct World {
    gw: Gateway,
    alice: Key,
    bob: Key,
}

/// train (alice admin, bob member) has cluster c1 on node-1, a loopback
/// address whose other ports the tests' targets listen on.
fn world() -> Option<World> {
    if !common::have("ssh") {
        return None;
    }
    let mut gw = Gateway::new("");
    let (alice, bob) = common::train_on_one_node(&mut gw);
    Some(World { gw, alice, bob })
}

/// A TCP target that takes connections and does not read them until
/// `release` is set; then it reads each to EOF, `chunk` bytes at a time,
/// pausing `pause_ms` between reads, and reports the SHA-256 and length
/// of every connection that carried data. Its receive buffer is small, so
/// a slow or stalled target is felt at once rather than after the
/// kernel's buffers fill.
struct Target {
    port: u16,
    release: Arc<AtomicBool>,
    pause_ms: Arc<AtomicU64>,
    got: mpsc::Receiver<(String, u64)>,
}

fn target(chunk: usize, pause: Duration) -> Target {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(16).expect("listen");
    let listener: TcpListener = socket.into();
    let port = listener.local_addr().expect("addr").port();
    let release = Arc::new(AtomicBool::new(false));
    let pause_ms = Arc::new(AtomicU64::new(pause.as_millis() as u64));
    let (tx, got) = mpsc::channel();
    let (go, paced) = (release.clone(), pause_ms.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (go, paced, tx) = (go.clone(), paced.clone(), tx.clone());
            std::thread::spawn(move || {
                // Bounded: a test that never releases ends within a minute.
                let deadline = Instant::now() + Duration::from_secs(60);
                while !go.load(Ordering::Relaxed) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let (sha, n) = read_paced(conn, chunk, &paced);
                if n > 0 {
                    let _ = tx.send((sha, n));
                }
            });
        }
    });
    Target {
        port,
        release,
        pause_ms,
        got,
    }
}

fn read_paced(mut conn: TcpStream, chunk: usize, pause_ms: &AtomicU64) -> (String, u64) {
    use sha2::Digest;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; chunk];
    let mut n = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
        }
        let pause = pause_ms.load(Ordering::Relaxed);
        if pause > 0 {
            std::thread::sleep(Duration::from_millis(pause));
        }
    }
    (format!("{:x}", h.finalize()), n)
}

/// Writes `total` bytes of a seeded stream to `port` on a thread, counting
/// what the socket took, then half-closes; returns the stream's SHA-256.
fn writer(
    port: u16,
    total: usize,
    written: Arc<AtomicU64>,
) -> std::thread::JoinHandle<std::io::Result<String>> {
    std::thread::spawn(move || {
        use sha2::Digest;
        let mut conn = TcpStream::connect(("127.0.0.1", port))?;
        conn.set_write_timeout(Some(Duration::from_secs(60)))?;
        let mut h = sha2::Sha256::new();
        let mut state = 0x9e37_79b9_u32;
        let mut block = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            for b in block.iter_mut() {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *b = state as u8;
            }
            let n = block.len().min(total - sent);
            conn.write_all(&block[..n])?;
            h.update(&block[..n]);
            sent += n;
            written.store(sent as u64, Ordering::Relaxed);
        }
        conn.shutdown(Shutdown::Write)?;
        // Wait for the target's side to close, so the stream is all there.
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        Ok(format!("{:x}", h.finalize()))
    })
}

/// Waits until `written` has not grown for a second (the stall reached
/// the writer), at most 30 s; returns what it had reached.
fn wait_for_stall(written: &AtomicU64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = written.load(Ordering::Relaxed);
    let mut since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = written.load(Ordering::Relaxed);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now > 0 && since.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    last
}

/// One echo round trip on a fresh connection through `port`; its time,
/// or `None` if no answer came within `bound`.
fn echo_round_trip(conn: &mut TcpStream, bound: Duration) -> Option<Duration> {
    conn.set_read_timeout(Some(bound)).ok()?;
    let start = Instant::now();
    conn.write_all(b"ping\n").ok()?;
    let mut back = [0u8; 5];
    conn.read_exact(&mut back).ok()?;
    (&back == b"ping\n").then(|| start.elapsed())
}

/// The OpenSSH client as a ControlMaster with forwards `-L local:target`,
/// and ServerAlive keepalives every second (3 missed answers end it).
fn master(w: &World, ctl: &Path, forwards: &[(u16, String)]) -> Child {
    let mut c = w.gw.ssh_cmd("bob", &w.bob);
    c.args(["-N", "-M", "-S"]).arg(ctl).args([
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "ServerAliveInterval=1",
        "-o",
        "ServerAliveCountMax=3",
    ]);
    for (local, to) in forwards {
        c.arg("-L").arg(format!("{local}:{to}"));
    }
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh master");
    for (local, _) in forwards {
        assert!(common::wait_port(*local, Duration::from_secs(15)));
    }
    child
}

/// A ControlMaster with two forwards, one to `target` and one to an echo
/// server, and a connection through the second that has answered once:
/// the master, the local port of the first forward, and that connection.
fn beside_an_echo(w: &World, target: u16) -> (Child, u16, TcpStream) {
    let echo = common::echo_server();
    let (p1, p2) = (common::free_port(), common::free_port());
    let master = master(
        w,
        &control_path(w),
        &[
            (p1, format!("node-1.c1:{target}")),
            (p2, format!("node-1.c1:{echo}")),
        ],
    );
    let mut other = TcpStream::connect(("127.0.0.1", p2)).expect("second forward");
    echo_round_trip(&mut other, Duration::from_secs(10)).expect("echo before the stall");
    (master, p1, other)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn control_path(w: &World) -> PathBuf {
    w.gw.dir.path().join("ctl")
}

#[test]
fn a_stalled_forward_holds_back_only_itself_and_resumes_intact() {
    let Some(w) = world() else { return };
    let stalled = target(64 * 1024, Duration::ZERO);
    let ctl = control_path(&w);
    let (mut master, p1, mut other) = beside_an_echo(&w, stalled.port);
    let before = rss_kib(w.gw.pid());

    let total = 64 * 1024 * 1024;
    let written = Arc::new(AtomicU64::new(0));
    let sending = writer(p1, total, written.clone());
    let reached = wait_for_stall(&written);
    assert!(
        reached < total as u64,
        "the target reads nothing, so the writer must stall (it wrote {reached} bytes)"
    );

    // Round trips on the other forward, through 10 s of stall: each within
    // a second, and the master's keepalives answered all along.
    let stall_began = Instant::now();
    let mut slowest = Duration::ZERO;
    while stall_began.elapsed() < Duration::from_secs(10) {
        let rtt = echo_round_trip(&mut other, Duration::from_secs(1))
            .expect("the other forward answers within a second during the stall");
        slowest = slowest.max(rtt);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        master.try_wait().expect("master").is_none(),
        "the client (ServerAliveInterval=1, ServerAliveCountMax=3) gave up during the stall"
    );

    // A new multiplexed session on the same connection.
    let opened = Instant::now();
    let mut mux = Command::new("ssh");
    mux.args(common::ssh_opts())
        .arg("-S")
        .arg(&ctl)
        .args(["-T", "bob@127.0.0.1", "help"]);
    let out = common::run_with_timeout(&mut mux, None, Duration::from_secs(5));
    assert!(
        out.status.success(),
        "a new multiplexed session during the stall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mux_time = opened.elapsed();

    // The gateway holds at most the stalled channel's window for it.
    let during = rss_kib(w.gw.pid());
    let grown = during.saturating_sub(before) * 1024;
    assert!(
        grown <= 2 * WINDOW,
        "the gateway grew by {grown} bytes during the stall (window {WINDOW})"
    );
    println!(
        "stall: writer stopped at {reached} bytes; slowest echo {slowest:?}; new mux session {mux_time:?}; gateway RSS {before} KiB -> {during} KiB"
    );

    // The target reads again: everything arrives, in order.
    stalled.release.store(true, Ordering::Relaxed);
    let sent = sending
        .join()
        .expect("writer thread")
        .expect("the stalled stream completes");
    let (got, n) = stalled
        .got
        .recv_timeout(Duration::from_secs(60))
        .expect("the target's digest");
    assert_eq!(n, total as u64);
    assert_eq!(got, sent, "the resumed stream arrives intact");
    let _ = master.kill();
    let _ = master.wait();
}

#[test]
fn a_slow_reader_does_not_slow_the_other_forward() {
    let Some(w) = world() else { return };
    // 64 KiB every 100 ms: about 640 KB/s.
    let slow = target(64 * 1024, Duration::from_millis(100));
    slow.release.store(true, Ordering::Relaxed);
    let (mut master, p1, mut other) = beside_an_echo(&w, slow.port);
    let total = 32 * 1024 * 1024;
    let written = Arc::new(AtomicU64::new(0));
    let sending = writer(p1, total, written.clone());
    // Let the queues between the writer and the slow target fill.
    std::thread::sleep(Duration::from_secs(2));
    // The bound: every round trip on the other forward within 500 ms while
    // the slow one has data queued (OpenSSH: under a millisecond; before
    // flow control, 3 to 9 s).
    let mut rtts = Vec::new();
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(4) {
        let rtt = echo_round_trip(&mut other, Duration::from_millis(500))
            .expect("a round trip within 500 ms beside a slow reader");
        rtts.push(rtt);
        std::thread::sleep(Duration::from_millis(50));
    }
    rtts.sort();
    println!(
        "beside a slow reader: {} round trips, median {:?}, slowest {:?}",
        rtts.len(),
        rtts[rtts.len() / 2],
        rtts[rtts.len() - 1]
    );
    slow.pause_ms.store(0, Ordering::Relaxed);
    let sent = sending
        .join()
        .expect("writer")
        .expect("slow stream completes");
    let (got, n) = slow
        .got
        .recv_timeout(Duration::from_secs(60))
        .expect("digest");
    assert_eq!((got, n), (sent, total as u64));
    let _ = master.kill();
    let _ = master.wait();
}

#[test]
fn a_client_killed_during_a_stall_leaves_no_session() {
    let Some(w) = world() else { return };
    let stalled = target(64 * 1024, Duration::ZERO);
    let p1 = common::free_port();
    let ctl = control_path(&w);
    let mut master = master(&w, &ctl, &[(p1, format!("node-1.c1:{}", stalled.port))]);
    let written = Arc::new(AtomicU64::new(0));
    let _sending = writer(p1, 64 * 1024 * 1024, written.clone());
    wait_for_stall(&written);
    let sessions = || {
        w.gw.ssh("alice", &w.alice, &["session", "list", "--json"])
            .ok()
            .json()
            .as_array()
            .map(|a| a.iter().filter(|s| s["login"] == "bob").count())
            .unwrap_or(0)
    };
    assert_eq!(sessions(), 1, "bob's stalled session is listed");
    let _ = master.kill();
    let _ = master.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sessions() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sessions(), 0, "the killed client's session is gone");
    stalled.release.store(true, Ordering::Relaxed);
}

/// A client that sends its window as 64-byte packets into a forward whose
/// target does not read (a scripted russh client: the OpenSSH client
/// merges small writes when it can). The gateway keeps small pieces in
/// one buffer while the reader is behind, so the window, not the count of
/// packets, bounds what it holds: the other forward answers, and every
/// byte arrives once the target reads.
#[test]
fn tiny_packets_into_a_stalled_forward_hold_back_only_it() {
    let Some(w) = world() else { return };
    let stalled = target(64 * 1024, Duration::ZERO);
    let echo = common::echo_server();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (sent, echoed, got) = runtime.block_on(async {
        let key = Arc::new(russh::keys::load_secret_key(&w.bob.private, None).expect("bob's key"));
        let config = Arc::new(russh::client::Config::default());
        let mut s = russh::client::connect(config, ("127.0.0.1", w.gw.port), common::Trusting)
            .await
            .expect("connect");
        let auth = s
            .authenticate_publickey("bob", russh::keys::PrivateKeyWithHashAlg::new(key, None))
            .await
            .expect("authenticate");
        assert!(auth.success());
        let slow = s
            .channel_open_direct_tcpip("node-1.c1", u32::from(stalled.port), "127.0.0.1", 1)
            .await
            .expect("open the stalled forward");
        let mut other = s
            .channel_open_direct_tcpip("node-1.c1", u32::from(echo), "127.0.0.1", 2)
            .await
            .expect("open the echo forward");
        let record = [0x61u8; 64];
        let mut sent = 0u64;
        // Until the window is spent: a send that waits 2 s is held back.
        while sent < 64 * 1024 * 1024 {
            match tokio::time::timeout(Duration::from_secs(2), slow.data(&record[..])).await {
                Ok(Ok(())) => sent += record.len() as u64,
                _ => break,
            }
        }
        if let Err(e) = other.data(&b"ping"[..]).await {
            panic!(
                "send on the other forward: {e}; gateway log:\n{}",
                w.gw.log_text()
            );
        }
        let echoed = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(msg) = other.wait().await {
                if let russh::ChannelMsg::Data { data } = msg {
                    return Some(data.to_vec());
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        stalled.release.store(true, Ordering::Relaxed);
        let _ = slow.eof().await;
        // Keep the session until the target has everything.
        let got = tokio::task::spawn_blocking(move || {
            stalled.got.recv_timeout(Duration::from_secs(60)).ok()
        })
        .await
        .ok()
        .flatten();
        (sent, echoed, got)
    });
    assert!(
        sent >= 1024 * 1024,
        "the window took at least 1 MiB of 64-byte packets ({sent} bytes)"
    );
    assert_eq!(
        echoed.as_deref(),
        Some(&b"ping"[..]),
        "the other forward answered within a second"
    );
    let (_, arrived) = got.expect("the target's digest");
    assert_eq!(arrived, sent, "every byte of the stalled forward arrives");
    println!("tiny packets: {sent} bytes in 64-byte packets before the window closed");
}
