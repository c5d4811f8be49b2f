//! Facts about the database for `pim doctor`: schema, unrecorded expiries (a sweep that
//! does not run), notifications that failed or wait.

use super::{actor_user, has_permission, permission_error, refuse, Pim};
use crate::audit::Event;
use crate::error::{Error, Result};
use crate::scope::Scope;
use crate::store::assignments::CountDrift;
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

/// What `pim store recount` found (and, when anything was off, counted again).
#[derive(Debug, Clone, Serialize)]
pub struct Recount {
    #[serde(flatten)]
    pub drift: CountDrift,
    /// Whether the counts were written again (only when any was off).
    pub recounted: bool,
}

impl Pim {
    /// Where the counts of eligible holders that `role list` shows disagree with the
    /// assignments (`pim doctor`).
    pub fn count_drift(&self) -> Result<CountDrift> {
        self.conn.count_drift()
    }

    /// Count each role's eligible holders again from the assignments, when the kept counts
    /// disagree with them (permission `policy`; on PostgreSQL, as the owner of the tables).
    /// Audited as `store.recount` with what was off; when nothing was, neither the counts nor
    /// the log are written (the call still counts against the actor's change budget).
    pub fn recount(&mut self, actor: &str) -> Result<Recount> {
        self.write(actor, |tx, now, policy| {
            let me = actor_user(tx, actor)?;
            let event = Event::new(actor, "store.recount");
            if !has_permission(tx, policy, &me, "policy", &Scope::root(), now.timestamp())? {
                return refuse(tx, now, event, permission_error("policy", &Scope::root()));
            }
            if !tx.may_recount()? {
                // On record as any refusal is: the runtime role may append to the log.
                return refuse(
                    tx,
                    now,
                    event,
                    Error::Refused(
                        "Only the owner of pim's tables may write the counts on PostgreSQL (the runtime role reads them): run `pim store recount` with the owner's URL in --db."
                            .to_string(),
                    ),
                );
            }
            // Run as the owner: refuse a search path where another role could have planted
            // a function or operator that the statements below would call (as migrations do).
            tx.refuse_planted_objects()?;
            tx.lock_counted()?;
            let drift = tx.count_drift()?;
            if drift.is_empty() {
                return Ok(Recount {
                    drift,
                    recounted: false,
                });
            }
            tx.recount_role_holders()?;
            let roles: Vec<serde_json::Value> = drift
                .roles
                .iter()
                .map(|r| serde_json::json!({"role": r.role, "kept": r.kept, "counted": r.counted}))
                .collect();
            tx.record(event.detail("pairs", drift.pairs).detail("roles", roles))?;
            Ok(Recount {
                drift,
                recounted: true,
            })
        })
    }
}
