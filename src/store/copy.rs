//! Moving a team over: copy a SQLite database into an empty PostgreSQL database, every row
//! with its id, in one transaction, and show that the audit chain came over intact.

use super::{pg, Value};
use crate::error::{Error, Result};
use crate::{audit, params, privilege};
use std::path::Path;

/// The tables, parents before children (foreign keys hold at every insert), and their
/// columns at this pim's schema: fixed here, never read from the file (a column a file
/// names would be SQL that file's author wrote).
const TABLES: &[(&str, &[&str])] = &[
    ("meta", &["key", "value"]),
    (
        "users",
        &[
            "id",
            "name",
            "email",
            "display_name",
            "kind",
            "disabled",
            "totp_secret",
            "totp_last_step",
            "mfa_failures",
            "mfa_locked_until",
            "created_at",
            "token_hash",
            "mfa_blocked",
        ],
    ),
    (
        "assignments",
        &[
            "id",
            "user_id",
            "role",
            "scope",
            "kind",
            "start_at",
            "end_at",
            "justification",
            "ticket",
            "created_by",
            "created_at",
            "removed_at",
            "removed_by",
            "expiry_recorded",
        ],
    ),
    (
        "requests",
        &[
            "id",
            "user_id",
            "role",
            "scope",
            "eligibility_id",
            "status",
            "created_at",
            "start_at",
            "end_at",
            "justification",
            "ticket",
            "closed_at",
            "closed_by",
            "close_reason",
            "duration_secs",
            "decide_by",
            "extends",
        ],
    ),
    (
        "decisions",
        &[
            "id",
            "request_id",
            "approver",
            "decision",
            "justification",
            "at",
        ],
    ),
    (
        "audit_events",
        &[
            "seq",
            "time",
            "actor",
            "action",
            "principal",
            "role",
            "scope",
            "request",
            "justification",
            "ticket",
            "expires",
            "result",
            "details",
            "prev_hash",
            "hash",
        ],
    ),
    (
        "outbox",
        &[
            "id",
            "event",
            "channel",
            "recipients",
            "payload",
            "status",
            "attempts",
            "next_attempt_at",
            "last_error",
            "created_at",
            "sent_at",
        ],
    ),
    ("reminders", &["assignment_id", "kind"]),
    (
        "reviews",
        &[
            "id",
            "name",
            "role",
            "scope",
            "self_review",
            "reviewers",
            "default_decision",
            "recurrence",
            "duration_secs",
            "created_by",
            "created_at",
            "ends_at",
            "completed_at",
            "completed_by",
            "next_started",
        ],
    ),
    (
        "review_items",
        &[
            "id",
            "review_id",
            "assignment_id",
            "user",
            "role",
            "scope",
            "kind",
            "recommendation",
            "reason",
            "decision",
            "reviewer",
            "justification",
            "decided_at",
            "applied",
            "result",
        ],
    ),
    (
        "account_failures",
        &["account", "failures", "first_at", "locked_until"],
    ),
];

/// Tables whose ids the store gives (their next id must follow the copied ones).
const GENERATED: &[&str] = &[
    "users",
    "assignments",
    "requests",
    "decisions",
    "outbox",
    "reviews",
    "review_items",
];

/// What a copy did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Copied {
    /// Rows per table, in copy order.
    pub rows: Vec<(String, u64)>,
    /// Audit events and the chain's head, checked on both sides.
    pub events: i64,
    pub head: String,
    /// The database's instance id (the server's now too), and whether the source file is
    /// the caller's own (whose key may then be bound to the server).
    pub instance: String,
    pub yours: bool,
}

