//! Which notification each event sends, and to whom (queued in the event's transaction).

// Each notice takes the event's plain facts as arguments, as the audit events do.
#![allow(clippy::too_many_arguments)]

use super::{has_permission, users};
use crate::error::Result;
use crate::notify::{enqueue, Notice};
use crate::policy::{Policy, Role};
use crate::scope::Scope;
use crate::store::Db;
use crate::time::{from_unix, rfc3339};
use chrono::{DateTime, Utc};

fn role_name(policy: &Policy, key: &str) -> String {
    policy
        .roles
        .get(key)
        .map(|r| format!("{} ({key})", r.name))
        .unwrap_or_else(|| key.to_string())
}

fn until(end: Option<i64>) -> String {
    end.map(|e| format!("until {}", rfc3339(from_unix(e))))
        .unwrap_or_else(|| "permanently".to_string())
}

/// Who may decide a request for `role` at `scope`: the role's approvers, or the enabled
/// holders of `approve` over the scope; never the requester.
pub(crate) fn approvers(
    conn: &Db,
    policy: &Policy,
    role: &Role,
    scope: &Scope,
    requester: &str,
    now: i64,
) -> Result<Vec<String>> {
    if !role.settings.approvers.is_empty() {
        return Ok(role
            .settings
            .approvers
            .iter()
            .filter(|a| *a != requester)
            .cloned()
            .collect());
    }
    let mut out = Vec::new();
    let names = conn.enabled_people()?;
    for name in names {
        if name == requester {
            continue;
        }
        if let Some(u) = users::find(conn, &name)? {
            if has_permission(conn, policy, &u, "approve", scope, now)? {
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// The notifications an event calls for, queued in its transaction.
pub(crate) fn for_event(
    conn: &Db,
    policy: &Policy,
    now: DateTime<Utc>,
    e: &crate::audit::Event,
) -> Result<()> {
    let text = |key: &str| {
        e.details
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let (Some(user), Some(role), Some(scope)) = (&e.principal, &e.role, &e.scope) else {
        return Ok(());
    };
    match (e.action.as_str(), e.request) {
        ("assignment.add", _) => assignment_added(
            conn,
            policy,
            now,
            &e.actor,
            user,
            role,
            scope,
            &text("type").unwrap_or_default(),
            e.expires,
        ),
        ("assignment.remind", _) => expiring(
            conn,
            policy,
            now,
            user,
            role,
            scope,
            &text("type").unwrap_or_default(),
            e.expires.unwrap_or(now.timestamp()),
        ),
        ("activation.request", Some(id)) => {
            let (Some(r), Ok(sc), Some(deadline)) = (
                policy.role(role),
                Scope::parse(scope),
                e.details.get("decide_by").and_then(|v| v.as_i64()),
            ) else {
                return Ok(());
            };
            requested(
                conn,
                policy,
                now,
                user,
                r,
                &sc,
                id,
                e.justification.as_deref(),
                deadline,
            )
        }
        ("activation.start", Some(id)) => started(
            conn,
            policy,
            now,
            user,
            role,
            scope,
            id,
            e.expires.unwrap_or(now.timestamp()),
        ),
        ("activation.approve" | "activation.deny" | "activation.timeout", Some(id)) => decided(
            conn,
            policy,
            now,
            &e.action,
            user,
            role,
            scope,
            id,
            &e.actor,
            e.justification.as_deref(),
        ),
        ("activation.revoke", Some(id)) => revoked(
            conn,
            policy,
            now,
            user,
            role,
            scope,
            id,
            &e.actor,
            &e.justification
                .clone()
                .or_else(|| text("reason"))
                .unwrap_or_default(),
        ),
        _ => Ok(()),
    }
}

fn assignment_added(
    conn: &Db,
    policy: &Policy,
    now: DateTime<Utc>,
    actor: &str,
    user: &str,
    role: &str,
    scope: &str,
    kind: &str,
    end: Option<i64>,
) -> Result<()> {
    let text = format!(
        "{actor} made {user} {kind} for {} at {scope}, {}.",
        role_name(policy, role),
        until(end)
    );
    enqueue(
        conn,
        policy,
        now,
        Notice::new("assignment.add", now, user, text)
            .role(role, scope)
            .to([user.to_string()]),
    )
}

fn requested(
    conn: &Db,
    policy: &Policy,
    now: DateTime<Utc>,
    user: &str,
    role: &Role,
    scope: &Scope,
    id: i64,
    justification: Option<&str>,
    decide_by: i64,
) -> Result<()> {
    let to = approvers(conn, policy, role, scope, user, now.timestamp())?;
    let text = format!(
        "{user} asks for {} at {scope}{}: decide with `pim approve {id}` or `pim deny {id} -j WHY` before {}.",
        role_name(policy, &role.key),
        justification
            .map(|j| format!(" (\"{}\")", one_line(j)))
            .unwrap_or_default(),
        rfc3339(from_unix(decide_by))
    );
    enqueue(
        conn,
        policy,
        now,
        Notice::new("activation.request", now, user, text)
            .role(&role.key, scope.as_str())
            .request(id)
            .to(to),
    )
}

/// To the requester: approved, denied or timed out.
fn decided(
    conn: &Db,
    policy: &Policy,
    now: DateTime<Utc>,
    event: &str,
    user: &str,
    role: &str,
    scope: &str,
    id: i64,
    by: &str,
    why: Option<&str>,
) -> Result<()> {
    let what = match event {
        "activation.approve" => format!("{by} approved"),
        "activation.deny" => format!("{by} denied"),
        _ => "nobody decided in time on".to_string(),
    };
    let text = format!(
        "{what} your request {id} for {} at {scope}{}.",
        role_name(policy, role),
        why.map(|j| format!(": \"{}\"", one_line(j)))
            .unwrap_or_default()
    );
    enqueue(
        conn,
        policy,
        now,
        Notice::new(event, now, user, text)
            .role(role, scope)
            .request(id)
            .to([user.to_string()]),
    )
}

/// To the role's `notify` list: an activation started.
fn started(
    conn: &Db,
    policy: &Policy,
    now: DateTime<Utc>,
    user: &str,
    role: &str,
    scope: &str,
    id: i64,
    end: i64,
) -> Result<()> {
    let Some(r) = policy.roles.get(role) else {
        return Ok(());
    };
    let text = format!(
        "{user} activated {} at {scope} {} (request {id}).",
        role_name(policy, role),
        until(Some(end))
    );
    enqueue(
        conn,
        policy,
        now,
        Notice::new("activation.start", now, user, text)
            .role(role, scope)
            .request(id)
            .to(r.settings.notify.clone()),
    )
}

/// To the user: their activation was revoked.
fn revoked(
    conn: &Db,
    policy: &Policy,
    now: DateTime<Utc>,
    user: &str,
    role: &str,
    scope: &str,
    id: i64,
    by: &str,
    why: &str,
) -> Result<()> {
    let text = format!(
        "{by} revoked your activation of {} at {scope} (request {id}): {}.",
        role_name(policy, role),
        one_line(why)
    );
    enqueue(
        conn,
        policy,
        now,
        Notice::new("activation.revoke", now, user, text)
            .role(role, scope)
            .request(id)
            .to([user.to_string()]),
    )
}

/// To the user: an assignment ends soon.
fn expiring(
    conn: &Db,
    policy: &Policy,
    now: DateTime<Utc>,
    user: &str,
    role: &str,
    scope: &str,
    kind: &str,
    end: i64,
) -> Result<()> {
    let text = format!(
        "Your {kind} assignment of {} at {scope} ends {}; ask an administrator to renew it if you still need it.",
        role_name(policy, role),
        rfc3339(from_unix(end))
    );
    enqueue(
        conn,
        policy,
        now,
        Notice::new("assignment.expiring", now, user, text)
            .role(role, scope)
            .to([user.to_string()]),
    )
}

/// What a person wrote (a justification, a reason), for a notice's text: line breaks and
/// other controls made spaces, so that it cannot start lines of its own in an e-mail's body
/// or a chat message and pass them off as pim's.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if crate::limits::breaks_a_line(c) {
                ' '
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod one_line_tests {
    /// A person's words in a notice: nothing in them breaks a line or turns the text around
    /// in a mail or chat client.
    #[test]
    fn a_notices_quoted_words_are_one_line() {
        let shown = super::one_line("a\nb\r\u{2028}c\u{2029}d\u{202e}e\u{2066}f\u{9b}g");
        assert_eq!(shown, "a b  c d e f g");
    }
}
