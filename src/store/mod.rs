//! The SQLite store: opening and creating the file, pragmas, and the numbered, append-only
//! migrations tracked with `user_version`.

use crate::error::{Error, Result};
use crate::privilege::{self, FileId};
use rusqlite::{Connection, OpenFlags};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

mod alerts;
pub mod assignments;
pub mod audit;
pub mod copy;
mod merkle;
mod meta;
pub mod outbox;
pub mod requests;
pub mod reviews;
pub use assignments::Assignment;
pub use requests::{Decision, Request};
mod users;
pub use users::{TokenState, TotpState, User};
pub mod pg;
mod pg_client;
mod sql;
pub use crate::params;
pub use sql::{
    placeholders, values_rows, Backend, ColumnIndex, Db, FromRow, FromValue, OptionalExtension,
    Row, Rows, Stmt, StoreError, ToValue, Tx, Value, ROWS_PER_INSERT,
};

/// `PRAGMA application_id` of a pim database ("pim1"), so that another SQLite file is
/// recognised as not ours.
const APPLICATION_ID: i64 = 0x7069_6d31;

/// The migrations, in order. Never remove or edit an entry: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the foundation.
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE users (
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    email            TEXT,
    display_name     TEXT,
    kind             TEXT NOT NULL DEFAULT 'user' CHECK (kind IN ('user', 'service')),
    disabled         INTEGER NOT NULL DEFAULT 0,
    totp_secret      TEXT,
    totp_last_step   INTEGER,
    mfa_failures     INTEGER NOT NULL DEFAULT 0,
    mfa_locked_until INTEGER,
    created_at       INTEGER NOT NULL
);
CREATE TABLE assignments (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users(id),
    role            TEXT NOT NULL,
    scope           TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('eligible', 'active')),
    start_at        INTEGER NOT NULL,
    end_at          INTEGER,
    justification   TEXT,
    ticket          TEXT,
    created_by      TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    removed_at      INTEGER,
    removed_by      TEXT,
    expiry_recorded INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX assignments_by_user ON assignments (user_id, role);
CREATE INDEX assignments_by_role ON assignments (role);
CREATE TABLE requests (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users(id),
    role           TEXT NOT NULL,
    scope          TEXT NOT NULL,
    eligibility_id INTEGER REFERENCES assignments(id),
    status         TEXT NOT NULL CHECK (status IN ('pending', 'scheduled', 'active', 'expired',
                       'deactivated', 'revoked', 'denied', 'canceled', 'timed_out')),
    created_at     INTEGER NOT NULL,
    start_at       INTEGER NOT NULL,
    end_at         INTEGER NOT NULL,
    justification  TEXT,
    ticket         TEXT,
    closed_at      INTEGER,
    closed_by      TEXT,
    close_reason   TEXT
);
CREATE INDEX requests_by_user ON requests (user_id, role, status);
CREATE INDEX requests_by_status ON requests (status);
CREATE TABLE audit_events (
    seq           INTEGER PRIMARY KEY,
    time          INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    principal     TEXT,
    role          TEXT,
    scope         TEXT,
    request       INTEGER,
    justification TEXT,
    ticket        TEXT,
    expires       INTEGER,
    result        TEXT NOT NULL,
    details       TEXT NOT NULL,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);
CREATE INDEX audit_events_by_time ON audit_events (time);
-- The log is append-only. The chain proves it; these triggers keep pim honest.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
"#,
    // 2: approvals. A request remembers the duration asked for (the window starts at approval),
    // when it must be decided by, and which activation an extension extends.
    r#"
ALTER TABLE requests ADD COLUMN duration_secs INTEGER;
ALTER TABLE requests ADD COLUMN decide_by INTEGER;
ALTER TABLE requests ADD COLUMN extends INTEGER REFERENCES requests(id);
CREATE TABLE decisions (
    id            INTEGER PRIMARY KEY,
    request_id    INTEGER NOT NULL REFERENCES requests(id),
    approver      TEXT NOT NULL,
    decision      TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    justification TEXT,
    at            INTEGER NOT NULL,
    UNIQUE (request_id, approver)
);
"#,
    // 3: the notification outbox, written in the event's transaction and delivered after it
    // commits; and the reminders already queued, so each is sent once.
    r#"
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    event           TEXT NOT NULL,
    channel         TEXT NOT NULL CHECK (channel IN ('smtp', 'webhook', 'command')),
    recipients      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
CREATE TABLE reminders (
    assignment_id INTEGER NOT NULL REFERENCES assignments(id),
    kind          TEXT NOT NULL,
    PRIMARY KEY (assignment_id, kind)
);
"#,
    // 4: access reviews: each covers the assignments of a role as they stood when it started.
    r#"
