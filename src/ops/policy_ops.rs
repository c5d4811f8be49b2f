//! Applying a policy (audited, shown role by role) and reading roles with their holders.

use super::{actor_user, has_permission, permission_error, refuse, Pim};
use crate::audit::Event;
use crate::error::{Error, Result};
use crate::model::Status;
use crate::policy::{diff, Policy, Role, RoleChange};
use crate::scope::Scope;
use crate::store::requests::{Of, Which};
use sha2::{Digest, Sha256};

pub(crate) fn source_hash(source: &str) -> String {
    hex::encode(Sha256::digest(source.as_bytes()))
}

/// What `policy apply` did (or, with `dry_run`, would do).
#[derive(Debug, Clone)]
pub struct PolicyApplied {
    pub changes: Vec<RoleChange>,
    /// Approvers or recipients that are not users yet.
    pub warnings: Vec<String>,
    pub applied: bool,
    /// Requests not yet started that the new rules of their role no longer allow, canceled
    /// by the apply (or, in a dry run, that it would cancel).
    pub canceled: Vec<Canceled>,
}

/// A pending or scheduled request that a policy apply canceled, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Canceled {
    pub id: i64,
    pub user: String,
    pub role: String,
    pub scope: String,
    pub reason: String,
}

/// The approvals of request `id` that `role`'s rules accept: each by a user still enabled
/// and, where the role names its approvers, one of them. Where it names none, the approver
/// held `approve` when deciding (checked then): a just-in-time approver whose activation has
/// ended since takes nothing back.
pub(crate) fn approvals_under(tx: &crate::store::Db, role: &Role, id: i64) -> Result<i64> {
    let named = &role.settings.approvers;
    super::approvals::count_approvals(tx, id, |approver| {
        Ok(!approver.disabled && (named.is_empty() || named.contains(&approver.name)))
    })
}

/// Why request `r` (pending, or scheduled and not yet started), made under `old`'s rules
/// for its role, falls short of `new`'s, if it does: a request is judged by the rules in
/// force, and one that waits must not carry rules that no longer are into the future.
/// `standing` counts its approvals that the new rules accept (`approvals_under`); they are
/// counted only when the role's approval rules changed.
fn falls_short(
    r: &crate::ops::Request,
    old: &Role,
    new: &Role,
    standing: impl FnOnce() -> Result<i64>,
) -> Result<Option<String>> {
    let (o, n) = (&old.settings, &new.settings);
    let key = &new.key;
    let why = if r.duration_secs > n.max_activation.num_seconds() {
        format!(
            "it asks for {}, longer than {key} may now be active ({})",
            crate::time::format_duration(chrono::Duration::seconds(r.duration_secs)),
            crate::time::format_duration(n.max_activation)
        )
    } else if n.require_mfa && !o.require_mfa {
        format!("it was made without the TOTP code {key} now requires")
    } else if n.require_ticket && r.ticket.is_none() {
        format!("it has no ticket, which {key} now requires")
    } else if n.require_justification && r.justification.is_none() {
        format!("it has no justification, which {key} now requires")
    } else if !r
        .justification
        .as_deref()
        .is_none_or(|j| n.justification_matches(j))
    {
        format!("its justification does not match {key}'s new pattern")
    } else if r.status == Status::Scheduled
        && n.require_approval
        && (n.require_approval != o.require_approval
            || n.approvers != o.approvers
            || n.min_approvals != o.min_approvals)
        && standing()? < i64::from(n.min_approvals)
    {
        format!("it was not approved as {key} now requires")
    } else {
        return Ok(None);
    };
    Ok(Some(why))
}

/// A role with counts of its holders.
#[derive(Debug, Clone)]
pub struct RoleSummary {
    pub role: Role,
    pub eligible: i64,
    pub active: i64,
}

