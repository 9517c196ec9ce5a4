//! `kube.CLUSTER[.PROJECT]`: the gateway's Kubernetes front door on one
//! channel. It terminates TLS with a certificate from the gateway's CA,
//! serves HTTP/1.1 and HTTP/2 with hyper, and relays each request to the
//! cluster's API server as the user (the Kubernetes impersonation API),
//! with the cluster's own credential. Access is decided afresh for every
//! request; a revocation cuts the channel, its watches and its upgraded
//! streams (exec, attach, port-forward) through the channel's token.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use russh::Channel;
use russh::server::Msg;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use super::ConnCtx;
use super::forward::{Dial, dial, resolve_target};
use super::sessions::Counters;
use crate::audit::{Event, Outcome};
use crate::kube::request::{Identity, RequestInfo, rewrite_request, rewrite_response};
use crate::policy::Action;
use crate::store::{ClusterCredential, StoredCredential};
use crate::target::{Resolved, Target};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Reply = Response<BoxBody<Bytes, BoxError>>;

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
/// How long a client may take to send a request's head.
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
    let end = tokio::select! {
        r = &mut serving => match r {
            Ok(()) => "closed".to_string(),
            Err(e) => format!("ended: {e}"),
        },
        _ = cancel.cancelled() => {
            // Cut watches send their last word (why) as they end; give
            // that a moment to leave, never more.
            let _ = tokio::time::timeout(LAST_WORD, &mut serving).await;
            "ended: access revoked or session closed".to_string()
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
}

/// What an upstream client was made from.
#[derive(Clone, PartialEq, Eq)]
struct UpstreamKey {
    api: String,
    kube_ca: String,
    credential_set_at: i64,
}

/// What a request may do, decided now.
struct Grant {
    identity: Identity,
    resolved: Resolved,
    kube_ca: String,
    credential: StoredCredential,
}

/// A request refused before it reached the API server.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn forbidden(message: String) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            message,
        }
    }

    fn unavailable(message: String) -> Refusal {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
        }
    }
}

impl Door {
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Reply {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.conn.touch();
        let started = Instant::now();
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let info = RequestInfo::parse(req.method(), &path, query.as_deref());
        let mut shown = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        if shown.len() > AUDIT_PATH {
            let mut cut = AUDIT_PATH;
            while !shown.is_char_boundary(cut) {
                cut -= 1;
            }
            shown.truncate(cut);
            shown.push('…');
        }
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
        let grant = match self.grant().await {
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
                    return self.unavailable(&info, &args, &why).await;
                }
            },
            _ = self.cancel.cancelled() => {
                return answer(&info, StatusCode::FORBIDDEN, "gatehouse: access revoked");
            }
        };
        let mut resp = match replied {
            Ok(r) => r,
            Err(e) => {
                let why = format!(
                    "gatehouse cannot reach the API server of cluster {} at {}: {}",
                    self.cluster,
                    grant.resolved.connect,
                    error_chain(&e)
                );
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

    /// Decides afresh whether this session may still use the cluster's API,
    /// as whom, and with what: the key and account as they are now, the
    /// membership and its role through the policy table, the cluster's
    /// address, CA and credential.
    async fn grant(&self) -> Result<Grant, Refusal> {
        let conn = &self.conn;
        let store = &conn.shared.store;
        let unavailable = |e: crate::store::StoreError| {
            Refusal::unavailable(format!("gatehouse cannot check access ({e})"))
        };
        let account = store
            .account_for_login_key(&conn.account.login, &conn.fingerprint)
            .await
            .map_err(unavailable)?;
        let account = match account {
            Some(a) if a.id == conn.account.id && a.disabled == 0 => a,
            Some(a) if a.disabled != 0 => {
                return Err(Refusal::forbidden(
                    "gatehouse: access revoked: the account was disabled".into(),
                ));
            }
            _ => {
                return Err(Refusal::forbidden(
                    "gatehouse: access revoked: the key this session used was removed".into(),
                ));
            }
        };
        let target = Target::Kube {
            cluster: self.cluster.clone(),
            project: Some(self.project.clone()),
        };
        let resolved = resolve_target(conn, &target)
            .await
            .map_err(|why| Refusal::forbidden(format!("gatehouse: access revoked: {why}")))?;
        let membership = store
            .membership(account.id, &self.project)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                Refusal::forbidden(format!(
                    "gatehouse: access revoked: not a member of project {}",
                    self.project
                ))
            })?;
        if !crate::policy::authorize(Some(membership.role), Action::UseKubernetes).allowed() {
            return Err(Refusal::forbidden(format!(
                "gatehouse: not allowed in project {}",
                self.project
            )));
        }
        let name = crate::model::Name::parse("cluster", &self.cluster)
            .map_err(|e| Refusal::forbidden(e.to_string()))?;
        let cluster = store
            .cluster(membership.project_id, &name)
            .await
            .map_err(|e| Refusal::forbidden(format!("gatehouse: {e}")))?;
        let here = format!("-p {}", self.project);
        // The credential goes only to an address an admin named: the default
        // (the first node's host, port 6443) is a port anyone with a shell
        // on that node could listen on.
        if cluster.kube_api.is_none() {
            return Err(Refusal::unavailable(format!(
                "gatehouse: cluster {} has no kube_api set, and the gateway sends the cluster's credential only to an API server address a project admin set: `cluster config {} kube_api=HOST:PORT {here}`",
                self.cluster, self.cluster
            )));
        }
        let kube_ca = cluster.kube_ca.ok_or_else(|| {
            Refusal::unavailable(format!(
                "gatehouse: cluster {} has no kube_ca, so the API server cannot be verified: a project admin sets it with `cluster config {} kube_ca=$(base64 -w0 ca.crt) {here}`",
                self.cluster, self.cluster
            ))
        })?;
        let credential = store
            .cluster_credential(&self.project, &self.cluster)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                Refusal::unavailable(format!(
                    "gatehouse: cluster {} has no credential for its API server: a project admin sets it with `cluster credential set {} {here}` (a token or a PEM certificate and key on stdin)",
                    self.cluster, self.cluster
                ))
            })?;
        Ok(Grant {
            identity: Identity::new(
                &account.email,
                &self.project,
                membership.role,
                &conn.session_id,
            ),
            resolved,
            kube_ca,
            credential,
        })
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
        let roots = kube_ca_certs(&grant.kube_ca).map_err(|why| {
            format!(
                "gatehouse: the kube_ca of cluster {} {why}; set it again with `cluster config {} kube_ca=…`",
                self.cluster, self.cluster
            )
        })?;
        let client_auth = match &grant.credential.credential {
            ClusterCredential::Token(_) => None,
            ClusterCredential::Certificate { chain_pem, key_pem } => {
                let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        "gatehouse: the cluster's credential does not parse".to_string()
                    })?;
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
                    "gatehouse: the cluster's credential does not parse".to_string()
                })?;
                Some((chain, key))
            }
        };
        let tls = crate::kube::client_config(&roots, client_auth)
            .map_err(|why| format!("gatehouse: cluster {}: {why}", self.cluster))?;
        let server_name =
            ServerName::try_from(grant.resolved.connect.host.clone()).map_err(|_| {
                format!(
                    "gatehouse: kube_api host {} is not a valid TLS name",
                    grant.resolved.connect.host
                )
            })?;
        let connector = Connector {
            conn: self.conn.clone(),
            resolved: Arc::new(grant.resolved.clone()),
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            server_name,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
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
        if let Err(e) = self.conn.shared.store.audit(&event).await {
            tracing::error!(error = %e, "cannot write audit event");
        }
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

/// The certificates of a cluster's `kube_ca` (base64 of PEM).
fn kube_ca_certs(kube_ca: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(kube_ca)
        .map_err(|_| "is not base64".to_string())?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "is not PEM".to_string())?;
    if certs.is_empty() {
        return Err("holds no certificate".into());
    }
    Ok(certs)
}

