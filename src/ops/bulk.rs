//! Bulk and declarative assignment for pipelines: a CSV import and a desired-state apply,
//! each checked whole before anything is written, then written in one transaction.

use super::assignments::{assign_in, unknown_role, AssignInput, End};
use super::{actor_user, users, Pim};
use crate::error::{Error, Result};
use crate::scope::Scope;
use crate::time::{parse_duration, parse_instant};
use rusqlite::{params, Connection, TransactionBehavior};
use serde::Serialize;

/// One row of an import file, with its line for error messages.
#[derive(Debug, Clone, Default)]
pub struct ImportRow {
    pub line: usize,
    pub user: String,
    pub role: String,
    pub scope: String,
    pub kind: String,
    pub start: String,
    pub end: String,
    pub justification: String,
    pub ticket: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub added: usize,
    pub unchanged: usize,
    pub dry_run: bool,
}

/// An end as an import or apply file writes it: empty (the policy's longest), `permanent`, an
/// instant, or a duration from the start.
pub(crate) fn parse_end(text: &str) -> Result<End> {
    let t = text.trim();
    Ok(if t.is_empty() {
        End::PolicyMax
    } else if t == "permanent" {
        End::Permanent
    } else if let Ok(at) = parse_instant(t) {
        End::At(at)
    } else {
        End::After(parse_duration(t).map_err(|_| {
            Error::Usage(format!(
                "'{t}' is not an end: write an instant, a duration, permanent, or leave it empty."
            ))
        })?)
    })
}

/// Whether `user` already has a current `kind` assignment of `role` at `scope`.
pub(crate) fn exists(
    conn: &Connection,
    user: &str,
    role: &str,
    scope: &str,
    kind: &str,
    now: i64,
) -> Result<bool> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM assignments a JOIN users u ON u.id = a.user_id WHERE u.name = ?1 AND a.role = ?2 \
             AND a.scope = ?3 AND a.kind = ?4 AND a.removed_at IS NULL AND (a.end_at IS NULL OR a.end_at > ?5)",
        )?
        .query_row(params![user, role, scope, kind, now], |r| r.get(0))?;
    Ok(n > 0)
}

fn row_input(
    conn: &Connection,
    policy: &crate::policy::Policy,
    row: &ImportRow,
) -> Result<AssignInput> {
    let role = policy
        .role(&row.role)
        .ok_or_else(|| unknown_role(&row.role))?;
    users::get(conn, &row.user)?;
    let scope = if row.scope.trim().is_empty() {
        Scope::root()
    } else {
        Scope::parse(row.scope.trim())?
    };
    let active = match row.kind.trim() {
        "eligible" => false,
        "active" => true,
        other => {
            return Err(Error::Usage(format!(
                "type '{other}' is not eligible or active."
            )))
        }
    };
    let start = match row.start.trim() {
        "" => None,
        t => Some(parse_instant(t)?),
    };
    let blank = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    Ok(AssignInput {
        user: row.user.trim().to_string(),
        role: role.key.clone(),
        scope,
        active,
        start,
        end: parse_end(&row.end)?,
        justification: blank(&row.justification),
        ticket: blank(&row.ticket),
    })
}

impl Pim {
    /// Import assignments: every row is checked first (all problems reported with their
    /// lines, nothing written), then all are written in one transaction. A row that matches
    /// a current assignment changes nothing.
    pub fn import_assignments(
        &mut self,
        actor: &str,
        rows: &[ImportRow],
        dry_run: bool,
    ) -> Result<ImportSummary> {
        let policy = self.policy()?;
        let now = self.clock.now();
        let t = now.timestamp();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        actor_user(&tx, actor)?;
        let (mut added, mut unchanged) = (0, 0);
        let mut problems = Vec::new();
        for row in rows {
            let outcome = row_input(&tx, &policy, row).and_then(|input| {
                let kind = if input.active { "active" } else { "eligible" };
                if exists(&tx, &input.user, &input.role, input.scope.as_str(), kind, t)? {
                    return Ok(false);
                }
                assign_in(&tx, now, &policy, actor, &input).map(|_| true)
            });
            match outcome {
                Ok(true) => added += 1,
                Ok(false) => unchanged += 1,
                Err(Error::Recorded(e)) => problems.push(format!("line {}: {e}", row.line)),
                Err(e) => problems.push(format!("line {}: {e}", row.line)),
            }
        }
        if !problems.is_empty() {
            // Dropping the transaction rolls back every row: nothing changes.
            return Err(Error::Usage(format!(
                "{} row(s) cannot be imported; nothing was changed:\n{}",
                problems.len(),
                problems.join("\n")
            )));
        }
        if !dry_run {
            tx.commit()?;
        }
        Ok(ImportSummary {
            added,
            unchanged,
            dry_run,
        })
    }
}
