//! Outbound TCP connections to what the operator registered (nodes, API
//! servers): one connect with a deadline, its failure sorted into what a
//! person can act on (the name did not resolve, the port refused, nothing
//! answered in time).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Why a connection could not be made; shown to users (in the SSH
/// channel-open failure's description) and to the operator (`node check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// DNS gave no address for the host.
    Unresolved { host: String, why: String },
    /// The host answered with a reset: nothing listens on that port.
    Refused(SocketAddr),
    /// Nothing answered before the deadline.
    TimedOut(Duration),
    /// Any other socket error (network unreachable, …).
    Other(String),
    /// Every address the name resolved to is one the rules forbid.
    Forbidden(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Unresolved { host, why } => {
                write!(f, "name {host} not resolved ({why})")
            }
            ConnectError::Refused(addr) => write!(f, "connection refused by {addr}"),
            ConnectError::TimedOut(d) => {
                write!(f, "timed out after {}", humantime::format_duration(*d))
            }
            ConnectError::Other(e) | ConnectError::Forbidden(e) => f.write_str(e),
        }
    }
}

/// Connects to `host:port` within `timeout` (the whole budget: resolution
/// and every address tried). Returns the stream and the address it reached.
///
/// Errors: see [`ConnectError`]; with several addresses, the last failure.
pub async fn connect(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    connect_checked(host, port, timeout, |_| Ok(())).await
}

/// Like [`connect`], but each resolved address must pass `check` first
/// (the name is resolved here, once, so what is checked is what is
/// connected to). Addresses that fail it are never connected to; when all
/// fail, the error is [`ConnectError::Forbidden`] with the check's reason.
pub async fn connect_checked(
    host: &str,
    port: u16,
    timeout: Duration,
    check: impl Fn(SocketAddr) -> Result<(), String>,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let attempt = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ConnectError::Unresolved {
                host: host.to_string(),
                why: e.to_string(),
            })?
            .collect();
        let mut last = ConnectError::Unresolved {
            host: host.to_string(),
            why: "no addresses".into(),
        };
        for addr in addrs {
            if let Err(why) = check(addr) {
                last = ConnectError::Forbidden(why);
                continue;
            }
            match TcpStream::connect(addr).await {
                // A local port nothing listens on, in the ephemeral range,
                // can be given to the connecting socket itself, which then
                // connects to itself (TCP simultaneous open): a user would
                // talk to an echo of their own bytes. Nothing listens
                // there, so it is refused like any closed port.
                Ok(s) if connected_to_itself(&s) => {
                    if !matches!(last, ConnectError::Forbidden(_)) {
                        last = ConnectError::Refused(addr);
                    }
                }
                Ok(s) => return Ok((s, addr)),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    if !matches!(last, ConnectError::Forbidden(_)) {
                        last = ConnectError::Refused(addr);
                    }
                }
                Err(e) => {
                    if !matches!(last, ConnectError::Forbidden(_)) {
                        last = ConnectError::Other(format!("cannot connect to {addr}: {e}"));
                    }
                }
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(ConnectError::TimedOut(timeout)))
}

/// Whether `s` is connected to its own address (TCP simultaneous open).
fn connected_to_itself(s: &TcpStream) -> bool {
    matches!((s.local_addr(), s.peer_addr()), (Ok(l), Ok(p)) if l == p)
}

/// The addresses of `host` (an IP literal, or a name resolved within 5 s),
/// IPv4-mapped IPv6 addresses made plain IPv4; none when it does not
/// resolve.
pub async fn resolve_host(host: &str) -> Vec<std::net::IpAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return vec![ip.to_canonical()];
    }
    let lookup = tokio::net::lookup_host((bare, 0));
    match tokio::time::timeout(Duration::from_secs(5), lookup).await {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip().to_canonical()).collect(),
        _ => Vec::new(),
    }
}

/// Connects to an sshd and reads its identification line (RFC 4253 §4.2),
/// all within `timeout`. Returns the line (`SSH-2.0-OpenSSH_9.2p1 …`), or
/// why there is none, as one printable line.
pub async fn ssh_banner(host: &str, port: u16, timeout: Duration) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let started = tokio::time::Instant::now();
    let (mut stream, addr) = connect(host, port, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let left = timeout.saturating_sub(started.elapsed());
    let mut buf = Vec::new();
    let read = async {
        // Servers may send other lines before the identification; it is at
        // most 255 bytes, and 8 KiB is plenty for what comes before.
        let mut chunk = [0u8; 512];
        while buf.len() < 8192 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
                continue;
            };
            if let Some(line) = buf[..end]
                .split(|&b| b == b'\n')
                .find(|l| l.starts_with(b"SSH-"))
            {
                return Ok(String::from_utf8_lossy(line).trim_end().to_string());
            }
        }
        Err(std::io::Error::other("no SSH identification line"))
    };
    match tokio::time::timeout(left, read).await {
        Ok(Ok(line)) => Ok(crate::model::printable(&line, 255)),
        Ok(Err(e)) => Err(format!("{addr} answered, but not as an SSH server: {e}")),
        Err(_) => Err(format!(
            "{addr} accepted the connection but sent no SSH banner within {}",
            humantime::format_duration(timeout)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_connected_to_itself_is_seen() {
        // Bound to the port it connects to, with nothing listening there,
        // a socket on Linux connects to itself.
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        let addr = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("its address");
        sock.connect(&addr.into()).expect("a simultaneous open");
        sock.set_nonblocking(true).expect("non-blocking");
        let s = TcpStream::from_std(sock.into()).expect("into tokio");
        assert!(connected_to_itself(&s));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let other = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        assert!(!connected_to_itself(&other));
    }

    #[tokio::test]
    async fn failures_say_why() {
        // A port that was just free refuses.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let e = connect("127.0.0.1", port, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, ConnectError::Refused(_)), "{e}");
        assert!(e.to_string().starts_with("connection refused"), "{e}");
        let e = connect("no-such-host.invalid", 22, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ConnectError::Unresolved { .. } | ConnectError::TimedOut(_)
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_listener_is_reached() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (_, addr) = connect("localhost", port, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(addr.port(), port);
    }
}
