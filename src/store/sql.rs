//! One connection to either backend, and the transactions on it.
//!
//! Statements are written once, in the common subset of SQLite and PostgreSQL, with `?N`
//! placeholders (rewritten to `$N` for PostgreSQL); every statement is prepared once per
//! connection and cached. Values cross the seam as [`Value`]: integers, text, reals and NULL,
//! so that nothing outside `src/store` names a driver.
//!
//! The contract every backend keeps: **a write transaction is serialised against every other
//! write transaction.** SQLite gets it from `BEGIN IMMEDIATE` (one writer per file);
//! PostgreSQL from the row lock every write transaction takes first on the audit chain's head
//! (`SELECT … FOR UPDATE`), so writers queue in the order the log records them and each one
//! sees everything its predecessors committed.

use crate::error::{Error, Result};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;

/// What went wrong in the store, without the driver's types.
#[derive(Debug)]
pub struct StoreError {
    kind: Kind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NoRows,
    Busy,
    Constraint,
    Other,
}

impl StoreError {
    pub(crate) fn other(message: impl Into<String>) -> StoreError {
        StoreError {
            kind: Kind::Other,
            message: message.into(),
        }
    }

    /// A query that must return a row returned none.
    pub fn is_no_rows(&self) -> bool {
        self.kind == Kind::NoRows
    }

    /// The store stayed locked by another writer past the wait.
    pub fn is_busy(&self) -> bool {
        self.kind == Kind::Busy
    }

    /// A uniqueness, foreign key or check constraint refused the change.
    pub fn is_constraint(&self) -> bool {
        self.kind == Kind::Constraint
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        let kind = match &e {
            rusqlite::Error::QueryReturnedNoRows => Kind::NoRows,
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                rusqlite::ErrorCode::DatabaseBusy
                | rusqlite::ErrorCode::DatabaseLocked
                | rusqlite::ErrorCode::FileLockingProtocolFailed => Kind::Busy,
                rusqlite::ErrorCode::ConstraintViolation => Kind::Constraint,
                _ => Kind::Other,
            },
            _ => Kind::Other,
        };
        Error::Store(StoreError {
            kind,
            message: e.to_string(),
        })
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Error {
        use tokio_postgres::error::SqlState;
        let kind = match e.code() {
            Some(c) if c.code().starts_with("23") => Kind::Constraint,
            Some(c)
                if *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                Kind::Busy
            }
            _ => Kind::Other,
        };
        // The driver's message may quote the connection string; say only what the server said.
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None if e.is_closed() => "the connection to PostgreSQL was closed".to_string(),
            None => super::pg::redact(&e.to_string()),
        };
        Error::Store(StoreError { kind, message })
    }
}

fn no_rows() -> Error {
    Error::Store(StoreError {
        kind: Kind::NoRows,
        message: "the query returned no rows".into(),
    })
}

/// A value crossing the seam.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Text(String),
}

/// What can be bound to a placeholder.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_to_value!(i64, i32, u32, u16, u8, usize, u64);
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

/// What a column can be read as.
pub trait FromValue: Sized {
    fn from_value(v: Value) -> std::result::Result<Self, String>;
}

impl FromValue for Value {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        Ok(v)
    }
}
macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value) -> std::result::Result<Self, String> {
                match v {
                    Value::Int(i) => <$t>::try_from(i).map_err(|_| format!("{i} is out of range")),
                    Value::Bool(b) => Ok(<$t>::from(b)),
                    other => Err(format!("expected an integer, found {other:?}")),
                }
            }
        }
    )*};
}
int_from_value!(i64, i32, u32, u16, u8, usize, u64);
impl FromValue for bool {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        i64::from_value(v).map(|i| i != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Real(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}
impl FromValue for String {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// Bind values to a statement's placeholders: `params![a, b]`.
#[macro_export]
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::store::ToValue]
    };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::store::ToValue),+] as &[&dyn $crate::store::ToValue]
    };
}

/// Rows in one multi-row `INSERT`: 64 audit events are 960 placeholders, well within
/// both backends' limits (SQLite 32,766, PostgreSQL 65,535).
pub const ROWS_PER_INSERT: usize = 64;

/// `n` placeholders numbered from `first`: "?3, ?4, ?5".
pub fn placeholders(first: usize, n: usize) -> String {
    use std::fmt::Write;
    let mut marks = String::with_capacity(n * 6);
    for i in first..first + n {
        if i > first {
            marks.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(marks, "?{i}");
    }
    marks
}

/// `insert` (`INSERT INTO t (a, b)`) with `VALUES` for `rows` rows of `columns`
/// placeholders each, numbered from 1 row by row.
pub fn values_rows(insert: &str, columns: usize, rows: usize) -> String {
    let rows: Vec<String> = (0..rows)
        .map(|r| format!("({})", placeholders(r * columns + 1, columns)))
        .collect();
    format!("{insert} VALUES {}", rows.join(", "))
}

/// One row of a result.
pub struct Row<'a> {
    inner: RowInner<'a>,
}

enum RowInner<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a tokio_postgres::Row),
}

/// A column position.
pub trait ColumnIndex {
    fn index(&self) -> usize;
}
impl ColumnIndex for usize {
    fn index(&self) -> usize {
        *self
    }
}

