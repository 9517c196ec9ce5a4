//! The revocation feed: every change that must end live sessions or
//! forwards is appended here, by the SSH commands and the operator CLI alike,
//! and every gateway replica follows it. One mechanism serves this process,
//! other processes and other replicas.

use super::{Result, Store, now_ms};

/// What must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Every session of the account (disabled).
    Account { account_id: i64 },
    /// Sessions that authenticated with this key.
    Key {
        account_id: i64,
        fingerprint: String,
    },
    /// The account's shells, commands and forwards in this project.
    Membership { account_id: i64, project: String },
    /// The account's Kubernetes front doors in this project: its role
    /// changed, and open watches and streams carry the old group.
    Role { account_id: i64, project: String },
    /// Forwards to these nodes (scaled away).
    Node {
        project: String,
        cluster: String,
        node: String,
    },
    /// Forwards to anything of the cluster (deleted).
    Cluster { project: String, cluster: String },
    /// One session, by id (`session kill`). With a project (a project
    /// admin's kill), only what it does in that project, unless it does
    /// nothing elsewhere.
    Session { id: String, project: Option<String> },
    /// Everything in the project (deleted).
    Project { project: String },
    /// Forwards to the cluster's Kubernetes API and dashboard (their
    /// addresses changed).
    ClusterApi { project: String, cluster: String },
    /// The cluster's Kubernetes front doors (its credential was set or
    /// cleared): open streams carry the old one.
    KubeCredential { project: String, cluster: String },
}

/// One live channel, as a revocation is matched against it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChannelFacts<'a> {
    pub forward: bool,
    /// A forward to the Kubernetes API or the dashboard.
    pub api: bool,
    /// The Kubernetes front door (`kube.CLUSTER`), which acts as the user.
    pub kube: bool,
    pub project: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub node: Option<&'a str>,
}

impl Revocation {
    /// Whether this revocation ends `ch`, a channel of session `session`
    /// of account `account_id`. Revocations of a whole session (account,
    /// key, kill) are decided by the registry, which knows the session.
    pub fn ends_channel(&self, account_id: i64, session: &str, ch: ChannelFacts<'_>) -> bool {
        let in_cluster = |p: &str, c: &str| ch.project == Some(p) && ch.cluster == Some(c);
        match self {
            Revocation::Membership {
                account_id: a,
                project,
            } => account_id == *a && ch.project == Some(project.as_str()),
            Revocation::Role {
                account_id: a,
                project,
            } => account_id == *a && ch.kube && ch.project == Some(project.as_str()),
            Revocation::Project { project } => ch.project == Some(project.as_str()),
            Revocation::Cluster { project, cluster } => ch.forward && in_cluster(project, cluster),
            Revocation::Node {
                project,
                cluster,
                node,
            } => ch.forward && in_cluster(project, cluster) && ch.node == Some(node.as_str()),
            Revocation::ClusterApi { project, cluster } => {
                ch.forward && ch.api && in_cluster(project, cluster)
            }
            Revocation::KubeCredential { project, cluster } => {
                ch.kube && in_cluster(project, cluster)
            }
            Revocation::Session {
                id,
                project: Some(p),
            } => id == session && ch.project == Some(p.as_str()),
            Revocation::Account { .. } | Revocation::Key { .. } | Revocation::Session { .. } => {
                false
            }
        }
    }
}

