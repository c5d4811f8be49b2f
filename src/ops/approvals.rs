//! Approval of pending requests, and the other ways a request ends early: cancel, revoke.
//! Extensions of a running activation are requests too, decided the same way.

use super::activation::{requests_where, Request};
use super::assignments::unknown_role;
use super::users::verify_code;
use super::{acting_user, actor_user, has_permission, permission_error, refuse, users, Pim};
use crate::audit::{self, Event};
use crate::error::{Error, Result};
use crate::limits;
use crate::params;
use crate::policy::{Policy, Role};
use crate::scope::Scope;
use crate::store::Db;
use crate::time::{format_duration, from_unix, rfc3339};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

/// One approver's decision on a request.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub approver: String,
    pub decision: String,
    pub justification: Option<String>,
    pub time: String,
}

pub(crate) fn decisions(conn: &Db, request: i64) -> Result<Vec<Decision>> {
    let mut stmt = conn.prepare(
        "SELECT approver, decision, justification, at FROM decisions WHERE request_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![request], |r| {
        Ok(Decision {
            approver: r.get(0)?,
            decision: r.get(1)?,
            justification: r.get(2)?,
            time: rfc3339(from_unix(r.get(3)?)),
        })
    })?;
    rows.collect::<Result<Vec<_>>>()
}

fn load(conn: &Db, id: i64, now: i64) -> Result<Request> {
    requests_where(conn, "r.id = ?1", id, now)?
        .pop()
        .ok_or_else(|| hidden(id))
}

/// A request that is not there, or not the caller's to see or touch: the same sentence, so
/// that ids cannot be walked to learn who asked for what.
pub(crate) fn hidden(id: i64) -> Error {
    Error::NotFound(format!(
        "There is no request {id} that you may see. See `pim request list`."
    ))
}

/// Whether `approver` may decide requests for `role` at `scope`: one of the role's
/// approvers, or (where it names none) a holder of `approve` covering the scope.
pub(crate) fn may_decide(
    conn: &Db,
    policy: &Policy,
    role: &Role,
    approver: &users::User,
    scope: &Scope,
    now: i64,
) -> Result<bool> {
    if !role.settings.approvers.is_empty() {
        return Ok(role.settings.approvers.contains(&approver.name) && !approver.disabled);
    }
    has_permission(conn, policy, approver, "approve", scope, now)
}

fn final_state(r: &Request) -> Error {
    Error::Conflict(format!(
        "Request {} is already {}; it cannot be decided or changed any more.",
        r.id, r.status
    ))
}

fn event(actor: &str, action: &str, r: &Request) -> Event {
    Event::new(actor, action)
        .principal(&r.user)
        .role(&r.role)
        .scope(&r.scope)
        .request(r.id)
}

/// Start an approved request: the window opens now (or at the requested start, if later)
/// and lasts the requested duration, never past its eligibility.
fn start_approved(
    conn: &Db,
    policy: &Policy,
    now: DateTime<Utc>,
    actor: &str,
    r: &Request,
) -> Result<()> {
    let t = now.timestamp();
    let eligible_until: Option<i64> = conn.query_row(
        "SELECT a.end_at FROM requests r JOIN assignments a ON a.id = r.eligibility_id WHERE r.id = ?1",
        params![r.id],
        |row| row.get(0),
    )?;
    let start = r.start_at.max(t);
    let mut end = start + r.duration_secs;
    if let Some(e) = eligible_until {
        end = end.min(e);
    }
    if let Some(original) = r.extends {
        // An approved extension moves the running activation's end and closes itself.
        conn.execute(
            "UPDATE requests SET end_at = ?1 WHERE id = ?2",
            params![end, original],
        )?;
        conn.execute(
            "UPDATE requests SET status = 'expired', start_at = ?1, end_at = ?1, closed_at = ?1, close_reason = 'extension applied' WHERE id = ?2",
            params![t, r.id],
        )?;
        audit::append(
            conn,
            now,
            event(actor, "activation.extend", r)
                .expires(Some(end))
                .detail("extends", original),
        )?;
        return Ok(());
    }
    let status = if start <= t { "active" } else { "scheduled" };
    conn.execute(
        "UPDATE requests SET status = ?1, start_at = ?2, end_at = ?3 WHERE id = ?4",
        params![status, start, end, r.id],
    )?;
    if status == "active" {
        audit::append(
            conn,
            now,
            event(actor, "activation.start", r).expires(Some(end)),
        )?;
        super::notices::started(conn, policy, now, &r.user, &r.role, &r.scope, r.id, end)?;
    }
    Ok(())
}

