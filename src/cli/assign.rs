//! `pim assign`, `pim unassign`, `pim assignment list`.

use super::context::Ctx;
use super::output::{json, out, table, unix, when};
use super::prompt;
use crate::ops::{AssignInput, AssignmentFilter, End};
use crate::scope::Scope;
use crate::time::{parse_duration, parse_instant};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct AssignArgs {
    user: String,
    /// Role key or display name
    role: String,
    /// Where the role applies
    #[arg(long, default_value = "/", value_name = "S")]
    scope: String,
    /// A direct active assignment instead of an eligible one
    #[arg(long)]
    active: bool,
    /// When it starts (default: now)
    #[arg(long, value_name = "T")]
    start: Option<String>,
    /// How long it lasts (default: the longest the policy allows)
    #[arg(long, value_name = "D", conflicts_with_all = ["until", "permanent"])]
    duration: Option<String>,
    /// When it ends
    #[arg(long, value_name = "T", conflicts_with = "permanent")]
    until: Option<String>,
    /// Never ends (where the policy allows)
    #[arg(long)]
    permanent: bool,
    #[arg(short = 'j', long, value_name = "J")]
    justification: Option<String>,
    #[arg(long, value_name = "T")]
    ticket: Option<String>,
}

#[derive(Debug, Args)]
pub struct UnassignArgs {
    user: String,
    role: String,
    #[arg(long, default_value = "/", value_name = "S")]
    scope: String,
    /// Remove the direct active assignment instead of the eligible one
    #[arg(long)]
    active: bool,
}

#[derive(Debug, Subcommand)]
pub enum AssignmentCommand {
    /// Assignments in effect or scheduled (activations show as active)
    List {
        #[arg(long, value_name = "U")]
        user: Option<String>,
        #[arg(long, value_name = "R")]
        role: Option<String>,
        /// Assignments that cover this scope or lie within it
        #[arg(long, value_name = "S")]
        scope: Option<String>,
        #[arg(long, conflicts_with = "active")]
        eligible: bool,
        #[arg(long)]
        active: bool,
        /// Include ended and removed ones
        #[arg(long)]
        all: bool,
    },
}

pub fn run_assign(ctx: &Ctx, a: AssignArgs) -> anyhow::Result<i32> {
    let scope = Scope::parse(&a.scope)?;
    let start = a.start.as_deref().map(parse_instant).transpose()?;
    let end = if a.permanent {
        End::Permanent
    } else if let Some(d) = &a.duration {
        End::After(parse_duration(d)?)
    } else if let Some(t) = &a.until {
        End::At(parse_instant(t)?)
    } else {
        End::PolicyMax
    };
    let (mut pim, actor) = ctx.open()?;
    let mut justification = a.justification;
    let needs = pim
        .policy()?
        .role(&a.role)
        .is_some_and(|r| r.settings.require_justification_on_assign);
    if needs && justification.is_none() && ctx.interactive {
        justification = Some(prompt::text("Justification")?);
    }
    let done = pim.assign(
        &actor,
        AssignInput {
            user: a.user,
            role: a.role,
            scope,
            active: a.active,
            start,
            end,
            justification,
            ticket: a.ticket,
        },
    )?;
    if ctx.json {
        json(&done)?;
    } else {
        out(&format!(
            "{} is now {} for {} at {}, from {} until {}.",
            done.user,
            done.kind,
            done.role,
            done.scope,
            when(Some(done.start_at), pim.now()),
            when(done.end_at, pim.now())
        ))?;
    }
    Ok(0)
}

pub fn run_unassign(ctx: &Ctx, a: UnassignArgs) -> anyhow::Result<i32> {
    let scope = Scope::parse(&a.scope)?;
    let (mut pim, actor) = ctx.open()?;
    let removed = pim.unassign(&actor, &a.user, &a.role, &scope, a.active)?;
    if ctx.json {
        json(&removed)?;
    } else {
        out(&format!(
            "Removed {}'s {} assignment of {} at {}.",
            removed.user, removed.kind, removed.role, removed.scope
        ))?;
    }
    Ok(0)
}

pub fn run_assignment(ctx: &Ctx, cmd: AssignmentCommand) -> anyhow::Result<i32> {
    let AssignmentCommand::List {
        user,
        role,
        scope,
        eligible,
        active,
        all,
    } = cmd;
    let scope = scope.as_deref().map(Scope::parse).transpose()?;
    let (pim, _) = ctx.open()?;
    let kind = if eligible {
        Some("eligible".to_string())
    } else if active {
        Some("active".to_string())
    } else {
        None
    };
    let list = pim.assignments(&AssignmentFilter {
        user,
        role,
        scope,
        kind,
        all,
    })?;
    if ctx.json {
        return json(&list).map(|_| 0);
    }
    let now = pim.now();
    let mut t = table(&["user", "role", "scope", "type", "start", "end", "state"]);
    for a in &list {
        let kind = if a.source == "activation" {
            format!("active (request {})", a.id)
        } else {
            a.kind.clone()
        };
        t.add_row(vec![
            a.user.clone(),
            a.role.clone(),
            a.scope.clone(),
            kind,
            when(unix(&a.start), now),
            when(a.end.as_deref().and_then(unix), now),
            a.state.clone(),
        ]);
    }
    if list.is_empty() {
        ctx.note("No assignments match.");
        return Ok(0);
    }
    out(&t.to_string())?;
    Ok(0)
}
