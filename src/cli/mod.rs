//! The command line: the only place that parses arguments, reads the environment and the
//! terminal, prompts, and draws tables or JSON. One file per command group, one dispatch.

mod activate;
mod assign;
mod audit;
mod context;
mod doctor;
mod init;
mod output;
mod policy;
mod prompt;
mod review;
mod store;
mod user;

use clap::{Parser, Subcommand};
use context::Ctx;
use std::path::PathBuf;

/// Privileged Identity Management from a terminal: eligible roles, taken just in time.
#[derive(Debug, Parser)]
#[command(name = "pim", version, about, propagate_version = true)]
pub struct Cli {
    /// The database (default: $XDG_DATA_HOME/pim/pim.db)
    #[arg(long, global = true, env = "PIM_DB", value_name = "PATH")]
    db: Option<PathBuf>,
    /// Act as another principal (only root or the database file's owner may)
    #[arg(long = "as", global = true, env = "PIM_USER", value_name = "NAME")]
    as_user: Option<String>,
    /// Machine-readable output: one JSON document on stdout
    #[arg(long, global = true)]
    json: bool,
    /// Never prompt; missing input is an error (implied when stdin is not a terminal)
    #[arg(long, global = true)]
    no_input: bool,
    /// Say less on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Say more on stderr
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database, load the policy and make the break-glass administrator
    Init(init::InitArgs),
    /// Add, list, show, disable and enable users
    #[command(subcommand)]
    User(user::UserCommand),
    /// Enrol or reset TOTP authenticators
    #[command(subcommand)]
    Mfa(user::MfaCommand),
    /// Roles with their effective settings and holders
    #[command(subcommand)]
    Role(policy::RoleCommand),
    /// Validate, apply or export the policy
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Make a user eligible for (or active in) a role
    Assign(assign::AssignArgs),
    /// Remove an assignment, ending the activations that rest on it
    Unassign(assign::UnassignArgs),
    /// List assignments
    #[command(subcommand)]
    Assignment(assign::AssignmentCommand),
    /// Activate a role you are eligible for
    Activate(activate::ActivateArgs),
    /// End your activation now
    Deactivate(activate::DeactivateArgs),
    /// Run a command with a role held, then give it back; exit with the command's code
    Exec(activate::ExecArgs),
    /// Your (or USER's) eligible roles, active roles and open requests
    Status(activate::StatusArgs),
    /// Exit 0 if USER holds ROLE covering the scope right now, 1 if not
    Check(activate::CheckArgs),
    /// Activation requests
    #[command(subcommand)]
    Request(activate::RequestCommand),
    /// Approve a pending request (never your own); approvers give a TOTP code
    Approve(activate::DecideArgs),
    /// Deny a pending request, with a reason
    Deny(activate::DenyArgs),
    /// Withdraw your own pending or scheduled request
    Cancel(activate::IdArgs),
    /// Move the end of your running activation to now + D, under the activation rules
    Extend(activate::ExtendArgs),
    /// End someone's activation now (permission `assign`)
    Revoke(activate::RevokeArgs),
    /// The audit log: list, export, verify
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Record expirations and starts in the audit log, time out stale requests, send
    /// reminders and retry notifications (safe to run from cron, any number of times)
    Sweep,
    /// Access reviews: who still needs what
    #[command(subcommand)]
    Review(review::ReviewCommand),
    /// Security alerts: protected-role holders, break-glass, MFA, standing and unused access
    Alerts {
        /// Exit 1 when any alert is at or above this severity
        #[arg(long, value_parser = ["info", "warning", "critical"], value_name = "SEVERITY")]
        fail_on: Option<String>,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (pim.1 and one per subcommand) into DIR
    Man {
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
    },
    /// The notification outbox and its deliveries
    #[command(subcommand)]
    Notification(audit::NotificationCommand),
    /// Who could activate or held ROLE (at a scope, at an instant), replayed from the log
    /// (permission `audit`)
    WhoCould {
        role: String,
        #[arg(long)]
        scope: Option<String>,
        /// The instant (RFC 3339 or YYYY-MM-DD); default: now
        #[arg(long, value_name = "T")]
        at: Option<String>,
    },
    /// A verifiable receipt of one activation (its events, proven in a signed checkpoint),
    /// or `receipt verify FILE --key KEY` offline
    Receipt(audit::ReceiptArgs),
    /// Who pim takes you to be: OS account, principal, database, MFA, active roles
    Whoami,
    /// Check the install (database, permissions, schema, sweep, notifications, witnesses,
    /// keys); each problem with the command that fixes it; exit 1 on a problem
    Doctor,
    /// The database itself: copy a SQLite file into PostgreSQL
    #[command(subcommand)]
    Store(store::StoreCommand),
}

/// Run pim with the process's arguments; returns the exit code.
pub fn run() -> i32 {
    // First of all: an installed (set-group-id) pim lowers its group until it opens the
    // installed database.
    if let Err(e) = crate::privilege::init() {
        eprintln!("pim: cannot lower the pim group ({e}); stopping.");
        return 1;
    }
    // Never a stack trace: a bug, or a resource the system refused, is one sentence.
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        output::note(&format!(
            "pim: internal error ({what}); nothing half-done was kept. Please report it."
        ));
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; clap picks 0 or 2.
            let _ = e.print();
            return e.exit_code();
        }
    };
    let ctx = match Ctx::new(&cli) {
        Ok(ctx) => ctx,
        Err(e) => {
            output::note(&format!("pim: {e:#}"));
            return e
                .downcast_ref::<crate::Error>()
                .map(crate::Error::exit_code)
                .unwrap_or(1);
        }
    };
    // For scripts and prompts (check, status --short), no note.
    let quiet_command = match &cli.command {
        Command::Check(_) => true,
        Command::Status(a) => a.is_short(),
        _ => false,
    };
    let result = dispatch(&ctx, cli.command);
    if result.is_ok() && !quiet_command {
        ctx.note_ending_soon();
    }
    // Deliver what the command queued, whatever it returned (a refusal may have queued).
    ctx.finish();
    match result {
        Ok(code) => code,
        Err(e) => {
            if output::is_broken_pipe(&e) {
                return 0;
            }
            let code = e
                .downcast_ref::<crate::Error>()
                .map(crate::Error::exit_code)
                .unwrap_or(1);
            // A database that stayed locked: say who holds it.
            let e = match e.downcast_ref::<crate::Error>() {
                Some(inner @ (crate::Error::Store(_) | crate::Error::Recorded(_)))
                    if inner.is_locked() =>
                {
                    anyhow::Error::from(ctx.locked())
                }
                _ => e,
            };
            output::note(&format!("pim: {}", did_you_mean(&ctx, format!("{e:#}"))));
            code
        }
    }
}

