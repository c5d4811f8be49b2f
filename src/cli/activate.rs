//! `pim activate`, `deactivate`, `status`, `check` and `request ...`.

use super::context::Ctx;
use super::output::{json, out, say, table, unix, when};
use super::prompt;
use crate::model::Status;
use crate::ops::ActivationInput;
use crate::scope::Scope;
use crate::time::{from_unix, parse_duration, parse_instant, rfc3339};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// Role keys or display names (several: one justification, one TOTP code); none on a
    /// terminal: pick from the roles you are eligible for
    #[arg(num_args = 0..)]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::roles))]
    roles: Vec<String>,
    /// Where to activate (default: the only scope you are eligible at, else /)
    #[arg(long, value_name = "S")]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::scopes))]
    scope: Option<String>,
    /// How long (default: the role's maximum)
    #[arg(long, value_name = "D")]
    duration: Option<String>,
    /// Start later (RFC 3339 or a date)
    #[arg(long, value_name = "T")]
    start: Option<String>,
    /// Why you need the role (asked for on a terminal when the role requires one)
    #[arg(short = 'j', long, value_name = "J")]
    justification: Option<String>,
    /// A change or incident ticket (asked for on a terminal when the role requires one)
    #[arg(long, value_name = "T")]
    ticket: Option<String>,
    /// Your current TOTP code (asked for on a terminal; a wrong one is asked again)
    #[arg(long, value_name = "C")]
    code: Option<String>,
    /// Wait until a request that needs approval is decided (at most D, default its timeout)
    #[arg(long, value_name = "D", num_args = 0..=1, default_missing_value = "")]
    wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The request id (see `pim request list --pending`)
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::requests))]
    pub id: i64,
    /// Why (optional for an approval)
    #[arg(short = 'j', long, value_name = "J")]
    pub justification: Option<String>,
    /// Your current TOTP code
    #[arg(long, value_name = "C")]
    pub code: Option<String>,
}

#[derive(Debug, Args)]
pub struct DenyArgs {
    /// The request id (see `pim request list --pending`)
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::requests))]
    pub id: i64,
    /// Why (required; asked for on a terminal)
    #[arg(short = 'j', long, value_name = "J")]
    pub justification: Option<String>,
    /// Your current TOTP code (asked for on a terminal)
    #[arg(long, value_name = "C")]
    pub code: Option<String>,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The request id
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::requests))]
    id: i64,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// Role key or display name of your running activation
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::roles))]
    role: String,
    /// Which activation, when you have several of the role
    #[arg(long, value_name = "S")]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::scopes))]
    scope: Option<String>,
    /// New end: now + D (default the role's maximum)
    #[arg(long, value_name = "D")]
    duration: Option<String>,
    /// Why (asked for on a terminal when the role requires one)
    #[arg(short = 'j', long, value_name = "J")]
    justification: Option<String>,
    /// A change or incident ticket (asked for on a terminal when the role requires one)
    #[arg(long, value_name = "T")]
    ticket: Option<String>,
    /// Your current TOTP code (asked for on a terminal)
    #[arg(long, value_name = "C")]
    code: Option<String>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The request id of the activation
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::requests))]
    id: i64,
    /// Why (required)
    #[arg(short = 'j', long, value_name = "J")]
    justification: String,
}

#[derive(Debug, Args)]
pub struct DeactivateArgs {
    /// Role key or display name
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::roles))]
    role: String,
    /// Which activation, when you have several of the role
    #[arg(long, value_name = "S")]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::scopes))]
    scope: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Whose status (default: yours)
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
    user: Option<String>,
    /// One line of your activations and the time left ("db-admin@/prod 42m"), for a shell
    /// prompt; nothing when none
    #[arg(long)]
    short: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The user (or service)
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
    user: String,
    /// Role key or display name
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::roles))]
    role: String,
    /// The scope that must be covered
    #[arg(long, default_value = "/", value_name = "S")]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::scopes))]
    scope: String,
}

#[derive(Debug, Subcommand)]
pub enum RequestCommand {
    /// Activation requests: yours, or with --all everyone's
    List {
        /// Only requests still pending
        #[arg(long)]
        pending: bool,
        /// Only your own (the default)
        #[arg(long, conflicts_with = "all")]
        mine: bool,
        /// Everyone's
        #[arg(long)]
        all: bool,
    },
    /// One request
    Show {
        /// The request id
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::requests))]
        id: i64,
    },
}

