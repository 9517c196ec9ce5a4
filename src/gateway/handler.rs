//! The russh handler of one connection: authentication and channel
//! dispatch, nothing else. Decisions are made by the store, the policy and
//! the command layer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};

use super::killable::KillSwitch;
use super::sessions::{ChannelKind, LiveChannel, NewSession, Refused};
use super::{ConnCtx, Shared, channel, forward};
use crate::audit::{Event, Outcome};
use crate::model::fingerprint_of;
use crate::store::Account;

pub struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    source: String,
    /// Account and key fingerprint accepted by `auth_publickey`.
    accepted: Option<(Account, String)>,
    /// A node that logged in to ask who may log in on it (see
    /// [`crate::nodes`]): such a session can do nothing else.
    node: Option<crate::store::AskingNode>,
    /// Its place among the node's connections (see `Registry::node_slot`).
    node_slot: Option<super::sessions::NodeSlot>,
    ctx: Option<Arc<ConnCtx>>,
    /// Set once authenticated, read by the login-grace timer.
    pub authenticated: Arc<AtomicBool>,
    failures: u32,
    last_user: String,
    /// Fingerprint of the last key refused, for the audit event.
    last_key: Option<String>,
    /// Cuts the connection's TCP stream (see `killable`).
    kill: Arc<KillSwitch>,
    /// Its place among unauthenticated connections, freed once it
    /// authenticates (or ends).
    startup: Option<super::startups::Slot>,
}

/// Why a key offered with a signature algorithm not in `server-sig-algs`
/// (in practice `ssh-rsa`, RSA with SHA-1) is refused.
const SIGNATURE_REFUSED: &str = "signature algorithm not accepted (ssh-rsa uses SHA-1; clients since OpenSSH 7.2 sign with rsa-sha2-256/512)";
const CERTIFICATE_REFUSED: &str = "certificates are not accepted (register the plain public key)";

fn publickey_only() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
        partial_success: false,
    }
}

impl Conn {
    pub fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        kill: Arc<KillSwitch>,
        startup: super::startups::Slot,
    ) -> Self {
        Conn {
            shared,
            peer,
            source: peer.to_string(),
            accepted: None,
            node: None,
            node_slot: None,
            ctx: None,
            authenticated: Arc::new(AtomicBool::new(false)),
            failures: 0,
            last_user: String::new(),
            last_key: None,
            kill,
            startup: Some(startup),
        }
    }

    /// The account allowed to log in as `user` with `key`, or why not; and
    /// whether the key is one of its pending keys (added over SSH and not
    /// yet proven: this login, once signed, proves it).
    async fn lookup(&self, user: &str, key: &PublicKey) -> Result<(Account, bool), &'static str> {
        let fp = fingerprint_of(key);
        let started = Instant::now();
        let store = &self.shared.store;
        let found = match store.account_for_login_key(user, &fp).await {
            Ok(None) => store
                .account_for_login_pending_key(user, &fp, crate::store::PENDING_KEY_MAX_AGE_MS)
                .await
                .map(|a| a.map(|a| (a, true))),
            other => other.map(|a| a.map(|a| (a, false))),
        };
        self.shared
            .metrics
            .db_latency(started.elapsed().as_secs_f64());
        match found {
            Ok(Some((a, pending))) if !a.is_disabled() => Ok((a, pending)),
            Ok(Some(_)) => Err("account disabled"),
            Ok(None) => Err("unknown login or key"),
            Err(e) => {
                // Fail closed: nobody gets in on stale or missing data.
                tracing::error!(error = %e, source = %self.source, "authentication refused: database unavailable");
                Err("database unavailable")
            }
        }
    }

    /// The enrolled node `node.NAME` whose credential is `key`.
    async fn node_lookup(
        &self,
        user: &str,
        key: &PublicKey,
    ) -> Result<crate::store::AskingNode, &'static str> {
        let name = user
            .strip_prefix(crate::nodes::NODE_LOGIN_PREFIX)
            .unwrap_or_default();
        match self
            .shared
            .store
            .asking_node(name, &fingerprint_of(key))
            .await
        {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err("unknown node or node credential"),
            Err(e) => {
                tracing::error!(error = %e, source = %self.source, "node authentication refused: database unavailable");
                Err("database unavailable")
            }
        }
    }

    fn refuse(&mut self, user: &str, why: &str, key: Option<&PublicKey>) -> Auth {
        self.failures += 1;
        self.last_user = user.to_string();
        if let Some(k) = key {
            self.last_key = Some(fingerprint_of(k));
        }
        self.shared.metrics.auth("failure");
        tracing::info!(source = %self.source, user = %crate::model::quoted(user), key = self.last_key.as_deref().unwrap_or("-"), reason = why, "authentication refused");
        publickey_only()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.authenticated.load(Ordering::Relaxed) {
            self.shared.penalties.noauth_closed(self.peer.ip());
        }
        if self.ctx.is_none() && self.failures > 0 {
            self.shared.penalties.failure(self.peer.ip(), &self.shared);
            let store = self.shared.store.clone();
            let key = match &self.last_key {
                Some(fp) => format!("; last key offered {fp}"),
                None => String::new(),
            };
            let event = Event {
                actor: crate::model::printable(&self.last_user, 64),
                source: self.source.clone(),
                project: None,
                action: "auth".into(),
                target: self.last_key.clone().unwrap_or_default(),
                args: String::new(),
                outcome: Outcome::Denied,
                detail: format!(
                    "Permission denied (publickey): {} refused attempt(s){key}",
                    self.failures
                ),
            };
            tokio::spawn(async move {
                let _ = store.audit(&event).await;
            });
        }
        if let Some(ctx) = self.ctx.take() {
            self.shared.registry.remove(&ctx.session_id);
            self.shared.metrics.connection_closed();
            tracing::info!(session = %ctx.session_id, account = %ctx.account.login, source = %self.source, "session closed");
        }
    }
}

