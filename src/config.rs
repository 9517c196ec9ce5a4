//! The TOML configuration (interface.md §2): every key defaulted, unknown keys
//! refused by name, relative paths resolved against the config file's folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Deserializer};

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/gatehouse.toml";

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub database: Database,
    pub limits: Limits,
    pub log: Log,
    pub metrics: Metrics,
    pub forwarding: Forwarding,
    pub nodes: Nodes,
    pub kube: Kube,
}

/// The Kubernetes front door (`kube.CLUSTER.PROJECT`): the gateway's own CA,
/// whose certificates kubectl verifies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kube {
    /// The CA's private key (PEM); created with mode 0600 on first start.
    /// Replicas behind one name share it, as they share the host key.
    pub ca_key: PathBuf,
    /// The CA's certificate (PEM), which `kubeconfig` hands out; made from
    /// the key when missing.
    pub ca_cert: PathBuf,
}

impl Default for Kube {
    fn default() -> Self {
        Kube {
            ca_key: "../data/kube_ca.key".into(),
            ca_cert: "../data/kube_ca.crt".into(),
        }
    }
}

/// How nodes reach the gateway to ask who may log in (`node enroll`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Nodes {
    /// `HOST:PORT` at which nodes reach the gateway: the default of
    /// `gatehouse node enroll --gateway`.
    pub gateway: String,
    /// The gateway's addresses as nodes see its connections (behind NAT);
    /// empty: the local address that routes to each node. Granted keys
    /// work only for logins from these (`from="…"`).
    pub login_from: Vec<String>,
}

impl Nodes {
    /// `login_from` parsed; errors name the bad entry.
    pub fn login_from(&self) -> Result<Vec<std::net::IpAddr>> {
        self.login_from
            .iter()
            .map(|s| {
                s.parse::<std::net::IpAddr>().map_err(|_| {
                    anyhow::anyhow!("invalid config: nodes.login_from {s:?} is not an IP address")
                })
            })
            .collect()
    }
}

/// What forwards may reach beyond the registered nodes' sshd: the
/// operator's rules, which project admins cannot widen (see [`crate::reach`]).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Forwarding {
    /// CIDR ranges (or addresses) that a cluster's `kube_api` and
    /// `dashboard` may point into besides its own node hosts.
    pub api_allow: Vec<String>,
    /// Ports of a node's host that `NODE.CLUSTER:PORT` may reach, as
    /// `"8888"` or `"8000-8999"`; empty means any. The node's registered
    /// sshd port is always reachable.
    pub node_ports: Vec<String>,
}