impl Pim {
    /// Approve (or, with `approve = false`, deny) a pending request. Never your own; the
    /// approver gives a TOTP code; `min_approvals` distinct approvals start it, the first deny
    /// ends it.
    pub fn decide(
        &mut self,
        actor: &str,
        id: i64,
        approve: bool,
        justification: Option<&str>,
        code: Option<&str>,
    ) -> Result<Request> {
        let action = if approve {
            "activation.approve"
        } else {
            "activation.deny"
        };
        limits::check_opt("justification", justification, limits::JUSTIFICATION)?;
        let vault = self.vault.clone();
        self.write(actor, |tx, now, policy| {
            let me = acting_user(tx, now, actor, Event::new(actor, action).request(id))?;
            let t = now.timestamp();
            let r = load(tx, id, t)?;
            let role = policy.role(&r.role).ok_or_else(|| unknown_role(&r.role))?;
            let scope = Scope::parse(&r.scope)?;
            let justification = justification.map(str::trim).filter(|j| !j.is_empty());
            let ev = event(actor, action, &r).justification(justification);
            // Someone who may neither decide nor see it learns nothing of it (on record all
            // the same).
            let decided_by_me = decisions(tx, id)?.iter().any(|d| d.approver == actor);
            if r.user != actor
                && !decided_by_me
                && !may_decide(tx, policy, role, &me, &scope, t)?
                && !super::views::oversees(tx, policy, &me, &scope, t)?
            {
                return refuse(tx, now, ev, hidden(id));
            }
            if r.status != "pending" {
                return Err(final_state(&r));
            }
            if let Some(original) = r.extends {
                // An extension only ever lengthens a running activation; it never revives one.
                if load(tx, original, t)?.status != "active" {
                    return Err(Error::Conflict(format!(
                        "The activation that request {id} would extend has ended; ask for a new activation instead."
                    )));
                }
            }
            if users::get(tx, &r.user)?.disabled {
                return Err(Error::Conflict(format!(
                    "{} is disabled; request {id} can no longer be decided.",
                    r.user
                )));
            }
            if r.user == actor {
                return refuse(
                    tx,
                    now,
                    ev,
                    Error::Refused("You cannot decide your own request; another approver must.".to_string()),
                );
            }
            if !may_decide(tx, policy, role, &me, &scope, t)? {
                let who = if role.settings.approvers.is_empty() {
                    format!("holders of an active role with 'approve' over {scope}")
                } else {
                    role.settings.approvers.join(", ")
                };
                return refuse(
                    tx,
                    now,
                    ev,
                    Error::Refused(format!("You are not an approver of {}; its approvers are {who}.", role.key)),
                );
            }
            if !approve && justification.is_none() {
                return Err(Error::Usage("A denial needs a reason. Pass -j/--justification.".to_string()));
            }
            let already: i64 = tx.query_row(
                "SELECT count(*) FROM decisions WHERE request_id = ?1 AND approver = ?2",
                params![id, actor],
                |row| row.get(0),
            )?;
            if already > 0 {
                return Err(Error::Conflict(format!("You have already decided request {id}.")));
            }
            verify_code(tx, &vault, now, &me, code, ev.clone())?;
            tx.execute(
                "INSERT INTO decisions (request_id, approver, decision, justification, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, actor, if approve { "approve" } else { "deny" }, justification, t],
            )?;
            let approvals: i64 = tx.query_row(
                "SELECT count(*) FROM decisions WHERE request_id = ?1 AND decision = 'approve'",
                params![id],
                |row| row.get(0),
            )?;
            audit::append(
                tx,
                now,
                ev.detail("approvals", approvals)
                    .detail("needed", role.settings.min_approvals),
            )?;
            super::notices::decided(tx, policy, now, action, &r.user, &r.role, &r.scope, id, actor, justification)?;
            if !approve {
                tx.execute(
                    "UPDATE requests SET status = 'denied', closed_at = ?1, closed_by = ?2, close_reason = ?3 WHERE id = ?4",
                    params![t, actor, justification, id],
                )?;
            } else if approvals >= i64::from(role.settings.min_approvals) {
                start_approved(tx, policy, now, actor, &r)?;
            }
            let mut out = load(tx, id, t)?;
            out.decisions = decisions(tx, id)?;
            Ok(out)
        })
    }