/// Ask for what the roles' policies need and the flags did not give, when we may. What is
/// required is said before it is typed; a justification that does not fit a role's pattern
/// is asked again.
fn ask_for_missing(
    ctx: &Ctx,
    pim: &crate::Pim,
    actor: &str,
    roles: &[String],
    input: &mut ActivationInput,
) -> anyhow::Result<()> {
    if !ctx.interactive {
        return Ok(());
    }
    let policy = pim.policy()?;
    let settings: Vec<crate::policy::Role> = roles
        .iter()
        .filter_map(|r| policy.role(r).cloned())
        .collect();
    let names: Vec<&str> = settings.iter().map(|r| r.key.as_str()).collect();
    if let Some(why) = input
        .justification
        .as_deref()
        .and_then(|j| misfit(&settings, j))
    {
        ctx.note(&why);
        input.justification = None;
    }
    let needs = settings
        .iter()
        .any(|r| r.settings.require_justification || r.settings.justification_pattern.is_some());
    if needs && input.justification.is_none() {
        let roles = settings.clone();
        input.justification = Some(prompt::text_checked(
            &format!("Justification for {}", names.join(", ")),
            crate::limits::JUSTIFICATION,
            move |j| misfit(&roles, j).map_or(Ok(()), Err),
        )?);
    }
    if settings.iter().any(|r| r.settings.require_ticket) && input.ticket.is_none() {
        input.ticket = Some(prompt::text("Ticket", crate::limits::TICKET)?);
    }
    if settings.iter().any(|r| r.settings.require_mfa)
        && input.code.is_none()
        && pim.user(actor).is_ok_and(|u| u.mfa_enrolled)
    {
        input.code = Some(prompt::code(actor)?);
    }
    Ok(())
}

/// Why a justification does not fit the pattern of one of `roles`, if it does not.
fn misfit(roles: &[crate::policy::Role], justification: &str) -> Option<String> {
    let r = roles
        .iter()
        .find(|r| !r.settings.justification_matches(justification.trim()))?;
    // Shown by the prompt itself, so escaped here like every note.
    let why = format!(
        "{} needs a justification matching `{}`{}.",
        r.key,
        r.settings
            .justification_pattern
            .as_deref()
            .unwrap_or_default(),
        r.settings
            .justification_hint
            .as_deref()
            .map(|h| format!(": {h}"))
            .unwrap_or_default()
    );
    Some(super::output::safe(&why).into_owned())
}

fn parse_wait(wait: Option<&str>) -> anyhow::Result<Option<Option<chrono::Duration>>> {
    Ok(wait
        .map(|w| {
            if w.is_empty() {
                Ok(None)
            } else {
                parse_duration(w).map(Some)
            }
        })
        .transpose()?)
}

fn describe(r: &crate::ops::Request, now: chrono::DateTime<chrono::Utc>) -> String {
    match r.status {
        Status::Pending | Status::Denied | Status::TimedOut | Status::Canceled => {
            format!(
                "Request {}: {} at {} is {}.",
                r.id, r.role, r.scope, r.status
            )
        }
        Status::Scheduled => format!(
            "Request {}: {} at {} is scheduled from {} until {}.",
            r.id,
            r.role,
            r.scope,
            when(Some(r.start_at), now),
            when(Some(r.end_at), now)
        ),
        _ => format!(
            "Request {}: {} is active at {} until {}.",
            r.id,
            r.role,
            r.scope,
            when(Some(r.end_at), now)
        ),
    }
}

/// One line for a role that may be activated: "db-admin at /prod (Database Administrator):
/// up to 8h, until 2027-03-01 09:00 CET; asks for a justification, a TOTP code".
fn offer(p: &crate::ops::ActivationPlan, now: chrono::DateTime<chrono::Utc>) -> String {
    let until = match p.eligible_until_at {
        Some(u) => format!("; eligible until {}", when(Some(u), now)),
        None => String::new(),
    };
    format!(
        "{} at {} ({}): up to {}; asks for {}{until}{}",
        p.role,
        p.scope,
        p.name,
        p.max_activation,
        p.requires(),
        if p.active { " [active now]" } else { "" }
    )
}

/// An offer for a narrow terminal: the role, the scope, how long, and whose approval.
fn short_offer(p: &crate::ops::ActivationPlan) -> String {
    let approval = match (p.require_approval, p.approvers.is_empty()) {
        (false, _) => String::new(),
        (true, true) => ", needs approval".to_string(),
        (true, false) => format!(", approval by {}", p.approvers.join(" or ")),
    };
    format!(
        "{} at {}: {} max{approval}",
        p.role, p.scope, p.max_activation
    )
}

/// The offer without the eligibility's end (the first thing left out where it does not fit).
fn without_end(p: &crate::ops::ActivationPlan) -> crate::ops::ActivationPlan {
    crate::ops::ActivationPlan {
        eligible_until_at: None,
        ..p.clone()
    }
}

