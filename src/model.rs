//! Validated domain types. Input from users, files and the network is turned
//! into these at the edge; past that point the rest of the code trusts them.

use std::fmt;

use russh::keys::ssh_key::{self, HashAlg, PublicKey};
use serde::Serialize;

/// Why a value was refused. The message is shown to the user as is, so it
/// says what is wrong and, where useful, what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// Printable form of user input inside an error message: control characters
/// and over-long values must not reach a terminal or a log line as they are.
pub fn quoted(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(64) {
        if is_format_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.extend(c.escape_debug());
        }
    }
    if s.chars().nth(64).is_some() {
        out.push('…');
    }
    format!("\"{out}\"")
}

/// `s` made safe for a terminal or a log line: at most `max` characters
/// (then `…`), with control characters and Unicode format characters
/// (bidi overrides such as U+202E, zero-width joiners) escaped as `\u{…}`,
/// so what came from a user can never move the cursor or reorder text.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max * 2));
    for c in s.chars().take(max) {
        if c.is_control() || is_format_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// Invisible characters that reorder or hide text: Unicode's format
/// characters (category Cf: bidi embeddings, overrides and isolates,
/// zero-width ones, tags) and the line and paragraph separators (Zl, Zp).
pub fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}'
        | '\u{0600}'..='\u{0605}'
        | '\u{061C}'
        | '\u{06DD}'
        | '\u{070F}'
        | '\u{0890}'..='\u{0891}'
        | '\u{08E2}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}'
        | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}')
}

