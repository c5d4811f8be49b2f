//! The command line: the only place that parses arguments, reads the environment and the
//! terminal, prompts, and draws tables or JSON. One file per command group, one dispatch.

mod activate;
mod assign;
mod audit;
mod complete;
mod context;
mod doctor;
mod init;
mod lease;
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
    // (its value not shown in --help: a server's URL may hold a password)
    #[arg(
        long,
        global = true,
        env = "PIM_DB",
        hide_env_values = true,
        value_name = "PATH"
    )]
    db: Option<PathBuf>,
    /// Act as another principal (only root or the database file's owner may)
    #[arg(
        long = "as",
        global = true,
        env = "PIM_USER",
        hide_env_values = true,
        value_name = "NAME"
    )]
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

/// A command's flags (or its own subcommands), built only when clap enters that command
/// (`Command::defer`): pim does not build the flags of thirty commands to run one (that was
/// a third of a millisecond of every command's start). What describes every command at
/// once (completions, man pages) asks for the whole tree: `whole_command`.
#[derive(Debug)]
struct Lazy<T>(T);

/// Whether `Lazy` builds at once (set by `whole_command`).
static EAGER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Every command with every flag, built now: for completions, man pages and tests.
fn whole_command() -> clap::Command {
    use clap::CommandFactory;
    EAGER.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

/// `augment` applied to `cmd` now (`whole_command`) or when clap enters `cmd`.
fn lazily(cmd: clap::Command, augment: fn(clap::Command) -> clap::Command) -> clap::Command {
    if EAGER.load(std::sync::atomic::Ordering::Relaxed) {
        augment(cmd)
    } else {
        cmd.defer(augment)
    }
}

impl<T: clap::FromArgMatches> clap::FromArgMatches for Lazy<T> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Lazy)
    }
    fn from_arg_matches_mut(matches: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(matches).map(Lazy)
    }
    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }
    fn update_from_arg_matches_mut(
        &mut self,
        matches: &mut clap::ArgMatches,
    ) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(matches)
    }
}

impl<T: clap::Args> clap::Args for Lazy<T> {
    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }
    fn augment_args(cmd: clap::Command) -> clap::Command {
        lazily(cmd, T::augment_args)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        lazily(cmd, T::augment_args_for_update)
    }
}