CREATE TABLE reviews (
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL,
    role             TEXT NOT NULL,
    scope            TEXT NOT NULL,
    self_review      INTEGER NOT NULL DEFAULT 0,
    reviewers        TEXT NOT NULL,
    default_decision TEXT NOT NULL CHECK (default_decision IN ('keep', 'remove', 'recommendation')),
    recurrence       TEXT CHECK (recurrence IN ('weekly', 'monthly', 'quarterly', 'semiannual', 'annual')),
    duration_secs    INTEGER NOT NULL,
    created_by       TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    ends_at          INTEGER NOT NULL,
    completed_at     INTEGER,
    completed_by     TEXT,
    next_started     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE review_items (
    id             INTEGER PRIMARY KEY,
    review_id      INTEGER NOT NULL REFERENCES reviews(id),
    assignment_id  INTEGER NOT NULL REFERENCES assignments(id),
    user           TEXT NOT NULL,
    role           TEXT NOT NULL,
    scope          TEXT NOT NULL,
    kind           TEXT NOT NULL,
    recommendation TEXT NOT NULL CHECK (recommendation IN ('keep', 'remove')),
    reason         TEXT NOT NULL,
    decision       TEXT CHECK (decision IN ('keep', 'remove')),
    reviewer       TEXT,
    justification  TEXT,
    decided_at     INTEGER,
    applied        TEXT CHECK (applied IN ('keep', 'remove')),
    result         TEXT,
    UNIQUE (review_id, assignment_id)
);
"#,
    // 5: service principals authenticate with a token; only its SHA-256 is kept.
    r#"
ALTER TABLE users ADD COLUMN token_hash TEXT;
"#,
    // 6: the security boundary. The instance id names this database's key file (TOTP secrets
    // are sealed with a key kept outside the database; 'plain' marks a database whose secrets
    // still wait to be sealed). An authenticator locked for good after too many failures.
    // Failed sign-ins of callers who are not (yet) pim users, per operating-system account,
    // for rate limiting. Indexes so that bulk imports and the end of an eligibility find
    // their rows in one lookup.
    r#"
INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', lower(hex(randomblob(16))));
INSERT OR IGNORE INTO meta (key, value)
    SELECT 'secrets', CASE WHEN EXISTS (SELECT 1 FROM users WHERE totp_secret IS NOT NULL)
                           THEN 'plain' ELSE 'sealed' END;
ALTER TABLE users ADD COLUMN mfa_blocked INTEGER NOT NULL DEFAULT 0;
CREATE TABLE account_failures (
    account      TEXT PRIMARY KEY,
    failures     INTEGER NOT NULL,
    first_at     INTEGER NOT NULL,
    locked_until INTEGER
);
CREATE INDEX assignments_current ON assignments (user_id, role, scope, kind);
CREATE INDEX requests_by_eligibility ON requests (eligibility_id);
"#,
    // 7: the audit log as a Merkle tree (RFC 6962): the hash of every complete subtree,
    // appended with the events (an existing log's is filled in by the next append).
    r#"
CREATE TABLE merkle_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  TEXT NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TRIGGER merkle_nodes_no_update BEFORE UPDATE ON merkle_nodes
BEGIN SELECT RAISE(ABORT, 'the Merkle tree is append-only'); END;
CREATE TRIGGER merkle_nodes_no_delete BEFORE DELETE ON merkle_nodes
BEGIN SELECT RAISE(ABORT, 'the Merkle tree is append-only'); END;
"#,
    // 8: indexes on the foreign keys that had none (a parent's change looks its children
    // up by them) and on what the sweep looks for (assignments ending, reviews due): nothing
    // on a hot path reads a growing table whole (tests/it/performance.rs).
    r#"
CREATE INDEX requests_by_extends ON requests (extends);
CREATE INDEX review_items_by_assignment ON review_items (assignment_id);
CREATE INDEX assignments_ending ON assignments (end_at) WHERE removed_at IS NULL;
CREATE INDEX reviews_open ON reviews (ends_at) WHERE completed_at IS NULL;
CREATE INDEX reviews_to_repeat ON reviews (id) WHERE recurrence IS NOT NULL AND next_started = 0;
"#,
    // 9: the assignments whose end the sweep has yet to write down. `assignments_ending` also
    // holds those it has written down (they stay until removed), and the sweep read past all
    // of them for each batch of 200: quadratic, minutes for a million.
    r#"
CREATE INDEX assignments_expiring ON assignments (end_at) WHERE removed_at IS NULL AND expiry_recorded = 0;
"#,
    // 10: `assignments_by_user` (user_id, role) is the first half of `assignments_current`
    // (user_id, role, scope, kind), which serves every query it served. Each index keyed by
    // user takes a write on a page of its own for every row an import adds, all over the
    // tree: without this one, 10,000 rows into 1,000,000 took 0.50 s, not 0.62 s.
    r#"
DROP INDEX assignments_by_user;
"#,
    // 11: the active assignments, few beside the eligible: `role list` counted each role's
    // active holders by reading every assignment of the role a second time (PostgreSQL, a
    // million eligible: 69 ms of a 250 ms command). Not `assignments_by_role (role, kind)`:
    // SQLite then read the eligibilities of a user for a role through it, every holder's
    // (an activation at 1,000 users: 4.5 -> 7.7 M instructions). SQLite weighs a partial
    // index only for a literal kind, never a bound one (`SQLITE_DBCONFIG_ENABLE_QPSG`):
    // statements that bind a kind are not prepared again for every row an import adds.
    r#"
CREATE INDEX assignments_active ON assignments (role) WHERE kind = 'active' AND removed_at IS NULL;
"#,
    // 12: each role's eligible holders, counted as assignments change, so that `role list`
    // does not read every eligibility (a million: 256 ms, growing with the store). Per
    // (role, user), the user's eligibilities that are neither removed nor recorded as
    // expired; per role, the users with at least one who are not disabled. Triggers keep
    // both, whatever writes the assignments or disables a user. What the counts cannot know
    // without the clock (eligibilities not yet started, or ended and not yet swept) is taken
    // off when they are read, from the partial indexes of those few rows
    // (`role_holders` in assignments.rs).
    r#"
CREATE TABLE role_holders (
    role    TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (role, user_id)
) WITHOUT ROWID;
CREATE INDEX role_holders_by_user ON role_holders (user_id);
CREATE TABLE role_counts (
    role  TEXT PRIMARY KEY,
    users INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO role_holders (role, user_id, n)
    SELECT role, user_id, count(*) FROM assignments
     WHERE kind = 'eligible' AND removed_at IS NULL AND expiry_recorded = 0
     GROUP BY role, user_id;
INSERT INTO role_counts (role, users)
    SELECT h.role, count(*) FROM role_holders h JOIN users u ON u.id = h.user_id
     WHERE u.disabled = 0 GROUP BY h.role;
CREATE TRIGGER role_holder_added AFTER INSERT ON role_holders
    WHEN NEW.n > 0 AND (SELECT disabled FROM users WHERE id = NEW.user_id) = 0
BEGIN
    INSERT INTO role_counts (role, users) VALUES (NEW.role, 1)
        ON CONFLICT (role) DO UPDATE SET users = users + 1;
END;
CREATE TRIGGER role_holder_changed AFTER UPDATE OF n ON role_holders
    WHEN (OLD.n > 0) <> (NEW.n > 0) AND (SELECT disabled FROM users WHERE id = NEW.user_id) = 0
BEGIN
    INSERT INTO role_counts (role, users) VALUES (NEW.role, CASE WHEN NEW.n > 0 THEN 1 ELSE -1 END)
        ON CONFLICT (role) DO UPDATE SET users = users + excluded.users;
END;
CREATE TRIGGER user_counted_or_not AFTER UPDATE OF disabled ON users
    WHEN (OLD.disabled <> 0) <> (NEW.disabled <> 0)
BEGIN
    INSERT INTO role_counts (role, users)
        SELECT role, CASE WHEN NEW.disabled <> 0 THEN -1 ELSE 1 END FROM role_holders
         WHERE user_id = NEW.id AND n > 0
        ON CONFLICT (role) DO UPDATE SET users = users + excluded.users;
END;
CREATE TRIGGER assignment_counted AFTER INSERT ON assignments
    WHEN NEW.kind = 'eligible' AND NEW.removed_at IS NULL AND NEW.expiry_recorded = 0
BEGIN
    INSERT INTO role_holders (role, user_id, n) VALUES (NEW.role, NEW.user_id, 1)
        ON CONFLICT (role, user_id) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER assignment_no_longer_counted
    AFTER UPDATE OF kind, role, user_id, removed_at, expiry_recorded ON assignments
    WHEN OLD.kind = 'eligible' AND OLD.removed_at IS NULL AND OLD.expiry_recorded = 0
BEGIN
    UPDATE role_holders SET n = n - 1 WHERE role = OLD.role AND user_id = OLD.user_id;
END;
CREATE TRIGGER assignment_counted_again
    AFTER UPDATE OF kind, role, user_id, removed_at, expiry_recorded ON assignments
    WHEN NEW.kind = 'eligible' AND NEW.removed_at IS NULL AND NEW.expiry_recorded = 0
BEGIN
    INSERT INTO role_holders (role, user_id, n) VALUES (NEW.role, NEW.user_id, 1)
        ON CONFLICT (role, user_id) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER assignment_deleted AFTER DELETE ON assignments
    WHEN OLD.kind = 'eligible' AND OLD.removed_at IS NULL AND OLD.expiry_recorded = 0
BEGIN
    UPDATE role_holders SET n = n - 1 WHERE role = OLD.role AND user_id = OLD.user_id;
END;
CREATE INDEX assignments_scheduled ON assignments (start_at)
    WHERE kind = 'eligible' AND removed_at IS NULL AND expiry_recorded = 0;
"#,
    // 13: the assignments keyed by what they grant, then by whom: an import's rows, which
    // share a role and a scope, land side by side in `assignments_by_grant` (role, scope,
    // user_id, kind), where `assignments_current` (user_id, role, scope, kind) put each row
    // of another user on a leaf of its own. The one index still keyed by user,
    // `assignments_by_user` (user_id, role), holds half as much a row, so a leaf holds a
    // row of twice as many users. 10,000 rows for 10,000 users into 1,000,000 assignments:
    // 0.63 -> 0.56 s, 1.65 -> 1.37 x the same import into an empty store (alternating runs,
    // see README, Performance). A lookup by user, role and scope goes through the first; by
    // user and role (an activation's eligibilities, the counts' checks), or by user, through
    // the second; by role, through the first (`assignments_by_role` was its first column).
    r#"
DROP INDEX assignments_current;
DROP INDEX assignments_by_role;
CREATE INDEX assignments_by_user ON assignments (user_id, role);
CREATE INDEX assignments_by_grant ON assignments (role, scope, user_id, kind);
"#,
    // 14: PostgreSQL's audit events kept as the bytes their hashes are made from (see its
    // migration 14). SQLite hands `audit verify` its rows as they are stored, at little cost:
    // nothing changes here, and the numbers stay the same on both backends.
    "",
    // 15: `assignments_by_user` on `user_id` alone. An import into a large store writes one
    // leaf of it for each row (the rows of 10,000 users land all over it), and with the role
    // beside the user id a leaf held half as many: 10,000 rows for 10,000 users into
    // 1,000,000 assignments wrote 5,543 of its 5,581 leaves. With this index (2,689 leaves):
    // 1.025 -> 0.84 s, 1.47 -> 1.27 x the same import into an empty store (alternating runs;
    // README, Performance). A lookup by user and role (an activation's eligibilities, the
    // counts' checks) reads the user's assignments of every role: since migration 12 counts
    // the holders of a role, nothing on a hot path reads more than one user's that way.
    r#"
DROP INDEX assignments_by_user;
CREATE INDEX assignments_by_user ON assignments (user_id);
"#,
];

/// Rows of a store made before migration 12, in SQL both backends take (the conformance
/// test that migration 12 counts what a store already holds): users 1-3 (3 disabled);
/// eligibilities of user 1 for db-admin twice and ops once, of user 2 for db-admin, of user
/// 3 for ops;
/// one removed, one whose expiry the sweep recorded, one active assignment.
#[doc(hidden)]
pub const OLDER_STORE: &str = "
INSERT INTO users (id, name, disabled, created_at) VALUES (1, 'bob', 0, 0), (2, 'carol', 0, 0), (3, 'dave', 1, 0);
INSERT INTO assignments (user_id, role, scope, kind, start_at, end_at, created_by, created_at, removed_at, expiry_recorded)
VALUES (1, 'db-admin', '/a', 'eligible', 0, NULL, 'admin', 0, NULL, 0),
       (1, 'db-admin', '/b', 'eligible', 0, 100, 'admin', 0, NULL, 0),
       (1, 'ops', '/', 'eligible', 0, NULL, 'admin', 0, NULL, 0),
       (2, 'db-admin', '/', 'eligible', 0, NULL, 'admin', 0, NULL, 0),
       (2, 'ops', '/', 'eligible', 0, NULL, 'admin', 0, 50, 0),
       (2, 'ops', '/x', 'eligible', 0, 10, 'admin', 0, NULL, 1),
       (2, 'global-admin', '/', 'active', 0, NULL, 'admin', 0, NULL, 0),
       (3, 'ops', '/', 'eligible', 0, NULL, 'admin', 0, NULL, 0);
";

/// Test builds: with `PIM_TEST_PLANS=FILE` (never under set-group-id), each distinct SQLite
/// statement a command runs is written to FILE with its query plan, for the test that no
/// hot path scans a growing table (`tests/it/performance.rs`).
#[cfg(debug_assertions)]
pub(crate) fn note_plan(c: &rusqlite::Connection, sql: &str) {
    write_plan_note("plan", sql, || {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).ok()?;
        // Parameters left unbound are NULL; the plan does not depend on them.
        let mut rows = stmt.raw_query();
        let mut plan = Vec::new();
        while let Ok(Some(r)) = rows.next() {
            plan.push(r.get::<_, String>(3).unwrap_or_default());
        }
        Some(plan.join(" | "))
    });
}

