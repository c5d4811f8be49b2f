//! Just-in-time activation: a user takes a role they are eligible for, for a bounded time,
//! with what the role's policy asks (justification, ticket, TOTP code).

use super::assignments::{unknown_role, unknown_role_in};
use super::users::{mfa_ready, verify_code, User};
use super::Recorder;
use super::{acting_user, actor_user, holdings, refuse, users, Holding, Pim};
use crate::audit::Event;
use crate::error::{Error, Result};
use crate::limits;
use crate::model::{Kind, Status as RequestStatus};
use crate::scope::Scope;
use crate::store::requests::{NewRequest, Of, Which};
use crate::store::Db;
use crate::time::{format_duration, from_unix, rfc3339};
use crate::vault::Vault;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Default)]
pub struct ActivationInput {
    pub role: String,
    pub scope: Option<Scope>,
    pub duration: Option<Duration>,
    pub start: Option<DateTime<Utc>>,
    pub justification: Option<String>,
    pub ticket: Option<String>,
    pub code: Option<String>,
}

pub use crate::store::Request;

/// Everything about one user's access right now.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub user: String,
    pub disabled: bool,
    pub eligible: Vec<super::Assignment>,
    pub active: Vec<ActiveRole>,
    pub requests: Vec<Request>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActiveRole {
    pub role: String,
    pub scope: String,
    /// None: permanent.
    pub until: Option<String>,
    /// `assignment` or `activation`.
    pub source: String,
    pub request: Option<i64>,
    #[serde(skip)]
    pub until_at: Option<i64>,
}

/// End every open activation of `of`: set the final `status` and write one `action`
/// event each. A request still waiting for approval is canceled instead.
#[allow(clippy::too_many_arguments)]
pub(crate) fn end_activations(
    conn: &Recorder<'_>,
    _policy: &crate::policy::Policy,
    now: DateTime<Utc>,
    actor: &str,
    of: Of,
    status: RequestStatus,
    action: &str,
    reason: &str,
) -> Result<Vec<i64>> {
    let t = now.timestamp();
    let open = conn.requests(of, Which::Open, t)?;
    for r in &open {
        // A request still waiting for approval is withdrawn, not revoked: it never started.
        let (status, action) = if r.status == RequestStatus::Pending {
            (RequestStatus::Canceled, "activation.cancel")
        } else {
            (status, action)
        };
        conn.close_request(r.id, status, t, actor, Some(reason))?;
        conn.record(
            Event::new(actor, action)
                .principal(&r.user)
                .role(&r.role)
                .scope(&r.scope)
                .request(r.id)
                .detail("reason", reason),
        )?;
        if status == RequestStatus::Revoked {}
    }
    Ok(open.iter().map(|r| r.id).collect())
}

/// An eligibility now ends at `end`: the activations resting on it end no later, and those
/// that would only start after it are revoked; each change is recorded. Pending requests
/// are capped when they are approved.
pub(crate) fn cap_activations(
    conn: &Recorder<'_>,
    policy: &crate::policy::Policy,
    now: DateTime<Utc>,
    actor: &str,
    eligibility: i64,
    end: i64,
) -> Result<()> {
    let t = now.timestamp();
    let open = conn.requests(Of::Eligibility(eligibility), Which::Running, t)?;
    for r in open.into_iter().filter(|r| r.end_at > end) {
        if r.start_at >= end {
            end_activations(
                conn,
                policy,
                now,
                actor,
                Of::Id(r.id),
                RequestStatus::Revoked,
                "activation.revoke",
                "its eligibility now ends before it would start",
            )?;
            continue;
        }
        conn.set_request_end(r.id, end)?;
        conn.record(
            Event::new(actor, "activation.shorten")
                .principal(&r.user)
                .role(&r.role)
                .scope(&r.scope)
                .request(r.id)
                .expires(Some(end))
                .detail("from", r.end.clone())
                .detail("reason", "its eligibility now ends earlier"),
        )?;
    }
    Ok(())
}

/// What the checks of one activation found: who, which role, where, when and on which
/// eligibility it rests.
pub(crate) struct Checked<'p> {
    me: User,
    role: &'p crate::policy::Role,
    scope: Scope,
    start: DateTime<Utc>,
    duration: Duration,
    eligibility_id: i64,
    eligible_until: Option<i64>,
    event: Event,
}

