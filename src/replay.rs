//! Time travel: the log replayed up to an instant, to say who held and who was eligible for
//! what then (`pim audit replay --at T`, `pim who-could ROLE`). Decided from the events alone,
//! never from the state tables.

use crate::audit::{for_each, Filter};
use crate::error::Result;
use crate::store::Db;
use crate::time::parse_instant;
use serde::Serialize;
use std::collections::BTreeMap;

/// A role held or available at the instant.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    pub user: String,
    pub role: String,
    pub scope: String,
    /// `assignment` (direct) or `activation` (request N).
    pub source: String,
    pub since: String,
    /// None: permanent.
    pub until: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Snapshot {
    pub at: String,
    pub held: Vec<Entry>,
    pub eligible: Vec<Entry>,
}

struct Span {
    user: String,
    role: String,
    scope: String,
    kind: String,
    since: i64,
    until: Option<i64>,
    label: String,
}

fn unix(text: &str) -> Option<i64> {
    parse_instant(text).ok().map(|t| t.timestamp())
}

/// Replay the log up to `at` (unix seconds).
pub fn at(conn: &Db, at: i64) -> Result<Snapshot> {
    let mut assignments: BTreeMap<i64, Span> = BTreeMap::new();
    let mut activations: BTreeMap<i64, Span> = BTreeMap::new();
    // Requests waiting for approval: (user, role, scope, end).
    let mut waiting: BTreeMap<i64, (String, String, String, Option<i64>)> = BTreeMap::new();
    let mut disabled: std::collections::BTreeSet<String> = Default::default();
    let filter = Filter {
        until: crate::time::from_unix(at).checked_add_signed(chrono::Duration::seconds(1)),
        ..Default::default()
    };
    let mut seen = 0u64;
    for_each(conn, &filter, None, |e| {
        let t = unix(&e.time).unwrap_or(0);
        if e.result != "ok" || t > at {
            return Ok(());
        }
        // An activation over before now can change no more (extensions come while it runs):
        // keep memory to what may still be live.
        seen += 1;
        if seen.is_multiple_of(4096) {
            activations.retain(|_, a| a.until.is_none_or(|u| u > t));
        }
        let details: serde_json::Value = serde_json::from_str(&e.details).unwrap_or_default();
        let user = e.principal.clone().unwrap_or_default();
        let role = e.role.clone().unwrap_or_default();
        let scope = e.scope.clone().unwrap_or_default();
        let expires = e.expires.as_deref().and_then(unix);
        let end_early = |span: &mut Span| {
            if span.until.is_none_or(|u| u > t) {
                span.until = Some(t);
            }
        };
        match e.action.as_str() {
            "assignment.add" => {
                if let Some(id) = details["assignment"].as_i64() {
                    let since = details["start"].as_str().and_then(unix).unwrap_or(t);
                    assignments.insert(
                        id,
                        Span {
                            user,
                            role,
                            scope,
                            kind: details["type"].as_str().unwrap_or_default().to_string(),
                            since,
                            until: expires,
                            label: "assignment".into(),
                        },
                    );
                }
            }
            "assignment.change" => {
                if let Some(a) = details["assignment"]
                    .as_i64()
                    .and_then(|id| assignments.get_mut(&id))
                {
                    a.until = expires;
                }
            }
            "assignment.remove" => {
                if let Some(a) = details["assignment"]
                    .as_i64()
                    .and_then(|id| assignments.get_mut(&id))
                {
                    end_early(a);
                }
            }
            "activation.request" => {
                if let Some(id) = e.request {
                    if details["approval"].as_bool() == Some(true) {
                        waiting.insert(id, (user, role, scope, expires));
                    } else if details.get("extends").is_none() {
                        let since = details["start"].as_str().and_then(unix).unwrap_or(t);
                        activations.insert(
                            id,
                            Span {
                                user,
                                role,
                                scope,
                                kind: "active".into(),
                                since,
                                until: expires,
                                label: format!("activation (request {id})"),
                            },
                        );
                    }
                }
            }
            "activation.start" => {
                if let Some(id) = e.request {
                    if let Some((user, role, scope, _)) = waiting.remove(&id) {
                        activations.insert(
                            id,
                            Span {
                                user,
                                role,
                                scope,
                                kind: "active".into(),
                                since: t,
                                until: expires,
                                label: format!("activation (request {id})"),
                            },
                        );
                    }
                }
            }
            "activation.extend" => {
                if let Some(a) = details["extends"]
                    .as_i64()
                    .and_then(|id| activations.get_mut(&id))
                {
                    a.until = expires;
                }
            }
            "activation.shorten" => {
                if let Some(a) = e.request.and_then(|id| activations.get_mut(&id)) {
                    a.until = expires;
                }
            }
            "activation.deactivate" | "activation.revoke" | "activation.cancel" => {
                if let Some(a) = e.request.and_then(|id| activations.get_mut(&id)) {
                    end_early(a);
                }
            }
            "activation.deny" | "activation.timeout" => {
                if let Some(id) = e.request {
                    waiting.remove(&id);
                }
            }
            "user.disable" => {
                for a in activations.values_mut().filter(|a| a.user == user) {
                    end_early(a);
                }
                disabled.insert(user);
            }
            "user.enable" => {
                disabled.remove(&user);
            }
            _ => {}
        }
        Ok(())
    })?;
    // A disabled user holds nothing (and may activate nothing).
    let live =
        |s: &Span| s.since <= at && s.until.is_none_or(|u| u > at) && !disabled.contains(&s.user);
    let entry = |s: &Span| Entry {
        user: s.user.clone(),
        role: s.role.clone(),
        scope: s.scope.clone(),
        source: s.label.clone(),
        since: crate::time::rfc3339(crate::time::from_unix(s.since)),
        until: s
            .until
            .map(|u| crate::time::rfc3339(crate::time::from_unix(u))),
    };
    let mut held: Vec<Entry> = assignments
        .values()
        .filter(|s| s.kind == "active" && live(s))
        .chain(activations.values().filter(|s| live(s)))
        .map(entry)
        .collect();
    let mut eligible: Vec<Entry> = assignments
        .values()
        .filter(|s| s.kind == "eligible" && live(s))
        .map(entry)
        .collect();
    let key = |e: &Entry| (e.user.clone(), e.role.clone(), e.scope.clone());
    held.sort_by_key(key);
    eligible.sort_by_key(key);
    Ok(Snapshot {
        at: crate::time::rfc3339(crate::time::from_unix(at)),
        held,
        eligible,
    })
}