impl Row<'_> {
    pub fn get<I: ColumnIndex, T: FromValue>(&self, i: I) -> Result<T> {
        let i = i.index();
        let value = match &self.inner {
            RowInner::Sqlite(r) => sqlite_value(r.get_ref(i)?)?,
            RowInner::Postgres(r) => pg_value(r, i)?,
        };
        T::from_value(value)
            .map_err(|m| Error::Store(StoreError::other(format!("column {i}: {m}"))))
    }

    /// An integer column (NULL as `None`) without the detour through `Value`.
    pub fn int(&self, i: usize) -> Result<Option<i64>> {
        match &self.inner {
            RowInner::Sqlite(r) => match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Ok(None),
                rusqlite::types::ValueRef::Integer(v) => Ok(Some(v)),
                _ => Err(Error::Store(StoreError::other(format!(
                    "column {i}: not an integer"
                )))),
            },
            RowInner::Postgres(_) => self.get(i),
        }
    }

    /// A text column's bytes borrowed from the row (NULL as `None`), not checked to be
    /// UTF-8: for a reader that hands the checking to another thread. PostgreSQL checks
    /// text itself.
    pub fn text_bytes(&self, i: usize) -> Result<Option<&[u8]>> {
        match &self.inner {
            RowInner::Sqlite(r) => match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Ok(None),
                rusqlite::types::ValueRef::Text(t) => Ok(Some(t)),
                _ => Err(Error::Store(StoreError::other(format!(
                    "column {i}: not text"
                )))),
            },
            RowInner::Postgres(r) => Ok(r.try_get::<_, Option<&str>>(i)?.map(str::as_bytes)),
        }
    }
}

/// The longest field (and header extension) `read_binary_copy` takes.
const MOST: usize = 64 << 20;

/// The rows of a binary COPY stream, PostgreSQL's format: a signature, flags and a header
/// extension; then for each row a 16-bit count of its fields and for each field a 32-bit
/// length (-1: NULL) and its bytes; a count of -1 ends it. Each row is handed to `f` as its
/// `N` fields until `f` returns false. Anything else in the stream is an error, not a panic,
/// and a field longer than 64 MB is refused before anything is allocated for it.
///
/// A row that lies whole in what `from` holds (the server sends each row as a message of its
/// own, which `pg_client::CopyOut` holds whole) is read where it lies; one that does not
/// is gathered into a buffer of its own first.
fn read_binary_copy<const N: usize>(
    mut from: impl std::io::BufRead,
    mut f: impl FnMut(&[Option<&[u8]>; N]) -> Result<bool>,
) -> Result<()> {
    const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
    let bad = |what: String| {
        Error::Store(StoreError::other(format!(
            "the server's COPY data cannot be read: {what}"
        )))
    };
    let mut read = |into: &mut [u8]| from.read_exact(into).map_err(|e| bad(format!("{e}")));
    let mut head = [0u8; 19];
    read(&mut head)?;
    if head[..11] != SIGNATURE[..] {
        return Err(bad("it does not start with PGCOPY's signature".into()));
    }
    let mut extension = u32::from_be_bytes([head[15], head[16], head[17], head[18]]) as usize;
    if extension > MOST {
        return Err(bad(format!("a header extension of {extension} bytes")));
    }
    let mut skip = [0u8; 64];
    while extension > 0 {
        let n = extension.min(skip.len());
        read(&mut skip[..n])?;
        extension -= n;
    }
    let mut buf = Vec::new();
    loop {
        let held = from.fill_buf().map_err(|e| bad(format!("{e}")))?;
        let (spans, len) = match row_at::<N>(held).map_err(bad)? {
            Found::End => {
                from.consume(2);
                return Ok(());
            }
            Found::Row(spans, len) => (spans, len),
            Found::More(_) => {
                // A row cut across what the reader holds: gathered into a buffer of its
                // own, no more of it at a time than it is known to need.
                buf.clear();
                let spans = loop {
                    match row_at::<N>(&buf).map_err(bad)? {
                        Found::Row(spans, _) => break spans,
                        Found::End => return Ok(()),
                        Found::More(need) => {
                            let held = from.fill_buf().map_err(|e| bad(format!("{e}")))?;
                            if held.is_empty() {
                                return Err(bad("it ends inside a row".into()));
                            }
                            let n = held.len().min(need - buf.len());
                            buf.extend_from_slice(&held[..n]);
                            from.consume(n);
                        }
                    }
                };
                if !f(&spans.map(|span| span.map(|(start, end)| &buf[start..end])))? {
                    return Ok(());
                }
                continue;
            }
        };
        let go = f(&spans.map(|span| span.map(|(start, end)| &held[start..end])))?;
        from.consume(len);
        if !go {
            return Ok(());
        }
    }
}

/// What `row_at` found at the start of the bytes it was given.
enum Found<const N: usize> {
    /// A row of `N` fields: each field's span (`None`: NULL), and the row's length.
    Row([Option<(usize, usize)>; N], usize),
    /// The stream's trailer (a count of -1).
    End,
    /// The start of a row, cut off: at least this many bytes are needed (more than given).
    More(usize),
}

/// The row of `N` fields, or the trailer, that `bytes` start with; an error (what is wrong)
/// for another count of fields or a length no field has.
fn row_at<const N: usize>(bytes: &[u8]) -> std::result::Result<Found<N>, String> {
    let Some(count) = bytes.get(..2) else {
        return Ok(Found::More(2));
    };
    match i16::from_be_bytes([count[0], count[1]]) {
        -1 => return Ok(Found::End),
        n if usize::try_from(n) == Ok(N) => {}
        n => return Err(format!("a row of {n} fields, not {N}")),
    }
    let mut at = 2;
    let mut spans = [None; N];
    for span in spans.iter_mut() {
        let Some(len) = bytes.get(at..at + 4) else {
            return Ok(Found::More(at + 4));
        };
        at += 4;
        let len = match i32::from_be_bytes([len[0], len[1], len[2], len[3]]) {
            -1 => continue,
            len => usize::try_from(len)
                .ok()
                .filter(|&len| len <= MOST)
                .ok_or_else(|| format!("a field of length {len}"))?,
        };
        if bytes.len() < at + len {
            return Ok(Found::More(at + len));
        }
        *span = Some((at, at + len));
        at += len;
    }
    Ok(Found::Row(spans, at))
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Result<Value> {
    use rusqlite::types::ValueRef;
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(
            String::from_utf8(t.to_vec())
                .map_err(|_| Error::Store(StoreError::other("a text column is not UTF-8")))?,
        ),
        ValueRef::Blob(_) => {
            return Err(Error::Store(StoreError::other(
                "a column holds a blob, which pim never writes",
            )))
        }
    })
}

