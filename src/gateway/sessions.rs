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
use tokio::task::AbortHandle;

use crate::commands::{ChannelInfo, SessionInfo, Sessions};
use crate::store::{Revocation, Store, format_time, now_ms};

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
    pub counters: Arc<Counters>,
    pub task: Option<AbortHandle>,
}

struct LiveSession {
    account_id: i64,
    login: String,
    fingerprint: String,
    source: String,
    started_ms: i64,
    handle: Handle,
    channels: HashMap<ChannelId, LiveChannel>,
    /// When traffic last moved, in ms since the epoch (see `ConnCtx::touch`).
    activity: Arc<std::sync::atomic::AtomicI64>,
    /// The shells were told this session is about to close for idleness.
    warned: bool,
}

pub struct Registry {
    sessions: Mutex<HashMap<String, LiveSession>>,
    next: AtomicU64,
    /// Distinguishes this replica's session ids from other replicas'.
    prefix: String,
    wake: Notify,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        let prefix = format!("{:04x}", rand::random::<u16>());
        Arc::new(Registry {
            sessions: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            prefix,
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, LiveSession>> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an authenticated connection; returns its id, or the limit
    /// when the account already holds `max_per_account` sessions (checked
    /// and registered under one lock, so racing logins cannot both pass).
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &self,
        account_id: i64,
        login: &str,
        fingerprint: &str,
        source: &str,
        handle: Handle,
        activity: Arc<std::sync::atomic::AtomicI64>,
        max_per_account: usize,
    ) -> Result<String, usize> {
        let mut sessions = self.lock();
        let held = sessions
            .values()
            .filter(|s| s.account_id == account_id)
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
                account_id,
                login: login.to_string(),
                fingerprint: fingerprint.to_string(),
                source: source.to_string(),
                started_ms: now_ms(),
                handle,
                channels: HashMap::new(),
                activity,
                warned: false,
            },
        );
        Ok(id)
    }

    pub fn remove(&self, id: &str) {
        if let Some(s) = self.lock().remove(id) {
            for ch in s.channels.values() {
                if let Some(t) = &ch.task {
                    t.abort();
                }
            }
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    pub fn add_channel(&self, session: &str, id: ChannelId, ch: LiveChannel) {
        if let Some(s) = self.lock().get_mut(session) {
            s.channels.insert(id, ch);
        } else if let Some(t) = ch.task {
            // The session ended meanwhile.
            t.abort();
        }
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

    pub fn set_channel_task(&self, session: &str, id: ChannelId, task: AbortHandle) {
        match self
            .lock()
            .get_mut(session)
            .and_then(|s| s.channels.get_mut(&id))
        {
            Some(ch) => ch.task = Some(task),
            None => task.abort(),
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
        for (id, s) in sessions.iter_mut() {
            let whole = match r {
                Revocation::Account { account_id } => s.account_id == *account_id,
                Revocation::Key {
                    account_id,
                    fingerprint,
                } => s.account_id == *account_id && &s.fingerprint == fingerprint,
                Revocation::Session { id: sid } => sid == id,
                _ => false,
            };
            let why = r.reason();
            if whole {
                tracing::info!(session = %id, account = %s.login, reason = %why, "ending session");
                for ch in s.channels.values() {
                    if let Some(t) = &ch.task {
                        t.abort();
                    }
                }
                tokio::spawn(disconnect(s.handle.clone(), why.clone()));
                ended += 1;
                continue;
            }
            let doomed: Vec<ChannelId> = s
                .channels
                .iter()
                .filter(|(_, ch)| match r {
                    Revocation::Membership {
                        account_id,
                        project,
                    } => s.account_id == *account_id && ch.project.as_deref() == Some(project),
                    Revocation::Project { project } => ch.project.as_deref() == Some(project),
                    Revocation::Cluster { project, cluster } => {
                        ch.kind == ChannelKind::Forward
                            && ch.project.as_deref() == Some(project)
                            && ch.cluster.as_deref() == Some(cluster)
                    }
                    Revocation::Node {
                        project,
                        cluster,
                        node,
                    } => {
                        ch.kind == ChannelKind::Forward
                            && ch.project.as_deref() == Some(project)
                            && ch.cluster.as_deref() == Some(cluster)
                            && ch.node.as_deref() == Some(node)
                    }
                    _ => false,
                })
                .map(|(id, _)| *id)
                .collect();
            for ch_id in doomed {
                if let Some(ch) = s.channels.remove(&ch_id) {
                    tracing::info!(session = %id, account = %s.login, kind = ch.kind.as_str(), target = ?ch.target, reason = %why, "ending channel");
                    if let Some(t) = ch.task {
                        t.abort();
                    }
                    let handle = s.handle.clone();
                    let kind = ch.kind;
                    let why = why.clone();
                    tokio::spawn(async move {
                        // A person at a shell or command is told why, in the
                        // words a disconnect would use.
                        match kind {
                            ChannelKind::Shell => {
                                let line = format!("\r\ngatehouse: {why}\r\n");
                                let _ = handle.data(ch_id, line.into_bytes()).await;
                            }
                            ChannelKind::Exec => {
                                let line = format!("gatehouse: {why}\n");
                                let _ = handle.extended_data(ch_id, 1, line.into_bytes()).await;
                            }
                            ChannelKind::Forward => {}
                        }
                        let _ = handle.close(ch_id).await;
                    });
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
                tracing::info!(session = %id, account = %s.login, idle = ?quiet, "closing idle session");
                tokio::spawn(disconnect(s.handle.clone(), "idle timeout"));
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
                            let _ = handle.data(ch, msg.clone().into_bytes()).await;
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

    /// Tells every live session something (shutdown notice).
    pub fn handles(&self) -> Vec<(Handle, Vec<(ChannelId, ChannelKind)>)> {
        self.lock()
            .values()
            .map(|s| {
                (
                    s.handle.clone(),
                    s.channels.iter().map(|(id, c)| (*id, c.kind)).collect(),
                )
            })
            .collect()
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

/// Ends a session with an SSH disconnect message giving `reason`.
pub async fn disconnect(handle: Handle, reason: impl Into<String>) {
    let _ = handle
        .disconnect(
            russh::Disconnect::ByApplication,
            reason.into(),
            String::new(),
        )
        .await;
}