impl<T: Subcommand> Subcommand for Lazy<T> {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        lazily(cmd, T::augment_subcommands)
    }
    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        lazily(cmd, T::augment_subcommands_for_update)
    }
    fn has_subcommand(name: &str) -> bool {
        T::has_subcommand(name)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database, load the policy and make the break-glass administrator
    Init(Lazy<init::InitArgs>),
    /// Add, list, show, disable and enable users
    #[command(subcommand)]
    User(Lazy<user::UserCommand>),
    /// Enrol or reset TOTP authenticators
    #[command(subcommand)]
    Mfa(Lazy<user::MfaCommand>),
    /// Roles with their effective settings and holders
    #[command(subcommand)]
    Role(Lazy<policy::RoleCommand>),
    /// Validate, apply or export the policy
    #[command(subcommand)]
    Policy(Lazy<policy::PolicyCommand>),
    /// Make a user eligible for (or active in) a role
    Assign(Lazy<assign::AssignArgs>),
    /// Remove an assignment, ending the activations that rest on it
    Unassign(Lazy<assign::UnassignArgs>),
    /// Assignments: list them, import them from CSV, or apply a declared state from TOML
    #[command(subcommand)]
    Assignment(Lazy<assign::AssignmentCommand>),
    /// Activate a role you are eligible for
    Activate(Lazy<activate::ActivateArgs>),
    /// End your activation now
    Deactivate(Lazy<activate::DeactivateArgs>),
    /// Run a command with a role held, then give it back; exit with the command's code
    Exec(Lazy<activate::ExecArgs>),
    /// Your (or USER's) eligible roles, active roles and open requests
    Status(Lazy<activate::StatusArgs>),
    /// Exit 0 if USER holds ROLE covering the scope right now, 1 if not
    Check(Lazy<activate::CheckArgs>),
    /// Activation requests
    #[command(subcommand)]
    Request(Lazy<activate::RequestCommand>),
    /// Approve a pending request (never your own); approvers give a TOTP code
    Approve(Lazy<activate::DecideArgs>),
    /// Deny a pending request, with a reason
    Deny(Lazy<activate::DenyArgs>),
    /// Withdraw your own pending or scheduled request
    Cancel(Lazy<activate::IdArgs>),
    /// Move the end of your running activation to now + D, under the activation rules
    Extend(Lazy<activate::ExtendArgs>),
    /// End someone's activation now (permission `assign`)
    Revoke(Lazy<activate::RevokeArgs>),
    /// The audit log: list, export, verify
    #[command(subcommand)]
    Audit(Lazy<audit::AuditCommand>),
    /// Record expirations and starts in the audit log, time out stale requests, send
    /// reminders and retry notifications (safe to run from cron, any number of times)
    Sweep,
    /// Access reviews: who still needs what
    #[command(subcommand)]
    Review(Lazy<review::ReviewCommand>),
    /// Security alerts: protected-role holders, break-glass, MFA, standing and unused access
    Alerts {
        /// Exit 1 when any alert is at or above this severity
        #[arg(long, value_parser = ["info", "warning", "critical"], value_name = "SEVERITY")]
        fail_on: Option<String>,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell)
    #[command(
        long_about = "Print static shell completions (commands and flags).",
        after_long_help = "Completions that also offer roles, users, scopes and request ids from your database \
are dynamic: add one line to your shell's startup file.\n\n  bash:  echo 'source <(COMPLETE=bash pim)' >> ~/.bashrc\n  zsh:   echo 'source <(COMPLETE=zsh pim)' >> ~/.zshrc\n  fish:  echo 'COMPLETE=fish pim | source' >> ~/.config/fish/completions/pim.fish\n\nStatic ones (no database needed): pim completions bash > /etc/bash_completion.d/pim"
    )]
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (pim.1 and one per subcommand) into DIR
    Man {
        /// The directory to write the pages into
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
    },
    /// The notification outbox and its deliveries
    #[command(subcommand)]
    Notification(Lazy<audit::NotificationCommand>),
    /// Who could activate or held ROLE (at a scope, at an instant), replayed from the log
    /// (permission `audit`)
    WhoCould {
        /// Role key or display name
        #[arg(add = clap_complete::ArgValueCandidates::new(complete::roles))]
        role: String,
        /// Only holders covering this scope
        #[arg(long)]
        #[arg(add = clap_complete::ArgValueCandidates::new(complete::scopes))]
        scope: Option<String>,
        /// The instant (RFC 3339 or YYYY-MM-DD); default: now
        #[arg(long, value_name = "T")]
        at: Option<String>,
    },
    /// A verifiable receipt of one activation (its events, proven in a signed checkpoint),
    /// or `receipt verify FILE --key KEY` offline
    Receipt(Lazy<audit::ReceiptArgs>),
    /// Who pim takes you to be: OS account, principal, database, MFA, active roles
    Whoami,
    /// Check the install (database, permissions, schema, sweep, notifications, witnesses,
    /// keys, the counts `role list` shows); each problem with the command that fixes it;
    /// exit 1 on a problem
    Doctor,
    /// The database itself: copy a SQLite file into PostgreSQL
    #[command(subcommand)]
    Store(Lazy<store::StoreCommand>),
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
    // `COMPLETE=bash pim`: the shell's registration script, or (`pim -- pim activate ...`)
    // the candidates of one completion; then the process ends here. Only in those two
    // shapes: `COMPLETE=bash pim check ...` is still a check (a set variable must never turn
    // a gate's "not held" into a printed script and exit 0).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 1 || args.get(1).is_some_and(|a| a == "--") {
        clap_complete::CompleteEnv::with_factory(whole_command).complete();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            // --help and --version are not errors; clap picks 0 or 2.
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
            } else {
                // clap quotes the argument it could not take as it was given: escaped here,
                // as every other message is (a request id out of a script could hold
                // anything).
                let text = e.render().to_string();
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    output::safe_lines(&text).as_bytes(),
                );
            }
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
        Command::Status(Lazy(a)) => a.is_short(),
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
        Command::Init(Lazy(args)) => init::run(ctx, args),
        Command::User(Lazy(cmd)) => user::run_user(ctx, cmd),
        Command::Mfa(Lazy(cmd)) => user::run_mfa(ctx, cmd),
        Command::Role(Lazy(cmd)) => policy::run_role(ctx, cmd),
        Command::Policy(Lazy(cmd)) => policy::run_policy(ctx, cmd),
        Command::Assign(Lazy(args)) => assign::run_assign(ctx, args),
        Command::Unassign(Lazy(args)) => assign::run_unassign(ctx, args),
        Command::Assignment(Lazy(cmd)) => assign::run_assignment(ctx, cmd),
        Command::Activate(Lazy(args)) => activate::run_activate(ctx, args),
        Command::Deactivate(Lazy(args)) => activate::run_deactivate(ctx, args),
        Command::Exec(Lazy(args)) => activate::run_exec(ctx, args),
        Command::Status(Lazy(args)) => activate::run_status(ctx, args),
        Command::Check(Lazy(args)) => activate::run_check(ctx, args),
        Command::Request(Lazy(cmd)) => activate::run_request(ctx, cmd),
        Command::Approve(Lazy(args)) => {
            activate::run_decide(ctx, args.id, true, args.justification, args.code)
        }
        Command::Deny(Lazy(args)) => {
            activate::run_decide(ctx, args.id, false, args.justification, args.code)
        }
        Command::Cancel(Lazy(args)) => activate::run_cancel(ctx, args),
        Command::Extend(Lazy(args)) => activate::run_extend(ctx, args),
        Command::Revoke(Lazy(args)) => activate::run_revoke(ctx, args),
        Command::Audit(Lazy(cmd)) => audit::run(ctx, cmd),
        Command::Sweep => audit::run_sweep(ctx),
        Command::Store(Lazy(cmd)) => store::run(ctx, cmd),
        Command::Whoami => doctor::run_whoami(ctx),
        Command::Doctor => doctor::run_doctor(ctx),
        Command::Receipt(Lazy(args)) => audit::run_receipt(ctx, args),
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
        Command::Notification(Lazy(cmd)) => audit::run_notification(ctx, cmd),
        Command::Review(Lazy(cmd)) => review::run(ctx, cmd),
        Command::Alerts { fail_on } => review::run_alerts(ctx, fail_on),
        Command::Completions { shell } => completions(shell),
        Command::Man { output } => man_pages(ctx, &output),
    }
}