fn pg_value(r: &tokio_postgres::Row, i: usize) -> Result<Value> {
    use tokio_postgres::types::Type;
    let ty = r
        .columns()
        .get(i)
        .ok_or_else(|| Error::Store(StoreError::other(format!("no column {i}"))))?
        .type_()
        .clone();
    let v = if ty == Type::INT8 {
        r.try_get::<_, Option<i64>>(i)?.map(Value::Int)
    } else if ty == Type::INT4 {
        r.try_get::<_, Option<i32>>(i)?
            .map(|v| Value::Int(v.into()))
    } else if ty == Type::INT2 {
        r.try_get::<_, Option<i16>>(i)?
            .map(|v| Value::Int(v.into()))
    } else if ty == Type::BOOL {
        r.try_get::<_, Option<bool>>(i)?
            .map(|v| Value::Int(v.into()))
    } else if ty == Type::FLOAT8 {
        r.try_get::<_, Option<f64>>(i)?.map(Value::Real)
    } else if ty == Type::FLOAT4 {
        r.try_get::<_, Option<f32>>(i)?
            .map(|v| Value::Real(v.into()))
    } else if ty == Type::TEXT || ty == Type::VARCHAR || ty == Type::NAME || ty == Type::BPCHAR {
        r.try_get::<_, Option<String>>(i)?.map(Value::Text)
    } else {
        return Err(Error::Store(StoreError::other(format!(
            "column {i} has type {ty}, which pim does not read (cast it)"
        ))));
    };
    Ok(v.unwrap_or(Value::Null))
}

impl tokio_postgres::types::ToSql for Value {
    /// Each value only as what it is: an integer into an integer or boolean column, text
    /// into text; anything else is refused (never reinterpreted byte for byte).
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use tokio_postgres::types::Type;
        let text = [
            Type::TEXT,
            Type::VARCHAR,
            Type::BPCHAR,
            Type::NAME,
            Type::UNKNOWN,
        ];
        match self {
            Value::Null => Ok(tokio_postgres::types::IsNull::Yes),
            Value::Bool(b) if *ty == Type::BOOL => b.to_sql(ty, out),
            Value::Bool(b) => Value::Int(i64::from(*b)).to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT8 => i.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::BOOL => (*i != 0).to_sql(ty, out),
            Value::Int(i) if *ty == Type::FLOAT8 => (*i as f64).to_sql(ty, out),
            Value::Real(f) if *ty == Type::FLOAT8 => f.to_sql(ty, out),
            Value::Real(f) if *ty == Type::FLOAT4 => (*f as f32).to_sql(ty, out),
            Value::Text(t) if text.contains(ty) => t.as_str().to_sql(ty, out),
            other => Err(format!("a {} value cannot be stored as {ty}", other.kind()).into()),
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
        }
    }
}

/// A statement of the common dialect, with PostgreSQL's placeholders: `?N` → `$N`, a bare
/// `?` → the next number. Quoted text and identifiers are left alone.
pub(crate) fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quote: Option<char> = None;
    let mut next = 0;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    next += 1;
                    digits = next.to_string();
                }
                out.push('$');
                out.push_str(&digits);
            }
            None => out.push(c),
        }
    }
    out
}

/// Which database a connection speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One connection.
pub struct Db {
    inner: Inner,
    /// Depth of open transactions (0: none).
    depth: Cell<u32>,
    /// Rows of the state tables the open write transaction changed, and the audit events it
    /// appended: a change without an event is refused in test builds (see `Tx::commit`).
    changed: Cell<u64>,
    recorded: Cell<u64>,
    /// The audit log's end as the open write transaction left it (`None` outside one).
    pub(super) log_end: RefCell<Option<LogEnd>>,
    /// Write transactions are `pim sweep`'s batches (see `Db::unflushed_writes`).
    unflushed: Cell<bool>,
}

/// What the next append builds on, as this write transaction appended it: nobody else can
/// append while it is open, so the store is not asked again for every event (each question
/// a round trip to a PostgreSQL server). Forgotten when the transaction ends or rolls back
/// to a savepoint. Unknown parts are read from the store once.
#[derive(Debug, Default)]
pub(super) struct LogEnd {
    /// The last event's seq and hash (`Some(None)`: the log is empty).
    pub head: Option<Option<(i64, String)>>,
    /// Leaves of the stored Merkle tree.
    pub leaves: Option<u64>,
    /// The last left (even) node stored at each level: the left sibling the next complete
    /// subtree of that level is made with.
    pub left: Vec<Option<(u64, crate::merkle::Hash)>>,
}

/// The tables whose rows are pim's state, every change of which the audit log explains.
/// (The outbox's delivery state, reminders sent and rate-limit windows are bookkeeping.)
const STATE_TABLES: [&str; 8] = [
    "meta",
    "users",
    "assignments",
    "requests",
    "decisions",
    "reviews",
    "review_items",
    "audit_events",
];

/// The table an INSERT, UPDATE or DELETE writes to.
fn written_table(sql: &str) -> Option<&str> {
    let mut words = sql.split_whitespace();
    let first = words.next()?;
    let table = if first.eq_ignore_ascii_case("INSERT") || first.eq_ignore_ascii_case("DELETE") {
        words.nth(1)?
    } else if first.eq_ignore_ascii_case("UPDATE") {
        words.next()?
    } else {
        return None;
    };
    Some(table.split('(').next().unwrap_or(table))
}

#[allow(clippy::large_enum_variant)] // one per process
enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres {
        client: RefCell<super::pg_client::Client>,
        statements: RefCell<HashMap<String, tokio_postgres::Statement>>,
        /// The server runs on this machine (see `Db::server_beside`).
        beside: bool,
    },
}

/// What a query hands over: the rows' values, converted by `f`.
pub type Rows<T> = std::vec::IntoIter<Result<T>>;

impl Db {
    pub(crate) fn sqlite(conn: rusqlite::Connection) -> Db {
        Db {
            inner: Inner::Sqlite(conn),
            depth: Cell::new(0),
            changed: Cell::new(0),
            recorded: Cell::new(0),
            log_end: RefCell::new(None),
            unflushed: Cell::new(false),
        }
    }

