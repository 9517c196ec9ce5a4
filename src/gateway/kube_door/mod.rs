//! `kube.CLUSTER[.PROJECT]`: the gateway's Kubernetes front door on one
//! channel. It terminates TLS with a certificate from the gateway's CA,
//! serves HTTP/1.1 and HTTP/2 with hyper, and relays each request to the
//! cluster's API server as the user (the Kubernetes impersonation API),
//! with the cluster's own credential. Access is decided afresh for every
//! request; a revocation cuts the channel, its watches and its upgraded
//! streams (exec, attach, port-forward) through the channel's token.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use russh::Channel;
use russh::server::Msg;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ConnCtx;
use super::sessions::Counters;
use crate::audit::{Event, Outcome};
use crate::kube::request::{RequestInfo, rewrite_request, rewrite_response};
use crate::store::ClusterCredential;
use crate::target::Resolved;

mod access;
mod replies;
mod upstream;

use access::Grant;

use replies::{Cut, Reply, answer, empty, status, status_object};
use upstream::{Connector, error_chain};

/// The longest wait for the client's TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(30);
/// Concurrent HTTP/2 requests on one front door channel.
const MAX_STREAMS: u32 = 32;
/// Requests of one account in flight at once on this gateway, watches and
/// upgraded streams included: each holds a connection to the API server.
const MAX_IN_FLIGHT: usize = 256;
/// How long the API server may take to answer a request's head.
const RESPONSE_HEAD: Duration = Duration::from_secs(120);
/// How long a cut connection may take to say why before it is dropped.
const LAST_WORD: Duration = Duration::from_millis(200);
/// How often a door checks whether it is idle.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// How long a door that has served requests stays open with none in
/// progress (kubectl keeps idle connections for 90 s).
const DOOR_IDLE: Duration = Duration::from_secs(300);
/// How long a client may take to send a request's head, and a new door its
/// first request.
const REQUEST_HEAD: Duration = Duration::from_secs(30);
/// How much of a request's path and query the audit log keeps, in bytes.
const AUDIT_PATH: usize = 512;