/// The roles to activate when none were named: picked on a terminal from those the caller
/// is eligible for; without one, a usage error that lists them.
fn pick_roles(ctx: &Ctx, pim: &crate::Pim, actor: &str) -> anyhow::Result<Vec<(String, Scope)>> {
    let now = pim.now();
    let offers: Vec<_> = pim
        .activatable(actor)?
        .into_iter()
        .filter(|p| !p.active)
        .collect();
    if offers.is_empty() {
        return Err(crate::Error::Refused(format!(
            "{actor} is not eligible for any role that is not already active. See `pim status`."
        ))
        .into());
    }
    let lines: Vec<String> = offers.iter().map(|p| offer(p, now)).collect();
    if !ctx.interactive {
        return Err(crate::Error::Usage(format!(
            "Name the role to activate; you are eligible for: {}.",
            offers
                .iter()
                .map(|p| format!("{} at {}", p.role, p.scope))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    // One line each, whatever the width ("> [ ] " before it): where the whole offer does
    // not fit, what decides the pick (the role, how long, whose approval) comes first, and
    // the rest is said before the prompts of the one picked.
    let width = super::output::terminal_width(true)
        .unwrap_or(80)
        .saturating_sub(7);
    let fitting: Vec<String> = offers
        .iter()
        .zip(&lines)
        .map(|(p, full)| {
            // (measured as shown: escaped)
            let shown = |l: String| super::output::safe(&l).into_owned();
            let fits = |l: &String| super::output::display_width(l) <= width;
            let line = [full.clone(), offer(&without_end(p), now), short_offer(p)]
                .into_iter()
                .map(shown)
                .find(fits)
                .unwrap_or_else(|| shown(short_offer(p)));
            super::output::fit(&line, width).into_owned()
        })
        .collect();
    let chosen = prompt::pick("Roles to activate (space marks, enter accepts)", &fitting)?;
    if chosen.is_empty() {
        return Err(crate::Error::Usage("No role was picked.".to_string()).into());
    }
    chosen
        .into_iter()
        .map(|i| Ok((offers[i].role.clone(), Scope::parse(&offers[i].scope)?)))
        .collect()
}

pub fn run_activate(ctx: &Ctx, a: ActivateArgs) -> anyhow::Result<i32> {
    let scope = a.scope.as_deref().map(Scope::parse).transpose()?;
    let duration = a.duration.as_deref().map(parse_duration).transpose()?;
    let start = a.start.as_deref().map(parse_instant).transpose()?;
    let wait = parse_wait(a.wait.as_deref())?;
    let (mut pim, actor) = ctx.open()?;
    let mut picks: Vec<(String, Option<Scope>)> = if a.roles.is_empty() {
        pick_roles(ctx, &pim, &actor)?
            .into_iter()
            .map(|(r, s)| (r, Some(s)))
            .collect()
    } else {
        a.roles.iter().map(|r| (r.clone(), scope.clone())).collect()
    };
    let mut input = ActivationInput {
        role: picks[0].0.clone(),
        scope: picks[0].1.clone(),
        duration,
        start,
        justification: a.justification,
        ticket: a.ticket,
        code: a.code,
    };
    if ctx.interactive {
        // Check first, then ask: everything that needs nothing typed is checked (and a
        // refusal recorded) before any prompt, and what each role asks for is said.
        let now = pim.now();
        let mut planned = Vec::new();
        for (role, scope) in &picks {
            let one = ActivationInput {
                role: role.clone(),
                scope: scope.clone(),
                ..input.clone()
            };
            let plan = pim.plan_activation(&actor, &one)?;
            ctx.note(&format!("Activating {}", offer(&plan, now)));
            planned.push((plan.role.clone(), Some(Scope::parse(&plan.scope)?)));
        }
        picks = planned;
        input.role = picks[0].0.clone();
        input.scope = picks[0].1.clone();
        let keys: Vec<String> = picks.iter().map(|(r, _)| r.clone()).collect();
        ask_for_missing(ctx, &pim, &actor, &keys, &mut input)?;
    }
    let mut tries = 1;
    let mut requests = loop {
        let result = if picks.len() == 1 {
            pim.activate(&actor, input.clone()).map(|r| vec![r])
        } else {
            pim.activate_many(&actor, &picks, input.clone())
        };
        match result {
            // A wrong code on a terminal is asked again; the lockout counts every try.
            Err(e) if ctx.interactive && e.is_wrong_code() && tries < 5 => {
                ctx.note(&format!("{e} Try again."));
                input.code = Some(prompt::code(&actor)?);
                tries += 1;
            }
            other => break other?,
        }
    };
    for r in requests.iter_mut() {
        if r.status == Status::Pending {
            ctx.note(&format!(
                "Request {} for {} waits for approval (decide by {}).",
                r.id,
                r.role,
                when(r.decide_by_at, pim.now())
            ));
            if let Some(limit) = wait {
                *r = wait_for_decision(ctx, &pim, r.id, limit)?;
            }
        }
    }
    if ctx.json {
        if requests.len() == 1 {
            json(&requests[0])?;
        } else {
            json(&requests)?;
        }
    } else {
        let now = pim.now();
        say(&requests
            .iter()
            .map(|r| describe(r, now))
            .collect::<Vec<_>>()
            .join("\n"))?;
    }
    if let Some(r) = requests
        .iter()
        .find(|r| !matches!(r.status, Status::Active | Status::Scheduled))
        .filter(|_| wait.is_some())
    {
        return Err(crate::Error::Refused(format!(
            "Request {} was not approved: it is {}.",
            r.id, r.status
        ))
        .into());
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The role to hold while CMD runs
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::roles))]
    role: String,
    /// Where the role must hold (default: the only scope you hold it at, else the only one
    /// you are eligible at, else /)
    #[arg(long, value_name = "S")]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::scopes))]
    scope: Option<String>,
    /// Why (asked for on a terminal when the role requires one)
    #[arg(short = 'j', long, value_name = "J")]
    justification: Option<String>,
    /// A change or incident ticket
    #[arg(long, value_name = "T")]
    ticket: Option<String>,
    /// How long to hold it at most (default: the role's maximum)
    #[arg(long, value_name = "D")]
    duration: Option<String>,
    /// Your current TOTP code (asked for on a terminal)
    #[arg(long, value_name = "C")]
    code: Option<String>,
    /// If the role needs approval, wait for it (at most D)
    #[arg(long, value_name = "D", num_args = 0..=1, default_missing_value = "")]
    wait: Option<String>,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Run CMD with the role held: activate it if needed (under the usual rules), run, give it
/// back if we took it, and exit with CMD's code.
pub fn run_exec(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<i32> {
    let scope = a.scope.as_deref().map(Scope::parse).transpose()?;
    let duration = a.duration.as_deref().map(parse_duration).transpose()?;
    let wait = parse_wait(a.wait.as_deref())?;
    let (mut pim, actor) = ctx.open()?;
    let role_key = pim
        .policy()?
        .role(&a.role)
        .map(|r| r.key.clone())
        .ok_or_else(|| {
            crate::Error::NotFound(format!(
                "There is no role '{}'. See `pim role list`.",
                a.role
            ))
        })?;
    let scope = match scope {
        Some(s) => s,
        None => pim.exec_scope(&actor, &role_key)?,
    };
    let key = super::lease::key(&pim.instance()?, &ctx.db_identity());
    let mut input = ActivationInput {
        role: role_key.clone(),
        scope: Some(scope.clone()),
        duration,
        start: None,
        justification: a.justification,
        ticket: a.ticket,
        code: a.code,
    };
    let mut asked = false;
    // The leases on the activation this exec made, or on those of other execs it relies on
    // (held so that theirs does not end with their command while this one runs; see `lease`).
    let mut leases: Vec<super::lease::Lease> = Vec::new();
    let mut unleased = None;
    let mut attempts = 0;
    // A gate that cannot be held is said once.
    let mut gate_said = false;
    let mut unusable = |why: String| {
        if !std::mem::replace(&mut gate_said, true) {
            ctx.note(&format!("Note: {why}"));
        }
        None
    };
    let (request, until, signals) = loop {
        attempts += 1;
        // Shared while looking and joining: an exec activating holds it alone until its
        // lease exists (see `lease`).
        let gate = super::lease::Gate::shared(&key).unwrap_or_else(&mut unusable);
        let mut held = pim.check(&actor, &role_key, &scope)?;
        let mut covering = Vec::new();
        if held.is_some() {
            covering = pim.covering_activations(&actor, &role_key, &scope)?;
            for &(id, _, made) in &covering {
                leases.extend(super::lease::Lease::join(&key, id, made));
            }
            // Checked again once held: the other exec may have given it back meanwhile.
            held = pim.check(&actor, &role_key, &scope)?;
        }
        if let Some(until) = held {
            // The activation it runs under: the one that lasts longest (none when an
            // active assignment holds the role).
            let request = until.and_then(|u| {
                covering
                    .iter()
                    .find(|&&(_, end, _)| end == Some(u))
                    .map(|&(id, _, _)| id)
            });
            break (request, until, forward::hold());
        }
        leases.clear();
        drop(gate);
        if ctx.interactive && !asked {
            // Check first, then ask (as activate does): a refusal that needs nothing
            // typed comes before the justification and the code.
            let plan = pim.plan_activation(&actor, &input)?;
            ctx.note(&format!("Activating {}", offer(&plan, pim.now())));
        }
        if !asked {
            ask_for_missing(
                ctx,
                &pim,
                &actor,
                std::slice::from_ref(&role_key),
                &mut input,
            )?;
            asked = true;
        }
        // The gate first, while a signal still ends exec: another exec holding it (stopped,
        // say) must not leave this one deaf to Ctrl-C, and none is activated yet.
        let gate = super::lease::Gate::alone(&key).unwrap_or_else(&mut unusable);
        // From here until the command runs, a signal is held back (see `forward`).
        let mut signals = forward::hold();
        let mut r = match pim.activate(&actor, input.clone()) {
            Ok(r) => r,
            // Another exec activated it a moment ago: rely on that one.
            Err(crate::Error::Conflict(_))
                if attempts < 3 && pim.check(&actor, &role_key, &scope)?.is_some() =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // The lease, before any other exec may look for the activation (a pending request's
        // too: its approval, by someone else, makes it active). One that never becomes
        // active leaves a file the next exec's cleaning removes.
        match super::lease::Lease::made(&key, r.id, r.created_at) {
            Ok(lease) => leases.push(lease),
            // No lease to keep: given back when this command ends, as if alone.
            Err(why) => {
                ctx.note(&format!("Note: {why}"));
                unleased = Some(r.id);
            }
        }
        drop(gate);
        if r.status == Status::Pending {
            let Some(limit) = wait else {
                return Err(crate::Error::Refused(format!(
                    "{role_key} needs approval (request {} is pending); run exec with --wait to wait for it.",
                    r.id
                ))
                .into());
            };
            // Waiting can be interrupted as ever; held back again once decided.
            drop(signals);
            r = wait_for_decision(ctx, &pim, r.id, limit)?;
            signals = forward::hold();
        }
        if r.status != Status::Active {
            return Err(crate::Error::Refused(format!(
                "Request {} is {}; {role_key} is not held.",
                r.id, r.status
            ))
            .into());
        }
        break (Some(r.id), Some(r.end_at), signals);
    };
    // The command runs with the caller's own identity only (no pim group, no PIM_TOKEN, no
    // password of the database's: it gets to the database through pim, as the caller does).
    let mut command = crate::privilege::command(&a.command[0]);
    if let Some(url) = std::env::var_os("PIM_DB")
        .and_then(|v| v.into_string().ok())
        .filter(|v| crate::store::pg::is_url(std::path::Path::new(v)))
    {
        command.env("PIM_DB", crate::store::pg::without_password(&url));
    }
    command
        .args(&a.command[1..])
        .env("PIM_USER", &actor)
        .env("PIM_ROLE", &role_key)
        .env("PIM_SCOPE", scope.as_str())
        .env(
            "PIM_REQUEST",
            request.map(|r| r.to_string()).unwrap_or_default(),
        )
        .env(
            "PIM_UNTIL",
            until
                .map(|u| crate::time::rfc3339(crate::time::from_unix(u)))
                .unwrap_or_else(|| "permanent".into()),
        );
    // A signal that came before the command could start: it does not start.
    let ran = match signals.pending() {
        Some(sig) => Ran::NotStarted(sig),
        None => match command.spawn() {
            Ok(mut child) => {
                signals.running(child.id());
                let status = child.wait();
                signals.ended();
                status.map_or_else(Ran::Failed, Ran::Exited)
            }
            Err(e) => Ran::Failed(e),
        },
    };
    // CMD's exit code, as a shell gives it: 128 + a signal that ended it (or stopped it from
    // starting), 127 for a command not found, 126 for one that cannot run.
    use std::os::unix::process::ExitStatusExt;
    let code = match &ran {
        Ran::Exited(status) => status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Ran::NotStarted(sig) => 128 + sig,
        Ran::Failed(e) => {
            ctx.note(&format!(
                "pim: Cannot run {}: {e}.",
                crate::text::shell_word(std::path::Path::new(&a.command[0]))
            ));
            if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            }
        }
    };
    // Give back, whatever CMD did, the activation this exec made and those of other execs
    // it relied on, each by the last exec relying on it (that one: not another of the role
    // made since), on record with the command's name (not its arguments, which may hold
    // anything) and exit code. One that cannot be given back keeps its lease file, for the
    // next exec to give back, and this exec fails.
    let mut give_back: Vec<(i64, Option<super::lease::Last>)> = Vec::new();
    for lease in leases {
        let id = lease.id;
        if let Some(last) = lease.release() {
            give_back.push((id, Some(last)));
        }
    }
    give_back.extend(unleased.map(|id| (id, None)));
    let name = std::path::Path::new(&a.command[0])
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| a.command[0].clone());
    for (id, last) in give_back {
        if let Err(e) = pim.deactivate_request(&actor, id, &name, code) {
            return Err(crate::Error::Environment(format!(
                "Could not give {role_key} back (request {id}): {e} It stays active until its end, or `pim deactivate {role_key} --scope {scope}`."
            ))
            .into());
        }
        if let Some(last) = last {
            last.done();
        }
    }
    // Lease files left by execs that were killed, once their activations have ended.
    super::lease::clean(&key, |id, made| {
        pim.activation_in_force(id, made).unwrap_or(true)
    });
    Ok(code)
}

/// How `pim exec`'s command went.
enum Ran {
    Exited(std::process::ExitStatus),
    /// A signal came before it could start.
    NotStarted(libc::c_int),
    Failed(std::io::Error),
}

/// Signals to `pim exec` from the moment it activates: held back (blocked) until its
/// command runs, then passed on to it, so that pim outlives the command and gives the role
/// back. One of them that came before the command started stops it from starting. A signal
/// pim was started ignoring (`nohup`) stays ignored, for the command too. A Ctrl-C from the
/// terminal reached the command's process group already and is not sent twice; a hangup is
/// (the kernel sends it to the session leader alone, which pim may be).
mod forward {
    use crate::privilege::PASSED_ON;
    use std::sync::atomic::{AtomicI32, Ordering};

    /// The command's process id; 0 before it runs, -1 once it has ended.
    static CHILD: AtomicI32 = AtomicI32::new(0);

    extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler; kill and
        // atomics are async-signal-safe.
        let from_terminal = unsafe { (*info).si_code } == libc::SI_KERNEL && sig != libc::SIGHUP;
        let pid = CHILD.load(Ordering::SeqCst);
        if pid > 0 && !from_terminal {
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    fn set_of(signals: &[libc::c_int]) -> libc::sigset_t {
        // SAFETY: sigemptyset and sigaddset write only the set we hand them.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &sig in signals {
                libc::sigaddset(&mut set, sig);
            }
            set
        }
    }

    /// The signals held back while the guard lives (from before the activation until the
    /// command runs); the handler is installed for those pim is not ignoring.
    pub struct Held {
        old: libc::sigset_t,
        installed: Vec<libc::c_int>,
    }

    pub fn hold() -> Held {
        let set = set_of(&PASSED_ON);
        // SAFETY: sigprocmask and sigaction change only this process's signal state.
        unsafe {
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            let mut installed = Vec::new();
            for sig in PASSED_ON {
                let mut current: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, std::ptr::null(), &mut current);
                if current.sa_sigaction == libc::SIG_IGN {
                    continue;
                }
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut());
                installed.push(sig);
            }
            Held { old, installed }
        }
    }

    impl Drop for Held {
        /// Before the command runs (the exec ends without it, or waits for an approval): as
        /// before, each signal with its own action, and no longer held back.
        fn drop(&mut self) {
            if CHILD.load(Ordering::SeqCst) != 0 {
                return;
            }
            // SAFETY: as in `hold`.
            unsafe {
                for &sig in &self.installed {
                    let mut default: libc::sigaction = std::mem::zeroed();
                    default.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &default, std::ptr::null_mut());
                }
                libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
            }
        }
    }

    impl Held {
        /// A signal held back so far, if any (the command is then not started).
        pub fn pending(&self) -> Option<libc::c_int> {
            // SAFETY: sigpending writes only the set we hand it.
            let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
            unsafe { libc::sigpending(&mut set) };
            PASSED_ON
                .into_iter()
                .find(|&sig| unsafe { libc::sigismember(&set, sig) } == 1)
        }

        /// The command is `pid`: what is held back goes to it now, and what comes later.
        pub fn running(&self, pid: u32) {
            CHILD.store(i32::try_from(pid).unwrap_or(0), Ordering::SeqCst);
            // SAFETY: as in `hold`.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
        }

        /// The command has ended: nothing more is passed on (its id may be another's now).
        pub fn ended(&self) {
            CHILD.store(-1, Ordering::SeqCst);
        }
    }
}

