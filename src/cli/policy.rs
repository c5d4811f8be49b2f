//! `pim policy ...` and `pim role ...`.

use super::context::Ctx;
use super::output::{data_for_terminal, json, out, say, table};
use crate::error::Error;
use crate::policy::{Policy, RoleChange};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file without applying it (works without a database)
    Validate {
        /// The policy file (TOML)
        file: PathBuf,
    },
    /// Apply a policy file (permission `policy`); shows what changes, role by role
    Apply {
        /// The policy file (TOML)
        file: PathBuf,
        /// Show the changes, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the policy in force, exactly as applied
    Export,
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Roles with their main settings and counts of eligible and active holders
    List,
    /// One role with every effective setting
    Show {
        /// Role key or display name
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::roles))]
        role: String,
    },
}

/// Read and parse a policy file; invalid files are usage errors naming each line.
pub fn read_policy(path: &Path) -> anyhow::Result<Policy> {
    let source = crate::privilege::read_to_string(path, crate::limits::POLICY_BYTES as u64)
        .map_err(|e| {
            let why = e.to_string();
            if e.kind() == std::io::ErrorKind::InvalidData {
                Error::Usage(format!("The policy is invalid: {why}."))
            } else {
                Error::Environment(format!("Cannot read the policy file {why}."))
            }
        })?;
    Policy::parse(&source).map_err(|problems| {
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("{} {p}", path.display()))
            .collect();
        Error::Usage(format!(
            "The policy is invalid; fix it and try again:\n{}",
            lines.join("\n")
        ))
        .into()
    })
}

fn change_lines(changes: &[RoleChange]) -> Vec<String> {
    let mut lines = Vec::new();
    for c in changes {
        match c {
            RoleChange::Added(k) => lines.push(format!("+ role {k}")),
            RoleChange::Removed(k) => lines.push(format!("- role {k}")),
            RoleChange::Changed(k, fields) => {
                lines.push(format!("~ role {k}"));
                for (f, a, b) in fields {
                    lines.push(format!("    {f}: {a} -> {b}"));
                }
            }
        }
    }
    lines
}

pub fn run_policy(ctx: &Ctx, cmd: PolicyCommand) -> anyhow::Result<i32> {
    match cmd {
        PolicyCommand::Validate { file } => {
            // With a database at hand, also name approvers who are not users yet. (It is
            // opened first: the file is read with the caller's own rights.)
            // As far as the caller can see: never looked up with the group, which would tell
            // a caller what the pim directory holds.
            let pim = if ctx.server.is_some() {
                // A server that holds no pim database yet (or cannot be reached) leaves
                // the check to the file alone.
                ctx.open().ok()
            } else if ctx.db.exists() {
                Some(ctx.open()?)
            } else {
                None
            };
            let policy = read_policy(&file)?;
            // Who is (not yet) a user is for pim users to know.
            let warnings = match &pim {
                Some((pim, actor)) if pim.viewer(actor).is_ok() => pim.policy_warnings(&policy)?,
                _ => Vec::new(),
            };
            if ctx.json {
                json(&serde_json::json!({
                    "valid": true,
                    "roles": policy.roles.keys().collect::<Vec<_>>(),
                    "warnings": warnings,
                }))?;
            } else {
                for w in &warnings {
                    ctx.note(&format!("warning: {w}"));
                }
                say(&format!(
                    "{} is valid: {} roles.",
                    file.display(),
                    policy.roles.len()
                ))?;
            }
        }
        PolicyCommand::Apply { file, dry_run } => {
            let (mut pim, actor) = ctx.open()?;
            let policy = read_policy(&file)?;
            let applied = pim.apply_policy(&actor, &policy, dry_run)?;
            if ctx.json {
                json(&serde_json::json!({
                    "applied": applied.applied,
                    "dry_run": dry_run,
                    "changes": applied.changes.iter().map(crate::ops::policy_change_json).collect::<Vec<_>>(),
                    "warnings": applied.warnings,
                    "canceled": applied.canceled,
                }))?;
            } else {
                for w in &applied.warnings {
                    ctx.note(&format!("warning: {w}"));
                }
                let mut lines = change_lines(&applied.changes);
                for c in &applied.canceled {
                    lines.push(format!(
                        "{} request {} ({} for {} at {}): {}.",
                        if dry_run { "Would cancel" } else { "Canceled" },
                        c.id,
                        c.user,
                        c.role,
                        c.scope,
                        c.reason
                    ));
                }
                if lines.is_empty() {
                    lines.push("No changes: the policy in force is the same.".to_string());
                } else if dry_run {
                    lines.push("Dry run: nothing was applied.".to_string());
                } else {
                    lines.push(format!("Applied {}.", file.display()));
                }
                out(&lines.join("\n"))?;
            }
        }
        PolicyCommand::Export => {
            let (pim, actor) = ctx.open()?;
            let policy = pim.policy_seen_by(&pim.viewer(&actor)?)?;
            if ctx.json {
                json(&serde_json::json!({"policy": policy.source}))?;
            } else {
                data_for_terminal(&policy.source)?;
            }
        }
    }
    Ok(0)
}

