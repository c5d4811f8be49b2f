//! `pim assign`, `pim unassign`, `pim assignment list`.

use super::context::Ctx;
use super::output::{json, out, say, table, unix, when};
use super::prompt;
use crate::error::Error;
use crate::ops::{AssignInput, AssignmentFilter, End};
use crate::scope::Scope;
use crate::time::{parse_duration, parse_instant};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct AssignArgs {
    /// Who gets the role
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
    user: String,
    /// Role key or display name
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::roles))]
    role: String,
    /// Where the role applies
    #[arg(long, default_value = "/", value_name = "S")]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::scopes))]
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
    /// Why (asked for on a terminal when the role requires one)
    #[arg(short = 'j', long, value_name = "J")]
    justification: Option<String>,
    /// A change or access ticket
    #[arg(long, value_name = "T")]
    ticket: Option<String>,
}

#[derive(Debug, Args)]
pub struct UnassignArgs {
    /// Whose assignment
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
    user: String,
    /// Role key or display name
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::roles))]
    role: String,
    /// The assignment's scope
    #[arg(long, default_value = "/", value_name = "S")]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::scopes))]
    scope: String,
    /// Remove the direct active assignment instead of the eligible one
    #[arg(long)]
    active: bool,
}

#[derive(Debug, Subcommand)]
pub enum AssignmentCommand {
    /// Import assignments from CSV (user,role,scope,type,start,end,justification,ticket):
    /// checked whole, then written in one transaction; rows already in place change nothing
    Import {
        /// The CSV file
        file: PathBuf,
        /// Check and count, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Make the assignments what a TOML file declares: prints a plan (+ add, ~ change,
    /// - remove), then applies it in one transaction
    Apply {
        /// The TOML file of desired assignments
        file: PathBuf,
        /// Print the plan, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Also remove current assignments the file does not name (never the last
        /// permanent holder of a protected role)
        #[arg(long)]
        prune: bool,
    },
    /// Assignments in effect or scheduled (activations show as active)
    List {
        /// Only this user's
        #[arg(long, value_name = "U")]
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
        user: Option<String>,
        /// Only this role's
        #[arg(long, value_name = "R")]
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::roles))]
        role: Option<String>,
        /// Assignments that cover this scope or lie within it
        #[arg(long, value_name = "S")]
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::scopes))]
        scope: Option<String>,
        /// Only eligible assignments
        #[arg(long, conflicts_with = "active")]
        eligible: bool,
        /// Only active ones (direct assignments and activations)
        #[arg(long)]
        active: bool,
        /// Include ended and removed ones
        #[arg(long)]
        all: bool,
    },
}

