//! The SSH gateway: `gatehouse serve`. This module owns start-up (host key,
//! database, listener), the accept loop with its limits, and shutdown.
//! The algorithms offered are chosen in `algorithms`. Per-connection
//! protocol work is in `handler`; session channels in
//! `channel`; forwards in `forward`; live sessions in [`sessions`]; the
//! allocator's tuning and trimming in `memory` (private modules).

mod algorithms;
mod channel;
mod channel_io;
mod forward;
mod handler;
mod killable;
mod kube_door;
pub mod line_editor;
mod memory;
mod node_channel;
mod penalty;
pub mod sessions;
mod startups;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use russh::keys::{Algorithm, PrivateKey};
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Account, Store};
use sessions::{ChannelKind, Registry};

/// What every connection shares.
pub struct Shared {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub penalties: Arc<penalty::Penalties>,
    /// What forwards may land on (the operator's rules).
    pub reach: crate::reach::Rules,
    /// `nodes.login_from`: the gateway's addresses as nodes see them.
    pub login_from: Vec<std::net::IpAddr>,
    /// The CA of the Kubernetes front door.
    pub kube: Arc<crate::kube::Authority>,
}

/// An accepted connection on its way to a worker, with what it holds: its
/// place among all connections and among the unauthenticated ones.
struct Accepted {
    sock: std::net::TcpStream,
    peer: std::net::SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    slot: startups::Slot,
}

/// An authenticated connection, as channels see it.
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub account: Account,
    pub fingerprint: String,
    pub source: String,
    pub session_id: String,
    /// When traffic last moved on any channel, in ms since the epoch.
    pub activity: Arc<std::sync::atomic::AtomicI64>,
    /// Forward opens being checked and connected now (see
    /// [`MAX_OPENING`]): each costs database reads before any limit on open
    /// channels applies, so they take turns.
    pub opening: Arc<tokio::sync::Semaphore>,
    /// Forward opens waiting for their turn (see [`MAX_WAITING`]).
    pub waiting: Arc<tokio::sync::Semaphore>,
    /// Refused forward opens: a bucket of [`REFUSAL_BURST`], refilled
    /// [`REFUSALS_PER_SECOND`]; when empty, opens are refused at once,
    /// without touching the database.
    pub refusals: std::sync::Mutex<(f64, std::time::Instant)>,
}

/// Forward opens one connection may have in progress at once; more wait
/// their turn, up to [`MAX_WAITING`], and past that are refused.
pub const MAX_OPENING: usize = 16;
pub const MAX_WAITING: usize = 256;
/// Refused forward opens one connection may make in a burst, and then per
/// second.
pub const REFUSAL_BURST: f64 = 32.0;
pub const REFUSALS_PER_SECOND: f64 = 4.0;

