//! `direct-tcpip` channels (`ssh -J`, `-W`, `-L`, `-D`): resolve the target
//! with [`Target`], check it, connect, then pipe bytes both ways, counting
//! them. Refusals never connect anywhere.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use tokio_util::sync::CancellationToken;

use super::ConnCtx;
use super::sessions::{ChannelKind, Counters, LiveChannel, Refused};
use crate::audit::{Event, Outcome};
use crate::reach::Facts;
use crate::store::{Cluster, Membership, Node};
use crate::target::{Resolved, Target};

/// Buffer per direction: large enough to keep a fast link busy.
const COPY_BUF: usize = 256 * 1024;

type OpenHandle = russh::server::ChannelOpenHandle;

/// Registered channels are removed from the registry however the forward
/// ends (refused, failed, revoked, closed).
struct Registered<'a> {
    conn: &'a ConnCtx,
    id: russh::ChannelId,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.conn
            .shared
            .registry
            .remove_channel(&self.conn.session_id, self.id);
    }
}

/// How often a forward re-checks access when revocations keep arriving
/// while it opens; past that it is refused (the client may retry).
const MAX_STALE_RETRIES: usize = 5;

/// Handles one direct-tcpip open from start to close.
///
/// Revocation is race-free by construction: the channel is registered
/// (with its cancellation token) before it connects, and registration fails
/// as stale when a revocation was applied after its access check began, so
/// every revocation either is seen by the check or finds the channel.
pub async fn run(
    conn: Arc<ConnCtx>,
    channel: Channel<Msg>,
    host: String,
    port: u32,
    reply: OpenHandle,
    // Held until the forward is open (or refused): the in-flight limit.
    opening: tokio::sync::OwnedSemaphorePermit,
) {
    let shown = format!("{}:{port}", crate::model::printable(&host, 253));
    let registry = &conn.shared.registry;
    let channel_id = channel.id();
    let counters = Arc::new(Counters::default());
    let cancel = CancellationToken::new();
    let mut stale = 0;
    let (resolved, _registered) = loop {
        let seen = registry.generation();
        let mut resolved = match resolve(&conn, &host, port).await {
            Ok(r) => r,
            Err(why) => return refuse(&conn, None, &shown, &why, reply).await,
        };
        if resolved.node.is_none() {
            // An API or dashboard address on a node's host, however it is
            // spelled: releasing that node must end this forward too.
            resolved.node = node_at(&resolved).await;
        }
        let mut live = LiveChannel::new(ChannelKind::Forward);
        live.project = Some(resolved.project.clone());
        live.cluster = Some(resolved.cluster.clone());
        live.node = resolved.node.clone();
        live.target = Some(shown.clone());
        live.action = Some(resolved.action);
        live.counters = counters.clone();
        live.cancel = cancel.clone();
        match registry.add_channel(&conn.session_id, channel_id, live, Some(seen)) {
            Ok(()) => {
                let guard = Registered {
                    conn: &conn,
                    id: channel_id,
                };
                break (resolved, guard);
            }
            Err(Refused::Stale) if stale < MAX_STALE_RETRIES => stale += 1,
            Err(Refused::Stale) => {
                let why = "access changed while the forward opened; try again";
                return refuse(&conn, Some(&resolved), &shown, why, reply).await;
            }
            Err(Refused::Gone) => return,
            Err(Refused::Limit(why)) => {
                conn.shared.metrics.denial("max_channels");
                tracing::warn!(account = %conn.account.login, source = %conn.source, target = %shown, reason = %why, "forward refused");
                audit(&conn, Some(&resolved), &shown, Outcome::Denied, &why).await;
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: ChannelOpenFailure::ResourceShortage.code(),
                        reason: why,
                    })
                    .await;
                return;
            }
        }
    };
    if resolved.action == crate::policy::Action::UseKubernetes {
        // The gateway answers kube.CLUSTER itself, as the user.
        reply.accept().await;
        drop(opening);
        tracing::info!(account = %conn.account.login, source = %conn.source, target = %shown, "kube front door opened");
        let _open = conn.shared.metrics.forward_open();
        let end =
            super::kube_door::serve(&conn, channel, &resolved, &cancel, counters.clone()).await;
        super::memory::note_churn();
        tracing::info!(account = %conn.account.login, target = %shown, "kube front door {end}");
        audit(&conn, Some(&resolved), &shown, Outcome::Ok, &end).await;
        return;
    }
    let connected = tokio::select! {
        c = dial(&conn, &resolved) => c,
        _ = cancel.cancelled() => {
            let why = "access revoked while the forward was connecting";
            return refuse(&conn, Some(&resolved), &shown, why, reply).await;
        }
    };
    let (stream, reached) = match connected {
        Ok(c) => c,
        Err(Dial::Refused(why)) => {
            return refuse(&conn, Some(&resolved), &shown, &why, reply).await;
        }
        Err(Dial::Failed(e)) => {
            let why = format!("cannot connect to {shown} ({}): {e}", resolved.connect);
            audit(&conn, Some(&resolved), &shown, Outcome::Failed, &why).await;
            // Code 2 with our own description: the OpenSSH client prints
            // "open failed: connect failed: <why>".
            reply
                .reject(ChannelOpenFailure::Other {
                    code: ChannelOpenFailure::ConnectFailed.code(),
                    reason: why,
                })
                .await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    reply.accept().await;
    drop(opening);
    tracing::info!(account = %conn.account.login, source = %conn.source, target = %shown, to = %reached, "forward opened");
    let _open = conn.shared.metrics.forward_open();
    let (mut from_client, to_client) = channel.split();
    let tcp = Counted {
        inner: stream,
        counters: counters.clone(),
        metrics: conn.shared.metrics.clone(),
        activity: conn.activity.clone(),
    };
    let piped = tokio::select! {
        r = pipe(&mut from_client, &to_client, tcp) => Some(r),
        _ = cancel.cancelled() => None,
    };
    let _ = to_client.close().await;
    let end = match piped {
        Some(Ok(_)) => "closed".to_string(),
        // The client going away mid-stream is an ordinary end.
        Some(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => "closed".to_string(),
        Some(Err(e)) => format!("ended: {e}"),
        None => "ended: access revoked or session closed".to_string(),
    };
    drop((from_client, to_client));
    super::memory::note_churn();
    let (up, down) = (
        counters.to_target.load(Ordering::Relaxed),
        counters.from_target.load(Ordering::Relaxed),
    );
    tracing::info!(account = %conn.account.login, target = %shown, to = %reached, bytes_to_target = up, bytes_from_target = down, "forward {end}");
    audit(
        &conn,
        Some(&resolved),
        &shown,
        Outcome::Ok,
        &format!("{end}; to {reached}; {up} bytes to target, {down} bytes from target"),
    )
    .await;
}

/// Why [`dial`] did not connect.
pub(crate) enum Dial {
    /// The destination is not allowed (the operator's rules); nothing was
    /// connected.
    Refused(String),
    /// It could not be reached.
    Failed(String),
}

/// Connects to `resolved`'s address, held to the operator's rules on every
/// address it resolves to ([`crate::reach`]), within `limits.connect_timeout`.
/// Returns the stream and the address reached.
pub(crate) async fn dial(
    conn: &ConnCtx,
    resolved: &Resolved,
) -> Result<(TcpStream, std::net::SocketAddr), Dial> {
    let hosts: Vec<String> = resolved
        .cluster_nodes
        .iter()
        .map(|(_, h)| h.clone())
        .collect();
    let facts = Facts::gather(&conn.shared.store, resolved.connect.port, &hosts)
        .await
        .map_err(|e| Dial::Refused(format!("cannot check the destination ({e})")))?;
    let dest = facts.destination(
        &conn.shared.reach,
        resolved.action,
        resolved.node.as_deref(),
        resolved.sshd_port,
    );
    crate::net::connect_checked(
        &resolved.connect.host,
        resolved.connect.port,
        conn.shared.config.limits.connect_timeout,
        |a| dest.check(a),
    )
    .await
    .map_err(|e| match e {
        crate::net::ConnectError::Forbidden(why) => Dial::Refused(why),
        e => Dial::Failed(e.to_string()),
    })
}

/// Refuses an open as administratively prohibited, saying why, and audits
/// it; nothing was connected.
async fn refuse(
    conn: &ConnCtx,
    resolved: Option<&Resolved>,
    shown: &str,
    why: &str,
    reply: OpenHandle,
) {
    tracing::warn!(account = %conn.account.login, source = %conn.source, target = %shown, reason = %why, "forward refused");
    conn.shared.metrics.forward_refused();
    // A flood of refusals spends the connection's budget (then opens are
    // refused without work) and the account's audit allowance.
    let _ = conn.may_refuse();
    if crate::audit::admit_denial(&conn.account.login) {
        audit(
            conn,
            resolved,
            shown,
            Outcome::Denied,
            &format!("refused: {why}"),
        )
        .await;
    }
    reply
        .reject(ChannelOpenFailure::Other {
            code: ChannelOpenFailure::AdministrativelyProhibited.code(),
            reason: format!("gatehouse refused {shown}: {why}"),
        })
        .await;
}

/// The cluster node whose host resolves to an address of the forward's
/// destination host, if any.
async fn node_at(r: &Resolved) -> Option<String> {
    let dest = crate::net::resolve_host(&r.connect.host).await;
    for (name, host) in &r.cluster_nodes {
        let ips = crate::net::resolve_host(host).await;
        if ips.iter().any(|ip| dest.contains(ip)) {
            return Some(name.clone());
        }
    }
    None
}

async fn resolve(conn: &ConnCtx, host: &str, port: u32) -> Result<Resolved, String> {
    let target = Target::parse(host, port).map_err(|e| e.0)?;
    resolve_target(conn, &target).await
}

/// What the account sees now: its memberships, their clusters and nodes,
/// read afresh (never cached past a change).
pub(crate) async fn seen_by(
    conn: &ConnCtx,
) -> Result<(Vec<Membership>, Vec<Cluster>, Vec<Node>), String> {
    let store = &conn.shared.store;
    let lookups = async {
        let m = store.memberships_of(conn.account.id).await?;
        let c = store.clusters_for_account(conn.account.id).await?;
        let n = store.nodes_for_account(conn.account.id).await?;
        Ok::<_, crate::store::StoreError>((m, c, n))
    };
    lookups
        .await
        .map_err(|e| format!("cannot check access ({e})"))
}

/// Resolves `target` against what the account sees now, with the policy's
/// decision.
pub(crate) async fn resolve_target(conn: &ConnCtx, target: &Target) -> Result<Resolved, String> {
    let (m, c, n) = seen_by(conn).await?;
    target.resolve(&m, &c, &n).map_err(|e| e.0)
}

async fn audit(conn: &ConnCtx, r: Option<&Resolved>, target: &str, outcome: Outcome, detail: &str) {
    let event = Event {
        actor: conn.account.login.clone(),
        source: conn.source.clone(),
        project: r.map(|r| r.project.clone()),
        action: "forward".into(),
        target: target.to_string(),
        args: String::new(),
        outcome,
        detail: detail.to_string(),
    };
    if let Err(e) = conn.shared.store.audit(&event).await {
        tracing::error!(error = %e, "cannot write audit event");
    }
}

/// Pipes a forward both ways until both directions have ended, passing
/// EOF each way (half-close). What the client sends is written to the
/// target straight from the channel's messages, with no copy through a
/// buffer of ours; what the target sends goes through one `COPY_BUF`
/// buffer into the channel, within the window the client grants.
async fn pipe(
    from_client: &mut ChannelReadHalf,
    to_client: &ChannelWriteHalf<Msg>,
    tcp: Counted,
) -> std::io::Result<()> {
    let Counted {
        mut inner,
        counters,
        metrics,
        activity,
    } = tcp;
    let (tcp_read, mut tcp_write) = inner.split();
    let up = async {
        while let Some(msg) = from_client.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    tcp_write.write_all(&data).await?;
                    let n = data.len() as u64;
                    counters.to_target.fetch_add(n, Ordering::Relaxed);
                    metrics.forwarded_to_target(n);
                }
                ChannelMsg::Eof => break,
                _ => {}
            }
        }
        tcp_write.shutdown().await
    };
    let down = async {
        let mut from_target = tokio::io::BufReader::with_capacity(
            COPY_BUF,
            CountedRead {
                inner: tcp_read,
                counters: &counters,
                metrics: &metrics,
                activity: &activity,
            },
        );
        let mut writer = to_client.make_writer();
        tokio::io::copy_buf(&mut from_target, &mut writer).await?;
        writer.shutdown().await
    };
    tokio::try_join!(up, down).map(drop)
}

/// The target's side of a forward, counting what it reads.
struct CountedRead<'a> {
    inner: tokio::net::tcp::ReadHalf<'a>,
    counters: &'a Counters,
    metrics: &'a crate::metrics::Metrics,
    /// The connection's last-activity clock: a forward moving data is not idle.
    activity: &'a std::sync::atomic::AtomicI64,
}

impl AsyncRead for CountedRead<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.counters.from_target.fetch_add(n, Ordering::Relaxed);
            self.metrics.forwarded_from_target(n);
            self.activity
                .store(crate::store::now_ms(), Ordering::Relaxed);
        }
        r
    }
}

/// The target's connection and what its bytes are counted in.
struct Counted {
    inner: TcpStream,
    counters: Arc<Counters>,
    metrics: Arc<crate::metrics::Metrics>,
    activity: Arc<std::sync::atomic::AtomicI64>,
}
