//! The audit log's rows: the chain's head, appending, and reading in order.

use super::{Db, OptionalExtension, Row, ToValue, Value};
use crate::audit::{Filter, StoredEvent};
use crate::error::Result;
use crate::params;
use crate::time::{from_unix, rfc3339};

const SELECT: &str = "SELECT seq, time, actor, action, principal, role, scope, request, \
     justification, ticket, expires, result, details, prev_hash, hash FROM audit_events";

/// An event as read, its text borrowed from the row: what `audit verify` hashes, without a
/// string made per field (a million events are read in a second). The text is the stored
/// bytes, not yet checked to be UTF-8 (on SQLite; PostgreSQL checks text itself).
pub struct RawEvent<'a> {
    pub seq: i64,
    pub time: i64,
    pub actor: &'a [u8],
    pub action: &'a [u8],
    pub principal: Option<&'a [u8]>,
    pub role: Option<&'a [u8]>,
    pub scope: Option<&'a [u8]>,
    pub request: Option<i64>,
    pub justification: Option<&'a [u8]>,
    pub ticket: Option<&'a [u8]>,
    pub expires: Option<i64>,
    pub result: &'a [u8],
    pub details: &'a [u8],
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
}

fn raw_event<'a>(row: &'a Row<'_>) -> Result<RawEvent<'a>> {
    fn required<T>(value: Option<T>, i: usize) -> Result<T> {
        value.ok_or_else(|| {
            crate::error::Error::Store(super::StoreError::other(format!("column {i} is empty")))
        })
    }
    let text = |i| required(row.text_bytes(i)?, i);
    let int = |i| required(row.int(i)?, i);
    Ok(RawEvent {
        seq: int(0)?,
        time: int(1)?,
        actor: text(2)?,
        action: text(3)?,
        principal: row.text_bytes(4)?,
        role: row.text_bytes(5)?,
        scope: row.text_bytes(6)?,
        request: row.int(7)?,
        justification: row.text_bytes(8)?,
        ticket: row.text_bytes(9)?,
        expires: row.int(10)?,
        result: text(11)?,
        details: text(12)?,
        prev_hash: text(13)?,
        hash: text(14)?,
    })
}

/// An event from its fields in binary COPY, in `SELECT`'s order: a BIGINT is eight bytes,
/// big-endian; text is its bytes (checked to be UTF-8 by `audit verify`'s next stage). What
/// cannot be read is an error with the event's `seq` when that could be.
fn copied_event<'a>(
    fields: &[Option<&'a [u8]>; 15],
) -> std::result::Result<RawEvent<'a>, (Option<i64>, String)> {
    let int = |i: usize| -> std::result::Result<Option<i64>, String> {
        fields[i]
            .map(|b| {
                <[u8; 8]>::try_from(b)
                    .map(i64::from_be_bytes)
                    .map_err(|_| format!("column {i} is not an 8-byte integer"))
            })
            .transpose()
    };
    let seq = int(0).ok().flatten();
    let fail = |e: String| (seq, e);
    let required = |i: usize| fields[i].ok_or_else(|| format!("column {i} is empty"));
    let required_int = |i: usize| int(i)?.ok_or_else(|| format!("column {i} is empty"));
    Ok(RawEvent {
        seq: required_int(0).map_err(fail)?,
        time: required_int(1).map_err(fail)?,
        actor: required(2).map_err(fail)?,
        action: required(3).map_err(fail)?,
        principal: fields[4],
        role: fields[5],
        scope: fields[6],
        request: int(7).map_err(fail)?,
        justification: fields[8],
        ticket: fields[9],
        expires: int(10).map_err(fail)?,
        result: required(11).map_err(fail)?,
        details: required(12).map_err(fail)?,
        prev_hash: required(13).map_err(fail)?,
        hash: required(14).map_err(fail)?,
    })
}

/// An event of PostgreSQL's log as `audit verify` reads it there (`each_event_made`): the
/// bytes its hash was made from, and the two hashes.
pub struct MadeEvent<'a> {
    pub seq: i64,
    pub canonical: &'a [u8],
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
}