/// Test builds, with `PIM_TEST_PLANS=FILE` as for `note_plan`: a cached statement SQLite
/// had to prepare again is written down once (`SQL<TAB>REPREPARED`), for the same test.
/// `configure`'s stability guarantee keeps bound values from doing that (a bound kind
/// beside a partial index on it, a bound LIMIT: parsed and planned anew for every row an
/// import adds); this finds whatever else would.
#[cfg(debug_assertions)]
pub(crate) fn note_reprepared(sql: &str, stmt: &rusqlite::Statement<'_>) {
    if stmt.get_status(rusqlite::StatementStatus::RePrepare) != 0 {
        write_plan_note("reprepared", sql, || Some("REPREPARED".to_string()));
    }
}

/// Test builds: with `PIM_TEST_RUNS=FILE` (never under set-group-id), every SQLite statement
/// a command runs is appended to FILE each time it runs, for the test that a list command
/// runs as many statements however many rows it lists (no query for each row).
#[cfg(debug_assertions)]
pub(crate) fn note_run(sql: &str) {
    append_test_note("PIM_TEST_RUNS", || one_line(sql));
}

/// The line `line` makes, appended to the file the environment variable `var` names, when it
/// names one and pim is not set-group-id (test builds only: what the performance tests read
/// back).
#[cfg(debug_assertions)]
fn append_test_note(var: &str, line: impl FnOnce() -> String) {
    use std::io::Write;
    let Some(file) = std::env::var_os(var) else {
        return;
    };
    if crate::privilege::is_setgid() {
        return;
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    {
        let _ = writeln!(f, "{}", line());
    }
}

/// `sql` on one line, its runs of white space made one space.
#[cfg(debug_assertions)]
fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `SQL<TAB>NOTE` appended to `PIM_TEST_PLANS`, once a process for each `kind` of note on
/// each statement; `note` makes it (nothing written if it makes none).
#[cfg(debug_assertions)]
fn write_plan_note(kind: &'static str, sql: &str, note: impl FnOnce() -> Option<String>) {
    thread_local! {
        static SEEN: std::cell::RefCell<std::collections::HashSet<(&'static str, String)>> =
            std::cell::RefCell::default();
    }
    if std::env::var_os("PIM_TEST_PLANS").is_none()
        || crate::privilege::is_setgid()
        || !SEEN.with(|s| s.borrow_mut().insert((kind, sql.to_string())))
    {
        return;
    }
    let Some(note) = note() else {
        return;
    };
    append_test_note("PIM_TEST_PLANS", || format!("{}\t{note}", one_line(sql)));
}

/// What pim learned about the database file SQLite actually opened.
#[derive(Debug, Clone)]
pub struct DbFile {
    /// The path SQLite opened (for the installed database: its real path, without links).
    pub path: PathBuf,
    /// The owner of the file SQLite opened: `--as` is honoured for this account.
    pub owner: u32,
    /// The installed database of a set-group-id pim, opened with the pim group.
    pub installed: bool,
    /// The group the file belongs to.
    pub group: u32,
    /// Only its owner (and root) can change what pim reads as this database: see
    /// `owner_alone`. A server is never this, unless it is the installed one.
    pub owner_alone: bool,
    /// The file, or a directory above it, is on a file system that another account mounted
    /// (`mounted_by_another`): what pim saw of its owner and modes, that account chose.
    /// Never `owner_alone` then.
    pub foreign_mount: bool,
    /// The database file and the companion files SQLite opened (-wal, -shm): no output
    /// file may replace them.
    pub files: Vec<FileId>,
}

/// An open database.
pub struct Database {
    pub conn: Db,
    pub file: DbFile,
}

fn configure(conn: &Connection) -> Result<()> {
    // A busy database is tried again every millisecond for up to 10 seconds (SQLite's own
    // timeout sleeps up to 100 ms between tries, and a waiter can miss every gap a long
    // series of short transactions, such as a sweep's, leaves it).
    conn.busy_handler(Some(retry_when_busy))?;
    // Plans never depend on the values bound to a statement: SQLite otherwise weighs a
    // bound value against a partial index's condition, a LIKE pattern or a LIMIT, and then
    // prepares the statement again every time a value is bound (an import runs some for
    // every row).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // Sorts and temporary tables stay in memory: SQLite never creates a file in a directory
    // that the environment (SQLITE_TMPDIR) names.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // A kept WAL is cut back to this size after a checkpoint, rather than staying at the
    // largest it ever grew to.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    Ok(())
}

/// SQLite's busy handler: `tries` tries so far; whether to try again (after a millisecond).
fn retry_when_busy(tries: i32) -> bool {
    if tries >= BUSY_TRIES {
        return false;
    }
    std::thread::sleep(std::time::Duration::from_millis(1));
    true
}

/// About 10 seconds of tries a millisecond apart (sleeping takes a little longer).
const BUSY_TRIES: i32 = 9_000;

/// Keep the -wal and -shm files when the last connection closes. A shared database's
/// companions are created once (by root, owned like the database) and never again by a
/// caller, whose umask or account would otherwise decide who can open them next.
fn persist_wal(conn: &Connection) {
    let mut on: std::os::raw::c_int = 1;
    // SAFETY: the handle is this open connection's; the file control reads one int.
    unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut std::os::raw::c_int).cast(),
        );
    }
}

/// Apply every migration the database has not seen, each in its own transaction.
/// A database from a newer pim is refused.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::Environment(format!(
            "This database was written by a newer pim (schema {version}; this pim knows {known}). Upgrade pim to use it."
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another pim opening the store at the same moment may have applied it meanwhile
        // (run twice, `DROP INDEX` fails): the version is read again under the write lock.
        let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if now > i as i64 {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// An error while opening: a database that stayed locked says who holds it; anything else
/// means the file is no pim database.
fn open_failed(path: &Path, e: rusqlite::Error) -> Error {
    let e = Error::from(e);
    if e.is_locked() {
        return locked_open(path);
    }
    not_a_database(path, &e.to_string())
}

fn not_a_database(path: &Path, why: &str) -> Error {
    Error::Environment(format!(
        "{} is not a pim database ({why}). Point --db at the right file, or run `pim init` to create one.",
        path.display()
    ))
}

fn missing(path: &Path) -> Error {
    Error::Environment(format!(
        "No pim database at {}. Run `pim init --admin NAME` to create it.",
        path.display()
    ))
}

/// The file descriptors this process has open (not counting the one that listed them).
fn open_fds() -> BTreeSet<i32> {
    let listed: BTreeSet<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // SAFETY: F_GETFD only asks whether the descriptor is open.
    listed
        .into_iter()
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .collect()
}

/// What SQLite opened for the database at `real` (a path without links): the database file
/// itself (a descriptor of that path whose first bytes are SQLite's header) and its -wal and
/// -shm companions. Every descriptor of the process is looked at, not only those opened since
/// the connection began: SQLite's may have a number another thread held and closed meanwhile
/// (seen in the test suite, where tests run side by side). A descriptor of that path from
/// before (another connection to the same database) must be the same file, or pim refuses.
fn opened_files(real: &Path) -> Result<OpenedFiles> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::FromRawFd;
    let companion = |suffix: &str| {
        let mut p = real.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let (wal, shm) = (companion("-wal"), companion("-shm"));
    let mut mains: Vec<std::fs::Metadata> = Vec::new();
    let mut companions = Vec::new();
    let mut fds = Vec::new();
    for fd in &open_fds() {
        let Ok(link) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
            continue;
        };
        if link != real && link != wal && link != shm {
            continue;
        }
        // SAFETY: `fd` is open in this process (SQLite holds it); ManuallyDrop never closes
        // it, and reading at an offset leaves SQLite's file position alone.
        let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(*fd) });
        let Ok(meta) = file.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        if link == real {
            let mut head = [0u8; 16];
            if file.read_at(&mut head, 0).is_ok_and(|n| n == 16) && &head == b"SQLite format 3\0" {
                mains.push(meta);
                fds.push(*fd);
            }
        } else {
            companions.push(meta);
            fds.push(*fd);
        }
    }
    match mains.first() {
        Some(main) if mains.iter().all(|m| FileId::of(m) == FileId::of(main)) => Ok(OpenedFiles {
            main: main.clone(),
            companions,
            fds,
        }),
        _ => Err(Error::Environment(format!(
            "Cannot tell which file SQLite opened for {}; refusing to go on.",
            real.display()
        ))),
    }
}

