//! Accounts and their SSH keys.

use serde::Serialize;

use super::{Result, Revocation, Store, StoreError, conflict_on_unique, now_ms};
use crate::model::{Email, Login, SshPublicKey};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Account {
    #[serde(skip)]
    pub id: i64,
    pub email: String,
    pub login: String,
    #[serde(serialize_with = "as_bool")]
    pub disabled: i64,
    #[serde(skip)]
    pub created_at: i64,
}

fn as_bool<S: serde::Serializer>(v: &i64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_bool(*v != 0)
}

impl Account {
    pub fn is_disabled(&self) -> bool {
        self.disabled != 0
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KeyRecord {
    #[serde(skip)]
    pub id: i64,
    #[serde(skip)]
    pub account_id: i64,
    pub fingerprint: String,
    pub algorithm: String,
    pub comment: String,
    #[serde(skip)]
    pub public_key: String,
    #[serde(skip)]
    pub created_at: i64,
}

impl Store {
    pub async fn account_add(&self, email: &Email, login: &Login) -> Result<Account> {
        let inserted = sqlx::query_as(
            "INSERT INTO accounts (email, email_norm, login, disabled, created_at) \
             VALUES ($1, $2, $3, 0, $4) RETURNING id, email, login, disabled, created_at",
        )
        .bind(email.as_str())
        .bind(email.normalized())
        .bind(login.as_str())
        .bind(now_ms())
        .fetch_one(self.pool())
        .await;
        match inserted {
            Ok(account) => Ok(account),
            // Both the email and the login may clash; the email is the
            // account's identity, so name it first.
            Err(e) if super::is_unique_violation(&e) => Err(StoreError::Conflict(
                if self.account_by_email(email).await?.is_some() {
                    format!("an account with email {email} already exists")
                } else {
                    format!("login {login} is already taken: choose another with --login")
                },
            )),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn accounts(&self) -> Result<Vec<Account>> {
        Ok(sqlx::query_as(
            "SELECT id, email, login, disabled, created_at FROM accounts ORDER BY email_norm",
        )
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn account_by_email(&self, email: &Email) -> Result<Option<Account>> {
        Ok(sqlx::query_as(
            "SELECT id, email, login, disabled, created_at FROM accounts WHERE email_norm = $1",
        )
        .bind(email.normalized())
        .fetch_optional(self.pool())
        .await?)
    }

    /// Like [`Store::account_by_email`], but a missing account is an error
    /// that names the email.
    pub async fn need_account(&self, email: &Email) -> Result<Account> {
        self.account_by_email(email)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no account for {email}")))
    }

    /// The account that may log in as `login` with the key `fingerprint`:
    /// the single lookup made for every authentication, on two unique indexes.
    pub async fn account_for_login_key(
        &self,
        login: &str,
        fingerprint: &str,
    ) -> Result<Option<Account>> {
        Ok(sqlx::query_as(
            "SELECT a.id, a.email, a.login, a.disabled, a.created_at \
             FROM accounts a JOIN ssh_keys k ON k.account_id = a.id \
             WHERE a.login = $1 AND k.fingerprint = $2",
        )
        .bind(login)
        .bind(fingerprint)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Disables the account; returns it, or Conflict when it already was.
    pub async fn account_disable(&self, email: &Email) -> Result<Account> {
        let account = self.need_account(email).await?;
        if account.is_disabled() {
            return Err(StoreError::Conflict(format!(
                "account {email} is already disabled"
            )));
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE accounts SET disabled = 1 WHERE id = $1")
            .bind(account.id)
            .execute(&mut *tx)
            .await?;
        let r = Revocation::Account {
            account_id: account.id,
        };
        super::revocations::append(&mut *tx, &r).await?;
        tx.commit().await?;
        Ok(Account {
            disabled: 1,
            ..account
        })
    }

    /// Re-enables a disabled account; Conflict when it is not disabled.
    pub async fn account_enable(&self, email: &Email) -> Result<Account> {
        let account = self.need_account(email).await?;
        let done = sqlx::query("UPDATE accounts SET disabled = 0 WHERE id = $1 AND disabled <> 0")
            .bind(account.id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "account {email} is not disabled"
            )));
        }
        Ok(Account {
            disabled: 0,
            ..account
        })
    }

    /// Removes an account with its keys and memberships and ends its live
    /// sessions. Refused while it is the last admin of a project.
    pub async fn account_remove(&self, email: &Email) -> Result<Account> {
        let account = self.need_account(email).await?;
        let mut tx = self.begin_write().await?;
        if self.backend == super::Backend::Postgres {
            // The projects it administers, locked against a concurrent demotion.
            sqlx::query(
                "SELECT p.id FROM projects p JOIN memberships m ON m.project_id = p.id \
                 WHERE m.account_id = $1 ORDER BY p.id FOR UPDATE OF p",
            )
            .bind(account.id)
            .execute(&mut *tx)
            .await?;
        }
        let last: Vec<(String,)> = sqlx::query_as(
            "SELECT p.name FROM memberships m JOIN projects p ON p.id = m.project_id \
             WHERE m.account_id = $1 AND m.role = 'admin' AND NOT EXISTS \
             (SELECT 1 FROM memberships o WHERE o.project_id = m.project_id AND o.role = 'admin' AND o.account_id <> $1) \
             ORDER BY p.name",
        )
        .bind(account.id)
        .fetch_all(&mut *tx)
        .await?;
        if !last.is_empty() {
            let names: Vec<String> = last.into_iter().map(|(n,)| n).collect();
            return Err(StoreError::Refused(format!(
                "{email} is the last admin of project {}: make another member admin first, or delete the project",
                names.join(", ")
            )));
        }
        for q in [
            "DELETE FROM ssh_keys WHERE account_id = $1",
            "DELETE FROM memberships WHERE account_id = $1",
            "DELETE FROM accounts WHERE id = $1",
        ] {
            sqlx::query(q).bind(account.id).execute(&mut *tx).await?;
        }
        let r = Revocation::Account {
            account_id: account.id,
        };
        super::revocations::append(&mut *tx, &r).await?;
        tx.commit().await?;
        Ok(account)
    }

    pub async fn key_add(&self, account: &Account, key: &SshPublicKey) -> Result<KeyRecord> {
        let line = key_line(key)?;
        let row: KeyRecord = sqlx::query_as(
            "INSERT INTO ssh_keys (account_id, fingerprint, algorithm, public_key, comment, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING id, account_id, fingerprint, algorithm, comment, public_key, created_at",
        )
        .bind(account.id)
        .bind(key.fingerprint())
        .bind(key.algorithm())
        .bind(line)
        .bind(key.comment())
        .bind(now_ms())
        .fetch_one(self.pool())
        .await
        .map_err(|e| {
            conflict_on_unique(e, || {
                format!("key {} is already registered (to this or another account)", key.fingerprint())
            })
        })?;
        Ok(row)
    }

    /// Adds a key that waits for proof of possession (see
    /// [`Store::confirm_pending_key`]). Says nothing about whether any other
    /// account holds the key. Conflict only when this account already has
    /// it registered.
    pub async fn key_add_pending(&self, account: &Account, key: &SshPublicKey) -> Result<()> {
        let line = key_line(key)?;
        let mine: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM ssh_keys WHERE account_id = $1 AND fingerprint = $2")
                .bind(account.id)
                .bind(key.fingerprint())
                .fetch_optional(self.pool())
                .await?;
        if mine.is_some() {
            return Err(StoreError::Conflict(format!(
                "key {} is already registered to your account",
                key.fingerprint()
            )));
        }
        let mut tx = self.begin_write().await?;
        // Expired ones go; a few may wait at once.
        sqlx::query("DELETE FROM pending_keys WHERE created_at < $1")
            .bind(now_ms() - crate::store::PENDING_KEY_MAX_AGE_MS)
            .execute(&mut *tx)
            .await?;
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM pending_keys WHERE account_id = $1 AND fingerprint <> $2",
        )
        .bind(account.id)
        .bind(key.fingerprint())
        .fetch_one(&mut *tx)
        .await?;
        if waiting >= MAX_PENDING_KEYS {
            return Err(StoreError::Refused(format!(
                "{waiting} keys are already waiting to be confirmed: log in with one of them, or wait an hour"
            )));
        }
        sqlx::query("DELETE FROM pending_keys WHERE account_id = $1 AND fingerprint = $2")
            .bind(account.id)
            .bind(key.fingerprint())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO pending_keys (account_id, fingerprint, algorithm, public_key, comment, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(account.id)
        .bind(key.fingerprint())
        .bind(key.algorithm())
        .bind(line)
        .bind(key.comment())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The enabled or disabled account whose login is `login` and that has
    /// `fingerprint` pending, added less than `max_age_ms` ago.
    pub async fn account_for_login_pending_key(
        &self,
        login: &str,
        fingerprint: &str,
        max_age_ms: i64,
    ) -> Result<Option<Account>> {
        Ok(sqlx::query_as(
            "SELECT a.id, a.email, a.login, a.disabled, a.created_at \
             FROM accounts a JOIN pending_keys k ON k.account_id = a.id \
             WHERE a.login = $1 AND k.fingerprint = $2 AND k.created_at >= $3",
        )
        .bind(login)
        .bind(fingerprint)
        .bind(now_ms() - max_age_ms)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Makes a pending key a registered one: its holder just signed with it.
    /// Conflict when another account registered the same key meanwhile.
    pub async fn confirm_pending_key(&self, account_id: i64, fingerprint: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let row: Option<(String, String, String, i64)> = sqlx::query_as(
            "SELECT algorithm, public_key, comment, created_at FROM pending_keys \
             WHERE account_id = $1 AND fingerprint = $2",
        )
        .bind(account_id)
        .bind(fingerprint)
        .fetch_optional(&mut *tx)
        .await?;
        let (algorithm, public_key, comment, _) =
            row.ok_or_else(|| StoreError::NotFound("no such pending key".into()))?;
        sqlx::query(
            "INSERT INTO ssh_keys (account_id, fingerprint, algorithm, public_key, comment, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(account_id)
        .bind(fingerprint)
        .bind(algorithm)
        .bind(public_key)
        .bind(comment)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, || "the key is registered already".to_string()))?;
        sqlx::query("DELETE FROM pending_keys WHERE fingerprint = $1")
            .bind(fingerprint)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn keys_of(&self, account_id: i64) -> Result<Vec<KeyRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, account_id, fingerprint, algorithm, comment, public_key, created_at \
             FROM ssh_keys WHERE account_id = $1 ORDER BY id",
        )
        .bind(account_id)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn key_remove(&self, account_id: i64, fingerprint: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM ssh_keys WHERE account_id = $1 AND fingerprint = $2")
            .bind(account_id)
            .bind(fingerprint)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "no key {fingerprint} on this account"
            )));
        }
        let r = Revocation::Key {
            account_id,
            fingerprint: fingerprint.to_string(),
        };
        super::revocations::append(&mut *tx, &r).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Keys one account may have waiting for confirmation at once.
const MAX_PENDING_KEYS: i64 = 5;

/// The key line stored for `key`: type, base64, comment.
fn key_line(key: &SshPublicKey) -> Result<String> {
    key.to_openssh()
        .map_err(|e| StoreError::Refused(format!("cannot encode the key: {e}")))
}