    pub(crate) fn postgres(client: super::pg_client::Client, beside: bool) -> Db {
        Db {
            inner: Inner::Postgres {
                client: RefCell::new(client),
                statements: RefCell::new(HashMap::new()),
                beside,
            },
            depth: Cell::new(0),
            changed: Cell::new(0),
            recorded: Cell::new(0),
            log_end: RefCell::new(None),
            unflushed: Cell::new(false),
        }
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres { .. } => Backend::Postgres,
        }
    }

    /// Whether the store is a PostgreSQL server on this machine (reached through a Unix
    /// socket, `localhost` or a loopback address), whose session shares its cores with pim.
    pub fn server_beside(&self) -> bool {
        matches!(self.inner, Inner::Postgres { beside: true, .. })
    }

    fn pg_statement(&self, sql: &str, params: &[Value]) -> Result<tokio_postgres::Statement> {
        let Inner::Postgres {
            client, statements, ..
        } = &self.inner
        else {
            unreachable!("only called on PostgreSQL")
        };
        if let Some(s) = statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let translated = to_postgres(sql);
        let typed_key = format!("{sql}\u{0}typed");
        let prepared = if statements.borrow().contains_key(&typed_key) {
            Err(None)
        } else {
            client.borrow_mut().prepare(&translated).map_err(Some)
        };
        let stmt = match prepared {
            Ok(stmt) => stmt,
            // A placeholder whose type the server cannot tell from its first use (`?1 IS
            // NULL OR name = ?1`): name the types of the values at hand. Such a statement is
            // cached under its types too. Not inside a transaction: the failed prepare has
            // aborted it, and the retry would report only that; the server's own error says
            // what is wrong with the statement.
            Err(e)
                if (e.is_none() || self.depth.get() == 0)
                    && e.as_ref().is_none_or(|e| {
                        use tokio_postgres::error::SqlState;
                        // 42P18, or 42P08 (AMBIGUOUS_PARAMETER) for `?1 IS NULL`.
                        e.code() == Some(&SqlState::INDETERMINATE_DATATYPE)
                            || e.code() == Some(&SqlState::AMBIGUOUS_PARAMETER)
                    }) =>
            {
                use tokio_postgres::types::Type;
                let types: Vec<Type> = params
                    .iter()
                    .map(|v| match v {
                        Value::Bool(_) => Type::BOOL,
                        Value::Int(_) => Type::INT8,
                        Value::Real(_) => Type::FLOAT8,
                        Value::Null | Value::Text(_) => Type::TEXT,
                    })
                    .collect();
                let key = format!("{sql}\u{0}{types:?}");
                if let Some(s) = statements.borrow().get(&key) {
                    return Ok(s.clone());
                }
                let stmt = client.borrow_mut().prepare_typed(&translated, &types)?;
                statements.borrow_mut().insert(key, stmt.clone());
                statements.borrow_mut().insert(typed_key, stmt.clone());
                return Ok(stmt);
            }
            Err(e) => return Err(e.expect("only None when typed").into()),
        };
        statements
            .borrow_mut()
            .insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    fn pg_params(params: &[&dyn ToValue]) -> Vec<Value> {
        params.iter().map(|p| p.to_value()).collect()
    }

    /// Room for a bulk change's pages (SQLite: a 32 MB page cache for this connection, not
    /// 2 MB): an import into a large store touches index pages all over its trees, and pages
    /// dropped from a small cache are read again (10,000 rows into 100,000: 0.36 s, 0.33 s
    /// with the room). PostgreSQL's buffers are the server's.
    pub fn make_room_for_bulk(&self) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.pragma_update(None, "cache_size", -32 * 1024)?),
            Inner::Postgres { .. } => Ok(()),
        }
    }

    /// Run statements that take no parameters (schema, savepoints).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres { client, .. } => Ok(client.borrow_mut().batch_execute(sql)?),
        }
    }

    /// Run one statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<usize> {
        let n = self.run(sql, params)?;
        self.count(sql, n);
        Ok(n)
    }

    /// Count what a write changed (for `Tx::commit`'s check).
    fn count(&self, sql: &str, n: usize) {
        let table = written_table(sql);
        if matches!(table, Some("audit_events" | "merkle_nodes")) {
            // Written by other than the append (which keeps its `LogEnd` itself).
            if let Some(end) = self.log_end.borrow_mut().as_mut() {
                *end = LogEnd::default();
            }
        }
        match table {
            Some("audit_events") => self.recorded.set(self.recorded.get() + n as u64),
            Some(t) if STATE_TABLES.contains(&t) => self.changed.set(self.changed.get() + n as u64),
            _ => {}
        }
    }

    pub(super) fn run(&self, sql: &str, params: &[&dyn ToValue]) -> Result<usize> {
        match &self.inner {
            Inner::Sqlite(c) => {
                #[cfg(debug_assertions)]
                {
                    super::note_plan(c, sql);
                    super::note_run(sql);
                }
                let mut stmt = c.prepare_cached(sql)?;
                let values: Vec<SqliteValue> =
                    params.iter().map(|p| SqliteValue(p.to_value())).collect();
                let n = stmt.execute(rusqlite::params_from_iter(values.iter()))?;
                #[cfg(debug_assertions)]
                super::note_reprepared(sql, &stmt);
                Ok(n)
            }
            Inner::Postgres { client, .. } => {
                let values = Self::pg_params(params);
                let stmt = self.pg_statement(sql, &values)?;
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    values.iter().map(|v| v as _).collect();
                Ok(client.borrow_mut().execute(&stmt, &refs)? as usize)
            }
        }
    }

    /// Hand each row to `f` as it arrives (memory stays at one row); `f` may stop the query
    /// early by returning `Ok(false)`.
    pub fn query_each(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        mut f: impl FnMut(&Row<'_>) -> Result<bool>,
    ) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(c) => {
                #[cfg(debug_assertions)]
                {
                    super::note_plan(c, sql);
                    super::note_run(sql);
                }
                let mut stmt = c.prepare_cached(sql)?;
                let values: Vec<SqliteValue> =
                    params.iter().map(|p| SqliteValue(p.to_value())).collect();
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                while let Some(r) = rows.next()? {
                    if !f(&Row {
                        inner: RowInner::Sqlite(r),
                    })? {
                        break;
                    }
                }
                drop(rows);
                #[cfg(debug_assertions)]
                super::note_reprepared(sql, &stmt);
                Ok(())
            }
            Inner::Postgres { client, .. } => {
                let values = Self::pg_params(params);
                let stmt = self.pg_statement(sql, &values)?;
                client.borrow_mut().query_each(&stmt, values.iter(), |r| {
                    f(&Row {
                        inner: RowInner::Postgres(&r),
                    })
                })
            }
        }
    }

    /// PostgreSQL: each row of `query` as the server writes it in binary COPY, handed to `f`
    /// as its `N` fields' bytes (`None` for NULL) until `f` returns false, without a row
    /// object made and a type checked for every field (`audit verify` reads the whole log
    /// this way). `None` on SQLite, whose rows are read where they lie anyway. `f` must not
    /// use this connection: it is busy with the COPY until the last row (as in `query_each`).
    pub fn copy_each<const N: usize>(
        &self,
        query: &str,
        f: impl FnMut(&[Option<&[u8]>; N]) -> Result<bool>,
    ) -> Option<Result<()>> {
        let Inner::Postgres { client, .. } = &self.inner else {
            return None;
        };
        let mut client = client.borrow_mut();
        Some(
            client
                .copy_out(&format!("COPY ({query}) TO STDOUT (FORMAT binary)"))
                .map_err(Error::from)
                .and_then(|reader| {
                    // The reader holds one message, a row, at a time: each row is read
                    // where it lies there (a buffer of its own copied every row again).
                    read_binary_copy(reader, f)
                }),
        )
    }

    /// Run an `INSERT` of one row; the id the store gave it.
    pub fn insert(&self, sql: &str, params: &[&dyn ToValue]) -> Result<i64> {
        let id = self.query_row(&format!("{sql} RETURNING id"), params, |r| r.get(0))?;
        self.count(sql, 1);
        Ok(id)
    }

    /// Every row, each converted by `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Rows<T>> {
        let mut out = Vec::new();
        if let Inner::Postgres { client, .. } = &self.inner {
            // Read the whole result before converting it, so that `f` may run queries of its own.
            let values = Self::pg_params(params);
            let stmt = self.pg_statement(sql, &values)?;
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                values.iter().map(|v| v as _).collect();
            let rows = client.borrow_mut().query(&stmt, &refs)?;
            for r in &rows {
                out.push(f(&Row {
                    inner: RowInner::Postgres(r),
                }));
            }
            return Ok(out.into_iter());
        }
        self.query_each(sql, params, |r| {
            out.push(f(r));
            Ok(true)
        })?;
        Ok(out.into_iter())
    }

    /// The first row, converted by `f`; an error that `is_no_rows` when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        if let Inner::Postgres { .. } = &self.inner {
            let mut f = Some(f);
            let first = self
                .query_map(sql, params, |r| Ok(f.take().map(|f| f(r))))?
                .next();
            return match first {
                Some(Ok(Some(v))) => v,
                Some(Err(e)) => Err(e),
                _ => Err(no_rows()),
            };
        }
        let mut f = Some(f);
        let mut out = None;
        self.query_each(sql, params, |r| {
            out = Some((f.take().expect("called once"))(r));
            Ok(false)
        })?;
        out.unwrap_or_else(|| Err(no_rows()))
    }

    /// A statement to run several times (kept for the call sites' shape: every statement
    /// is cached by the connection anyway).
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_>> {
        Ok(Stmt {
            db: self,
            sql: sql.to_string(),
        })
    }

    /// Alias of `prepare_cached`.
    pub fn prepare(&self, sql: &str) -> Result<Stmt<'_>> {
        self.prepare_cached(sql)
    }

    /// Start a write transaction, serialised against every other (the module's contract).
    pub fn write(&self) -> Result<Tx<'_>> {
        if self.depth.get() != 0 {
            return Err(Error::Store(StoreError::other(
                "a transaction is already open on this connection",
            )));
        }
        self.changed.set(0);
        self.recorded.set(0);
        match &self.inner {
            Inner::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE")?,
            Inner::Postgres { client, .. } => {
                let unflushed = self.unflushed.get();
                if unflushed {
                    // A sweep's batch: it waits for a durable read between that read's flush
                    // and its snapshot (`durable_read`) before it takes the head row, so no
                    // writer waits with it; and its commit does not wait for its flush.
                    client.borrow_mut().batch_execute(&format!(
                        "BEGIN; SELECT pg_advisory_xact_lock({SWEEP_BATCH}); \
                         SET LOCAL synchronous_commit = off"
                    ))?;
                } else {
                    client.borrow_mut().batch_execute("BEGIN")?;
                }
                self.depth.set(1);
                // The audit chain's head row orders every writer.
                let begun = self
                    .query_row(
                        "SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE",
                        params![],
                        |r| r.get::<_, i64>(0),
                    )
                    .and_then(|_| {
                        // The mark that durable reads look for, behind the head row: the
                        // sweep's last transaction, which takes it away, cannot run between.
                        if unflushed {
                            self.mark_unflushed()?;
                        }
                        Ok(())
                    });
                if let Err(e) = begun {
                    self.depth.set(0);
                    let _ = client.borrow_mut().batch_execute("ROLLBACK");
                    return Err(e);
                }
            }
        }
        self.depth.set(1);
        *self.log_end.borrow_mut() = Some(LogEnd::default());
        Ok(Tx {
            db: self,
            done: false,
        })
    }

    /// Start a read transaction: one consistent view for several statements.
    pub fn read(&self) -> Result<Tx<'_>> {
        if self.depth.get() != 0 {
            return Err(Error::Store(StoreError::other(
                "a transaction is already open on this connection",
            )));
        }
        match &self.inner {
            Inner::Sqlite(c) => c.execute_batch("BEGIN DEFERRED")?,
            Inner::Postgres { client, .. } => client
                .borrow_mut()
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?,
        }
        self.depth.set(1);
        Ok(Tx {
            db: self,
            done: false,
        })
    }

    /// From now on (`true`) until told otherwise, the write transactions on this connection
    /// are `pim sweep`'s batches. On PostgreSQL each commits without waiting for the server to
    /// flush it to disk: every writer queues on the log's head row, which the server frees
    /// only once the commit that holds it is flushed, so a flush the server stalled (a
    /// checkpoint's sync phase) stalled every writer queued behind a batch. What a crash loses
    /// of a batch the next sweep writes down again (time decided it; the rows say what is
    /// recorded), and the next writer's commit, which waits for its own flush, makes the batch
    /// durable first (the WAL is flushed in order). Each batch marks the log in `meta` (taken
    /// away by the sweep's last transaction, `Db::flushed`) and takes `SWEEP_BATCH` first, for
    /// `durable_read`. SQLite: nothing changes (a commit there is durable before it is seen).
    pub fn unflushed_writes(&self, on: bool) {
        self.unflushed.set(on);
    }

    /// Whether a sweep's batches have marked the log (`unflushed_writes`), for the tests.
    #[cfg(test)]
    pub(crate) fn marked_unflushed(&self) -> bool {
        self.query_row(
            "SELECT EXISTS (SELECT 1 FROM meta WHERE key = ?1 AND value = '1')",
            params![super::meta::UNFLUSHED],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// `read`, for a view of the audit log that is shown or handed on (listed, exported,
    /// verified, replayed). On PostgreSQL the server shows a sweep's batch to other sessions
    /// before it is on disk (`unflushed_writes`): a crash then would lose it, and the next
    /// events would take its numbers with other contents, so an export or a verified head that
    /// had shown it would later look like a forked log. While the log is marked, the view is
    /// taken with no batch running (the batches' lock, shared), after a transaction of its own
    /// that writes to the WAL and waits for its flush, and with it for every batch before it
    /// (and for the synchronous standbys, if the server has any). One flush, and no wait at all
    /// while no sweep has marked the log.
    pub fn durable_read(&self) -> Result<Tx<'_>> {
        let tx = self.read()?;
        if self.backend() == Backend::Sqlite {
            return Ok(tx);
        }
        let marked: bool = self.query_row(
            "SELECT NOT pg_is_in_recovery() AND EXISTS \
             (SELECT 1 FROM meta WHERE key = ?1 AND value = '1')",
            params![super::meta::UNFLUSHED],
            |r| r.get(0),
        )?;
        if !marked {
            return Ok(tx);
        }
        drop(tx);
        // One message: the batches' lock shared (waiting for a batch that runs), a row lock
        // on the mark (written to the WAL; it conflicts with no batch's nor the sweep's last
        // transaction's, which change no key) committed with a wait for its flush, then the
        // view's snapshot, taken by the statement that lets the batches go on.
        let mark = super::meta::UNFLUSHED;
        let taken = self.execute_batch(&format!(
            "SELECT pg_advisory_lock_shared({SWEEP_BATCH}); \
             BEGIN; SET LOCAL synchronous_commit = on; \
             SELECT 1 FROM meta WHERE key = '{mark}' FOR KEY SHARE; COMMIT; \
             BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SELECT pg_advisory_unlock_shared({SWEEP_BATCH})"
        ));
        if let Err(e) = taken {
            let _ = self.execute_batch("ROLLBACK");
            let _ = self.execute_batch(&format!("SELECT pg_advisory_unlock_shared({SWEEP_BATCH})"));
            return Err(e);
        }
        self.depth.set(1);
        Ok(Tx {
            db: self,
            done: false,
        })
    }

    /// Mark a point inside the open transaction to return to.
    pub fn savepoint(&self, name: &'static str) -> Result<()> {
        self.execute_batch(&format!("SAVEPOINT {name}"))
    }

    /// Undo everything since the savepoint `name`, and forget it.
    pub fn rollback_to(&self, name: &'static str) -> Result<()> {
        if let Some(end) = self.log_end.borrow_mut().as_mut() {
            *end = LogEnd::default();
        }
        self.execute_batch(&format!(
            "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
        ))
    }

    /// Keep everything since the savepoint `name`, and forget it.
    pub fn release(&self, name: &'static str) -> Result<()> {
        self.execute_batch(&format!("RELEASE SAVEPOINT {name}"))
    }

    /// Whether a transaction is open on this connection.
    pub fn in_transaction(&self) -> bool {
        self.depth.get() > 0
    }
}