/// The files SQLite opened for a database (`opened_files`).
struct OpenedFiles {
    main: std::fs::Metadata,
    companions: Vec<std::fs::Metadata>,
    /// The descriptors of the file and its companions, as this process holds them.
    fds: Vec<i32>,
}

/// Open and check a database at `real`, a path without links (SQLite is told not to follow
/// one), bring it up to date (`finish_open`), and find the files it actually opened.
type Opened = (Connection, OpenedFiles);

fn open_sqlite(real: &Path, expected: FileId) -> Result<Opened> {
    let conn = Connection::open_with_flags(
        real,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(|e| {
        Error::Environment(format!(
            "Cannot open the database {}: {e}. Check its permissions.",
            real.display()
        ))
    })?;
    // Before anything can fail: this connection never deletes the -wal and -shm files when
    // it closes, whatever happens next (a caller could otherwise make pim fail here, with the
    // group, and have SQLite remove them).
    persist_wal(&conn);
    // SQLite has opened the file and read nothing yet (its -wal is opened by the first
    // read): it must be the file the checks were made on, not one put in its place since.
    // (any file of that name this process holds, SQLite header or not: a file that is no
    // database is told so below)
    let held: Vec<FileId> = open_fds()
        .iter()
        .filter(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok_and(|l| l == real))
        .filter_map(|fd| std::fs::metadata(format!("/proc/self/fd/{fd}")).ok())
        .map(|m| FileId::of(&m))
        .collect();
    if held.is_empty() || held.iter().any(|id| *id != expected) {
        return Err(Error::Environment(format!(
            "Refusing to open the database {}: it was replaced while pim opened it.",
            real.display()
        )));
    }
    configure(&conn).map_err(|e| match e {
        Error::Store(_) if e.is_locked() => locked_open(real),
        Error::Store(e) => not_a_database(real, &e.to_string()),
        other => other,
    })?;
    let id: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| open_failed(real, e))?;
    if id != APPLICATION_ID {
        return Err(not_a_database(real, "it is some other SQLite file"));
    }
    let conn = finish_open(conn, real)?;
    // Taken once the switch to WAL and the migrations have run: a `-wal` or `-shm` first
    // opened by them (a database not in WAL mode) is among the files checked too.
    let files = opened_files(real)?;
    Ok((conn, files))
}

/// Bring an opened database up to date and make sure it is one.
fn finish_open(mut conn: Connection, path: &Path) -> Result<Connection> {
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| open_failed(path, e))?;
    migrate(&mut conn).map_err(|e| match e {
        Error::Store(_) if e.is_locked() => locked_open(path),
        Error::Store(s) => not_a_database(path, &s.to_string()),
        other => other,
    })?;
    // Reading the policy row touches the schema and a table page: a damaged or foreign file
    // fails here with a sentence, at a cost that does not grow with the audit log.
    conn.query_row("SELECT count(*) FROM meta", [], |r| r.get::<_, i64>(0))
        .map_err(|e| open_failed(path, e))?;
    Ok(conn)
}

/// Open a database with the caller's own rights (any database but the installed one of a
/// set-group-id pim), upgrading its schema if needed.
pub fn open(path: &Path) -> Result<Database> {
    // (once a first try has given the group up, a retry opens with the caller's rights)
    if let Some(group) = privilege::installed_group().filter(|_| privilege::group_kept()) {
        if let Some(db) = open_installed(path, group)? {
            return Ok(db);
        }
    }
    // Not the installed database: the caller's own rights only, from here on.
    privilege::drop_for_good();
    if !path.exists() {
        return Err(missing(path));
    }
    // The real path: SQLite then follows no link, and what it opened can be told apart.
    let real = std::fs::canonicalize(path).map_err(|e| {
        Error::Environment(format!("Cannot open the database {}: {e}.", path.display()))
    })?;
    let checked = std::fs::metadata(&real)?;
    refuse_planted(&real, checked.uid())?;
    let (conn, opened) = open_sqlite(&real, FileId::of(&checked))?;
    let OpenedFiles {
        main,
        companions,
        fds,
    } = opened;
    let foreign_mount = mounted_by_another(&real, main.uid(), &fds);
    let owner_alone = !foreign_mount && owner_alone(&real, &main, &companions);
    Ok(Database {
        conn: Db::sqlite(conn),
        file: DbFile {
            path: real,
            owner: main.uid(),
            installed: false,
            group: main.gid(),
            owner_alone,
            foreign_mount,
            files: std::iter::once(&main)
                .chain(&companions)
                .map(FileId::of)
                .collect(),
        },
    })
}

/// Whether only the database's owner (and root) can change what SQLite read as it: the file
/// and the `-wal`/`-shm` SQLite opened are the owner's and writable by no one else, no other
/// account can create a file beside it (a planted `-wal`, or a hot `-journal` that SQLite
/// plays back into the file, would be read as the owner's own database), and none can rename
/// a directory above it. What it holds (its policy's commands) is then the owner's own.
fn owner_alone(real: &Path, main: &std::fs::Metadata, companions: &[std::fs::Metadata]) -> bool {
    let owner = main.uid();
    let files = std::iter::once(main)
        .chain(companions)
        .all(|m| m.uid() == owner && m.mode() & 0o022 == 0);
    let dirs = real
        .parent()
        .is_some_and(|dir| shared_dir(dir, 0, owner).is_ok_and(|d| d.is_none()));
    files && dirs
}

/// Whether `path`, or a directory above it, lies on a FUSE file system that an account other
/// than `owner` and root mounted: its mounter's program answers every `stat` there, so the
/// owners and modes pim checks are whatever that account chose (root-owned and 0600, say, to
/// root's `pim sweep`, once `user_allow_other` lets root in). A file system pim cannot tell
/// the mounter of counts as another's. So does a disk mounted through a helper
/// (`helper_mounted`), and any mount but the one `path` names once these checks are made
/// that holds one of the files SQLite opened (`fds`): a mount swapped in or out in the
/// meantime (its descriptors keep a lazily unmounted one alive, and so its id) would leave the
/// checks of the path about another file system than the one read.
fn mounted_by_another(path: &Path, owner: u32, fds: &[i32]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let mut fuse = Vec::new();
    for p in path.ancestors().filter(|p| !p.as_os_str().is_empty()) {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
            return true;
        };
        // SAFETY: `c` is a NUL-terminated path and `st` a statfs for the kernel to fill.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return true;
        }
        if st.f_type == libc::FUSE_SUPER_MAGIC {
            let Ok(m) = std::fs::metadata(p) else {
                return true;
            };
            fuse.push(m.dev());
        }
    }
    if !fuse.is_empty() {
        let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return true;
        };
        if foreign_fuse(&mounts, &fuse, owner) {
            return true;
        }
    }
    if helper_mounted(path, owner) {
        return true;
    }
    // Taken after the checks above: one made on the mount the files are on, then swapped out
    // before this, shows here as another mount.
    let Some(now) = path_mount_id(path) else {
        return true;
    };
    fds.iter().any(|&fd| mount_id(fd) != Some(now))
}

/// The id of the mount that holds the file this process has open as `fd`: from `statx`
/// (Linux 5.8), else its `mnt_id` in `/proc/self/fdinfo` (3.15; a set-group-id process may
/// read its own only since 5.13).
fn mount_id(fd: i32) -> Option<u64> {
    // SAFETY: an empty, NUL-terminated path with AT_EMPTY_PATH asks about `fd` itself; `stx`
    // is a statx for the kernel to fill.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let asked = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    if asked == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0 {
        return Some(stx.stx_mnt_id);
    }
    fdinfo_mount_id(fd)
}