    /// Withdraw your own pending or scheduled request.
    pub fn cancel(&mut self, actor: &str, id: i64) -> Result<Request> {
        self.write_system(|tx, now, _| {
            actor_user(tx, actor)?;
            let t = now.timestamp();
            let r = load(tx, id, t)?;
            if r.user != actor {
                return Err(hidden(id));
            }
            if !matches!(r.status.as_str(), "pending" | "scheduled") {
                return Err(final_state(&r));
            }
            tx.execute(
                "UPDATE requests SET status = 'canceled', closed_at = ?1, closed_by = ?2, close_reason = 'canceled by the requester' WHERE id = ?3",
                params![t, actor, id],
            )?;
            audit::append(tx, now, event(actor, "activation.cancel", &r))?;
            load(tx, id, t)
        })
    }

    /// End someone's activation now (permission `assign` over its scope).
    pub fn revoke(&mut self, actor: &str, id: i64, justification: &str) -> Result<Request> {
        limits::check("justification", justification, limits::JUSTIFICATION)?;
        self.write(actor, |tx, now, policy| {
            let me = actor_user(tx, actor)?;
            let t = now.timestamp();
            let r = load(tx, id, t)?;
            let scope = Scope::parse(&r.scope)?;
            let justification = justification.trim();
            if justification.is_empty() {
                return Err(Error::Usage("A revocation needs a reason. Pass -j/--justification.".to_string()));
            }
            if !has_permission(tx, policy, &me, "assign", &scope, t)? {
                let why = if r.user == actor || super::views::oversees(tx, policy, &me, &scope, t)? {
                    permission_error("assign", &scope)
                } else {
                    hidden(id)
                };
                return refuse(
                    tx,
                    now,
                    event(actor, "activation.revoke", &r).justification(Some(justification)),
                    why,
                );
            }
            if !matches!(r.status.as_str(), "active" | "scheduled") {
                return Err(final_state(&r));
            }
            tx.execute(
                "UPDATE requests SET status = 'revoked', closed_at = ?1, closed_by = ?2, close_reason = ?3 WHERE id = ?4",
                params![t, actor, justification, id],
            )?;
            audit::append(
                tx,
                now,
                event(actor, "activation.revoke", &r).justification(Some(justification)),
            )?;
            super::notices::revoked(tx, policy, now, &r.user, &r.role, &r.scope, id, actor, justification)?;
            load(tx, id, t)
        })
    }

