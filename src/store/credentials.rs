//! Each cluster's own credential towards its Kubernetes API server
//! (`cluster credential set`). Write-only by construction: the only reader
//! returns it to the Kubernetes front door, and [`ClusterCredential`] never
//! prints its secret, not even with `{:?}`.

use super::{Cluster, Result, Revocation, Store, StoreError, now_ms};

/// How the gateway authenticates to a cluster's API server.
#[derive(Clone, PartialEq, Eq)]
pub enum ClusterCredential {
    /// `Authorization: Bearer TOKEN` (a ServiceAccount token, say).
    Token(String),
    /// A TLS client certificate chain and its private key, both PEM.
    Certificate { chain_pem: String, key_pem: String },
}

impl std::fmt::Debug for ClusterCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl ClusterCredential {
    /// `token` or `certificate`, as stored and as the audit log says.
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterCredential::Token(_) => "token",
            ClusterCredential::Certificate { .. } => "certificate",
        }
    }

    fn secret(&self) -> String {
        match self {
            ClusterCredential::Token(t) => t.clone(),
            ClusterCredential::Certificate { chain_pem, key_pem } => {
                format!("{chain_pem}\n{key_pem}")
            }
        }
    }

    fn from_stored(kind: &str, secret: String) -> Option<ClusterCredential> {
        match kind {
            "token" => Some(ClusterCredential::Token(secret)),
            "certificate" => {
                // Stored as the chain, then the key (see `secret`).
                let key_at = secret
                    .match_indices("-----BEGIN")
                    .map(|(i, _)| i)
                    .find(|&i| {
                        secret[i..]
                            .lines()
                            .next()
                            .is_some_and(|l| l.contains("PRIVATE KEY"))
                    })?;
                Some(ClusterCredential::Certificate {
                    chain_pem: secret[..key_at].trim().to_string(),
                    key_pem: secret[key_at..].trim().to_string(),
                })
            }
            _ => None,
        }
    }
}

/// A credential as the front door uses it, with when it was set: a change
/// is seen by comparing `set_at`.
#[derive(Debug, Clone)]
pub struct StoredCredential {
    pub credential: ClusterCredential,
    /// Milliseconds since the epoch.
    pub set_at: i64,
}

impl Store {
    /// Sets (or replaces) the credential of `cluster`, recording who set
    /// it, for the API server `cluster` names. Errors: Conflict when its
    /// `kube_api` or `kube_ca` is no longer what `cluster` says (changed
    /// since it was read: the credential was given for the other server,
    /// and changing them clears it); NotFound when the cluster is gone.
    pub async fn cluster_credential_set(
        &self,
        cluster: &Cluster,
        credential: &ClusterCredential,
        set_by: &str,
    ) -> Result<()> {
        let cluster_id = cluster.id;
        let mut tx = self.begin_write().await?;
        // Ordered against `cluster_configure`, which takes the same lock
        // before it changes the server and clears the credential.
        self.lock(&mut tx, super::Row::Cluster, cluster_id).await?;
        let server: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT kube_api, kube_ca FROM clusters WHERE id = $1")
                .bind(cluster_id)
                .fetch_optional(&mut *tx)
                .await?;
        match server {
            None => {
                return Err(StoreError::NotFound(format!("no cluster {}", cluster.name)));
            }
            Some((api, ca)) if api != cluster.kube_api || ca != cluster.kube_ca => {
                return Err(StoreError::Conflict(format!(
                    "kube_api or kube_ca of cluster {} changed while the credential was being set; nothing was set: check `cluster config {}` and set it again",
                    cluster.name, cluster.name
                )));
            }
            Some(_) => {}
        }
        sqlx::query("DELETE FROM cluster_credentials WHERE cluster_id = $1")
            .bind(cluster_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO cluster_credentials (cluster_id, kind, secret, set_at, set_by) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(cluster_id)
        .bind(credential.kind())
        .bind(credential.secret())
        .bind(now_ms())
        .bind(set_by)
        .execute(&mut *tx)
        .await?;
        revoke_doors(&mut tx, cluster_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the credential of cluster `cluster_id`; NotFound when it had
    /// none.
    pub async fn cluster_credential_clear(&self, cluster_id: i64, cluster: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM cluster_credentials WHERE cluster_id = $1")
            .bind(cluster_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "cluster {cluster} has no credential set"
            )));
        }
        revoke_doors(&mut tx, cluster_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The credential of cluster `cluster` in project `project`, for the
    /// Kubernetes front door only.
    pub async fn cluster_credential(
        &self,
        project: &str,
        cluster: &str,
    ) -> Result<Option<StoredCredential>> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT cc.kind, cc.secret, cc.set_at FROM cluster_credentials cc \
             JOIN clusters c ON c.id = cc.cluster_id JOIN projects p ON p.id = c.project_id \
             WHERE p.name = $1 AND c.name = $2",
        )
        .bind(project)
        .bind(cluster)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.and_then(|(kind, secret, set_at)| {
            ClusterCredential::from_stored(&kind, secret)
                .map(|credential| StoredCredential { credential, set_at })
        }))
    }
}

/// Streams opened with the old credential end with it: the cluster's
/// front doors are revoked in the same transaction.
async fn revoke_doors(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    cluster_id: i64,
) -> Result<()> {
    let (project, cluster): (String, String) = sqlx::query_as(
        "SELECT p.name, c.name FROM clusters c JOIN projects p ON p.id = c.project_id WHERE c.id = $1",
    )
    .bind(cluster_id)
    .fetch_one(&mut **tx)
    .await?;
    super::revocations::append(&mut **tx, &Revocation::KubeCredential { project, cluster }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_round_trips_through_storage() {
        let c = ClusterCredential::Certificate {
            chain_pem: "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nBB\n-----END CERTIFICATE-----".into(),
            key_pem: "-----BEGIN EC PRIVATE KEY-----\nCC\n-----END EC PRIVATE KEY-----".into(),
        };
        assert_eq!(
            ClusterCredential::from_stored("certificate", c.secret()),
            Some(c)
        );
        let t = ClusterCredential::Token("abc".into());
        assert_eq!(
            ClusterCredential::from_stored("token", t.secret()),
            Some(t.clone())
        );
        assert_eq!(format!("{t:?}"), "token");
    }
}