impl Pim {
    /// Names in `policy` that are not (yet) users: warnings, never errors.
    pub fn policy_warnings(&self, policy: &Policy) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (role, name) in policy.named_users() {
            if super::users::find(&self.conn, &name)?.is_none() {
                out.push(format!(
                    "role {role} names '{name}', who is not a pim user yet."
                ));
            }
        }
        Ok(out)
    }

    /// Apply a new policy (permission `policy`). Removing a role that still has
    /// assignments or activations is a conflict.
    pub fn apply_policy(
        &mut self,
        actor: &str,
        new: &Policy,
        dry_run: bool,
    ) -> Result<PolicyApplied> {
        let warnings = self.policy_warnings(new)?;
        let commands_for_root = self.commands_for_root;
        self.write(actor, |tx, now, old| {
            let me = actor_user(tx, actor)?;
            let t = now.timestamp();
            let changes = diff(Some(old), new);
            let event = Event::new(actor, "policy.apply").detail("sha256", source_hash(&new.source));
            if !has_permission(tx, old, &me, "policy", &Scope::root(), t)? {
                return refuse(tx, now, event, permission_error("policy", &Scope::root()));
            }
            if commands_for_root
                && (old.notifications.command != new.notifications.command
                    || old.witness.command != new.witness.command
                    || old.witness.file != new.witness.file)
            {
                return refuse(
                    tx,
                    now,
                    event,
                    Error::Refused(
                        "Only root may add or change [notifications.command], [witness] command or file of the installed database: root's sweep runs and writes them. Ask root to apply this policy."
                            .to_string(),
                    ),
                );
            }
            for change in &changes {
                if let RoleChange::Removed(key) = change {
                    let in_use = tx.role_in_use(key, t)?;
                    if in_use > 0 {
                        return Err(Error::Conflict(format!(
                            "The policy removes role {key}, which still has {in_use} assignment(s) or activation(s). Remove them first."
                        )));
                    }
                }
            }
            // The requests that wait (pending, or scheduled and not yet started) for a role
            // whose rules changed: those the new rules would not allow are canceled.
            let changed: Vec<&str> = changes
                .iter()
                .filter_map(|c| match c {
                    RoleChange::Changed(key, _) => Some(key.as_str()),
                    _ => None,
                })
                .collect();
            let mut short = Vec::new();
            if !changed.is_empty() {
                for r in tx.requests(Of::Everyone, Which::Waiting, t)? {
                    let (Some(o), Some(n)) = (old.role(&r.role), new.role(&r.role)) else {
                        continue;
                    };
                    if !changed.contains(&n.key.as_str()) {
                        continue;
                    }
                    let standing = || approvals_under(tx, n, r.id);
                    if let Some(reason) = falls_short(&r, o, n, standing)? {
                        short.push((r, reason));
                    }
                }
            }
            if !dry_run && !changes.is_empty() {
                tx.set_policy_source(&new.source)?;
                let summary: Vec<serde_json::Value> = changes.iter().map(change_json).collect();
                tx.record(event.detail("changes", summary))?;
                for (r, reason) in &short {
                    let why = format!("canceled by a policy change: {reason}");
                    tx.close_request(r.id, Status::Canceled, t, actor, Some(&why))?;
                    tx.record(
                        super::approvals::event(actor, "activation.cancel", r)
                            .detail("reason", reason.as_str()),
                    )?;
                }
            }
            Ok(PolicyApplied {
                applied: !dry_run && !changes.is_empty(),
                changes,
                warnings,
                canceled: short
                    .into_iter()
                    .map(|(r, reason)| Canceled {
                        id: r.id,
                        user: r.user,
                        role: r.role,
                        scope: r.scope,
                        reason,
                    })
                    .collect(),
            })
        })
    }

    /// Roles of the policy in force with the number of users eligible and active now.
    pub fn roles(&self) -> Result<Vec<RoleSummary>> {
        let policy = self.policy()?;
        let t = self.now().timestamp();
        let keys: Vec<&str> = policy.roles.values().map(|r| r.key.as_str()).collect();
        let holders = self.conn.role_holders(&keys, t)?;
        let mut out = Vec::new();
        for role in policy.roles.values() {
            let (eligible, active) = holders.get(&role.key).copied().unwrap_or_default();
            out.push(RoleSummary {
                role: role.clone(),
                eligible,
                active,
            });
        }
        Ok(out)
    }
}

