//! The SQLite store: opening and creating the file, pragmas, and the numbered, append-only
//! migrations tracked with `user_version`.

use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

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
];

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
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
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn not_a_database(path: &Path, why: &str) -> Error {
    Error::Environment(format!(
        "{} is not a pim database ({why}). Point --db at the right file, or run `pim init` to create one.",
        path.display()
    ))
}

/// Open an existing database, upgrading its schema if needed.
pub fn open(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::Environment(format!(
            "No pim database at {}. Run `pim init --admin NAME` to create it.",
            path.display()
        )));
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| {
        Error::Environment(format!(
            "Cannot open the database {}: {e}. Check its permissions.",
            path.display()
        ))
    })?;
    let id: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| not_a_database(path, &e.to_string()))?;
    if id != APPLICATION_ID {
        return Err(not_a_database(path, "it is some other SQLite file"));
    }
    configure(&conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| not_a_database(path, &e.to_string()))?;
    migrate(&mut conn).map_err(|e| match e {
        Error::Sqlite(s) => not_a_database(path, &s.to_string()),
        other => other,
    })?;
    // Reading the policy row touches the schema and a table page: a damaged or foreign file
    // fails here with a sentence, at a cost that does not grow with the audit log.
    conn.query_row("SELECT count(*) FROM meta", [], |r| r.get::<_, i64>(0))
        .map_err(|e| not_a_database(path, &e.to_string()))?;
    Ok(conn)
}

/// Create a new database (mode 0600); refuses to overwrite an existing file.
pub fn create(path: &Path) -> Result<Connection> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                Error::Environment(format!(
                    "Cannot create the directory {}: {e}.",
                    dir.display()
                ))
            })?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Conflict(format!(
                "A database already exists at {}. Use it, or choose another path with --db.",
                path.display()
            )),
            _ => Error::Environment(format!("Cannot create {}: {e}.", path.display())),
        })?;
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    configure(&conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// A fresh in-memory database, for tests.
pub fn in_memory() -> Result<Connection> {
    let mut conn = Connection::open_in_memory()?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    configure(&conn)?;
    migrate(&mut conn)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1)
            .unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("newer pim"));
    }

    #[test]
    fn files_that_are_not_pim_databases_are_refused_with_a_sentence() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"this is not sqlite at all, just some text ........").unwrap();
        let err = open(&junk).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("not a pim database"), "{err}");

        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        assert!(open(&other)
            .unwrap_err()
            .to_string()
            .contains("some other SQLite file"));

        assert!(open(&dir.path().join("missing.db"))
            .unwrap_err()
            .to_string()
            .contains("pim init"));
    }

    #[test]
    fn new_databases_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/pim.db");
        create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(create(&path).unwrap_err().exit_code(), 5);
        open(&path).unwrap();
    }
}
