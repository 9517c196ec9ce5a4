//! Projects and memberships. A project always keeps at least one admin.

use serde::Serialize;

use super::{Result, Revocation, Store, StoreError, conflict_on_unique, now_ms};
use crate::model::{Name, Role};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ProjectSummary {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    /// Admins, and members with the member role: disjoint counts.
    pub admins: i64,
    pub members: i64,
    pub clusters: i64,
}

/// What a deleted project had.
#[derive(Debug, Clone, Copy)]
pub struct ProjectDeleted {
    pub members: i64,
    pub clusters: i64,
    pub volumes: i64,
    pub nodes_freed: i64,
}

/// One project an account belongs to, with its role there.
#[derive(Debug, Clone, Serialize)]
pub struct Membership {
    #[serde(skip)]
    pub project_id: i64,
    pub project: String,
    pub role: Role,
}

/// One row of `member list`.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    #[serde(skip)]
    pub account_id: i64,
    pub email: String,
    pub login: String,
    pub role: Role,
    pub disabled: bool,
}

fn role_from_db(s: &str) -> Result<Role> {
    Role::parse(s).map_err(|e| StoreError::Db(sqlx::Error::Decode(e.into())))
}

impl Store {
    /// Creates a project with `admin_account` as its first admin, who must
    /// be able to join it like any member (see [`Store::member_add`]).
    pub async fn project_create(&self, name: &Name, admin_account: i64) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        ensure_can_join(&mut tx, admin_account).await?;
        let (id,): (i64,) =
            sqlx::query_as("INSERT INTO projects (name, created_at) VALUES ($1, $2) RETURNING id")
                .bind(name.as_str())
                .bind(now_ms())
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| conflict_on_unique(e, || format!("project {name} already exists")))?;
        sqlx::query("INSERT INTO memberships (project_id, account_id, role, created_at) VALUES ($1, $2, 'admin', $3)")
            .bind(id)
            .bind(admin_account)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn projects(&self) -> Result<Vec<ProjectSummary>> {
        Ok(sqlx::query_as(
            "SELECT p.id, p.name, \
               (SELECT COUNT(*) FROM memberships m WHERE m.project_id = p.id AND m.role = 'admin') AS admins, \
               (SELECT COUNT(*) FROM memberships m WHERE m.project_id = p.id AND m.role = 'member') AS members, \
               (SELECT COUNT(*) FROM clusters c WHERE c.project_id = p.id) AS clusters \
             FROM projects p ORDER BY p.name",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// The projects an account belongs to, by name.
    pub async fn memberships_of(&self, account_id: i64) -> Result<Vec<Membership>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT p.id, p.name, m.role FROM memberships m JOIN projects p ON p.id = m.project_id \
             WHERE m.account_id = $1 ORDER BY p.name",
        )
        .bind(account_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(project_id, project, role)| {
                Ok(Membership {
                    project_id,
                    project,
                    role: role_from_db(&role)?,
                })
            })
            .collect()
    }

    /// The account's role in the project named `project`, with the project's
    /// id; `None` both when it is not a member and when there is no such
    /// project (callers must not tell the two apart).
    pub async fn membership(&self, account_id: i64, project: &str) -> Result<Option<Membership>> {
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT p.id, m.role FROM memberships m JOIN projects p ON p.id = m.project_id \
             WHERE m.account_id = $1 AND p.name = $2",
        )
        .bind(account_id)
        .bind(project)
        .fetch_optional(self.pool())
        .await?;
        row.map(|(project_id, role)| {
            Ok(Membership {
                project_id,
                project: project.to_string(),
                role: role_from_db(&role)?,
            })
        })
        .transpose()
    }

    pub async fn members(&self, project_id: i64) -> Result<Vec<Member>> {
        let rows: Vec<(i64, String, String, String, i64)> = sqlx::query_as(
            "SELECT a.id, a.email, a.login, m.role, a.disabled FROM memberships m \
             JOIN accounts a ON a.id = m.account_id WHERE m.project_id = $1 \
             ORDER BY CASE m.role WHEN 'admin' THEN 0 ELSE 1 END, a.email_norm",
        )
        .bind(project_id)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(account_id, email, login, role, disabled)| {
                Ok(Member {
                    account_id,
                    email,
                    login,
                    role: role_from_db(&role)?,
                    disabled: disabled != 0,
                })
            })
            .collect()
    }

    /// Adds a member. The seed's rule: the account must exist, be enabled
    /// and have an SSH key; checked here inside the transaction so a key
    /// removed meanwhile cannot slip through.
    pub async fn member_add(&self, project_id: i64, account_id: i64, role: Role) -> Result<()> {
        let mut tx = self.begin_write().await?;
        self.lock(&mut tx, super::Row::Project, project_id).await?;
        let email = ensure_can_join(&mut tx, account_id).await?;
        sqlx::query("INSERT INTO memberships (project_id, account_id, role, created_at) VALUES ($1, $2, $3, $4)")
            .bind(project_id)
            .bind(account_id)
            .bind(role.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict_on_unique(e, || format!("{email} is already a member of this project")))?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a project with its memberships, clusters and volumes; the
    /// clusters' nodes go back to the pool and every live session into the
    /// project ends. Returns what it had.
    pub async fn project_delete(&self, name: &Name) -> Result<ProjectDeleted> {
        let mut tx = self.begin_write().await?;
        let found: Option<(i64,)> = sqlx::query_as("SELECT id FROM projects WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let (id,) = found.ok_or_else(|| StoreError::NotFound(format!("no project {name}")))?;
        self.lock(&mut tx, super::Row::Project, id).await?;
        let (clusters,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM clusters WHERE project_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        let (members,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM memberships WHERE project_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        let (volumes,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM volumes WHERE project_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        let freed = sqlx::query(
            "UPDATE nodes SET cluster_id = NULL WHERE cluster_id IN (SELECT id FROM clusters WHERE project_id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        for table in ["volumes", "clusters", "memberships"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE project_id = $1"
            )))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM projects WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let r = Revocation::Project {
            project: name.to_string(),
        };
        super::revocations::append(&mut *tx, &r).await?;
        tx.commit().await?;
        Ok(ProjectDeleted {
            members,
            clusters,
            volumes,
            nodes_freed: freed as i64,
        })
    }

    /// Removes a member, refusing to remove the last admin.
    pub async fn member_remove(
        &self,
        project_id: i64,
        project: &str,
        account_id: i64,
        email: &str,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        self.lock(&mut tx, super::Row::Project, project_id).await?;
        let role = self
            .role_in_tx(&mut tx, project_id, account_id, email)
            .await?;
        if role == Role::Admin {
            self.ensure_other_admin(&mut tx, project_id, account_id, "remove")
                .await?;
        }
        sqlx::query("DELETE FROM memberships WHERE project_id = $1 AND account_id = $2")
            .bind(project_id)
            .bind(account_id)
            .execute(&mut *tx)
            .await?;
        let r = Revocation::Membership {
            account_id,
            project: project.to_string(),
        };
        super::revocations::append(&mut *tx, &r).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets a member's role; returns the previous one. Refuses to demote the
    /// last admin.
    pub async fn member_set_role(
        &self,
        project_id: i64,
        account_id: i64,
        email: &str,
        role: Role,
    ) -> Result<Role> {
        let mut tx = self.begin_write().await?;
        self.lock(&mut tx, super::Row::Project, project_id).await?;
        let old = self
            .role_in_tx(&mut tx, project_id, account_id, email)
            .await?;
        if old == role {
            return Err(StoreError::Conflict(format!("{email} is already {role}")));
        }
        if old == Role::Admin {
            self.ensure_other_admin(&mut tx, project_id, account_id, "demote")
                .await?;
        }
        sqlx::query("UPDATE memberships SET role = $1 WHERE project_id = $2 AND account_id = $3")
            .bind(role.as_str())
            .bind(project_id)
            .bind(account_id)
            .execute(&mut *tx)
            .await?;
        let (project,): (String,) = sqlx::query_as("SELECT name FROM projects WHERE id = $1")
            .bind(project_id)
            .fetch_one(&mut *tx)
            .await?;
        super::revocations::append(
            &mut *tx,
            &Revocation::Role {
                account_id,
                project,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(old)
    }

    async fn role_in_tx(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        project_id: i64,
        account_id: i64,
        email: &str,
    ) -> Result<Role> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT role FROM memberships WHERE project_id = $1 AND account_id = $2",
        )
        .bind(project_id)
        .bind(account_id)
        .fetch_optional(&mut **tx)
        .await?;
        let (role,) = row.ok_or_else(|| {
            StoreError::NotFound(format!("{email} is not a member of this project"))
        })?;
        role_from_db(&role)
    }

    async fn ensure_other_admin(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        project_id: i64,
        account_id: i64,
        verb: &str,
    ) -> Result<()> {
        let (others,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM memberships WHERE project_id = $1 AND role = 'admin' AND account_id <> $2",
        )
        .bind(project_id)
        .bind(account_id)
        .fetch_one(&mut **tx)
        .await?;
        if others == 0 {
            return Err(StoreError::Refused(format!(
                "cannot {verb} the last admin of the project: make another member admin first"
            )));
        }
        Ok(())
    }
}

/// The seed's rule for joining a project: the account exists, is enabled and
/// has an SSH key. Checked inside the joining transaction, so a key removed
/// meanwhile cannot slip through. Returns the account's email.
async fn ensure_can_join(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    account_id: i64,
) -> Result<String> {
    let (email, disabled, keys): (String, i64, i64) = sqlx::query_as(
        "SELECT a.email, a.disabled, (SELECT COUNT(*) FROM ssh_keys k WHERE k.account_id = a.id) \
         FROM accounts a WHERE a.id = $1",
    )
    .bind(account_id)
    .fetch_one(&mut **tx)
    .await?;
    if disabled != 0 {
        return Err(StoreError::Refused(format!(
            "account {email} is disabled: the gateway operator can re-enable it with `gatehouse account enable {email}`"
        )));
    }
    if keys == 0 {
        return Err(StoreError::Refused(format!(
            "{email} has no SSH key registered; it must add one before it can be added"
        )));
    }
    Ok(email)
}
