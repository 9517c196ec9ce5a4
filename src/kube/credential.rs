//! Reading a cluster's credential from `cluster credential set` (on stdin):
//! a bearer token, or a PEM client certificate chain and its private key.
//! Errors never quote the input: it is a secret.

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::store::ClusterCredential;

/// The longest token accepted, in bytes (ServiceAccount tokens are about 1 KiB).
pub const MAX_TOKEN: usize = 16 * 1024;
/// The most PEM accepted, in bytes.
pub const MAX_PEM: usize = 64 * 1024;

const HOW: &str = "pipe a bearer token, or a PEM client certificate and its private key, to `ssh GATEWAY cluster credential set CLUSTER`";

/// Parses what came on stdin. Errors: no input, a token with spaces or
/// control characters or over [`MAX_TOKEN`], PEM without exactly one
/// private key and at least one certificate, or a key that does not match
/// the certificate.
pub fn parse(input: &str) -> Result<ClusterCredential, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err(format!("no credential on stdin: {HOW}"));
    }
    if text.contains("-----BEGIN") {
        return parse_pem(text);
    }
    if text.len() > MAX_TOKEN {
        return Err(format!(
            "invalid credential: a token is at most {MAX_TOKEN} bytes; {HOW}"
        ));
    }
    if !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "invalid credential: a token is one line of printable ASCII without spaces; {HOW}"
        ));
    }
    Ok(ClusterCredential::Token(text.to_string()))
}

fn parse_pem(text: &str) -> Result<ClusterCredential, String> {
    if text.len() > MAX_PEM {
        return Err(format!(
            "invalid credential: PEM input is at most {MAX_PEM} bytes"
        ));
    }
    if text.contains("ENCRYPTED") {
        return Err(
            "invalid credential: the private key is encrypted; give it decrypted (openssl pkey -in key.pem -out plain.pem)".into(),
        );
    }
    // Stray text (a token pasted before the PEM, say) is a mistake to
    // point out, not something to drop quietly.
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("-----BEGIN ") {
            inside = true;
        } else if line.starts_with("-----END ") {
            inside = false;
        } else if !inside && !line.is_empty() {
            return Err(
                "invalid credential: there is text outside the PEM blocks; give only the certificate(s) and the key".into(),
            );
        }
    }
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()) {
        let (kind, der) =
            item.map_err(|_| "invalid credential: the PEM input does not parse".to_string())?;
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                keys.push((kind, der))
            }
            _ => {
                return Err(
                    "invalid credential: expected only CERTIFICATE and PRIVATE KEY blocks".into(),
                );
            }
        }
    }
    let (kind, key_der) = match (certs.is_empty(), keys.len()) {
        (false, 1) => keys.remove(0),
        _ => {
            return Err(format!(
                "invalid credential: expected a client certificate (chain) and exactly one private key; {HOW}"
            ));
        }
    };
    let key = PrivateKeyDer::try_from(key_der.clone())
        .map_err(|_| "invalid credential: the private key does not parse".to_string())?;
    // rustls checks that the key can sign and matches the certificate.
    super::client_config(&[], Some((certs.clone(), key))).map_err(|e| {
        if e.contains("KeyMismatch") {
            "invalid credential: the private key does not belong to the certificate (the first CERTIFICATE block is the client's own)".to_string()
        } else if e.contains("UnsupportedCertVersion") {
            "invalid credential: the certificate is X.509 version 1, which TLS refuses; issue a version 3 certificate (openssl x509 -req … -extfile with extendedKeyUsage=clientAuth)".to_string()
        } else {
            format!("invalid credential: {e}")
        }
    })?;
    expiry(&certs[0], time::OffsetDateTime::now_utc())?;
    chained(&certs)?;
    let chain_pem = certs
        .iter()
        .map(|c| pem_block("CERTIFICATE", c.as_ref()))
        .collect::<Vec<_>>()
        .join("");
    let label = match kind {
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    Ok(ClusterCredential::Certificate {
        chain_pem,
        key_pem: pem_block(label, &key_der),
    })
}

/// Refuses a client certificate that has expired at `now`: the API server
/// would refuse every request with 401, which kubectl reports without the
/// reason. One that is not valid yet is refused too, unless it starts
/// within the clock skew a fresh certificate may have (5 minutes).
fn expiry(leaf: &CertificateDer<'_>, now: time::OffsetDateTime) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|_| "invalid credential: the certificate does not parse".to_string())?;
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let day = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map(|t| format!("{} {:02}:{:02}", t.date(), t.hour(), t.minute()))
            .unwrap_or_else(|_| t.to_string())
    };
    let now = now.unix_timestamp();
    if not_after < now {
        return Err(format!(
            "invalid credential: the client certificate expired on {} (UTC); the API server would refuse it",
            day(not_after)
        ));
    }
    if not_before > now + 5 * 60 {
        return Err(format!(
            "invalid credential: the client certificate is not valid until {} (UTC)",
            day(not_before)
        ));
    }
    Ok(())
}