/// The advisory lock (on PostgreSQL) each of `pim sweep`'s batches holds for its
/// transaction, and a durable read shares while it makes the batches before it durable and
/// takes its snapshot (`Db::durable_read`): "pimsweep" as a number.
const SWEEP_BATCH: i64 = 8100125747494348144;

struct SqliteValue(Value);

impl rusqlite::ToSql for SqliteValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match &self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// A statement bound to its connection.
pub struct Stmt<'a> {
    db: &'a Db,
    sql: String,
}

impl Stmt<'_> {
    pub fn execute(&mut self, params: &[&dyn ToValue]) -> Result<usize> {
        self.db.execute(&self.sql, params)
    }

    pub fn query_row<T>(
        &mut self,
        params: &[&dyn ToValue],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.db.query_row(&self.sql, params, f)
    }

    pub fn query_map<T>(
        &mut self,
        params: &[&dyn ToValue],
        f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Rows<T>> {
        self.db.query_map(&self.sql, params, f)
    }

    pub fn exists(&mut self, params: &[&dyn ToValue]) -> Result<bool> {
        let mut found = false;
        self.db.query_each(&self.sql, params, |_| {
            found = true;
            Ok(false)
        })?;
        Ok(found)
    }
}

/// An open transaction: it rolls back when dropped uncommitted. Statements run on it
/// through `Deref` to the connection.
pub struct Tx<'a> {
    db: &'a Db,
    done: bool,
}

