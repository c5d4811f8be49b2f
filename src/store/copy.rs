//! Moving a team over: copy a SQLite database into an empty PostgreSQL database, every row
//! with its id, in one transaction, and show that the audit chain came over intact.

use super::{pg, Db, Value};
use crate::error::{Error, Result};
use crate::{audit, params, privilege};
use std::path::Path;

/// The tables, parents before children (foreign keys hold at every insert).
const TABLES: &[&str] = &[
    "meta",
    "users",
    "assignments",
    "requests",
    "decisions",
    "audit_events",
    "outbox",
    "reminders",
    "reviews",
    "review_items",
    "account_failures",
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
}

fn columns(db: &Db, table: &str) -> Result<Vec<String>> {
    db.query_map(
        &format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
        params![],
        |r| r.get(0),
    )?
    .collect()
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
    let source = super::open(from)?.conn;
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
    for table in TABLES {
        let cols = columns(&source, table)?;
        let list = cols
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let marks = (1..=cols.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut insert = format!("INSERT INTO {table} ({list}) VALUES ({marks})");
        if *table == "meta" {
            // The migration made its own instance id; the copy keeps the source's, which
            // names the key of the TOTP secrets.
            insert.push_str(" ON CONFLICT (key) DO UPDATE SET value = excluded.value");
        }
        let order = if *table == "audit_events" {
            "seq"
        } else {
            "rowid"
        };
        let mut n = 0u64;
        let mut failed = None;
        source.query_each(
            &format!("SELECT {list} FROM {table} ORDER BY {order}"),
            params![],
            |r| {
                let values = (0..cols.len())
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<Result<Vec<Value>>>()?;
                let refs: Vec<&dyn super::ToValue> =
                    values.iter().map(|v| v as &dyn super::ToValue).collect();
                if let Err(e) = tx.execute(&insert, &refs) {
                    failed = Some(e);
                    return Ok(false);
                }
                n += 1;
                Ok(true)
            },
        )?;
        if let Some(e) = failed {
            return Err(e);
        }
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
    Ok(Copied {
        rows,
        events: before.events,
        head,
    })
}