/// An error and its causes, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(cause) = next {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        next = cause.source();
    }
    parts.join(": ")
}

/// The gateway's own answer to a request it does not pass on.
///
/// For a resource request, a Kubernetes `Status` (JSON), which kubectl
/// prints as `Error from server (Reason): message`. For discovery
/// (`/api`, `/apis`, `/version`, …), whose errors client-go reads only as
/// text and replaces for a 503 with a fixed sentence, plain text, and 502
/// instead of 503 so the message (and the command that fixes it) reaches
/// the user.
fn answer(info: &RequestInfo, code: StatusCode, message: &str) -> Reply {
    if info.resource.is_some() {
        return status(code, message);
    }
    let code = if code == StatusCode::SERVICE_UNAVAILABLE {
        StatusCode::BAD_GATEWAY
    } else {
        code
    };
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A Kubernetes `Status` object.
fn status_object(code: StatusCode, message: &str) -> serde_json::Value {
    let reason = match code {
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        _ => "InternalError",
    };
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

/// A Kubernetes `Status` answer.
fn status(code: StatusCode, message: &str) -> Reply {
    let body = status_object(code, message);
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn empty() -> BoxBody<Bytes, BoxError> {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// A response body from the API server that ends in an error when access
/// is revoked: a watch or `logs -f` is cut, not left open.
struct Cut {
    inner: Incoming,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Sent once when cut, then the stream ends.
    last_word: Option<Bytes>,
    said: bool,
    /// The account's place among its requests in flight, held while the
    /// body streams.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Body for Cut {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(match this.last_word.take() {
                Some(word) => {
                    this.said = true;
                    Some(Ok(Frame::data(word)))
                }
                // A watch ends cleanly after its ERROR event, as the API
                // server ends one; anything else is cut short.
                None if this.said => None,
                None => Some(Err("access revoked".into())),
            });
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Connects to the API server: [`dial`] (held to the operator's rules on
/// every connect), then TLS verified with the cluster's `kube_ca`.
#[derive(Clone)]
struct Connector {
    conn: Arc<ConnCtx>,
    resolved: Arc<Resolved>,
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl tower_service::Service<hyper::Uri> for Connector {
    type Response = Upstream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Upstream, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let (tcp, _) = dial(&me.conn, &me.resolved).await.map_err(|e| match e {
                Dial::Refused(why) => std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("refused: {why}"),
                ),
                Dial::Failed(why) => std::io::Error::other(why),
            })?;
            let _ = tcp.set_nodelay(true);
            let timeout = me.conn.shared.config.limits.connect_timeout;
            let handshake = me.tls.connect(me.server_name.clone(), tcp);
            let tls = tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no TLS handshake within {} s", timeout.as_secs()),
                    )
                })??;
            Ok(Upstream(TokioIo::new(tls)))
        })
    }
}

/// A TLS connection to an API server, as hyper's client pool holds it.
struct Upstream(TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>);

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
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
