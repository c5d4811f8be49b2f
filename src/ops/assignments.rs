//! Eligible and active assignments: who may take a role, and who holds one directly.

use super::{
    acting_user, has_permission, permission_error, refuse, users, would_orphan_protected, Pim,
};
use crate::audit::{self, Event};
use crate::error::{Error, Result};
use crate::limits;
use crate::params;
use crate::policy::Limit;
use crate::scope::Scope;
use crate::store::{Db, OptionalExtension, Row};
use crate::time::{format_duration, from_unix, rfc3339};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

/// How an assignment ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    /// The longest the role's policy allows.
    PolicyMax,
    After(Duration),
    At(DateTime<Utc>),
    Permanent,
}

#[derive(Debug, Clone)]
pub struct AssignInput {
    pub user: String,
    pub role: String,
    pub scope: Scope,
    pub active: bool,
    pub start: Option<DateTime<Utc>>,
    pub end: End,
    pub justification: Option<String>,
    pub ticket: Option<String>,
}

/// An assignment, or (in listings) an activation shown as an active assignment.
#[derive(Debug, Clone, Serialize)]
pub struct Assignment {
    pub id: i64,
    pub user: String,
    pub role: String,
    pub scope: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub start: String,
    pub end: Option<String>,
    /// `assignment` (made by an administrator) or `activation` (taken by the user).
    pub source: String,
    /// The activation request, for an activation.
    pub request: Option<i64>,
    pub justification: Option<String>,
    pub ticket: Option<String>,
    pub created_by: String,
    /// `in effect`, `scheduled`, `ended` or `removed`.
    pub state: String,
    #[serde(skip)]
    pub start_at: i64,
    #[serde(skip)]
    pub end_at: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct AssignmentFilter {
    pub user: Option<String>,
    pub role: Option<String>,
    pub scope: Option<Scope>,
    /// Some("eligible") or Some("active").
    pub kind: Option<String>,
    pub all: bool,
}

fn state(start: i64, end: Option<i64>, removed: Option<i64>, now: i64) -> &'static str {
    if removed.is_some() {
        "removed"
    } else if end.is_some_and(|e| e <= now) {
        "ended"
    } else if start > now {
        "scheduled"
    } else {
        "in effect"
    }
}

const COLUMNS: &str = "a.id, u.name, a.role, a.scope, a.kind, a.start_at, a.end_at, \
     a.justification, a.ticket, a.created_by, a.removed_at";

fn from_row(r: &Row<'_>, now: i64) -> Result<Assignment> {
    let start_at: i64 = r.get(5)?;
    let end_at: Option<i64> = r.get(6)?;
    Ok(Assignment {
        id: r.get(0)?,
        user: r.get(1)?,
        role: r.get(2)?,
        scope: r.get(3)?,
        kind: r.get(4)?,
        start: rfc3339(from_unix(start_at)),
        end: end_at.map(|e| rfc3339(from_unix(e))),
        source: "assignment".to_string(),
        request: None,
        justification: r.get(7)?,
        ticket: r.get(8)?,
        created_by: r.get(9)?,
        state: state(start_at, end_at, r.get(10)?, now).to_string(),
        start_at,
        end_at,
    })
}

pub(crate) fn current_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM assignments a JOIN users u ON u.id = a.user_id \
         WHERE a.user_id = ?1 AND a.role = ?2 AND a.scope = ?3 AND a.kind = ?4 \
           AND a.removed_at IS NULL AND (a.end_at IS NULL OR a.end_at > ?5) ORDER BY a.id LIMIT 1"
    )
}

/// The assignment of `user_id`/`role`/`scope`/`kind` that is in effect or scheduled.
fn current(
    conn: &Db,
    user_id: i64,
    role: &str,
    scope: &str,
    kind: &str,
    now: i64,
) -> Result<Option<Assignment>> {
    conn.query_row(
        &current_sql(),
        params![user_id, role, scope, kind, now],
        |r| from_row(r, now),
    )
    .optional()
}

impl Pim {
    /// Make a user eligible for, or give them, a role at a scope (permission `assign`).
    pub fn assign(&mut self, actor: &str, input: AssignInput) -> Result<Assignment> {
        self.write(actor, |tx, now, policy| {
            assign_in(tx, now, policy, actor, &input)
        })
    }

