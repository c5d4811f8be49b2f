//! Bulk and declarative assignment for pipelines: a CSV import and a desired-state apply,
//! each checked whole before anything is written, then written in one transaction.

use super::assignments::{assign_in, check_texts, unknown_role_in, AssignInput, End};
use super::Recorder;
use super::{acting_user, users, Pim};
use crate::audit::Event;
use crate::error::{Error, Result};
use crate::model::{Kind, Status};
use crate::scope::Scope;
use crate::store::assignments::Current;
use crate::store::requests::Of;
use crate::store::Db;
use crate::time::{parse_duration, parse_instant};
use serde::Serialize;

/// One row of an import file, with its line for error messages.
#[derive(Debug, Clone, Default)]
pub struct ImportRow {
    pub line: usize,
    pub user: String,
    pub role: String,
    pub scope: String,
    pub kind: String,
    pub start: String,
    pub end: String,
    pub justification: String,
    pub ticket: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub added: usize,
    pub unchanged: usize,
    pub dry_run: bool,
}

/// An end as an import or apply file writes it: empty (the policy's longest), `permanent`, an
/// instant, or a duration from the start.
pub(crate) fn parse_end(text: &str) -> Result<End> {
    let t = text.trim();
    Ok(if t.is_empty() {
        End::PolicyMax
    } else if t == "permanent" {
        End::Permanent
    } else if let Ok(at) = parse_instant(t) {
        End::At(at)
    } else {
        End::After(parse_duration(t).map_err(|_| {
            Error::Usage(format!(
                "'{t}' is not an end: write an instant, a duration, permanent, or leave it empty."
            ))
        })?)
    })
}

/// How an import row asks for something else than `current`, the assignment it names: the
/// start or the end it states (an empty start or end states none; a duration counts from the
/// assignment's start). `None` when the row matches it.
fn differs(input: &AssignInput, current: &crate::store::assignments::Assignment) -> Option<String> {
    let at = |t: i64| crate::time::rfc3339(crate::time::from_unix(t));
    if let Some(start) = input.start.map(|s| s.timestamp()) {
        // `assign` starts a start up to a minute past at once: that one is the same start.
        let same = start == current.start_at
            || (start < current.start_at && current.start_at - start <= 60);
        if !same {
            return Some(format!(
                "it starts {}; the row starts it {}",
                at(current.start_at),
                at(start)
            ));
        }
    }
    let wanted = match input.end {
        End::PolicyMax => return None,
        End::Permanent => None,
        End::At(end) => Some(end.timestamp()),
        End::After(d) => Some(current.start_at.saturating_add(d.num_seconds())),
    };
    (wanted != current.end_at).then(|| {
        let now = match current.end_at {
            Some(e) => format!("it ends {}", at(e)),
            None => "it is permanent".to_string(),
        };
        let row = match (input.end, wanted) {
            (End::After(d), Some(e)) => format!(
                "the row ends it {} after its start ({})",
                crate::time::format_duration(d),
                at(e)
            ),
            (_, Some(e)) => format!("the row ends it {}", at(e)),
            (_, None) => "the row makes it permanent".to_string(),
        };
        format!("{now}; {row}")
    })
}

/// What identifies the assignment a row names (user, role, scope, type) within one file: 96
/// bits of its SHA-256, so that a file of a million rows costs a few tens of MB to check.
fn row_key(input: &AssignInput) -> [u8; 12] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        input.user.as_str(),
        input.role.as_str(),
        input.scope.as_str(),
        if input.active { "active" } else { "eligible" },
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let mut key = [0; 12];
    key.copy_from_slice(&h.finalize()[..12]);
    key
}

