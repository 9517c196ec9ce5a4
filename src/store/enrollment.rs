//! Node identities towards the gateway (`gatehouse node enroll`), and the
//! facts a node's login question is answered from.

use super::{Result, Store, StoreError, now_ms};
use crate::model::{Name, Role};

/// What decides a node's login question, read in one query.
#[derive(Debug, Clone)]
pub struct KeyHolder {
    pub email: String,
    pub login: String,
    pub disabled: bool,
    /// The registered key line (type, base64, comment).
    pub public_key: String,
    /// The holder's role in the project of the asking node's cluster.
    pub role: Option<Role>,
}

/// The node that asks, as its enrolment places it.
#[derive(Debug, Clone)]
pub struct AskingNode {
    pub id: i64,
    pub name: String,
    /// Its registered sshd address.
    pub host: String,
    pub port: u16,
    /// `(cluster id, cluster, project, node_user)` while in a cluster.
    pub cluster: Option<(i64, String, String, String)>,
    /// The credential it logged in with (a key fingerprint).
    pub credential: String,
}

impl Store {
    /// Gives node `name` the credential `fingerprint`, replacing any
    /// earlier one (which stops working at once). Returns the node's id.
    pub async fn node_enroll(&self, name: &Name, fingerprint: &str) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let found: Option<(i64,)> = sqlx::query_as("SELECT id FROM nodes WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let (id,) = found.ok_or_else(|| StoreError::NotFound(format!("no node {name}")))?;
        sqlx::query("DELETE FROM node_credentials WHERE node_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO node_credentials (node_id, fingerprint, created_at) VALUES ($1, $2, $3)",
        )
        .bind(id)
        .bind(fingerprint)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The node named `name` whose current credential is `fingerprint`,
    /// with the cluster it is in; `None` when there is no such node, it is
    /// not enrolled, or the credential was replaced.
    pub async fn asking_node(&self, name: &str, fingerprint: &str) -> Result<Option<AskingNode>> {
        type Row = (
            i64,
            String,
            String,
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT n.id, n.name, n.host, n.port, c.id, c.name, p.name, c.node_user FROM nodes n \
                 JOIN node_credentials nc ON nc.node_id = n.id \
                 LEFT JOIN clusters c ON c.id = n.cluster_id \
                 LEFT JOIN projects p ON p.id = c.project_id \
                 WHERE n.name = $1 AND nc.fingerprint = $2",
        )
        .bind(name)
        .bind(fingerprint)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(
            |(id, name, host, port, cid, cname, project, user)| AskingNode {
                id,
                name,
                host,
                port: port as u16,
                credential: fingerprint.to_string(),
                cluster: match (cid, cname, project, user) {
                    (Some(c), Some(n), Some(p), Some(u)) => Some((c, n, p, u)),
                    _ => None,
                },
            },
        ))
    }

    /// Notes when a node last asked (shown by `node list`).
    pub async fn node_asked(&self, node_id: i64) -> Result<()> {
        sqlx::query("UPDATE node_credentials SET last_asked = $1 WHERE node_id = $2")
            .bind(now_ms())
            .bind(node_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Who holds the key `fingerprint`, and their role in the project of
    /// cluster `cluster_id`: the one lookup behind each node question.
    pub async fn key_holder(
        &self,
        fingerprint: &str,
        cluster_id: i64,
    ) -> Result<Option<KeyHolder>> {
        let row: Option<(String, String, i64, String, Option<String>)> = sqlx::query_as(
            "SELECT a.email, a.login, a.disabled, k.public_key, m.role \
             FROM ssh_keys k JOIN accounts a ON a.id = k.account_id \
             LEFT JOIN memberships m ON m.account_id = a.id \
               AND m.project_id = (SELECT c.project_id FROM clusters c WHERE c.id = $2) \
             WHERE k.fingerprint = $1",
        )
        .bind(fingerprint)
        .bind(cluster_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|(email, login, disabled, public_key, role)| {
            Ok(KeyHolder {
                email,
                login,
                disabled: disabled != 0,
                public_key,
                role: role
                    .map(|r| Role::parse(&r))
                    .transpose()
                    .map_err(|e| StoreError::Db(sqlx::Error::Decode(e.into())))?,
            })
        })
        .transpose()
    }
}