    /// Remove an assignment (permission `assign`), ending the activations that rest on it.
    pub fn unassign(
        &mut self,
        actor: &str,
        user: &str,
        role: &str,
        scope: &Scope,
        active: bool,
    ) -> Result<Assignment> {
        self.write(actor, |tx, now, policy| {
            let kind = if active { "active" } else { "eligible" };
            let me = acting_user(
                tx,
                now,
                actor,
                Event::new(actor, "assignment.remove")
                    .principal(user)
                    .scope(scope.as_str())
                    .detail("type", kind),
            )?;
            let role = policy.role(role).ok_or_else(|| unknown_role(role))?;
            let target = users::get(tx, user)?;
            let t = now.timestamp();
            let event = Event::new(actor, "assignment.remove")
                .principal(&target.name)
                .role(&role.key)
                .scope(scope.as_str())
                .detail("type", kind);
            if !has_permission(tx, policy, &me, "assign", scope, t)? {
                return refuse(tx, now, event, permission_error("assign", scope));
            }
            let Some(found) = current(tx, target.id, &role.key, scope.as_str(), kind, t)? else {
                return Err(Error::NotFound(format!(
                    "{} has no {kind} assignment of {} at {scope}. See `pim assignment list --user {}`.",
                    target.name, role.key, target.name
                )));
            };
            if role.protected && would_orphan_protected(tx, &role.key, target.id, Some(found.id), t)? {
                return refuse(
                    tx,
                    now,
                    event,
                    Error::Refused(format!(
                        "{} is the last holder of the protected role {}; make someone else a holder first.",
                        target.name, role.key
                    )),
                );
            }
            tx.execute(
                "UPDATE assignments SET removed_at = ?1, removed_by = ?2 WHERE id = ?3",
                params![t, actor, found.id],
            )?;
            audit::append(tx, now, event.detail("assignment", found.id))?;
            super::activation::end_activations(
                tx,
                policy,
                now,
                actor,
                "eligibility_id = ?1",
                found.id,
                "revoked",
                "activation.revoke",
                "the eligible assignment it rested on was removed",
            )?;
            let mut a = found;
            a.state = "removed".to_string();
            Ok(a)
        })
    }

    /// Assignments in effect or scheduled (with `all`, ended and removed ones too), and
    /// activations in effect shown as active assignments.
    pub fn assignments(&self, filter: &AssignmentFilter) -> Result<Vec<Assignment>> {
        let now = self.now().timestamp();
        let policy = self.policy()?;
        let role = match &filter.role {
            Some(r) => Some(policy.role(r).ok_or_else(|| unknown_role(r))?.key.clone()),
            None => None,
        };
        if let Some(u) = &filter.user {
            users::get(&self.conn, u)?;
        }
        let mut out = Vec::new();
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM assignments a JOIN users u ON u.id = a.user_id \
             WHERE (?1 IS NULL OR u.name = ?1) AND (?2 IS NULL OR a.role = ?2) AND (?3 IS NULL OR a.kind = ?3) \
               AND (?4 OR (a.removed_at IS NULL AND (a.end_at IS NULL OR a.end_at > ?5))) \
             ORDER BY u.name, a.role, a.scope, a.kind, a.id"
        ))?;
        let rows = stmt.query_map(
            params![filter.user, role, filter.kind, filter.all, now],
            |r| from_row(r, now),
        )?;
        for row in rows {
            out.push(row?);
        }
        if filter.kind.as_deref() != Some("eligible") {
            let mut stmt = self.conn.prepare(
                "SELECT r.id, u.name, r.role, r.scope, r.start_at, r.end_at, r.justification, r.ticket, r.status \
                 FROM requests r JOIN users u ON u.id = r.user_id \
                 WHERE (?1 IS NULL OR u.name = ?1) AND (?2 IS NULL OR r.role = ?2) \
                   AND r.status IN ('active', 'scheduled', 'expired', 'deactivated', 'revoked') \
                   AND (?3 OR (r.status IN ('active', 'scheduled') AND r.end_at > ?4)) \
                 ORDER BY u.name, r.role, r.id",
            )?;
            let rows = stmt.query_map(params![filter.user, role, filter.all, now], |r| {
                let start_at: i64 = r.get(4)?;
                let end_at: i64 = r.get(5)?;
                let status: String = r.get(8)?;
                let ended = !matches!(status.as_str(), "active" | "scheduled");
                Ok(Assignment {
                    id: r.get(0)?,
                    user: r.get(1)?,
                    role: r.get(2)?,
                    scope: r.get(3)?,
                    kind: "active".to_string(),
                    start: rfc3339(from_unix(start_at)),
                    end: Some(rfc3339(from_unix(end_at))),
                    source: "activation".to_string(),
                    request: Some(r.get(0)?),
                    justification: r.get(6)?,
                    ticket: r.get(7)?,
                    created_by: r.get(1)?,
                    state: if ended {
                        "ended"
                    } else {
                        state(start_at, Some(end_at), None, now)
                    }
                    .to_string(),
                    start_at,
                    end_at: Some(end_at),
                })
            })?;
            for row in rows {
                out.push(row?);
            }
        }
        if let Some(scope) = &filter.scope {
            // An assignment matters to a scope when it covers it or lies within it.
            out.retain(|a| {
                Scope::parse(&a.scope).is_ok_and(|s| s.covers(scope) || scope.covers(&s))
            });
        }
        out.sort_by(|a, b| {
            (&a.user, &a.role, &a.scope, &a.kind, a.start_at)
                .cmp(&(&b.user, &b.role, &b.scope, &b.kind, b.start_at))
        });
        Ok(out)
    }
}

