//! Nodes (the operator's pool), clusters built from them, and volumes.

use serde::Serialize;

use super::{Result, Revocation, Store, StoreError, conflict_on_unique, now_ms};
use crate::model::{HostPort, Name, Size};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Node {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    pub host: String,
    pub port: i64,
    pub gpu_type: Option<String>,
    pub gpus: i64,
    /// The cluster it is allocated to; `None` while in the free pool.
    pub cluster: Option<String>,
    pub project: Option<String>,
    /// When it was enrolled (`gatehouse node enroll`), if it is.
    #[serde(skip)]
    pub enrolled_at: Option<i64>,
    /// When it last asked who may log in.
    #[serde(skip)]
    pub last_asked: Option<i64>,
}

impl Node {
    pub fn address(&self) -> String {
        HostPort {
            host: self.host.clone(),
            port: self.port as u16,
        }
        .to_string()
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Cluster {
    #[serde(skip)]
    pub id: i64,
    #[serde(skip)]
    pub project_id: i64,
    pub project: String,
    pub name: String,
    pub gpu_type: Option<String>,
    pub description: String,
    pub kube_api: Option<String>,
    pub dashboard: Option<String>,
    pub node_user: String,
    pub kube_ca: Option<String>,
    #[serde(skip)]
    pub created_at: i64,
    /// When the cluster's credential was set (ms since the epoch), if it
    /// is; the credential itself is never read with the cluster.
    #[serde(skip)]
    pub credential_set_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Volume {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    pub size_gib: i64,
    #[serde(skip)]
    pub created_at: i64,
}

impl Volume {
    pub fn size(&self) -> Size {
        Size::from_gib(self.size_gib)
    }
}

/// One validated `KEY=VALUE` of `cluster config`; `None` clears the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterConfigChange {
    Description(String),
    KubeApi(Option<String>),
    Dashboard(Option<String>),
    NodeUser(String),
    KubeCa(Option<String>),
}

const NODE_SELECT: &str = "SELECT n.id, n.name, n.host, n.port, n.gpu_type, n.gpus, c.name AS cluster, p.name AS project, \
     nc.created_at AS enrolled_at, nc.last_asked \
     FROM nodes n LEFT JOIN clusters c ON c.id = n.cluster_id LEFT JOIN projects p ON p.id = c.project_id \
     LEFT JOIN node_credentials nc ON nc.node_id = n.id";

const CLUSTER_SELECT: &str = "SELECT c.id, c.project_id, p.name AS project, c.name, c.gpu_type, c.description, \
     c.kube_api, c.dashboard, c.node_user, c.kube_ca, c.created_at, cc.set_at AS credential_set_at \
     FROM clusters c JOIN projects p ON p.id = c.project_id \
     LEFT JOIN cluster_credentials cc ON cc.cluster_id = c.id";

impl Store {
    pub async fn node_register(
        &self,
        name: &Name,
        addr: &HostPort,
        gpu_type: Option<&str>,
        gpus: i64,
    ) -> Result<Node> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO nodes (name, host, port, gpu_type, gpus, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(name.as_str())
        .bind(&addr.host)
        .bind(addr.port as i64)
        .bind(gpu_type)
        .bind(gpus)
        .bind(now_ms())
        .fetch_one(self.pool())
        .await
        .map_err(|e| {
            let addr_clash = matches!(&e, sqlx::Error::Database(d) if d.message().contains("host"));
            conflict_on_unique(e, || {
                if addr_clash {
                    format!("address {addr} is already registered to another node")
                } else {
                    format!("node {name} already exists")
                }
            })
        })?;
        Ok(Node {
            id,
            name: name.to_string(),
            host: addr.host.clone(),
            port: addr.port as i64,
            gpu_type: gpu_type.map(str::to_string),
            gpus,
            cluster: None,
            project: None,
            enrolled_at: None,
            last_asked: None,
        })
    }

    /// Removes a node from the pool. A node a cluster holds is refused
    /// unless `force`, which takes it out of the cluster first and ends the
    /// forwards to it. Returns the node as it was.
    pub async fn node_remove(&self, name: &Name, force: bool) -> Result<Node> {
        let mut tx = self.begin_write().await?;
        // PostgreSQL: lock the node row, so a concurrent allocation waits
        // and this sees the cluster it ends up in (SQLite holds the write
        // lock already).
        let lock = match self.backend {
            super::Backend::Postgres => " FOR UPDATE OF n",
            super::Backend::Sqlite => "",
        };
        let found: Option<Node> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{NODE_SELECT} WHERE n.name = $1{lock}"
        )))
        .bind(name.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let node = found.ok_or_else(|| StoreError::NotFound(format!("no node {name}")))?;
        if let (Some(cluster), Some(project)) = (&node.cluster, &node.project) {
            if !force {
                return Err(StoreError::Refused(format!(
                    "node {name} is in cluster {cluster} of project {project}: its admins can scale the cluster down, or remove it anyway with --force"
                )));
            }
            let r = Revocation::Node {
                project: project.clone(),
                cluster: cluster.clone(),
                node: node.name.clone(),
            };
            super::revocations::append(&mut *tx, &r).await?;
        }
        sqlx::query("DELETE FROM node_credentials WHERE node_id = $1")
            .bind(node.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(node.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(node)
    }

    pub async fn nodes(&self) -> Result<Vec<Node>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{NODE_SELECT} ORDER BY n.name"
        )))
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn nodes_of_cluster(&self, cluster_id: i64) -> Result<Vec<Node>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{NODE_SELECT} WHERE n.cluster_id = $1 ORDER BY n.name"
        )))
        .bind(cluster_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Nodes of every cluster in the projects `account_id` belongs to: what
    /// forwarding may reach for that account.
    pub async fn nodes_for_account(&self, account_id: i64) -> Result<Vec<Node>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{NODE_SELECT} JOIN memberships m ON m.project_id = p.id WHERE m.account_id = $1 ORDER BY n.name"
        )))
        .bind(account_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Clusters of every project `account_id` belongs to.
    pub async fn clusters_for_account(&self, account_id: i64) -> Result<Vec<Cluster>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{CLUSTER_SELECT} JOIN memberships m ON m.project_id = p.id WHERE m.account_id = $1 ORDER BY p.name, c.name"
        )))
        .bind(account_id)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn clusters(&self, project_id: i64) -> Result<Vec<Cluster>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{CLUSTER_SELECT} WHERE c.project_id = $1 ORDER BY c.name"
        )))
        .bind(project_id)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn cluster(&self, project_id: i64, name: &Name) -> Result<Cluster> {
        let found: Option<Cluster> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{CLUSTER_SELECT} WHERE c.project_id = $1 AND c.name = $2"
        )))
        .bind(project_id)
        .bind(name.as_str())
        .fetch_optional(self.pool())
        .await?;
        found.ok_or_else(|| StoreError::NotFound(format!("no cluster {name} in this project")))
    }

    async fn free_nodes(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        gpu_type: Option<&str>,
    ) -> Result<i64> {
        let (n,): (i64,) = match gpu_type {
            Some(t) => {
                sqlx::query_as(
                    "SELECT COUNT(*) FROM nodes WHERE cluster_id IS NULL AND LOWER(gpu_type) = LOWER($1)",
                )
                .bind(t)
                .fetch_one(&mut **tx)
                .await?
            }
            None => {
                sqlx::query_as("SELECT COUNT(*) FROM nodes WHERE cluster_id IS NULL")
                    .fetch_one(&mut **tx)
                    .await?
            }
        };
        Ok(n)
    }

    /// Moves `count` free nodes (of `gpu_type`, if given) into the cluster.
    async fn allocate(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        cluster_id: i64,
        count: i64,
        gpu_type: Option<&str>,
    ) -> Result<()> {
        let free = self.free_nodes(tx, gpu_type).await?;
        let kind = gpu_type.map(|t| format!(" {t}")).unwrap_or_default();
        if free < count {
            return Err(StoreError::Refused(format!(
                "not enough free{kind} nodes: asked for {count}, {free} free in the pool"
            )));
        }
        // `cluster_id IS NULL` is checked again on the rows themselves, so a
        // node taken by a concurrent transaction is never taken twice.
        let done = match gpu_type {
            Some(t) => sqlx::query(
                "UPDATE nodes SET cluster_id = $1 WHERE cluster_id IS NULL AND id IN \
                 (SELECT id FROM nodes WHERE cluster_id IS NULL AND LOWER(gpu_type) = LOWER($3) ORDER BY name LIMIT $2)",
            )
            .bind(cluster_id)
            .bind(count)
            .bind(t),
            None => sqlx::query(
                "UPDATE nodes SET cluster_id = $1 WHERE cluster_id IS NULL AND id IN \
                 (SELECT id FROM nodes WHERE cluster_id IS NULL ORDER BY name LIMIT $2)",
            )
            .bind(cluster_id)
            .bind(count),
        }
        .execute(&mut **tx)
        .await?;
        if (done.rows_affected() as i64) < count {
            return Err(StoreError::Refused(format!(
                "not enough free{kind} nodes: another change took some; try again"
            )));
        }
        Ok(())
    }

    pub async fn cluster_create(
        &self,
        project_id: i64,
        name: &Name,
        count: i64,
        gpu_type: Option<&str>,
    ) -> Result<Cluster> {
        let mut tx = self.begin_write().await?;
        self.lock(&mut tx, super::Row::Project, project_id).await?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO clusters (project_id, name, gpu_type, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(project_id)
        .bind(name.as_str())
        .bind(gpu_type)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, || format!("cluster {name} already exists in this project")))?;
        self.allocate(&mut tx, id, count, gpu_type).await?;
        if gpu_type.is_some() {
            // Shown as the operator registered it (`H100`), not as typed.
            sqlx::query(
                "UPDATE clusters SET gpu_type = (SELECT MIN(gpu_type) FROM nodes WHERE cluster_id = $1) WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.cluster(project_id, name).await
    }

    /// Deletes a cluster and returns its nodes to the pool; returns the nodes
    /// it had, so their forwards can be cut.
    pub async fn cluster_delete(&self, project_id: i64, name: &Name) -> Result<Vec<Node>> {
        let cluster = self.cluster(project_id, name).await?;
        let nodes = self.nodes_of_cluster(cluster.id).await?;
        let mut tx = self.begin_write().await?;
        self.lock(&mut tx, super::Row::Project, project_id).await?;
        sqlx::query("UPDATE nodes SET cluster_id = NULL WHERE cluster_id = $1")
            .bind(cluster.id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM clusters WHERE id = $1")
            .bind(cluster.id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "no cluster {name} in this project"
            )));
        }
        let r = Revocation::Cluster {
            project: cluster.project.clone(),
            cluster: cluster.name.clone(),
        };
        super::revocations::append(&mut *tx, &r).await?;
        tx.commit().await?;
        Ok(nodes)
    }

    /// Grows or shrinks a cluster to `count` nodes. Returns the nodes taken
    /// away (empty when growing).
    pub async fn cluster_scale(
        &self,
        project_id: i64,
        name: &Name,
        count: i64,
    ) -> Result<Vec<Node>> {
        let mut tx = self.begin_write().await?;
        self.lock(&mut tx, super::Row::Project, project_id).await?;
        let found: Option<(i64, Option<String>)> =
            sqlx::query_as("SELECT id, gpu_type FROM clusters WHERE project_id = $1 AND name = $2")
                .bind(project_id)
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let (cluster_id, gpu_type) = found
            .ok_or_else(|| StoreError::NotFound(format!("no cluster {name} in this project")))?;
        let (current,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM nodes WHERE cluster_id = $1")
            .bind(cluster_id)
            .fetch_one(&mut *tx)
            .await?;
        let mut removed: Vec<Node> = Vec::new();
        if count > current {
            self.allocate(&mut tx, cluster_id, count - current, gpu_type.as_deref())
                .await?;
        } else if count < current {
            removed = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{NODE_SELECT} WHERE n.cluster_id = $1 ORDER BY n.name DESC LIMIT $2"
            )))
            .bind(cluster_id)
            .bind(current - count)
            .fetch_all(&mut *tx)
            .await?;
            for node in &removed {
                sqlx::query("UPDATE nodes SET cluster_id = NULL WHERE id = $1")
                    .bind(node.id)
                    .execute(&mut *tx)
                    .await?;
                let r = Revocation::Node {
                    project: node.project.clone().unwrap_or_default(),
                    cluster: name.to_string(),
                    node: node.name.clone(),
                };
                super::revocations::append(&mut *tx, &r).await?;
            }
        } else {
            return Err(StoreError::Conflict(format!(
                "cluster {name} already has {count} nodes"
            )));
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// Applies validated config changes in one transaction. A change of
    /// `kube_api` or `dashboard` ends the forwards to the old addresses. A
    /// change of `kube_api` or `kube_ca` also clears the cluster's
    /// credential: it was given for the API server they named, and an
    /// admin could otherwise point them at a server of their own and read
    /// the credential back. Returns true when it cleared one.
    pub async fn cluster_configure(
        &self,
        cluster: &Cluster,
        changes: &[ClusterConfigChange],
    ) -> Result<bool> {
        let cluster_id = cluster.id;
        let mut tx = self.begin_write().await?;
        let server_changed = changes.iter().any(|c| match c {
            ClusterConfigChange::KubeApi(v) => *v != cluster.kube_api,
            ClusterConfigChange::KubeCa(v) => *v != cluster.kube_ca,
            _ => false,
        });
        let mut cleared = false;
        if server_changed {
            // Before the credential goes: a `cluster_credential_set` under
            // way either finishes first (and is cleared here) or waits and
            // sees the new server (and refuses).
            self.lock(&mut tx, super::Row::Cluster, cluster_id).await?;
            let done = sqlx::query("DELETE FROM cluster_credentials WHERE cluster_id = $1")
                .bind(cluster_id)
                .execute(&mut *tx)
                .await?;
            cleared = done.rows_affected() > 0;
            let r = Revocation::KubeCredential {
                project: cluster.project.clone(),
                cluster: cluster.name.clone(),
            };
            super::revocations::append(&mut *tx, &r).await?;
        }
        if changes.iter().any(|c| {
            matches!(
                c,
                ClusterConfigChange::KubeApi(_) | ClusterConfigChange::Dashboard(_)
            )
        }) {
            let r = Revocation::ClusterApi {
                project: cluster.project.clone(),
                cluster: cluster.name.clone(),
            };
            super::revocations::append(&mut *tx, &r).await?;
        }
        for change in changes {
            let q = match change {
                ClusterConfigChange::Description(v) => {
                    sqlx::query("UPDATE clusters SET description = $1 WHERE id = $2")
                        .bind(v.clone())
                }
                ClusterConfigChange::KubeApi(v) => {
                    sqlx::query("UPDATE clusters SET kube_api = $1 WHERE id = $2").bind(v.clone())
                }
                ClusterConfigChange::Dashboard(v) => {
                    sqlx::query("UPDATE clusters SET dashboard = $1 WHERE id = $2").bind(v.clone())
                }
                ClusterConfigChange::NodeUser(v) => {
                    sqlx::query("UPDATE clusters SET node_user = $1 WHERE id = $2").bind(v.clone())
                }
                ClusterConfigChange::KubeCa(v) => {
                    sqlx::query("UPDATE clusters SET kube_ca = $1 WHERE id = $2").bind(v.clone())
                }
            };
            q.bind(cluster_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(cleared)
    }

    pub async fn volumes(&self, project_id: i64) -> Result<Vec<Volume>> {
        Ok(
            sqlx::query_as("SELECT id, name, size_gib, created_at FROM volumes WHERE project_id = $1 ORDER BY name")
                .bind(project_id)
                .fetch_all(self.pool())
                .await?,
        )
    }

    pub async fn volume(&self, project_id: i64, name: &Name) -> Result<Volume> {
        let found: Option<Volume> =
            sqlx::query_as("SELECT id, name, size_gib, created_at FROM volumes WHERE project_id = $1 AND name = $2")
                .bind(project_id)
                .bind(name.as_str())
                .fetch_optional(self.pool())
                .await?;
        found.ok_or_else(|| StoreError::NotFound(format!("no volume {name} in this project")))
    }

    pub async fn volume_create(&self, project_id: i64, name: &Name, size: Size) -> Result<Volume> {
        sqlx::query_as(
            "INSERT INTO volumes (project_id, name, size_gib, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING id, name, size_gib, created_at",
        )
        .bind(project_id)
        .bind(name.as_str())
        .bind(size.gib())
        .bind(now_ms())
        .fetch_one(self.pool())
        .await
        .map_err(|e| {
            conflict_on_unique(e, || {
                format!("volume {name} already exists in this project")
            })
        })
    }

    pub async fn volume_delete(&self, project_id: i64, name: &Name) -> Result<()> {
        let done = sqlx::query("DELETE FROM volumes WHERE project_id = $1 AND name = $2")
            .bind(project_id)
            .bind(name.as_str())
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "no volume {name} in this project"
            )));
        }
        Ok(())
    }
}
