//! Users, their authenticators and service tokens; the rate-limit windows of accounts.

use super::Db;
use crate::error::{Error, Result};
use crate::params;
use crate::store::{OptionalExtension, Row};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub kind: String,
    pub disabled: bool,
    pub mfa_enrolled: bool,
    #[serde(serialize_with = "crate::time::ser_unix_opt")]
    pub mfa_locked_until: Option<i64>,
    /// Locked after too many consecutive wrong codes, until `pim mfa reset`.
    pub mfa_blocked: bool,
    #[serde(serialize_with = "crate::time::ser_unix")]
    pub created_at: i64,
}

/// What checking a TOTP code needs to know of a user.
#[derive(Debug, Clone)]
pub struct TotpState {
    pub secret: Option<String>,
    pub last_step: Option<i64>,
    pub failures: i64,
    pub locked_until: Option<i64>,
    pub blocked: bool,
}

/// What signing in with a service token needs to know of the name it claims.
#[derive(Debug, Clone)]
pub struct TokenState {
    pub hash: Option<String>,
    pub disabled: bool,
    pub kind: String,
}

const USER_COLUMNS: &str = "id, name, email, display_name, kind, disabled, \
     totp_secret IS NOT NULL, mfa_locked_until, created_at, mfa_blocked";

fn user_from_row(r: &Row<'_>) -> Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        email: r.get(2)?,
        display_name: r.get(3)?,
        kind: r.get(4)?,
        disabled: r.get(5)?,
        mfa_enrolled: r.get(6)?,
        mfa_locked_until: r.get(7)?,
        created_at: r.get(8)?,
        mfa_blocked: r.get(9)?,
    })
}

impl Db {
    pub fn find_user(&self, name: &str) -> Result<Option<User>> {
        self.query_row(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1"),
            params![name],
            user_from_row,
        )
        .optional()
    }

    /// Every user, by name.
    pub fn all_users(&self) -> Result<Vec<User>> {
        self.query_map(
            &format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"),
            params![],
            user_from_row,
        )?
        .collect()
    }

    /// Add a user; a name that exists is a conflict.
    pub fn insert_user(
        &self,
        name: &str,
        email: Option<&str>,
        display_name: Option<&str>,
        at: i64,
    ) -> Result<i64> {
        if self.find_user(name)?.is_some() {
            return Err(Error::Conflict(format!(
                "A user named '{name}' already exists."
            )));
        }
        self.insert(
            "INSERT INTO users (name, email, display_name, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, email, display_name, at],
        )
    }

    /// Give `name` a new (sealed) TOTP secret, clearing failures and locks.
    pub fn set_totp_secret(&self, name: &str, sealed: &str) -> Result<()> {
        self.execute(
            "UPDATE users SET totp_secret = ?1, mfa_failures = 0, \
             mfa_locked_until = NULL, mfa_blocked = 0 WHERE name = ?2",
            params![sealed, name],
        )?;
        Ok(())
    }

    /// Replace a stored secret by its sealed form (nothing else changes).
    pub fn reseal_totp_secret(&self, user_id: i64, sealed: &str) -> Result<()> {
        self.execute(
            "UPDATE users SET totp_secret = ?1 WHERE id = ?2",
            params![sealed, user_id],
        )?;
        Ok(())
    }

    /// Remove a user's authenticator and every lock on it.
    pub fn clear_totp(&self, user_id: i64) -> Result<()> {
        self.execute(
            "UPDATE users SET totp_secret = NULL, mfa_failures = 0, mfa_locked_until = NULL, mfa_blocked = 0 WHERE id = ?1",
            params![user_id],
        )?;
        Ok(())
    }

    pub fn totp_state(&self, user_id: i64) -> Result<TotpState> {
        self.query_row(
            "SELECT totp_secret, totp_last_step, mfa_failures, mfa_locked_until, mfa_blocked FROM users WHERE id = ?1",
            params![user_id],
            |r| {
                Ok(TotpState {
                    secret: r.get(0)?,
                    last_step: r.get(1)?,
                    failures: r.get(2)?,
                    locked_until: r.get(3)?,
                    blocked: r.get(4)?,
                })
            },
        )
    }

    /// A code of `step` was accepted: no code of that step or before is accepted again.
    pub fn totp_accepted(&self, user_id: i64, step: i64) -> Result<()> {
        self.execute(
            "UPDATE users SET totp_last_step = ?1, mfa_failures = 0, mfa_locked_until = NULL WHERE id = ?2",
            params![step, user_id],
        )?;
        Ok(())
    }

    /// A wrong code: the count of consecutive failures and what it locks.
    pub fn totp_failed(
        &self,
        user_id: i64,
        failures: i64,
        locked_until: Option<i64>,
        blocked: bool,
    ) -> Result<()> {
        self.execute(
            "UPDATE users SET mfa_failures = ?1, mfa_locked_until = ?2, mfa_blocked = ?3 WHERE id = ?4",
            params![failures, locked_until, blocked, user_id],
        )?;
        Ok(())
    }

    /// Every stored secret: (user id, name, stored form).
    pub fn totp_secrets(&self) -> Result<Vec<(i64, String, String)>> {
        self.query_map(
            "SELECT id, name, totp_secret FROM users WHERE totp_secret IS NOT NULL",
            params![],
            super::FromRow::from_row,
        )?
        .collect()
    }

    /// How many secrets are sealed (`enc1:`).
    pub fn sealed_secrets(&self) -> Result<i64> {
        self.query_row(
            "SELECT count(*) FROM users WHERE totp_secret LIKE 'enc1:%'",
            params![],
            |r| r.get(0),
        )
    }

    pub fn token_state(&self, name: &str) -> Result<Option<TokenState>> {
        self.query_row(
            "SELECT token_hash, disabled, kind FROM users WHERE name = ?1",
            params![name],
            |r| {
                Ok(TokenState {
                    hash: r.get(0)?,
                    disabled: r.get(1)?,
                    kind: r.get(2)?,
                })
            },
        )
        .optional()
    }

    /// Make a user a service principal with the token whose SHA-256 is `hash`, or give a
    /// service a new token.
    pub fn set_service_token(&self, user_id: i64, hash: &str) -> Result<()> {
        self.execute(
            "UPDATE users SET kind = 'service', token_hash = ?1 WHERE id = ?2",
            params![hash, user_id],
        )?;
        Ok(())
    }

    pub fn set_disabled(&self, user_id: i64, disabled: bool) -> Result<()> {
        self.execute(
            "UPDATE users SET disabled = ?1 WHERE id = ?2",
            params![disabled, user_id],
        )?;
        Ok(())
    }

    /// A rate limit's window: (count, when it began, locked until), if any.
    pub fn limit_window(&self, key: &str) -> Result<Option<(i64, i64, Option<i64>)>> {
        self.query_row(
            "SELECT failures, first_at, locked_until FROM account_failures WHERE account = ?1",
            params![key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
    }

    pub fn set_limit_window(
        &self,
        key: &str,
        count: i64,
        first: i64,
        until: Option<i64>,
    ) -> Result<()> {
        self.execute(
            "INSERT INTO account_failures (account, failures, first_at, locked_until) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (account) DO UPDATE SET failures = ?2, first_at = ?3, locked_until = ?4",
            params![key, count, first, until],
        )?;
        Ok(())
    }
}