fn row_input(conn: &Db, policy: &crate::policy::Policy, row: &ImportRow) -> Result<AssignInput> {
    let role = policy
        .role(&row.role)
        .ok_or_else(|| unknown_role_in(policy, &row.role))?;
    let user = users::get(conn, row.user.trim())?;
    let scope = if row.scope.trim().is_empty() {
        Scope::root()
    } else {
        Scope::parse(row.scope.trim())?
    };
    let active = match row.kind.trim() {
        "eligible" => false,
        "active" => true,
        other => {
            return Err(Error::Usage(format!(
                "type '{other}' is not eligible or active."
            )))
        }
    };
    let start = match row.start.trim() {
        "" => None,
        t => Some(parse_instant(t)?),
    };
    let blank = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    let input = AssignInput {
        user: user.name,
        role: role.key.clone(),
        scope,
        active,
        start,
        end: parse_end(&row.end)?,
        justification: blank(&row.justification),
        ticket: blank(&row.ticket),
    };
    // Whether a row is good input does not depend on what the store holds already.
    check_texts(input.justification.as_deref(), input.ticket.as_deref())?;
    Ok(input)
}

/// What went wrong in a bulk change, row by row: bad input (exit 2, nothing recorded) and
/// refusals (exit 3: once everything else is rolled back, each refused row is recorded as
/// its own refused event, as `pim assign` records it).
#[derive(Default)]
struct Problems {
    lines: Vec<String>,
    total: usize,
    refused: Vec<Event>,
    refused_total: usize,
    /// Rows that name an assignment there already, asking for another one (exit 5 when
    /// nothing else went wrong).
    conflicts: usize,
}

/// `text` with its line breaks shown as `\n` and `\r`: one line of a list of problems.
fn one_line(text: &str) -> String {
    text.replace('\r', "\\r").replace('\n', "\\n")
}

/// The characters of one listed problem: a cell it quotes may be as long as the file.
const PROBLEM_CHARS: usize = 500;

/// `text`, cut after `PROBLEM_CHARS` characters.
fn clip(text: &str) -> String {
    match text.char_indices().nth(PROBLEM_CHARS) {
        Some((at, _)) => format!(
            "{}... (cut: {} characters)",
            &text[..at],
            text.chars().count()
        ),
        None => text.to_string(),
    }
}

/// At most this many problems are listed.
const SHOWN: usize = 1000;
/// At most this many refused rows of one command are recorded one by one (the rest are
/// counted in one more event).
const RECORDED: usize = 100;

impl Problems {
    fn note(&mut self, line: usize, e: &dyn std::fmt::Display) {
        self.total += 1;
        if self.lines.len() < SHOWN {
            // One line each: a line break in a value the problem quotes (a cell of the file)
            // must not start a line that reads as pim's own.
            let text = clip(&one_line(&e.to_string()));
            self.lines.push(if line > 0 {
                format!("line {line}: {text}")
            } else {
                text
            });
        }
    }

    /// A row's error: a refusal (recorded later with `event`) or bad input.
    fn row(&mut self, line: usize, e: Error, event: Event) {
        match e {
            Error::Recorded(inner) => self.refuse(line, &inner, event),
            Error::Refused(_) => self.refuse(line, &e, event),
            other => self.note(line, &other),
        }
    }

    fn refuse(&mut self, line: usize, e: &Error, event: Event) {
        self.note(line, e);
        self.refused_total += 1;
        if self.refused.len() < RECORDED {
            let event = if line > 0 {
                event.detail("line", line)
            } else {
                event
            };
            self.refused.push(event.refused(&e.to_string()));
        }
    }

    fn conflict(&mut self, line: usize, e: &dyn std::fmt::Display) {
        self.note(line, e);
        self.conflicts += 1;
    }

    fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Say what went wrong: exit 3 when anything was refused, exit 5 when every problem is a
    /// conflict with what is there, else exit 2. The refusals are
    /// left with `bulk`, which rolls the whole change back and then records them (not in a
    /// dry run).
    /// The error for the whole change: `one` or `many` ("row", "rows") and what went wrong.
    fn fail(self, bulk: &Bulk, one: &str, many: &str, what: &str) -> Error {
        let noun = if self.total == 1 { one } else { many };
        let mut text = format!(
            "{} {noun} {what}; nothing was changed:\n{}",
            self.total,
            self.lines.join("\n")
        );
        if self.total > self.lines.len() {
            text.push_str(&format!(
                "\n... and {} more.",
                self.total - self.lines.len()
            ));
        }
        if self.refused_total == 0 {
            return if self.conflicts == self.total {
                Error::Conflict(text)
            } else {
                Error::Usage(text)
            };
        }
        bulk.more_refused
            .set(self.refused_total - self.refused.len());
        *bulk.refused.borrow_mut() = self.refused;
        Error::Refused(text)
    }
}