/// Refuses certificates after the first that are not its chain, each the
/// issuer of the one before (by name and by signature): an unrelated one would be sent in every TLS
/// handshake, and is more likely a paste gone wrong.
fn chained(certs: &[CertificateDer<'_>]) -> Result<(), String> {
    let parsed = certs
        .iter()
        .map(|c| x509_parser::parse_x509_certificate(c).map(|(_, c)| c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "invalid credential: a certificate does not parse".to_string())?;
    for (n, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer().as_raw() != pair[1].subject().as_raw()
            || pair[0]
                .verify_signature(Some(pair[1].public_key()))
                .is_err()
        {
            return Err(format!(
                "invalid credential: certificate {} did not issue certificate {}; give the client certificate first, then its issuers in order",
                n + 2,
                n + 1
            ));
        }
    }
    Ok(())
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_pem() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gatehouse".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_token_is_one_printable_word() {
        assert_eq!(
            parse("  abc.DEF-123_x\n").unwrap(),
            ClusterCredential::Token("abc.DEF-123_x".into())
        );
        for bad in ["", " \n", "two words", "tab\there", "é", "a\u{1b}[31m"] {
            let e = parse(bad).unwrap_err();
            if !bad.trim().is_empty() {
                assert!(!e.contains(bad.trim()), "{e}");
            }
        }
        assert!(parse(&"x".repeat(MAX_TOKEN + 1)).is_err());
    }

    #[test]
    fn a_certificate_needs_its_own_key() {
        let (cert, key) = client_pem();
        let c = parse(&format!("{cert}{key}")).unwrap();
        assert_eq!(c.kind(), "certificate");
        // Key first is fine too.
        assert!(parse(&format!("{key}\n{cert}")).is_ok());
        // No key, two keys, another certificate's key, garbage.
        assert!(parse(&cert).is_err());
        assert!(parse(&format!("{cert}{key}{key}")).is_err());
        let (_, other_key) = client_pem();
        let e = parse(&format!("{cert}{other_key}")).unwrap_err();
        assert!(e.starts_with("invalid credential"), "{e}");
        assert!(parse("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----").is_err());
        let e = parse(&format!("sometoken\n{cert}{key}")).unwrap_err();
        assert!(e.contains("outside the PEM blocks"), "{e}");
        // The secret is never quoted back.
        assert!(!e.contains("PRIVATE KEY-----"), "{e}");
    }

    #[test]
    fn the_chain_goes_from_the_client_to_its_issuers() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test client CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        // The issuer's name on another key.
        let impostor = ca_params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["gatehouse".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let key_pem = key.serialize_pem();
        assert!(parse(&format!("{}{}{key_pem}", leaf.pem(), ca.pem())).is_ok());
        let (unrelated, _) = client_pem();
        let e = parse(&format!("{}{unrelated}{key_pem}", leaf.pem())).unwrap_err();
        assert!(
            e.contains("certificate 2 did not issue certificate 1"),
            "{e}"
        );
        // The issuer's name on another key is not the issuer.
        let e = parse(&format!("{}{}{key_pem}", leaf.pem(), impostor.pem())).unwrap_err();
        assert!(
            e.contains("certificate 2 did not issue certificate 1"),
            "{e}"
        );
        // Issuer first: the key is not the first certificate's.
        let e = parse(&format!("{}{}{key_pem}", ca.pem(), leaf.pem())).unwrap_err();
        assert!(e.contains("does not belong to the certificate"), "{e}");
    }

    #[test]
    fn an_expired_or_future_certificate_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["gatehouse".to_string()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let with = |params: &rcgen::CertificateParams| {
            let cert = params.clone().self_signed(&key).unwrap();
            parse(&format!("{}{}", cert.pem(), key.serialize_pem()))
        };
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
        let e = with(&params).unwrap_err();
        assert!(e.contains("expired on") && e.contains("(UTC)"), "{e}");
        params.not_after = now + time::Duration::days(1);
        params.not_before = now + time::Duration::days(1);
        let e = with(&params).unwrap_err();
        assert!(e.contains("not valid until"), "{e}");
        // A fresh certificate from a clock a little ahead is fine.
        params.not_before = now + time::Duration::minutes(1);
        assert!(with(&params).is_ok());
    }
}
