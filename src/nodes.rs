//! Nodes trust the gateway: a node's sshd asks, at each login, which keys
//! may log in as a Unix user (`AuthorizedKeysCommand`, sshd_config(5)), and
//! the gateway answers from the same membership and policy as everything
//! else. This module decides the answer and writes what a node needs to
//! ask (`gatehouse node enroll`); the SSH side is in `gateway::node_channel`.
//!
//! How a node asks: its own OpenSSH client logs in to the gateway as
//! `node.NAME` with the node's enrolment key (a credential of its own,
//! replaced by every enrolment) and runs the one command nodes may run,
//! `authorized-keys LOGIN FINGERPRINT`; the gateway's host key is pinned in
//! the node's `known_hosts`. So the channel is authenticated both ways and
//! encrypted with nothing on the node beyond `openssh-server`'s client.

use std::net::IpAddr;

use crate::model::{Login, fingerprint_of, parse_fingerprint, quoted};
use crate::policy::{Action, Decision, authorize};
use crate::store::{AskingNode, KeyHolder};

/// The SSH user name prefix a node logs in with: `node.NAME`. Account
/// logins never contain a dot, so the two cannot collide.
pub const NODE_LOGIN_PREFIX: &str = "node.";

/// The only `-R` listen a granted key may make: a `.invalid` name never
/// resolves, so none is made.
const NO_LISTEN: &str = "gatehouse.invalid:1";

/// The node's own keys, tried before the gateway is asked.
pub const BREAKGLASS: &str = "breakglass_keys";

/// The one command a node may run.
pub const COMMAND: &str = "authorized-keys";

/// A node's question: may the holder of `fingerprint` log in as `login`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub login: String,
    pub fingerprint: String,
}

impl Question {
    /// Parses `authorized-keys LOGIN FINGERPRINT` (sshd's `%u %f`).
    pub fn parse(command: &str) -> Result<Question, String> {
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            [cmd, login, fp] if *cmd == COMMAND => {
                let login = Login::parse(login).map_err(|e| e.0)?;
                let fingerprint = parse_fingerprint(fp).map_err(|e| e.0)?;
                Ok(Question {
                    login: login.to_string(),
                    fingerprint,
                })
            }
            _ => Err(format!(
                "nodes may only run `{COMMAND} LOGIN FINGERPRINT`, not {}",
                quoted(command)
            )),
        }
    }
}

/// The gateway's answer to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `authorized_keys` lines, and whose key it is (for the audit log).
    Grant { line: String, email: String },
    /// Nothing is printed; the reason goes to the audit log.
    Refuse(String),
}

/// Decides a node's question from who holds the key (`holder`, looked up
/// for the node's cluster) and the node's place. `from` are the addresses
/// the gateway reaches the node from: the granted line only works for a
/// login arriving from them.
pub fn decide(
    node: &AskingNode,
    q: &Question,
    holder: Option<&KeyHolder>,
    from: &[IpAddr],
) -> Answer {
    let Some((_, cluster, project, node_user)) = &node.cluster else {
        return Answer::Refuse(format!("node {} is in no cluster", node.name));
    };
    if &q.login != node_user {
        return Answer::Refuse(format!(
            "login {} is not node_user {node_user} of cluster {cluster}",
            quoted(&q.login)
        ));
    }
    let Some(h) = holder else {
        return Answer::Refuse("the key is not registered to any account".into());
    };
    if h.disabled {
        return Answer::Refuse(format!("account {} is disabled", h.email));
    }
    if authorize(h.role, Action::SshToNodes) != Decision::Allow {
        return Answer::Refuse(format!("{} is not a member of project {project}", h.email));
    }
    let mut fields = h.public_key.split_whitespace();
    let (Some(kind), Some(body)) = (fields.next(), fields.next()) else {
        return Answer::Refuse("the registered key is malformed".into());
    };
    if from.is_empty() {
        return Answer::Refuse(
            "no gateway address to bind the key to (set nodes.login_from)".into(),
        );
    }
    let from: Vec<String> = from.iter().map(|ip| ip.to_string()).collect();
    // restrict, then only what users need: a terminal and -L on the node;
    // no agent or X11 forwarding, and no -R: port-forwarding allows both,
    // and permitlisten has no "none", so the only listen allowed is one on
    // a name that never resolves (RFC 6761). The comment names who and
    // where, so the node's auth log does too.
    let line = format!(
        "restrict,pty,port-forwarding,permitlisten=\"{NO_LISTEN}\",from=\"{}\" {kind} {body} gatehouse:{}:{project}",
        from.join(","),
        h.email
    );
    Answer::Grant {
        line,
        email: h.email.clone(),
    }
}