/// An unknown user's error, with the closest name the caller may see.
fn did_you_mean(ctx: &Ctx, message: String) -> String {
    const UNKNOWN: &str = "There is no user named '";
    let Some(name) = message
        .strip_prefix(UNKNOWN)
        .and_then(|rest| rest.split_once("'. "))
        .map(|(name, _)| name.to_string())
    else {
        return message;
    };
    match ctx.closest_user(&name) {
        Some(close) => message.replacen("'. See", &format!("'. Did you mean {close}? See"), 1),
        None => message,
    }
}

fn dispatch(ctx: &Ctx, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Init(args) => init::run(ctx, args),
        Command::User(cmd) => user::run_user(ctx, cmd),
        Command::Mfa(cmd) => user::run_mfa(ctx, cmd),
        Command::Role(cmd) => policy::run_role(ctx, cmd),
        Command::Policy(cmd) => policy::run_policy(ctx, cmd),
        Command::Assign(args) => assign::run_assign(ctx, args),
        Command::Unassign(args) => assign::run_unassign(ctx, args),
        Command::Assignment(cmd) => assign::run_assignment(ctx, cmd),
        Command::Activate(args) => activate::run_activate(ctx, args),
        Command::Deactivate(args) => activate::run_deactivate(ctx, args),
        Command::Exec(args) => activate::run_exec(ctx, args),
        Command::Status(args) => activate::run_status(ctx, args),
        Command::Check(args) => activate::run_check(ctx, args),
        Command::Request(cmd) => activate::run_request(ctx, cmd),
        Command::Approve(args) => {
            activate::run_decide(ctx, args.id, true, args.justification, args.code)
        }
        Command::Deny(args) => {
            activate::run_decide(ctx, args.id, false, args.justification, args.code)
        }
        Command::Cancel(args) => activate::run_cancel(ctx, args),
        Command::Extend(args) => activate::run_extend(ctx, args),
        Command::Revoke(args) => activate::run_revoke(ctx, args),
        Command::Audit(cmd) => audit::run(ctx, cmd),
        Command::Sweep => audit::run_sweep(ctx),
        Command::Store(cmd) => store::run(ctx, cmd),
        Command::Whoami => doctor::run_whoami(ctx),
        Command::Doctor => doctor::run_doctor(ctx),
        Command::Receipt(args) => audit::run_receipt(ctx, args),
        Command::WhoCould { role, scope, at } => {
            let (pim, actor) = ctx.open()?;
            let viewer = match pim.viewer(&actor) {
                Ok(v) => Some(v),
                Err(_) if crate::privilege::real_uid() == 0 => None,
                Err(e) => return Err(e.into()),
            };
            let at = match at {
                Some(t) => crate::time::parse_instant(&t)?.timestamp(),
                None => pim.now().timestamp(),
            };
            let policy = pim.policy()?;
            let key = policy.role(&role).map(|r| r.key.clone()).unwrap_or(role);
            let scope = scope
                .as_deref()
                .map(crate::scope::Scope::parse)
                .transpose()?;
            let snap = pim.replay_at(viewer.as_ref(), at)?;
            audit::show_snapshot(ctx, &snap, Some(&key), scope.as_ref())?;
            Ok(0)
        }
        Command::Notification(cmd) => audit::run_notification(ctx, cmd),
        Command::Review(cmd) => review::run(ctx, cmd),
        Command::Alerts { fail_on } => review::run_alerts(ctx, fail_on),
        Command::Completions { shell } => completions(shell),
        Command::Man { output } => man_pages(ctx, &output),
    }
}

