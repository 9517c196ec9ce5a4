//! The live-session registry of this gateway: every authenticated
//! connection, its channels and what they reach, and the one place that ends
//! them when access is revoked (by following the store's revocation feed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use russh::ChannelId;
use russh::server::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::killable::KillSwitch;
use crate::commands::{ChannelInfo, SessionInfo, Sessions};
use crate::policy::Action;
use crate::store::{ChannelFacts, Revocation, Store, format_time, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Shell,
    Exec,
    Forward,
}

impl ChannelKind {
    fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Shell => "shell",
            ChannelKind::Exec => "exec",
            ChannelKind::Forward => "forward",
        }
    }
}

/// Bytes moved by one forward, updated as they flow.
#[derive(Debug, Default)]
pub struct Counters {
    pub to_target: AtomicU64,
    pub from_target: AtomicU64,
}

pub struct LiveChannel {
    pub kind: ChannelKind,
    pub project: Option<String>,
    pub cluster: Option<String>,
    pub node: Option<String>,
    pub target: Option<String>,
    /// What a forward serves (nodes, the Kubernetes API, the dashboard):
    /// API and dashboard forwards end when the cluster's settings change.
    pub action: Option<Action>,
    pub counters: Arc<Counters>,
    /// Cancelled when access is revoked or the session ends. Channel tasks
    /// watch it and stop at a safe point (never in the middle of a
    /// command's change and its audit event).
    pub cancel: CancellationToken,
}

impl LiveChannel {
    fn facts(&self) -> ChannelFacts<'_> {
        ChannelFacts {
            forward: self.kind == ChannelKind::Forward,
            api: matches!(
                self.action,
                Some(Action::UseKubernetes | Action::AccessDashboard)
            ),
            kube: self.kind == ChannelKind::Forward && self.action == Some(Action::UseKubernetes),
            project: self.project.as_deref(),
            cluster: self.cluster.as_deref(),
            node: self.node.as_deref(),
        }
    }

    pub fn new(kind: ChannelKind) -> LiveChannel {
        LiveChannel {
            kind,
            project: None,
            cluster: None,
            node: None,
            target: None,
            action: None,
            counters: Arc::new(Counters::default()),
            cancel: CancellationToken::new(),
        }
    }
}

/// What identifies an authenticated connection in the registry.
pub struct NewSession {
    pub account_id: i64,
    pub login: String,
    pub fingerprint: String,
    pub source: String,
    pub handle: Handle,
    pub activity: Arc<std::sync::atomic::AtomicI64>,
    /// Cuts the TCP stream when a disconnect cannot be delivered.
    pub kill: Arc<KillSwitch>,
}

struct LiveSession {
    account_id: i64,
    login: String,
    fingerprint: String,
    source: String,
    started_ms: i64,
    handle: Handle,
    kill: Arc<KillSwitch>,
    channels: HashMap<ChannelId, LiveChannel>,
    /// When traffic last moved, in ms since the epoch (see `ConnCtx::touch`).
    activity: Arc<std::sync::atomic::AtomicI64>,
    /// The shells were told this session is about to close for idleness.
    warned: bool,
    /// A disconnect is under way: sweeps do not start another.
    closing: bool,
}

/// Why a channel could not be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The session has ended.
    Gone,
    /// A revocation was applied since the caller read the generation: its
    /// access check may be stale; check again.
    Stale,
    /// A channel limit; the text says which.
    Limit(String),
}

/// Open channels one connection, and one account, may hold.
#[derive(Debug, Clone, Copy)]
pub struct ChannelLimits {
    pub per_connection: usize,
    pub per_account: usize,
}

/// Connections one node may hold at once: its sshd opens one per login
/// question, briefly.
pub const MAX_NODE_SESSIONS: usize = 16;

/// One connection of a node; released on drop.
pub struct NodeSlot {
    registry: Arc<Registry>,
    node: i64,
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        let mut nodes = self
            .registry
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = nodes.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                nodes.remove(&self.node);
            }
        }
    }
}

pub struct Registry {
    sessions: Mutex<HashMap<String, LiveSession>>,
    /// Open connections per node (node sessions are not in `sessions`).
    nodes: Mutex<HashMap<i64, usize>>,
    next: AtomicU64,
    /// How many revocations this registry has applied; changed only with
    /// the lock held, so a channel registered under the lock with the
    /// generation its access check started from cannot miss one.
    generation: AtomicU64,
    limits: ChannelLimits,
    /// Distinguishes this replica's session ids from other replicas'.
    prefix: String,
    wake: Notify,
}

