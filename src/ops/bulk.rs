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

/// One desired assignment of an apply file.
#[derive(Debug, Clone)]
pub struct Desired {
    pub line: usize,
    pub user: String,
    pub role: String,
    pub scope: Scope,
    pub active: bool,
    /// `PolicyMax`, `After` (counts only when created), `At` or `Permanent`.
    pub end: End,
    pub justification: Option<String>,
    pub ticket: Option<String>,
}

/// One line of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    pub user: String,
    pub role: String,
    pub scope: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// For a change: the current end and the new one (None: permanent).
    pub from: Option<Option<String>>,
    pub to: Option<Option<String>>,
    #[serde(skip)]
    pub assignment: Option<i64>,
    #[serde(skip)]
    pub line: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub add: Vec<PlanItem>,
    pub change: Vec<PlanItem>,
    pub remove: Vec<PlanItem>,
    /// Removals `--prune` would make, or refused to make (last protected holder).
    pub kept: Vec<String>,
    pub applied: bool,
}

impl Pim {
    /// Make the assignments what `desired` says: add what is missing, change ends that differ
    /// (a relative duration sets the end only at creation), and with `prune` remove what the
    /// file does not name (never the last permanent holder of a protected role). One
    /// transaction; with `dry_run`, only the plan.
    pub fn apply_assignments(
        &mut self,
        actor: &str,
        desired: &[Desired],
        prune: bool,
        dry_run: bool,
    ) -> Result<Plan> {
        let policy = self.policy()?;
        let now = self.clock.now();
        let t = now.timestamp();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let me = actor_user(&tx, actor)?;
        let mut plan = Plan::default();
        let mut problems = Vec::new();
        let mut wanted = std::collections::HashSet::new();
        for d in desired {
            let Some(role) = policy.role(&d.role) else {
                problems.push(format!("line {}: {}", d.line, unknown_role(&d.role)));
                continue;
            };
            if let Err(e) = users::get(&tx, &d.user) {
                problems.push(format!("line {}: {e}", d.line));
                continue;
            }
            let kind = if d.active { "active" } else { "eligible" };
            if !wanted.insert((d.user.clone(), role.key.clone(), d.scope.to_string(), kind)) {
                problems.push(format!(
                    "line {}: {} {} at {} ({kind}) is listed twice.",
                    d.line, d.user, role.key, d.scope
                ));
                continue;
            }
            let current: Option<(i64, Option<i64>)> = tx
                .prepare_cached(
                    "SELECT a.id, a.end_at FROM assignments a JOIN users u ON u.id = a.user_id WHERE u.name = ?1 \
                     AND a.role = ?2 AND a.scope = ?3 AND a.kind = ?4 AND a.removed_at IS NULL \
                     AND (a.end_at IS NULL OR a.end_at > ?5) ORDER BY a.id LIMIT 1",
                )?
                .query_row(params![d.user, role.key, d.scope.as_str(), kind, t], |r| Ok((r.get(0)?, r.get(1)?)))
                .ok();
            let item = |from: Option<Option<i64>>, to: Option<Option<i64>>, assignment| PlanItem {
                user: d.user.clone(),
                role: role.key.clone(),
                scope: d.scope.to_string(),
                kind: kind.to_string(),
                from: from.map(|e| e.map(|x| crate::time::rfc3339(crate::time::from_unix(x)))),
                to: to.map(|e| e.map(|x| crate::time::rfc3339(crate::time::from_unix(x)))),
                assignment,
                line: d.line,
            };
            match current {
                None => {
                    let input = AssignInput {
                        user: d.user.clone(),
                        role: role.key.clone(),
                        scope: d.scope.clone(),
                        active: d.active,
                        start: None,
                        end: d.end,
                        justification: d.justification.clone(),
                        ticket: d.ticket.clone(),
                    };
                    match assign_in(&tx, now, &policy, actor, &input) {
                        Ok(a) => plan.add.push(item(None, Some(a.end_at), None)),
                        Err(Error::Recorded(e)) => problems.push(format!("line {}: {e}", d.line)),
                        Err(e) => problems.push(format!("line {}: {e}", d.line)),
                    }
                }
                Some((id, end)) => {
                    let target = match d.end {
                        End::Permanent => Some(None),
                        End::At(at) => Some(Some(at.timestamp())),
                        End::PolicyMax | End::After(_) => None,
                    };
                    if let Some(new_end) = target.filter(|n| *n != end) {
                        if !super::has_permission(&tx, &policy, &me, "assign", &d.scope, t)? {
                            problems.push(format!(
                                "line {}: {}",
                                d.line,
                                super::permission_error("assign", &d.scope)
                            ));
                            continue;
                        }
                        let limit = if d.active {
                            role.settings.max_active
                        } else {
                            role.settings.max_eligible
                        };
                        let too_long = match (limit, new_end) {
                            (crate::policy::Limit::Permanent, _) => false,
                            (crate::policy::Limit::Max(_), None) => true,
                            (crate::policy::Limit::Max(max), Some(e)) => e - t > max.num_seconds(),
                        };
                        if too_long || new_end.is_some_and(|e| e <= t) {
                            problems.push(format!("line {}: the new end is not allowed by {}'s policy or is in the past.", d.line, role.key));
                            continue;
                        }
                        tx.execute(
                            "UPDATE assignments SET end_at = ?1 WHERE id = ?2",
                            params![new_end, id],
                        )?;
                        crate::audit::append(
                            &tx,
                            now,
                            crate::audit::Event::new(actor, "assignment.change")
                                .principal(&d.user)
                                .role(&role.key)
                                .scope(d.scope.as_str())
                                .expires(new_end)
                                .detail("assignment", id)
                                .detail("type", kind)
                                .detail(
                                    "from",
                                    end.map(|e| crate::time::rfc3339(crate::time::from_unix(e)))
                                        .unwrap_or_else(|| "permanent".into()),
                                ),
                        )?;
                        plan.change.push(item(Some(end), Some(new_end), Some(id)));
                    }
                }
            }
        }
        if prune {
            let current: Vec<(i64, String, String, String, String, Option<i64>)> = super::rows(&tx, "SELECT a.id, u.name, a.role, a.scope, a.kind, a.end_at FROM assignments a JOIN users u ON u.id = a.user_id \
                     WHERE a.removed_at IS NULL AND (a.end_at IS NULL OR a.end_at > ?1) ORDER BY u.name, a.role, a.scope", [t])?;
            for (id, user, role, scope, kind, end) in current {
                if wanted.contains(&(user.clone(), role.clone(), scope.clone(), kind.as_str())) {
                    continue;
                }
                let Ok(sc) = Scope::parse(&scope) else {
                    continue;
                };
                let user_id: i64 =
                    tx.query_row("SELECT id FROM users WHERE name = ?1", [&user], |r| {
                        r.get(0)
                    })?;
                if policy.roles.get(&role).is_some_and(|r| r.protected)
                    && super::would_orphan_protected(&tx, &role, user_id, Some(id), t)?
                {
                    plan.kept.push(format!("{user} {role} at {scope} ({kind}): the last permanent holder of a protected role stays"));
                    continue;
                }
                if !super::has_permission(&tx, &policy, &me, "assign", &sc, t)? {
                    problems.push(format!(
                        "{user} {role} at {scope}: {}",
                        super::permission_error("assign", &sc)
                    ));
                    continue;
                }
                tx.execute(
                    "UPDATE assignments SET removed_at = ?1, removed_by = ?2 WHERE id = ?3",
                    params![t, actor, id],
                )?;
                crate::audit::append(
                    &tx,
                    now,
                    crate::audit::Event::new(actor, "assignment.remove")
                        .principal(&user)
                        .role(&role)
                        .scope(&scope)
                        .detail("type", kind.clone())
                        .detail("assignment", id)
                        .detail("pruned", true),
                )?;
                super::activation::end_activations(
                    &tx,
                    &policy,
                    now,
                    actor,
                    "eligibility_id = ?1",
                    id,
                    "revoked",
                    "activation.revoke",
                    "its eligibility was pruned by `pim assignment apply`",
                )?;
                plan.remove.push(PlanItem {
                    user,
                    role,
                    scope,
                    kind,
                    from: Some(end.map(|e| crate::time::rfc3339(crate::time::from_unix(e)))),
                    to: None,
                    assignment: Some(id),
                    line: 0,
                });
            }
        }
        if !problems.is_empty() {
            return Err(Error::Usage(format!(
                "The desired state cannot be applied; nothing was changed:\n{}",
                problems.join("\n")
            )));
        }
        if !dry_run {
            tx.commit()?;
            plan.applied = true;
        }
        Ok(plan)
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDesiredFile {
    #[serde(default)]
    eligible: Vec<toml::Spanned<RawDesired>>,
    #[serde(default)]
    active: Vec<toml::Spanned<RawDesired>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDesired {
    user: String,
    role: String,
    scope: Option<String>,
    duration: Option<String>,
    until: Option<String>,
    permanent: Option<bool>,
    justification: Option<String>,
    ticket: Option<String>,
}

/// Parse a desired-state file (`[[eligible]]` and `[[active]]` tables); problems name lines.
pub fn parse_desired(text: &str) -> Result<Vec<Desired>> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let raw: RawDesiredFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(s.start)).unwrap_or(1);
        Error::Usage(format!(
            "line {line}: {}",
            e.message().trim().replace('\n', " ")
        ))
    })?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (active, list) in [(false, &raw.eligible), (true, &raw.active)] {
        for entry in list {
            let line = line_of(entry.span().start);
            let d = entry.get_ref();
            let parsed = (|| -> Result<Desired> {
                let scope = match &d.scope {
                    Some(s) => Scope::parse(s)?,
                    None => Scope::root(),
                };
                let end = match (&d.duration, &d.until, d.permanent.unwrap_or(false)) {
                    (None, None, false) => End::PolicyMax,
                    (Some(dur), None, false) => End::After(parse_duration(dur)?),
                    (None, Some(at), false) => End::At(parse_instant(at)?),
                    (None, None, true) => End::Permanent,
                    _ => {
                        return Err(Error::Usage(
                            "give at most one of duration, until and permanent = true.".into(),
                        ))
                    }
                };
                Ok(Desired {
                    line,
                    user: d.user.clone(),
                    role: d.role.clone(),
                    scope,
                    active,
                    end,
                    justification: d.justification.clone(),
                    ticket: d.ticket.clone(),
                })
            })();
            match parsed {
                Ok(d) => out.push(d),
                Err(e) => problems.push(format!("line {line}: {e}")),
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Usage(problems.join("\n")));
    }
    out.sort_by_key(|d| d.line);
    Ok(out)
}
