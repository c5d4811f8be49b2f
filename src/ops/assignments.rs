//! Eligible and active assignments: who may take a role, and who holds one directly.

use super::Recorder;
use super::{
    acting_user, has_permission, permission_error, refuse, users, would_orphan_protected, Pim,
};
use crate::audit::Event;
use crate::error::{Error, Result};
use crate::limits;
use crate::model::{Kind, Status};
use crate::policy::Limit;
use crate::scope::Scope;
use crate::store::assignments::NewAssignment;
use crate::store::requests::Of;
use crate::store::Db;
use crate::time::{format_duration, rfc3339};
use chrono::{DateTime, Duration, Utc};

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

pub use crate::store::Assignment;

#[derive(Debug, Clone, Default)]
pub struct AssignmentFilter {
    pub user: Option<String>,
    pub role: Option<String>,
    pub scope: Option<Scope>,
    pub kind: Option<Kind>,
    pub all: bool,
}

/// The assignment of `user_id`/`role`/`scope`/`kind` that is in effect or scheduled.
fn current(
    conn: &Db,
    user_id: i64,
    role: &str,
    scope: &str,
    kind: Kind,
    now: i64,
) -> Result<Option<Assignment>> {
    conn.current_assignment(user_id, role, scope, kind, now)
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
            let kind = if active { Kind::Active } else { Kind::Eligible };
            let me = acting_user(
                tx,
                now,
                actor,
                Event::new(actor, "assignment.remove")
                    .principal(user)
                    .scope(scope.as_str())
                    .detail("type", kind),
            )?;
            let role = policy.role(role).ok_or_else(|| unknown_role_in(policy, role))?;
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
            tx.remove_assignment(found.id, t, actor)?;
            tx.record(event.detail("assignment", found.id))?;
            super::activation::end_activations(
                tx,
                policy,
                now,
                actor,
                Of::Eligibility(found.id),
                Status::Revoked,
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
            Some(r) => Some(
                policy
                    .role(r)
                    .ok_or_else(|| unknown_role_in(&policy, r))?
                    .key
                    .clone(),
            ),
            None => None,
        };
        if let Some(u) = &filter.user {
            users::get(&self.conn, u)?;
        }
        let mut out = self.conn.list_assignments(
            filter.user.as_deref(),
            role.as_deref(),
            filter.kind,
            filter.all,
            now,
        )?;
        if filter.kind != Some(Kind::Eligible) {
            out.extend(self.conn.activations_as_assignments(
                filter.user.as_deref(),
                role.as_deref(),
                filter.all,
                now,
            )?);
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
    tx: &Recorder<'_>,
    now: DateTime<Utc>,
    policy: &crate::policy::Policy,
    actor: &str,
    input: &AssignInput,
) -> Result<Assignment> {
    assign_or_plan(tx, now, policy, actor, input, false)?
        .ok_or_else(|| Error::NotFound("The new assignment is gone.".to_string()))
}

/// The checks of an assignment's free text (exit 2): its justification and ticket within
/// their limits, the ticket one line.
pub(crate) fn check_texts(justification: Option<&str>, ticket: Option<&str>) -> Result<()> {
    limits::check_opt("justification", justification, limits::JUSTIFICATION)?;
    limits::check_opt("ticket", ticket, limits::TICKET)?;
    if let Some(t) = ticket {
        limits::one_line("ticket", t)?;
    }
    Ok(())
}

/// `assign_in`, or with `plan` every check of it but the justification's (not typed yet),
/// writing nothing but a refusal: `pim assign` on a terminal checks first, then asks.
fn assign_or_plan(
    tx: &Recorder<'_>,
    now: DateTime<Utc>,
    policy: &crate::policy::Policy,
    actor: &str,
    input: &AssignInput,
    plan: bool,
) -> Result<Option<Assignment>> {
    check_texts(input.justification.as_deref(), input.ticket.as_deref())?;
    let kind = if input.active {
        Kind::Active
    } else {
        Kind::Eligible
    };
    let attempt = Event::new(actor, "assignment.add")
        .principal(&input.user)
        .scope(input.scope.as_str())
        .detail("type", kind);
    let me = acting_user(tx, now, actor, attempt)?;
    let role = policy
        .role(&input.role)
        .ok_or_else(|| unknown_role_in(policy, &input.role))?;
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
    if !plan && role.settings.require_justification_on_assign && justification.is_none() {
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
    if plan {
        return Ok(None);
    }
    let id = tx.insert_assignment(&NewAssignment {
        user_id: target.id,
        role: &role.key,
        scope: input.scope.as_str(),
        kind,
        start_at: start.timestamp(),
        end_at: end.map(|e| e.timestamp()),
        justification,
        ticket: input.ticket.as_deref(),
        created_by: actor,
        created_at: t,
    })?;
    tx.record(
        event
            .expires(end.map(|e| e.timestamp()))
            .detail("assignment", id)
            .detail("start", rfc3339(start)),
    )?;
    tx.assignment(id, t)?
        .ok_or_else(|| Error::NotFound(format!("Assignment {id} is gone.")))
        .map(Some)
}

impl Pim {
    /// Every check of `assign` that needs nothing typed (permission, the user, the role, the
    /// duration, an assignment already there), before any prompt; a refusal is recorded as
    /// the assignment's would be, and nothing else is written.
    pub fn plan_assignment(&mut self, actor: &str, input: &AssignInput) -> Result<()> {
        self.plan(actor, |tx, now, policy| {
            assign_or_plan(tx, now, policy, actor, input, true).map(|_| ())
        })
    }

    /// "Did you mean": when nothing is assigned at `scope` yet, the scope in use closest to
    /// it (a typo away), if any.
    pub fn closest_scope(&self, scope: &Scope) -> Result<Option<String>> {
        let known = self.conn.live_scopes(self.now().timestamp())?;
        if known.iter().any(|k| k == scope.as_str()) {
            return Ok(None);
        }
        Ok(known
            .into_iter()
            .map(|k| (strsim::damerau_levenshtein(scope.as_str(), &k), k))
            .filter(|(d, k)| *d <= 2.max(k.len() / 4))
            .min()
            .map(|(_, k)| k))
    }
}

pub(crate) fn unknown_role(role: &str) -> Error {
    Error::NotFound(format!("There is no role '{role}'. See `pim role list`."))
}

/// `unknown_role`, with the policy's closest role (key or display name) when one is close:
/// "Did you mean db-admin?".
pub(crate) fn unknown_role_in(policy: &crate::policy::Policy, role: &str) -> Error {
    let wanted = role.to_lowercase();
    let best = policy
        .roles
        .values()
        .flat_map(|r| {
            [
                (r.key.clone(), r.key.clone()),
                (r.name.to_lowercase(), r.key.clone()),
            ]
        })
        .map(|(name, key)| (strsim::damerau_levenshtein(&wanted, &name), key))
        .filter(|(d, key)| *d <= 2.max(key.len() / 4))
        .min();
    match best {
        Some((_, key)) => Error::NotFound(format!(
            "There is no role '{role}'. Did you mean {key}? See `pim role list`."
        )),
        None => unknown_role(role),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::params;

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

    /// The checks `assign` runs before its prompt are no change: they cost nothing of the
    /// actor's budget (the assignment itself costs one), but are refused once it is spent.
    #[test]
    fn checking_before_the_prompt_costs_no_change() {
        let (mut pim, _, _) = pim();
        pim.add_user("admin", "bob", None, None).unwrap();
        let used = |pim: &Pim| {
            pim.conn()
                .limit_window("changes:admin")
                .unwrap()
                .map_or(0, |(n, _, _)| n)
        };
        let before = used(&pim);
        for _ in 0..3 {
            pim.plan_assignment("admin", &input("bob", "db-admin"))
                .unwrap();
        }
        assert_eq!(used(&pim), before);
        pim.assign("admin", input("bob", "db-admin")).unwrap();
        assert_eq!(used(&pim), before + 1);
        for n in used(&pim)..crate::ops::users::CHANGES_PER_WINDOW {
            pim.add_user("admin", &format!("u{n}"), None, None).unwrap();
        }
        let e = pim
            .plan_assignment("admin", &input("u1", "db-admin"))
            .unwrap_err();
        assert!(e.to_string().contains("changes within 15 minutes"), "{e}");
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