/// `mount_id`'s way on kernels without `statx`'s: the `mnt_id` of `/proc/self/fdinfo/FD`.
fn fdinfo_mount_id(fd: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))?
        .trim()
        .parse()
        .ok()
}

/// The id of the mount that holds what `path` names now (opened only as a path: no read).
fn path_mount_id(path: &Path) -> Option<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    mount_id(file.as_raw_fd())
}

/// Whether `path`, or a directory above it, lies on a mount that an account made through a
/// mount helper (an fstab `user` or `users` entry, udisks2's loop images and removable
/// disks): libmount records those in `/run/mount/utab` (`user=NAME`, `uhelper=...`). A disk
/// image shows the owners written on it, whoever wrote them. Only a `user=` mount of the
/// owner pim saw is the owner's.
fn helper_mounted(path: &Path, owner: u32) -> bool {
    let utab = match std::fs::read_to_string("/run/mount/utab") {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    let helpers = helper_targets(&utab);
    if helpers.is_empty() {
        return false;
    }
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    let owner_name = crate::privilege::account_name(owner);
    // Each directory's own mount, by its id: a device number would not do (btrfs shows
    // every subvolume's files with a device of its own, which mountinfo never lists).
    path.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .any(
            |p| match path_mount_id(p).and_then(|id| mount_point(&mounts, id)) {
                None => true,
                Some(target) => helpers
                    .iter()
                    .any(|(t, user)| t == target && (user.is_none() || *user != owner_name)),
            },
        )
}

/// Where the mount of id `id` is mounted (escaped as mountinfo writes it), from the text of
/// `/proc/self/mountinfo`, if it lists that mount.
fn mount_point(mountinfo: &str, id: u64) -> Option<&str> {
    let id = id.to_string();
    mountinfo.lines().find_map(|l| {
        let mut fields = l.split(' ');
        (fields.next() == Some(id.as_str()))
            .then(|| fields.nth(3))
            .flatten()
    })
}

/// The mount points (escaped as in mountinfo) that `/run/mount/utab` records as mounted
/// through a helper, each with the account named by its `user=` option, if any.
fn helper_targets(utab: &str) -> Vec<(String, Option<String>)> {
    utab.lines()
        .filter_map(|line| {
            let field = |key: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(key))
                    .map(str::to_string)
            };
            let (target, opts) = (field("TARGET=")?, field("OPTS=")?);
            let user = opts
                .split(',')
                .find_map(|o| o.strip_prefix("user="))
                .map(str::to_string);
            let helper = user.is_some() || opts.split(',').any(|o| o.starts_with("uhelper="));
            helper.then_some((target, user))
        })
        .collect()
}

/// Whether one of the FUSE file systems of devices `devs` was mounted by an account other than
/// `owner` and root, or by one `mountinfo` does not name.
fn foreign_fuse(mountinfo: &str, devs: &[u64], owner: u32) -> bool {
    devs.iter()
        .any(|&dev| fuse_mounter(mountinfo, dev).is_none_or(|uid| uid != 0 && uid != owner))
}

/// The account that mounted the FUSE file system of device `dev`, from the text of
/// `/proc/self/mountinfo` (its `user_id=` option), if it is one.
fn fuse_mounter(mountinfo: &str, dev: u64) -> Option<u32> {
    let id = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(2) == Some(id.as_str()))?;
    let (_, after) = line.split_once(" - ")?;
    let mut fields = after.split(' ');
    let fstype = fields.next()?;
    if fstype == "virtiofs" {
        // A host's directory in a virtual machine: only root mounts it (the kernel lets no
        // user namespace), and the host answers for it as it does for the machine's disks.
        return Some(0);
    }
    if fstype != "fuse" && fstype != "fuseblk" && !fstype.starts_with("fuse.") {
        return None;
    }
    fields
        .nth(1)?
        .split(',')
        .find_map(|o| o.strip_prefix("user_id="))?
        .parse()
        .ok()
}

/// Whether a directory `n` levels above a database (0: its own) lets nobody but the
/// database's owner and root create, remove or rename in it: theirs, and writable by neither
/// group nor others (an ACL's named entries show in the group bits, as its mask). Above the
/// database's own directory a sticky one (`/tmp`) will do: nobody renames what is not theirs
/// there; beside the database, nobody else may create a file at all.
fn private_dir(m: &std::fs::Metadata, owner: u32, n: usize) -> bool {
    let mode = m.mode();
    m.is_dir()
        && (m.uid() == 0 || m.uid() == owner)
        && (mode & 0o022 == 0 || (n > 0 && mode & 0o1000 != 0))
}

/// The first directory, from `dir` (`n` levels above a database) up, that is not
/// `private_dir` for `owner`, if any.
pub(crate) fn shared_dir(dir: &Path, n: usize, owner: u32) -> std::io::Result<Option<PathBuf>> {
    for (k, d) in dir.ancestors().enumerate() {
        if !private_dir(&std::fs::metadata(d)?, owner, n + k) {
            return Ok(Some(d.to_path_buf()));
        }
    }
    Ok(None)
}

/// Something about where a database file lies that lets other accounts put pages into it,
/// and what fixes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Risk {
    pub why: String,
    pub fix: String,
}