/// The checks and the write of one assignment, inside the caller's transaction.
pub(crate) fn assign_in(
    tx: &Db,
    now: DateTime<Utc>,
    policy: &crate::policy::Policy,
    actor: &str,
    input: &AssignInput,
) -> Result<Assignment> {
    limits::check_opt(
        "justification",
        input.justification.as_deref(),
        limits::JUSTIFICATION,
    )?;
    limits::check_opt("ticket", input.ticket.as_deref(), limits::TICKET)?;
    let kind = if input.active { "active" } else { "eligible" };
    let attempt = Event::new(actor, "assignment.add")
        .principal(&input.user)
        .scope(input.scope.as_str())
        .detail("type", kind);
    let me = acting_user(tx, now, actor, attempt)?;
    let role = policy
        .role(&input.role)
        .ok_or_else(|| unknown_role(&input.role))?;
    let target = users::get(tx, &input.user)?;
    let t = now.timestamp();
    let event = Event::new(actor, "assignment.add")
        .principal(&target.name)
        .role(&role.key)
        .scope(input.scope.as_str())
        .justification(input.justification.as_deref())
        .ticket(input.ticket.as_deref())
        .detail("type", kind);
    if !has_permission(tx, policy, &me, "assign", &input.scope, t)? {
        return refuse(tx, now, event, permission_error("assign", &input.scope));
    }
    if target.id == me.id {
        return refuse(
            tx,
            now,
            event,
            Error::Refused(format!(
                "You cannot assign a role to yourself; another holder of 'assign' must (and {} then goes through its policy like anyone's).",
                role.key
            )),
        );
    }
    if target.kind == "service" && !input.active {
        return refuse(
                tx,
                now,
                event,
                Error::Refused(format!(
                    "'{}' is a service principal; services never activate, so give it an active assignment (--active).",
                    target.name
                )),
            );
    }
    let start = input.start.unwrap_or(now);
    if start < now - Duration::minutes(1) {
        return Err(Error::Usage(format!(
            "The start {} is in the past. Leave --start out to start now.",
            rfc3339(start)
        )));
    }
    let start = start.max(now);
    let limit = if input.active {
        role.settings.max_active
    } else {
        role.settings.max_eligible
    };
    let setting = if input.active {
        "max_active"
    } else {
        "max_eligible"
    };
    let end = match (input.end, limit) {
        (End::PolicyMax, Limit::Permanent) | (End::Permanent, Limit::Permanent) => None,
        (End::PolicyMax, Limit::Max(d)) => Some(crate::time::checked_add(start, d)?),
        (End::Permanent, Limit::Max(d)) => {
            return refuse(
                    tx,
                    now,
                    event,
                    Error::Refused(format!(
                        "{} cannot be assigned permanently ({setting} is {}). Give --duration or --until.",
                        role.key,
                        format_duration(d)
                    )),
                );
        }
        (End::After(d), _) => Some(crate::time::checked_add(start, d)?),
        (End::At(at), _) => Some(at),
    };
    if let Some(e) = end {
        if e <= start {
            return Err(Error::Usage(format!(
                "The end {} is not after the start {}.",
                rfc3339(e),
                rfc3339(start)
            )));
        }
        if let Limit::Max(d) = limit {
            if e - start > d {
                return refuse(
                    tx,
                    now,
                    event,
                    Error::Refused(format!(
                        "{} assignments of {} last at most {} ({setting}); ask for less.",
                        kind,
                        role.key,
                        format_duration(d)
                    )),
                );
            }
        }
    }
    let justification = input
        .justification
        .as_deref()
        .map(str::trim)
        .filter(|j| !j.is_empty());
    if role.settings.require_justification_on_assign && justification.is_none() {
        return refuse(
            tx,
            now,
            event,
            Error::Refused(format!(
                "Assigning {} requires a justification. Pass --justification.",
                role.key
            )),
        );
    }
    if let Some(existing) = current(tx, target.id, &role.key, input.scope.as_str(), kind, t)? {
        return Err(Error::Conflict(format!(
            "{} already has an {} assignment of {} at {} ({}). Remove it first to change it.",
            target.name, kind, role.key, input.scope, existing.state
        )));
    }
    let id = tx.insert(
            "INSERT INTO assignments (user_id, role, scope, kind, start_at, end_at, justification, ticket, created_by, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                target.id,
                role.key,
                input.scope.as_str(),
                kind,
                start.timestamp(),
                end.map(|e| e.timestamp()),
                justification,
                input.ticket.as_deref(),
                actor,
                t
            ],
        )?;
    audit::append(
        tx,
        now,
        event
            .expires(end.map(|e| e.timestamp()))
            .detail("assignment", id)
            .detail("start", rfc3339(start)),
    )?;
    super::notices::assignment_added(
        tx,
        policy,
        now,
        actor,
        &target.name,
        &role.key,
        input.scope.as_str(),
        kind,
        end.map(|e| e.timestamp()),
    )?;
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM assignments a JOIN users u ON u.id = a.user_id WHERE a.id = ?1"
    ))?;
    stmt.query_row(params![id], |r| from_row(r, t))
}