pub fn change_json(change: &RoleChange) -> serde_json::Value {
    match change {
        RoleChange::Added(k) => serde_json::json!({"role": k, "change": "added"}),
        RoleChange::Removed(k) => serde_json::json!({"role": k, "change": "removed"}),
        RoleChange::Changed(k, fields) => serde_json::json!({
            "role": k,
            "change": "changed",
            "fields": fields.iter().map(|(f, a, b)| serde_json::json!({"setting": f, "from": a, "to": b})).collect::<Vec<_>>(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    /// Each rule a waiting request can fall short of, on its own: the rest of the request
    /// meets the new rules, so only that one can name it.
    #[test]
    fn a_waiting_request_falls_short_of_each_stricter_rule_on_its_own() {
        let role = |settings: &str| {
            let p = Policy::parse(&format!("[roles.r]\nname = \"R\"\n{settings}\n")).unwrap();
            p.role("r").unwrap().clone()
        };
        let old = role("require_mfa = false\nrequire_justification = false");
        let r = crate::ops::Request {
            id: 1,
            user: "bob".into(),
            role: "r".into(),
            scope: "/".into(),
            status: Status::Scheduled,
            start: String::new(),
            end: String::new(),
            justification: Some("INC-1 disk".into()),
            ticket: None,
            requested: String::new(),
            closed_by: None,
            close_reason: None,
            decide_by: None,
            extends: None,
            decisions: Vec::new(),
            start_at: 100,
            end_at: 3700,
            duration_secs: 3600,
            decide_by_at: None,
            stored: Status::Scheduled,
            closed_at: None,
            created_at: 0,
        };
        let short = |r: &crate::ops::Request, new: &str, standing: i64| {
            falls_short(r, &old, &role(new), || Ok(standing)).unwrap()
        };
        let loose = "require_mfa = false\nrequire_justification = false";
        assert_eq!(short(&r, loose, 0), None);
        let cases = [
            (
                "max_activation = \"30m\"",
                "asks for 1h, longer than r may now be active (30m)",
            ),
            ("", "without the TOTP code r now requires"),
            ("require_ticket = true", "no ticket, which r now requires"),
            (
                "justification_pattern = \"^CHG-\"",
                "does not match r's new pattern",
            ),
            (
                "require_approval = true\napprovers = [\"carol\"]",
                "not approved as r now requires",
            ),
        ];
        for (stricter, why) in cases {
            // (the second case leaves out `require_mfa = false`: required, as by default)
            let new = if stricter.is_empty() {
                "require_justification = false".to_string()
            } else {
                format!("{loose}\n{stricter}")
            };
            let found = short(&r, &new, 0);
            assert!(
                found.as_deref().is_some_and(|f| f.contains(why)),
                "{stricter}: {found:?}"
            );
        }
        // Approved under the old rules as the new ones ask: it stands; short of a larger
        // quorum it does not. Pending, its approval goes on under the new rules.
        let approval =
            format!("{loose}\nrequire_approval = true\napprovers = [\"carol\", \"dave\"]");
        assert_eq!(short(&r, &approval, 1), None);
        let two = format!("{approval}\nmin_approvals = 2");
        assert!(short(&r, &two, 1).is_some());
        let pending = crate::ops::Request {
            status: Status::Pending,
            ..r.clone()
        };
        assert_eq!(short(&pending, &two, 0), None);
        // Approval rules unchanged: its approvals are not counted again (a just-in-time
        // approver's `approve` ended since, say), whatever else of the role changed.
        let approving = role(&approval);
        let described = role(&format!("{approval}\ndescription = \"Operations\""));
        assert_eq!(
            falls_short(&r, &approving, &described, || Ok(0)).unwrap(),
            None
        );
        let quorum = role(&format!("{approval}\nmin_approvals = 2"));
        assert!(falls_short(&r, &approving, &quorum, || Ok(1))
            .unwrap()
            .is_some());
        // No justification where one is now required.
        let none = crate::ops::Request {
            justification: None,
            ..r.clone()
        };
        let found = short(&none, "require_mfa = false", 0);
        assert!(
            found
                .as_deref()
                .is_some_and(|f| f.contains("no justification")),
            "{found:?}"
        );
        // A ticket given meets a ticket required.
        let ticketed = crate::ops::Request {
            ticket: Some("CHG-1".into()),
            ..r
        };
        assert_eq!(
            short(&ticketed, &format!("{loose}\nrequire_ticket = true"), 0),
            None
        );
    }

    #[test]
    fn apply_shows_changes_and_is_audited() {
        let (mut pim, _, _) = pim();
        let new_source = POLICY.replace("max_activation = \"4h\"", "max_activation = \"2h\"")
            + "\n[roles.new-role]\nname = \"New\"\napprovers = [\"zed\"]\n";
        let new = Policy::parse(&new_source).unwrap();
        let dry = pim.apply_policy("admin", &new, true).unwrap();
        assert!(!dry.applied);
        assert_eq!(dry.changes.len(), 2);
        assert_eq!(dry.warnings.len(), 1, "{:?}", dry.warnings);
        assert_eq!(count_events(&pim, "policy.apply"), 1);
        let done = pim.apply_policy("admin", &new, false).unwrap();
        assert!(done.applied);
        assert_eq!(count_events(&pim, "policy.apply"), 2);
        assert!(pim.policy().unwrap().roles.contains_key("new-role"));
        assert_eq!(
            pim.apply_policy("nobody", &new, false)
                .unwrap_err()
                .exit_code(),
            3
        );
        // Removing a role that is held is a conflict.
        let without_admin = Policy::parse("[roles.x]\nname = \"X\"\n").unwrap();
        assert_eq!(
            pim.apply_policy("admin", &without_admin, false)
                .unwrap_err()
                .exit_code(),
            5
        );
    }

    #[test]
    fn the_stored_policy_is_parsed_again_only_when_its_text_changes() {
        let parses = || crate::policy::PARSES.get();
        let (mut pim, _, _) = pim();
        let first = pim.policy().unwrap();
        let before = parses();
        // What a command asks on its way: the viewer, the lists, the policy again.
        let viewer = pim.viewer("admin").unwrap();
        pim.status_seen_by(&viewer, "admin").unwrap();
        pim.assignments(&crate::ops::AssignmentFilter::default())
            .unwrap();
        let again = pim.policy().unwrap();
        assert_eq!(parses(), before, "the same text was parsed again");
        assert!(std::sync::Arc::ptr_eq(&first, &again));
        // Another store in this thread with another policy gets its own.
        let (other, _, _) = pim_with(&POLICY.replace("Approved Role", "Other Role"));
        assert_eq!(other.policy().unwrap().roles["approved"].name, "Other Role");
        assert_eq!(
            pim.policy().unwrap().roles["approved"].name,
            "Approved Role"
        );
        // A policy applied (here, or by any process: the text is read each time) is in force
        // at once.
        let new =
            Policy::parse(&(POLICY.to_string() + "\n[roles.new-role]\nname = \"New\"\n")).unwrap();
        pim.apply_policy("admin", &new, false).unwrap();
        assert!(pim.policy().unwrap().roles.contains_key("new-role"));
        // A dry run writes nothing: the policy in force is the one before it.
        let dry = Policy::parse(&(POLICY.to_string() + "\n[roles.dry]\nname = \"Dry\"\n")).unwrap();
        pim.apply_policy("admin", &dry, true).unwrap();
        let now = pim.policy().unwrap();
        assert!(now.roles.contains_key("new-role") && !now.roles.contains_key("dry"));
    }

    #[test]
    fn roles_count_their_holders() {
        let (pim, _, _) = pim();
        let roles = pim.roles().unwrap();
        let ga = roles.iter().find(|r| r.role.key == "global-admin").unwrap();
        assert_eq!((ga.eligible, ga.active), (0, 1));
    }

    /// `role list`'s eligible count is kept by triggers (migration 12) and corrected for
    /// what only the clock decides: every way an eligibility starts, ends or stops counting.
    #[test]
    fn eligible_holders_are_counted_through_every_change() {
        use crate::ops::{AssignInput, End};
        use crate::scope::Scope;
        use chrono::Duration;
        let (mut pim, clock, _) = pim();
        for name in ["bob", "carol", "dave"] {
            pim.add_user("admin", name, None, None).unwrap();
        }
        let eligible = |pim: &Pim| {
            let roles = pim.roles().unwrap();
            roles
                .iter()
                .find(|r| r.role.key == "db-admin")
                .unwrap()
                .eligible
        };
        let assign = |pim: &mut Pim, user: &str, scope: &str, later: i64, days: i64| {
            pim.assign(
                "admin",
                AssignInput {
                    user: user.into(),
                    role: "db-admin".into(),
                    scope: Scope::parse(scope).unwrap(),
                    active: false,
                    start: (later > 0).then(|| pim.now() + Duration::hours(later)),
                    end: End::After(Duration::days(days)),
                    justification: Some("test".into()),
                    ticket: None,
                },
            )
            .unwrap()
        };
        assert_eq!(eligible(&pim), 0);
        // Two eligibilities of one user count once; a second user counts.
        assign(&mut pim, "bob", "/prod", 0, 10);
        assign(&mut pim, "bob", "/test", 0, 2);
        assign(&mut pim, "carol", "/prod", 0, 10);
        assert_eq!(eligible(&pim), 2);
        // Not started yet: not counted until it starts.
        assign(&mut pim, "dave", "/prod", 5, 10);
        assert_eq!(eligible(&pim), 2);
        clock.advance(Duration::hours(6));
        assert_eq!(eligible(&pim), 3);
        // Disabled: not counted; enabled again: counted.
        pim.set_disabled("admin", "carol", true).unwrap();
        assert_eq!(eligible(&pim), 2);
        pim.set_disabled("admin", "carol", false).unwrap();
        assert_eq!(eligible(&pim), 3);
        // Removed: bob still holds /test.
        pim.unassign(
            "admin",
            "bob",
            "db-admin",
            &Scope::parse("/prod").unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(eligible(&pim), 3);
        // Ended and not yet swept, then swept (the expiry recorded): not counted either way.
        clock.advance(Duration::days(3));
        assert_eq!(eligible(&pim), 2);
        let swept = pim.sweep("admin").unwrap();
        assert_eq!(swept.expired_assignments.len(), 1);
        assert_eq!(eligible(&pim), 2);
        // The counts kept are the eligibilities not removed nor recorded as ended.
        let kept: i64 = pim
            .conn()
            .query_row(
                "SELECT users FROM role_counts WHERE role = 'db-admin'",
                crate::params![],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(kept, 2);
        // A disabled user whose eligibility has also ended is taken off once, not twice.
        clock.advance(Duration::days(8));
        pim.set_disabled("admin", "carol", true).unwrap();
        assert_eq!(eligible(&pim), 0);
        pim.sweep("admin").unwrap();
        assert_eq!(eligible(&pim), 0);
    }
}