/// Copy the SQLite database at `from` into the (empty) PostgreSQL database at `to`.
/// The source is opened with the caller's own rights only; a target that already holds a
/// pim database is refused (exit 5); a source whose chain does not hold is refused (exit 1).
pub fn copy(from: &Path, to: &str) -> Result<Copied> {
    if pg::is_url(from) || !pg::is_url(Path::new(to)) {
        return Err(Error::Usage(
            "`pim store copy` copies a SQLite file (--from FILE) to PostgreSQL (--to postgres://...)."
                .to_string(),
        ));
    }
    privilege::drop_for_good();
    let opened = super::open(from)?;
    let yours = opened.file.owner == privilege::real_uid();
    let source = opened.conn;
    let instance = source.instance()?;
    let before = audit::verify(&source)?;
    let Some(head) = before.head.clone().filter(|_| before.ok) else {
        return Err(Error::Environment(format!(
            "The audit chain of {} does not hold (event {}: {}); copy nothing until `pim audit verify` passes.",
            from.display(),
            before.bad_seq.unwrap_or(0),
            before.reason.unwrap_or_default()
        )));
    };
    let target = pg::create(to, false)?.conn;
    let mut rows = Vec::new();
    // One read snapshot of the source; one transaction on the target, which holds the
    // head row like every writer.
    let read = source.read()?;
    let tx = target.write()?;
    for (table, cols) in TABLES {
        let quoted = |cols: &[&str]| {
            cols.iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let list = quoted(cols);
        // The server makes an event's fields from the bytes hashed (its migration 14): the
        // events go over as those bytes.
        let events = *table == "audit_events";
        let written: &[&str] = if events {
            &["canonical", "prev_hash", "hash"]
        } else {
            cols
        };
        let written_list = quoted(written);
        // Rows go over in multi-row statements (a round trip to the server per row would
        // be most of a large copy's time).
        let insert = |rows: usize| {
            let mut sql = super::values_rows(
                &format!("INSERT INTO {table} ({written_list})"),
                written.len(),
                rows,
            );
            if *table == "meta" {
                // The migration made its own instance id; the copy keeps the source's, which
                // names the key of the TOTP secrets.
                sql.push_str(" ON CONFLICT (key) DO UPDATE SET value = excluded.value");
            }
            sql
        };
        let order = if events { "seq" } else { "rowid" };
        let mut n = 0u64;
        let mut pending: Vec<Value> = Vec::with_capacity(written.len() * super::ROWS_PER_INSERT);
        let flush = |pending: &mut Vec<Value>| -> Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let refs: Vec<&dyn super::ToValue> =
                pending.iter().map(|v| v as &dyn super::ToValue).collect();
            let result = tx.execute(&insert(pending.len() / written.len()), &refs);
            pending.clear();
            result.map(|_| ()).map_err(|e| {
                Error::Environment(format!(
                    "{} cannot be copied: a row of {table} does not fit the schema ({e}); nothing was kept.",
                    from.display()
                ))
            })
        };
        let mut failed: Option<Error> = None;
        source.query_each(
            &format!("SELECT {list} FROM {table} ORDER BY {order}"),
            params![],
            |r| {
                if events {
                    let e = super::audit::event_from_row(r)?;
                    pending.extend([e.canonical_text(), e.prev_hash, e.hash].map(Value::Text));
                } else {
                    for i in 0..cols.len() {
                        pending.push(r.get::<_, Value>(i)?);
                    }
                }
                n += 1;
                if pending.len() == written.len() * super::ROWS_PER_INSERT {
                    if let Err(e) = flush(&mut pending) {
                        failed = Some(e);
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        if let Some(e) = failed {
            return Err(e);
        }
        flush(&mut pending)?;
        rows.push((table.to_string(), n));
    }
    for table in GENERATED {
        let next: i64 = tx.query_row(
            &format!("SELECT coalesce(max(id), 0) + 1 FROM {table}"),
            params![],
            |r| r.get(0),
        )?;
        tx.execute_batch(&format!(
            "ALTER TABLE {table} ALTER COLUMN id RESTART WITH {next}"
        ))?;
    }
    // The Merkle tree is built here from the copied events, not copied: `verify` checks only
    // the stored nodes on the tree's right edge, so a source's other nodes (changed, extra,
    // malformed) would come across unseen and break proofs, or later appends, on the server.
    // Built in the copy's transaction, before anyone can write: not by the first writer,
    // which would hold every other one up while it hashes the whole log.
    audit::complete_tree(&tx, before.events)?;
    let after = audit::verify(&tx)?;
    if !after.ok || after.head.as_deref() != Some(head.as_str()) || after.events != before.events {
        return Err(Error::Environment(format!(
            "The copied audit chain does not match the source ({} events, head {}); nothing was kept.",
            after.events,
            after.head.unwrap_or_default()
        )));
    }
    tx.commit()?;
    drop(read);
    // Statistics for the planner now, not when autovacuum gets round to it: right after a
    // bulk load its plans are guesses (`role list` took three times as long). The copy has
    // committed; statistics that could not be gathered now will be later.
    let _ = target.execute_batch("ANALYZE");
    Ok(Copied {
        rows,
        events: before.events,
        head,
        instance,
        yours,
    })
}
