//! Security alerts in the spirit of Entra PIM's: each with an id, a severity, who or what it
//! concerns and what to do. Thresholds come from the policy's `[alerts]`.

use super::Pim;
use crate::error::Result;
use crate::time::format_duration;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn parse(text: &str) -> Option<Severity> {
        match text {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub id: String,
    pub severity: Severity,
    pub roles: Vec<String>,
    pub users: Vec<String>,
    pub message: String,
    pub remedy: String,
}

impl Pim {
    /// Every alert that applies now.
    pub fn alerts(&self) -> Result<Vec<Alert>> {
        let policy = self.policy()?;
        let a = &policy.alerts;
        let now = self.now().timestamp();
        let conn = &self.conn;
        let mut out = Vec::new();

        // Protected roles: too many holders, and too few permanent (break-glass) ones.
        let mut break_glass: Vec<String> = Vec::new();
        for role in policy.roles.values().filter(|r| r.protected) {
            let holders = conn.holders_of(&role.key, now)?;
            if holders.len() as u32 > a.max_protected_holders {
                out.push(Alert {
                    id: "too-many-protected-holders".into(),
                    severity: Severity::Warning,
                    roles: vec![role.key.clone()],
                    message: format!(
                        "{} users hold or may activate the protected role {} (more than {}).",
                        holders.len(),
                        role.key,
                        a.max_protected_holders
                    ),
                    users: holders,
                    remedy:
                        "Review who needs it (`pim review create --role ...`) and remove the rest."
                            .into(),
                });
            }
            for name in conn.permanent_holders_of(&role.key, now)? {
                if !break_glass.contains(&name) {
                    break_glass.push(name);
                }
            }
        }
        if policy.roles.values().any(|r| r.protected)
            && (break_glass.len() as u32) < a.min_break_glass
        {
            break_glass.sort();
            out.push(Alert {
                id: "too-few-break-glass".into(),
                severity: Severity::Critical,
                roles: policy.roles.values().filter(|r| r.protected).map(|r| r.key.clone()).collect(),
                message: format!(
                    "Only {} user(s) permanently hold a protected role; keep at least {} break-glass administrators.",
                    break_glass.len(),
                    a.min_break_glass
                ),
                users: break_glass,
                remedy: "Give a second, well-protected account a permanent active assignment: `pim assign NAME global-admin --active --permanent -j ...`.".into(),
            });
        }

        // Roles that matter without MFA.
        for role in policy.roles.values() {
            if (role.protected || !role.permissions.is_empty()) && !role.settings.require_mfa {
                out.push(Alert {
                    id: "role-without-mfa".into(),
                    severity: if role.protected {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    },
                    roles: vec![role.key.clone()],
                    users: Vec::new(),
                    message: format!(
                        "{} {} but is activated without a TOTP code.",
                        role.key,
                        if role.protected {
                            "is protected"
                        } else {
                            "grants rights in pim"
                        }
                    ),
                    remedy: format!(
                        "Set require_mfa = true for [roles.{}] and apply the policy.",
                        role.key
                    ),
                });
            }
        }

        // Standing access: permanent active assignments of roles that are not protected.
        let mut standing: Vec<(String, String)> = Vec::new();
        let permanent = conn.standing_assignments(now)?;
        for (user, role) in permanent {
            if !policy.roles.get(&role).is_some_and(|r| r.protected) {
                standing.push((user, role));
            }
        }
        if !standing.is_empty() {
            let mut roles: Vec<String> = standing.iter().map(|(_, r)| r.clone()).collect();
            roles.dedup();
            out.push(Alert {
                id: "standing-access".into(),
                severity: Severity::Warning,
                message: format!(
                    "{} permanent active assignment(s) of roles that are not protected: {}.",
                    standing.len(),
                    standing.iter().map(|(u, r)| format!("{u} ({r})")).collect::<Vec<_>>().join(", ")
                ),
                users: standing.iter().map(|(u, _)| u.clone()).collect(),
                roles,
                remedy: "Make them eligible instead, so the role is taken just in time: `pim unassign USER ROLE --active` then `pim assign USER ROLE`.".into(),
            });
        }

        // Unused eligibility.
        let unused_since = now - a.unused_after.num_seconds();
        let unused = conn.unused_eligibility(unused_since, now)?;
        if !unused.is_empty() {
            let mut roles: Vec<String> = unused.iter().map(|(_, r)| r.clone()).collect();
            roles.dedup();
            out.push(Alert {
                id: "unused-eligibility".into(),
                severity: Severity::Info,
                message: format!(
                    "{} eligible assignment(s) not activated in {}: {}.",
                    unused.len(),
                    format_duration(a.unused_after),
                    unused.iter().map(|(u, r)| format!("{u} ({r})")).collect::<Vec<_>>().join(", ")
                ),
                users: unused.iter().map(|(u, _)| u.clone()).collect(),
                roles,
                remedy: "Remove eligibility nobody uses, or let a review decide: `pim review create --role ROLE --reviewer ...`.".into(),
            });
        }

        // Frequent activation.
        {
            let rows = conn.frequent_activations(
                now - a.frequent_window.num_seconds(),
                now,
                i64::from(a.frequent_activations),
            )?;
            for (user, role, n) in rows {
                out.push(Alert {
                    id: "frequent-activation".into(),
                    severity: Severity::Warning,
                    roles: vec![role.clone()],
                    users: vec![user.clone()],
                    message: format!(
                        "{user} activated {role} {n} times in {} (more than {}).",
                        format_duration(a.frequent_window),
                        a.frequent_activations
                    ),
                    remedy: "Ask whether the work needs a longer max_activation, a different role, or automation.".into(),
                });
            }
        }

        // Lockouts and failed sign-ins: someone may be guessing codes or tokens.
        {
            let since = now - a.failure_window.num_seconds();
            let locked = conn.locked_authenticators(since)?;
            let accounts = conn.failing_accounts(since)?;
            let blocked = conn.blocked_authenticators()?;
            if !locked.is_empty() || !accounts.is_empty() {
                let mut parts = Vec::new();
                if !locked.is_empty() {
                    parts.push(format!(
                        "authenticators locked after wrong codes: {}",
                        locked.join(", ")
                    ));
                }
                if !blocked.is_empty() {
                    parts.push(format!("locked until reset: {}", blocked.join(", ")));
                }
                if !accounts.is_empty() {
                    parts.push(format!(
                        "failed token or stranger sign-ins, or refusals throttled, from: {}",
                        accounts.join(", ")
                    ));
                }
                let mut users = locked.clone();
                for acct in accounts {
                    if !users.contains(&acct) {
                        users.push(acct);
                    }
                }
                out.push(Alert {
                    id: "authentication-failures".into(),
                    severity: if blocked.is_empty() { Severity::Warning } else { Severity::Critical },
                    roles: Vec::new(),
                    users,
                    message: format!(
                        "Within {}: {}.",
                        format_duration(a.failure_window),
                        parts.join("; ")
                    ),
                    remedy: "Ask each person whether it was them (`pim audit list --action 'mfa.*' --user NAME`); reset a guessed authenticator with `pim mfa reset NAME` only once they are reached another way.".into(),
                });
            }
        }

        // Eligible for a role that needs MFA, without an authenticator.
        let mut missing: Vec<String> = Vec::new();
        let mut roles: Vec<String> = Vec::new();
        let without = conn.eligible_without_authenticator(now)?;
        for (user, role) in without {
            if policy
                .roles
                .get(&role)
                .is_some_and(|r| r.settings.require_mfa)
            {
                if !missing.contains(&user) {
                    missing.push(user);
                }
                if !roles.contains(&role) {
                    roles.push(role);
                }
            }
        }
        if !missing.is_empty() {
            out.push(Alert {
                id: "mfa-not-enrolled".into(),
                severity: Severity::Warning,
                message: format!(
                    "{} user(s) are eligible for a role that requires MFA but have no authenticator: {}.",
                    missing.len(),
                    missing.join(", ")
                ),
                users: missing,
                roles,
                remedy: "Have them run `pim mfa enroll`, or enrol them: `pim mfa enroll NAME`.".into(),
            });
        }
        out.sort_by(|x, y| y.severity.cmp(&x.severity).then(x.id.cmp(&y.id)));
        Ok(out)
    }
}