/// The addresses a node sees the gateway's connections come from: the
/// operator's `nodes.login_from` when set (NAT), else the local address the
/// kernel would use to reach the node.
pub fn gateway_addresses(login_from: &[IpAddr], node_host: &[IpAddr]) -> Vec<IpAddr> {
    if !login_from.is_empty() {
        return login_from.to_vec();
    }
    let mut out = Vec::new();
    for ip in node_host {
        let bind: IpAddr = if ip.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        // A UDP "connect" sends nothing: it only asks the routing table.
        let local = std::net::UdpSocket::bind((bind, 0))
            .and_then(|s| s.connect((*ip, 9)).map(|_| s))
            .and_then(|s| s.local_addr());
        if let Ok(a) = local
            && !out.contains(&a.ip())
        {
            out.push(a.ip());
        }
    }
    out
}

/// What `node enroll` writes for a node: files (name, mode, contents) for
/// a folder, or one shell script that installs them on a Debian node.
pub struct Enrolment {
    pub node: String,
    /// `HOST:PORT` the node reaches the gateway at.
    pub gateway_host: String,
    pub gateway_port: u16,
    /// The node's private key, OpenSSH format.
    pub private_key: String,
    /// The gateway's host public key line (`ssh-ed25519 AAAA…`).
    pub host_key: String,
    /// The Unix user sshd runs the command as.
    pub command_user: String,
}

impl Enrolment {
    fn known_hosts(&self) -> String {
        let host = if self.gateway_port == 22 {
            self.gateway_host.clone()
        } else {
            format!("[{}]:{}", self.gateway_host, self.gateway_port)
        };
        format!("{host} {}\n", self.host_key)
    }

    /// The `AuthorizedKeysCommand` program: asks the gateway within a
    /// bound (sshd gives the command no timeout of its own) and prints
    /// nothing on any failure, so a login fails closed while keys in
    /// `AuthorizedKeysFile` (break-glass) still work.
    pub fn command(&self, dir: &str) -> String {
        format!(
            "#!/bin/sh\n\
             # gatehouse: which keys may log in as $1 (offered key $2)? Asks the\n\
             # gateway; prints nothing when it cannot, so logins fail closed.\n\
             out=$(timeout 10 ssh -F /dev/null -n -T \\\n\
             \x20 -o BatchMode=yes -o ConnectTimeout=5 -o ServerAliveInterval=3 -o ServerAliveCountMax=1 \\\n\
             \x20 -o IdentitiesOnly=yes -o IdentityFile={dir}/node_key -o IdentityAgent=none \\\n\
             \x20 -o StrictHostKeyChecking=yes -o UserKnownHostsFile={dir}/known_hosts -o GlobalKnownHostsFile=/dev/null \\\n\
             \x20 -o LogLevel=ERROR -p {port} {prefix}{node}@{host} {COMMAND} \"$1\" \"$2\" 2>/dev/null) || exit 0\n\
             [ -n \"$out\" ] || exit 0\n\
             printf '%s\\n' \"$out\"\n\
             # sshd logs the key's fingerprint; this names its holder beside it.\n\
             logger -t gatehouse -p auth.info \"key $2 for $1 is ${{out##* }}\" 2>/dev/null || true\n",
            port = self.gateway_port,
            prefix = NODE_LOGIN_PREFIX,
            node = self.node,
            host = self.gateway_host,
        )
    }