fn completions(shell: clap_complete::Shell) -> anyhow::Result<i32> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut whole_command(), "pim", &mut buf);
    output::data(&String::from_utf8_lossy(&buf))?;
    Ok(0)
}

/// Examples for a man page (`pim-activate`): what a person would type.
fn examples(page: &str) -> &'static [&'static str] {
    match page {
        "pim" => &[
            "pim init --admin alice",
            "pim --as alice user add bob",
            "pim --as alice assign bob db-admin --scope /prod -j 'on-call rota'",
            "pim activate",
            "pim status --short",
        ],
        "pim-init" => &["pim init --admin alice --policies policies.toml"],
        "pim-user-add" => &[
            "pim user add bob --email bob@example.com",
            "pim user add ci-deploy --service",
        ],
        "pim-user-token" => &["pim user token ci-deploy --rotate"],
        "pim-user-list" => &["pim user list", "pim user list --json"],
        "pim-user-show" => &["pim user show bob"],
        "pim-user-disable" => &["pim user disable bob"],
        "pim-user-enable" => &["pim user enable bob"],
        "pim-mfa-enroll" => &[
            "pim mfa enroll",
            "pim mfa enroll --json && pim mfa confirm --code 123456",
            "pim mfa enroll bob",
        ],
        "pim-mfa-confirm" => &["pim mfa confirm --code 123456"],
        "pim-mfa-reset" => &["pim mfa reset bob"],
        "pim-role-list" => &["pim role list"],
        "pim-role-show" => &["pim role show db-admin"],
        "pim-policy-validate" => &["pim policy validate policies.toml"],
        "pim-policy-apply" => &[
            "pim policy apply policies.toml --dry-run",
            "pim policy apply policies.toml",
        ],
        "pim-policy-export" => &["pim policy export > policies.toml"],
        "pim-assign" => &[
            "pim assign bob db-admin --scope /prod -j 'on-call rota' --duration 90d",
            "pim assign ci-deploy deployer --active --permanent -j 'pipeline'",
        ],
        "pim-unassign" => &["pim unassign bob db-admin --scope /prod"],
        "pim-assignment-list" => &[
            "pim assignment list --user bob",
            "pim assignment list --role db-admin --json",
        ],
        "pim-assignment-import" => &["pim assignment import assignments.csv --dry-run"],
        "pim-assignment-apply" => &[
            "pim assignment apply assignments.toml --dry-run",
            "pim assignment apply assignments.toml --prune",
        ],
        "pim-activate" => &[
            "pim activate",
            "pim activate db-admin -j 'INC-4242 replica lag'",
            "pim activate db-admin --scope /prod --duration 1h --code 123456 -j 'CHG-77'",
            "pim activate auditor --wait 30m -j 'quarterly audit'",
        ],
        "pim-deactivate" => &["pim deactivate db-admin"],
        "pim-exec" => &["pim exec db-admin --scope /prod -j 'INC-4242' -- psql -h db1"],
        "pim-status" => &["pim status", "pim status --short", "pim status bob"],
        "pim-check" => &["pim check bob db-admin --scope /prod/db1 -q && echo held"],
        "pim-request-list" => &[
            "pim request list",
            "pim request list --pending",
            "pim request list --all --json",
        ],
        "pim-request-show" => &["pim request show 42"],
        "pim-approve" => &["pim approve 42 -j 'matches INC-4242'"],
        "pim-deny" => &["pim deny 42 -j 'not during the freeze'"],
        "pim-cancel" => &["pim cancel 42"],
        "pim-extend" => &["pim extend db-admin --duration 1h -j 'still on it'"],
        "pim-revoke" => &["pim revoke 42 -j 'left the incident'"],
        "pim-audit-list" => &["pim audit list --since 2026-12-01 --user bob"],
        "pim-audit-export" => &[
            "pim audit export --output audit.csv",
            "pim audit export --format jsonl --since 2026-11-01",
        ],
        "pim-audit-verify" => &[
            "pim audit verify",
            "pim audit verify --checkpoint witness.log --state",
        ],
        "pim-audit-checkpoint" => &["pim audit checkpoint >> /srv/witness/pim.log"],
        "pim-audit-key" => &["pim audit key > pim.vkey"],
        "pim-audit-prove-consistency" => &["pim audit prove-consistency --from 1000"],
        "pim-audit-replay" => &["pim audit replay --at 2026-11-30T22:00:00Z"],
        "pim-sweep" => &["pim sweep"],
        "pim-review-create" => &[
            "pim review create --role db-admin --reviewer alice --every quarterly --name 'Q4 DBAs'",
        ],
        "pim-review-list" => &["pim review list"],
        "pim-review-show" => &["pim review show 3"],
        "pim-review-decide" => &["pim review decide 3 bob keep -j 'on call'"],
        "pim-review-complete" => &["pim review complete 3", "pim review complete 3 --yes"],
        "pim-review-export" => &["pim review export 3 --output review-3.csv"],
        "pim-alerts" => &["pim alerts", "pim alerts --fail-on critical"],
        "pim-completions" => &[
            "pim completions bash > /etc/bash_completion.d/pim",
            "source <(COMPLETE=bash pim)",
        ],
        "pim-man" => &["pim man --output /usr/local/share/man/man1"],
        "pim-notification-list" => &["pim notification list --failed"],
        "pim-who-could" => &["pim who-could db-admin --scope /prod --at 2026-11-30T22:00:00Z"],
        "pim-receipt" => &[
            "pim receipt 42 --output receipt-42.json",
            "pim receipt verify receipt-42.json --key pim.vkey",
        ],
        "pim-receipt-verify" => &["pim receipt verify receipt-42.json --key pim.vkey"],
        "pim-store-copy" => {
            &["pim store copy --from pim.db --to postgres://pim@db.example.com/pim"]
        }
        "pim-store-bind-key" => &["pim store bind-key --db postgres://pim@db2.example.com/pim"],
        "pim-store-grant" => &["pim store grant --help"],
        "pim-store-recount" => &[
            "pim doctor",
            "pim store recount --db postgres://owner@db.example.com/pim",
        ],
        "pim-whoami" => &["pim whoami", "pim --as alice whoami --json"],
        "pim-doctor" => &["pim doctor", "sudo pim doctor --json"],
        _ => &[],
    }
}

