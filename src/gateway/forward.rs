//! `direct-tcpip` channels (`ssh -J`, `-W`, `-L`, `-D`): resolve the target
//! with [`Target`], check it, connect, then pipe bytes both ways, counting
//! them. Refusals never connect anywhere.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use russh::server::Msg;
use russh::{Channel, ChannelOpenFailure};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::ConnCtx;
use super::sessions::{ChannelKind, Counters, LiveChannel};
use crate::audit::{Event, Outcome};
use crate::target::{Resolved, Target};

/// Buffer per direction: large enough to keep a fast link busy.
const COPY_BUF: usize = 256 * 1024;

type OpenHandle = russh::server::ChannelOpenHandle;

/// Handles one direct-tcpip open from start to close.
pub async fn run(
    conn: Arc<ConnCtx>,
    channel: Channel<Msg>,
    host: String,
    port: u32,
    reply: OpenHandle,
) {
    let shown = format!("{host}:{port}");
    let resolved = match resolve(&conn, &host, port).await {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(account = %conn.account.login, source = %conn.source, target = %shown, reason = %why, "forward refused");
            conn.shared.metrics.forward_refused();
            audit(
                &conn,
                None,
                &shown,
                Outcome::Denied,
                &format!("refused: {why}"),
            )
            .await;
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        }
    };
    let timeout = conn.shared.config.limits.connect_timeout;
    let addr = resolved.connect.to_string();
    let stream =
        match crate::net::connect(&resolved.connect.host, resolved.connect.port, timeout).await {
            Ok((s, _)) => s,
            Err(e) => {
                let why = format!("cannot connect to {shown} ({addr}): {e}");
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
    let counters = Arc::new(Counters::default());
    let channel_id = channel.id();
    conn.shared.registry.add_channel(
        &conn.session_id,
        channel_id,
        LiveChannel {
            kind: ChannelKind::Forward,
            project: Some(resolved.project.clone()),
            cluster: Some(resolved.cluster.clone()),
            node: resolved.node.clone(),
            target: Some(shown.clone()),
            counters: counters.clone(),
            task: None,
        },
    );
    reply.accept().await;
    tracing::info!(account = %conn.account.login, source = %conn.source, target = %shown, to = %addr, "forward opened");
    conn.shared.metrics.forward_opened();
    let pipe = {
        let counters = counters.clone();
        let metrics = conn.shared.metrics.clone();
        let activity = conn.activity.clone();
        tokio::spawn(async move {
            let mut ch = channel.into_stream();
            let mut tcp = Counted {
                inner: stream,
                counters,
                metrics,
                activity,
            };
            tokio::io::copy_bidirectional_with_sizes(&mut ch, &mut tcp, COPY_BUF, COPY_BUF).await
        })
    };
    conn.shared
        .registry
        .set_channel_task(&conn.session_id, channel_id, pipe.abort_handle());
    let end = match pipe.await {
        Ok(Ok(_)) => "closed".to_string(),
        // The client going away mid-stream is an ordinary end.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => "closed".to_string(),
        Ok(Err(e)) => format!("ended: {e}"),
        Err(e) if e.is_cancelled() => "ended: access revoked or session closed".to_string(),
        Err(e) => format!("ended: {e}"),
    };
    conn.shared
        .registry
        .remove_channel(&conn.session_id, channel_id);
    conn.shared.metrics.forward_closed();
    super::memory::note_churn();
    let (up, down) = (
        counters.to_target.load(Ordering::Relaxed),
        counters.from_target.load(Ordering::Relaxed),
    );
    tracing::info!(account = %conn.account.login, target = %shown, bytes_to_target = up, bytes_from_target = down, "forward {end}");
    audit(
        &conn,
        Some(&resolved),
        &shown,
        Outcome::Ok,
        &format!("{end}; {up} bytes to target, {down} bytes from target"),
    )
    .await;
}

async fn resolve(conn: &ConnCtx, host: &str, port: u32) -> Result<Resolved, String> {
    let target = Target::parse(host, port).map_err(|e| e.0)?;
    let store = &conn.shared.store;
    // Membership is read afresh at every open: never cached past a change.
    let lookups = async {
        let m = store.memberships_of(conn.account.id).await?;
        let c = store.clusters_for_account(conn.account.id).await?;
        let n = store.nodes_for_account(conn.account.id).await?;
        Ok::<_, crate::store::StoreError>((m, c, n))
    };
    let (m, c, n) = lookups
        .await
        .map_err(|e| format!("cannot check access ({e})"))?;
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

/// A stream that counts the bytes read from and written to it.
struct Counted {
    inner: TcpStream,
    counters: Arc<Counters>,
    metrics: Arc<crate::metrics::Metrics>,
    /// The connection's last-activity clock: a forward moving data is not idle.
    activity: Arc<std::sync::atomic::AtomicI64>,
}

impl AsyncRead for Counted {
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

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counters
                .to_target
                .fetch_add(*n as u64, Ordering::Relaxed);
            self.metrics.forwarded_to_target(*n as u64);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