// The methods that wait on the database or the registry run boxed: an
// `async fn` of the handler is stored inline in russh's per-connection
// task, whose size is that of its largest awaited future, for the
// connection's whole life (memory per idle session, see BENCHMARKS.md).
impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(publickey_only())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.refuse(user, "password authentication is not accepted", None))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.refuse(
            user,
            "keyboard-interactive authentication is not accepted",
            None,
        ))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Box::pin(async move {
            // Refused at the offer, so the client is never told "key accepted"
            // for something the signed request would then be refused for.
            if offer.certificate.is_some() {
                return Ok(self.refuse(user, CERTIFICATE_REFUSED, Some(offer.public_key)));
            }
            if !super::algorithms::accepts_user_signature(offer.algorithm) {
                return Ok(self.refuse(user, SIGNATURE_REFUSED, Some(offer.public_key)));
            }
            if user.starts_with(crate::nodes::NODE_LOGIN_PREFIX) {
                return Ok(match self.node_lookup(user, offer.public_key).await {
                    Ok(_) => Auth::Accept,
                    Err(why) => self.refuse(user, why, Some(offer.public_key)),
                });
            }
            match self.lookup(user, offer.public_key).await {
                Ok(_) => Ok(Auth::Accept),
                Err(why) => Ok(self.refuse(user, why, Some(offer.public_key))),
            }
        })
        .await
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Box::pin(async move {
            // Checked again as the last word: russh does not call
            // `auth_publickey_offered` for a signed request that repeats an
            // accepted query.
            if !super::algorithms::accepts_user_signature(key.algorithm) {
                return Ok(self.refuse(user, SIGNATURE_REFUSED, Some(key.public_key)));
            }
            if user.starts_with(crate::nodes::NODE_LOGIN_PREFIX) {
                return Ok(match self.node_lookup(user, key.public_key).await {
                    Ok(node) => {
                        self.node = Some(node);
                        Auth::Accept
                    }
                    Err(why) => self.refuse(user, why, Some(key.public_key)),
                });
            }
            // Looked up again: the signature is now proven, and the account may
            // have changed since the offer.
            let (account, pending) = match self.lookup(user, key.public_key).await {
                Ok(found) => found,
                Err(why) => return Ok(self.refuse(user, why, Some(key.public_key))),
            };
            if pending {
                let fp = fingerprint_of(key.public_key);
                if let Err(e) = self.shared.store.confirm_pending_key(account.id, &fp).await {
                    tracing::info!(account = %account.login, key = %fp, error = %e, "pending key not confirmed");
                    return Ok(self.refuse(
                        user,
                        "pending key could not be confirmed",
                        Some(key.public_key),
                    ));
                }
                tracing::info!(account = %account.login, key = %fp, "pending key confirmed by a signed login");
                let event = Event {
                    actor: account.login.clone(),
                    source: self.source.clone(),
                    project: None,
                    action: "key confirm".into(),
                    target: fp.clone(),
                    args: String::new(),
                    outcome: Outcome::Ok,
                    detail: "a key added over SSH proved by a login signed with it".into(),
                };
                let _ = self.shared.store.audit(&event).await;
            }
            self.accepted = Some((account, fingerprint_of(key.public_key)));
            Ok(Auth::Accept)
        })
        .await
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        _c: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(self.refuse(user, CERTIFICATE_REFUSED, None))
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        Box::pin(async move {
            if let Some(node) = &self.node {
                self.authenticated.store(true, Ordering::Relaxed);
                self.startup = None;
                match self.shared.registry.node_slot(node.id) {
                    Some(slot) => self.node_slot = Some(slot),
                    None => {
                        tracing::warn!(node = %node.name, source = %self.source, "node connection refused: too many at once");
                        self.shared.metrics.session_refused("node_sessions");
                        session.disconnect(
                            russh::Disconnect::TooManyConnections,
                            "too many connections for this node at once",
                            "en",
                        )?;
                        return Ok(());
                    }
                }
                tracing::info!(node = %node.name, source = %self.source, "node authenticated");
                return Ok(());
            }
            let Some((account, fingerprint)) = self.accepted.take() else {
                return Err(russh::Error::NotAuthenticated);
            };
            self.authenticated.store(true, Ordering::Relaxed);
            self.startup = None;
            // The key exchange's buffers are free now.
            super::memory::note_churn();
            self.shared.penalties.success(self.peer.ip());
            self.shared.metrics.auth("success");
            let activity = Arc::new(std::sync::atomic::AtomicI64::new(crate::store::now_ms()));
            let max = self.shared.config.limits.max_sessions_per_account;
            let added = self.shared.registry.add(
                NewSession {
                    account_id: account.id,
                    login: account.login.clone(),
                    fingerprint: fingerprint.clone(),
                    source: self.source.clone(),
                    handle: session.handle(),
                    activity: activity.clone(),
                    kill: self.kill.clone(),
                },
                max,
            );
            let session_id = match added {
                Ok(id) => id,
                Err(limit) => {
                    // The key was right: this is a limit, not a failed login, so
                    // no penalty; the client prints the disconnect message.
                    self.shared
                        .metrics
                        .session_refused("max_sessions_per_account");
                    tracing::warn!(account = %account.login, source = %self.source, limit, "session refused: max_sessions_per_account reached");
                    let why = format!(
                        "too many sessions: {} already has {limit} open on this gateway (limits.max_sessions_per_account); close one and try again",
                        account.login
                    );
                    session.disconnect(russh::Disconnect::TooManyConnections, &why, "en")?;
                    return Ok(());
                }
            };
            self.shared.metrics.connection_opened();
            tracing::info!(session = %session_id, account = %account.login, source = %self.source, key = %fingerprint, "authenticated");
            let store = self.shared.store.clone();
            let event = Event {
                actor: account.login.clone(),
                source: self.source.clone(),
                project: None,
                action: "auth".into(),
                target: String::new(),
                args: String::new(),
                outcome: Outcome::Ok,
                detail: format!("session {session_id} with key {fingerprint}"),
            };
            tokio::spawn(async move {
                let _ = store.audit(&event).await;
            });
            let ctx = Arc::new(ConnCtx {
                shared: self.shared.clone(),
                account,
                fingerprint,
                source: self.source.clone(),
                session_id,
                activity,
                opening: Arc::new(tokio::sync::Semaphore::new(super::MAX_OPENING)),
                waiting: Arc::new(tokio::sync::Semaphore::new(super::MAX_WAITING)),
                refusals: std::sync::Mutex::new((super::REFUSAL_BURST, std::time::Instant::now())),
            });
            self.ctx = Some(ctx);
            Ok(())
        })
        .await
    }

    /// Called for data on every channel, forwards included: only used to
    /// note that the connection is not idle.
    async fn data(
        &mut self,
        _channel: ChannelId,
        _data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(ctx) = &self.ctx {
            ctx.touch();
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Box::pin(async move {
            if let Some(node) = self.node.clone() {
                reply.accept().await;
                tokio::spawn(super::node_channel::run(
                    self.shared.clone(),
                    node,
                    self.source.clone(),
                    channel,
                ));
                return Ok(());
            }
            let Some(ctx) = self.ctx.clone() else {
                return Ok(());
            };
            let id = channel.id();
            // Registered before it is accepted, so the channel limits apply and
            // a revocation finds it from its first byte.
            let live = LiveChannel::new(ChannelKind::Exec);
            let cancel = live.cancel.clone();
            match ctx
                .shared
                .registry
                .add_channel(&ctx.session_id, id, live, None)
            {
                Ok(()) => {}
                Err(Refused::Limit(why)) => {
                    ctx.shared.metrics.denial("max_channels");
                    tracing::warn!(account = %ctx.account.login, source = %self.source, reason = %why, "session channel refused");
                    reply
                        .reject(russh::ChannelOpenFailure::Other {
                            code: russh::ChannelOpenFailure::ResourceShortage.code(),
                            reason: why,
                        })
                        .await;
                    return Ok(());
                }
                Err(_) => return Ok(()),
            }
            reply.accept().await;
            let task_ctx = ctx.clone();
            tokio::spawn(async move {
                let _open = task_ctx.shared.metrics.channel_open("session");
                channel::run(task_ctx.clone(), channel, cancel).await;
                task_ctx
                    .shared
                    .registry
                    .remove_channel(&task_ctx.session_id, id);
            });
            Ok(())
        })
        .await
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Box::pin(async move {
            let Some(ctx) = self.ctx.clone() else {
                if self.node.is_some() {
                    let target = format!(
                        "forward {}:{port_to_connect}",
                        crate::model::printable(host_to_connect, 253)
                    );
                    self.shared.metrics.denial("forward");
                    self.audit_refusal(&target, "a node's session may only ask who may log in")
                        .await;
                }
                return Ok(());
            };
            // Cheap refusals first: no database work for a client that floods.
            let busy = if ctx.refusals_spent() {
                Some("too many refused channel opens on this connection; slow down")
            } else {
                None
            };
            let waiting = match (busy, ctx.waiting.clone().try_acquire_owned()) {
                (None, Ok(p)) => p,
                (why, _) => {
                    let why = why.unwrap_or("too many channel opens waiting on this connection");
                    self.shared.metrics.denial("open_rate");
                    reply
                        .reject(russh::ChannelOpenFailure::Other {
                            code: russh::ChannelOpenFailure::ResourceShortage.code(),
                            reason: why.to_string(),
                        })
                        .await;
                    return Ok(());
                }
            };
            let host = host_to_connect.to_string();
            tokio::spawn(async move {
                // Opens take turns: a burst (50 tunnelled connections at once)
                // waits instead of being refused.
                let Ok(permit) = ctx.opening.clone().acquire_owned().await else {
                    return;
                };
                drop(waiting);
                forward::run(ctx, channel, host, port_to_connect, reply, permit).await;
            });
            Ok(())
        })
        .await
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Box::pin(async move {
            self.shared.metrics.denial("subsystem");
            let what = format!("subsystem {}", crate::model::quoted(name));
            self.audit_refusal(&what, "subsystems (sftp) are not served by the gateway")
                .await;
            session.channel_failure(channel)?;
            Ok(())
        })
        .await
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Box::pin(async move {
            self.shared.metrics.denial("x11");
            self.audit_refusal("x11 forwarding", "X11 forwarding is not allowed")
                .await;
            session.channel_failure(channel)?;
            Ok(())
        })
        .await
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Box::pin(async move {
            self.shared.metrics.denial("agent");
            self.audit_refusal("agent forwarding", "agent forwarding is not allowed")
                .await;
            Ok(false)
        })
        .await
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Box::pin(async move {
            self.shared.metrics.denial("remote_forward");
            let target = format!("{}:{port}", crate::model::quoted(address));
            self.audit_refusal(
                &format!("remote forward {target}"),
                "remote forwarding (-R) is not allowed",
            )
            .await;
            Ok(false)
        })
        .await
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Box::pin(async move {
            self.shared.metrics.denial("streamlocal");
            let what = format!("streamlocal forward {}", crate::model::quoted(socket_path));
            self.audit_refusal(&what, "unix socket forwarding is not allowed")
                .await;
            Ok(false)
        })
        .await
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Box::pin(async move {
            self.shared.metrics.denial("streamlocal");
            let what = format!("streamlocal {}", crate::model::quoted(socket_path));
            self.audit_refusal(&what, "unix socket forwarding is not allowed")
                .await;
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            Ok(())
        })
        .await
    }
}

impl Conn {
    async fn audit_refusal(&self, what: &str, why: &str) {
        let actor = match (&self.ctx, &self.node) {
            (Some(ctx), _) => ctx.account.login.clone(),
            (None, Some(node)) => format!("{}{}", crate::nodes::NODE_LOGIN_PREFIX, node.name),
            (None, None) => return,
        };
        tracing::warn!(account = %actor, source = %self.source, request = %what, "refused: {why}");
        if !crate::audit::admit_denial(&actor) {
            return;
        }
        let event = Event {
            actor,
            source: self.source.clone(),
            project: None,
            action: what.to_string(),
            target: String::new(),
            args: String::new(),
            outcome: Outcome::Denied,
            detail: why.to_string(),
        };
        let _ = self.shared.store.audit(&event).await;
    }
}