/// The EXAMPLES and EXIT STATUS sections of a man page, in roff.
fn man_sections(page: &str) -> String {
    let roff = |text: &str| text.replace('\\', "\\e").replace('-', "\\-");
    let mut out = String::new();
    let examples = examples(page);
    if !examples.is_empty() {
        out.push_str(".SH EXAMPLES\n");
        for e in examples {
            out.push_str(&format!(".PP\n.nf\n.RS 4\n{}\n.RE\n.fi\n", roff(e)));
        }
    }
    out.push_str(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in [
        ("0", "done (for check: the role is held)"),
        ("1", "an error of the environment: database missing or unreadable, I/O (for check: not held; for audit verify and doctor: a problem found)"),
        ("2", "bad usage or input: unknown flag, bad duration, invalid policy or import file"),
        ("3", "refused: not permitted, not eligible, MFA failed or locked, a policy requirement not met"),
        ("4", "not found: unknown user, role or request"),
        ("5", "conflict with the current state: already active, already decided, duplicate"),
    ] {
        out.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", roff(meaning)));
    }
    out
}

/// One page for pim and one for each subcommand (`pim-assignment-import.1`, ...), written
/// with the caller's own rights.
fn man_pages(ctx: &Ctx, dir: &std::path::Path) -> anyhow::Result<i32> {
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
        let man = clap_mangen::Man::new(page);
        man.render_title(&mut buf)?;
        man.render_name_section(&mut buf)?;
        man.render_synopsis_section(&mut buf)?;
        man.render_description_section(&mut buf)?;
        if cmd.get_arguments().any(|a| !a.is_hide_set()) {
            man.render_options_section(&mut buf)?;
        }
        if cmd.has_subcommands() {
            man.render_subcommands_section(&mut buf)?;
        }
        buf.extend_from_slice(man_sections(&name).as_bytes());
        man.render_version_section(&mut buf)?;
        let path = dir.join(format!("{name}.1"));
        crate::privilege::create_output(&path, &crate::privilege::Protected::none())
            .and_then(|mut f| f.write_all(&buf))
            .map_err(|e| crate::Error::Environment(format!("Cannot write {e}.")))?;
        *written += 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &name, dir, written)?;
        }
        Ok(())
    }
    walk(&whole_command(), "", dir, &mut written)?;
    ctx.note(&format!("Wrote {written} man pages to {}.", dir.display()));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::whole_command;

    /// A command's flags are built when clap enters it; what describes every command at
    /// once still sees them all, down to `pim help assignment import`.
    #[test]
    fn completions_and_man_pages_see_every_command() {
        let cmd = whole_command();
        let import = |cmd: &clap::Command| {
            cmd.find_subcommand("assignment")
                .and_then(|a| a.find_subcommand("import"))
                .map(|i| {
                    i.get_arguments()
                        .map(|a| a.get_id().to_string())
                        .collect::<Vec<_>>()
                })
        };
        let flags = import(&cmd).expect("assignment import");
        assert!(flags.iter().any(|f| f == "dry_run"), "{flags:?}");
        let help = cmd.find_subcommand("help").unwrap();
        assert!(help
            .find_subcommand("assignment")
            .and_then(|a| a.find_subcommand("import"))
            .is_some());
        assert!(cmd
            .find_subcommand("status")
            .unwrap()
            .get_arguments()
            .any(|a| a.get_long() == Some("short")));
    }

    /// Every command and every flag or argument says what it is for in `--help`.
    #[test]
    fn every_flag_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let here = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
                missing.push(format!("{here} (the command)"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" || arg.is_global_set() && !path.is_empty() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{here} {id}"));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&whole_command(), "", &mut missing);
        assert!(missing.is_empty(), "undescribed:\n{}", missing.join("\n"));
    }
}
