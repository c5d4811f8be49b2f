//! The database's own facts: the policy in force, its instance id, how secrets are kept.

use super::{Db, OptionalExtension};
use crate::error::Result;
use crate::params;

/// The `meta` key of the mark a sweep's batches leave (`Db::unflushed_writes`): '1' from
/// the first batch until the sweep's last transaction (`Db::flushed`) makes it '0'.
pub(super) const UNFLUSHED: &str = "sweep:unflushed";

impl Db {
    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    fn delete_meta(&self, key: &str) -> Result<()> {
        self.execute("DELETE FROM meta WHERE key = ?1", params![key])?;
        Ok(())
    }

    /// When `pim sweep` last ran to the end (unix seconds), whoever ran it.
    pub fn last_sweep(&self) -> Result<Option<i64>> {
        Ok(self.meta("sweep:last")?.and_then(|v| v.parse().ok()))
    }

    /// Bookkeeping, like the outbox's delivery state: no event explains it, so it is not
    /// counted as a change of pim's state (see `Tx::commit`).
    pub fn set_last_sweep(&self, t: i64) -> Result<()> {
        self.run(
            "INSERT INTO meta (key, value) VALUES ('sweep:last', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![t.to_string()],
        )?;
        Ok(())
    }

    /// The mark each of a sweep's batches leaves for durable reads (`Db::unflushed_writes`),
    /// bookkeeping like `set_last_sweep`; written once, the batches after it change nothing.
    pub(super) fn mark_unflushed(&self) -> Result<()> {
        self.run(
            "INSERT INTO meta (key, value) VALUES (?1, '1') \
             ON CONFLICT (key) DO UPDATE SET value = '1' WHERE meta.value <> '1'",
            params![UNFLUSHED],
        )?;
        Ok(())
    }

    /// The end of a sweep's batches (`Db::unflushed_writes`): the mark they leave for durable
    /// reads goes, in a transaction that commits as every other, waiting for its flush, and
    /// so for theirs (the WAL is flushed in order).
    pub fn flushed(&self) -> Result<()> {
        self.run(
            "UPDATE meta SET value = '0' WHERE key = ?1",
            params![UNFLUSHED],
        )?;
        Ok(())
    }

    /// A user's enrolment waiting for its first code: the sealed secret, when it began, and
    /// how many wrong codes it has had.
    pub fn pending_enrolment(&self, user: &str) -> Result<Option<(String, i64, i64)>> {
        Ok(self
            .meta(&format!("enrolment:{user}"))?
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    pub fn set_pending_enrolment(
        &self,
        user: &str,
        sealed: &str,
        at: i64,
        tries: i64,
    ) -> Result<()> {
        self.set_meta(
            &format!("enrolment:{user}"),
            &serde_json::json!([sealed, at, tries]).to_string(),
        )
    }

    pub fn clear_pending_enrolment(&self, user: &str) -> Result<()> {
        self.delete_meta(&format!("enrolment:{user}"))
    }

    /// Until when a user may enrol a new authenticator without a code from the old one (a
    /// one-time enrolment an administrator issued).
    pub fn enrolment_grant(&self, user: &str) -> Result<Option<i64>> {
        Ok(self
            .meta(&format!("enrolment-grant:{user}"))?
            .and_then(|v| v.parse().ok()))
    }

    pub fn set_enrolment_grant(&self, user: &str, until: i64) -> Result<()> {
        self.set_meta(&format!("enrolment-grant:{user}"), &until.to_string())
    }

    pub fn clear_enrolment_grant(&self, user: &str) -> Result<()> {
        self.delete_meta(&format!("enrolment-grant:{user}"))
    }

    /// The policy's TOML source, when the database was initialised.
    pub fn policy_source(&self) -> Result<Option<String>> {
        self.meta("policy")
    }

    pub fn set_policy_source(&self, source: &str) -> Result<()> {
        self.set_meta("policy", source)
    }

    /// The id that names this database's key file.
    pub fn instance(&self) -> Result<String> {
        self.meta("instance")?.ok_or_else(|| {
            crate::Error::Environment("The database has no instance id.".to_string())
        })
    }

    /// Whether the TOTP secrets still wait to be sealed (a database from before sealing).
    pub fn secrets_plain(&self) -> Result<bool> {
        Ok(self.meta("secrets")?.as_deref() == Some("plain"))
    }

    /// The size of the log's last checkpoint given to the witnesses.
    pub fn witnessed(&self) -> Result<u64> {
        Ok(self
            .meta("witnessed")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    pub fn set_witnessed(&self, size: u64) -> Result<()> {
        self.set_meta("witnessed", &size.to_string())
    }

    pub fn set_secrets_sealed(&self) -> Result<()> {
        self.set_meta("secrets", "sealed")
    }

    /// The schema version the database is at, and the one this pim knows.
    pub fn schema_version(&self) -> Result<(i64, i64)> {
        Ok(match self.backend() {
            super::Backend::Sqlite => (
                self.query_row("PRAGMA user_version", params![], |r| r.get(0))?,
                super::MIGRATIONS.len() as i64,
            ),
            super::Backend::Postgres => (
                self.query_row("SELECT version FROM pim_schema", params![], |r| r.get(0))?,
                super::pg::MIGRATIONS.len() as i64,
            ),
        })
    }
}