    /// The sshd_config fragment, for `Include DIR/sshd_config` at the top
    /// of the node's sshd_config (sshd takes the first value it reads).
    /// `AuthorizedKeysFile` is a root-owned file, not `~/.ssh`: a member who
    /// was let in must not be able to plant a key that outlives them.
    pub fn sshd_config(&self, dir: &str) -> String {
        format!(
            "# gatehouse: the gateway decides who may log in (gatehouse node enroll {node}).\n\
             # Keys in {dir}/breakglass_keys (root's to edit) work first, without the gateway.\n\
             AuthorizedKeysFile {dir}/breakglass_keys\n\
             AuthorizedKeysCommand {dir}/authorized-keys %u %f\n\
             AuthorizedKeysCommandUser {user}\n",
            node = self.node,
            user = self.command_user,
        )
    }

    /// (file name, mode, contents) for a folder `dir`. The break-glass
    /// file comes last and is only created, never replaced.
    pub fn files(&self, dir: &str) -> Vec<(&'static str, u32, String)> {
        vec![
            ("sshd_config", 0o644, self.sshd_config(dir)),
            ("authorized-keys", 0o755, self.command(dir)),
            ("node_key", 0o600, self.private_key.clone()),
            ("known_hosts", 0o644, self.known_hosts()),
            (BREAKGLASS, 0o644, String::new()),
        ]
    }

    /// A script that installs the same on a fresh Debian node under
    /// `/etc/gatehouse` and `/etc/ssh/sshd_config.d/gatehouse.conf`, with
    /// a system user for the command, then checks and reloads sshd.
    pub fn script(&self) -> String {
        let dir = "/etc/gatehouse";
        let mut out = String::from(
            "#!/bin/sh\n\
             # gatehouse node enrolment: run as root on the node, e.g.\n\
             #   gatehouse node enroll NAME --gateway HOST:PORT | ssh root@NODE sh\n\
             # It holds the node's private key: do not keep it anywhere else.\n\
             set -eu\n",
        );
        out.push_str(&format!(
            "id -u {u} >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {u}\n\
             install -d -m 0755 -o root -g root {dir}\n",
            u = self.command_user
        ));
        for (name, mode, text) in self.files(dir) {
            if name == BREAKGLASS {
                out.push_str(&format!(
                    "[ -e {dir}/{name} ] || install -m {mode:o} -o root -g root /dev/null {dir}/{name}\n"
                ));
                continue;
            }
            let target = if name == "sshd_config" {
                "/etc/ssh/sshd_config.d/gatehouse.conf".to_string()
            } else {
                format!("{dir}/{name}")
            };
            let owner = if name == "node_key" {
                self.command_user.as_str()
            } else {
                "root"
            };
            out.push_str(&format!(
                "umask 077\ncat > {target}.new <<'GATEHOUSE_EOF'\n{text}GATEHOUSE_EOF\n\
                 chown {owner}:root {target}.new\nchmod {mode:o} {target}.new\nmv {target}.new {target}\n"
            ));
        }
        out.push_str(
            "sshd -t\n\
             systemctl reload ssh 2>/dev/null || systemctl reload sshd 2>/dev/null || service ssh reload\n\
             echo \"gatehouse: this node now asks the gateway who may log in\"\n",
        );
        out
    }
}