/// Serves the front door on `channel` until the client closes it or
/// `cancel` fires (revocation, session end). Returns how it ended, with the
/// number of requests, for the forward's audit event.
pub(super) async fn serve(
    conn: &Arc<ConnCtx>,
    channel: Channel<Msg>,
    resolved: &Resolved,
    cancel: &CancellationToken,
    counters: Arc<Counters>,
) -> String {
    let front = format!("kube.{}.{}", resolved.cluster, resolved.project);
    let names = vec![front.clone(), format!("kube.{}", resolved.cluster)];
    let tls = match conn.shared.kube.server_config(&names) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot issue the front door's certificate");
            return format!("ended: cannot issue a certificate for {front}");
        }
    };
    let stream = Metered {
        inner: channel.into_stream(),
        counters: counters.clone(),
        conn: conn.clone(),
    };
    let accepting = tokio::time::timeout(
        HANDSHAKE,
        tokio_rustls::TlsAcceptor::from(tls).accept(stream),
    );
    let stream = tokio::select! {
        r = accepting => match r {
            Ok(Ok(s)) => s,
            // A port check (`nc -z`, a tunnel's readiness probe) sends nothing.
            Ok(Err(_)) if counters.to_target.load(Ordering::Relaxed) == 0 => {
                return "closed before TLS".to_string();
            }
            Ok(Err(e)) => return format!("ended: TLS handshake failed ({e}); is the client using the kubeconfig from `kubeconfig CLUSTER`?"),
            Err(_) => return "ended: no TLS handshake within 30 s".to_string(),
        },
        _ = cancel.cancelled() => return "ended: access revoked or session closed".to_string(),
    };
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => "HTTP/2",
        _ => "HTTP/1.1",
    };
    let door = Arc::new(Door {
        conn: conn.clone(),
        project: resolved.project.clone(),
        cluster: resolved.cluster.clone(),
        cancel: cancel.clone(),
        streams: TaskTracker::new(),
        upstream: Mutex::new(None),
        requests: AtomicU64::new(0),
        busy: AtomicU64::new(0),
        idle_since: Mutex::new(Instant::now()),
    });
    let service = {
        let door = door.clone();
        hyper::service::service_fn(move |req| {
            let door = door.clone();
            async move { Ok::<_, Infallible>(door.handle(req).await) }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Each request costs a few database reads before it is passed on: one
    // connection's parallel requests are bounded like kube-apiserver's own.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(REQUEST_HEAD);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS);
    let serving = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(serving);
    let mut idle_check = tokio::time::interval(IDLE_CHECK);
    let end = loop {
        tokio::select! {
            r = &mut serving => break match r {
                Ok(()) => "closed".to_string(),
                Err(e) => format!("ended: {e}"),
            },
            _ = cancel.cancelled() => {
                // Cut watches send their last word (why) as they end; give
                // that a moment to leave, never more.
                let _ = tokio::time::timeout(LAST_WORD, &mut serving).await;
                break "ended: access revoked or session closed".to_string();
            }
            _ = idle_check.tick() => {
                if door.idle_for() > door.idle_limit() {
                    // GOAWAY on HTTP/2, a close between requests on
                    // HTTP/1.1: clients reconnect when they need to.
                    serving.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(LAST_WORD, &mut serving).await;
                    break "closed: idle".to_string();
                }
            }
        }
    };
    // Upgraded streams (exec, port-forward) outlive the HTTP connection
    // that started them; the channel stays registered until they end.
    door.streams.close();
    tokio::select! {
        _ = door.streams.wait() => {}
        _ = cancel.cancelled() => {}
    }
    format!(
        "{end}; {} request(s) over {protocol}",
        door.requests.load(Ordering::Relaxed)
    )
}

/// One front door: a channel to `kube.CLUSTER.PROJECT` and what its requests
/// share.
struct Door {
    conn: Arc<ConnCtx>,
    project: String,
    cluster: String,
    cancel: CancellationToken,
    /// Upgraded streams still relaying.
    streams: TaskTracker,
    /// The client towards the API server, kept while what it was made from
    /// is unchanged (pooled connections).
    upstream: Mutex<Option<(UpstreamKey, Client<Connector, Incoming>)>>,
    requests: AtomicU64,
    /// Requests in progress: from their head until their response (or
    /// upgraded stream) ends.
    busy: AtomicU64,
    /// Since when no request has been in progress.
    idle_since: Mutex<Instant>,
}

/// One request in progress on a door, until dropped.
struct Busy(Arc<Door>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

/// A request the API server has, not yet audited. Dropped before its
/// answer is (the client went away, or access was revoked meanwhile), it
/// is audited as cut: the API server may have acted on it, and the audit
/// log must say so.
struct Unanswered {
    door: Arc<Door>,
    /// The request as audited; `None` once its outcome is audited elsewhere.
    args: Option<String>,
    why: &'static str,
}

impl Unanswered {
    /// The request's outcome is audited elsewhere.
    fn disarm(&mut self) {
        self.args = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        let Some(args) = self.args.take() else {
            return;
        };
        let (door, why) = (self.door.clone(), self.why);
        // Drop cannot wait for the database; the runtime is there while
        // hyper drops a request's future.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tracing::warn!(account = %door.conn.account.login, cluster = %door.cluster, project = %door.project, request = %args, "kube request cut: {why}");
                door.audit(
                    "kube",
                    &args,
                    Outcome::Failed,
                    &format!("cut: {why}; the API server may have received it and acted on it"),
                )
                .await;
            });
        }
    }
}