impl ConnCtx {
    /// Takes one refusal from the connection's budget; false when it is
    /// spent (further opens are refused without any work).
    pub fn may_refuse(&self) -> bool {
        let now = std::time::Instant::now();
        let mut b = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        b.0 =
            (b.0 + now.duration_since(b.1).as_secs_f64() * REFUSALS_PER_SECOND).min(REFUSAL_BURST);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// True while the refusal budget is spent.
    pub fn refusals_spent(&self) -> bool {
        let b = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        b.0 + b.1.elapsed().as_secs_f64() * REFUSALS_PER_SECOND < 1.0
    }

    /// Marks the connection as busy: input from the client, or bytes moving
    /// through a forward in either direction.
    pub fn touch(&self) {
        self.activity
            .store(crate::store::now_ms(), Ordering::Relaxed);
    }

    fn set_channel(&self, id: russh::ChannelId, kind: ChannelKind, project: Option<String>) {
        self.shared
            .registry
            .update_channel(&self.session_id, id, kind, project);
    }
}

/// Loads the host key, creating it (mode 0600) on first start. An existing
/// key that group or others can read is refused, as sshd does.
pub fn host_key(path: &Path) -> Result<PrivateKey> {
    const WHAT: &str = "host key";
    if let Some(text) = crate::secret_file::read_private(path, WHAT)? {
        return russh::keys::decode_secret_key(&text, None)
            .with_context(|| format!("cannot load host key {}", path.display()));
    }
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("cannot generate a host key")?;
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .context("cannot encode the host key")?;
    crate::secret_file::create_private(path, WHAT, text.as_bytes())?;
    tracing::info!(path = %path.display(), "created a new ed25519 host key");
    Ok(key)
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if config.log.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

fn russh_config(config: &Config, key: PrivateKey) -> russh::server::Config {
    russh::server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-gatehouse_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        keys: vec![key],
        preferred: algorithms::preferred(),
        // Refusals take the same time whatever the reason, so a prober learns
        // nothing from timing; short, since agents offer several keys.
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: config.limits.max_auth_attempts,
        // Idleness is judged by gatehouse itself (see `Registry::sweep_idle`):
        // russh's timer would be reset by keepalive replies and by our own output.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        // OpenSSH's own channel window and packet size for forwards. A 16 MiB
        // window and 64 KiB packets were slower through the OpenSSH client
        // (see BENCHMARKS.md); over a long link, 2 MiB in flight reaches as far
        // as OpenSSH's does (about 40 MB/s at 50 ms round trips).
        window_size: 2 * 1024 * 1024,
        maximum_packet_size: 32 * 1024,
        channel_buffer_size: 64,
        nodelay: true,
        ..Default::default()
    }
}

/// A worker: one thread with its own single-threaded runtime. A
/// connection lives on one worker from accept to close, so its session,
/// channel and forward tasks never hop between threads: on the forwarding
/// hot path that is worth a third of the throughput (see BENCHMARKS.md).
struct Worker {
    conns: tokio::sync::mpsc::UnboundedSender<Accepted>,
    thread: std::thread::JoinHandle<()>,
}

/// What a worker's connections share; each worker has its own database
/// pool, since a pool's sockets belong to the runtime that opened them.
struct Common {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    penalties: Arc<penalty::Penalties>,
    config: Config,
    ssh_config: Arc<russh::server::Config>,
    reach: crate::reach::Rules,
    login_from: Vec<std::net::IpAddr>,
    kube: Arc<crate::kube::Authority>,
}

fn start_worker(
    index: usize,
    common: &Common,
    exit: tokio::sync::watch::Receiver<bool>,
    ready: tokio::sync::mpsc::UnboundedSender<Result<()>>,
) -> Result<Worker> {
    let (conns, mut incoming) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
    let (registry, metrics, penalties) = (
        common.registry.clone(),
        common.metrics.clone(),
        common.penalties.clone(),
    );
    let (config, ssh_config, reach, login_from, kube) = (
        common.config.clone(),
        common.ssh_config.clone(),
        common.reach.clone(),
        common.login_from.clone(),
        common.kube.clone(),
    );
    let thread = std::thread::Builder::new()
        .name(format!("gatehouse-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready.send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                let pool_size = (config.database.max_connections / 2).max(2);
                let store = match Store::connect(&config.database.url, pool_size).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let shared = Arc::new(Shared {
                    store,
                    registry,
                    penalties,
                    metrics,
                    config,
                    reach,
                    login_from,
                    kube,
                });
                let _ = ready.send(Ok(()));
                let mut exit = exit;
                loop {
                    tokio::select! {
                        _ = exit.wait_for(|e| *e) => break,
                        next = incoming.recv() => {
                            let Some(accepted) = next else { break };
                            let sock = match tokio::net::TcpStream::from_std(accepted.sock) {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot adopt an accepted connection");
                                    continue;
                                }
                            };
                            let (shared, ssh_config) = (shared.clone(), ssh_config.clone());
                            let (peer, slot) = (accepted.peer, accepted.slot);
                            // The permit lives as long as the task, however it ends.
                            let permit = accepted.permit;
                            tokio::spawn(async move {
                                let _permit = permit;
                                connection(shared, ssh_config, sock, peer, slot).await;
                            });
                        }
                    }
                }
                // Connections still open when the runtime drops are cut.
            });
        })
        .context("cannot start a worker thread")?;
    Ok(Worker { conns, thread })
}