/// A fresh ed25519 key for a node: the private key (OpenSSH format) and
/// its fingerprint.
pub fn new_node_key() -> anyhow::Result<(String, String)> {
    use anyhow::Context;
    use russh::keys::{Algorithm, PrivateKey};
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("cannot generate a node key")?;
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .context("cannot encode the node key")?;
    Ok((text.to_string(), fingerprint_of(key.public_key())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn node(cluster: bool) -> AskingNode {
        AskingNode {
            id: 1,
            name: "gpu-1".into(),
            host: "10.0.0.1".into(),
            port: 22,
            credential: "SHA256:node".into(),
            cluster: cluster.then(|| (7, "c1".into(), "train".into(), "ubuntu".into())),
        }
    }

    fn holder(role: Option<Role>, disabled: bool) -> KeyHolder {
        KeyHolder {
            email: "bob@example.com".into(),
            login: "bob".into(),
            disabled,
            public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bob's laptop".into(),
            role,
        }
    }

    fn q(login: &str) -> Question {
        Question {
            login: login.into(),
            fingerprint: "SHA256:abc".into(),
        }
    }

    const FROM: &[IpAddr] = &[IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5))];

    #[test]
    fn members_of_either_role_get_a_bound_line() {
        for role in [Role::Admin, Role::Member] {
            let a = decide(
                &node(true),
                &q("ubuntu"),
                Some(&holder(Some(role), false)),
                FROM,
            );
            let Answer::Grant { line, .. } = a else {
                panic!("{a:?}")
            };
            assert!(
                line.starts_with("restrict,pty,port-forwarding,permitlisten=\"gatehouse.invalid:1\",from=\"10.0.0.5\" ssh-ed25519 AAAA")
            );
            assert!(line.ends_with(" gatehouse:bob@example.com:train"), "{line}");
            assert!(!line.contains("laptop"), "our comment, not the user's");
        }
    }

    #[test]
    fn everyone_else_gets_nothing() {
        let member = holder(Some(Role::Member), false);
        let refused = |a: Answer| matches!(a, Answer::Refuse(_));
        assert!(refused(decide(
            &node(false),
            &q("ubuntu"),
            Some(&member),
            FROM
        )));
        assert!(refused(decide(
            &node(true),
            &q("root"),
            Some(&member),
            FROM
        )));
        assert!(refused(decide(&node(true), &q("ubuntu"), None, FROM)));
        assert!(refused(decide(
            &node(true),
            &q("ubuntu"),
            Some(&holder(None, false)),
            FROM
        )));
        assert!(refused(decide(
            &node(true),
            &q("ubuntu"),
            Some(&holder(Some(Role::Admin), true)),
            FROM
        )));
        assert!(refused(decide(
            &node(true),
            &q("ubuntu"),
            Some(&member),
            &[]
        )));
    }

    #[test]
    fn questions_are_parsed_strictly() {
        assert_eq!(
            Question::parse("authorized-keys ubuntu SHA256:abc+/=")
                .unwrap()
                .login,
            "ubuntu"
        );
        for bad in [
            "",
            "authorized-keys",
            "authorized-keys ubuntu",
            "authorized-keys Root SHA256:x",
            "authorized-keys ubuntu MD5:x",
            "authorized-keys ubuntu SHA256:x extra",
            "whoami",
            "authorized-keys ubuntu;reboot SHA256:x",
        ] {
            assert!(Question::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_is_bounded_and_pins_the_gateway() {
        let e = Enrolment {
            node: "gpu-1".into(),
            gateway_host: "gw.example.com".into(),
            gateway_port: 2222,
            private_key: "KEY".into(),
            host_key: "ssh-ed25519 AAAA".into(),
            command_user: "gatehouse-node".into(),
        };
        let cmd = e.command("/etc/gatehouse");
        assert!(cmd.contains("timeout 10 ssh -F /dev/null"));
        assert!(cmd.contains("logger -t gatehouse"));
        assert!(cmd.contains("StrictHostKeyChecking=yes"));
        assert!(cmd.contains("node.gpu-1@gw.example.com authorized-keys \"$1\" \"$2\""));
        assert_eq!(e.known_hosts(), "[gw.example.com]:2222 ssh-ed25519 AAAA\n");
        let script = e.script();
        assert!(script.contains("/etc/ssh/sshd_config.d/gatehouse.conf"));
        assert!(script.contains("chmod 600 /etc/gatehouse/node_key.new"));
        assert!(script.contains("sshd -t"));
        assert!(script.contains("[ -e /etc/gatehouse/breakglass_keys ] ||"));
        assert!(
            e.sshd_config("/d")
                .contains("AuthorizedKeysFile /d/breakglass_keys")
        );
    }
}