pub(crate) fn unknown_role(role: &str) -> Error {
    Error::NotFound(format!("There is no role '{role}'. See `pim role list`."))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn input(user: &str, role: &str) -> AssignInput {
        AssignInput {
            user: user.into(),
            role: role.into(),
            scope: Scope::root(),
            active: false,
            start: None,
            end: End::PolicyMax,
            justification: Some("on call".into()),
            ticket: None,
        }
    }

    #[test]
    fn eligibility_defaults_to_the_policy_maximum() {
        let (mut pim, _, _) = pim();
        pim.add_user("admin", "bob", None, None).unwrap();
        let a = pim
            .assign("admin", input("bob", "Database Administrator"))
            .unwrap();
        assert_eq!(a.role, "db-admin");
        assert_eq!(a.end_at, Some(a.start_at + 365 * 86_400));
        // A duplicate is a conflict.
        assert_eq!(
            pim.assign("admin", input("bob", "db-admin"))
                .unwrap_err()
                .exit_code(),
            5
        );
    }

    #[test]
    fn limits_permissions_and_justification_are_enforced() {
        let (mut pim, _, _) = pim();
        pim.add_user("admin", "bob", None, None).unwrap();
        let mut too_long = input("bob", "db-admin");
        too_long.end = End::After(Duration::days(400));
        assert_eq!(pim.assign("admin", too_long).unwrap_err().exit_code(), 3);
        let mut forever = input("bob", "db-admin");
        forever.end = End::Permanent;
        assert_eq!(pim.assign("admin", forever).unwrap_err().exit_code(), 3);
        let mut why_not = input("bob", "db-admin");
        why_not.justification = None;
        assert_eq!(pim.assign("admin", why_not).unwrap_err().exit_code(), 3);
        assert_eq!(
            pim.assign("bob", input("bob", "db-admin"))
                .unwrap_err()
                .exit_code(),
            3
        );
        assert_eq!(
            pim.assign("admin", input("ghost", "db-admin"))
                .unwrap_err()
                .exit_code(),
            4
        );
        assert_eq!(
            pim.assign("admin", input("bob", "nope"))
                .unwrap_err()
                .exit_code(),
            4
        );
        // Each refusal to grant a role is on record.
        let refused: i64 = pim
            .conn()
            .query_row(
                "SELECT count(*) FROM audit_events WHERE action = 'assignment.add' AND result != 'ok'",
                params![],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(refused, 4);
        assert!(crate::audit::verify(pim.conn()).unwrap().ok);
    }

    #[test]
    fn the_last_protected_holder_stays() {
        let (mut pim, _, _) = pim();
        let err = pim
            .unassign("admin", "admin", "global-admin", &Scope::root(), true)
            .unwrap_err();
        assert_eq!(err.exit_code(), 3);
        pim.add_user("admin", "carol", None, None).unwrap();
        let mut second = input("carol", "global-admin");
        second.active = true;
        second.end = End::Permanent;
        pim.assign("admin", second).unwrap();
        pim.unassign("admin", "admin", "global-admin", &Scope::root(), true)
            .unwrap();
    }

    #[test]
    fn listing_filters_by_scope_coverage() {
        let (mut pim, clock, _) = pim();
        pim.add_user("admin", "bob", None, None).unwrap();
        let mut prod = input("bob", "db-admin");
        prod.scope = Scope::parse("/prod").unwrap();
        prod.end = End::After(Duration::days(1));
        pim.assign("admin", prod).unwrap();
        let f = |s: &str| AssignmentFilter {
            user: Some("bob".into()),
            scope: Some(Scope::parse(s).unwrap()),
            ..AssignmentFilter::default()
        };
        assert_eq!(pim.assignments(&f("/prod/db")).unwrap().len(), 1);
        assert_eq!(pim.assignments(&f("/production")).unwrap().len(), 0);
        clock.advance(Duration::days(2));
        assert_eq!(pim.assignments(&f("/prod")).unwrap().len(), 0);
        let all = AssignmentFilter {
            all: true,
            ..f("/prod")
        };
        assert_eq!(pim.assignments(&all).unwrap()[0].state, "ended");
    }
}