fn made_event<'a>(
    fields: &[Option<&'a [u8]>; 4],
) -> std::result::Result<MadeEvent<'a>, (Option<i64>, String)> {
    let seq = fields[0]
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_be_bytes);
    let required = |i: usize| fields[i].ok_or_else(|| (seq, format!("column {i} is empty")));
    Ok(MadeEvent {
        seq: seq.ok_or((None, "its number cannot be read".to_string()))?,
        canonical: required(1)?,
        prev_hash: required(2)?,
        hash: required(3)?,
    })
}

/// The columns of PostgreSQL's `audit_events` (migration 14), each with its type and its
/// generation expression as the server shows them (`format_type`; `pg_get_expr`, blanks run
/// together), or "" for one that is stored as written.
fn made_columns() -> Vec<(&'static str, &'static str, String)> {
    let field = |i: usize| format!("((canonical)::jsonb ->> {i})");
    let absent = |i: usize| format!("NULLIF({}, ''::text)", field(i));
    let part = |i: usize, from: usize, len: usize| format!("(substr({}, {from}, {len}))", field(i));
    let instant = |i: usize| {
        format!(
            "((((((make_date({}::integer, {}::integer, {}::integer) - '1970-01-01'::date))::bigint * 86400) + ({}::bigint * 3600)) + ({}::bigint * 60)) + {}::bigint)",
            part(i, 1, 4),
            part(i, 6, 2),
            part(i, 9, 2),
            part(i, 12, 2),
            part(i, 15, 2),
            part(i, 18, 2)
        )
    };
    let text = |name, expr| (name, "text", expr);
    let number = |name, expr| (name, "bigint", expr);
    vec![
        text("canonical", String::new()),
        text("prev_hash", String::new()),
        text("hash", String::new()),
        number("seq", format!("({})::bigint", field(0))),
        number("time", instant(1)),
        text("actor", field(2)),
        text("action", field(3)),
        text("principal", absent(4)),
        text("role", absent(5)),
        text("scope", absent(6)),
        number("request", format!("({})::bigint", absent(7))),
        text("justification", absent(8)),
        text("ticket", absent(9)),
        number(
            "expires",
            format!(
                "CASE WHEN ({} <> ''::text) THEN {} ELSE NULL::bigint END",
                field(10),
                instant(10)
            ),
        ),
        text("result", field(11)),
        text("details", field(12)),
    ]
}

pub(crate) fn event_from_row(row: &Row<'_>) -> Result<StoredEvent> {
    Ok(StoredEvent {
        seq: row.get(0)?,
        time: rfc3339(from_unix(row.get(1)?)),
        actor: row.get(2)?,
        action: row.get(3)?,
        principal: row.get(4)?,
        role: row.get(5)?,
        scope: row.get(6)?,
        request: row.get(7)?,
        justification: row.get(8)?,
        ticket: row.get(9)?,
        expires: row
            .get::<_, Option<i64>>(10)?
            .map(|t| rfc3339(from_unix(t))),
        result: row.get(11)?,
        details: row.get(12)?,
        prev_hash: row.get(13)?,
        hash: row.get(14)?,
    })
}

/// A filter as SQL conditions and their values (`?1`…).
fn conditions(filter: &Filter) -> (String, Vec<Value>) {
    let mut sql = String::from("1 = 1");
    let mut values: Vec<Value> = Vec::new();
    let mut add = |clause: &str, v: Value| {
        values.push(v);
        sql.push_str(&format!(" AND {clause} ?{}", values.len()));
    };
    if let Some(t) = filter.since {
        add("time >=", Value::Int(t.timestamp()));
    }
    if let Some(t) = filter.until {
        add("time <", Value::Int(t.timestamp()));
    }
    if let Some(a) = &filter.actor {
        add("actor =", Value::Text(a.clone()));
    }
    if let Some(u) = &filter.user {
        add("principal =", Value::Text(u.clone()));
    }
    if let Some(r) = &filter.role {
        add("role =", Value::Text(r.clone()));
    }
    if let Some(a) = &filter.action {
        if let Some(prefix) = a.strip_suffix(".*") {
            // A prefix compared as it is (no LIKE: the same case rule on both backends, and
            // no wildcards of the caller's).
            let prefix = format!("{prefix}.");
            add(
                &format!("substr(action, 1, {}) =", prefix.chars().count()),
                Value::Text(prefix),
            );
        } else {
            add("action =", Value::Text(a.clone()));
        }
    }
    if let Some(id) = filter.request {
        add("request =", Value::Int(id));
    }
    if let Some(name) = &filter.involving {
        values.push(Value::Text(name.clone()));
        let n = values.len();
        sql.push_str(&format!(" AND (actor = ?{n} OR principal = ?{n})"));
    }
    (sql, values)
}