impl Registry {
    pub fn new(limits: ChannelLimits) -> Arc<Registry> {
        let prefix = format!("{:04x}", rand::random::<u16>());
        Arc::new(Registry {
            sessions: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            limits,
            prefix,
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, LiveSession>> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more connection of node `node`, or `None` when it
    /// holds [`MAX_NODE_SESSIONS`] already.
    pub fn node_slot(self: &Arc<Self>, node: i64) -> Option<NodeSlot> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let n = nodes.entry(node).or_insert(0);
        if *n >= MAX_NODE_SESSIONS {
            return None;
        }
        *n += 1;
        Some(NodeSlot {
            registry: self.clone(),
            node,
        })
    }

    /// Read before an access check whose result will be registered with
    /// [`Registry::add_channel`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Registers an authenticated connection; returns its id, or the limit
    /// when the account already holds `max_per_account` sessions (checked
    /// and registered under one lock, so racing logins cannot both pass).
    pub fn add(&self, new: NewSession, max_per_account: usize) -> Result<String, usize> {
        let mut sessions = self.lock();
        let held = sessions
            .values()
            .filter(|s| s.account_id == new.account_id)
            .count();
        if held >= max_per_account {
            return Err(max_per_account);
        }
        let id = format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        sessions.insert(
            id.clone(),
            LiveSession {
                account_id: new.account_id,
                login: new.login,
                fingerprint: new.fingerprint,
                source: new.source,
                started_ms: now_ms(),
                handle: new.handle,
                kill: new.kill,
                channels: HashMap::new(),
                activity: new.activity,
                warned: false,
                closing: false,
            },
        );
        Ok(id)
    }

    /// Forgets a closed connection and stops its channels.
    pub fn remove(&self, id: &str) {
        if let Some(s) = self.lock().remove(id) {
            for ch in s.channels.values() {
                ch.cancel.cancel();
            }
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Registers a channel before it can carry a byte. With `seen` (the
    /// [`Registry::generation`] read before the caller's access check), a
    /// revocation applied since makes it [`Refused::Stale`]: check again.
    /// The channel limits are checked under the same lock.
    pub fn add_channel(
        &self,
        session: &str,
        id: ChannelId,
        ch: LiveChannel,
        seen: Option<u64>,
    ) -> Result<(), Refused> {
        let mut sessions = self.lock();
        if seen.is_some_and(|g| g != self.generation.load(Ordering::SeqCst)) {
            return Err(Refused::Stale);
        }
        let Some(s) = sessions.get(session) else {
            return Err(Refused::Gone);
        };
        let account = s.account_id;
        if s.channels.len() >= self.limits.per_connection {
            return Err(Refused::Limit(format!(
                "too many open channels on this connection (limits.max_channels_per_connection = {})",
                self.limits.per_connection
            )));
        }
        let of_account: usize = sessions
            .values()
            .filter(|s| s.account_id == account)
            .map(|s| s.channels.len())
            .sum();
        if of_account >= self.limits.per_account {
            return Err(Refused::Limit(format!(
                "too many open channels for this account (limits.max_channels_per_account = {})",
                self.limits.per_account
            )));
        }
        if let Some(s) = sessions.get_mut(session) {
            s.channels.insert(id, ch);
        }
        Ok(())
    }

    /// A session channel becomes a shell or a command, in a project.
    pub fn update_channel(
        &self,
        session: &str,
        id: ChannelId,
        kind: ChannelKind,
        project: Option<String>,
    ) {
        if let Some(ch) = self
            .lock()
            .get_mut(session)
            .and_then(|s| s.channels.get_mut(&id))
        {
            ch.kind = kind;
            ch.project = project;
        }
    }

    pub fn remove_channel(&self, session: &str, id: ChannelId) {
        if let Some(s) = self.lock().get_mut(session) {
            s.channels.remove(&id);
        }
    }

    /// Ends what `r` revokes on this gateway; returns how many sessions and
    /// channels it ended.
    pub fn apply(&self, r: &Revocation) -> usize {
        let mut ended = 0;
        let mut sessions = self.lock();
        // Under the lock: a channel registered after this saw the change.
        self.generation.fetch_add(1, Ordering::SeqCst);
        let why = r.reason();
        for (id, s) in sessions.iter_mut() {
            let doomed: Vec<ChannelId> = s
                .channels
                .iter()
                .filter(|(_, ch)| r.ends_channel(s.account_id, id, ch.facts()))
                .map(|(id, _)| *id)
                .collect();
            let whole = match r {
                Revocation::Account { account_id } => s.account_id == *account_id,
                Revocation::Key {
                    account_id,
                    fingerprint,
                } => s.account_id == *account_id && &s.fingerprint == fingerprint,
                // A project admin's kill ends the session only when nothing
                // of it belongs to another project.
                Revocation::Session { id: sid, project } => {
                    sid == id
                        && project.as_ref().is_none_or(|p| {
                            s.channels
                                .values()
                                .all(|c| c.project.as_ref().is_none_or(|cp| cp == p))
                        })
                }
                _ => false,
            };
            if whole {
                tracing::info!(session = %id, account = %s.login, reason = %why, "ending session");
                end_session(s, why.clone());
                ended += 1;
                continue;
            }
            for ch_id in doomed {
                if let Some(ch) = s.channels.remove(&ch_id) {
                    tracing::info!(session = %id, account = %s.login, kind = ch.kind.as_str(), target = ?ch.target, reason = %why, "ending channel");
                    end_channel(&s.handle, ch_id, ch, why.clone());
                    ended += 1;
                }
            }
        }
        ended
    }

    /// Follows the store's revocation feed until the task is dropped:
    /// polls twice a second, and at once when nudged.
    pub async fn follow(self: Arc<Self>, store: Store) {
        let mut last = loop {
            match store.revocation_head().await {
                Ok(id) => break id,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the revocation feed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut polls: u64 = 0;
        // Say so once when the feed becomes unreadable, and once when it is back.
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.wake.notified() => {}
            }
            match store.revocations_after(last).await {
                Ok(list) => {
                    if failing {
                        tracing::info!("revocation feed readable again");
                        failing = false;
                    }
                    for (id, r) in list {
                        self.apply(&r);
                        last = id;
                    }
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot read the revocation feed; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            polls += 1;
            if polls.is_multiple_of(1200) {
                let _ = store.prune_revocations(3_600_000).await;
            }
        }
    }

    /// Closes sessions quiet for `idle`, and warns their shells `warn_before`
    /// that. One sweep serves every session: no timer task per connection.
    pub fn sweep_idle(&self, idle: Duration, warn_before: Duration) {
        let now = now_ms();
        for (id, s) in self.lock().iter_mut() {
            let quiet =
                Duration::from_millis((now - s.activity.load(Ordering::Relaxed)).max(0) as u64);
            if quiet >= idle {
                if !s.closing {
                    tracing::info!(session = %id, account = %s.login, idle = ?quiet, "closing idle session");
                    end_session(s, "idle timeout".into());
                }
            } else if quiet + warn_before >= idle {
                if !s.warned {
                    s.warned = true;
                    let left = (idle - quiet).as_secs().max(1);
                    let msg = format!(
                        "\r\n*** gatehouse: this session is idle and closes in {left}s unless you type something ***\r\n"
                    );
                    let shells: Vec<ChannelId> = s
                        .channels
                        .iter()
                        .filter(|(_, c)| c.kind == ChannelKind::Shell)
                        .map(|(id, _)| *id)
                        .collect();
                    let handle = s.handle.clone();
                    tokio::spawn(async move {
                        for ch in shells {
                            let _ = tokio::time::timeout(
                                SEND_TIMEOUT,
                                handle.data(ch, msg.clone().into_bytes()),
                            )
                            .await;
                        }
                    });
                }
            } else {
                s.warned = false;
            }
        }
    }

    /// Runs [`Registry::sweep_idle`] until the task is dropped.
    pub async fn watch_idle(self: Arc<Self>, idle: Duration) {
        let warn_before = (idle / 2).min(Duration::from_secs(60));
        let tick = (idle / 8).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::time::sleep(tick).await;
            self.sweep_idle(idle, warn_before);
        }
    }

    /// Tells every shell something (the shutdown notice), without waiting
    /// on any client.
    pub fn tell_shells(&self, text: &'static str) {
        for s in self.lock().values() {
            for (id, c) in &s.channels {
                if c.kind == ChannelKind::Shell {
                    let (handle, id) = (s.handle.clone(), *id);
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(SEND_TIMEOUT, handle.data(id, text.as_bytes()))
                                .await;
                    });
                }
            }
        }
    }

    /// Ends every session with `reason`; each is cut within
    /// [`SEND_TIMEOUT`] twice over, whatever its client does.
    pub fn end_all(&self, reason: &str) {
        for s in self.lock().values_mut() {
            end_session(s, reason.to_string());
        }
    }

    pub fn session_count(&self) -> usize {
        self.lock().len()
    }

    pub fn forwards_open(&self) -> usize {
        self.lock()
            .values()
            .map(|s| {
                s.channels
                    .values()
                    .filter(|c| c.kind == ChannelKind::Forward)
                    .count()
            })
            .sum()
    }
}

impl Sessions for Registry {
    fn list(&self) -> Vec<SessionInfo> {
        let mut list: Vec<SessionInfo> = self
            .lock()
            .iter()
            .map(|(id, s)| SessionInfo {
                id: id.clone(),
                account_id: s.account_id,
                login: s.login.clone(),
                source: s.source.clone(),
                started: format_time(s.started_ms),
                channels: s
                    .channels
                    .values()
                    .map(|c| ChannelInfo {
                        kind: c.kind.as_str().to_string(),
                        project: c.project.clone(),
                        target: c.target.clone(),
                        bytes_in: c.counters.from_target.load(Ordering::Relaxed),
                        bytes_out: c.counters.to_target.load(Ordering::Relaxed),
                    })
                    .collect(),
            })
            .collect();
        list.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
        list
    }

    fn forwards_to(&self, project: &str, cluster: &str, nodes: &[String]) -> usize {
        self.lock()
            .values()
            .flat_map(|s| s.channels.values())
            .filter(|c| {
                c.kind == ChannelKind::Forward
                    && c.project.as_deref() == Some(project)
                    && c.cluster.as_deref() == Some(cluster)
                    && c.node.as_ref().is_some_and(|n| nodes.contains(n))
            })
            .count()
    }

    fn nudge(&self) {
        self.wake.notify_one();
    }
}

/// How long a message to a session may wait to be queued: a connection
/// whose client stops reading must not hold up the gateway.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Stops every channel of a session and disconnects it with `reason`; if
/// the disconnect cannot be delivered in time, the TCP stream is cut. Marks
/// the session closing so a sweep does not start a second one.
fn end_session(s: &mut LiveSession, reason: String) {
    s.closing = true;
    let tokens: Vec<CancellationToken> = s.channels.values().map(|c| c.cancel.clone()).collect();
    let (handle, kill) = (s.handle.clone(), s.kill.clone());
    tokio::spawn(async move {
        // The disconnect goes first, so the client learns why before any
        // channel closes; then the channels stop whether it arrived or not.
        let sent = tokio::time::timeout(
            SEND_TIMEOUT,
            handle.disconnect(russh::Disconnect::ByApplication, reason, String::new()),
        )
        .await;
        for t in tokens {
            t.cancel();
        }
        // Delivered or not, the connection ends: give a delivered message
        // time to reach the client, then cut what is left.
        if sent.is_ok() {
            tokio::time::sleep(SEND_TIMEOUT).await;
        }
        kill.kill();
    });
}

/// Stops one channel: a forward stops piping (its task audits the end); a
/// person at a shell or command is told why, in the words a disconnect
/// would use, and the channel is closed.
fn end_channel(handle: &Handle, id: ChannelId, ch: LiveChannel, why: String) {
    ch.cancel.cancel();
    let handle = handle.clone();
    tokio::spawn(async move {
        let told = match ch.kind {
            ChannelKind::Shell => {
                let line = format!("\r\ngatehouse: {why}\r\n");
                tokio::time::timeout(SEND_TIMEOUT, handle.data(id, line.into_bytes()))
                    .await
                    .is_ok()
            }
            ChannelKind::Exec => {
                let line = format!("gatehouse: {why}\n");
                tokio::time::timeout(SEND_TIMEOUT, handle.extended_data(id, 1, line.into_bytes()))
                    .await
                    .is_ok()
            }
            ChannelKind::Forward => true,
        };
        if told && ch.kind != ChannelKind::Forward {
            let _ = tokio::time::timeout(SEND_TIMEOUT, handle.close(id)).await;
        }
    });
}