/// What a bulk change's rows share with `bulk`: how many rows were gone through (the
/// change's cost against the budget) and the refused rows to record once it is rolled back.
#[derive(Default)]
struct Bulk {
    rows: std::cell::Cell<usize>,
    refused: std::cell::RefCell<Vec<Event>>,
    more_refused: std::cell::Cell<usize>,
}

/// The event of one bulk row, for its refusal.
fn row_event(
    actor: &str,
    action: &str,
    user: &str,
    role: &str,
    scope: &str,
    kind: &str,
    source: &str,
) -> Event {
    Event::new(actor, action)
        .principal(user)
        .role(role)
        .scope(scope)
        .detail("type", kind)
        .detail("source", source)
}

/// Run a bulk change in one `IMMEDIATE` transaction: `f` returns its result, or the error
/// that `Problems::fail` made; then the whole transaction is rolled back and the refused rows
/// are recorded in one of their own. (No savepoint: inside one, SQLite journals every
/// statement of the change, which made an import cost more the more assignments there were.)
/// With `dry_run`, nothing is kept.
fn bulk<T>(
    pim: &mut Pim,
    actor: &str,
    event: Event,
    dry_run: bool,
    f: impl FnOnce(
        &Recorder<'_>,
        chrono::DateTime<chrono::Utc>,
        &crate::policy::Policy,
        &users::User,
        &Bulk,
    ) -> Result<T>,
) -> Result<T> {
    pim.conn.make_room_for_bulk()?;
    let tx = pim.conn.write()?;
    // The policy and the time once the lock is held: an import that waited behind a
    // `policy apply` is checked against the policy that apply left.
    let policy = super::load_policy(&tx)?;
    let now = pim.clock.now();
    let rec = Recorder::new(&tx, now, &policy);
    let settled = acting_user(&rec, now, actor, event.clone()).and_then(|me| {
        // Whoever holds `assign` nowhere is refused at once, on record, without going
        // through (and holding the write lock for) every row of the file.
        let anywhere = super::holdings(&tx, me.id, now.timestamp())?
            .iter()
            .any(|h| policy.roles.get(&h.role).is_some_and(|r| r.grants("assign")));
        if anywhere {
            Ok(me)
        } else {
            super::refuse(
                &rec,
                now,
                event,
                Error::Refused(
                    "Assigning roles needs the 'assign' permission. Activate a role that grants it (see `pim role list`)."
                        .to_string(),
                ),
            )
        }
    });
    let me = match settled {
        Ok(me) => me,
        Err(Error::Recorded(e)) => {
            tx.commit()?;
            return Err(*e);
        }
        Err(e) => return Err(e),
    };
    // One bulk change is one change of the actor's budget.
    if pim.budget {
        if let Some(until) =
            users::limited_until(&tx, users::Limited::Changes(actor), now.timestamp())?
        {
            return Err(Error::Refused(format!(
                "{actor} made {} changes within 15 minutes; try again {}.",
                users::CHANGES_PER_WINDOW,
                crate::time::relative(crate::time::from_unix(until), now)
            )));
        }
    }
    let mark = super::outbox_end(&tx)?;
    // The rows gone through: the change's cost against the budget, dry run or not.
    let state = Bulk::default();
    let result = f(&rec, now, &policy, &me, &state);
    let rows = &state.rows;
    let units = users::bulk_units(rows.get());
    // A bulk change larger than what is left of the budget waits for the next window (a
    // first one in a window may be as large as a file may be).
    if pim.budget && result.is_ok() {
        let used = users::changes_used(&tx, now, actor)?;
        if used > 0 && used + units > users::CHANGES_PER_WINDOW {
            drop(tx);
            return Err(Error::Refused(format!(
                "This change goes through {} rows ({units} units of the change budget), more than the {} left in these 15 minutes; nothing was changed. Try again later, or split the file.",
                rows.get(),
                users::CHANGES_PER_WINDOW - used
            )));
        }
    }
    match result {
        Ok(v) => {
            // A bulk change notifies at most so often; the audit log has every row. (Ids
            // need not be consecutive: a server's sequences leave gaps.)
            tx.trim_outbox(mark, NOTICES_PER_BULK)?;
            let end = super::outbox_end(&tx)?;
            if dry_run {
                drop(tx);
                charge_apart(pim, now, actor, units)?;
            } else {
                if pim.budget {
                    users::count_change(&rec, now, actor, units)?;
                }
                tx.commit()?;
                pim.note_queued((mark, end));
            }
            Ok(v)
        }
        Err(e) => {
            drop(tx);
            let mut refused = state.refused.take();
            if refused.is_empty() {
                charge_apart(pim, now, actor, units)?;
            } else {
                // A dry run's refusals are attempts all the same: on record, marked so.
                if dry_run {
                    refused = refused
                        .into_iter()
                        .map(|e| e.detail("dry_run", true))
                        .collect();
                }
                record_refusals(pim, now, actor, refused, state.more_refused.get(), units)?;
            }
            Err(match e {
                Error::Recorded(e) => *e,
                e => e,
            })
        }
    }
}