    /// Ask to move the end of your running activation to now + `duration` (at most the
    /// role's maximum), under the activation rules. Where the role needs approval the
    /// extension waits as a pending request and the activation runs on meanwhile.
    pub fn extend(
        &mut self,
        actor: &str,
        role: &str,
        scope: Option<&Scope>,
        duration: Option<Duration>,
        justification: Option<&str>,
        code: Option<&str>,
    ) -> Result<Request> {
        limits::check_opt("justification", justification, limits::JUSTIFICATION)?;
        let vault = self.vault.clone();
        self.write(actor, |tx, now, policy| {
            let me = acting_user(
                tx,
                now,
                actor,
                Event::new(actor, "activation.request").principal(actor),
            )?;
            let role = policy.role(role).ok_or_else(|| unknown_role(role))?;
            let s = &role.settings;
            let t = now.timestamp();
            let mut running: Vec<Request> = requests_where(
                tx,
                &format!("r.user_id = ?1 AND r.status IN ('active', 'scheduled') AND r.start_at <= {t} AND r.end_at > {t}"),
                me.id,
                t,
            )?
            .into_iter()
            .filter(|r| r.role == role.key && scope.is_none_or(|sc| r.scope == sc.as_str()))
            .collect();
            let current = match running.len() {
                0 => {
                    return Err(Error::NotFound(format!(
                        "You have no running activation of {} to extend. See `pim status`.",
                        role.key
                    )))
                }
                1 => running.remove(0),
                n => return Err(Error::Usage(format!("You have {n} activations of {}; say which with --scope.", role.key))),
            };
            let justification = justification.map(str::trim).filter(|j| !j.is_empty());
            let ev = event(actor, "activation.request", &current)
                .justification(justification)
                .detail("extends", current.id);
            let duration = duration.unwrap_or(s.max_activation);
            if duration > s.max_activation {
                return refuse(
                    tx,
                    now,
                    ev,
                    Error::Refused(format!(
                        "{} can be activated for at most {}; ask for less with --duration.",
                        role.key,
                        format_duration(s.max_activation)
                    )),
                );
            }
            if t + duration.num_seconds() <= current.end_at {
                return Err(Error::Conflict(format!(
                    "Your activation already lasts until {}; an extension must end later.",
                    current.end
                )));
            }
            if s.require_justification && justification.is_none() {
                return refuse(tx, now, ev, Error::Refused(format!("{} requires a justification. Pass -j/--justification.", role.key)));
            }
            if let Some(j) = justification {
                if !s.justification_matches(j) {
                    return refuse(
                        tx,
                        now,
                        ev,
                        Error::Refused(format!("The justification does not match {}'s required pattern.", role.key)),
                    );
                }
            }
            let open: i64 = tx.query_row(
                "SELECT count(*) FROM requests WHERE extends = ?1 AND status = 'pending' AND decide_by > ?2",
                params![current.id, t],
                |row| row.get(0),
            )?;
            if open > 0 {
                return Err(Error::Conflict("An extension of this activation is already waiting for approval.".to_string()));
            }
            if s.require_mfa {
                verify_code(tx, &vault, now, &me, code, ev.clone())?;
            }
            let eligibility: Option<i64> =
                tx.query_row("SELECT eligibility_id FROM requests WHERE id = ?1", params![current.id], |row| row.get(0))?;
            let decide_by = s.require_approval.then(|| (now + s.approval_timeout).timestamp());
            let id = tx.insert(
                "INSERT INTO requests (user_id, role, scope, eligibility_id, status, created_at, start_at, end_at, \
                 justification, duration_secs, decide_by, extends) \
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![me.id, role.key, current.scope, eligibility, t, t + duration.num_seconds(), justification,
                    duration.num_seconds(), decide_by, current.id],
            )?;
            let pending = load(tx, id, t)?;
            audit::append(tx, now, ev.request(id).expires(Some(t + duration.num_seconds())).detail("approval", s.require_approval))?;
            if !s.require_approval {
                start_approved(tx, policy, now, actor, &pending)?;
            }
            load(tx, id, t)
        })
    }

    /// Pending requests that `actor` may decide now.
    pub fn decidable(&self, actor: &str) -> Result<Vec<Request>> {
        let policy = self.policy()?;
        let Some(me) = users::find(&self.conn, actor)? else {
            return Ok(Vec::new());
        };
        let t = self.now().timestamp();
        let mut out = Vec::new();
        for r in requests_where(
            &self.conn,
            &format!("r.status = 'pending' AND r.decide_by > {t} AND ?1 = 1"),
            1,
            t,
        )? {
            let (Some(role), Ok(scope)) = (policy.role(&r.role), Scope::parse(&r.scope)) else {
                continue;
            };
            let decided: i64 = self.conn.query_row(
                "SELECT count(*) FROM decisions WHERE request_id = ?1 AND approver = ?2",
                params![r.id, actor],
                |row| row.get(0),
            )?;
            if r.user != actor
                && decided == 0
                && may_decide(&self.conn, &policy, role, &me, &scope, t)?
            {
                out.push(r);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{ActivationInput, AssignInput, End};
    use crate::scope::Scope;
    use chrono::Duration;

    #[test]
    fn pending_requests_time_out_under_the_injected_clock_and_sweep_records_it_once() {
        let (mut pim, clock, admin) = pim();
        pim.add_user("admin", "bob", None, None).unwrap();
        let bob = crate::mfa::from_base32(&pim.enroll("admin", Some("bob"), None).unwrap().secret)
            .unwrap();
        pim.assign(
            "admin",
            AssignInput {
                user: "bob".into(),
                role: "approved".into(),
                scope: Scope::root(),
                active: false,
                start: None,
                end: End::PolicyMax,
                justification: Some("x".into()),
                ticket: None,
            },
        )
        .unwrap();
        let r = pim
            .activate(
                "bob",
                ActivationInput {
                    role: "approved".into(),
                    justification: Some("INC-1".into()),
                    code: Some(code(&clock, &bob)),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.status, "pending");
        clock.advance(Duration::hours(24) - Duration::seconds(1));
        assert_eq!(pim.request(r.id).unwrap().status, "pending");
        clock.advance(Duration::seconds(1));
        assert_eq!(pim.request(r.id).unwrap().status, "timed_out");
        // Too late to approve: a conflict, and nothing is held.
        let late = pim.decide("admin", r.id, true, None, Some(&code(&clock, &admin)));
        assert_eq!(late.unwrap_err().exit_code(), 5);
        assert_eq!(pim.check("bob", "approved", &Scope::root()).unwrap(), None);
        assert_eq!(pim.sweep("cron").unwrap().timed_out, vec![r.id]);
        assert!(pim.sweep("cron").unwrap().timed_out.is_empty());
        assert_eq!(count_events(&pim, "activation.timeout"), 1);
    }
}
