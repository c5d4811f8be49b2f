//! Applying a policy (audited, shown role by role) and reading roles with their holders.

use super::{actor_user, has_permission, permission_error, refuse, Pim};
use crate::audit::Event;
use crate::error::{Error, Result};
use crate::policy::{diff, Policy, Role, RoleChange};
use crate::scope::Scope;
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
            if !dry_run && !changes.is_empty() {
                tx.set_policy_source(&new.source)?;
                let summary: Vec<serde_json::Value> = changes.iter().map(change_json).collect();
                tx.record(event.detail("changes", summary))?;
            }
            Ok(PolicyApplied {
                applied: !dry_run && !changes.is_empty(),
                changes,
                warnings,
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