/// Record the refused rows of a rolled-back bulk change, in a transaction of their own, and
/// charge it to `actor`'s budget. One bulk change counts as one attempt against the rate
/// limit (the last event goes through it); a user already throttled records nothing more.
fn record_refusals(
    pim: &mut Pim,
    now: chrono::DateTime<chrono::Utc>,
    actor: &str,
    mut events: Vec<Event>,
    more: usize,
    units: i64,
) -> Result<()> {
    let tx = pim.conn.write()?;
    let policy = super::load_policy(&tx)?;
    let rec = Recorder::new(&tx, now, &policy);
    let who = users::Limited::User(actor);
    if users::limited_until(&rec, who, now.timestamp())?.is_none() {
        if let Some(last) = events.pop() {
            for event in events {
                rec.record(event)?;
            }
            let last = if more > 0 {
                last.detail("more_refused", more)
            } else {
                last
            };
            let reason = last.result.clone();
            let recorded: Result<()> =
                users::refuse_limited(&rec, now, who, last, Error::Refused(reason));
            if let Err(e @ (Error::Store(_) | Error::Io(_))) = recorded {
                return Err(e);
            }
        }
    }
    if pim.budget {
        users::count_change(&rec, now, actor, units)?;
    }
    tx.commit()
}

/// Charge a bulk change that was rolled back (a dry run, bad input) to `actor`'s budget, in a
/// transaction of its own: going through the rows cost the database all the same.
fn charge_apart(
    pim: &mut Pim,
    now: chrono::DateTime<chrono::Utc>,
    actor: &str,
    units: i64,
) -> Result<()> {
    if pim.budget {
        let tx = pim.conn.write()?;
        let policy = super::load_policy(&tx)?;
        users::count_change(&Recorder::new(&tx, now, &policy), now, actor, units)?;
        tx.commit()?;
    }
    Ok(())
}

/// The notifications one bulk change may queue.
const NOTICES_PER_BULK: i64 = 1000;

/// The rows one import file may have (split larger ones).
const ROWS_PER_IMPORT: usize = 1_000_000;

