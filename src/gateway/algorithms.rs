//! Which SSH algorithms the gateway offers, and which signature algorithms
//! it accepts for user authentication.
//!
//! The lists are chosen so that `ssh-audit` (the public SSH server auditor)
//! reports no failure and no warning on them, other than its note that a
//! classical key exchange "does not provide protection against post-quantum
//! attacks" on the curve25519 exchanges kept for clients older than
//! OpenSSH 9.9 (`tests/ssh_audit.rs` checks this), while every OpenSSH
//! client since 6.5 still connects (since 7.2 with an RSA key). russh's
//! defaults are close, but offer plain `zlib`, the encrypt-and-MAC
//! `hmac-sha2-*`, 2048-bit `diffie-hellman-group14-sha256`, and `ssh-rsa`
//! (SHA-1) in `server-sig-algs`.

use std::borrow::Cow;

use russh::keys::{Algorithm, EcdsaCurve, HashAlg};
use russh::{Preferred, cipher, compression, kex, mac};

/// Key exchange, best first. The server picks the client's first choice
/// that is on this list, so the order only matters to clients that follow
/// ours.
///
/// - `mlkem768x25519-sha256`: hybrid post-quantum exchange (ML-KEM-768 with
///   X25519), OpenSSH's default since 10.0. russh 0.65 has no
///   `sntrup761x25519-sha512`, the hybrid OpenSSH 9.0–9.8 prefer; those
///   clients fall back to curve25519.
/// - `curve25519-sha256` (RFC 8731) and its pre-RFC name
///   `curve25519-sha256@libssh.org`: for clients without ML-KEM (OpenSSH
///   before 9.9, PuTTY, most libraries). ssh-audit warns that they are not
///   post-quantum; that is the one warning accepted.
/// - No finite-field Diffie-Hellman: `diffie-hellman-group14-sha256` is a
///   2048-bit group (112-bit strength; ssh-audit warns), and the larger
///   groups and group exchange make the server do a 4096- to 8192-bit
///   modular exponentiation for any unauthenticated client, which is what
///   the DHEat denial of service (CVE-2002-20001) exploits. Clients of the
///   last decade have curve25519: OpenSSH since 6.5 (2014), PuTTY since
///   0.68, libssh, Go's x/crypto/ssh, paramiko.
/// - `ext-info-s`: the server's marker of RFC 8308 extension negotiation
///   (§2.1). russh sends `server-sig-algs` (below) to every client whose
///   KEXINIT carries `ext-info-c`.
/// - `kex-strict-s-v00@openssh.com`: OpenSSH's strict key exchange, the
///   fix for the Terrapin attack (CVE-2023-48795); without it ssh-audit
///   flags chacha20-poly1305 as vulnerable.
static KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// Public-key signature algorithms, best first. russh uses this one list
/// twice:
///
/// - as the host-key algorithms of KEXINIT, filtered to the host keys the
///   gateway has: the host key is ed25519, so only `ssh-ed25519` is offered
///   (ssh-audit fails the NIST-curve ECDSA host keys and `ssh-rsa`);
/// - whole, as the `server-sig-algs` extension (RFC 8308 §3.1): the
///   signature algorithms a client may use to authenticate. These are the
///   key types the gateway stores (see `SshPublicKey::parse`): Ed25519,
///   ECDSA on P-256/384/521, and RSA with SHA-2 only (RFC 8332). No
///   `ssh-rsa`: SHA-1 signatures are refused, as OpenSSH has done since 8.8
///   ([`accepts_user_signature`]); an RSA key still logs in, signed with
///   `rsa-sha2-512` or `rsa-sha2-256` (OpenSSH since 7.2 picks one of them
///   from this list). No security-key (`sk-*`) or certificate types: the
///   gateway accepts neither.
static KEYS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// Ciphers, russh's own list: all authenticated encryption or CTR mode,
/// none that ssh-audit warns about. chacha20-poly1305 is safe here only
/// with strict key exchange (above); ssh-audit still notes that a peer
/// without it would be exposed to Terrapin, a note it gives OpenSSH too.
/// No CBC mode (Terrapin with ETM MACs, and the old CBC plaintext
/// recovery).
static CIPHERS: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_GCM,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];

/// MACs, used only with the CTR ciphers (the AEAD ones carry their own
/// tag). Encrypt-then-MAC only: the encrypt-and-MAC `hmac-sha2-256` and
/// `hmac-sha2-512` compute the MAC over the plaintext, which ssh-audit
/// warns about; every OpenSSH since 6.2 has the `-etm` forms. No SHA-1.
static MACS: &[mac::Name] = &[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM];

/// Compression: none, or OpenSSH's delayed zlib, which starts only after
/// authentication (what `ssh -C` asks for). Plain RFC 4253 `zlib` would
/// run the decompressor on data from clients not yet authenticated, more
/// code exposed to anyone; OpenSSH's server dropped it in 7.4.
static COMPRESSION: &[compression::Name] = &[compression::NONE, compression::ZLIB_LEGACY];

/// The algorithm lists of the gateway's `russh::server::Config`.
pub fn preferred() -> Preferred {
    Preferred {
        kex: Cow::Borrowed(KEX),
        key: Cow::Borrowed(KEYS),
        // A server presents certificates from `Config::certificates`
        // (none); this list is for clients.
        host_key_certificates: Cow::Borrowed(&[]),
        cipher: Cow::Borrowed(CIPHERS),
        mac: Cow::Borrowed(MACS),
        compression: Cow::Borrowed(COMPRESSION),
    }
}

/// Whether a client may authenticate with a signature of `algorithm`: only
/// those advertised in `server-sig-algs`. russh checks that a signature is
/// of the algorithm its request names, but not that the algorithm is one
/// the server advertised, so an `ssh-rsa` (SHA-1) signature would pass
/// unless the handler refuses it.
pub fn accepts_user_signature(algorithm: &Algorithm) -> bool {
    KEYS.contains(algorithm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<T: AsRef<str>>(list: &[T]) -> Vec<&str> {
        list.iter().map(AsRef::as_ref).collect()
    }

    #[test]
    fn post_quantum_first_and_no_weak_algorithms() {
        let p = preferred();
        let kex = names(&p.kex);
        assert_eq!(kex[..2], ["mlkem768x25519-sha256", "curve25519-sha256"]);
        assert!(kex.contains(&"kex-strict-s-v00@openssh.com"));
        assert!(kex.contains(&"ext-info-s"));
        assert!(!kex.iter().any(|k| k.starts_with("diffie-hellman")));
        assert!(
            names(&p.mac)
                .iter()
                .all(|m| m.ends_with("-etm@openssh.com"))
        );
        assert_eq!(names(&p.compression), ["none", "zlib@openssh.com"]);
        assert!(!names(&p.cipher).iter().any(|c| c.ends_with("-cbc")));
    }

    #[test]
    fn sha1_rsa_signatures_are_refused() {
        let p = preferred();
        let sig_algs: Vec<String> = p.key.iter().map(ToString::to_string).collect();
        assert_eq!(
            sig_algs,
            [
                "ssh-ed25519",
                "ecdsa-sha2-nistp256",
                "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521",
                "rsa-sha2-512",
                "rsa-sha2-256",
            ]
        );
        assert!(!accepts_user_signature(&Algorithm::Rsa { hash: None }));
        assert!(accepts_user_signature(&Algorithm::Rsa {
            hash: Some(HashAlg::Sha256)
        }));
        assert!(accepts_user_signature(&Algorithm::Ed25519));
        assert!(!accepts_user_signature(&Algorithm::Dsa));
    }
}