fn completions(shell: clap_complete::Shell) -> anyhow::Result<i32> {
    use clap::CommandFactory;
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "pim", &mut buf);
    output::data(&String::from_utf8_lossy(&buf))?;
    Ok(0)
}

/// One page for pim and one for each subcommand (`pim-assignment-import.1`, ...), written
/// with the caller's own rights.
fn man_pages(ctx: &Ctx, dir: &std::path::Path) -> anyhow::Result<i32> {
    use clap::CommandFactory;
    use std::io::Write;
    crate::privilege::create_dir_all(dir)
        .map_err(|e| crate::Error::Environment(format!("Cannot create {}: {e}.", dir.display())))?;
    let mut written = 0;
    fn walk(
        cmd: &clap::Command,
        prefix: &str,
        dir: &std::path::Path,
        written: &mut usize,
    ) -> anyhow::Result<()> {
        let name = if prefix.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        let page = cmd.clone().name(name.clone());
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        let path = dir.join(format!("{name}.1"));
        crate::privilege::create_output(&path, &[])
            .and_then(|mut f| f.write_all(&buf))
            .map_err(|e| crate::Error::Environment(format!("Cannot write {e}.")))?;
        *written += 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &name, dir, written)?;
        }
        Ok(())
    }
    let mut cmd = Cli::command();
    cmd.build();
    walk(&cmd, "", dir, &mut written)?;
    ctx.note(&format!("Wrote {written} man pages to {}.", dir.display()));
    Ok(0)
}
