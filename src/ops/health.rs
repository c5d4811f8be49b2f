//! Facts about the database for `pim doctor`: schema, unrecorded expiries (a sweep that
//! does not run), notifications that failed or wait.

use super::Pim;
use crate::error::Result;
use crate::store::Backend;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub backend: &'static str,
    pub instance: String,
    pub schema: i64,
    pub schema_known: i64,
    /// Activations that ended 15 minutes ago or more and that no sweep has written down.
    pub unrecorded_expiries: usize,
    /// When the oldest of them ended (unix seconds).
    pub oldest_unrecorded: Option<i64>,
    pub notifications_failed: usize,
    pub notifications_waiting: usize,
    /// The size of the log, and of the last checkpoint given to the witnesses.
    pub log_size: u64,
    pub witnessed: u64,
    pub witnesses: bool,
    /// When `pim sweep` last ran (unix seconds), if ever.
    pub last_sweep: Option<i64>,
}

impl Pim {
    pub fn health(&self) -> Result<Health> {
        let now = self.now().timestamp();
        let (schema, schema_known) = self.conn.schema_version()?;
        let late: Vec<i64> = self
            .conn
            .requests_due(now, i64::MAX)?
            .into_iter()
            .map(|d| d.at)
            .filter(|&at| at <= now - 15 * 60)
            .collect();
        let outbox = self.conn.outbox(false)?;
        Ok(Health {
            backend: match self.conn.backend() {
                Backend::Sqlite => "sqlite",
                Backend::Postgres => "postgresql",
            },
            instance: self.conn.instance()?,
            schema,
            schema_known,
            unrecorded_expiries: late.len(),
            oldest_unrecorded: late.iter().copied().min(),
            notifications_failed: outbox.iter().filter(|o| o.status == "failed").count(),
            notifications_waiting: outbox.iter().filter(|o| o.status == "pending").count(),
            log_size: self.conn.audit_count()?.max(0) as u64,
            witnessed: self.conn.witnessed()?,
            witnesses: self.policy()?.witness.any(),
            last_sweep: self.conn.last_sweep()?,
        })
    }
}