impl Forwarding {
    /// The parsed rules, with the gateway's own ports. Errors name the bad
    /// entry.
    pub fn rules(&self, own_ports: Vec<u16>) -> Result<crate::reach::Rules> {
        let api_allow = self
            .api_allow
            .iter()
            .map(|s| crate::reach::parse_net(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("invalid config: forwarding.api_allow: {e}"))?;
        let node_ports = self
            .node_ports
            .iter()
            .map(|s| crate::reach::parse_port_range(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("invalid config: forwarding.node_ports: {e}"))?;
        Ok(crate::reach::Rules {
            own_ports,
            api_allow,
            node_ports,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// SSH listener address.
    pub listen: String,
    /// The ed25519 host key; created with mode 0600 on first start.
    pub host_key: PathBuf,
    /// How long SIGTERM waits for forwards to drain before closing them.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Worker threads, each serving whole connections; 0 means one per CPU.
    pub workers: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "0.0.0.0:2222".into(),
            host_key: "../data/host_ed25519".into(),
            shutdown_grace: Duration::from_secs(10),
            workers: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// `sqlite://PATH` (relative to the config file) or `postgres://…`.
    pub url: String,
    /// Connections the gateway keeps open to the database.
    pub max_connections: u32,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: "sqlite://../data/gatehouse.db".into(),
            max_connections: 8,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Authentication attempts allowed on one connection (OpenSSH MaxAuthTries).
    pub max_auth_attempts: usize,
    /// Time allowed from connect to successful authentication (LoginGraceTime).
    #[serde(deserialize_with = "duration")]
    pub login_grace_time: Duration,
    /// A connection with no traffic on any channel for this long is closed.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Live connections one account may hold on this gateway.
    pub max_sessions_per_account: usize,
    /// Live connections in total on this gateway.
    pub max_connections: usize,
    /// How long a forward may take to connect to its target.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Authentication failures from one address before it is refused for a while.
    pub penalty_after_failures: u32,
    /// The first refusal period; each further offence doubles it, up to `penalty_max`.
    #[serde(deserialize_with = "duration")]
    pub penalty_base: Duration,
    #[serde(deserialize_with = "duration")]
    pub penalty_max: Duration,
    /// Open channels (shells, commands, forwards) on one connection.
    pub max_channels_per_connection: usize,
    /// Open channels of one account, over all its connections.
    pub max_channels_per_account: usize,
    /// Unauthenticated connections: `start:rate:full`, as OpenSSH's
    /// MaxStartups (sshd_config(5)): past `start`, new ones are dropped with
    /// probability `rate`% rising linearly to 100% at `full`.
    pub max_startups: String,
    /// Unauthenticated connections from one address (OpenSSH's
    /// PerSourceMaxStartups); 0 means no limit.
    pub per_source_max_startups: usize,
    /// Connections from one address that may end without authenticating
    /// in a burst; past it, new ones are refused at accept until the
    /// bucket refills at `per_source_noauth_rate` a second (like OpenSSH's
    /// PerSourcePenalties `noauth`).
    pub per_source_noauth_burst: u32,
    pub per_source_noauth_rate: f64,
}

/// `limits.max_startups`, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxStartups {
    pub start: usize,
    pub rate: u32,
    pub full: usize,
}

impl Limits {
    /// Parses `max_startups`: `N` alone means `N:100:N`, as in OpenSSH.
    pub fn max_startups(&self) -> Result<MaxStartups> {
        let s = self.max_startups.trim();
        let bad = || {
            anyhow::anyhow!(
                "invalid config: limits.max_startups {s:?}: expected start:rate:full like \"10:30:100\", with start <= full and rate 1-100"
            )
        };
        let parts: Vec<&str> = s.split(':').collect();
        let nums: Vec<usize> = parts
            .iter()
            .map(|p| p.parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let m = match nums.as_slice() {
            [n] => MaxStartups {
                start: *n,
                rate: 100,
                full: *n,
            },
            [start, rate, full] => MaxStartups {
                start: *start,
                rate: u32::try_from(*rate).map_err(|_| bad())?,
                full: *full,
            },
            _ => return Err(bad()),
        };
        if m.start == 0 || m.start > m.full || m.rate == 0 || m.rate > 100 {
            return Err(bad());
        }
        Ok(m)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_auth_attempts: 6,
            login_grace_time: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(3600),
            max_sessions_per_account: 100,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(10),
            penalty_after_failures: 10,
            penalty_base: Duration::from_secs(30),
            penalty_max: Duration::from_secs(600),
            // VS Code Remote with a few port forwards holds tens of
            // channels; a thousand is far above any real client.
            max_channels_per_connection: 256,
            max_channels_per_account: 1024,
            max_startups: "10:30:100".into(),
            per_source_max_startups: 10,
            per_source_noauth_burst: 10,
            per_source_noauth_rate: 1.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `gatehouse=debug`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Address of the Prometheus `/metrics` and `/healthz` endpoint; empty
    /// means off.
    pub listen: String,
}

/// Resolves `.` and `..` without touching the file system (the file may
/// not exist yet).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Longest duration a config key may hold: far above any sensible value,
/// and far below what `Instant + d` can hold.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let shown = crate::model::printable(&s, 64);
    let d = humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration \"{shown}\": {e} (use e.g. 30s, 5m, 1h)"
        ))
    })?;
    if d > MAX_DURATION {
        return Err(serde::de::Error::custom(format!(
            "duration \"{shown}\" is longer than a year"
        )));
    }
    Ok(d)
}

impl Config {
    /// Loads the config at `path`, or at [`DEFAULT_PATH`] when none is given.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let given = path.is_some();
        let path = path.unwrap_or(Path::new(DEFAULT_PATH));
        if !given && !path.exists() {
            // Run outside a checkout: say where a config comes from.
            anyhow::bail!(
                "no config file at {DEFAULT_PATH} (the default, relative to the current directory): give one with --config PATH or GATEHOUSE_CONFIG=PATH; the source tree's config/gatehouse.toml lists every key at its default"
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            // The message may quote a key from the file, which may hold any
            // character: escaped, on one line.
            let msg = e.message().trim().replace('\n', "; ");
            anyhow::anyhow!(
                "invalid config file {}: {}",
                path.display(),
                crate::model::printable(&msg, 400)
            )
        })?;
        // A bare file name (`--config gatehouse.toml`) has an empty parent:
        // its folder is the current one.
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // Absolute, so that a `sqlite://` URL never starts with a relative
        // segment its parser would take for a host name.
        let base = std::path::absolute(base)
            .with_context(|| format!("cannot resolve the folder of {}", path.display()))?;
        config.resolve(&normalize(&base))?;
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) -> Result<()> {
        let abs = |p: &Path| -> PathBuf { normalize(&base.join(p)) };
        self.server.host_key = abs(&self.server.host_key);
        self.kube.ca_key = abs(&self.kube.ca_key);
        self.kube.ca_cert = abs(&self.kube.ca_cert);
        if let Some(rest) = self.database.url.strip_prefix("sqlite://") {
            let (file, query) = match rest.split_once('?') {
                Some((f, q)) => (f, Some(q)),
                None => (rest, None),
            };
            if file != ":memory:" && !file.is_empty() {
                let file = abs(Path::new(file));
                self.database.url = match query {
                    Some(q) => format!("sqlite://{}?{q}", file.display()),
                    None => format!("sqlite://{}", file.display()),
                };
            }
        } else if !self.database.url.starts_with("postgres://")
            && !self.database.url.starts_with("postgresql://")
        {
            bail!(
                "invalid config: database.url must start with sqlite:// or postgres://, got {:?}",
                self.database.url
            );
        }
        self.listen_addr()?;
        if !self.metrics.listen.is_empty() {
            self.metrics.listen.parse::<SocketAddr>().with_context(|| {
                format!(
                    "invalid config: metrics.listen {:?} is not HOST:PORT",
                    self.metrics.listen
                )
            })?;
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!(
                "invalid config: log.format must be \"text\" or \"json\", got {:?}",
                self.log.format
            );
        }
        if self.limits.max_auth_attempts == 0 {
            bail!("invalid config: limits.max_auth_attempts must be at least 1");
        }
        if self.limits.max_channels_per_connection == 0 || self.limits.max_channels_per_account == 0
        {
            bail!(
                "invalid config: limits.max_channels_per_connection and max_channels_per_account must be at least 1"
            );
        }
        self.limits.max_startups()?;
        let rate = self.limits.per_source_noauth_rate;
        if self.limits.per_source_noauth_burst == 0 || rate.is_nan() || rate <= 0.0 {
            bail!(
                "invalid config: limits.per_source_noauth_burst and per_source_noauth_rate must be above 0"
            );
        }
        self.forwarding.rules(Vec::new())?;
        self.nodes.login_from()?;
        if !self.nodes.gateway.is_empty() {
            crate::model::HostPort::parse(&self.nodes.gateway)
                .map_err(|e| anyhow::anyhow!("invalid config: nodes.gateway: {e}"))?;
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr> {
        self.server.listen.parse().with_context(|| {
            format!(
                "invalid config: server.listen {:?} is not IP:PORT",
                self.server.listen
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("g.toml");
        std::fs::write(&path, text)?;
        Config::load(Some(&path))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:2222");
        assert!(
            c.server.host_key.is_absolute() && c.server.host_key.ends_with("data/host_ed25519")
        );
        assert!(c.database.url.starts_with("sqlite:///"));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 2\n").unwrap_err();
        assert!(format!("{e:#}").contains("listne"), "{e:#}");
        let e = load("[nope]\n").unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(load("[server]\nlisten = \"nowhere\"\n").is_err());
        assert!(load("[database]\nurl = \"mysql://x\"\n").is_err());
        assert!(load("[limits]\nidle_timeout = \"soon\"\n").is_err());
        assert!(load("[log]\nformat = \"xml\"\n").is_err());
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        let path = dir.path().join("config/g.toml");
        std::fs::write(&path, "").unwrap();
        let c = Config::load(Some(&path)).unwrap();
        let data = dir.path().join("data");
        assert_eq!(c.server.host_key, data.join("host_ed25519"));
        assert_eq!(
            c.database.url,
            format!("sqlite://{}", data.join("gatehouse.db").display())
        );
    }

    #[test]
    fn the_shipped_config_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_PATH);
        let shipped = Config::load(Some(&path)).unwrap();
        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir(empty.path().join("config")).unwrap();
        let e = empty.path().join(DEFAULT_PATH);
        std::fs::write(&e, "").unwrap();
        let defaults = Config::load(Some(&e)).unwrap();
        assert_eq!(
            format!("{:?}", shipped.limits),
            format!("{:?}", defaults.limits)
        );
        assert_eq!(shipped.server.listen, defaults.server.listen);
        assert_eq!(shipped.server.workers, defaults.server.workers);
        assert_eq!(shipped.log.format, defaults.log.format);
        assert_eq!(shipped.metrics.listen, defaults.metrics.listen);
        assert_eq!(
            format!("{:?}", shipped.forwarding),
            format!("{:?}", defaults.forwarding)
        );
        assert!(shipped.server.host_key.ends_with("data/host_ed25519"));
    }

    #[test]
    fn limits_and_forwarding_rules_are_checked() {
        let c = load("[limits]\nmax_startups = \"5:50:20\"\n").unwrap();
        assert_eq!(
            c.limits.max_startups().unwrap(),
            MaxStartups {
                start: 5,
                rate: 50,
                full: 20
            }
        );
        assert_eq!(load("").unwrap().limits.max_startups().unwrap().full, 100);
        for bad in ["0", "20:30:10", "10:0:100", "10:101:100", "a:b:c", "1:2"] {
            let e = load(&format!("[limits]\nmax_startups = \"{bad}\"\n")).unwrap_err();
            assert!(format!("{e:#}").contains("max_startups"), "{bad}: {e:#}");
        }
        assert!(
            load(
                "[forwarding]\napi_allow = [\"10.0.0.0/8\"]\nnode_ports = [\"22\", \"8000-8999\"]\n"
            )
            .is_ok()
        );
        let e = load("[forwarding]\napi_allow = [\"nope\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("forwarding.api_allow"), "{e:#}");
        let e = load("[forwarding]\nnode_ports = [\"9-1\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("forwarding.node_ports"), "{e:#}");
    }

    #[test]
    fn postgres_url_is_kept() {
        let c = load("[database]\nurl = \"postgres://u:p@127.0.0.1:5432/db\"\n").unwrap();
        assert_eq!(c.database.url, "postgres://u:p@127.0.0.1:5432/db");
    }
}