/// Everything that lets accounts other than `owner` put pages into the database at `real`
/// (a path without links): SQLite reads a `-wal` beside it as part of it and plays a hot
/// `-journal` back into it, so a file planted there would become this database (for good, at
/// the next checkpoint), and root's pim would then run its commands. So: every directory
/// above it `private_dir`, the file writable by its owner alone and of one name, and its
/// `-wal`, `-shm` and `-journal`, where they exist, regular files of the owner that nobody
/// else may write.
fn planted_risks(real: &Path, owner: u32) -> Result<Vec<Risk>> {
    let mut risks = Vec::new();
    let cannot = |p: &Path, e: std::io::Error| {
        Error::Environment(format!("Cannot check {}: {e}.", p.display()))
    };
    let parent = real.parent().unwrap_or(Path::new("/"));
    for (n, dir) in parent.ancestors().enumerate() {
        let m = std::fs::metadata(dir).map_err(|e| cannot(dir, e))?;
        if !private_dir(&m, owner, n) {
            risks.push(dir_risk(dir, &m, owner));
        }
    }
    match std::fs::metadata(real) {
        Ok(m) if !m.is_file() => risks.push(Risk {
            why: "it is not a regular file.".to_string(),
            fix: "Point --db at a pim database file.".to_string(),
        }),
        Ok(m) => {
            if m.mode() & 0o022 != 0 {
                risks.push(Risk {
                    why: "other accounts may write it.".to_string(),
                    fix: format!(
                        "chmod go-w {} (0600), and restore it from a copy you trust if anyone else did.",
                        crate::text::shell_word(real)
                    ),
                });
            }
            if m.nlink() > 1 {
                risks.push(Risk {
                    why: format!(
                        "it has {} names (hard links), and another could be any account's file.",
                        m.nlink()
                    ),
                    fix: "Keep one name (cp it to a new file, then use that).".to_string(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(cannot(real, e)),
    }
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut companion = real.as_os_str().to_owned();
        companion.push(suffix);
        let companion = PathBuf::from(companion);
        match std::fs::symlink_metadata(&companion) {
            Ok(m) if m.is_file() && m.uid() == owner && m.mode() & 0o022 == 0 => {}
            Ok(_) => risks.push(Risk {
                why: format!(
                    "{} is not the database owner's alone (another account's, a link, or writable by others), so it may hold pages that are not this database's.",
                    companion.display()
                ),
                // Never a chown or chmod of it: it may be a link to any file, or become one.
                fix: format!(
                    "Move it aside (mv -- {} {}, which follows no link) and look at it; if another account made it, restore the database from a copy you trust.",
                    crate::text::shell_word(&companion),
                    crate::text::shell_word(Path::new(&format!("{}.suspect", companion.display())))
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(cannot(&companion, e)),
        }
    }
    Ok(risks)
}

/// A directory (with metadata `m`) above a database of `owner` in which others may create
/// or rename files.
fn dir_risk(dir: &Path, m: &std::fs::Metadata, owner: u32) -> Risk {
    let why = format!(
        "other accounts can create or rename files in {} (a -wal or -journal planted there is read into the database).",
        dir.display()
    );
    // A directory of root's that others share on purpose (`/tmp`) is not to be closed.
    let shared_on_purpose = m.uid() == 0 && m.mode() & 0o1002 == 0o1002;
    let fix = if (m.uid() == owner || m.uid() == 0) && !shared_on_purpose {
        format!(
            "Keep it in directories that are the database owner's (or root's) and that only they can write: chmod go-w {}.",
            crate::text::shell_word(dir)
        )
    } else {
        format!(
            "Keep it in directories that are the database owner's (or root's) and that only they can write: {} is uid {}'s, mode {:04o}; move the database (with its -wal) into a directory of the owner's.",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777
        )
    };
    Risk { why, fix }
}

/// Refuse, before SQLite reads a byte, a database `owner`'s that other accounts could put
/// pages into (`planted_risks`), with the first thing to fix.
fn refuse_planted(real: &Path, owner: u32) -> Result<()> {
    match planted_risks(real, owner)?.into_iter().next() {
        Some(risk) => Err(Error::Environment(format!(
            "Refusing to open the database {}: {} {}",
            real.display(),
            risk.why,
            risk.fix
        ))),
        None => Ok(()),
    }
}

/// What keeps pim from opening the database file at `path` (each with its fix), all of them,
/// for `pim doctor`; empty when nothing does.
pub fn placement_risks(path: &Path) -> Result<Vec<Risk>> {
    let real = std::fs::canonicalize(path).map_err(|e| {
        Error::Environment(format!("Cannot open the database {}: {e}.", path.display()))
    })?;
    let owner = std::fs::metadata(&real)?.uid();
    planted_risks(&real, owner)
}

/// Whether a directory `n` levels above the installed database (0: its own) is safe from
/// callers: owned by root (or the database's owner), and writable by no one else but the pim
/// group; above the database's own directory, a sticky one (`/tmp`) will do as well.
fn trusted_dir(meta: &std::fs::Metadata, owner: u32, group: u32, n: usize) -> bool {
    let mode = meta.mode();
    let writers_ok = mode & 0o002 == 0 && (mode & 0o020 == 0 || meta.gid() == group);
    meta.is_dir()
        && (meta.uid() == 0 || meta.uid() == owner)
        && (writers_ok || (n > 0 && mode & 0o1000 != 0))
}

/// Whether a directory carries an access ACL (named users or groups, whose write the group
/// bits show only as the ACL's mask).
fn has_acl(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: both strings are NUL-terminated; a null buffer of size 0 only asks the size.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n >= 0
}

fn refuse_installed(path: &Path, why: String) -> Error {
    Error::Environment(format!(
        "The installed database {} is not safe to open: {why}",
        path.display()
    ))
}

/// Open the installed database of a set-group-id pim: the file the caller named, when it is
/// a regular file (not a link) of the pim group that others cannot write. Decided on the
/// file itself, opened without following links, and checked again on the file SQLite
/// actually opened. `None` when the path is not the installed database.
fn open_installed(path: &Path, group: u32) -> Result<Option<Database>> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let probe = privilege::with_group(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
    })?;
    let Ok(probe) = probe else { return Ok(None) };
    let meta = probe.metadata()?;
    // A database of root's that the group writes and others cannot: anything else (a key
    // file, a file of another group, one of the group's that an account owns: root would
    // run the commands it holds) is opened with the caller's own rights, like any other path.
    let mode = meta.mode();
    if !(meta.is_file()
        && meta.uid() == 0
        && meta.gid() == group
        && mode & 0o020 != 0
        && mode & 0o002 == 0)
    {
        return Ok(None);
    }
    // And a pim database (SQLite's header, pim's application id): any other file of the
    // group is, to the caller, as if it were not there.
    {
        use std::os::unix::fs::FileExt;
        let mut head = [0u8; 72];
        let ours = probe.read_at(&mut head, 0).is_ok_and(|n| n == 72)
            && &head[..16] == b"SQLite format 3\0"
            && head[68..72] == (APPLICATION_ID as u32).to_be_bytes();
        if !ours {
            return Ok(None);
        }
    }
    let owner = meta.uid();
    let id = FileId::of(&meta);
    // The file's real path, from the kernel: no link a caller planted is followed again.
    let real = std::fs::read_link(format!("/proc/self/fd/{}", probe.as_raw_fd()))?;
    let checked = privilege::with_group(|| -> Result<()> {
        for (n, dir) in real.ancestors().skip(1).enumerate() {
            let m = std::fs::metadata(dir)?;
            // Beside the database nobody else may create a file, sticky or not: a hot
            // `-journal` planted there would be played back into it with the group's rights.
            // (a directory the pim group writes, with an ACL: its named entries may let a
            // caller write there too)
            if !trusted_dir(&m, owner, group, n) || (m.mode() & 0o020 != 0 && has_acl(dir)) {
                return Err(refuse_installed(
                    &real,
                    format!(
                        "{} can be changed by other accounts. Make it owned by root and not writable by others (chmod o-w).",
                        dir.display()
                    ),
                ));
            }
        }
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut companion = real.clone().into_os_string();
            companion.push(suffix);
            match std::fs::symlink_metadata(&companion) {
                Ok(m) if m.is_file() && m.uid() == owner && m.gid() == group && m.mode() & 0o002 == 0 => {}
                Ok(_) => {
                    return Err(refuse_installed(
                        &real,
                        format!(
                            "{} is not owned like the database. As root, remove it and run `pim audit verify` once to recreate it.",
                            Path::new(&companion).display()
                        ),
                    ))
                }
                // (a -journal is there only while a transaction of a rollback journal runs:
                // never, in WAL mode)
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && suffix != "-journal" && privilege::real_uid() != 0 => {
                    return Err(refuse_installed(
                        &real,
                        format!(
                            "{} is missing, and only root may create it. As root, run `pim audit verify` once.",
                            Path::new(&companion).display()
                        ),
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })?;
    checked?;
    let opened = privilege::with_group(|| {
        // A file created now is created for the group: never with the caller's umask.
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o007) };
        let opened = open_sqlite(&real, id);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        opened
    })?;
    let (
        conn,
        OpenedFiles {
            main,
            companions,
            fds,
        },
    ) = opened?;
    // What SQLite opened must be the file decided on, and its companions owned like it.
    if FileId::of(&main) != id {
        return Err(refuse_installed(
            &real,
            "it changed while pim opened it.".to_string(),
        ));
    }
    // The owners, group and modes above are the mounter's say on a file system another
    // account mounted: a database shown there as root's and the group's is not the install's
    // (root would run its commands as root). Looked at with the group (its directories are
    // the group's to enter); what is looked at is only the kernel's account of the mounts.
    if privilege::with_group(|| mounted_by_another(&real, owner, &fds))? {
        return Err(refuse_installed(
            &real,
            "it lies on a file system that another account mounted (FUSE, or through a mount helper), or was read through another mount than its path names, so its owner and group are that account's say.".to_string(),
        ));
    }
    let files: Vec<&std::fs::Metadata> = std::iter::once(&main).chain(&companions).collect();
    for m in &files {
        if !(m.uid() == owner && m.gid() == group && m.mode() & 0o002 == 0) {
            return Err(refuse_installed(
                &real,
                "one of its -wal or -shm files is not owned like the database. As root, remove it and run `pim audit verify` once.".to_string(),
            ));
        }
    }
    Ok(Some(Database {
        conn: Db::sqlite(conn),
        file: DbFile {
            path: real,
            owner,
            installed: true,
            group,
            owner_alone: true,
            foreign_mount: false,
            files: files.iter().map(|m| FileId::of(m)).collect(),
        },
    }))
}

/// Create a new database; refuses to overwrite an existing file. A private one is mode
/// 0600 in a 0700 directory; a `shared` one (the installed database, created by root) is
/// mode 0660 and belongs to that group, as do its -wal and -shm, which it keeps.
pub fn create(path: &Path, shared: Option<u32>) -> Result<Database> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    privilege::drop_for_good();
    let uid = privilege::real_uid();
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    if !dir.exists() {
        if shared.is_none() {
            // Nothing is made under a directory others could write in (see `refuse_planted`):
            // checked from the nearest that exists, above the new ones (which are ours, 0700).
            let existing = dir
                .ancestors()
                .find(|a| !a.as_os_str().is_empty() && a.exists())
                .unwrap_or(Path::new("."));
            let real = std::fs::canonicalize(existing).map_err(|e| {
                Error::Environment(format!("Cannot create {}: {e}.", path.display()))
            })?;
            if let Some(unsafe_dir) = shared_dir(&real, 1, uid)? {
                let risk = dir_risk(&unsafe_dir, &std::fs::metadata(&unsafe_dir)?, uid);
                return Err(Error::Environment(format!(
                    "Refusing to create the database {}: {} {}",
                    path.display(),
                    risk.why,
                    risk.fix
                )));
            }
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(if shared.is_some() { 0o2770 } else { 0o700 })
            .create(dir)
            .map_err(|e| {
                Error::Environment(format!(
                    "Cannot create the directory {}: {e}.",
                    dir.display()
                ))
            })?;
        if let Some(group) = shared {
            std::os::unix::fs::chown(dir, Some(0), Some(group))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2770))?;
        }
    }
    // The database is made and opened by its real path: no link in it is followed twice.
    let path = &match (std::fs::canonicalize(dir), path.file_name()) {
        (Ok(real_dir), Some(name)) => real_dir.join(name),
        _ => {
            return Err(Error::Environment(format!(
                "Cannot create {}: not a file in a directory.",
                path.display()
            )))
        }
    };
    if shared.is_none() {
        // Nothing planted beside it becomes part of it (see `refuse_planted`).
        refuse_planted(path, uid)?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Conflict(format!(
                "A database already exists at {}. Use it, or choose another path with --db.",
                path.display()
            )),
            _ => Error::Environment(format!("Cannot create {}: {e}.", path.display())),
        })?;
    if let Some(group) = shared {
        std::os::unix::fs::fchown(&file, Some(0), Some(group))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o660))?;
    }
    let meta = file.metadata()?;
    drop(file);
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    configure(&conn)?;
    if shared.is_some() {
        persist_wal(&conn);
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    migrate(&mut conn)?;
    // (`path` is the real one: see above)
    let foreign_mount = mounted_by_another(path, meta.uid(), &opened_files(path)?.fds);
    Ok(Database {
        conn: Db::sqlite(conn),
        file: DbFile {
            path: path.to_path_buf(),
            owner: meta.uid(),
            installed: shared.is_some(),
            group: meta.gid(),
            // (a `-wal` planted before it was made is for the directories to prevent)
            owner_alone: !foreign_mount && owner_alone(path, &meta, &[]),
            foreign_mount,
            files: vec![FileId::of(&meta)],
        },
    })
}

/// A process holding a lock on a database's files.
#[derive(Debug, Clone, PartialEq)]
pub struct LockHolder {
    pub pid: i32,
    pub uid: u32,
    pub user: String,
    /// Stopped (`kill -STOP`), stopped by a tracer, or in a frozen cgroup: it will not let
    /// go by itself.
    pub stopped: bool,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "process {} of {}{}",
            self.pid,
            self.user,
            if self.stopped {
                ", which is stopped"
            } else {
                ""
            }
        )
    }
}

/// The other processes holding exclusive locks on `files`, from `/proc/locks`.
pub fn lock_holders(files: &[FileId]) -> Vec<LockHolder> {
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let mut pids: Vec<i32> = Vec::new();
    for line in locks.lines() {
        // "1: POSIX  ADVISORY  WRITE 14099 fe:00:10043443 120 122"; "->" marks a waiter.
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] == "->" {
            continue;
        }
        let (Ok(pid), Some((dev, ino))) = (f[4].parse::<i32>(), f[5].rsplit_once(':')) else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor), Ok(ino)) = (
            u32::from_str_radix(major, 16),
            u32::from_str_radix(minor, 16),
            ino.parse::<u64>(),
        ) else {
            continue;
        };
        // Only exclusive locks keep others out: every open connection holds shared ones
        // (SQLite's "dead man switch" on the -shm file), which block no one.
        if f[3] != "WRITE" {
            continue;
        }
        let ours = files.iter().any(|id| {
            id.ino == ino && libc::major(id.dev) == major && libc::minor(id.dev) == minor
        });
        if ours && pid != me && pid > 0 && !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    pids.into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or("")
            };
            let state = field("State:");
            let uid: u32 = field("Uid:").split_whitespace().next()?.parse().ok()?;
            Some(LockHolder {
                pid,
                uid,
                user: privilege::account_name(uid).unwrap_or_else(|| uid.to_string()),
                stopped: state.starts_with('T') || state.starts_with('t') || frozen(pid),
            })
        })
        .collect()
}