/// Raises this process's soft limit on open files to its hard limit (a
/// session is a socket; 1,024, a common default, is too few), as OpenSSH's
/// sshd and the Go runtime do. Returns the limit now in force; the
/// systemd unit sets the hard limit (`LimitNOFILE=`).
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<()> {
    init_logging(&config);
    memory::tune_allocator();
    let open_files = raise_open_files_limit();
    tracing::debug!(open_files, "open files limit");
    let key = host_key(&config.server.host_key)?;
    let kube = Arc::new(crate::kube::Authority::load_or_create(
        &config.kube.ca_key,
        &config.kube.ca_cert,
    )?);
    let addr = config.listen_addr()?;
    // Migrates the schema once, before the workers open their pools.
    let store = Store::connect(&config.database.url, 2).await?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let metrics = Metrics::new();
    if !config.metrics.listen.is_empty() {
        let m = TcpListener::bind(&config.metrics.listen)
            .await
            .with_context(|| format!("cannot listen for metrics on {}", config.metrics.listen))?;
        tokio::spawn(crate::metrics::serve(m, metrics.clone(), store.clone()));
    }
    let registry = Registry::new(sessions::ChannelLimits {
        per_connection: config.limits.max_channels_per_connection,
        per_account: config.limits.max_channels_per_account,
    });
    let mut own_ports = vec![addr.port()];
    if let Ok(m) = config.metrics.listen.parse::<std::net::SocketAddr>() {
        own_ports.push(m.port());
    }
    let reach = config.forwarding.rules(own_ports)?;
    let startups = startups::Startups::new(
        config.limits.max_startups()?,
        config.limits.per_source_max_startups,
    );
    let connections = Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections));
    let follower = tokio::spawn(registry.clone().follow(store.clone()));
    let idle_sweeper = tokio::spawn(registry.clone().watch_idle(config.limits.idle_timeout));
    let trimmer = tokio::spawn(memory::trimmer());
    let common = Common {
        registry: registry.clone(),
        metrics: metrics.clone(),
        penalties: Arc::new(penalty::Penalties::new(&config.limits)),
        config: config.clone(),
        ssh_config: Arc::new(russh_config(&config, key)),
        reach,
        login_from: config.nodes.login_from()?,
        kube,
    };
    let count = match config.server.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let (exit_tx, exit_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut workers = Vec::with_capacity(count);
    for i in 0..count {
        workers.push(start_worker(i, &common, exit_rx.clone(), ready_tx.clone())?);
    }
    for _ in 0..count {
        let ready = tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await;
        ready.ok().flatten().context("a worker did not start")??;
    }
    tracing::info!(listen = %listener.local_addr()?, workers = count, "gatehouse listening");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot catch SIGTERM")?;
    let mut next = 0usize;
    loop {
        let (sock, peer) = tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, typically: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Some(left) = common.penalties.refused(peer.ip()) {
            tracing::info!(source = %peer, left = ?left, "connection refused: address on penalty");
            metrics.denial("penalty");
            continue;
        }
        if common.penalties.noauth_exhausted(peer.ip()) {
            tracing::info!(source = %peer, "connection refused: too many unauthenticated connections from this address (limits.per_source_noauth_burst)");
            metrics.denial("noauth_rate");
            continue;
        }
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(source = %peer, max = config.limits.max_connections, "connection refused: too many connections");
            metrics.denial("max_connections");
            continue;
        };
        let slot = match startups.admit(peer.ip(), rand::random_range(0..100)) {
            Ok(slot) => slot,
            Err(why) => {
                let (kind, limit) = match why {
                    startups::Dropped::MaxStartups => ("max_startups", "limits.max_startups"),
                    startups::Dropped::PerSource => {
                        ("per_source_max_startups", "limits.per_source_max_startups")
                    }
                };
                tracing::info!(source = %peer, limit, unauthenticated = startups.held(), "connection dropped: too many unauthenticated connections");
                metrics.denial(kind);
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let Ok(sock) = sock.into_std() else { continue };
        // Round robin: connections are alike until authenticated.
        let accepted = Accepted {
            sock,
            peer,
            permit,
            slot,
        };
        if workers[next % count].conns.send(accepted).is_err() {
            tracing::error!(worker = next % count, "a worker is gone");
        }
        next = next.wrapping_add(1);
    }
    drop(listener);
    shutdown(&registry, config.server.shutdown_grace).await;
    follower.abort();
    idle_sweeper.abort();
    trimmer.abort();
    let _ = exit_tx.send(true);
    for w in workers {
        drop(w.conns);
        let _ = tokio::task::spawn_blocking(move || w.thread.join()).await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn connection(
    shared: Arc<Shared>,
    ssh_config: Arc<russh::server::Config>,
    sock: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    slot: startups::Slot,
) {
    let grace = shared.config.limits.login_grace_time;
    let (sock, switch) = killable::Killable::new(sock);
    let conn = handler::Conn::new(shared, peer, switch.clone(), slot);
    let authenticated = conn.authenticated.clone();
    // Boxed: the set-up future is large and only lives until the handshake
    // starts, while this task lives as long as the connection.
    let setup = tokio::time::timeout(
        grace,
        Box::pin(russh::server::run_stream(ssh_config, sock, conn)),
    );
    let session = match setup.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(source = %peer, error = %e, "connection setup failed");
            return;
        }
        Err(_) => return,
    };
    // The grace timer runs here, beside the session: no task of its own.
    let mut session = session;
    let grace_timer = tokio::time::sleep(grace);
    tokio::pin!(grace_timer);
    let mut timing = true;
    loop {
        tokio::select! {
            ended = &mut session => {
                if let Err(e) = ended {
                    tracing::debug!(source = %peer, error = %e, "connection ended with an error");
                }
                memory::note_churn();
                break;
            }
            _ = &mut grace_timer, if timing => {
                timing = false;
                if !authenticated.load(Ordering::Relaxed) {
                    tracing::info!(source = %peer, "login grace time exceeded");
                    switch.kill();
                }
            }
        }
    }
}

/// Stops gracefully: shells are told, forwards get `grace` to finish,
/// then every session is disconnected (cut, if its client does not take
/// the message within seconds).
async fn shutdown(registry: &Registry, grace: Duration) {
    tracing::info!(grace = ?grace, "shutting down: no new connections");
    registry.tell_shells("\r\ngatehouse is shutting down; this session will end.\r\n");
    let deadline = tokio::time::Instant::now() + grace;
    while registry.forwards_open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    registry.end_all("gateway shutting down");
    // Disconnects are delivered or cut within a few seconds (see
    // `sessions::end_session`); wait for the sessions to go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while registry.session_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