/// Whether the request failed on the client's side: its body was not
/// valid HTTP (a bad chunk size) or ended early.
fn body_error(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        // hyper's "error from user's Body stream": the body it was given
        // to send (the client's) failed, not the API server.
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// What an upstream client was made from.
#[derive(Clone, PartialEq, Eq)]
struct UpstreamKey {
    api: String,
    kube_ca: String,
    credential_set_at: i64,
}

impl Door {
    /// How long no request has been in progress (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.busy.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.idle_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// A door that never got a request closes sooner than one in use.
    fn idle_limit(&self) -> Duration {
        if self.requests.load(Ordering::Relaxed) == 0 {
            REQUEST_HEAD
        } else {
            DOOR_IDLE
        }
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Reply {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::AcqRel);
        let busy = Busy(self.clone());
        self.conn.touch();
        let started = Instant::now();
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let info = RequestInfo::parse(req.method(), &path, query.as_deref());
        let shown = crate::audit::clip_to(
            &match &query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            },
            AUDIT_PATH,
        );
        let args = format!("{} {shown}", info.verb);
        // CONNECT would make the API server's connection a tunnel, TRACE
        // would echo the headers the gateway added; Kubernetes uses neither.
        if matches!(*req.method(), hyper::Method::CONNECT | hyper::Method::TRACE) {
            self.audit(
                "kube",
                &args,
                Outcome::Denied,
                "status 405: method not allowed",
            )
            .await;
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "gatehouse: CONNECT and TRACE are not passed to the API server",
            );
        }
        let grant = match access::grant(&self.conn, &self.project, &self.cluster).await {
            Ok(g) => g,
            Err(r) => {
                let outcome = if r.status == StatusCode::FORBIDDEN {
                    Outcome::Denied
                } else {
                    Outcome::Failed
                };
                if outcome == Outcome::Denied {
                    self.conn.shared.metrics.denial("kube");
                }
                tracing::warn!(account = %self.conn.account.login, cluster = %self.cluster, project = %self.project, reason = %r.message, "kube request refused");
                self.audit(
                    "kube",
                    &args,
                    outcome,
                    &format!("status {}: {}", r.status.as_u16(), r.message),
                )
                .await;
                return answer(&info, r.status, &r.message);
            }
        };
        // Only the upgrades Kubernetes speaks (exec, attach, port-forward);
        // any other Upgrade header is dropped and the request goes as plain.
        let upgrade = req.version() <= hyper::Version::HTTP_11
            && req
                .headers()
                .get(hyper::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(is_kube_upgrade);
        let Some(permit) = in_flight(self.conn.account.id) else {
            let why = format!(
                "gatehouse: at most {MAX_IN_FLIGHT} Kubernetes requests of one account at once (watches and streams count until they end)"
            );
            self.audit(
                "kube",
                &args,
                Outcome::Denied,
                &format!("status 429: {why}"),
            )
            .await;
            return answer(&info, StatusCode::TOO_MANY_REQUESTS, &why);
        };
        let from_client = upgrade.then(|| hyper::upgrade::on(&mut req));
        let client = match self.client(&grant) {
            Ok(c) => c,
            Err(why) => return self.unavailable(&info, &args, &why).await,
        };
        let (mut parts, body) = req.into_parts();
        let bearer = match &grant.credential.credential {
            ClusterCredential::Token(t) => Some(t.as_str()),
            ClusterCredential::Certificate { .. } => None,
        };
        rewrite_request(&mut parts.headers, &grant.identity, bearer, upgrade);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        parts.uri = match format!("https://{}{path_and_query}", grant.resolved.connect).parse() {
            Ok(u) => u,
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "gatehouse: the request path is not valid",
                );
            }
        };
        parts.version = hyper::Version::HTTP_11;
        let mut unanswered = Unanswered {
            door: self.clone(),
            args: Some(args.clone()),
            why: "the client went away before the API server answered",
        };
        let sent = client.request(Request::from_parts(parts, body));
        let replied = tokio::select! {
            r = tokio::time::timeout(RESPONSE_HEAD, sent) => match r {
                Ok(r) => r,
                Err(_) => {
                    let why = format!(
                        "gatehouse: the API server of cluster {} at {} did not answer within {} s",
                        self.cluster,
                        grant.resolved.connect,
                        RESPONSE_HEAD.as_secs()
                    );
                    unanswered.disarm();
                    return self.unavailable(&info, &args, &why).await;
                }
            },
            _ = self.cancel.cancelled() => {
                unanswered.why = "access revoked before the API server answered";
                return answer(&info, StatusCode::FORBIDDEN, "gatehouse: access revoked");
            }
        };
        unanswered.disarm();
        let mut resp = match replied {
            Ok(r) => r,
            Err(e) if body_error(&e) => {
                self.audit(
                    "kube",
                    &args,
                    Outcome::Failed,
                    "status 400: the request body was malformed or cut short",
                )
                .await;
                return answer(
                    &info,
                    StatusCode::BAD_REQUEST,
                    "gatehouse: the request body was malformed or cut short",
                );
            }
            Err(e) => {
                let chain = error_chain(&e);
                // An alert the API server sends after the handshake is about
                // the client certificate: its own certificate was checked
                // here, and a failure there says so without an alert.
                let certificate = matches!(
                    grant.credential.credential,
                    ClusterCredential::Certificate { .. }
                );
                let why = if certificate && chain.contains("received fatal alert") {
                    format!(
                        "the API server of cluster {} at {} refused the cluster's client certificate ({chain}): a project admin sets a valid one with `cluster credential set {}`",
                        self.cluster, grant.resolved.connect, self.cluster
                    )
                } else {
                    format!(
                        "gatehouse cannot reach the API server of cluster {} at {}: {chain}",
                        self.cluster, grant.resolved.connect
                    )
                };
                tracing::warn!(account = %self.conn.account.login, reason = %why, "kube request failed");
                return self.unavailable(&info, &args, &why).await;
            }
        };
        let code = resp.status();
        if code == StatusCode::SWITCHING_PROTOCOLS
            && let Some(from_client) = from_client
        {
            let to_api = hyper::upgrade::on(&mut resp);
            let door = self.clone();
            let what = info.pod_stream().unwrap_or("upgrade").to_string();
            let object = info.object();
            self.audit_on(
                &format!("kube {what}"),
                &object,
                &args,
                Outcome::Ok,
                "status 101; started",
            )
            .await;
            self.streams.spawn(async move {
                let _permit = permit;
                let _busy = busy;
                door.relay(from_client, to_api, &what, &object, &args, started)
                    .await
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, empty());
        }
        let outcome = match code.as_u16() {
            0..=399 => Outcome::Ok,
            401 | 403 => Outcome::Denied,
            _ => Outcome::Failed,
        };
        self.audit("kube", &args, outcome, &format!("status {}", code.as_u16()))
            .await;
        let (mut parts, body) = resp.into_parts();
        rewrite_response(&mut parts.headers);
        // A watch that is cut says why, as the API server's own watch
        // errors do, before the stream ends.
        let last_word = (info.verb == "watch" && code.is_success()).then(|| {
            let event = serde_json::json!({
                "type": "ERROR",
                "object": status_object(
                    StatusCode::FORBIDDEN,
                    "gatehouse: access revoked or the session ended",
                ),
            });
            Bytes::from(format!("{event}\n"))
        });
        let body = Cut {
            inner: body,
            cancelled: Box::pin(self.cancel.clone().cancelled_owned()),
            last_word,
            said: false,
            _permit: permit,
            _busy: busy,
        };
        Response::from_parts(parts, body.boxed())
    }

    /// Relays an upgraded stream (exec, attach, port-forward: WebSocket or
    /// SPDY) both ways until either side closes or access is revoked, then
    /// audits it with its duration.
    async fn relay(
        &self,
        from_client: hyper::upgrade::OnUpgrade,
        to_api: hyper::upgrade::OnUpgrade,
        what: &str,
        object: &str,
        args: &str,
        started: Instant,
    ) {
        let relaying = async {
            let (client, api) = tokio::try_join!(from_client, to_api)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let (mut client, mut api) = (TokioIo::new(client), TokioIo::new(api));
            tokio::io::copy_bidirectional(&mut client, &mut api).await
        };
        let end = tokio::select! {
            r = relaying => match r {
                Ok(_) => "closed".to_string(),
                // Clients often drop the connection after the stream's own close.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::UnexpectedEof) => "closed".to_string(),
                Err(e) => format!("ended: {e}"),
            },
            _ = self.cancel.cancelled() => "cut: access revoked or session closed".to_string(),
        };
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(account = %self.conn.account.login, cluster = %self.cluster, project = %self.project, pod = %object, seconds = secs, "kube {what} {end}");
        let event = format!("kube {what}");
        self.audit_on(
            &event,
            object,
            args,
            Outcome::Ok,
            &format!("status 101; {end} after {secs:.1} s"),
        )
        .await;
    }

    /// The client towards the API server for `grant`: the pooled one while
    /// the address, CA and credential are unchanged, else a new one.
    fn client(&self, grant: &Grant) -> Result<Client<Connector, Incoming>, String> {
        let key = UpstreamKey {
            api: grant.resolved.connect.to_string(),
            kube_ca: grant.kube_ca.clone(),
            credential_set_at: grant.credential.set_at,
        };
        let mut held = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, c)) = held.as_ref()
            && *k == key
        {
            return Ok(c.clone());
        }
        let client = upstream::new_client(
            &self.conn,
            &grant.resolved,
            &grant.kube_ca,
            &grant.credential.credential,
            &self.cluster,
        )?;
        *held = Some((key, client.clone()));
        Ok(client)
    }

    /// Answers a request that cannot be served now (503), saying why, and
    /// audits it as failed.
    async fn unavailable(&self, info: &RequestInfo, args: &str, why: &str) -> Reply {
        self.audit("kube", args, Outcome::Failed, &format!("status 503: {why}"))
            .await;
        answer(info, StatusCode::SERVICE_UNAVAILABLE, why)
    }

    async fn audit(&self, action: &str, args: &str, outcome: Outcome, detail: &str) {
        self.audit_on(action, "", args, outcome, detail).await
    }

    /// Records one request (or stream) as an audit event on `CLUSTER`, or
    /// `CLUSTER/NAMESPACE/NAME` with an object, and counts it; `args` starts
    /// with the verb.
    async fn audit_on(
        &self,
        action: &str,
        target: &str,
        args: &str,
        outcome: Outcome,
        detail: &str,
    ) {
        let event = Event {
            actor: self.conn.account.login.clone(),
            source: self.conn.source.clone(),
            project: Some(self.project.clone()),
            action: action.to_string(),
            target: format!("{}/{target}", self.cluster)
                .trim_end_matches('/')
                .to_string(),
            args: args.to_string(),
            outcome,
            detail: detail.to_string(),
        };
        let verb = args.split(' ').next().unwrap_or_default();
        self.conn
            .shared
            .metrics
            .kube_request(verb, outcome.as_str());
        // Written by a task of its own: hyper drops a request's future when
        // its client goes away, which must not drop the event half written.
        let conn = self.conn.clone();
        let written = tokio::spawn(async move {
            if let Err(e) = conn.shared.store.audit(&event).await {
                tracing::error!(error = %e, "cannot write audit event");
            }
        });
        let _ = written.await;
    }
}