impl Pim {
    /// Import assignments, streamed row by row in one transaction: every row is checked
    /// (all problems reported with their lines), and only when none has one is anything
    /// kept. A row that matches a current assignment changes nothing; one that names it but
    /// states another start or end is a conflict (exit 5: import does not change
    /// assignments). Bad rows, and an assignment named twice: exit 2; rows the caller may not
    /// make: exit 3, each recorded as a refused `assignment.add`.
    pub fn import_assignments(
        &mut self,
        actor: &str,
        rows: impl IntoIterator<Item = Result<ImportRow>>,
        dry_run: bool,
    ) -> Result<ImportSummary> {
        let event = Event::new(actor, "assignment.add").detail("source", "import");
        bulk(self, actor, event, dry_run, |tx, now, policy, me, state| {
            let seen = &state.rows;
            let t = now.timestamp();
            let (mut added, mut unchanged) = (0, 0);
            let mut problems = Problems::default();
            // The line of each assignment the file names, by `row_key`.
            let mut named = std::collections::HashMap::<[u8; 12], u32>::new();
            for row in rows {
                seen.set(seen.get() + 1);
                if seen.get() > ROWS_PER_IMPORT {
                    problems.note(
                        0,
                        &format!("the file has more than {ROWS_PER_IMPORT} rows; split it."),
                    );
                    break;
                }
                if problems.total >= SHOWN {
                    // Enough to fix first; the rest of the file is not gone through.
                    problems.note(0, &"... and the rest of the file was not checked.");
                    break;
                }
                let row = match row {
                    Ok(row) => row,
                    Err(e) => {
                        problems.note(0, &e);
                        continue;
                    }
                };
                let input = match row_input(tx, policy, &row) {
                    Ok(input) => input,
                    Err(e) => {
                        problems.note(row.line, &e);
                        continue;
                    }
                };
                let kind = if input.active { "active" } else { "eligible" };
                // (A file's lines fit in 32 bits: it is at most 128 MiB.)
                let first = match named.entry(row_key(&input)) {
                    std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(row.line as u32);
                        None
                    }
                };
                if let Some(first) = first {
                    // The same assignment twice: which row would win is not the file's to
                    // leave to chance.
                    problems.note(
                        row.line,
                        &format!(
                            "{} {} at {} ({kind}) is on line {first} too; name each assignment once.",
                            input.user, input.role, input.scope
                        ),
                    );
                    continue;
                }
                let event = || {
                    row_event(
                        actor,
                        "assignment.add",
                        &input.user,
                        &input.role,
                        input.scope.as_str(),
                        kind,
                        "import",
                    )
                    .justification(input.justification.as_deref())
                    .ticket(input.ticket.as_deref())
                };
                // Permission first: whether an assignment exists outside your scope is not
                // yours to learn from an "unchanged".
                if !super::has_permission(tx, policy, me, "assign", &input.scope, t)? {
                    let why = super::permission_error("assign", &input.scope);
                    problems.refuse(row.line, &why, event());
                    continue;
                }
                let kind_ = if input.active {
                    Kind::Active
                } else {
                    Kind::Eligible
                };
                if let Some(current) = tx.current_assignment_named(
                    &input.user,
                    &input.role,
                    input.scope.as_str(),
                    kind_,
                    t,
                )? {
                    match differs(&input, &current) {
                        None => unchanged += 1,
                        Some(how) => problems.conflict(
                            row.line,
                            &format!(
                                "{} already has an {kind} assignment of {} at {}, and {how}. Remove it first to change it (`pim unassign`), or set its end with `pim assignment apply`.",
                                input.user, input.role, input.scope
                            ),
                        ),
                    }
                    continue;
                }
                match assign_in(tx, now, policy, actor, &input) {
                    Ok(_) => added += 1,
                    Err(e) => problems.row(row.line, e, event()),
                }
            }
            if !problems.is_empty() {
                return Err(problems.fail(state, "row", "rows", "cannot be imported"));
            }
            Ok(ImportSummary {
                added,
                unchanged,
                dry_run,
            })
        })
    }
}

/// One desired assignment of an apply file.
#[derive(Debug, Clone)]
pub struct Desired {
    pub line: usize,
    pub user: String,
    pub role: String,
    pub scope: Scope,
    pub active: bool,
    /// `PolicyMax`, `After` (counts only when created), `At` or `Permanent`.
    pub end: End,
    pub justification: Option<String>,
    pub ticket: Option<String>,
}

