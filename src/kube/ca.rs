//! The gateway's own certificate authority for `kube.CLUSTER.PROJECT`: kubectl
//! trusts it through the kubeconfig that `kubeconfig CLUSTER` prints, and
//! the gateway issues each front door's server certificate with it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How long an issued server certificate is used before a fresh one is
/// issued; they are valid for twice as long.
const LEAF_REUSE: Duration = Duration::from_secs(7 * 24 * 3600);
const LEAF_DAYS: i64 = 14;
const CA_YEARS: i64 = 10;

/// The CA, and the server configurations issued so far (by name).
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issued: Mutex<HashMap<String, (Instant, Arc<rustls::ServerConfig>)>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority")
    }
}

/// The crypto every TLS configuration of the gateway uses (aws-lc-rs, as
/// russh does), chosen explicitly so no process-wide default is needed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Authority {
    /// Loads the CA from `key_path` and `cert_path`, creating the key (mode
    /// 0600) on first start and the certificate whenever it is missing. A
    /// key that group or others can read is refused, as for the host key.
    pub fn load_or_create(key_path: &Path, cert_path: &Path) -> Result<Authority> {
        const WHAT: &str = "kube CA key";
        let key = match crate::secret_file::read_private(key_path, WHAT)? {
            Some(pem) => KeyPair::from_pem(&pem)
                .with_context(|| format!("cannot load kube CA key {}", key_path.display()))?,
            None => {
                let key = KeyPair::generate().context("cannot generate the kube CA key")?;
                crate::secret_file::create_private(key_path, WHAT, key.serialize_pem().as_bytes())?;
                // A certificate left from an earlier key would not match.
                let _ = std::fs::remove_file(cert_path);
                tracing::info!(path = %key_path.display(), "created the kube CA key");
                key
            }
        };
        let cert_pem = match std::fs::read_to_string(cert_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let now = time::OffsetDateTime::now_utc();
                let mut params = CertificateParams::default();
                params.distinguished_name = rcgen::DistinguishedName::new();
                params
                    .distinguished_name
                    .push(DnType::CommonName, "gatehouse kube CA");
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, "gatehouse");
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                params.not_before = now - time::Duration::hours(1);
                params.not_after = now + time::Duration::days(365 * CA_YEARS);
                let cert = params
                    .self_signed(&key)
                    .context("cannot make the kube CA certificate")?;
                make_parent(cert_path)?;
                let pem = cert.pem();
                let tmp = cert_path.with_extension("tmp");
                std::fs::write(&tmp, &pem)
                    .and_then(|()| std::fs::rename(&tmp, cert_path))
                    .with_context(|| {
                        format!("cannot write kube CA certificate {}", cert_path.display())
                    })?;
                pem
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read kube CA certificate {}", cert_path.display())
                });
            }
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .with_context(|| format!("kube CA certificate {} is not PEM", cert_path.display()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).with_context(|| {
            format!("kube CA certificate {} does not parse", cert_path.display())
        })?;
        Ok(Authority {
            issuer,
            cert_pem,
            cert_der,
            issued: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM: what kubectl is told to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS server configuration presenting a certificate for `names`
    /// (DNS names, the first one the key of the cache), with ALPN `h2` and
    /// `http/1.1`. Issued once and reused for a week.
    pub fn server_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>> {
        let key = names.join(",");
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, config)) = issued.get(&key)
            && at.elapsed() < LEAF_REUSE
        {
            return Ok(config.clone());
        }
        let config = Arc::new(self.issue(names)?);
        issued.insert(key, (Instant::now(), config.clone()));
        Ok(config)
    }

    fn issue(&self, names: &[String]) -> Result<rustls::ServerConfig> {
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::new(names.to_vec())
            .context("cannot make a certificate for these names")?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(LEAF_DAYS);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("cannot generate a server key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("cannot issue a server certificate")?;
        let chain = vec![cert.der().clone(), self.cert_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("cannot use the issued certificate")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn make_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (k, c) = (dir.path().join("ca.key"), dir.path().join("ca.crt"));
        let first = Authority::load_or_create(&k, &c).unwrap();
        let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Authority::load_or_create(&k, &c).unwrap();
        assert_eq!(first.cert_pem(), again.cert_pem());
        assert!(again.server_config(&["kube.c1.train".into()]).is_ok());
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Authority::load_or_create(&k, &c).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
