//! The SSH gateway: `gatehouse serve`. This module owns start-up (host key,
//! database, listener), the accept loop with its limits, and shutdown.
//! Per-connection protocol work is in [`handler`]; session channels in
//! [`channel`]; forwards in [`forward`]; live sessions in [`sessions`].

mod channel;
mod forward;
mod handler;
mod killable;
pub mod line_editor;
mod penalty;
pub mod sessions;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
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
    pub penalties: penalty::Penalties,
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
}

impl ConnCtx {
    /// Marks the connection as busy: input from the client, or bytes moving
    /// through a forward in either direction.
    pub fn touch(&self) {
        self.activity
            .store(crate::store::now_ms(), Ordering::Relaxed);
    }

    /// Closes the connection once nothing has moved for `idle_timeout`;
    /// shells are warned first. Ends with the session.
    async fn watch_idle(self: Arc<Self>, handle: russh::server::Handle) {
        let idle = self.shared.config.limits.idle_timeout;
        let warn_before = (idle / 2).min(Duration::from_secs(60));
        let tick = (idle / 8).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut warned = false;
        loop {
            tokio::time::sleep(tick).await;
            if !self.shared.registry.contains(&self.session_id) {
                return;
            }
            let quiet = Duration::from_millis(
                (crate::store::now_ms() - self.activity.load(Ordering::Relaxed)).max(0) as u64,
            );
            if quiet >= idle {
                tracing::info!(session = %self.session_id, account = %self.account.login, idle = ?quiet, "closing idle session");
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "idle timeout".into(),
                        String::new(),
                    )
                    .await;
                return;
            }
            if quiet + warn_before >= idle {
                if !warned {
                    warned = true;
                    let left = (idle - quiet).as_secs().max(1);
                    let msg = format!(
                        "\r\n*** gatehouse: this session is idle and closes in {left}s unless you type something ***\r\n"
                    );
                    for (id, kind) in self.shared.registry.channels_of(&self.session_id) {
                        if kind == ChannelKind::Shell {
                            let _ = handle.data(id, msg.clone().into_bytes()).await;
                        }
                    }
                }
            } else {
                warned = false;
            }
        }
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
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "host key {} is readable by group or others (mode {mode:03o}): run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
            russh::keys::load_secret_key(path, None)
                .with_context(|| format!("cannot load host key {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
                .context("cannot generate a host key")?;
            let text = key
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .context("cannot encode the host key")?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create host key {}", path.display()))?;
            std::io::Write::write_all(&mut f, text.as_bytes())
                .with_context(|| format!("cannot write host key {}", path.display()))?;
            tracing::info!(path = %path.display(), "created a new ed25519 host key");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read host key {}", path.display())),
    }
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
        // Refusals take the same time whatever the reason, so a prober learns
        // nothing from timing; short, since agents offer several keys.
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: config.limits.max_auth_attempts,
        // Idleness is judged by gatehouse itself (see `ConnCtx::watch_idle`):
        // russh's timer would be reset by keepalive replies and by our own output.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        window_size: 16 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 64,
        nodelay: true,
        ..Default::default()
    }
}

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<()> {
    init_logging(&config);
    let key = host_key(&config.server.host_key)?;
    let addr = config.listen_addr()?;
    let store = Store::connect(&config.database.url, config.database.max_connections).await?;
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
    let registry = Registry::new();
    let follower = tokio::spawn(registry.clone().follow(store.clone()));
    let shared = Arc::new(Shared {
        store,
        registry,
        penalties: penalty::Penalties::new(&config.limits),
        metrics,
        config: config.clone(),
    });
    let ssh_config = Arc::new(russh_config(&config, key));
    tracing::info!(listen = %listener.local_addr()?, "gatehouse listening");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let open = Arc::new(AtomicUsize::new(0));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot catch SIGTERM")?;
    loop {
        let (sock, peer) = tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Some(left) = shared.penalties.refused(peer.ip()) {
            tracing::info!(source = %peer, left = ?left, "connection refused: address on penalty");
            shared.metrics.denial("penalty");
            continue;
        }
        if open.load(Ordering::Relaxed) >= config.limits.max_connections {
            tracing::warn!(source = %peer, max = config.limits.max_connections, "connection refused: too many connections");
            shared.metrics.denial("max_connections");
            continue;
        }
        let _ = sock.set_nodelay(true);
        open.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let ssh_config = ssh_config.clone();
        let open = open.clone();
        tokio::spawn(async move {
            connection(shared, ssh_config, sock, peer).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    shutdown(&shared).await;
    follower.abort();
    Ok(())
}

async fn connection(
    shared: Arc<Shared>,
    ssh_config: Arc<russh::server::Config>,
    sock: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) {
    let grace = shared.config.limits.login_grace_time;
    let conn = handler::Conn::new(shared, peer);
    let authenticated = conn.authenticated.clone();
    let (sock, switch) = killable::Killable::new(sock);
    let setup = tokio::time::timeout(grace, russh::server::run_stream(ssh_config, sock, conn));
    let session = match setup.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(source = %peer, error = %e, "connection setup failed");
            return;
        }
        Err(_) => return,
    };
    let timer = tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if !authenticated.load(Ordering::Relaxed) {
            tracing::info!(source = %peer, "login grace time exceeded");
            switch.kill();
        }
    });
    if let Err(e) = session.await {
        tracing::debug!(source = %peer, error = %e, "connection ended with an error");
    }
    timer.abort();
}

/// Stops gracefully: shells are told, forwards get the configured time to
/// finish, then everything is closed.
async fn shutdown(shared: &Shared) {
    let grace = shared.config.server.shutdown_grace;
    tracing::info!(grace = ?grace, "shutting down: no new connections");
    for (handle, channels) in shared.registry.handles() {
        for (id, kind) in channels {
            if kind == ChannelKind::Shell {
                let _ = handle
                    .data(
                        id,
                        &b"\r\ngatehouse is shutting down; this session will end.\r\n"[..],
                    )
                    .await;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    while shared.registry.forwards_open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (handle, _) in shared.registry.handles() {
        let _ = handle
            .disconnect(
                russh::Disconnect::ByApplication,
                "gateway shutting down".into(),
                String::new(),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    tracing::info!("stopped");
}