/// Up to `chunk` events matching `filter` after event `after`, in order: the query and its
/// values.
fn after_query(filter: &Filter, after: i64, chunk: usize) -> (String, Vec<Value>) {
    let (sql, mut values) = conditions(filter);
    values.push(Value::Int(after));
    let n = values.len();
    (
        format!("{SELECT} WHERE {sql} AND seq > ?{n} ORDER BY seq LIMIT {chunk}"),
        values,
    )
}

fn refs(values: &[Value]) -> Vec<&dyn ToValue> {
    values.iter().map(|v| v as &dyn ToValue).collect()
}

impl Db {
    /// The last event's number and hash (None: the log is empty). One key lookup on either
    /// backend (the planner's min/max of the primary key).
    pub fn audit_head(&self) -> Result<Option<(i64, String)>> {
        if let Some(head) = self.log_end.borrow().as_ref().and_then(|e| e.head.clone()) {
            return Ok(head);
        }
        let head = self
            .query_row(
                "SELECT seq, hash FROM audit_events WHERE seq = (SELECT max(seq) FROM audit_events)",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some(end) = self.log_end.borrow_mut().as_mut() {
            end.head = Some(head.clone());
        }
        Ok(head)
    }

    pub fn audit_count(&self) -> Result<i64> {
        self.query_row("SELECT count(*) FROM audit_events", params![], |r| r.get(0))
    }

    /// Append events in order (each with its `seq` and `hash` set, its `time` and
    /// `expires` as unix seconds, and its canonical bytes), in multi-row statements: a batch
    /// costs a server a few round trips, not one an event.
    pub fn insert_events(&self, events: &[(StoredEvent, i64, Option<i64>, String)]) -> Result<()> {
        let kept = self.log_end.borrow_mut().take();
        if self.backend() == super::Backend::Postgres {
            // The server makes the fields from the bytes hashed (migration 14).
            for chunk in events.chunks(super::ROWS_PER_INSERT) {
                let mut values: Vec<&dyn ToValue> = Vec::with_capacity(3 * chunk.len());
                for (e, _, _, canonical) in chunk {
                    values.extend([canonical as &dyn ToValue, &e.prev_hash, &e.hash]);
                }
                self.execute(
                    &super::values_rows(
                        "INSERT INTO audit_events (canonical, prev_hash, hash)",
                        3,
                        chunk.len(),
                    ),
                    &values,
                )?;
            }
        } else {
            for chunk in events.chunks(super::ROWS_PER_INSERT) {
                let mut values: Vec<&dyn ToValue> = Vec::with_capacity(15 * chunk.len());
                for (e, time, expires, _) in chunk {
                    values.extend([
                        &e.seq as &dyn ToValue,
                        time,
                        &e.actor,
                        &e.action,
                        &e.principal,
                        &e.role,
                        &e.scope,
                        &e.request,
                        &e.justification,
                        &e.ticket,
                        expires,
                        &e.result,
                        &e.details,
                        &e.prev_hash,
                        &e.hash,
                    ]);
                }
                self.execute(
                &super::values_rows(
                    "INSERT INTO audit_events (seq, time, actor, action, principal, role, scope, \
                     request, justification, ticket, expires, result, details, prev_hash, hash)",
                    15,
                    chunk.len(),
                ),
                &values,
            )?;
            }
        }
        if let Some(mut end) = kept {
            if let Some((e, ..)) = events.last() {
                end.head = Some(Some((e.seq, e.hash.clone())));
            }
            *self.log_end.borrow_mut() = Some(end);
        }
        Ok(())
    }

    /// The newest `limit` events matching `filter`, oldest first.
    pub fn newest_events(&self, filter: &Filter, limit: usize) -> Result<Vec<StoredEvent>> {
        let limit = limit.min(i64::MAX as usize);
        let (sql, values) = conditions(filter);
        let mut events = self
            .query_map(
                &format!("{SELECT} WHERE {sql} ORDER BY seq DESC LIMIT {limit}"),
                &refs(&values),
                event_from_row,
            )?
            .collect::<Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }

    /// Up to `chunk` events matching `filter` after event `after`, in order. Each chunk is
    /// read to its end before it is handed over: a reader that stops reading (a full pipe)
    /// never holds a read transaction open.
    pub fn events_after(
        &self,
        filter: &Filter,
        after: i64,
        chunk: usize,
    ) -> Result<Vec<StoredEvent>> {
        let (sql, values) = after_query(filter, after, chunk);
        self.query_map(&sql, &refs(&values), event_from_row)?
            .collect()
    }

    /// Up to `chunk` events matching `filter` after event `after`, in order, each handed
    /// to `f` borrowed from its row; `f` returns whether to go on.
    pub fn events_after_raw(
        &self,
        filter: &Filter,
        after: i64,
        chunk: usize,
        mut f: impl FnMut(RawEvent<'_>) -> Result<bool>,
    ) -> Result<()> {
        let (sql, values) = after_query(filter, after, chunk);
        self.query_each(&sql, &refs(&values), |row| f(raw_event(row)?))
    }

    /// `each_event`, each event borrowed from its row (`RawEvent`): nothing is copied.
    pub fn each_event_raw(
        &self,
        mut f: impl FnMut(std::result::Result<RawEvent<'_>, (Option<i64>, String)>) -> bool,
    ) -> Result<()> {
        let sql = format!("{SELECT} ORDER BY seq");
        // PostgreSQL: the rows in binary COPY (1,000,000 events: see README, Performance).
        if let Some(read) = self.copy_each::<15>(&sql, |fields| Ok(f(copied_event(fields)))) {
            return read;
        }
        self.query_each(&sql, params![], |row| {
            Ok(f(
                raw_event(row).map_err(|e| (row.get::<_, i64>(0).ok(), e.to_string()))
            ))
        })
    }

    /// PostgreSQL: every event as the bytes its hash was made from, when each of its fields
    /// is still made from those bytes (`fields_made`); `None` on SQLite, or when a field is
    /// not (then `each_event_raw` reads the fields). In order by number, or `as_stored`: as
    /// the rows lie in the table, in one pass over it (no index read), which is the order
    /// they were appended in unless space was used again; the caller checks the order.
    pub fn each_event_made(
        &self,
        as_stored: bool,
        mut f: impl FnMut(std::result::Result<MadeEvent<'_>, (Option<i64>, String)>) -> bool,
    ) -> Option<Result<()>> {
        if self.backend() != super::Backend::Postgres {
            return None;
        }
        match self.fields_made() {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(Err(e)),
        }
        let order = if as_stored {
            // A scan another session has under way would be joined where it is, not begun
            // at the table's first row.
            if let Err(e) = self.execute_batch("SET LOCAL synchronize_seqscans = off") {
                return Some(Err(e));
            }
            ""
        } else {
            " ORDER BY seq"
        };
        self.copy_each::<4>(
            // The table `fields_made` looked at, by its full name.
            &format!("SELECT seq, canonical, prev_hash, hash FROM public.audit_events{order}"),
            |fields| Ok(f(made_event(fields))),
        )
    }

    /// PostgreSQL: whether every field of the events is made by the server from the bytes
    /// hashed, as migration 14 made them: each a generated column with pim's expression, none
    /// relying on anything but the server's built-ins (a function or operator of the same
    /// name, put first on a path, would read as the same expression), and no other column
    /// beside the bytes and the two hashes. Then what the log shows is what was hashed, and
    /// `audit verify` need hash only the bytes. An owner who changed the table (a field no
    /// longer generated, or made another way) has it read the fields again, as before.
    pub fn fields_made(&self) -> Result<bool> {
        let columns: Vec<(String, String, String)> = self
            .query_map(
                "SELECT a.attname::pg_catalog.text, \
                 pg_catalog.format_type(a.atttypid, a.atttypmod), \
                 CASE WHEN a.attgenerated OPERATOR(pg_catalog.=) 's' \
                 THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) ELSE '' END \
                 FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_attrdef d \
                 ON d.adrelid OPERATOR(pg_catalog.=) a.attrelid \
                 AND d.adnum OPERATOR(pg_catalog.=) a.attnum \
                 WHERE a.attrelid OPERATOR(pg_catalog.=) 'public.audit_events'::pg_catalog.regclass \
                 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped",
                params![],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    ))
                },
            )?
            .collect::<Result<_>>()?;
        let expected = made_columns();
        // A column of another type (a `char(1)` actor holds one letter of what was hashed)
        // or name (two fields' names swapped), or made another way: not pim's.
        let same = columns.len() == expected.len()
            && columns.iter().all(|(name, kind, expr)| {
                expected.iter().any(|(n, k, e)| {
                    n == name
                        && k == kind
                        && *e == expr.split_whitespace().collect::<Vec<_>>().join(" ")
                })
            });
        if !same {
            return Ok(false);
        }
        // Built-ins are pinned: an expression's dependency on one is not recorded. Any other
        // dependency than on the table's own columns is on something someone made. And a
        // table that inherits this one adds its rows to every read of it, with fields its
        // own expressions make.
        let foreign: i64 = self.query_row(
            "SELECT (SELECT pg_catalog.count(*) FROM pg_catalog.pg_depend p \
             JOIN pg_catalog.pg_attrdef d \
             ON p.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_attrdef'::pg_catalog.regclass \
             AND p.objid OPERATOR(pg_catalog.=) d.oid \
             WHERE d.adrelid OPERATOR(pg_catalog.=) 'public.audit_events'::pg_catalog.regclass \
             AND NOT (p.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
             AND p.refobjid OPERATOR(pg_catalog.=) 'public.audit_events'::pg_catalog.regclass)) \
             OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM pg_catalog.pg_inherits \
             WHERE inhparent OPERATOR(pg_catalog.=) 'public.audit_events'::pg_catalog.regclass)",
            params![],
            |r| r.get(0),
        )?;
        Ok(foreign == 0)
    }

    /// Every event in order, handed over one row at a time (memory stays flat): `f` gets
    /// the event, or the error reading its fields with the row's `seq`; it returns whether
    /// to go on.
    pub fn each_event(
        &self,
        mut f: impl FnMut(std::result::Result<StoredEvent, (Option<i64>, String)>) -> bool,
    ) -> Result<()> {
        self.query_each(&format!("{SELECT} ORDER BY seq"), params![], |row| {
            Ok(f(
                event_from_row(row).map_err(|e| (row.get::<_, i64>(0).ok(), e.to_string()))
            ))
        })
    }
}

