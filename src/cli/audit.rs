//! `pim audit list|export|verify` and `pim sweep`.

use super::context::{Ctx, Withheld};
use super::output::{json, out, say, table};
use crate::audit::{spreadsheet_safe, EventRef, Filter, COLUMNS};
use crate::error::Error;
use crate::time::parse_instant;
use clap::{Args, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Events at or after T
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// Events before T
    #[arg(long, value_name = "T")]
    until: Option<String>,
    /// Events done by U
    #[arg(long, value_name = "U")]
    actor: Option<String>,
    /// Events about U
    #[arg(long, value_name = "U")]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
    user: Option<String>,
    /// Events about role R
    #[arg(long, value_name = "R")]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::roles))]
    role: Option<String>,
    /// Events of action A (`activation.*` for a family)
    #[arg(long, value_name = "A")]
    action: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recent audit events (all with permission `audit`, otherwise your own)
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// How many of the newest events
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: usize,
    },
    /// The audit log, streamed, for auditors (permission `audit`)
    Export {
        /// csv (spreadsheet-safe) or jsonl (one event per line)
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// Write to FILE instead of stdout
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Check the whole hash chain (and, with --checkpoint, that the log extends each signed
    /// checkpoint): exit 0 and the head hash, or 1 naming the first bad event
    Verify {
        /// A signed checkpoint (from `pim audit checkpoint`) the log must extend; repeat for
        /// several. Truncation, rewriting or a fork of what one covers is found.
        #[arg(long, value_name = "FILE")]
        checkpoint: Vec<PathBuf>,
        /// Also replay the log and compare it with the state: any user, assignment, request
        /// or decision no event explains, or that differs from its events, is named
        #[arg(long)]
        state: bool,
    },
    /// Print a signed checkpoint of the log (C2SP tlog-checkpoint as a signed note):
    /// keep it where the database's owner cannot write (permission `audit`)
    Checkpoint {
        /// Write to FILE instead of stdout
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print the key that verifies this log's checkpoints (signed-note verifier key)
    Key,
    /// Who held and who was eligible for what at an instant, replayed from the log alone
    /// (permission `audit`)
    Replay {
        /// The instant (RFC 3339 or YYYY-MM-DD); default: now
        #[arg(long, value_name = "T")]
        at: Option<String>,
    },
    /// Print the RFC 9162 consistency proof that the log of --to events extends the log of
    /// --from events (JSON: sizes, roots and proof, base64)
    ProveConsistency {
        /// The size of the older log (a checkpoint's tree size)
        #[arg(long, value_name = "SIZE")]
        from: u64,
        /// Default: the log as it stands
        #[arg(long, value_name = "SIZE")]
        to: Option<u64>,
    },
}

fn filter(pim: &crate::Pim, f: FilterArgs) -> anyhow::Result<Filter> {
    let policy = pim.policy()?;
    Ok(Filter {
        since: f.since.as_deref().map(parse_instant).transpose()?,
        until: f.until.as_deref().map(parse_instant).transpose()?,
        actor: f.actor,
        user: f.user,
        // A display name finds the role's key; an unknown name may be a removed role.
        role: f
            .role
            .map(|r| policy.role(&r).map(|x| x.key.clone()).unwrap_or(r)),
        action: f.action,
        involving: None,
        request: None,
    })
}

/// One event as JSON, `details` as the object it is (written through, not re-encoded).
#[derive(serde::Serialize)]
struct JsonEvent<'a> {
    seq: i64,
    time: &'a str,
    actor: &'a str,
    action: &'a str,
    principal: Option<&'a str>,
    role: Option<&'a str>,
    scope: Option<&'a str>,
    request: Option<i64>,
    justification: Option<&'a str>,
    ticket: Option<&'a str>,
    expires: Option<&'a str>,
    result: &'a str,
    details: Box<serde_json::value::RawValue>,
    prev_hash: &'a str,
    hash: &'a str,
}

fn json_event<'a>(e: &EventRef<'a>) -> JsonEvent<'a> {
    // A stored details text that is not JSON (only after tampering) is shown as a string.
    let details = serde_json::value::RawValue::from_string(e.details.to_string())
        .unwrap_or_else(|_| serde_json::value::to_raw_value(e.details).unwrap_or_default());
    JsonEvent {
        seq: e.seq,
        time: e.time,
        actor: e.actor,
        action: e.action,
        principal: e.principal,
        role: e.role,
        scope: e.scope,
        request: e.request,
        justification: e.justification,
        ticket: e.ticket,
        expires: e.expires,
        result: e.result,
        details,
        prev_hash: e.prev_hash,
        hash: e.hash,
    }
}