/// The sentence for a database that stayed locked, naming who holds it.
/// `files` name the holders; root's pim may break their locks (`end_stuck_holders`) only
/// when they are `breakable`.
pub fn locked(path: &Path, files: &[FileId], breakable: bool) -> Error {
    let holders = lock_holders(files);
    let who = if holders.is_empty() {
        "another process".to_string()
    } else {
        holders
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let remedy = if holders.iter().any(|h| h.stopped) {
        " Root's `pim sweep` ends stopped processes that hold it (the timer of examples/systemd runs it every five minutes); or, as root, kill the process."
    } else {
        " Try again in a moment."
    };
    if pg::is_url(path) {
        return Error::Locked(
            format!(
                "The database {} stayed locked by another writer for {}; try again in a moment. (A pim stopped inside a transaction loses its session after {}.)",
                path.display(),
                pg::LOCK_WAIT,
                pg::SESSION_IDLE
            ),
            Vec::new(),
        );
    }
    Error::Locked(
        format!(
            "The database {} stayed locked for 10 seconds, held by {who}.{remedy}",
            path.display()
        ),
        if breakable {
            files.to_vec()
        } else {
            Vec::new()
        },
    )
}

/// The error for a database at `real` (a path without links) that stayed locked, naming the
/// holders of the files this process has open for it, by their descriptors: never looked
/// up again by a path someone may have pointed elsewhere since. Root's pim may break those
/// locks only when the file is root's (the installed database, or root's own): another
/// account's file is that account's to unlock, and a path of hers may lead anywhere.
fn locked_open(real: &Path) -> Error {
    match opened_files(real) {
        Ok(o) => {
            // SQLite closes a `-shm` it could not lock before it says so: the companions
            // beside the file count too, when they are plain files of its owner (no link,
            // nothing another account could have put there in its place).
            let beside = ["-wal", "-shm"].iter().filter_map(|suffix| {
                let mut p = real.as_os_str().to_owned();
                p.push(suffix);
                std::fs::symlink_metadata(p)
                    .ok()
                    .filter(|m| m.is_file() && m.uid() == o.main.uid())
            });
            let files: Vec<FileId> = std::iter::once(&o.main)
                .chain(&o.companions)
                .map(FileId::of)
                .chain(beside.map(|m| FileId::of(&m)))
                .collect();
            locked(real, &files, o.main.uid() == 0)
        }
        Err(_) => locked(real, &[], false),
    }
}

/// As root: end the holders of the database's exclusive locks that keep everyone else out:
/// the stopped and frozen ones, and with `all` (root's sweep, after a minute of not getting
/// in) every one but root's own, whatever its state (starved of CPU, say, or one of a chain
/// of processes handing the lock on). Each is ended through a pidfd taken before it is
/// checked again, so a reused process id is never hit. Returns the ones ended (with why).
pub fn end_stuck_holders(files: &[FileId], all: bool) -> Vec<(LockHolder, &'static str)> {
    if privilege::real_uid() != 0 {
        return Vec::new();
    }
    let stuck: Vec<(LockHolder, &'static str)> = lock_holders(files)
        .into_iter()
        .filter_map(|h| {
            if h.stopped {
                Some((
                    h,
                    "a stopped or frozen process held the database's write lock",
                ))
            } else if all && h.uid != 0 {
                Some((h, "the database stayed locked for more than a minute"))
            } else {
                None
            }
        })
        .collect();
    let ended: Vec<(LockHolder, &'static str)> = stuck
        .into_iter()
        .filter(|(h, _)| kill_if_holding(files, h))
        .collect();
    if !ended.is_empty() {
        // Their locks go when they are gone.
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    ended
}

/// SIGKILL `h` through a pidfd, if it is still the same process holding our locks.
fn kill_if_holding(files: &[FileId], h: &LockHolder) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a descriptor we close below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, h.pid, 0) } as i32;
    if fd < 0 {
        return false;
    }
    // Still the same process holding our locks (checked after the pidfd pinned it)?
    let still = lock_holders(files)
        .into_iter()
        .any(|now| now.pid == h.pid && now.uid == h.uid);
    // SAFETY: the signal goes to the process the pidfd refers to; then the fd is closed.
    let sent = still
        && unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        } == 0;
    // SAFETY: closes the descriptor pidfd_open gave us.
    unsafe { libc::close(fd) };
    sent
}

/// Whether the process is in a frozen cgroup (the freezer of cgroup v2, or of v1: it then
/// shows as sleeping, not stopped).
fn frozen(pid: i32) -> bool {
    let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    cgroups.lines().any(|l| {
        if let Some(path) = l.strip_prefix("0::") {
            ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .iter()
                .any(|root| {
                    std::fs::read_to_string(format!("{root}{path}/cgroup.events"))
                        .is_ok_and(|e| e.lines().any(|l| l.trim() == "frozen 1"))
                })
        } else if let Some((_, path)) = l.split_once(":freezer:") {
            std::fs::read_to_string(format!("/sys/fs/cgroup/freezer{path}/freezer.state"))
                .is_ok_and(|s| s.trim() != "THAWED")
        } else {
            false
        }
    })
}

