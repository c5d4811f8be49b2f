//! Approval of pending requests, and the other ways a request ends early: cancel, revoke.
//! Extensions of a running activation are requests too, decided the same way.

use super::activation::Request;
use super::assignments::unknown_role_in;
use super::users::verify_code;
use super::Recorder;
use super::{acting_user, actor_user, has_permission, permission_error, refuse, users, Pim};
use crate::audit::Event;
use crate::error::{Error, Result};
use crate::limits;
use crate::model::{Status, Verdict};
use crate::policy::{Policy, Role};
use crate::scope::Scope;
use crate::store::requests::{NewRequest, Of, Which};
use crate::store::Db;
use crate::time::format_duration;
use chrono::{DateTime, Duration, Utc};

pub use crate::store::Decision;

pub(crate) fn decisions(conn: &Db, request: i64) -> Result<Vec<Decision>> {
    conn.decisions(request)
}

fn load(conn: &Db, id: i64, now: i64) -> Result<Request> {
    conn.request_by_id(id, now)?.ok_or_else(|| hidden(id))
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
    Decider::new(conn, policy, approver, now).may_decide(role, scope)
}

/// `may_decide` for the many requests of a list: what the approver holds is read once, when
/// a role without named approvers first asks for it, not once a request.
pub(crate) struct Decider<'a> {
    conn: &'a Db,
    policy: &'a Policy,
    approver: &'a users::User,
    now: i64,
    held: std::cell::OnceCell<Vec<super::Holding>>,
}

impl<'a> Decider<'a> {
    pub(crate) fn new(
        conn: &'a Db,
        policy: &'a Policy,
        approver: &'a users::User,
        now: i64,
    ) -> Decider<'a> {
        Decider {
            conn,
            policy,
            approver,
            now,
            held: std::cell::OnceCell::new(),
        }
    }

    pub(crate) fn may_decide(&self, role: &Role, scope: &Scope) -> Result<bool> {
        if self.approver.disabled {
            return Ok(false);
        }
        if !role.settings.approvers.is_empty() {
            return Ok(role.settings.approvers.contains(&self.approver.name));
        }
        let held = match self.held.get() {
            Some(held) => held,
            None => {
                let held = super::holdings(self.conn, self.approver.id, self.now)?;
                self.held.get_or_init(|| held)
            }
        };
        Ok(super::grants(self.policy, held, "approve", scope))
    }
}