/// One line of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    pub user: String,
    pub role: String,
    pub scope: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// For a change: the current end and the new one (None: permanent).
    pub from: Option<Option<String>>,
    pub to: Option<Option<String>>,
    #[serde(skip)]
    pub assignment: Option<i64>,
    #[serde(skip)]
    pub line: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub add: Vec<PlanItem>,
    pub change: Vec<PlanItem>,
    pub remove: Vec<PlanItem>,
    /// Removals `--prune` would make, or refused to make (last protected holder).
    pub kept: Vec<String>,
    pub applied: bool,
}

impl Pim {
    /// Make the assignments what `desired` says: add what is missing, change ends that differ
    /// (a relative duration sets the end only at creation), and with `prune` remove what the
    /// file does not name (never the last permanent holder of a protected role). One
    /// transaction; with `dry_run`, only the plan. Bad entries: exit 2; changes the caller
    /// may not make: exit 3, each recorded as a refused event.
    pub fn apply_assignments(
        &mut self,
        actor: &str,
        desired: &[Desired],
        prune: bool,
        dry_run: bool,
    ) -> Result<Plan> {
        let event = Event::new(actor, "assignment.add").detail("source", "apply");
        bulk(self, actor, event, dry_run, |tx, now, policy, me, state| {
            state.rows.set(desired.len());
            apply_in(tx, now, policy, me, actor, desired, prune, state)
        })
        .map(|mut plan| {
            plan.applied = !dry_run;
            plan
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_in(
    tx: &Recorder<'_>,
    now: chrono::DateTime<chrono::Utc>,
    policy: &crate::policy::Policy,
    me: &users::User,
    actor: &str,
    desired: &[Desired],
    prune: bool,
    state: &Bulk,
) -> Result<Plan> {
    let t = now.timestamp();
    let rfc = |e: Option<i64>| e.map(|x| crate::time::rfc3339(crate::time::from_unix(x)));
    let mut plan = Plan::default();
    let mut problems = Problems::default();
    let mut wanted = std::collections::HashSet::new();
    // What the caller may assign is what they held when the apply began: a prune that ends
    // their own role does not turn the entries after it into refusals.
    let held = if me.disabled {
        Vec::new()
    } else {
        super::holdings(tx, me.id, t)?
    };
    let may = |scope: &Scope| super::grants(policy, &held, "assign", scope);
    for d in desired {
        let Some(role) = policy.role(&d.role) else {
            problems.note(d.line, &unknown_role_in(policy, &d.role));
            continue;
        };
        if let Err(e) = users::get(tx, &d.user) {
            problems.note(d.line, &e);
            continue;
        }
        let kind = if d.active { "active" } else { "eligible" };
        if !wanted.insert((d.user.clone(), role.key.clone(), d.scope.to_string(), kind)) {
            problems.note(
                d.line,
                &format!(
                    "{} {} at {} ({kind}) is listed twice.",
                    d.user, role.key, d.scope
                ),
            );
            continue;
        }
        // Permission first: whether an assignment exists outside your scope, and when it
        // ends, is not yours to learn from an empty plan, a "the new end is in the past", or
        // the action your refusal is recorded under (which `audit list` shows you): always
        // an add, as import records it.
        let row = |action| {
            row_event(
                actor,
                action,
                &d.user,
                &role.key,
                d.scope.as_str(),
                kind,
                "apply",
            )
        };
        if !may(&d.scope) {
            problems.refuse(
                d.line,
                &super::permission_error("assign", &d.scope),
                row("assignment.add")
                    .justification(d.justification.as_deref())
                    .ticket(d.ticket.as_deref()),
            );
            continue;
        }
        let kind_ = if d.active {
            Kind::Active
        } else {
            Kind::Eligible
        };
        let current: Option<(i64, Option<i64>)> = tx
            .current_assignment_named(&d.user, &role.key, d.scope.as_str(), kind_, t)?
            .map(|a| (a.id, a.end_at));
        let event = || {
            row(if current.is_some() {
                "assignment.change"
            } else {
                "assignment.add"
            })
        };
        let item = |from: Option<Option<i64>>, to: Option<Option<i64>>, assignment| PlanItem {
            user: d.user.clone(),
            role: role.key.clone(),
            scope: d.scope.to_string(),
            kind: kind.to_string(),
            from: from.map(rfc),
            to: to.map(rfc),
            assignment,
            line: d.line,
        };
        let Some((id, end)) = current else {
            let input = AssignInput {
                user: d.user.clone(),
                role: role.key.clone(),
                scope: d.scope.clone(),
                active: d.active,
                start: None,
                end: d.end,
                justification: d.justification.clone(),
                ticket: d.ticket.clone(),
            };
            match assign_in(tx, now, policy, actor, &input) {
                Ok(a) => plan.add.push(item(None, Some(a.end_at), None)),
                Err(e) => problems.row(
                    d.line,
                    e,
                    event()
                        .justification(d.justification.as_deref())
                        .ticket(d.ticket.as_deref()),
                ),
            }
            continue;
        };
        let target = match d.end {
            End::Permanent => Some(None),
            End::At(at) => Some(Some(at.timestamp())),
            End::PolicyMax | End::After(_) => None,
        };
        let Some(new_end) = target.filter(|n| *n != end) else {
            continue;
        };
        if new_end.is_some_and(|e| e <= t) {
            problems.note(
                d.line,
                &"the new end is in the past; remove the entry (with --prune) instead.",
            );
            continue;
        }
        if d.user == me.name {
            problems.refuse(
                d.line,
                &Error::Refused(
                    "You cannot change your own assignment; another holder of 'assign' must."
                        .to_string(),
                ),
                event(),
            );
            continue;
        }
        let limit = if d.active {
            role.settings.max_active
        } else {
            role.settings.max_eligible
        };
        let too_long = match (limit, new_end) {
            (crate::policy::Limit::Permanent, _) => false,
            (crate::policy::Limit::Max(_), None) => true,
            (crate::policy::Limit::Max(max), Some(e)) => e - t > max.num_seconds(),
        };
        if too_long {
            problems.refuse(
                d.line,
                &Error::Refused(format!(
                    "{kind} assignments of {} last at most {} ({}); ask for less.",
                    role.key,
                    limit,
                    if d.active {
                        "max_active"
                    } else {
                        "max_eligible"
                    }
                )),
                event(),
            );
            continue;
        }
        tx.set_assignment_end(id, new_end, t)?;
        tx.record(
            event()
                .expires(new_end)
                .detail("assignment", id)
                .detail("from", rfc(end).unwrap_or_else(|| "permanent".into())),
        )?;
        // An activation never outlasts the eligibility it rests on.
        if let Some(e) = new_end.filter(|_| !d.active) {
            super::activation::cap_activations(tx, policy, now, actor, id, e)?;
        }
        plan.change.push(item(Some(end), Some(new_end), Some(id)));
    }
    if prune {
        for Current {
            id,
            user_id,
            user,
            role,
            scope,
            kind,
            end_at: end,
            ..
        } in tx.live_assignments(t)?
        {
            let kind = kind.as_str().to_string();
            if wanted.contains(&(user.clone(), role.clone(), scope.clone(), kind.as_str())) {
                continue;
            }
            // Only what the caller may assign is theirs to prune; the rest of the store is
            // neither removed nor named.
            let Ok(sc) = Scope::parse(&scope) else {
                continue;
            };
            if !may(&sc) {
                continue;
            }
            if user_id == me.id {
                plan.kept.push(format!("{user} {role} at {scope} ({kind}): your own; another holder of 'assign' must remove it"));
                continue;
            }
            if policy.roles.get(&role).is_some_and(|r| r.protected)
                && super::would_orphan_protected(tx, &role, user_id, Some(id), t)?
            {
                plan.kept.push(format!("{user} {role} at {scope} ({kind}): the last permanent holder of a protected role stays"));
                continue;
            }
            let event = row_event(
                actor,
                "assignment.remove",
                &user,
                &role,
                &scope,
                &kind,
                "apply",
            )
            .detail("assignment", id)
            .detail("pruned", true);
            tx.remove_assignment(id, t, actor)?;
            tx.record(event)?;
            super::activation::end_activations(
                tx,
                policy,
                now,
                actor,
                Of::Eligibility(id),
                Status::Revoked,
                "activation.revoke",
                "its eligibility was pruned by `pim assignment apply`",
            )?;
            plan.remove.push(PlanItem {
                user,
                role,
                scope,
                kind,
                from: Some(rfc(end)),
                to: None,
                assignment: Some(id),
                line: 0,
            });
        }
    }
    if !problems.is_empty() {
        return Err(problems.fail(state, "entry", "entries", "cannot be applied"));
    }
    Ok(plan)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDesiredFile {
    #[serde(default)]
    eligible: Vec<toml::Spanned<RawDesired>>,
    #[serde(default)]
    active: Vec<toml::Spanned<RawDesired>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDesired {
    user: String,
    role: String,
    scope: Option<String>,
    duration: Option<String>,
    until: Option<String>,
    permanent: Option<bool>,
    justification: Option<String>,
    ticket: Option<String>,
}

/// Parse a desired-state file (`[[eligible]]` and `[[active]]` tables); problems name lines.
pub fn parse_desired(text: &str) -> Result<Vec<Desired>> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let raw: RawDesiredFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(s.start)).unwrap_or(1);
        Error::Usage(format!(
            "line {line}: {}",
            e.message().trim().replace('\n', " ")
        ))
    })?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (active, list) in [(false, &raw.eligible), (true, &raw.active)] {
        for entry in list {
            let line = line_of(entry.span().start);
            let d = entry.get_ref();
            let parsed = (|| -> Result<Desired> {
                let scope = match &d.scope {
                    Some(s) => Scope::parse(s)?,
                    None => Scope::root(),
                };
                let end = match (&d.duration, &d.until, d.permanent.unwrap_or(false)) {
                    (None, None, false) => End::PolicyMax,
                    (Some(dur), None, false) => End::After(parse_duration(dur)?),
                    (None, Some(at), false) => End::At(parse_instant(at)?),
                    (None, None, true) => End::Permanent,
                    _ => {
                        return Err(Error::Usage(
                            "give at most one of duration, until and permanent = true.".into(),
                        ))
                    }
                };
                Ok(Desired {
                    line,
                    user: d.user.clone(),
                    role: d.role.clone(),
                    scope,
                    active,
                    end,
                    justification: d.justification.clone(),
                    ticket: d.ticket.clone(),
                })
            })();
            match parsed {
                Ok(d) => out.push(d),
                Err(e) => problems.push(format!("line {line}: {}", one_line(&e.to_string()))),
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Usage(problems.join("\n")));
    }
    out.sort_by_key(|d| d.line);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params;

    /// A bulk change costs the budget by its size, dry runs too.
    #[test]
    fn bulk_changes_cost_their_size() {
        let (mut pim, _, _) = super::super::testing::pim();
        pim.add_user("admin", "bob", None, None).unwrap();
        let rows = |n: usize| {
            (0..n)
                .map(|i| {
                    Ok(ImportRow {
                        line: i + 2,
                        user: "bob".into(),
                        role: "db-admin".into(),
                        scope: format!("/s{i}"),
                        kind: "eligible".into(),
                        justification: "x".into(),
                        ..Default::default()
                    })
                })
                .collect::<Vec<_>>()
        };
        let used = |pim: &Pim| -> i64 {
            pim.conn()
                .query_row(
                    "SELECT failures FROM account_failures WHERE account = 'changes:admin'",
                    params![],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let before = used(&pim);
        pim.import_assignments("admin", rows(2500), true).unwrap();
        assert_eq!(used(&pim), before + 3);
        pim.import_assignments("admin", rows(2500), false).unwrap();
        assert_eq!(used(&pim), before + 6);
        // Near the end of the budget, a change larger than what is left waits.
        pim.conn()
            .execute(
                "UPDATE account_failures SET failures = 599 WHERE account = 'changes:admin'",
                params![],
            )
            .unwrap();
        let e = pim
            .import_assignments("admin", rows(2600), false)
            .unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("units of the change budget"), "{e}");
        assert_eq!(used(&pim), 599);
    }
}