/// Remove a database that `create` made and `init` could not finish (with the caller's
/// own rights: `create` has given the group up).
pub fn discard(path: &Path) {
    privilege::drop_for_good();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// The PostgreSQL server of the tests (shared with the integration tests).
#[cfg(test)]
pub(crate) mod test_server;

/// A fresh database of the backend under test (`PIM_TEST_BACKEND=postgres`: a new database
/// on the test server; otherwise SQLite in memory).
#[cfg(test)]
pub(crate) fn test_db() -> Db {
    if test_server::on_postgres() {
        pg::create(&test_server::fresh_database(), false)
            .expect("a database on the test server")
            .conn
    } else {
        in_memory().expect("an in-memory database")
    }
}

/// The unit and property tests again on PostgreSQL (see `test_server::postgres_pass`).
#[cfg(test)]
#[test]
fn the_unit_and_property_tests_pass_on_postgres() {
    test_server::postgres_pass("the_unit_and_property_tests_pass_on_postgres", 40);
}

/// A fresh in-memory database, for tests.
pub fn in_memory() -> Result<Db> {
    let mut conn = Connection::open_in_memory()?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    configure(&conn)?;
    migrate(&mut conn)?;
    Ok(Db::sqlite(conn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn every_historical_version_upgrades_to_the_latest() {
        for start in 0..=MIGRATIONS.len() {
            let mut conn = Connection::open_in_memory().unwrap();
            for (i, sql) in MIGRATIONS.iter().enumerate().take(start) {
                conn.execute_batch(sql).unwrap();
                conn.pragma_update(None, "user_version", i as i64 + 1)
                    .unwrap();
            }
            migrate(&mut conn).unwrap();
            let v: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v, MIGRATIONS.len() as i64);
            conn.query_row("SELECT count(*) FROM audit_events", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap();
        }
    }

    #[test]
    fn statements_are_not_prepared_again_for_the_values_bound() {
        let mut conn = Connection::open_in_memory().unwrap();
        configure(&conn).unwrap();
        migrate(&mut conn).unwrap();
        // A bound LIMIT and a kind beside a partial index's condition on it: without the
        // planner's stability guarantee SQLite plans with the values bound, and prepares
        // the statement again each time one is bound.
        conn.execute_batch("CREATE INDEX t_active ON assignments (role) WHERE kind = 'active'")
            .unwrap();
        let mut stmt = conn
            .prepare("SELECT id FROM assignments WHERE kind = ?1 AND role = ?2 LIMIT ?3")
            .unwrap();
        for (kind, limit) in [("eligible", 1), ("active", 2), ("eligible", 3)] {
            stmt.query_map(rusqlite::params![kind, "r", limit], |r| r.get::<_, i64>(0))
                .unwrap()
                .for_each(drop);
        }
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1)
            .unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("newer pim"));
    }

    /// A directory of the test's own, 0700 whatever the umask (pim refuses a database in a
    /// directory others may write in).
    fn private_tempdir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        tempfile::Builder::new()
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .unwrap()
    }

    /// FUSE answers `stat` with what its mounter chose: a database on one that another
    /// account mounted is not its owner's alone, whatever owner and mode it shows.
    #[test]
    fn a_fuse_mount_of_another_account_is_told_apart_by_its_device() {
        let mounts = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
            29 27 8:1 / /home rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            61 29 0:52 / /home/mallory/m\\040x rw,nosuid,nodev shared:30 - fuse.sshfs mallory@h: rw,user_id=1001,group_id=1001,allow_other\n\
            62 29 0:300 / /srv/pim rw - fuse.bindfs /srv/x rw,user_id=0,group_id=0,default_permissions,allow_other\n\
            63 27 0:54 / /mnt/host rw,relatime - virtiofs hostshare rw\n";
        assert_eq!(fuse_mounter(mounts, 52), Some(1001));
        // minor 300: (300 & 0xff) | (300 & !0xff) << 12, as glibc's makedev.
        let big = 44 | (256 << 12);
        assert_eq!(fuse_mounter(mounts, big), Some(0));
        // Not FUSE, or not there at all.
        assert_eq!(fuse_mounter(mounts, (8 << 8) | 1), None);
        assert_eq!(fuse_mounter(mounts, 53), None);
        // Mounts by id, as helper mounts are matched.
        assert_eq!(mount_point(mounts, 61), Some("/home/mallory/m\\040x"));
        assert_eq!(mount_point(mounts, 27), None);
        // Mallory's mount is hers alone, root's anyone's it shows; one pim cannot find
        // counts as another's.
        assert!(foreign_fuse(mounts, &[52], 0));
        assert!(!foreign_fuse(mounts, &[52], 1001));
        assert!(!foreign_fuse(mounts, &[big], 1000));
        assert!(foreign_fuse(mounts, &[53], 0));
        assert!(foreign_fuse(mounts, &[big, 52], 0));
        // A virtual machine's share of its host's directory: root mounted it, with no user_id.
        assert_eq!(fuse_mounter(mounts, 54), Some(0));
        assert!(!foreign_fuse(mounts, &[54], 1000));
        // utab's helper mounts: a user's (named), udisks2's (no user), and root's own.
        let utab = "SRC=tmpfs TARGET=/tmp/pim-um ROOT=/ OPTS=user=pimt-mallory\n\
            SRC=/dev/loop3 TARGET=/media/alice/disk ROOT=/ OPTS=uhelper=udisks2\n\
            SRC=/dev/sdb1 TARGET=/srv ROOT=/ ATTRS=x-systemd.automount\n";
        assert_eq!(
            helper_targets(utab),
            [
                ("/tmp/pim-um".to_string(), Some("pimt-mallory".to_string())),
                ("/media/alice/disk".to_string(), None),
            ]
        );
        // No FUSE on the way: nothing to ask.
        let dir = private_tempdir();
        let file = dir.path().join("pim.db");
        std::fs::write(&file, b"").unwrap();
        let held = std::fs::File::open(&file).unwrap();
        assert!(!mounted_by_another(&file, 0, &[held.as_raw_fd()]));
        // A path pim cannot look at is not taken on trust.
        assert!(mounted_by_another(&dir.path().join("gone.db"), 0, &[]));
    }

    /// The checks are made on a path, the reading on descriptors: a descriptor of a file on
    /// another mount than the path names once the checks are made (a mount swapped in or out
    /// meanwhile) counts as another's mount.
    #[test]
    fn a_file_opened_on_another_mount_than_the_path_names_is_not_trusted() {
        let dir = private_tempdir();
        let file = dir.path().join("pim.db");
        std::fs::write(&file, b"").unwrap();
        let held = std::fs::File::open(&file).unwrap();
        let elsewhere = std::fs::File::open("/proc/self/status").unwrap();
        assert_ne!(mount_id(held.as_raw_fd()), None);
        assert_eq!(path_mount_id(&file), mount_id(held.as_raw_fd()));
        assert_ne!(mount_id(elsewhere.as_raw_fd()), mount_id(held.as_raw_fd()));
        assert!(!mounted_by_another(&file, 0, &[held.as_raw_fd()]));
        assert!(mounted_by_another(
            &file,
            0,
            &[held.as_raw_fd(), elsewhere.as_raw_fd()]
        ));
        // A descriptor pim cannot ask about is no proof either.
        assert!(mounted_by_another(&file, 0, &[held.as_raw_fd(), -1]));
        // The way of kernels before 5.8 (not taken on one with statx's mount ids) gives the
        // same ids.
        for fd in [held.as_raw_fd(), elsewhere.as_raw_fd()] {
            assert_eq!(fdinfo_mount_id(fd), mount_id(fd));
        }
        assert_eq!(fdinfo_mount_id(-1), None);
    }

    #[test]
    fn files_that_are_not_pim_databases_are_refused_with_a_sentence() {
        let dir = private_tempdir();
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"this is not sqlite at all, just some text ........").unwrap();
        let err = open(&junk).err().unwrap();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("not a pim database"), "{err}");

        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        assert!(open(&other)
            .err()
            .unwrap()
            .to_string()
            .contains("some other SQLite file"));

        assert!(open(&dir.path().join("missing.db"))
            .err()
            .unwrap()
            .to_string()
            .contains("pim init"));
    }

    #[test]
    fn new_databases_are_private() {
        let dir = private_tempdir();
        let path = dir.path().join("sub/pim.db");
        create(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(create(&path, None).err().unwrap().exit_code(), 5);
        let db = open(&path).unwrap();
        // The file SQLite opened is the one named, and its companions are known.
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(db.file.owner, meta.uid());
        assert_eq!(db.file.files[0], FileId::of(&meta));
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let wal = FileId::of(&std::fs::metadata(wal).unwrap());
        assert!(db.file.files.contains(&wal), "{:?}", db.file.files);
    }
}