pub fn run(ctx: &Ctx, cmd: AuditCommand) -> anyhow::Result<i32> {
    let (pim, actor) = ctx.open()?;
    // Reads need a reason: a pim user (root may verify the chain without being one).
    let viewer = match (&cmd, pim.viewer(&actor)) {
        (_, Ok(v)) => Some(v),
        (
            AuditCommand::Verify { .. } | AuditCommand::Checkpoint { .. } | AuditCommand::Key,
            Err(_),
        ) if crate::privilege::real_uid() == 0 => None,
        (_, Err(e)) => return Err(e.into()),
    };
    match cmd {
        AuditCommand::List { filter: f, limit } => {
            let f = filter(&pim, f)?;
            let viewer = viewer
                .as_ref()
                .ok_or_else(|| Error::Refused("Reading the audit log needs a pim user.".into()))?;
            let mut events = Vec::new();
            let own = pim.audit_seen_by(viewer, f, Some(limit), |e| {
                events.push(e);
                Ok(())
            })?;
            if own {
                ctx.note(
                    "Showing your own events only (the full log needs the 'audit' permission).",
                );
            }
            if ctx.json {
                return json(
                    &events
                        .iter()
                        .map(|e| json_event(&e.borrowed()))
                        .collect::<Vec<_>>(),
                )
                .map(|_| 0);
            }
            let mut t = table(&[
                "seq",
                "time",
                "actor",
                "action",
                "principal",
                "role",
                "scope",
                "result",
            ]);
            for e in &events {
                let local = crate::time::parse_instant(&e.time)
                    .map(|t| super::output::when_precise(t.timestamp(), pim.now()))
                    .unwrap_or_else(|_| e.time.clone());
                t.add_row(vec![
                    e.seq.to_string(),
                    local,
                    e.actor.clone(),
                    e.action.clone(),
                    e.principal.clone().unwrap_or_default(),
                    e.role.clone().unwrap_or_default(),
                    e.scope.clone().unwrap_or_default(),
                    e.result.clone(),
                ]);
            }
            out(&t.to_string())?;
        }
        AuditCommand::Export {
            format,
            output,
            filter: f,
        } => {
            let viewer = viewer
                .as_ref()
                .ok_or_else(|| Error::Refused("Reading the audit log needs a pim user.".into()))?;
            let f = filter(&pim, f)?;
            // Refused before any output file is made.
            pim.may_export_audit(viewer)?;
            let terminal = output.is_none() && std::io::stdout().is_terminal();
            let sink: Box<dyn Write> = match &output {
                Some(path) => Box::new(
                    crate::privilege::create_output(path, &ctx.protected())
                        .map_err(|e| Error::Environment(format!("Cannot write {e}.")))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let sink = std::io::BufWriter::with_capacity(64 * 1024, sink);
            export(
                |each| pim.audit_export_for(viewer, &f, each),
                format,
                sink,
                terminal,
            )?;
            if let Some(path) = output {
                ctx.note(&format!("Wrote {}.", path.display()));
            }
        }
        AuditCommand::Checkpoint { output } => {
            drop(pim);
            let (mut pim, _) = ctx.open()?;
            let note = pim.checkpoint(viewer.as_ref())?;
            match output {
                Some(path) => {
                    use std::io::Write;
                    let mut f = crate::privilege::create_output(&path, &ctx.protected())
                        .map_err(|e| Error::Environment(format!("Cannot write {e}.")))?;
                    f.write_all(note.as_bytes())?;
                    ctx.note(&format!("Wrote {}.", path.display()));
                }
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(note.as_bytes())?;
                }
            }
        }
        AuditCommand::Key => {
            out(&pim.verifier_key()?)?;
        }
        AuditCommand::Replay { at } => {
            let at = match at {
                Some(t) => parse_instant(&t)?.timestamp(),
                None => pim.now().timestamp(),
            };
            let snap = pim.replay_at(viewer.as_ref(), at)?;
            show_snapshot(ctx, &snap, None, None)?;
        }
        AuditCommand::ProveConsistency { from, to } => {
            drop(pim);
            let (mut pim, _) = ctx.open()?;
            let proof = pim.prove_consistency(viewer.as_ref(), from, to)?;
            json(&proof)?;
        }
        AuditCommand::Verify { checkpoint, state } => {
            let mut notes = Vec::new();
            for path in &checkpoint {
                let bytes = crate::privilege::read_all(path, 64 * 1024).map_err(|e| {
                    Error::Environment(format!("Cannot read {}: {e}.", path.display()))
                })?;
                notes.push((
                    path.display().to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
            let v = if notes.is_empty() {
                pim.verify_audit()?
            } else {
                pim.verify_audit_against(&notes)?
            };
            if state && v.ok {
                let findings = pim.verify_state()?;
                if !findings.is_empty() {
                    if ctx.json {
                        json(&serde_json::json!({
                            "ok": false,
                            "events": v.events,
                            "state": findings,
                        }))?;
                    } else {
                        for f in &findings {
                            super::output::note(&format!(
                                "pim: the state does not match the log: {f}."
                            ));
                        }
                    }
                    return Ok(1);
                }
            }
            if ctx.json {
                json(&v)?;
            } else if v.ok {
                let against = match v.checkpoints {
                    0 => String::new(),
                    n => format!("; it extends the {n} signed checkpoint(s) given"),
                };
                say(&format!(
                    "The audit chain holds: {} events, head {}, Merkle root {}{against}.",
                    v.events,
                    v.head.clone().unwrap_or_default(),
                    v.root.clone().unwrap_or_default()
                ))?;
            } else if let Some(seq) = v.bad_seq {
                super::output::note(&format!(
                    "pim: the audit log fails at event {seq}: {}. Events from there on cannot be trusted; restore the database from a backup and investigate.",
                    v.reason.clone().unwrap_or_default(),
                ));
            } else {
                super::output::note(&format!("pim: {}", v.reason.clone().unwrap_or_default()));
            }
            return Ok(if v.ok { 0 } else { 1 });
        }
    }
    Ok(0)
}

/// Stream the events to `sink`, one row at a time. Values are exact (JSONL writes unsafe
/// characters as JSON escapes); on a `terminal`, CSV cells are shown escaped.
pub fn export(
    events: impl FnOnce(&mut dyn FnMut(&EventRef<'_>) -> crate::Result<()>) -> crate::Result<()>,
    format: Format,
    mut sink: impl Write,
    terminal: bool,
) -> anyhow::Result<()> {
    match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(sink);
            w.write_record(COLUMNS)?;
            let (mut seq, mut request) = (itoa::Buffer::new(), itoa::Buffer::new());
            events(&mut |e| {
                let o = Option::unwrap_or_default;
                let cells = [
                    seq.format(e.seq),
                    e.time,
                    e.actor,
                    e.action,
                    o(e.principal),
                    o(e.role),
                    o(e.scope),
                    e.request.map_or("", |r| request.format(r)),
                    o(e.justification),
                    o(e.ticket),
                    o(e.expires),
                    e.result,
                    e.details,
                    e.prev_hash,
                    e.hash,
                ];
                for cell in cells {
                    let cell = spreadsheet_safe(cell);
                    let cell = if terminal {
                        super::output::safe(&cell).into_owned().into()
                    } else {
                        cell
                    };
                    w.write_field(cell.as_bytes()).map_err(csv_error)?;
                }
                w.write_record(None::<&[u8]>).map_err(csv_error)?;
                Ok(())
            })?;
            w.flush()?;
        }
        Format::Jsonl => {
            let mut line = Vec::with_capacity(1024);
            events(&mut |e| {
                line.clear();
                serde_json::to_writer(&mut line, &json_event(e)).map_err(std::io::Error::from)?;
                match std::str::from_utf8(&line) {
                    Ok(text) if text.is_ascii() => sink.write_all(&line)?,
                    Ok(text) => {
                        sink.write_all(super::output::json_safe(text.to_string()).as_bytes())?
                    }
                    Err(_) => sink.write_all(&line)?,
                }
                sink.write_all(b"\n")?;
                Ok(())
            })?;
            sink.flush()?;
        }
    }
    Ok(())
}

fn csv_error(e: csv::Error) -> Error {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => Error::Io(io),
        other => Error::Environment(format!("Cannot write the CSV export: {other:?}.")),
    }
}

/// Why a sweep ran none of the commands its policy configures, and what to do.
fn withheld_note(why: Withheld) -> Option<&'static str> {
    match why {
        // Callers of the installed pim wait for root's sweep, as the README says.
        Withheld::NotOpen | Withheld::NotRoot => None,
        Withheld::AnotherAccount => Some("Note: this database belongs to another account: its notification and witness commands were not run (they run only for the account that owns it; its own `pim sweep` runs them)."),
        Withheld::OthersCanWrite => Some("Note: other accounts can change this database's files or create files beside it (a planted -wal would be read as this database), so its notification and witness commands were not run. Keep it in a directory only you can write (chmod go-w), with the file mode 0600."),
        Withheld::ForeignMount => Some("Note: this database is on a file system that another account mounted (FUSE, or through a mount helper: an fstab `user` entry, udisks2), or was read through another mount than its path names, so the owners and modes pim saw are not proof of whose it is and its notification and witness commands were not run. Keep it on a disk file system, or one that you or root mounted."),
        Withheld::Server => Some("Note: this server's notification and witness commands were not run: they run only for the account that delivers them, whose `pim sweep` names this server in PIM_RUN_COMMANDS (see README, Team mode)."),
    }
}

pub fn run_sweep(ctx: &Ctx) -> anyhow::Result<i32> {
    ctx.be_patient();
    let (mut pim, actor) = ctx.open()?;
    // Pim users and root (a system timer) sweep; strangers are refused.
    if crate::privilege::real_uid() != 0 {
        pim.viewer(&actor)?;
    }
    // Root's sweep first ends any stopped pim that holds the database (see `Ctx::open`).
    // Root's sweep keeps trying (each try waits 10 s for the lock), ends stopped and frozen
    // holders as it goes, and after a minute without getting in whoever holds the lock.
    let first = std::time::Instant::now();
    let report = loop {
        if crate::privilege::real_uid() == 0 {
            ctx.end_stuck_holders(&mut pim, first.elapsed() >= super::context::STUCK);
        }
        match pim.sweep(&actor) {
            Err(e)
                if e.is_locked()
                    && crate::privilege::real_uid() == 0
                    && first.elapsed() < super::context::GIVE_UP => {}
            other => break other?,
        }
    };
    // A signed checkpoint for the witnesses when the log grew (root's in the installed pim:
    // its file and command are root's; the owner's of any other database).
    if let Some(why) = ctx.commands_withheld() {
        let policy = pim.policy()?;
        let configured = policy.notifications.command.is_some()
            || policy.witness.command.is_some()
            || policy.witness.file.is_some();
        if let Some(note) = configured.then(|| withheld_note(why)).flatten() {
            ctx.note(note);
            if let (Withheld::Server, Some((url, _))) = (why, &ctx.server) {
                ctx.note(&format!(
                    "  That account runs: PIM_RUN_COMMANDS='{}' pim sweep",
                    crate::store::pg::describe(url)
                ));
            }
        }
    }
    let witnessed = if ctx.runs_commands() {
        pim.publish_checkpoint(&actor, &ctx.protected())?
    } else {
        None
    };
    let delivery = if ctx.delivers_for_everyone() {
        pim.deliver(
            &actor,
            crate::notify::Scope {
                only: None,
                commands: ctx.runs_commands(),
                budget: None,
            },
        )?
    } else {
        crate::notify::Delivery::default()
    };
    if ctx.json {
        json(&serde_json::json!({
            "started": report.started,
            "expired_activations": report.expired_activations,
            "expired_assignments": report.expired_assignments,
            "timed_out": report.timed_out,
            "reminded": report.reminded,
            "reviews_completed": report.reviews_completed,
            "reviews_started": report.reviews_started,
            "checkpoint_published": witnessed,
            "notifications": delivery,
        }))?;
    } else if !ctx.quiet {
        say(&format!(
            "Swept: {} activation(s) started, {} activation(s) and {} assignment(s) expired, {} request(s) timed out, {} reminder(s); notifications: {} sent, {} to retry, {} failed.",
            report.started.len(),
            report.expired_activations.len(),
            report.expired_assignments.len(),
            report.timed_out.len(),
            report.reminded.len(),
            delivery.sent.len(),
            delivery.retrying.len(),
            delivery.failed.len()
        ))?;
        if let Some(size) = witnessed {
            say(&format!(
                "A signed checkpoint of {size} events went to the witnesses."
            ))?;
        }
    }
    Ok(0)
}

#[derive(Debug, Subcommand)]
pub enum NotificationCommand {
    /// The outbox: what was sent, what waits for a retry, what was given up
    List {
        /// Only notifications given up after their last try
        #[arg(long)]
        failed: bool,
    },
}

pub fn run_notification(ctx: &Ctx, cmd: NotificationCommand) -> anyhow::Result<i32> {
    let NotificationCommand::List { failed } = cmd;
    let (pim, actor) = ctx.open()?;
    let viewer = pim.viewer(&actor)?;
    let list = pim.outbox_seen_by(&viewer, failed)?;
    if ctx.json {
        return json(&list).map(|_| 0);
    }
    if list.is_empty() {
        ctx.note("The outbox is empty.");
        return Ok(0);
    }
    let mut t = table(&[
        "id",
        "event",
        "channel",
        "recipients",
        "status",
        "tries",
        "next try",
        "last error",
    ]);
    for o in &list {
        t.add_row(vec![
            o.id.to_string(),
            o.event.clone(),
            o.channel.clone(),
            o.recipients.join(", "),
            o.status.clone(),
            o.attempts.to_string(),
            o.next_attempt.clone().unwrap_or_default(),
            o.last_error.clone().unwrap_or_default(),
        ]);
    }
    out(&t.to_string())?;
    Ok(0)
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReceiptArgs {
    #[command(subcommand)]
    command: Option<ReceiptCommand>,
    /// The activation request to make a receipt of (yours, or any with permission `audit`)
    #[arg(value_name = "REQUEST")]
    request: Option<i64>,
    /// Write to FILE instead of stdout
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum ReceiptCommand {
    /// Verify a receipt offline, without the database: exit 0, or 3 saying what fails
    Verify {
        /// The receipt (from `pim receipt REQUEST`)
        file: PathBuf,
        /// The log's verifier key (`pim audit key`), or a file holding it, from a place you
        /// trust
        #[arg(long, value_name = "KEY")]
        key: String,
    },
}

pub fn run_receipt(ctx: &Ctx, args: ReceiptArgs) -> anyhow::Result<i32> {
    if let Some(ReceiptCommand::Verify { file, key }) = args.command {
        crate::privilege::drop_for_good();
        let read = |path: &std::path::Path| -> anyhow::Result<String> {
            let bytes = crate::privilege::read_all(path, 16 * 1024 * 1024)
                .map_err(|e| Error::Environment(format!("Cannot read {}: {e}.", path.display())))?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        let key = if key.contains('+') {
            key
        } else {
            read(std::path::Path::new(&key))?
        };
        let v = crate::receipt::verify(&read(&file)?, &key)?;
        if ctx.json {
            json(&v)?;
        } else {
            let extensions: Vec<String> = v.extensions.iter().map(i64::to_string).collect();
            let also = match extensions.len() {
                0 => String::new(),
                1 => format!(" and its extension, request {}", extensions[0]),
                _ => format!(" and its extensions, requests {}", extensions.join(", ")),
            };
            say(&format!(
                "The receipt verifies: request {}{also}; {}, all in the signed checkpoint of {} events; policy sha256 {}.",
                v.request,
                match v.events {
                    1 => "1 event".to_string(),
                    n => format!("{n} events"),
                },
                v.tree_size,
                v.policy_sha256
            ))?;
        }
        return Ok(0);
    }
    let Some(id) = args.request else {
        return Err(Error::Usage(
            "Name the request: `pim receipt REQUEST` (or `pim receipt verify FILE --key KEY`)."
                .to_string(),
        )
        .into());
    };
    let (mut pim, actor) = ctx.open()?;
    let viewer = match pim.viewer(&actor) {
        Ok(v) => Some(v),
        Err(_) if crate::privilege::real_uid() == 0 => None,
        Err(e) => return Err(e.into()),
    };
    // What requesters wrote is in it: any character a terminal would act on as \uXXXX (the
    // same JSON, so it verifies the same).
    let receipt = super::output::json_safe(pim.receipt(viewer.as_ref(), id)?);
    match args.output {
        Some(path) => {
            let mut f = crate::privilege::create_output(&path, &ctx.protected())
                .map_err(|e| Error::Environment(format!("Cannot write {e}.")))?;
            f.write_all(receipt.as_bytes())?;
            ctx.note(&format!("Wrote {}.", path.display()));
        }
        None => std::io::stdout().write_all(receipt.as_bytes())?,
    }
    Ok(0)
}

/// A replayed snapshot as tables (or JSON), optionally of one role at a scope.
pub fn show_snapshot(
    ctx: &Ctx,
    snap: &crate::replay::Snapshot,
    role: Option<&str>,
    scope: Option<&crate::scope::Scope>,
) -> anyhow::Result<()> {
    let keep = |e: &&crate::replay::Entry| {
        role.is_none_or(|r| e.role == r)
            && scope.is_none_or(|s| crate::scope::Scope::parse(&e.scope).is_ok_and(|x| x.covers(s)))
    };
    let held: Vec<&crate::replay::Entry> = snap.held.iter().filter(keep).collect();
    let eligible: Vec<&crate::replay::Entry> = snap.eligible.iter().filter(keep).collect();
    if ctx.json {
        return json(&serde_json::json!({ "at": snap.at, "held": held, "eligible": eligible }));
    }
    let list = |title: &str, entries: &[&crate::replay::Entry]| {
        let mut t = table(&[title, "role", "scope", "source", "since", "until"]);
        for e in entries {
            t.add_row(vec![
                e.user.clone(),
                e.role.clone(),
                e.scope.clone(),
                e.source.clone(),
                e.since.clone(),
                e.until.clone().unwrap_or_else(|| "permanent".to_string()),
            ]);
        }
        t.to_string()
    };
    out(&format!(
        "As the log tells it, at {}:\n{}\n{}",
        snap.at,
        list("held by", &held),
        list("eligible", &eligible)
    ))?;
    Ok(())
}
