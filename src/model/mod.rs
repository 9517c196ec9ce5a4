//! Validated domain types. Input from users, files and the network is turned
//! into these at the edge; past that point the rest of the code trusts them.

use std::fmt;

use serde::Serialize;

mod key;
mod size;
pub use key::{SshPublicKey, fingerprint_of, parse_fingerprint};
pub use size::Size;

/// Why a value was refused. The message is shown to the user as is, so it
/// says what is wrong and, where useful, what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

pub(crate) fn invalid(msg: impl Into<String>) -> Invalid {
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
}
