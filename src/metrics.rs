//! Prometheus metrics (text exposition by `prometheus-client`) and the
//! small HTTP endpoint that serves `/metrics` and `/healthz`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: String,
}

/// An open channel, counted in `gatehouse_channels_open` while it lives.
pub struct OpenChannel(Gauge);

impl Drop for OpenChannel {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct Metrics {
    registry: Registry,
    auth: Family<ResultLabel, Counter>,
    connections: Gauge,
    channels: Family<KindLabel, Gauge>,
    /// Held directly so the forwarding hot path adds without a map lookup.
    bytes_to_target: Counter<u64, AtomicU64>,
    bytes_from_target: Counter<u64, AtomicU64>,
    commands: Family<CommandLabels, Counter>,
    kube_requests: Family<KubeLabels, Counter>,
    denials: Family<KindLabel, Counter>,
    penalties: Counter,
    sessions_refused: Family<LimitLabel, Counter>,
    db_latency: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KubeLabels {
    verb: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("gatehouse");
        let auth = Family::<ResultLabel, Counter>::default();
        registry.register(
            "auth_attempts",
            "Authentication attempts by result",
            auth.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections_active",
            "Authenticated SSH connections open now",
            connections.clone(),
        );
        let channels = Family::<KindLabel, Gauge>::default();
        registry.register(
            "channels_open",
            "Channels open now, by kind",
            channels.clone(),
        );
        let forward_bytes = Family::<DirectionLabel, Counter<u64, AtomicU64>>::default();
        registry.register(
            "forward_bytes",
            "Bytes forwarded, by direction",
            forward_bytes.clone(),
        );
        let bytes_to_target = forward_bytes
            .get_or_create(&DirectionLabel {
                direction: "to_target".into(),
            })
            .clone();
        let bytes_from_target = forward_bytes
            .get_or_create(&DirectionLabel {
                direction: "from_target".into(),
            })
            .clone();
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands run, by command word and outcome",
            commands.clone(),
        );
        let kube_requests = Family::<KubeLabels, Counter>::default();
        registry.register(
            "kube_requests",
            "Requests through the Kubernetes front door, by verb and outcome",
            kube_requests.clone(),
        );
        let denials = Family::<KindLabel, Counter>::default();
        registry.register("denials", "Requests refused, by kind", denials.clone());
        let penalties = Counter::default();
        registry.register(
            "source_penalties",
            "Source addresses put on penalty for repeated failures",
            penalties.clone(),
        );
        let sessions_refused = Family::<LimitLabel, Counter>::default();
        registry.register(
            "sessions_refused",
            "Authenticated connections refused by a limit, by limit",
            sessions_refused.clone(),
        );
        let db_latency = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "db_query_seconds",
            "Latency of the authentication lookup in the database",
            db_latency.clone(),
        );
        Arc::new(Metrics {
            registry,
            auth,
            connections,
            channels,
            bytes_to_target,
            bytes_from_target,
            commands,
            kube_requests,
            denials,
            penalties,
            sessions_refused,
            db_latency,
        })
    }

    pub fn auth(&self, result: &str) {
        self.auth
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// A correctly authenticated connection refused by `limit` (the config
    /// key): not an authentication failure, and no penalty.
    pub fn session_refused(&self, limit: &str) {
        self.sessions_refused
            .get_or_create(&LimitLabel {
                limit: limit.into(),
            })
            .inc();
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    /// Counts a channel of `kind` (`session`, `forward`) as open until the
    /// returned guard drops: however the channel's task ends (closed,
    /// cancelled, aborted, panicked), the gauge goes back down.
    pub fn channel_open(&self, kind: &str) -> OpenChannel {
        let gauge = self
            .channels
            .get_or_create(&KindLabel { kind: kind.into() })
            .clone();
        gauge.inc();
        OpenChannel(gauge)
    }

    pub fn forward_open(&self) -> OpenChannel {
        self.channel_open("forward")
    }

    pub fn forward_refused(&self) {
        self.denial("forward");
    }

    pub fn forwarded_to_target(&self, n: u64) {
        self.bytes_to_target.inc_by(n);
    }

    pub fn forwarded_from_target(&self, n: u64) {
        self.bytes_from_target.inc_by(n);
    }

    /// Counts a command by its name (`cluster delete`; `invalid` when it did
    /// not parse). Names come from the grammar, never from user input, so
    /// the label set stays bounded. Denials are counted by the same name.
    pub fn command(&self, name: &str, code: u32) {
        let outcome = match code {
            0 => "ok",
            2 => "usage",
            3 => "denied",
            _ => "failed",
        };
        self.commands
            .get_or_create(&CommandLabels {
                command: name.into(),
                outcome: outcome.into(),
            })
            .inc();
        if code == 3 {
            self.denial(name);
        }
    }

    /// Counts a request through the Kubernetes front door: `verb` as the API
    /// server names it (anything else counts as `other`, so the label set
    /// stays bounded), `outcome` ok, denied or failed.
    pub fn kube_request(&self, verb: &str, outcome: &str) {
        const VERBS: &[&str] = &[
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
        ];
        let verb = if VERBS.contains(&verb) { verb } else { "other" };
        self.kube_requests
            .get_or_create(&KubeLabels {
                verb: verb.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn denial(&self, kind: &str) {
        self.denials
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn penalty(&self) {
        self.penalties.inc();
    }

    pub fn db_latency(&self, seconds: f64) {
        self.db_latency.observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Requests the metrics endpoint serves at once, and from one address;
/// more are dropped. A request's head must arrive within 2 s.
const MAX_METRICS_REQUESTS: usize = 64;
const MAX_METRICS_PER_SOURCE: usize = 8;

/// One address's place among the metrics requests; released on drop.
struct SourceSlot(
    Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    std::net::IpAddr,
);

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is dropped.
/// One request per connection: enough for Prometheus and probes.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, store: Store) {
    // Scrapes and probes are few; more at once is someone else, and one
    // address may not hold the others out.
    let busy = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_REQUESTS));
    let per_source: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
        Arc::default();
    loop {
        let (mut sock, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, typically: wait, do not spin.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = busy.clone().try_acquire_owned() else {
            // Dropped at once: the listener is not a resource to exhaust.
            continue;
        };
        let slot = {
            let mut map = per_source.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(peer.ip()).or_insert(0);
            if *n >= MAX_METRICS_PER_SOURCE {
                continue;
            }
            *n += 1;
            SourceSlot(per_source.clone(), peer.ip())
        };
        let metrics = metrics.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let _held = (permit, slot);
            // Read the request head: it may arrive in several pieces.
            let mut buf = Vec::with_capacity(1024);
            let head = async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            };
            let Ok(true) = tokio::time::timeout(std::time::Duration::from_secs(2), head).await
            else {
                return;
            };
            let req = String::from_utf8_lossy(&buf);
            let mut words = req.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
            let (status, body, ctype) = match path {
                _ if method != "GET" => (
                    "405 Method Not Allowed",
                    "only GET\n".to_string(),
                    "text/plain",
                ),
                "/metrics" => (
                    "200 OK",
                    metrics.render(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                "/healthz" => {
                    match tokio::time::timeout(std::time::Duration::from_secs(2), store.ping())
                        .await
                    {
                        Ok(Ok(())) => ("200 OK", "ok\n".to_string(), "text/plain"),
                        Ok(Err(e)) => (
                            "503 Service Unavailable",
                            format!("database unreachable: {e}\n"),
                            "text/plain",
                        ),
                        Err(_) => (
                            "503 Service Unavailable",
                            "database unreachable: timed out\n".to_string(),
                            "text/plain",
                        ),
                    }
                }
                _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