/// The approvals of request `id` whose approver (a user still there) `counts`.
pub(crate) fn count_approvals(
    tx: &Db,
    id: i64,
    mut counts: impl FnMut(&users::User) -> Result<bool>,
) -> Result<i64> {
    let mut n = 0;
    for d in decisions(tx, id)? {
        if d.decision != Verdict::Approve {
            continue;
        }
        if let Some(approver) = users::find(tx, &d.approver)? {
            if counts(&approver)? {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The approvals of request `id` that make its quorum now: each by someone who may still
/// decide it (enabled, still among the role's approvers, or still holding `approve` over
/// the scope). An approval given by someone disabled, taken off the approvers or whose
/// `approve` ended since stays on record, but one more approver no longer starts the request
/// on its strength.
fn standing_approvals(
    tx: &Db,
    policy: &Policy,
    role: &Role,
    scope: &Scope,
    id: i64,
    now: i64,
) -> Result<i64> {
    count_approvals(tx, id, |approver| {
        may_decide(tx, policy, role, approver, scope, now)
    })
}

/// What the caller typed for an extension: its justification, ticket and TOTP code.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExtendInput<'a> {
    pub justification: Option<&'a str>,
    pub ticket: Option<&'a str>,
    pub code: Option<&'a str>,
}

fn final_state(r: &Request) -> Error {
    Error::Conflict(format!(
        "Request {} is already {}; it cannot be decided or changed any more.",
        r.id, r.status
    ))
}

pub(crate) fn event(actor: &str, action: &str, r: &Request) -> Event {
    Event::new(actor, action)
        .principal(&r.user)
        .role(&r.role)
        .scope(&r.scope)
        .request(r.id)
}

/// Start an approved request: the window opens now (or at the requested start, if later)
/// and lasts the requested duration, never past its eligibility.
fn start_approved(
    conn: &Recorder<'_>,
    policy: &Policy,
    now: DateTime<Utc>,
    actor: &str,
    r: &Request,
) -> Result<()> {
    let t = now.timestamp();
    let eligible_until = conn.request_eligibility_end(r.id)?;
    // An extension runs from now for the time it asked (its row's start is never read: a
    // start moved by hand would have made it longer); an activation from the start it
    // asked for, or now if that has passed.
    let start = if r.extends.is_some() {
        t
    } else {
        r.start_at.max(t)
    };
    // Never longer than the role allows now (a policy applied since the request was made
    // cancels one that asks for more; this holds for any made before that rule).
    let longest = policy
        .role(&r.role)
        .map_or(0, |role| role.settings.max_activation.num_seconds());
    let mut end = start + r.duration_secs.min(longest);
    if let Some(e) = eligible_until {
        end = end.min(e);
    }
    if let Some(original) = r.extends {
        // An approved extension moves the running activation's end and closes itself: one
        // of the same person, role and scope (a row pointed at another by hand is refused).
        let target = conn.request_by_id(original, t)?;
        if target.is_none_or(|o| {
            (o.user, o.role, o.scope) != (r.user.clone(), r.role.clone(), r.scope.clone())
        }) {
            return Err(Error::Conflict(format!(
                "Request {} would extend request {original}, which is not an activation of the same role and scope for the same person; see `pim audit verify --state`.",
                r.id
            )));
        }
        conn.set_request_end(original, end)?;
        conn.extension_applied(r.id, t)?;
        conn.record(
            event(actor, "activation.extend", r)
                .expires(Some(end))
                .detail("extends", original),
        )?;
        return Ok(());
    }
    let status = if start <= t {
        Status::Active
    } else {
        Status::Scheduled
    };
    conn.start_request(r.id, status, start, end)?;
    if status == Status::Active {
        conn.record(event(actor, "activation.start", r).expires(Some(end)))?;
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
        self.decide_or_check(actor, id, approve, justification, code, false)
    }

    /// Every check of a decision that needs nothing typed (the request, that it is
    /// pending, not your own, that you are its approver and have not decided it), before
    /// any prompt; a refusal is recorded as the decision's would be. The request, as it is.
    pub fn check_decision(&mut self, actor: &str, id: i64, approve: bool) -> Result<Request> {
        self.decide_or_check(actor, id, approve, None, None, true)
    }

    fn decide_or_check(
        &mut self,
        actor: &str,
        id: i64,
        approve: bool,
        justification: Option<&str>,
        code: Option<&str>,
        only_check: bool,
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
            let role = policy.role(&r.role).ok_or_else(|| unknown_role_in(policy, &r.role))?;
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
            if r.status != Status::Pending {
                return Err(final_state(&r));
            }
            if let Some(original) = r.extends {
                // An extension only ever lengthens a running activation; it never revives one.
                if load(tx, original, t)?.status != Status::Active {
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
            if tx.has_decided(id, actor)? {
                return Err(Error::Conflict(format!("You have already decided request {id}.")));
            }
            if only_check {
                return Ok(r);
            }
            if !approve && justification.is_none() {
                return Err(Error::Usage("A denial needs a reason. Pass -j/--justification.".to_string()));
            }
            verify_code(tx, &vault, now, &me, code, ev.clone())?;
            let verdict = if approve { Verdict::Approve } else { Verdict::Deny };
            tx.insert_decision(id, actor, verdict, justification, t)?;
            let approvals = standing_approvals(tx, policy, role, &scope, id, t)?;
            tx.record(ev.detail("approvals", approvals)
                    .detail("needed", role.settings.min_approvals))?;
            if !approve {
                tx.close_request(id, Status::Denied, t, actor, justification)?;
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
            if !matches!(r.status, Status::Pending | Status::Scheduled) {
                return Err(final_state(&r));
            }
            tx.close_request(
                id,
                Status::Canceled,
                t,
                actor,
                Some("canceled by the requester"),
            )?;
            tx.record(event(actor, "activation.cancel", &r))?;
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
                return Err(Error::Usage(
                    "A revocation needs a reason. Pass -j/--justification.".to_string(),
                ));
            }
            if !has_permission(tx, policy, &me, "assign", &scope, t)? {
                let why = if r.user == actor || super::views::oversees(tx, policy, &me, &scope, t)?
                {
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
            if !matches!(r.status, Status::Active | Status::Scheduled) {
                return Err(final_state(&r));
            }
            tx.close_request(id, Status::Revoked, t, actor, Some(justification))?;
            tx.record(event(actor, "activation.revoke", &r).justification(Some(justification)))?;
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
        given: ExtendInput<'_>,
    ) -> Result<Request> {
        self.extend_or_check(actor, role, scope, duration, given, false)
    }

    /// Every check of an extension that needs nothing typed (a running activation, the
    /// duration, no extension already waiting), before any prompt; a refusal is recorded as
    /// the extension's would be. The activation that would be extended.
    pub fn check_extend(
        &mut self,
        actor: &str,
        role: &str,
        scope: Option<&Scope>,
        duration: Option<Duration>,
    ) -> Result<Request> {
        self.extend_or_check(actor, role, scope, duration, ExtendInput::default(), true)
    }

    fn extend_or_check(
        &mut self,
        actor: &str,
        role: &str,
        scope: Option<&Scope>,
        duration: Option<Duration>,
        given: ExtendInput<'_>,
        only_check: bool,
    ) -> Result<Request> {
        let ExtendInput {
            justification,
            ticket,
            code,
        } = given;
        limits::check_opt("justification", justification, limits::JUSTIFICATION)?;
        limits::check_opt("ticket", ticket, limits::TICKET)?;
        if let Some(t) = ticket {
            limits::one_line("ticket", t)?;
        }
        let vault = self.vault.clone();
        self.write(actor, |tx, now, policy| {
            let me = acting_user(
                tx,
                now,
                actor,
                Event::new(actor, "activation.request").principal(actor),
            )?;
            let role = policy
                .role(role)
                .ok_or_else(|| unknown_role_in(policy, role))?;
            let s = &role.settings;
            let t = now.timestamp();
            let mut running: Vec<Request> = tx
                .requests(Of::User(me.id), Which::Started, t)?
                .into_iter()
                .filter(|r| r.role == role.key && scope.is_none_or(|sc| r.scope == sc.as_str()))
                .collect();
            let current = match running.len() {
                0 => {
                    let others = match scope {
                        Some(_) => super::activation::running_scopes(
                            tx,
                            me.id,
                            &role.key,
                            Which::Started,
                            t,
                        )?,
                        None => Vec::new(),
                    };
                    return Err(Error::NotFound(format!(
                        "You have no running activation of {}{} to extend.{} See `pim status`.",
                        role.key,
                        scope.map(|s| format!(" at {s}")).unwrap_or_default(),
                        super::activation::elsewhere_hint(&others)
                    )));
                }
                1 => running.remove(0),
                n => {
                    return Err(Error::Usage(format!(
                        "You have {n} activations of {}; say which with --scope.",
                        role.key
                    )))
                }
            };
            let justification = justification.map(str::trim).filter(|j| !j.is_empty());
            let ticket = ticket.map(str::trim).filter(|t| !t.is_empty());
            let ev = event(actor, "activation.request", &current)
                .justification(justification)
                .ticket(ticket)
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
                    crate::time::human(current.end_at, now)
                )));
            }
            if tx.has_pending_extension(current.id, t)? {
                return Err(Error::Conflict(
                    "An extension of this activation is already waiting for approval.".to_string(),
                ));
            }
            if only_check {
                return Ok(current);
            }
            if s.require_justification && justification.is_none() {
                return refuse(
                    tx,
                    now,
                    ev,
                    Error::Refused(format!(
                        "{} requires a justification. Pass -j/--justification.",
                        role.key
                    )),
                );
            }
            if let Some(j) = justification {
                if !s.justification_matches(j) {
                    return refuse(
                        tx,
                        now,
                        ev,
                        Error::Refused(format!(
                            "The justification does not match {}'s required pattern.",
                            role.key
                        )),
                    );
                }
            }
            if s.require_ticket && ticket.is_none() {
                return refuse(
                    tx,
                    now,
                    ev,
                    Error::Refused(format!("{} requires a ticket. Pass --ticket.", role.key)),
                );
            }
            if s.require_mfa {
                verify_code(tx, &vault, now, &me, code, ev.clone())?;
            }
            let eligibility = tx.request_eligibility(current.id)?;
            let decide_by = s
                .require_approval
                .then(|| (now + s.approval_timeout).timestamp());
            let id = tx.insert_request(&NewRequest {
                user_id: me.id,
                role: &role.key,
                scope: &current.scope,
                eligibility_id: eligibility,
                status: Status::Pending,
                created_at: t,
                start_at: t,
                end_at: t + duration.num_seconds(),
                justification,
                ticket,
                duration_secs: duration.num_seconds(),
                decide_by,
                extends: Some(current.id),
            })?;
            let pending = load(tx, id, t)?;
            let mut requested = ev
                .request(id)
                .expires(Some(t + duration.num_seconds()))
                .detail("approval", s.require_approval)
                .detail("eligibility", eligibility);
            if let Some(deadline) = decide_by {
                // Its approvers are told, like for any request that waits for them.
                requested = requested.detail("decide_by", deadline);
            }
            tx.record(requested)?;
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
        let decider = Decider::new(&self.conn, &policy, &me, t);
        // Read once for the list, not once a request.
        let decided = self.conn.pending_decided_by(actor)?;
        let mut out = Vec::new();
        for r in self.conn.requests(Of::Everyone, Which::Pending, t)? {
            let (Some(role), Ok(scope)) = (policy.role(&r.role), Scope::parse(&r.scope)) else {
                continue;
            };
            if r.user != actor && !decided.contains(&r.id) && decider.may_decide(role, &scope)? {
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
        let bob = crate::mfa::from_base32(&enrol(&mut pim, "bob").secret).unwrap();
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
        assert_eq!(r.status, crate::model::Status::Pending);
        clock.advance(Duration::hours(24) - Duration::seconds(1));
        assert_eq!(
            pim.request(r.id).unwrap().status,
            crate::model::Status::Pending
        );
        clock.advance(Duration::seconds(1));
        assert_eq!(
            pim.request(r.id).unwrap().status,
            crate::model::Status::TimedOut
        );
        // Too late to approve: a conflict, and nothing is held.
        let late = pim.decide("admin", r.id, true, None, Some(&code(&clock, &admin)));
        assert_eq!(late.unwrap_err().exit_code(), 5);
        assert_eq!(pim.check("bob", "approved", &Scope::root()).unwrap(), None);
        assert_eq!(pim.sweep("cron").unwrap().timed_out, vec![r.id]);
        assert!(pim.sweep("cron").unwrap().timed_out.is_empty());
        assert_eq!(count_events(&pim, "activation.timeout"), 1);
    }
}