/// A place among the account's requests in flight ([`MAX_IN_FLIGHT`]), or
/// `None` when they are all taken.
fn in_flight(account: i64) -> Option<tokio::sync::OwnedSemaphorePermit> {
    type PerAccount = Mutex<std::collections::HashMap<i64, Arc<tokio::sync::Semaphore>>>;
    static PER_ACCOUNT: std::sync::OnceLock<PerAccount> = std::sync::OnceLock::new();
    let semaphore = PER_ACCOUNT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(account)
        .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)))
        .clone();
    semaphore.try_acquire_owned().ok()
}

/// Whether an `Upgrade` header asks for a protocol the Kubernetes API
/// upgrades to: WebSocket (`v5.channel.k8s.io` and the port-forward
/// channels ride on it) or SPDY/3.1.
fn is_kube_upgrade(value: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .all(|p| p.eq_ignore_ascii_case("websocket") || p.eq_ignore_ascii_case("SPDY/3.1"))
}

/// The channel as a byte stream, counting what passes and keeping the
/// connection from looking idle while it moves data.
struct Metered<S> {
    inner: S,
    counters: Arc<Counters>,
    conn: Arc<ConnCtx>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.counters.to_target.fetch_add(n, Ordering::Relaxed);
            this.conn.shared.metrics.forwarded_to_target(n);
            this.conn.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.counters
                .from_target
                .fetch_add(n as u64, Ordering::Relaxed);
            this.conn.shared.metrics.forwarded_from_target(n as u64);
            this.conn.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kubernetes_upgrades_pass() {
        for ok in ["websocket", "WebSocket", "SPDY/3.1", "spdy/3.1"] {
            assert!(is_kube_upgrade(ok), "{ok}");
        }
        for no in ["h2c", "websocket, h2c", "TLS/1.2", "", "SPDY/3"] {
            assert!(!is_kube_upgrade(no), "{no}");
        }
    }

    #[test]
    fn discovery_errors_are_text_and_resource_errors_are_status() {
        let discovery = RequestInfo::parse(&hyper::Method::GET, "/api", None);
        let r = answer(
            &discovery,
            StatusCode::SERVICE_UNAVAILABLE,
            "gatehouse: why",
        );
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert!(
            r.headers()[hyper::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let pods = RequestInfo::parse(&hyper::Method::GET, "/api/v1/namespaces/a/pods", None);
        let r = answer(&pods, StatusCode::SERVICE_UNAVAILABLE, "gatehouse: why");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[hyper::header::CONTENT_TYPE], "application/json");
    }
}