pub fn run_assign(ctx: &Ctx, a: AssignArgs) -> anyhow::Result<i32> {
    let mut scope = Scope::parse(&a.scope)?;
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
    // A scope nothing is assigned at yet, a typo away from one in use: did you mean it?
    if let Some(close) = pim.closest_scope(&scope)? {
        let question = format!("Nothing is assigned at {scope} yet; did you mean {close}?");
        // The question on a line of its own: the prompt stays short on a narrow terminal.
        ctx.note(&format!("Note: {question}"));
        if ctx.interactive && prompt::confirm(&format!("Assign at {close} instead?"))? {
            scope = Scope::parse(&close)?;
        }
    }
    let mut input = AssignInput {
        user: a.user,
        role: a.role,
        scope,
        active: a.active,
        start,
        end,
        justification: a.justification,
        ticket: a.ticket,
    };
    let needs = pim
        .policy()?
        .role(&input.role)
        .is_some_and(|r| r.settings.require_justification_on_assign);
    if needs && input.justification.is_none() && ctx.interactive {
        // Check first, then ask: a refusal that needs nothing typed comes before the prompt.
        pim.plan_assignment(&actor, &input)?;
        input.justification = Some(prompt::text("Justification", crate::limits::JUSTIFICATION)?);
    }
    let done = pim.assign(&actor, input)?;
    if ctx.json {
        json(&done)?;
    } else {
        let end = match done.end_at {
            Some(_) => format!("until {}", when(done.end_at, pim.now())),
            None => "with no end".to_string(),
        };
        say(&format!(
            "{} is now {} for {} at {}, from {} {end}.",
            done.user,
            done.kind,
            done.role,
            done.scope,
            when(Some(done.start_at), pim.now()),
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
        say(&format!(
            "Removed {}'s {} assignment of {} at {}.",
            removed.user, removed.kind, removed.role, removed.scope
        ))?;
    }
    Ok(0)
}

const IMPORT_HEADER: [&str; 8] = [
    "user",
    "role",
    "scope",
    "type",
    "start",
    "end",
    "justification",
    "ticket",
];

/// Stream an import file, row by row; a malformed row is a usage error naming its line.
fn read_import(
    path: &std::path::Path,
) -> anyhow::Result<impl Iterator<Item = crate::Result<crate::ops::ImportRow>>> {
    let shown = path.display().to_string();
    let bad = move |line: u64, why: String| Error::Usage(format!("{shown} line {line}: {why}"));
    // All of it first: the import's transaction then never waits on the caller's pipe,
    // FIFO or file system while it holds the database's write lock.
    let bytes = crate::privilege::read_all(path, crate::limits::BULK_BYTES).map_err(|e| match e
        .kind()
    {
        std::io::ErrorKind::InvalidData => Error::Usage(format!("{e}.")),
        _ => Error::Environment(format!("Cannot read {e}.")),
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(std::io::Cursor::new(bytes));
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| bad(1, e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    if header != IMPORT_HEADER {
        return Err(bad(1, format!("the header must be {}", IMPORT_HEADER.join(","))).into());
    }
    let mut record = csv::StringRecord::new();
    let mut broken = false;
    Ok(std::iter::from_fn(move || {
        match reader.read_record(&mut record) {
            _ if broken => None,
            Ok(false) => None,
            Err(e) => {
                // A file that cannot be read on ends the import: report where, and stop.
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                broken = true;
                Some(Err(bad(line, e.to_string())))
            }
            Ok(true) => {
                let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
                let f = |i: usize| record.get(i).unwrap_or_default().to_string();
                Some(Ok(crate::ops::ImportRow {
                    line,
                    user: f(0),
                    role: f(1),
                    scope: f(2),
                    kind: f(3),
                    start: f(4),
                    end: f(5),
                    justification: f(6),
                    ticket: f(7),
                }))
            }
        }
    }))
}

pub fn run_assignment(ctx: &Ctx, cmd: AssignmentCommand) -> anyhow::Result<i32> {
    match cmd {
        AssignmentCommand::Import { file, dry_run } => run_import(ctx, file, dry_run),
        AssignmentCommand::Apply {
            file,
            dry_run,
            prune,
        } => run_apply(ctx, file, dry_run, prune),
        AssignmentCommand::List {
            user,
            role,
            scope,
            eligible,
            active,
            all,
        } => list(ctx, user, role, scope, eligible, active, all),
    }
}

fn run_apply(ctx: &Ctx, file: PathBuf, dry_run: bool, prune: bool) -> anyhow::Result<i32> {
    // The database first: the file is read with the caller's own rights.
    let (mut pim, actor) = ctx.open()?;
    let text =
        crate::privilege::read_to_string(&file, crate::limits::BULK_BYTES).map_err(|e| match e
            .kind()
        {
            std::io::ErrorKind::InvalidData => Error::Usage(format!("{e}.")),
            _ => Error::Environment(format!("Cannot read {e}.")),
        })?;
    let desired = crate::ops::parse_desired(&text).map_err(|e| match e {
        Error::Usage(m) => Error::Usage(format!(
            "{} is invalid:\n{}",
            file.display(),
            m.lines()
                .map(|l| format!("{} {l}", file.display()))
                .collect::<Vec<_>>()
                .join("\n")
        )),
        other => other,
    })?;
    let plan = pim.apply_assignments(&actor, &desired, prune, dry_run)?;
    if ctx.json {
        return json(&plan).map(|_| 0);
    }
    let end = |e: &Option<Option<String>>| match e {
        Some(Some(t)) => t.clone(),
        Some(None) => "permanent".to_string(),
        None => "?".to_string(),
    };
    let mut lines = Vec::new();
    for i in &plan.add {
        lines.push(format!(
            "+ {} {} {} at {} (until {})",
            i.kind,
            i.user,
            i.role,
            i.scope,
            end(&i.to)
        ));
    }
    for i in &plan.change {
        lines.push(format!(
            "~ {} {} {} at {}: end {} -> {}",
            i.kind,
            i.user,
            i.role,
            i.scope,
            end(&i.from),
            end(&i.to)
        ));
    }
    for i in &plan.remove {
        lines.push(format!("- {} {} {} at {}", i.kind, i.user, i.role, i.scope));
    }
    for k in &plan.kept {
        lines.push(format!("  kept: {k}"));
    }
    let (add, change, remove) = (plan.add.len(), plan.change.len(), plan.remove.len());
    lines.push(if plan.applied {
        format!("Applied: {add} added, {change} changed, {remove} removed.")
    } else {
        format!("Plan (dry run, nothing changed): {add} to add, {change} to change, {remove} to remove.")
    });
    out(&lines.join("\n"))?;
    Ok(0)
}

fn run_import(ctx: &Ctx, file: PathBuf, dry_run: bool) -> anyhow::Result<i32> {
    // The database first: the file is read with the caller's own rights.
    let (mut pim, actor) = ctx.open()?;
    let rows = read_import(&file)?;
    let summary = pim.import_assignments(&actor, rows, dry_run)?;
    if ctx.json {
        json(&summary)?;
    } else {
        say(&format!(
            "{} {} row(s): {} added, {} unchanged{}.",
            if dry_run { "Checked" } else { "Imported" },
            summary.added + summary.unchanged,
            summary.added,
            summary.unchanged,
            if dry_run {
                " (dry run: nothing written)"
            } else {
                ""
            }
        ))?;
    }
    Ok(0)
}

fn list(
    ctx: &Ctx,
    user: Option<String>,
    role: Option<String>,
    scope: Option<String>,
    eligible: bool,
    active: bool,
    all: bool,
) -> anyhow::Result<i32> {
    let scope = scope.as_deref().map(Scope::parse).transpose()?;
    let (pim, actor) = ctx.open()?;
    let viewer = pim.viewer(&actor)?;
    let kind = if eligible {
        Some(crate::model::Kind::Eligible)
    } else if active {
        Some(crate::model::Kind::Active)
    } else {
        None
    };
    let list = pim.assignments_seen_by(
        &viewer,
        &AssignmentFilter {
            user,
            role,
            scope,
            kind,
            all,
        },
    )?;
    if ctx.json {
        return json(&list).map(|_| 0);
    }
    let now = pim.now();
    let mut t = table(&["user", "role", "scope", "type", "start", "end", "state"]);
    for a in &list {
        let kind = if a.source == "activation" {
            format!("active (request {})", a.id)
        } else {
            a.kind.to_string()
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
