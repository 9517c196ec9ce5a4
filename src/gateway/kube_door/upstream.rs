//! The front door's side towards the API server: a pooled hyper client
//! whose connections are dialled under the operator's rules and verified
//! with the cluster's `kube_ca`, authenticated with its credential.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::super::ConnCtx;
use super::super::forward::{Dial, dial};
use crate::store::ClusterCredential;
use crate::target::Resolved;

/// A client towards `resolved`'s API server of `cluster`, trusting
/// `kube_ca` (base64 of PEM) and presenting `credential` when it is a
/// certificate. Errors are one line for the user, naming the fix.
pub(super) fn new_client(
    conn: &Arc<ConnCtx>,
    resolved: &Resolved,
    kube_ca: &str,
    credential: &ClusterCredential,
    cluster: &str,
) -> Result<Client<Connector, Incoming>, String> {
    let roots = kube_ca_certs(kube_ca).map_err(|why| {
        format!(
            "gatehouse: the kube_ca of cluster {} {why}; set it again with `cluster config {} kube_ca=…`",
            cluster, cluster
        )
    })?;
    let client_auth = match credential {
        ClusterCredential::Token(_) => None,
        ClusterCredential::Certificate { chain_pem, key_pem } => {
            let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "gatehouse: the cluster's credential does not parse".to_string())?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|_| "gatehouse: the cluster's credential does not parse".to_string())?;
            Some((chain, key))
        }
    };
    let tls = crate::kube::client_config(&roots, client_auth)
        .map_err(|why| format!("gatehouse: cluster {}: {why}", cluster))?;
    let server_name = ServerName::try_from(resolved.connect.host.clone()).map_err(|_| {
        format!(
            "gatehouse: kube_api host {} is not a valid TLS name",
            resolved.connect.host
        )
    })?;
    let connector = Connector {
        conn: conn.clone(),
        resolved: Arc::new(resolved.clone()),
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        server_name,
    };
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector);
    Ok(client)
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
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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

/// Connects to the API server: [`dial`] (held to the operator's rules on
/// every connect), then TLS verified with the cluster's `kube_ca`.
#[derive(Clone)]
pub(super) struct Connector {
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
pub(super) struct Upstream(TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>);

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
