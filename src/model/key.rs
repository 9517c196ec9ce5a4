//! SSH public keys as users give them: one OpenSSH line, held to the key
//! policy of interface.md §1, and the SHA256 fingerprints that identify them.

use russh::keys::ssh_key::{self, HashAlg, PublicKey};

use super::{Invalid, invalid, is_format_char, printable, quoted};

/// An OpenSSH public key that passed the key policy of interface.md §1.
#[derive(Debug, Clone)]
pub struct SshPublicKey {
    key: PublicKey,
    fingerprint: String,
}

/// RSA keys below this are refused, as OpenSSH itself does since 8.x for new keys.
const MIN_RSA_BITS: u32 = 2048;

impl SshPublicKey {
    /// Parses exactly one OpenSSH public key line (blank lines and `#`
    /// comments around it are ignored).
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        if text.contains("PRIVATE KEY") {
            return Err(invalid(
                "that is a private key: never share it; give the public key (the .pub file) instead",
            ));
        }
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let line = match lines.as_slice() {
            [] => {
                return Err(invalid(
                    "no public key given: expected one OpenSSH public key line",
                ));
            }
            [one] => *one,
            more => {
                return Err(invalid(format!(
                    "expected one public key line, got {}",
                    more.len()
                )));
            }
        };
        let kind = line.split_whitespace().next().unwrap_or_default();
        match kind {
            "ssh-dss" => {
                return Err(invalid(
                    "DSA keys are not accepted (insecure); use ssh-ed25519, ecdsa or RSA of 2048 bits or more",
                ));
            }
            "ssh-ed25519"
            | "ssh-rsa"
            | "ecdsa-sha2-nistp256"
            | "ecdsa-sha2-nistp384"
            | "ecdsa-sha2-nistp521" => {}
            _ => {
                return Err(invalid(format!(
                    "unsupported or malformed public key of type {}: use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa",
                    quoted(kind)
                )));
            }
        }
        // The decoder's message may quote bytes of the key blob: escaped.
        let key = PublicKey::from_openssh(line).map_err(|e| {
            invalid(format!(
                "malformed {kind} public key: {}",
                printable(&e.to_string(), 200)
            ))
        })?;
        if key
            .comment()
            .to_string()
            .chars()
            .any(|c| c.is_control() || is_format_char(c))
        {
            return Err(invalid(
                "the key's comment contains control or invisible formatting characters; remove them",
            ));
        }
        if let Some(rsa) = key.key_data().rsa() {
            // The modulus's real length: ssh-key's key_size() counts whole
            // bytes, so a 2041-2047-bit modulus would pass as 2048.
            let n = rsa.n().as_positive_bytes().unwrap_or_default();
            let bits = n
                .first()
                .map(|b| (n.len() as u32) * 8 - b.leading_zeros())
                .unwrap_or(0);
            if bits < MIN_RSA_BITS {
                return Err(invalid(format!(
                    "RSA key of {bits} bits is too short: use at least {MIN_RSA_BITS} bits, or ssh-ed25519"
                )));
            }
        }
        Ok(Self::from_key(key))
    }

    /// Wraps a key that russh has already decoded (the one a client offers).
    pub fn from_key(key: PublicKey) -> Self {
        let fingerprint = fingerprint_of(&key);
        SshPublicKey { key, fingerprint }
    }

    /// `SHA256:…`, as `ssh-keygen -lf` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn algorithm(&self) -> String {
        self.key.algorithm().as_str().to_string()
    }

    pub fn comment(&self) -> String {
        self.key.comment().to_string()
    }

    /// The key line as stored: type, base64, comment.
    pub fn to_openssh(&self) -> Result<String, ssh_key::Error> {
        self.key.to_openssh()
    }
}

/// The SHA256 fingerprint of a key, the identity used throughout.
pub fn fingerprint_of(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Checks a SHA256 fingerprint as a user types it.
pub fn parse_fingerprint(s: &str) -> Result<String, Invalid> {
    let ok = s.strip_prefix("SHA256:").is_some_and(|b| {
        !b.is_empty()
            && b.len() <= 64
            && b.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=')
    });
    if !ok {
        return Err(invalid(format!(
            "invalid fingerprint {}: expected SHA256:… as shown by `key list`",
            quoted(s)
        )));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host";
        let k = SshPublicKey::parse(ed).unwrap();
        assert!(k.fingerprint().starts_with("SHA256:"));
        assert!(SshPublicKey::parse(&format!("\n# comment\n{ed}\n")).is_ok());
        assert!(SshPublicKey::parse("").is_err());
        assert!(SshPublicKey::parse(&format!("{ed}\n{ed}")).is_err());
        assert!(
            SshPublicKey::parse("ssh-dss AAAAB3NzaC1kc3M= x")
                .unwrap_err()
                .0
                .contains("DSA")
        );
        assert!(
            SshPublicKey::parse("-----BEGIN OPENSSH PRIVATE KEY-----")
                .unwrap_err()
                .0
                .contains("private")
        );
        assert!(SshPublicKey::parse("ssh-ed25519 AAAA garbage").is_err());
        assert!(SshPublicKey::parse("\u{0}\u{1}binary").is_err());
        let body =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        for comment in ["a\u{1b}[31mred", "evil\u{202e}txt.exe", "zero\u{200b}width"] {
            let e = SshPublicKey::parse(&format!("{body} {comment}"))
                .unwrap_err()
                .0;
            assert!(e.contains("comment"), "{comment:?}: {e}");
        }
        assert!(SshPublicKey::parse(&format!("{body} José's laptop")).is_ok());
    }
}