impl Revocation {
    /// The feed's name for this kind of revocation (its `kind` column).
    fn kind(&self) -> &'static str {
        match self {
            Revocation::Account { .. } => "account",
            Revocation::Key { .. } => "key",
            Revocation::Membership { .. } => "membership",
            Revocation::Role { .. } => "role",
            Revocation::Node { .. } => "node",
            Revocation::Cluster { .. } => "cluster",
            Revocation::Session { .. } => "session",
            Revocation::Project { .. } => "project",
            Revocation::ClusterApi { .. } => "cluster_api",
            Revocation::KubeCredential { .. } => "kube_credential",
        }
    }

    /// Why sessions or channels end, as the person cut is told (an SSH
    /// disconnect message, or a line on their shell): always "access
    /// revoked", then the cause.
    pub fn reason(&self) -> String {
        let cause = match self {
            Revocation::Account { .. } => "the account was disabled or removed".to_string(),
            Revocation::Key { .. } => "the key this session used was removed".to_string(),
            Revocation::Membership { project, .. } => format!("removed from project {project}"),
            Revocation::Role { project, .. } => format!("role in project {project} changed"),
            Revocation::Node { node, cluster, .. } => {
                format!("node {node} left cluster {cluster}")
            }
            Revocation::Cluster { cluster, .. } => format!("cluster {cluster} was deleted"),
            Revocation::Session { .. } => "session ended by a project admin".to_string(),
            Revocation::ClusterApi { cluster, .. } => {
                format!("the API or dashboard address of cluster {cluster} changed")
            }
            Revocation::Project { project } => format!("project {project} was deleted"),
            Revocation::KubeCredential { cluster, .. } => {
                format!("the Kubernetes credential of cluster {cluster} changed")
            }
        };
        format!("access revoked: {cause}")
    }
}