/// The scope an activation is for: the one asked for, or, when none was, the only scope the
/// user is eligible for the role at (the root when there are none or the root is one of them;
/// a usage error naming them when there are several).
fn scope_for(conn: &Db, user_id: i64, role: &str, asked: Option<&Scope>, at: i64) -> Result<Scope> {
    if let Some(s) = asked {
        return Ok(s.clone());
    }
    let scopes = eligible_scopes(conn, user_id, role, at)?;
    match scopes.as_slice() {
        [only] => Ok(only.clone()),
        several if several.len() > 1 && !several.iter().any(|s| *s == Scope::root()) => {
            Err(Error::Usage(format!(
                "You are eligible for {role} at {}; choose one with --scope.",
                join_scopes(several)
            )))
        }
        _ => Ok(Scope::root()),
    }
}

/// The distinct scopes of `user_id`'s eligibilities for `role` in effect at `at`.
fn eligible_scopes(conn: &Db, user_id: i64, role: &str, at: i64) -> Result<Vec<Scope>> {
    let mut scopes: Vec<Scope> = Vec::new();
    for (_, s, _) in conn.eligibilities(user_id, role, at)? {
        if let Ok(s) = Scope::parse(&s) {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
    }
    scopes.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(scopes)
}

fn join_scopes(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every check of one activation that needs nothing typed (no justification, ticket or
/// code), inside the caller's transaction; refusals are recorded. Runs before any prompt.
pub(crate) fn check_activation<'p>(
    tx: &Recorder<'_>,
    now: DateTime<Utc>,
    policy: &'p crate::policy::Policy,
    actor: &str,
    input: &ActivationInput,
) -> Result<Checked<'p>> {
    limits::check_opt(
        "justification",
        input.justification.as_deref(),
        limits::JUSTIFICATION,
    )?;
    limits::check_opt("ticket", input.ticket.as_deref(), limits::TICKET)?;
    if let Some(t) = &input.ticket {
        limits::one_line("ticket", t)?;
    }
    let attempt = Event::new(actor, "activation.request").principal(actor);
    let attempt = match policy.role(&input.role) {
        Some(r) => attempt.role(&r.key),
        None => attempt,
    };
    let me: User = acting_user(tx, now, actor, attempt)?;
    let role = policy
        .role(&input.role)
        .ok_or_else(|| unknown_role_in(policy, &input.role))?;
    let settings = &role.settings;
    let t = now.timestamp();
    let scope = scope_for(tx, me.id, &role.key, input.scope.as_ref(), t)?;
    let justification = input
        .justification
        .as_deref()
        .map(str::trim)
        .filter(|j| !j.is_empty());
    let ticket = input
        .ticket
        .as_deref()
        .map(str::trim)
        .filter(|j| !j.is_empty());
    let event = Event::new(actor, "activation.request")
        .principal(actor)
        .role(&role.key)
        .scope(scope.as_str())
        .justification(justification)
        .ticket(ticket);
    let refused = |why: String| refuse(tx, now, event.clone(), Error::Refused(why));

    if me.kind == "service" {
        return refused(format!(
                "'{actor}' is a service principal; services never activate. Give it an active assignment instead."
            ));
    }
    // Already holding the role here (directly or by an activation)?
    if let Some(h) = holdings(tx, me.id, t)?
        .into_iter()
        .find(|h| h.role == role.key && h.scope.covers(&scope))
    {
        let until = match h.until {
            Some(u) => format!("until {}", crate::time::human(u, now)),
            None => "permanently".to_string(),
        };
        return Err(Error::Conflict(format!(
            "{} is already active for you at {} ({until}).",
            role.key, h.scope
        )));
    }
    if tx.has_waiting_request(me.id, &role.key, scope.as_str(), t)? {
        return Err(Error::Conflict(format!(
            "You already have an open request for {} at {scope}. See `pim status`.",
            role.key
        )));
    }

    let start = match input.start {
        Some(s) if s < now - Duration::minutes(1) => {
            return Err(Error::Usage(format!(
                "The start {} is in the past. Leave --start out to start now.",
                rfc3339(s)
            )));
        }
        Some(s) => s.max(now),
        None => now,
    };
    let duration = input.duration.unwrap_or(settings.max_activation);
    if duration > settings.max_activation {
        return refused(format!(
            "{} can be activated for at most {}; ask for less with --duration.",
            role.key,
            format_duration(settings.max_activation)
        ));
    }
    // The eligibility that covers this scope when the activation starts, the one
    // lasting longest first.
    let eligibility: Option<(i64, Option<i64>)> = {
        let mut found = None;
        for (id, s, end) in tx.eligibilities(me.id, &role.key, start.timestamp())? {
            if Scope::parse(&s).is_ok_and(|s| s.covers(&scope)) {
                found = Some((id, end));
                break;
            }
        }
        found
    };
    let Some((eligibility_id, eligible_until)) = eligibility else {
        let elsewhere = eligible_scopes(tx, me.id, &role.key, start.timestamp())?;
        let hint = match elsewhere.as_slice() {
            [] => "Ask an administrator for an eligible assignment.".to_string(),
            [one] => format!("You are eligible for it at {one}: pass --scope {one}."),
            several => format!(
                "You are eligible for it at {}: pass one with --scope.",
                join_scopes(several)
            ),
        };
        return refused(format!(
            "You are not eligible for {} at {scope}. {hint}",
            role.key
        ));
    };
    Ok(Checked {
        me,
        role,
        scope,
        start,
        duration,
        eligibility_id,
        eligible_until,
        event,
    })
}

/// The checks and the write of one activation, inside the caller's transaction.
/// `mfa_done`: the caller already verified a code for this transaction.
pub(crate) fn activate_in(
    tx: &Recorder<'_>,
    vault: &Vault,
    now: DateTime<Utc>,
    policy: &crate::policy::Policy,
    actor: &str,
    input: &ActivationInput,
    mfa_done: bool,
) -> Result<Request> {
    let Checked {
        me,
        role,
        scope,
        start,
        duration,
        eligibility_id,
        eligible_until,
        event,
    } = check_activation(tx, now, policy, actor, input)?;
    let settings = &role.settings;
    let t = now.timestamp();
    let justification = event.justification.clone();
    let justification = justification.as_deref();
    let ticket = event.ticket.clone();
    let ticket = ticket.as_deref();
    let refused = |why: String| refuse(tx, now, event.clone(), Error::Refused(why));
    if settings.require_justification && justification.is_none() {
        return refused(format!(
            "{} requires a justification. Pass -j/--justification.",
            role.key
        ));
    }
    if let Some(j) = justification {
        if !settings.justification_matches(j) {
            return refused(format!(
                "The justification does not match {}'s required pattern `{}`{}.",
                role.key,
                settings
                    .justification_pattern
                    .as_deref()
                    .unwrap_or_default(),
                settings
                    .justification_hint
                    .as_deref()
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default()
            ));
        }
    }
    if settings.require_ticket && ticket.is_none() {
        return refused(format!("{} requires a ticket. Pass --ticket.", role.key));
    }
    if settings.require_mfa && !mfa_done {
        verify_code(tx, vault, now, &me, input.code.as_deref(), event.clone())?;
    }

    // Never outlast the eligibility it rests on.
    let mut end = crate::time::checked_add(start, duration)?;
    let capped = eligible_until.is_some_and(|e| e < end.timestamp());
    if let Some(e) = eligible_until.filter(|_| capped) {
        end = from_unix(e);
    }
    let status = if settings.require_approval {
        RequestStatus::Pending
    } else if start <= now {
        RequestStatus::Active
    } else {
        RequestStatus::Scheduled
    };
    let decide_by = settings
        .require_approval
        .then(|| (now + settings.approval_timeout).timestamp());
    let id = tx.insert_request(&NewRequest {
        user_id: me.id,
        role: &role.key,
        scope: scope.as_str(),
        eligibility_id: Some(eligibility_id),
        status,
        created_at: t,
        start_at: start.timestamp(),
        end_at: end.timestamp(),
        justification,
        ticket,
        duration_secs: duration.num_seconds(),
        decide_by,
        extends: None,
    })?;
    let mut requested = event
        .clone()
        .request(id)
        .expires(Some(end.timestamp()))
        .detail("start", rfc3339(start))
        .detail("duration", format_duration(end - start))
        .detail("mfa", settings.require_mfa)
        .detail("approval", settings.require_approval)
        .detail("capped_by_eligibility", capped)
        // What it rests on, and the length asked for before any cap: `audit verify --state`
        // holds the request's row to both.
        .detail("eligibility", eligibility_id)
        .detail("duration_asked", duration.num_seconds());
    if let Some(deadline) = decide_by {
        // Its approvers are told, and until when they may decide.
        requested = requested.detail("decide_by", deadline);
    }
    tx.record(requested)?;
    if status == RequestStatus::Active {
        tx.record(
            Event::new(actor, "activation.start")
                .principal(actor)
                .role(&role.key)
                .scope(scope.as_str())
                .request(id)
                .expires(Some(end.timestamp())),
        )?;
    }
    if let Some(_deadline) = decide_by {}
    request_now(tx, id, t)
}

/// The scopes of `user_id`'s activations of `role` (those `which` selects).
pub(crate) fn running_scopes(
    conn: &Db,
    user_id: i64,
    role: &str,
    which: Which,
    t: i64,
) -> Result<Vec<String>> {
    let mut scopes: Vec<String> = conn
        .requests(Of::User(user_id), which, t)?
        .into_iter()
        .filter(|r| r.role == role)
        .map(|r| r.scope)
        .collect();
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// " You have it at /prod: pass --scope /prod." (did you mean), or nothing.
pub(crate) fn elsewhere_hint(scopes: &[String]) -> String {
    match scopes {
        [] => String::new(),
        [one] => format!(" You have it at {one}: pass --scope {one}."),
        several => format!(
            " You have it at {}: pass one with --scope.",
            several.join(", ")
        ),
    }
}

/// A request that this transaction wrote or read.
pub(crate) fn request_now(conn: &Db, id: i64, t: i64) -> Result<Request> {
    conn.request_by_id(id, t)?
        .ok_or_else(|| super::approvals::hidden(id))
}

/// What activating one role at one scope will ask for, known before anything is typed.
#[derive(Debug, Clone, Serialize)]
pub struct ActivationPlan {
    pub role: String,
    pub name: String,
    pub scope: String,
    /// The longest activation the role allows.
    pub max_activation: String,
    /// When the eligibility it rests on ends (None: permanent).
    pub eligible_until: Option<String>,
    #[serde(skip)]
    pub eligible_until_at: Option<i64>,
    pub require_justification: bool,
    pub justification_pattern: Option<String>,
    /// The pattern in words, with an example (from the policy).
    pub justification_hint: Option<String>,
    pub require_ticket: bool,
    /// A TOTP code will be asked for.
    pub require_mfa: bool,
    pub require_approval: bool,
    pub approvers: Vec<String>,
    /// Already active for you there (nothing to activate).
    pub active: bool,
}

impl ActivationPlan {
    fn of(role: &crate::policy::Role, scope: &str, until: Option<i64>) -> Self {
        let s = &role.settings;
        ActivationPlan {
            role: role.key.clone(),
            name: role.name.clone(),
            scope: scope.to_string(),
            max_activation: format_duration(s.max_activation),
            eligible_until: until.map(|u| rfc3339(from_unix(u))),
            eligible_until_at: until,
            require_justification: s.require_justification,
            justification_pattern: s.justification_pattern.clone(),
            justification_hint: s.justification_hint.clone(),
            require_ticket: s.require_ticket,
            require_mfa: s.require_mfa,
            require_approval: s.require_approval,
            approvers: s.approvers.clone(),
            active: false,
        }
    }

    /// What the activation will ask for, in words: "a justification matching `^CHG-`, a
    /// TOTP code, then approval by alice".
    pub fn requires(&self) -> String {
        let mut parts = Vec::new();
        match (&self.justification_pattern, self.require_justification) {
            (Some(p), _) => parts.push(match &self.justification_hint {
                Some(hint) => format!("a justification: {hint} (`{p}`)"),
                None => format!("a justification matching `{p}`"),
            }),
            (None, true) => parts.push("a justification".to_string()),
            (None, false) => {}
        }
        if self.require_ticket {
            parts.push("a ticket".to_string());
        }
        if self.require_mfa {
            parts.push("a TOTP code".to_string());
        }
        let mut out = if parts.is_empty() {
            "nothing to type".to_string()
        } else {
            parts.join(", ")
        };
        if self.require_approval {
            out.push_str(&if self.approvers.is_empty() {
                ", then an approver's decision".to_string()
            } else {
                format!(", then approval by {}", self.approvers.join(" or "))
            });
        }
        out
    }
}

impl Pim {
    /// Request activation of an eligible role.
    /// Run every check of an activation that needs nothing typed, before any prompt: the
    /// role, the scope (the only eligible one when none is given), eligibility, duration, an
    /// open request or the role already held. A refusal is recorded as the activation's
    /// would be; nothing else is written.
    pub fn plan_activation(
        &mut self,
        actor: &str,
        input: &ActivationInput,
    ) -> Result<ActivationPlan> {
        self.plan(actor, |tx, now, policy| {
            let c = check_activation(tx, now, policy, actor, input)?;
            if c.role.settings.require_mfa {
                // No authenticator, or a locked one: said now, not after the typing.
                mfa_ready(tx, now, &c.me, c.event.clone())?;
            }
            Ok(ActivationPlan::of(
                c.role,
                c.scope.as_str(),
                c.eligible_until,
            ))
        })
    }

    /// Where `pim exec ROLE` without `--scope` runs: the one scope `user` holds `role` at
    /// now, else the one scope they are eligible for it at (as `activate` chooses; several
    /// of them is a usage error naming them).
    pub fn exec_scope(&self, user: &str, role: &str) -> Result<Scope> {
        let me = users::get(&self.conn, user)?;
        let now = self.now().timestamp();
        let mut held: Vec<Scope> = holdings(&self.conn, me.id, now)?
            .into_iter()
            .filter(|h| h.role == role)
            .map(|h| h.scope)
            .collect();
        held.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        held.dedup();
        match held.as_slice() {
            [only] => Ok(only.clone()),
            _ => scope_for(&self.conn, me.id, role, None, now),
        }
    }

    /// Every role and scope `user` is eligible for right now, with what activating it asks
    /// (those already active marked so): the menu of `pim activate` with no role.
    pub fn activatable(&self, user: &str) -> Result<Vec<ActivationPlan>> {
        let policy = self.policy()?;
        let me = users::get(&self.conn, user)?;
        let now = self.now().timestamp();
        let held = holdings(&self.conn, me.id, now)?;
        let mut out: Vec<ActivationPlan> = Vec::new();
        for a in self.status(user)?.eligible {
            let Some(role) = policy.role(&a.role) else {
                continue;
            };
            if a.start_at > now || out.iter().any(|p| p.role == a.role && p.scope == a.scope) {
                continue;
            }
            let mut plan = ActivationPlan::of(role, &a.scope, a.end_at);
            let scope = Scope::parse(&a.scope)?;
            plan.active = held
                .iter()
                .any(|h| h.role == role.key && h.scope.covers(&scope));
            out.push(plan);
        }
        Ok(out)
    }

    pub fn activate(&mut self, actor: &str, input: ActivationInput) -> Result<Request> {
        let vault = self.vault.clone();
        self.write(actor, |tx, now, policy| {
            activate_in(tx, &vault, now, policy, actor, &input, false)
        })
    }

    /// Activate several roles with one justification and one TOTP code: all of them, or
    /// none (a refusal of any one is recorded, and nothing is activated). Each role is
    /// activated at its own scope when one is given with it, else at `input.scope`.
    pub fn activate_many(
        &mut self,
        actor: &str,
        roles: &[(String, Option<Scope>)],
        input: ActivationInput,
    ) -> Result<Vec<Request>> {
        let vault = self.vault.clone();
        self.write(actor, |tx, now, policy| {
            let me = acting_user(
                tx,
                now,
                actor,
                Event::new(actor, "activation.request")
                    .principal(actor)
                    .detail(
                        "roles",
                        roles.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(),
                    ),
            )?;
            let mut keys = Vec::new();
            let mut scopes = Vec::new();
            for (r, scope) in roles {
                keys.push(
                    policy
                        .role(r)
                        .ok_or_else(|| unknown_role_in(policy, r))?
                        .clone(),
                );
                scopes.push(scope.clone().or_else(|| input.scope.clone()));
            }
            if keys.iter().any(|r| r.settings.require_mfa) {
                let event = Event::new(actor, "activation.request")
                    .principal(actor)
                    .detail(
                        "roles",
                        keys.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
                    );
                verify_code(tx, &vault, now, &me, input.code.as_deref(), event)?;
            }
            tx.savepoint("activate_many")?;
            let mut out = Vec::new();
            for (role, scope) in keys.iter().zip(scopes) {
                let one = ActivationInput {
                    role: role.key.clone(),
                    scope,
                    ..input.clone()
                };
                match activate_in(tx, &vault, now, policy, actor, &one, true) {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        // Undo the roles already activated; keep only the refusal on record.
                        tx.rollback_to("activate_many")?;
                        return match e {
                            Error::Recorded(inner) => {
                                tx.record(
                                    Event::new(actor, "activation.request")
                                        .principal(actor)
                                        .role(&role.key)
                                        .scope(
                                            one.scope.as_ref().map(|s| s.as_str()).unwrap_or("/"),
                                        )
                                        .refused(&inner.to_string()),
                                )?;
                                Err(inner.recorded())
                            }
                            other => Err(other),
                        };
                    }
                }
            }
            tx.release("activate_many")?;
            Ok(out)
        })
    }

    /// End your own activation now.
    pub fn deactivate(
        &mut self,
        actor: &str,
        role: &str,
        scope: Option<&Scope>,
    ) -> Result<Request> {
        self.write_system(|tx, now, policy| {
            let me = actor_user(tx, actor)?;
            let role = policy
                .role(role)
                .ok_or_else(|| unknown_role_in(policy, role))?;
            let t = now.timestamp();
            let mut open: Vec<Request> = tx
                .requests(Of::User(me.id), Which::Running, t)?
                .into_iter()
                .filter(|r| r.role == role.key && scope.is_none_or(|s| r.scope == s.as_str()))
                .collect();
            let request = match open.len() {
                0 => {
                    let others = running_scopes(tx, me.id, &role.key, Which::Running, t)?;
                    return Err(Error::NotFound(format!(
                        "You have no activation of {}{}.{} See `pim status`.",
                        role.key,
                        scope.map(|s| format!(" at {s}")).unwrap_or_default(),
                        elsewhere_hint(&others)
                    )));
                }
                1 => open.remove(0),
                _ => {
                    return Err(Error::Usage(format!(
                        "You have {} activations of {}; say which with --scope.",
                        open.len(),
                        role.key
                    )))
                }
            };
            end_activations(
                tx,
                policy,
                now,
                actor,
                Of::Id(request.id),
                RequestStatus::Deactivated,
                "activation.deactivate",
                "deactivated by its holder",
            )?;
            request_now(tx, request.id, t)
        })
    }

    /// Give back the activation `id` that `pim exec` made for `actor`, if it still runs:
    /// that one only, not another of the same role and scope made since (after a revoke, in
    /// another terminal). None when it has ended already.
    /// On record with the name of exec's command and its exit code.
    pub fn deactivate_request(
        &mut self,
        actor: &str,
        id: i64,
        command: &str,
        exit: i32,
    ) -> Result<Option<Request>> {
        self.write_system(|tx, now, _| {
            let me = actor_user(tx, actor)?;
            let t = now.timestamp();
            let Some(r) = tx
                .requests(Of::Id(id), Which::Running, t)?
                .into_iter()
                .find(|r| r.user == me.name)
            else {
                return Ok(None);
            };
            let reason = "given back by `pim exec` when its command ended";
            tx.close_request(id, RequestStatus::Deactivated, t, actor, Some(reason))?;
            tx.record(
                Event::new(actor, "activation.deactivate")
                    .principal(&r.user)
                    .role(&r.role)
                    .scope(&r.scope)
                    .request(id)
                    .detail("reason", reason)
                    .detail("command", command)
                    .detail("exit", exit),
            )?;
            request_now(tx, id, t).map(Some)
        })
    }

    /// What a user may activate, holds, and has asked for.
    pub fn status(&self, user: &str) -> Result<Status> {
        let user = users::get(&self.conn, user)?;
        let now = self.now().timestamp();
        let eligible = self.assignments(&super::AssignmentFilter {
            user: Some(user.name.clone()),
            kind: Some(Kind::Eligible),
            ..Default::default()
        })?;
        let active = holdings(&self.conn, user.id, now)?
            .into_iter()
            .map(|h: Holding| ActiveRole {
                role: h.role,
                scope: h.scope.to_string(),
                until: h.until.map(|u| rfc3339(from_unix(u))),
                source: if h.request.is_some() {
                    "activation"
                } else {
                    "assignment"
                }
                .to_string(),
                request: h.request,
                until_at: h.until,
            })
            .collect();
        let requests = self.conn.requests(Of::User(user.id), Which::Waiting, now)?;
        Ok(Status {
            user: user.name,
            disabled: user.disabled,
            eligible,
            active,
            requests,
        })
    }

    /// Whether `user` holds `role` covering `scope` right now: `Some(until)` (None inside
    /// meaning permanently) when held.
    pub fn check(&self, user: &str, role: &str, scope: &Scope) -> Result<Option<Option<i64>>> {
        let policy = self.policy()?;
        let role = policy.role(role).ok_or_else(|| unknown_role(role))?;
        let user = users::get(&self.conn, user)?;
        let now = self.now().timestamp();
        let covering: Vec<Holding> = holdings(&self.conn, user.id, now)?
            .into_iter()
            .filter(|h| h.role == role.key && h.scope.covers(scope))
            .collect();
        if covering.is_empty() {
            return Ok(None);
        }
        if covering.iter().any(|h| h.until.is_none()) {
            return Ok(Some(None));
        }
        Ok(Some(covering.iter().filter_map(|h| h.until).max()))
    }

    /// The activations by which `user` holds `role` over `scope` now (not a direct
    /// assignment), each with its end: what `pim exec` relies on when it finds the role held.
    pub fn covering_activations(
        &self,
        user: &str,
        role: &str,
        scope: &Scope,
    ) -> Result<Vec<(i64, Option<i64>, i64)>> {
        let policy = self.policy()?;
        let role = policy.role(role).ok_or_else(|| unknown_role(role))?;
        let user = users::get(&self.conn, user)?;
        let now = self.now().timestamp();
        holdings(&self.conn, user.id, now)?
            .into_iter()
            .filter(|h| h.role == role.key && h.scope.covers(scope))
            .filter_map(|h| h.request.map(|id| (id, h.until)))
            .map(|(id, until)| {
                let made = self
                    .conn
                    .request_by_id(id, now)?
                    .map_or(0, |r| r.created_at);
                Ok((id, until, made))
            })
            .collect()
    }

    /// Whether request `id` is an activation in force now (started, not ended), and, where
    /// `made` is given, the one made then (a database restored from a copy gives its
    /// request ids again).
    pub fn activation_in_force(&self, id: i64, made: Option<i64>) -> Result<bool> {
        let now = self.now().timestamp();
        Ok(self.conn.request_by_id(id, now)?.is_some_and(|r| {
            r.status == RequestStatus::Active && made.is_none_or(|m| m == r.created_at)
        }))
    }

    /// The database's random instance id.
    pub fn instance(&self) -> Result<String> {
        self.conn.instance()
    }

    /// Activation requests: yours, or everyone's with `all`.
    pub fn requests(&self, user: Option<&str>) -> Result<Vec<Request>> {
        let now = self.now().timestamp();
        match user {
            Some(name) => {
                let u = users::get(&self.conn, name)?;
                self.conn.requests(Of::User(u.id), Which::Any, now)
            }
            None => self.conn.requests(Of::Everyone, Which::Any, now),
        }
    }

    pub fn request(&self, id: i64) -> Result<Request> {
        let now = self.now().timestamp();
        let mut r = request_now(&self.conn, id, now)?;
        r.decisions = self.conn.decisions(id)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{AssignInput, End};
    use super::*;
    use crate::clock::Clock;
    use crate::params;

    /// bob, eligible for db-admin at /prod, with an authenticator.
    fn with_bob() -> (Pim, std::sync::Arc<crate::clock::FixedClock>, Vec<u8>) {
        let (mut pim, clock, _) = pim();
        pim.add_user("admin", "bob", None, None).unwrap();
        let e = enrol(&mut pim, "bob");
        for role in ["db-admin", "ticketed", "approved"] {
            pim.assign(
                "admin",
                AssignInput {
                    user: "bob".into(),
                    role: role.into(),
                    scope: Scope::parse("/prod").unwrap(),
                    active: false,
                    start: None,
                    end: End::After(Duration::days(30)),
                    justification: Some("on call".into()),
                    ticket: None,
                },
            )
            .unwrap();
        }
        (pim, clock, crate::mfa::from_base32(&e.secret).unwrap())
    }

    fn ask(role: &str, scope: &str, code: Option<String>) -> ActivationInput {
        ActivationInput {
            role: role.into(),
            scope: Some(Scope::parse(scope).unwrap()),
            justification: Some("INC-1 disk full".into()),
            code,
            ..Default::default()
        }
    }

    #[test]
    fn activation_holds_the_role_until_it_expires_without_a_sweep() {
        let (mut pim, clock, secret) = with_bob();
        let db = Scope::parse("/prod/db").unwrap();
        assert_eq!(pim.check("bob", "db-admin", &db).unwrap(), None);
        let r = pim
            .activate("bob", ask("db-admin", "/prod", Some(code(&clock, &secret))))
            .unwrap();
        assert_eq!(r.status, crate::model::Status::Active);
        assert_eq!(r.end_at - r.start_at, 4 * 3600);
        assert_eq!(
            pim.check("bob", "db-admin", &db).unwrap(),
            Some(Some(r.end_at))
        );
        assert_eq!(
            pim.check("bob", "db-admin", &Scope::parse("/production").unwrap())
                .unwrap(),
            None
        );
        // A second activation is a conflict.
        clock.advance(Duration::seconds(30));
        let again = pim.activate("bob", ask("db-admin", "/prod", Some(code(&clock, &secret))));
        assert_eq!(again.unwrap_err().exit_code(), 5);
        clock.advance(Duration::hours(4));
        assert_eq!(pim.check("bob", "db-admin", &db).unwrap(), None);
        assert_eq!(
            pim.request(r.id).unwrap().status,
            crate::model::Status::Expired
        );
        // sweep records the expiry once, however often it runs.
        assert_eq!(pim.sweep("root").unwrap().expired_activations, vec![r.id]);
        assert!(pim.sweep("root").unwrap().expired_activations.is_empty());
        assert_eq!(count_events(&pim, "activation.expire"), 1);
        assert!(crate::audit::verify(pim.conn()).unwrap().ok);
    }

    #[test]
    fn refusals_are_refused_and_recorded() {
        let (mut pim, clock, secret) = with_bob();
        let refusals = |pim: &Pim| -> i64 {
            pim.conn()
                .query_row(
                    "SELECT count(*) FROM audit_events WHERE result != 'ok'",
                    params![],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let before = refusals(&pim);
        // Not eligible at a scope outside /prod.
        let e = pim.activate(
            "bob",
            ask("db-admin", "/staging", Some(code(&clock, &secret))),
        );
        assert_eq!(e.unwrap_err().exit_code(), 3);
        // Too long.
        let mut long = ask("db-admin", "/prod", Some(code(&clock, &secret)));
        long.duration = Some(Duration::hours(5));
        assert_eq!(pim.activate("bob", long).unwrap_err().exit_code(), 3);
        // Missing and non-matching justification.
        let mut nothing = ask("db-admin", "/prod", Some(code(&clock, &secret)));
        nothing.justification = None;
        assert!(pim
            .activate("bob", nothing)
            .unwrap_err()
            .to_string()
            .contains("justification"));
        let mut bad = ask("db-admin", "/prod", Some(code(&clock, &secret)));
        bad.justification = Some("because".into());
        assert!(pim
            .activate("bob", bad)
            .unwrap_err()
            .to_string()
            .contains("pattern"));
        // Missing code, wrong code.
        assert!(pim
            .activate("bob", ask("db-admin", "/prod", None))
            .unwrap_err()
            .to_string()
            .contains("TOTP"));
        assert_eq!(
            pim.activate(
                "bob",
                ask("db-admin", "/prod", Some(wrong_code(&clock, &secret)))
            )
            .unwrap_err()
            .exit_code(),
            3
        );
        // Ticket required.
        assert!(pim
            .activate("bob", ask("ticketed", "/prod", None))
            .unwrap_err()
            .to_string()
            .contains("ticket"));
        assert_eq!(refusals(&pim), before + 7);
        // Nothing was activated by any of it.
        assert!(pim.requests(Some("bob")).unwrap().is_empty());
        // A role that needs approval waits, and is not held meanwhile.
        let r = pim
            .activate("bob", ask("approved", "/prod", Some(code(&clock, &secret))))
            .unwrap();
        assert_eq!(r.status, crate::model::Status::Pending);
        let prod = Scope::parse("/prod").unwrap();
        assert_eq!(pim.check("bob", "approved", &prod).unwrap(), None);
        assert_eq!(count_events(&pim, "mfa.fail"), 1);
    }

    #[test]
    fn scheduled_activations_start_later_and_can_be_deactivated() {
        let (mut pim, clock, secret) = with_bob();
        let mut later = ask("db-admin", "/prod", Some(code(&clock, &secret)));
        later.start = Some(clock.now() + Duration::hours(1));
        later.duration = Some(Duration::hours(1));
        let r = pim.activate("bob", later).unwrap();
        assert_eq!(r.status, crate::model::Status::Scheduled);
        let prod = Scope::parse("/prod").unwrap();
        assert_eq!(pim.check("bob", "db-admin", &prod).unwrap(), None);
        clock.advance(Duration::minutes(61));
        assert!(pim.check("bob", "db-admin", &prod).unwrap().is_some());
        let report = pim.sweep("root").unwrap();
        assert_eq!(report.started, vec![r.id]);
        let d = pim.deactivate("bob", "db-admin", None).unwrap();
        assert_eq!(d.status, crate::model::Status::Deactivated);
        assert_eq!(pim.check("bob", "db-admin", &prod).unwrap(), None);
        assert_eq!(
            pim.deactivate("bob", "db-admin", None)
                .unwrap_err()
                .exit_code(),
            4
        );
    }

    #[test]
    fn activation_never_outlasts_its_eligibility_and_ends_with_it() {
        let (mut pim, clock, secret) = with_bob();
        clock.advance(Duration::days(30) - Duration::hours(1));
        let r = pim
            .activate("bob", ask("db-admin", "/prod", Some(code(&clock, &secret))))
            .unwrap();
        assert_eq!(r.end_at - r.start_at, 3600);
        clock.advance(Duration::minutes(1));
        let r2 = pim
            .activate("bob", ask("ticketed", "/prod", None).with_ticket())
            .unwrap();
        assert_eq!(r2.status, crate::model::Status::Active);
        pim.unassign(
            "admin",
            "bob",
            "ticketed",
            &Scope::parse("/prod").unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(
            pim.request(r2.id).unwrap().status,
            crate::model::Status::Revoked
        );
        assert_eq!(
            pim.check("bob", "ticketed", &Scope::parse("/prod").unwrap())
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_disabled_user_holds_nothing() {
        let (mut pim, clock, secret) = with_bob();
        pim.activate("bob", ask("db-admin", "/prod", Some(code(&clock, &secret))))
            .unwrap();
        pim.set_disabled("admin", "bob", true).unwrap();
        assert_eq!(
            pim.check("bob", "db-admin", &Scope::parse("/prod").unwrap())
                .unwrap(),
            None
        );
        pim.set_disabled("admin", "bob", false).unwrap();
        assert_eq!(
            pim.check("bob", "db-admin", &Scope::parse("/prod").unwrap())
                .unwrap(),
            None
        );
        clock.advance(Duration::seconds(30));
        let e = pim.activate("bob", ask("db-admin", "/prod", Some(code(&clock, &secret))));
        assert!(e.is_ok());
    }

    impl ActivationInput {
        fn with_ticket(mut self) -> Self {
            self.ticket = Some("CHG-9".into());
            self
        }
    }
}