/// An assignment row as it is stored (for binding the state to the log).
#[derive(Debug, Clone)]
pub struct AssignmentRow {
    pub id: i64,
    pub user: String,
    pub role: String,
    pub scope: String,
    pub kind: String,
    pub end_at: Option<i64>,
    pub removed_at: Option<i64>,
    pub start_at: i64,
}

impl Db {
    /// Every assignment row, removed or not.
    pub fn assignment_rows(&self) -> Result<Vec<AssignmentRow>> {
        self.query_map(
            "SELECT a.id, u.name, a.role, a.scope, a.kind, a.end_at, a.removed_at, a.start_at \
             FROM assignments a JOIN users u ON u.id = a.user_id ORDER BY a.id",
            params![],
            |r| {
                Ok(AssignmentRow {
                    id: r.get(0)?,
                    user: r.get(1)?,
                    role: r.get(2)?,
                    scope: r.get(3)?,
                    kind: r.get(4)?,
                    end_at: r.get(5)?,
                    removed_at: r.get(6)?,
                    start_at: r.get(7)?,
                })
            },
        )?
        .collect()
    }

    /// Every request row: (id, user, role, scope, status, end, start, the request it extends,
    /// the eligibility it rests on).
    #[allow(clippy::type_complexity)]
    pub fn request_rows(
        &self,
    ) -> Result<
        Vec<(
            i64,
            String,
            String,
            String,
            String,
            i64,
            i64,
            Option<i64>,
            Option<i64>,
        )>,
    > {
        self.query_map(
            "SELECT r.id, u.name, r.role, r.scope, r.status, r.end_at, r.start_at, r.extends, r.eligibility_id FROM requests r JOIN users u ON u.id = r.user_id ORDER BY r.id",
            params![],
            super::FromRow::from_row,
        )?
        .collect()
    }

    /// Every decision row: (request, approver, decision).
    pub fn decision_rows(&self) -> Result<Vec<(i64, String, String)>> {
        self.query_map(
            "SELECT request_id, approver, decision FROM decisions ORDER BY id",
            params![],
            super::FromRow::from_row,
        )?
        .collect()
    }
}