type Row = (
    i64,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl Revocation {
    fn from_row(row: Row) -> Option<(i64, Revocation)> {
        let (id, kind, account_id, project, cluster, node, fingerprint, session) = row;
        let r = match kind.as_str() {
            "account" => Revocation::Account {
                account_id: account_id?,
            },
            "key" => Revocation::Key {
                account_id: account_id?,
                fingerprint: fingerprint?,
            },
            "membership" => Revocation::Membership {
                account_id: account_id?,
                project: project?,
            },
            "role" => Revocation::Role {
                account_id: account_id?,
                project: project?,
            },
            "node" => Revocation::Node {
                project: project?,
                cluster: cluster?,
                node: node?,
            },
            "cluster" => Revocation::Cluster {
                project: project?,
                cluster: cluster?,
            },
            "session" => Revocation::Session {
                id: session?,
                project,
            },
            "kube_credential" => Revocation::KubeCredential {
                project: project?,
                cluster: cluster?,
            },
            "cluster_api" => Revocation::ClusterApi {
                project: project?,
                cluster: cluster?,
            },
            "project" => Revocation::Project { project: project? },
            _ => return None,
        };
        Some((id, r))
    }
}

/// kind, account_id, project, cluster, node, fingerprint, session
type Columns<'a> = (
    &'a str,
    Option<i64>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

/// Appends one revocation through `exec`: a transaction or the pool.
pub(super) async fn append<'e, E>(exec: E, r: &Revocation) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let (kind, account_id, project, cluster, node, fingerprint, session): Columns<'_> = match r {
        Revocation::Account { account_id } => {
            ("account", Some(*account_id), None, None, None, None, None)
        }
        Revocation::Key {
            account_id,
            fingerprint,
        } => (
            "key",
            Some(*account_id),
            None,
            None,
            None,
            Some(fingerprint),
            None,
        ),
        Revocation::Membership {
            account_id,
            project,
        }
        | Revocation::Role {
            account_id,
            project,
        } => (
            r.kind(),
            Some(*account_id),
            Some(project),
            None,
            None,
            None,
            None,
        ),
        Revocation::Node {
            project,
            cluster,
            node,
        } => (
            "node",
            None,
            Some(project),
            Some(cluster),
            Some(node),
            None,
            None,
        ),
        Revocation::Cluster { project, cluster }
        | Revocation::ClusterApi { project, cluster }
        | Revocation::KubeCredential { project, cluster } => (
            r.kind(),
            None,
            Some(project),
            Some(cluster),
            None,
            None,
            None,
        ),
        Revocation::Session { id, project } => (
            "session",
            None,
            project.as_deref(),
            None,
            None,
            None,
            Some(id),
        ),
        Revocation::Project { project } => ("project", None, Some(project), None, None, None, None),
    };
    sqlx::query(
        "INSERT INTO revocations (at, kind, account_id, project, cluster, node, fingerprint, session) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(now_ms())
    .bind(kind)
    .bind(account_id)
    .bind(project.map(str::to_string))
    .bind(cluster.map(str::to_string))
    .bind(node.map(str::to_string))
    .bind(fingerprint.map(str::to_string))
    .bind(session.map(str::to_string))
    .execute(exec)
    .await?;
    Ok(())
}

impl Store {
    pub async fn revoke(&self, r: &Revocation) -> Result<()> {
        append(self.pool(), r).await
    }

    /// The newest revocation id: a new gateway starts following from here.
    pub async fn revocation_head(&self) -> Result<i64> {
        let (id,): (Option<i64>,) = sqlx::query_as("SELECT MAX(id) FROM revocations")
            .fetch_one(self.pool())
            .await?;
        Ok(id.unwrap_or(0))
    }

    pub async fn revocations_after(&self, after: i64) -> Result<Vec<(i64, Revocation)>> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, kind, account_id, project, cluster, node, fingerprint, session \
             FROM revocations WHERE id > $1 ORDER BY id LIMIT 1000",
        )
        .bind(after)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().filter_map(Revocation::from_row).collect())
    }

    /// Forgets revocations older than `age_ms`; replicas read them within a
    /// second, so an hour is plenty.
    pub async fn prune_revocations(&self, age_ms: i64) -> Result<()> {
        sqlx::query("DELETE FROM revocations WHERE at < $1")
            .bind(now_ms() - age_ms)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd<'a>(
        project: &'a str,
        cluster: &'a str,
        node: Option<&'a str>,
        api: bool,
    ) -> ChannelFacts<'a> {
        ChannelFacts {
            forward: true,
            api,
            kube: api && node.is_some(),
            project: Some(project),
            cluster: Some(cluster),
            node,
        }
    }

    #[test]
    fn each_revocation_ends_what_it_names_and_nothing_else() {
        let n1 = fwd("p", "c", Some("n1"), false);
        let kube_on_n1 = fwd("p", "c", Some("n1"), true);
        let dash = fwd("p", "c", None, true);
        let other = fwd("q", "c", Some("n1"), false);
        let shell = ChannelFacts {
            project: Some("p"),
            ..Default::default()
        };
        let node = Revocation::Node {
            project: "p".into(),
            cluster: "c".into(),
            node: "n1".into(),
        };
        assert!(node.ends_channel(1, "s", n1));
        assert!(
            node.ends_channel(1, "s", kube_on_n1),
            "an API forward via the node"
        );
        assert!(!node.ends_channel(1, "s", dash));
        assert!(!node.ends_channel(1, "s", other));
        assert!(!node.ends_channel(1, "s", shell));
        let api = Revocation::ClusterApi {
            project: "p".into(),
            cluster: "c".into(),
        };
        assert!(api.ends_channel(1, "s", kube_on_n1) && api.ends_channel(1, "s", dash));
        assert!(!api.ends_channel(1, "s", n1));
        let m = Revocation::Membership {
            account_id: 1,
            project: "p".into(),
        };
        assert!(m.ends_channel(1, "s", shell) && m.ends_channel(1, "s", n1));
        assert!(!m.ends_channel(2, "s", shell));
        assert!(!m.ends_channel(1, "s", other));
        let kill = Revocation::Session {
            id: "s".into(),
            project: Some("p".into()),
        };
        assert!(kill.ends_channel(9, "s", n1));
        assert!(
            !kill.ends_channel(9, "s", other),
            "other projects' channels stay"
        );
        assert!(!kill.ends_channel(9, "t", n1));
        let project = Revocation::Project {
            project: "p".into(),
        };
        assert!(project.ends_channel(5, "x", shell) && !project.ends_channel(5, "x", other));
        let role = Revocation::Role {
            account_id: 1,
            project: "p".into(),
        };
        assert!(
            role.ends_channel(1, "s", kube_on_n1),
            "the front door acts as the old role"
        );
        assert!(!role.ends_channel(1, "s", shell) && !role.ends_channel(1, "s", n1));
        assert!(!role.ends_channel(1, "s", dash) && !role.ends_channel(2, "s", kube_on_n1));
        let credential = Revocation::KubeCredential {
            project: "p".into(),
            cluster: "c".into(),
        };
        assert!(credential.ends_channel(7, "s", kube_on_n1));
        assert!(!credential.ends_channel(7, "s", dash) && !credential.ends_channel(7, "s", n1));
    }
}