/// An email address, kept as typed; compared case-insensitively through
/// [`Email::normalized`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = || invalid(format!("invalid email {}: expected NAME@DOMAIN", quoted(s)));
        if s.is_empty() || s.len() > 254 {
            return Err(bad());
        }
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._%+-'".contains(c));
        let domain_ok = domain.contains('.')
            && !domain.starts_with(['.', '-'])
            && !domain.ends_with(['.', '-'])
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !local_ok || !domain_ok {
            return Err(bad());
        }
        Ok(Email(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form uniqueness is decided on.
    pub fn normalized(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// The login an account gets when none is given: the local part,
    /// lower-cased, with anything outside the login alphabet made `_`.
    pub fn default_login(&self) -> Result<Login, Invalid> {
        let local = self.0.split('@').next().unwrap_or_default();
        let mut login: String = local
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if !login.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
            login.insert(0, '_');
        }
        login.truncate(32);
        Login::for_account(&login)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An account's login: the SSH user name (`[a-z_][a-z0-9_-]{0,31}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Login(String);

impl Login {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !first_ok || !rest_ok || s.len() > 32 {
            return Err(invalid(format!(
                "invalid login {}: use 1-32 of a-z 0-9 _ -, starting with a letter or _",
                quoted(s)
            )));
        }
        Ok(Login(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Logins that name the system rather than a person: `operator` is the
/// audit actor of the operator CLI, `cli` its source; the others are what a
/// reader of a log takes for the machine itself.
pub const RESERVED_LOGINS: &[&str] = &[
    "operator",
    "cli",
    "gatehouse",
    "root",
    "system",
    "daemon",
    "nobody",
    "invalid",
];

impl Login {
    /// A login for a new account: valid, and not one of [`RESERVED_LOGINS`].
    pub fn for_account(s: &str) -> Result<Self, Invalid> {
        let login = Login::parse(s)?;
        if RESERVED_LOGINS.contains(&login.as_str()) {
            return Err(invalid(format!(
                "login {} is reserved (it names the system in logs and the audit trail): choose another with --login",
                quoted(s)
            )));
        }
        Ok(login)
    }
}

impl fmt::Display for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A project, cluster, node or volume name: `[a-z0-9][a-z0-9-]{0,62}`.
/// Names are DNS labels so that `NODE.CLUSTER.PROJECT` is a host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// `what` names the kind of object in the error ("project", "cluster" …).
    pub fn parse(what: &str, s: &str) -> Result<Self, Invalid> {
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        // A DNS label neither starts nor ends with `-` (RFC 1123 §2.1).
        if !first_ok || !rest_ok || s.len() > 63 || s.ends_with('-') {
            // `Train` is a common slip: say that names are lower-case and
            // offer the name that would have been accepted.
            let lower = s.to_ascii_lowercase();
            if lower != s && Name::parse(what, &lower).is_ok() {
                return Err(invalid(format!(
                    "invalid {what} name {}: names are lower-case DNS labels; use {}",
                    quoted(s),
                    quoted(&lower)
                )));
            }
            return Err(invalid(format!(
                "invalid {what} name {}: use 1-63 of a-z 0-9 -, starting and ending with a letter or digit",
                quoted(s)
            )));
        }
        Ok(Name(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A role within one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            _ => Err(invalid(format!(
                "invalid role {}: use admin or member",
                quoted(s)
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A volume size, held in whole GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Size {
    gib: i64,
}

/// 1 PiB: far above any real volume, low enough that arithmetic never overflows.
const MAX_SIZE_GIB: i64 = 1024 * 1024;

const GIB: u128 = 1 << 30;

impl Size {
    /// Parses a size as people type it, units case-insensitive:
    /// binary units (`GiB`/`Gi`, `TiB`/`Ti`, `PiB`/`Pi`) are exact, and so
    /// are decimal fractions of them (`1.5TiB`); decimal units (`GB`/`G`,
    /// `TB`/`T`, `PB`/`P`, as in Kubernetes quantities) are converted
    /// exactly, and refused with the nearest whole-GiB sizes suggested when
    /// they are not a whole number of GiB (which, below 1 PiB, they never
    /// are). `GB` is never read as `GiB`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = |why: String| {
            invalid(format!(
                "invalid size {}: {why} (use a whole number of GiB or TiB, like 500GiB, 2TiB or 1.5TiB)",
                quoted(s)
            ))
        };
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || (number.contains('.') && frac.is_empty()) || frac.contains('.') {
            return Err(bad("expected a number such as 500 or 1.5".into()));
        }
        if frac.len() > 18 {
            return Err(bad("too many decimal places (at most 18)".into()));
        }
        // bytes per unit
        let per: u128 = match unit.to_ascii_lowercase().as_str() {
            "gib" | "gi" => GIB,
            "tib" | "ti" => GIB << 10,
            "pib" | "pi" => GIB << 20,
            "gb" | "g" => 1_000_000_000,
            "tb" | "t" => 1_000_000_000_000,
            "pb" | "p" => 1_000_000_000_000_000,
            "" => return Err(bad("no unit".into())),
            _ => return Err(bad(format!("unknown unit {}", quoted(unit)))),
        };
        let too_large = || bad("larger than 1024TiB".into());
        if whole.len() > 12 {
            return Err(too_large());
        }
        let scale = 10u128.pow(frac.len() as u32);
        let digits: u128 = format!("{whole}{frac}").parse().map_err(|_| too_large())?;
        // bytes = digits * per / scale, kept exact as a fraction.
        let numerator = digits.checked_mul(per).ok_or_else(too_large)?;
        if numerator == 0 {
            return Err(bad("must be more than zero".into()));
        }
        let denominator = scale * GIB;
        if numerator / denominator > MAX_SIZE_GIB as u128 {
            return Err(too_large());
        }
        if !numerator.is_multiple_of(denominator) {
            let gib = numerator as f64 / denominator as f64;
            let (down, up) = (gib.floor() as i64, gib.ceil() as i64);
            let hint = if down >= 1 {
                format!("use {up}GiB or {down}GiB")
            } else {
                format!("use {up}GiB")
            };
            return Err(invalid(format!(
                "invalid size {}: that is {gib:.2} GiB, and volumes are sized in whole GiB; {hint}",
                quoted(s)
            )));
        }
        let gib = numerator / denominator;
        if gib > MAX_SIZE_GIB as u128 {
            return Err(too_large());
        }
        Ok(Size { gib: gib as i64 })
    }

    pub fn from_gib(gib: i64) -> Self {
        Size { gib }
    }

    pub fn gib(self) -> i64 {
        self.gib
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.gib % 1024 == 0 {
            write!(f, "{}TiB", self.gib / 1024)
        } else {
            write!(f, "{}GiB", self.gib)
        }
    }
}

/// A node count for `cluster create`/`scale`.
pub fn parse_count(s: &str, min: i64) -> Result<i64, Invalid> {
    let n: i64 = s.parse().map_err(|_| {
        invalid(format!(
            "invalid node count {}: expected a whole number",
            quoted(s)
        ))
    })?;
    if n < min || n > 10_000 {
        return Err(invalid(format!(
            "invalid node count {n}: must be between {min} and 10000"
        )));
    }
    Ok(n)
}

/// `HOST:PORT` of a node's sshd or a cluster's API server. The host is a DNS
/// name or an IP literal (IPv6 in brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = |why: &str| {
            invalid(format!(
                "invalid address {}: {why} (expected HOST:PORT)",
                quoted(s)
            ))
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest.split_once("]:").ok_or_else(|| bad("missing port"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("bad IPv6 address"));
            }
            (h, p)
        } else {
            let (h, p) = s.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
            if !valid_hostname(h) {
                return Err(bad("bad host"));
            }
            // `127.1`, `2130706433`, `0x7f000001` reach 127.0.0.1 through
            // the resolver but read as something else: only the dotted quad.
            let numeric = h.split('.').all(|l| {
                l.bytes().all(|b| b.is_ascii_digit()) || l.to_ascii_lowercase().starts_with("0x")
            });
            if numeric && h.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(bad(
                    "write an IPv4 address as four decimal numbers, like 10.0.0.1",
                ));
            }
            (h, p)
        };
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("port must be 1-65535"));
        }
        let port: u16 = port.parse().map_err(|_| bad("port must be 1-65535"))?;
        if port == 0 {
            return Err(bad("port must be 1-65535"));
        }
        Ok(HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// A DNS name or IPv4 literal, as accepted for registered addresses.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A GPU type label as people write it (`H100`, `A100-80GB`, `l40s`):
/// letters, digits and `-`, up to 63, kept as typed. GPU types are matched
/// case-insensitively (see the store's node allocation).
pub fn parse_gpu_type(s: &str) -> Result<String, Invalid> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !first_ok || !rest_ok || s.len() > 63 {
        return Err(invalid(format!(
            "invalid GPU type {}: use 1-63 of letters, digits and -, like H100 or A100-80GB",
            quoted(s)
        )));
    }
    Ok(s.to_string())
}

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
    fn emails() {
        assert!(Email::parse("bob@example.com").is_ok());
        assert!(Email::parse("Bob.Smith+gpu@Example.COM").is_ok());
        for bad in [
            "",
            "bob",
            "@x.com",
            "bob@",
            "bob@x",
            "a b@x.com",
            "bob@x..com",
            "bob@@x.com",
            "bob;rm@x.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Email::parse("Bob@X.com").unwrap().normalized(), "bob@x.com");
    }

    #[test]
    fn default_logins() {
        let l = |e: &str| Email::parse(e).unwrap().default_login().unwrap().0;
        assert_eq!(l("Bob.Smith@x.com"), "bob_smith");
        assert_eq!(l("9lives@x.com"), "_9lives");
        assert_eq!(l("a-b@x.com"), "a-b");
        assert_eq!(l(&format!("{}@x.com", "a".repeat(60))).len(), 32);
    }

    #[test]
    fn logins_and_names() {
        assert!(Login::parse("alice").is_ok());
        assert!(Login::parse("_svc-1").is_ok());
        for bad in ["", "Alice", "1abc", "a b", "a;b", &"a".repeat(33)] {
            assert!(Login::parse(bad).is_err(), "{bad}");
        }
        assert!(Name::parse("project", "train-a").is_ok());
        assert!(Name::parse("project", "9x").is_ok());
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a;b",
            "$(x)",
            &"a".repeat(64),
        ] {
            assert!(Name::parse("project", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        let gib = |s: &str| Size::parse(s).map(Size::gib);
        assert_eq!(gib("500GiB"), Ok(500));
        assert_eq!(gib("500gib"), Ok(500));
        assert_eq!(gib("500Gi"), Ok(500));
        assert_eq!(gib("2TiB"), Ok(2048));
        assert_eq!(gib("1.5TiB"), Ok(1536));
        assert_eq!(gib("0.5TiB"), Ok(512));
        assert_eq!(gib("1PiB"), Ok(1024 * 1024));
        assert_eq!(Size::parse("2TiB").unwrap().to_string(), "2TiB");
        // Decimal units are never read as binary; no decimal size below
        // 1 PiB is a whole number of GiB, so each is refused with a hint.
        let e = Size::parse("500GB").unwrap_err().0;
        assert!(e.contains("465.66 GiB") && e.contains("466GiB"), "{e}");
        let e = Size::parse("1TB").unwrap_err().0;
        assert!(e.contains("931.32 GiB") && e.contains("932GiB"), "{e}");
        assert!(Size::parse("500G").is_err());
        assert!(
            Size::parse("2PB")
                .unwrap_err()
                .0
                .contains("larger than 1024TiB")
        );
        let e = Size::parse("1.99999999999999GiB").unwrap_err().0;
        assert!(e.contains("use 2GiB or 1GiB"), "{e}");
        assert_eq!(gib("0.000976562500TiB"), Ok(1));
        assert!(Size::parse("1.5TB").is_err());
        for bad in [
            "",
            "0GiB",
            "0.0TiB",
            "-5GiB",
            "5",
            "5MiB",
            "GiB",
            "1.GiB",
            ".5TiB",
            "1..5TiB",
            "1.2.3TiB",
            "0.3GiB",
            "99999999999999999999GiB",
            "2000TiB",
            "1.0000000000000000001TiB",
            "2PB",
            "1.01PiB",
        ] {
            assert!(Size::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_text_is_made_printable() {
        assert_eq!(printable("a\u{1b}[2Jb\nc", 64), "a\\u{1b}[2Jb\\u{a}c");
        assert_eq!(printable("x\u{202e}y", 64), "x\\u{202e}y");
        for c in ['\u{e0049}', '\u{2028}', '\u{2029}', '\u{200b}', '\u{feff}'] {
            assert!(is_format_char(c), "{c:?}");
            assert!(!printable(&c.to_string(), 8).contains(c));
        }
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(quoted("\u{2066}"), "\"\\u{2066}\"");
    }

    #[test]
    fn names_suggest_lower_case_and_gpu_types_keep_case() {
        let e = Name::parse("project", "Train").unwrap_err().0;
        assert!(e.contains("use \"train\""), "{e}");
        assert!(
            !Name::parse("project", "a_b")
                .unwrap_err()
                .0
                .contains("use \"")
        );
        for ok in ["H100", "A100-80GB", "l40s", "h100"] {
            assert_eq!(parse_gpu_type(ok).unwrap(), ok);
        }
        for bad in ["", "-h100", "h 100", "h100;", "h_100", &"a".repeat(64)] {
            assert!(parse_gpu_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("3", 1).unwrap(), 3);
        assert_eq!(parse_count("0", 0).unwrap(), 0);
        for bad in ["0", "-1", "x", "1.5", "", "100000"] {
            assert!(parse_count(bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_ports() {
        let hp = HostPort::parse("10.0.0.1:22").unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("10.0.0.1", 22));
        assert_eq!(HostPort::parse("[::1]:22").unwrap().to_string(), "[::1]:22");
        assert!(HostPort::parse("node-1.example.com:2222").is_ok());
        for bad in [
            "",
            "host",
            "host:",
            "host:0",
            "host:65536",
            ":22",
            "ho st:22",
            "a;b:22",
            "[zz]:22",
            "host:-1",
            "host:+22",
            "127.1:22",
            "2130706433:22",
            "0x7f000001:22",
            "0x7f.0.0.1:22",
        ] {
            assert!(HostPort::parse(bad).is_err(), "{bad}");
        }
    }

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