/// A role's settings as the viewer may see them: e-mail addresses in `notify` are other
/// people's data, shown only to readers of the policy.
fn settings_seen(r: &crate::ops::RoleSummary, redact: bool) -> Vec<(&'static str, toml::Value)> {
    r.role
        .settings
        .entries()
        .into_iter()
        .map(|(k, v)| match (k, v) {
            ("notify", toml::Value::Array(list)) if redact => (
                k,
                toml::Value::Array(
                    list.into_iter()
                        .map(|x| match x.as_str() {
                            Some(a) if a.contains('@') => {
                                toml::Value::String("(an e-mail address)".to_string())
                            }
                            _ => x,
                        })
                        .collect(),
                ),
            ),
            other => other,
        })
        .collect()
}

fn role_json(r: &crate::ops::RoleSummary, redact: bool) -> serde_json::Value {
    let mut settings = serde_json::Map::new();
    for (k, v) in settings_seen(r, redact) {
        settings.insert(k.to_string(), serde_json::to_value(v).unwrap_or_default());
    }
    serde_json::json!({
        "key": r.role.key,
        "name": r.role.name,
        "description": r.role.description,
        "permissions": r.role.permissions,
        "protected": r.role.protected,
        "settings": settings,
        "eligible": r.eligible,
        "active": r.active,
    })
}

pub fn run_role(ctx: &Ctx, cmd: RoleCommand) -> anyhow::Result<i32> {
    let (pim, actor) = ctx.open()?;
    let redact = !pim.viewer(&actor)?.reads_policy();
    let roles = pim.roles()?;
    match cmd {
        RoleCommand::List => {
            if ctx.json {
                return json(
                    &roles
                        .iter()
                        .map(|r| role_json(r, redact))
                        .collect::<Vec<_>>(),
                )
                .map(|_| 0);
            }
            let mut t = table(&[
                "role",
                "name",
                "max",
                "mfa",
                "approval",
                "permissions",
                "eligible",
                "active",
            ]);
            for r in &roles {
                let s = &r.role.settings;
                t.add_row(vec![
                    format!(
                        "{}{}",
                        r.role.key,
                        if r.role.protected { " (protected)" } else { "" }
                    ),
                    r.role.name.clone(),
                    crate::time::policy_duration(s.max_activation),
                    if s.require_mfa { "yes" } else { "no" }.to_string(),
                    if s.require_approval { "yes" } else { "no" }.to_string(),
                    r.role.permissions.join(","),
                    r.eligible.to_string(),
                    r.active.to_string(),
                ]);
            }
            out(&t.to_string())?;
        }
        RoleCommand::Show { role } => {
            let policy = pim.policy()?;
            let key = policy.role(&role).map(|r| r.key.clone()).ok_or_else(|| {
                Error::NotFound(format!("There is no role '{role}'. See `pim role list`."))
            })?;
            let Some(r) = roles.iter().find(|r| r.role.key == key) else {
                return Err(Error::NotFound(format!("There is no role '{role}'.")).into());
            };
            if ctx.json {
                return json(&role_json(r, redact)).map(|_| 0);
            }
            let mut t = table(&["setting", "value"]);
            t.add_row(vec!["key".to_string(), r.role.key.clone()]);
            t.add_row(vec!["name".to_string(), r.role.name.clone()]);
            t.add_row(vec!["description".to_string(), r.role.description.clone()]);
            t.add_row(vec![
                "permissions".to_string(),
                r.role.permissions.join(", "),
            ]);
            t.add_row(vec!["protected".to_string(), r.role.protected.to_string()]);
            for (k, v) in settings_seen(r, redact) {
                t.add_row(vec![k.to_string(), v.to_string()]);
            }
            t.add_row(vec!["eligible holders".to_string(), r.eligible.to_string()]);
            t.add_row(vec!["active holders".to_string(), r.active.to_string()]);
            out(&t.to_string())?;
        }
    }
    Ok(0)
}