/// Poll the request until it is decided or `limit` passes (default: its own timeout).
fn wait_for_decision(
    ctx: &Ctx,
    pim: &crate::Pim,
    id: i64,
    limit: Option<chrono::Duration>,
) -> anyhow::Result<crate::ops::Request> {
    let until = limit.map(|l| pim.now() + l);
    ctx.note("Waiting for a decision (Ctrl-C stops waiting; the request stays open)...");
    loop {
        let r = pim.request(id)?;
        if r.status != Status::Pending || until.is_some_and(|u| pim.now() >= u) {
            return Ok(r);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn show_request(
    ctx: &Ctx,
    pim: &crate::Pim,
    r: &crate::ops::Request,
    what: &str,
) -> anyhow::Result<i32> {
    if ctx.json {
        json(r)?;
    } else {
        let now = pim.now();
        let status = r.status.to_string();
        // "denied by you", not "denied by you; it is denied".
        let state = if what.split(' ').next() == Some(status.as_str()) {
            String::new()
        } else if let (Some(original), Status::Expired, Some("extension applied")) =
            (r.extends, r.status, r.close_reason.as_deref())
        {
            // An extension closes as it is applied: what it did, not "expired".
            let ends = pim
                .request(original)
                .map(|o| format!(" until {}", when(Some(o.end_at), now)))
                .unwrap_or_default();
            format!("; it is applied: request {original} is active{ends}")
        } else if r.status == Status::Active {
            format!("; it is {status} until {}", when(Some(r.end_at), now))
        } else {
            format!("; it is {status}")
        };
        say(&format!(
            "Request {} ({} for {} at {}): {what}{state}.",
            r.id, r.role, r.user, r.scope,
        ))?;
    }
    Ok(0)
}

pub fn run_decide(
    ctx: &Ctx,
    id: i64,
    approve: bool,
    justification: Option<String>,
    code: Option<String>,
) -> anyhow::Result<i32> {
    let (mut pim, actor) = ctx.open()?;
    let mut code = code;
    let mut justification = justification;
    if ctx.interactive {
        // Check first, then ask.
        let r = pim.check_decision(&actor, id, approve)?;
        ctx.note(&format!(
            "{} request {id}: {} for {} at {}{}.",
            if approve { "Approving" } else { "Denying" },
            r.role,
            r.user,
            r.scope,
            // The requester's words, on one line (a line break of theirs must not start a
            // line that reads as pim's own just before the approver's code is asked for).
            r.justification
                .as_deref()
                .map(|j| format!(" (\"{}\")", super::output::safe(j)))
                .unwrap_or_default()
        ));
        if !approve && justification.as_deref().is_none_or(|j| j.trim().is_empty()) {
            justification = Some(prompt::text(
                &format!("Reason for denying request {id}"),
                crate::limits::JUSTIFICATION,
            )?);
        }
        if code.is_none() && pim.user(&actor).is_ok_and(|u| u.mfa_enrolled) {
            code = Some(prompt::code(&actor)?);
        }
    }
    let mut tries = 1;
    let r = loop {
        match pim.decide(
            &actor,
            id,
            approve,
            justification.as_deref(),
            code.as_deref(),
        ) {
            Err(e) if ctx.interactive && e.is_wrong_code() && tries < 5 => {
                ctx.note(&format!("{e} Try again."));
                code = Some(prompt::code(&actor)?);
                tries += 1;
            }
            other => break other?,
        }
    };
    show_request(
        ctx,
        &pim,
        &r,
        if approve {
            "approved by you"
        } else {
            "denied by you"
        },
    )
}

pub fn run_cancel(ctx: &Ctx, a: IdArgs) -> anyhow::Result<i32> {
    let (mut pim, actor) = ctx.open()?;
    let r = pim.cancel(&actor, a.id)?;
    show_request(ctx, &pim, &r, "withdrawn")
}

pub fn run_revoke(ctx: &Ctx, a: RevokeArgs) -> anyhow::Result<i32> {
    let (mut pim, actor) = ctx.open()?;
    let r = pim.revoke(&actor, a.id, &a.justification)?;
    show_request(ctx, &pim, &r, "revoked")
}

pub fn run_extend(ctx: &Ctx, a: ExtendArgs) -> anyhow::Result<i32> {
    let scope = a.scope.as_deref().map(Scope::parse).transpose()?;
    let duration = a.duration.as_deref().map(parse_duration).transpose()?;
    let (mut pim, actor) = ctx.open()?;
    let mut justification = a.justification;
    let mut ticket = a.ticket;
    let mut code = a.code;
    if ctx.interactive {
        // Check first, then ask.
        let current = pim.check_extend(&actor, &a.role, scope.as_ref(), duration)?;
        if let Some(role) = pim.policy()?.role(&current.role).cloned() {
            let roles = vec![role.clone()];
            if let Some(why) = justification.as_deref().and_then(|j| misfit(&roles, j)) {
                ctx.note(&why);
                justification = None;
            }
            let needs = role.settings.require_justification
                || role.settings.justification_pattern.is_some();
            if needs && justification.is_none() {
                justification = Some(prompt::text_checked(
                    &format!("Justification for extending {}", role.key),
                    crate::limits::JUSTIFICATION,
                    move |j| misfit(&roles, j).map_or(Ok(()), Err),
                )?);
            }
            if role.settings.require_ticket && ticket.is_none() {
                ticket = Some(prompt::text("Ticket", crate::limits::TICKET)?);
            }
            if role.settings.require_mfa
                && code.is_none()
                && pim.user(&actor).is_ok_and(|u| u.mfa_enrolled)
            {
                code = Some(prompt::code(&actor)?);
            }
        }
    }
    let mut tries = 1;
    let r = loop {
        match pim.extend(
            &actor,
            &a.role,
            scope.as_ref(),
            duration,
            crate::ops::ExtendInput {
                justification: justification.as_deref(),
                ticket: ticket.as_deref(),
                code: code.as_deref(),
            },
        ) {
            Err(e) if ctx.interactive && e.is_wrong_code() && tries < 5 => {
                ctx.note(&format!("{e} Try again."));
                code = Some(prompt::code(&actor)?);
                tries += 1;
            }
            other => break other?,
        }
    };
    if r.status == Status::Pending || ctx.json {
        return show_request(ctx, &pim, &r, "the extension waits for approval");
    }
    // Applied: what the user has now is the activation it extended, running longer (not the
    // extension request, which closed when it was applied).
    let extended = match r.extends {
        Some(id) => pim.request(id)?,
        None => r,
    };
    show_request(ctx, &pim, &extended, "extended")
}

pub fn run_deactivate(ctx: &Ctx, a: DeactivateArgs) -> anyhow::Result<i32> {
    let scope = a.scope.as_deref().map(Scope::parse).transpose()?;
    let (mut pim, actor) = ctx.open()?;
    let r = pim.deactivate(&actor, &a.role, scope.as_ref())?;
    if ctx.json {
        json(&r)?;
    } else {
        say(&format!(
            "Request {}: {} at {} is deactivated.",
            r.id, r.role, r.scope
        ))?;
    }
    Ok(0)
}

impl StatusArgs {
    pub fn is_short(&self) -> bool {
        self.short
    }
}

/// Activations and the time left, in one line for a prompt: `db-admin@/prod 42m`.
fn short_status(s: &crate::ops::Status, now: chrono::DateTime<chrono::Utc>) -> String {
    s.active
        .iter()
        .filter_map(|h| {
            let until = h.until_at.filter(|_| h.request.is_some())?;
            let left = chrono::Duration::seconds((until - now.timestamp()).max(0));
            Some(format!(
                "{}@{} {}",
                h.role,
                h.scope,
                crate::time::format_duration(left)
            ))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run_status(ctx: &Ctx, a: StatusArgs) -> anyhow::Result<i32> {
    let (pim, actor) = ctx.open()?;
    let viewer = pim.viewer(&actor)?;
    let user = a.user.unwrap_or(actor);
    let s = pim.status_seen_by(&viewer, &user)?;
    let now = pim.now();
    if a.short {
        let line = short_status(&s, now);
        if ctx.json {
            return json(&serde_json::json!({ "short": line })).map(|_| 0);
        }
        if !line.is_empty() {
            out(&line)?;
        }
        return Ok(0);
    }
    if ctx.json {
        return json(&s).map(|_| 0);
    }
    let mut lines = Vec::new();
    if s.disabled {
        lines.push(format!("{} is disabled and holds nothing.", s.user));
    }
    if s.active.is_empty() {
        lines.push(format!("Active roles of {}: none.", s.user));
    } else {
        let mut t = table(&["active role", "scope", "until", "via"]);
        for h in &s.active {
            let via = match h.request {
                Some(id) => format!("activation (request {id})"),
                None => "direct assignment".to_string(),
            };
            t.add_row(vec![
                h.role.clone(),
                h.scope.clone(),
                when(h.until_at, now),
                via,
            ]);
        }
        lines.push(t.to_string());
    }
    if s.eligible.is_empty() {
        lines.push(format!("Eligible roles of {}: none.", s.user));
    } else {
        let mut t = table(&["eligible role", "scope", "from", "until"]);
        for e in &s.eligible {
            t.add_row(vec![
                e.role.clone(),
                e.scope.clone(),
                when(Some(e.start_at), now),
                when(e.end_at, now),
            ]);
        }
        lines.push(t.to_string());
    }
    if !s.requests.is_empty() {
        let mut t = table(&["open request", "role", "scope", "status", "start"]);
        for r in &s.requests {
            t.add_row(vec![
                r.id.to_string(),
                r.role.clone(),
                r.scope.clone(),
                r.status.to_string(),
                when(Some(r.start_at), now),
            ]);
        }
        lines.push(t.to_string());
    }
    out(&lines.join("\n"))?;
    Ok(0)
}

pub fn run_check(ctx: &Ctx, a: CheckArgs) -> anyhow::Result<i32> {
    let scope = Scope::parse(&a.scope)?;
    let (pim, _) = ctx.open()?;
    let held = pim.check(&a.user, &a.role, &scope)?;
    let until = held.flatten().map(|t| rfc3339(from_unix(t)));
    if ctx.json {
        json(&serde_json::json!({
            "user": a.user, "role": a.role, "scope": scope.as_str(),
            "held": held.is_some(), "until": until,
        }))?;
    } else if !ctx.quiet {
        let now = pim.now();
        say(&match held {
            Some(u) => format!(
                "{} holds {} at {} until {}.",
                a.user,
                a.role,
                scope,
                when(u, now)
            ),
            None => format!("{} does not hold {} at {}.", a.user, a.role, scope),
        })?;
    }
    Ok(if held.is_some() { 0 } else { 1 })
}

pub fn run_request(ctx: &Ctx, cmd: RequestCommand) -> anyhow::Result<i32> {
    let (pim, actor) = ctx.open()?;
    let viewer = pim.viewer(&actor)?;
    let now = pim.now();
    let list = match cmd {
        RequestCommand::Show { id } => {
            let r = pim.request_seen_by(&viewer, id)?;
            if ctx.json {
                return json(&r).map(|_| 0);
            }
            if !r.decisions.is_empty() {
                let mut t = table(&["decision", "by", "when", "justification"]);
                for d in &r.decisions {
                    t.add_row(vec![
                        d.decision.to_string(),
                        d.approver.clone(),
                        when(unix(&d.time), now),
                        d.justification.clone().unwrap_or_default(),
                    ]);
                }
                out(&t.to_string())?;
            }
            vec![r]
        }
        RequestCommand::List { pending, mine, all } => {
            let list = if pending && !mine && !all {
                // What the caller may decide.
                pim.decidable(&actor)?
            } else {
                let mut list =
                    pim.requests_seen_by(&viewer, if all { None } else { Some(&actor) })?;
                if pending {
                    list.retain(|r| r.status == Status::Pending);
                }
                list
            };
            if ctx.json {
                return json(&list).map(|_| 0);
            }
            list
        }
    };
    if list.is_empty() {
        ctx.note("No requests.");
        return Ok(0);
    }
    let mut t = table(&[
        "id",
        "user",
        "role",
        "scope",
        "status",
        "start",
        "end",
        "justification",
    ]);
    for r in &list {
        // An extension that was applied lives on in the activation it extended.
        if let (Some(original), Some("extension applied")) = (r.extends, r.close_reason.as_deref())
        {
            t.add_row(vec![
                r.id.to_string(),
                r.user.clone(),
                r.role.clone(),
                r.scope.clone(),
                "applied".to_string(),
                format!("extends request {original}"),
                "—".to_string(),
                r.justification.clone().unwrap_or_default(),
            ]);
            continue;
        }
        t.add_row(vec![
            r.id.to_string(),
            r.user.clone(),
            r.role.clone(),
            r.scope.clone(),
            r.status.to_string(),
            match r.status {
                // Never started: no start to show.
                Status::Denied | Status::Canceled | Status::TimedOut => "never started".to_string(),
                _ => when(unix(&r.start), now),
            },
            // Ended: when it really ended (a deactivation's moment, not the planned end).
            when(r.ended_at(now.timestamp()).or(unix(&r.end)), now),
            r.justification.clone().unwrap_or_default(),
        ]);
    }
    out(&t.to_string())?;
    Ok(0)
}
