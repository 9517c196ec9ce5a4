//! The Kubernetes front door's domain: the gateway's CA, the cluster
//! credential, what a request is and which headers reach the API server.
//! The serving itself (TLS and HTTP on an SSH channel) is
//! `gateway::kube_door`, which asks the same store and policy table as
//! every other channel, at every request.

pub mod ca;
pub mod credential;
pub mod request;

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use ca::Authority;

/// A TLS client configuration towards an API server: `roots` are the
/// cluster's `kube_ca`, `client` its certificate credential if it is one.
/// ALPN offers only `http/1.1`, where upgrades (exec, port-forward) work.
///
/// Errors: a client key that does not fit its certificate, as one line.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, String> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone())
            .map_err(|e| format!("kube_ca is not a usable CA certificate ({e})"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(ca::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(Arc::new(store));
    let mut config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("the client certificate and key do not fit ({e})"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