impl Tx<'_> {
    /// Commit. In a test build, a transaction that changed pim's state without appending
    /// an audit event is rolled back and refused: every change is on record, structurally.
    pub fn commit(mut self) -> Result<()> {
        if cfg!(debug_assertions) && self.db.changed.get() > 0 && self.db.recorded.get() == 0 {
            return Err(Error::Store(StoreError::other(format!(
                "internal error: a write transaction changed {} row(s) of pim's state without an audit event; nothing was kept",
                self.db.changed.get()
            ))));
        }
        self.done = true;
        self.db.depth.set(0);
        self.db.log_end.borrow_mut().take();
        self.db.execute_batch("COMMIT")
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.db.depth.set(0);
            self.db.log_end.borrow_mut().take();
            let _ = self.db.execute_batch("ROLLBACK");
        }
    }
}

/// `.optional()` on a query that returns at most one row.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::Store(e)) if e.is_no_rows() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Rows read into tuples: `rows::<(String, i64)>(db, sql, params)`.
pub trait FromRow: Sized {
    fn from_row(r: &Row<'_>) -> Result<Self>;
}

macro_rules! tuple_from_row {
    ($($n:tt $t:ident),+) => {
        impl<$($t: FromValue),+> FromRow for ($($t,)+) {
            fn from_row(r: &Row<'_>) -> Result<Self> {
                Ok(($(r.get::<_, $t>($n)?,)+))
            }
        }
    };
}
tuple_from_row!(0 A);
tuple_from_row!(0 A, 1 B);
tuple_from_row!(0 A, 1 B, 2 C);
tuple_from_row!(0 A, 1 B, 2 C, 3 D);
tuple_from_row!(0 A, 1 B, 2 C, 3 D, 4 E);
tuple_from_row!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F);
tuple_from_row!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G);
tuple_from_row!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H);
tuple_from_row!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H, 8 I);
tuple_from_row!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H, 8 I, 9 J);
tuple_from_row!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H, 8 I, 9 J, 10 K);
tuple_from_row!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H, 8 I, 9 J, 10 K, 11 L);

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream: the header (with `extension` bytes of header extension), the
    /// rows (each field `None` for NULL), the trailer.
    fn copy_stream(extension: usize, rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&(extension as u32).to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, extension));
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    /// The rows read from `stream` held whole (each row read where it lies), and held
    /// `held` bytes at a time (rows cut anywhere, gathered first); an error where
    /// either is one, and both must read the same.
    fn read_all<const N: usize>(stream: &[u8]) -> Result<Vec<Vec<Option<Vec<u8>>>>> {
        let read = |from: &mut dyn std::io::BufRead| {
            let mut rows = Vec::new();
            read_binary_copy::<N>(from, |fields| {
                rows.push(fields.iter().map(|f| f.map(<[u8]>::to_vec)).collect());
                Ok(true)
            })
            .map(|()| rows)
        };
        let whole = read(&mut &stream[..]);
        for held in [1, 2, 3, 5, 8, 21, 64] {
            let cut = read(&mut std::io::BufReader::with_capacity(held, stream));
            match (&whole, &cut) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{held} bytes held"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{held} bytes held"),
                _ => panic!("{held} bytes held: {whole:?} against {cut:?}"),
            }
        }
        whole
    }

    #[test]
    fn rows_held_whole_are_read_where_they_lie() {
        let rows = vec![vec![Some(&b"abc"[..]), None]];
        let stream = copy_stream(0, &rows);
        let mut seen: Vec<*const u8> = Vec::new();
        read_binary_copy::<2>(&stream[..], |fields| {
            seen.push(fields[0].unwrap().as_ptr());
            Ok(true)
        })
        .unwrap();
        // The field is the stream's own bytes, not a copy of them.
        assert_eq!(seen, vec![stream[19 + 2 + 4..].as_ptr()]);
    }

    #[test]
    fn binary_copy_rows_are_read_as_the_server_writes_them() {
        let rows = vec![
            vec![Some(&b"1"[..]), None, Some(&b""[..])],
            vec![Some(&[0xffu8, 0][..]), Some(&b"text"[..]), None],
        ];
        for extension in [0, 5, 200] {
            let got = read_all::<3>(&copy_stream(extension, &rows)).unwrap();
            let want: Vec<Vec<Option<Vec<u8>>>> = rows
                .iter()
                .map(|r| r.iter().map(|f| f.map(<[u8]>::to_vec)).collect())
                .collect();
            assert_eq!(got, want, "extension {extension}");
        }
        // `f` saying stop ends the reading there.
        let mut seen = 0;
        read_binary_copy::<3>(&copy_stream(0, &rows)[..], |_| {
            seen += 1;
            Ok(false)
        })
        .unwrap();
        assert_eq!(seen, 1);
    }

    #[test]
    fn malformed_binary_copy_is_an_error_not_a_panic() {
        let good = copy_stream(0, &[vec![Some(&b"abc"[..]), None]]);
        // Cut anywhere before the trailer ends: an error.
        for cut in 0..good.len() {
            let e = read_all::<2>(&good[..cut]).unwrap_err();
            assert!(
                e.to_string().contains("COPY data cannot be read"),
                "{cut}: {e}"
            );
        }
        assert!(read_all::<2>(&good).is_ok());
        // Another number of fields than asked for.
        assert!(read_all::<3>(&good)
            .unwrap_err()
            .to_string()
            .contains("a row of 2 fields"));
        // Not the signature.
        let mut unsigned = good.clone();
        unsigned[0] = b'X';
        assert!(read_all::<2>(&unsigned).is_err());
        // A length below -1, and one over the limit (refused before it is allocated: the
        // stream does not hold the bytes it claims).
        let field_len_at = 19 + 2;
        for len in [-2i32, i32::MAX] {
            let mut bad = good.clone();
            bad[field_len_at..field_len_at + 4].copy_from_slice(&len.to_be_bytes());
            let e = read_all::<2>(&bad).unwrap_err().to_string();
            assert!(e.contains(&format!("a field of length {len}")), "{e}");
        }
        // A header extension claimed larger than any.
        let mut huge = good.clone();
        huge[15..19].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(read_all::<2>(&huge)
            .unwrap_err()
            .to_string()
            .contains("header extension"));
    }

    #[test]
    fn multi_row_values_number_their_placeholders_row_by_row() {
        assert_eq!(placeholders(3, 3), "?3, ?4, ?5");
        assert_eq!(
            values_rows("INSERT INTO t (a, b)", 2, 3),
            "INSERT INTO t (a, b) VALUES (?1, ?2), (?3, ?4), (?5, ?6)"
        );
    }

    #[test]
    fn placeholders_become_numbered_outside_quotes() {
        assert_eq!(
            to_postgres("SELECT '?1', \"a?\" FROM t WHERE a = ?1 AND b = ?12 OR c = ?"),
            "SELECT '?1', \"a?\" FROM t WHERE a = $1 AND b = $12 OR c = $1"
        );
    }

    /// A session of the database at `url` outside pim's, and whether it gets the sweep's
    /// batches' lock (shared, as a durable read takes it) now; it lets it go at once.
    fn batches_lock_free(other: &mut ::postgres::Client) -> bool {
        let got: bool = other
            .query_one(
                &format!("SELECT pg_try_advisory_lock_shared({SWEEP_BATCH})"),
                &[],
            )
            .unwrap()
            .get(0);
        if got {
            other
                .batch_execute(&format!("SELECT pg_advisory_unlock_shared({SWEEP_BATCH})"))
                .unwrap();
        }
        got
    }

    /// A sweep's batch (`unflushed_writes`) commits without waiting for its flush on
    /// PostgreSQL, holds the batches' lock while it runs, and marks the log until a
    /// transaction that waits for its flush takes the mark away; the connection's other
    /// transactions wait for their flush (even on a server whose default is not to). SQLite:
    /// nothing changes.
    #[test]
    fn a_sweeps_batch_commits_unflushed_under_its_lock_and_marks_the_log() {
        let postgres = crate::store::test_server::on_postgres();
        let (db, mut other) = if postgres {
            let url = crate::store::test_server::fresh_database();
            let db = crate::store::pg::create(&url, false).unwrap().conn;
            (db, Some(crate::store::test_server::client(&url)))
        } else {
            (crate::store::test_db(), None)
        };
        let setting = |db: &Db| -> String {
            db.query_row("SHOW synchronous_commit", params![], |r| r.get(0))
                .unwrap()
        };
        // The test server's default is `off`; pim's sessions wait for their flush anyway.
        if postgres {
            assert_eq!(setting(&db), "on");
        }
        db.unflushed_writes(true);
        let tx = db.write().unwrap();
        if let Some(other) = other.as_mut() {
            assert_eq!(setting(&tx), "off");
            assert!(!batches_lock_free(other), "a batch runs without its lock");
        }
        tx.commit().unwrap();
        if let Some(other) = other.as_mut() {
            assert!(
                batches_lock_free(other),
                "a batch kept its lock past its commit"
            );
        }
        assert_eq!(db.marked_unflushed(), postgres);
        db.unflushed_writes(false);
        let tx = db.write().unwrap();
        if let Some(other) = other.as_mut() {
            assert_eq!(setting(&tx), "on");
            assert!(batches_lock_free(other));
        }
        tx.flushed().unwrap();
        tx.commit().unwrap();
        assert!(!db.marked_unflushed());
    }

    /// While the log is marked, a durable read waits for a batch that runs, and makes
    /// everything written before its snapshot durable: here another session's WAL, written in
    /// a transaction still open (the server's WAL writer flushes whole pages of it, not the
    /// last). Unmarked, it waits for no batch.
    #[test]
    fn a_durable_read_waits_for_a_running_batch_and_for_the_flush_of_what_it_sees() {
        use crate::store::test_server::{client, fresh_database, on_postgres};
        use std::time::{Duration, Instant};
        if !on_postgres() {
            return;
        }
        let url = fresh_database();
        let db = crate::store::pg::create(&url, false).unwrap().conn;
        // A batch running in another session: its lock held for 300 ms.
        let run_batch = |url: &str| {
            let mut c = client(url);
            c.batch_execute(&format!("SELECT pg_advisory_lock({SWEEP_BATCH})"))
                .unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                c.batch_execute(&format!("SELECT pg_advisory_unlock({SWEEP_BATCH})"))
                    .unwrap();
            })
        };
        let batch = run_batch(&url);
        let started = Instant::now();
        drop(db.durable_read().unwrap());
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "an unmarked log's durable read waited for a batch"
        );
        batch.join().unwrap();
        let tx = db.write().unwrap();
        tx.mark_unflushed().unwrap();
        tx.commit().unwrap();
        let mut other = client(&url);
        other.batch_execute("CREATE TABLE filler (x text)").unwrap();
        other.batch_execute("BEGIN").unwrap();
        other
            .batch_execute(
                "INSERT INTO filler SELECT repeat(md5(n::text), 40) FROM generate_series(1, 500) n",
            )
            .unwrap();
        let end: String = other
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .unwrap()
            .get(0);
        let batch = run_batch(&url);
        let started = Instant::now();
        let read = db.durable_read().unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "a durable read did not wait for the batch that ran"
        );
        let flushed: bool = other
            .query_one(
                &format!("SELECT pg_current_wal_flush_lsn() >= '{end}'::pg_lsn"),
                &[],
            )
            .unwrap()
            .get(0);
        assert!(flushed, "the read began before what it may see was flushed");
        // The view is the read's: its snapshot holds the mark.
        assert!(read.marked_unflushed());
        drop(read);
        batch.join().unwrap();
        other.batch_execute("ROLLBACK").unwrap();
    }
}
