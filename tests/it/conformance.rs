//! The store's conformance suite: every storage operation, and the contract written on the
//! seam (a write transaction is serialised against every other), on the backend under test
//! (both, over the two passes).

use crate::support::{self, postgres};
use chrono::{TimeZone, Utc};
use pim::audit::{self, Event, Filter};
use pim::model::{Kind, Status, Verdict};
use pim::store::assignments::NewAssignment;
use pim::store::requests::{NewRequest, Of, Which};
use pim::store::reviews::{NewItem, NewReview};
use pim::store::Db;

/// A fresh, migrated database of the backend under test, and what keeps it alive.
struct Fresh {
    db: Db,
    _dir: tempfile::TempDir,
    url: Option<String>,
}

fn fresh() -> Fresh {
    let dir = crate::support::tempdir();
    if support::on_postgres() {
        let url = postgres::fresh_database();
        let db = pim::store::pg::create(&url, false).unwrap().conn;
        Fresh {
            db,
            _dir: dir,
            url: Some(url),
        }
    } else {
        let db = pim::store::create(&dir.path().join("pim.db"), None)
            .unwrap()
            .conn;
        Fresh {
            db,
            _dir: dir,
            url: None,
        }
    }
}

/// A second connection to the same database.
fn reopen(f: &Fresh) -> Db {
    match &f.url {
        Some(url) => pim::store::pg::open(url, false).unwrap().conn,
        None => {
            pim::store::open(&f._dir.path().join("pim.db"))
                .unwrap()
                .conn
        }
    }
}

fn t(s: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
}

fn ev(action: &str) -> Event {
    Event::new("admin", action)
}

#[test]
fn meta_users_and_authenticators() {
    let f = fresh();
    let db = &f.db;
    assert_eq!(db.policy_source().unwrap(), None);
    assert_eq!(db.instance().unwrap().len(), 32);
    let tx = db.write().unwrap();
    tx.set_policy_source("[roles.x]\nname = \"X\"\n").unwrap();
    let bob = tx
        .insert_user("bob", Some("bob@example.com"), None, 10)
        .unwrap();
    let carol = tx.insert_user("carol", None, Some("Carol"), 11).unwrap();
    assert_eq!(
        tx.insert_user("bob", None, None, 12)
            .unwrap_err()
            .exit_code(),
        5
    );
    audit::append(&tx, t(0), ev("user.add")).unwrap();
    tx.commit().unwrap();
    assert!(db.policy_source().unwrap().unwrap().contains("roles.x"));
    let users = db.all_users().unwrap();
    assert_eq!(
        users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        ["bob", "carol"]
    );
    let b = db.find_user("bob").unwrap().unwrap();
    assert_eq!(
        (b.id, b.email.as_deref(), b.mfa_enrolled),
        (bob, Some("bob@example.com"), false)
    );
    assert!(db.find_user("nobody").unwrap().is_none());

    let tx = db.write().unwrap();
    tx.set_totp_secret("bob", "enc1:00").unwrap();
    tx.totp_failed(bob, 3, Some(99), false).unwrap();
    let s = tx.totp_state(bob).unwrap();
    assert_eq!(
        (s.secret.as_deref(), s.failures, s.locked_until, s.blocked),
        (Some("enc1:00"), 3, Some(99), false)
    );
    tx.totp_accepted(bob, 7).unwrap();
    let s = tx.totp_state(bob).unwrap();
    assert_eq!(
        (s.last_step, s.failures, s.locked_until),
        (Some(7), 0, None)
    );
    assert_eq!(tx.sealed_secrets().unwrap(), 1);
    assert_eq!(tx.totp_secrets().unwrap().len(), 1);
    tx.reseal_totp_secret(bob, "enc1:11").unwrap();
    tx.clear_totp(bob).unwrap();
    assert!(tx.totp_state(bob).unwrap().secret.is_none());
    tx.set_service_token(carol, "abc").unwrap();
    let tok = tx.token_state("carol").unwrap().unwrap();
    assert_eq!(
        (tok.hash.as_deref(), tok.kind.as_str()),
        (Some("abc"), "service")
    );
    tx.set_disabled(carol, true).unwrap();
    assert!(tx.find_user("carol").unwrap().unwrap().disabled);
    tx.set_limit_window("os:x", 2, 100, Some(200)).unwrap();
    tx.set_limit_window("os:x", 3, 100, None).unwrap();
    assert_eq!(tx.limit_window("os:x").unwrap(), Some((3, 100, None)));
    assert!(!tx.secrets_plain().unwrap());
    tx.set_secrets_sealed().unwrap();
    audit::append(&tx, t(1), ev("mfa.enroll")).unwrap();
    tx.commit().unwrap();
}

/// A user, an eligibility and a database to hang requests on.
fn world(db: &Db) -> (i64, i64) {
    let tx = db.write().unwrap();
    let bob = tx.insert_user("bob", None, None, 0).unwrap();
    let eligible = tx
        .insert_assignment(&NewAssignment {
            user_id: bob,
            role: "db-admin",
            scope: "/prod",
            kind: Kind::Eligible,
            start_at: 0,
            end_at: Some(1000),
            justification: Some("on call"),
            ticket: None,
            created_by: "admin",
            created_at: 0,
        })
        .unwrap();
    audit::append(&tx, t(0), ev("assignment.add")).unwrap();
    tx.commit().unwrap();
    (bob, eligible)
}

/// `role list`'s counts: each user once per role, however many assignments they have.
#[test]
fn role_holders_count_each_user_once() {
    let f = fresh();
    let db = &f.db;
    let (bob, _) = world(db);
    let tx = db.write().unwrap();
    let carol = tx.insert_user("carol", None, None, 0).unwrap();
    let dave = tx.insert_user("dave", None, None, 0).unwrap();
    for (user, role, scope, kind) in [
        (bob, "db-admin", "/dev", Kind::Eligible),
        (carol, "db-admin", "/", Kind::Eligible),
        (dave, "global-admin", "/", Kind::Active),
        (dave, "global-admin", "/prod", Kind::Active),
    ] {
        tx.insert_assignment(&NewAssignment {
            user_id: user,
            role,
            scope,
            kind,
            start_at: 0,
            end_at: None,
            justification: None,
            ticket: None,
            created_by: "admin",
            created_at: 0,
        })
        .unwrap();
    }
    audit::append(&tx, t(0), ev("assignment.add")).unwrap();
    tx.commit().unwrap();
    let holders = db.role_holders(&["db-admin", "global-admin"], 10).unwrap();
    assert_eq!(holders["db-admin"], (2, 0));
    assert_eq!(holders["global-admin"], (0, 1));
    // bob's eligibility at /prod ended at 1000: only /dev is left, still one user.
    assert_eq!(
        db.role_holders(&["db-admin"], 2000).unwrap()["db-admin"],
        (2, 0)
    );
    // A disabled user holds nothing, eligible or active.
    let tx = db.write().unwrap();
    tx.set_disabled(carol, true).unwrap();
    tx.set_disabled(dave, true).unwrap();
    audit::append(&tx, t(1), ev("user.disable")).unwrap();
    tx.commit().unwrap();
    let holders = db.role_holders(&["db-admin", "global-admin"], 10).unwrap();
    assert_eq!(holders["db-admin"], (1, 0));
    assert!(holders
        .get("global-admin")
        .is_none_or(|&(e, a)| e == 0 && a == 0));
}

/// Migration 12 counts the eligible holders a store already has: each (role, user) once,
/// whatever its number of eligibilities; the removed, the recorded as ended and the active
/// not at all. On a server, the roles that could read the assignments may read the counts,
/// not write them (the trigger writes them as the schema's owner).
#[test]
fn an_older_store_gets_its_role_holders_counted() {
    let dir = crate::support::tempdir();
    let reader = format!("pim_reader_{}", std::process::id());
    let url = support::on_postgres().then(postgres::fresh_database);
    let db = match &url {
        Some(url) => {
            let mut c = postgres::client(url);
            c.batch_execute(
                "CREATE TABLE pim_schema (version BIGINT NOT NULL); INSERT INTO pim_schema VALUES (11)",
            )
            .unwrap();
            for sql in &pim::store::pg::MIGRATIONS[..11] {
                c.batch_execute(sql).unwrap();
            }
            c.batch_execute(pim::store::OLDER_STORE).unwrap();
            c.batch_execute(&format!(
                "DROP ROLE IF EXISTS {reader}; CREATE ROLE {reader}; GRANT SELECT, INSERT, UPDATE ON assignments TO {reader}"
            ))
            .unwrap();
            pim::store::pg::open(url, false).unwrap().conn
        }
        None => {
            let path = dir.path().join("pim.db");
            let c = rusqlite::Connection::open(&path).unwrap();
            c.pragma_update(None, "application_id", 0x7069_6d31)
                .unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            for (i, sql) in pim::store::MIGRATIONS.iter().enumerate().take(11) {
                c.execute_batch(sql).unwrap();
                c.pragma_update(None, "user_version", i as i64 + 1).unwrap();
            }
            c.execute_batch(pim::store::OLDER_STORE).unwrap();
            drop(c);
            pim::store::open(&path).unwrap().conn
        }
    };
    let mut holders: Vec<(String, i64, i64)> = Vec::new();
    db.query_each(
        "SELECT role, user_id, n FROM role_holders ORDER BY role, user_id",
        pim::params![],
        |r| {
            holders.push((r.get(0)?, r.get(1)?, r.get(2)?));
            Ok(true)
        },
    )
    .unwrap();
    assert_eq!(
        holders,
        [
            ("db-admin".into(), 1, 2),
            ("db-admin".into(), 2, 1),
            ("ops".into(), 1, 1),
            ("ops".into(), 3, 1)
        ]
    );
    let mut counts: Vec<(String, i64)> = Vec::new();
    db.query_each(
        "SELECT role, users FROM role_counts ORDER BY role",
        pim::params![],
        |r| {
            counts.push((r.get(0)?, r.get(1)?));
            Ok(true)
        },
    )
    .unwrap();
    // dave, disabled, is not counted.
    assert_eq!(counts, [("db-admin".into(), 2), ("ops".into(), 1)]);
    // What `role list` shows at 200: bob's /b has ended, dave is disabled.
    let shown = db
        .role_holders(&["db-admin", "ops", "global-admin"], 200)
        .unwrap();
    assert_eq!(shown["db-admin"], (2, 0));
    assert_eq!(shown["ops"], (1, 0));
    assert_eq!(shown["global-admin"], (0, 1));
    let Some(url) = url else { return };
    let mut c = postgres::client(&url);
    let mut may = |table: &str, privilege: &str| -> bool {
        c.query_one(
            "SELECT has_table_privilege($1, $2, $3)",
            &[&reader, &table, &privilege],
        )
        .unwrap()
        .get(0)
    };
    assert!(may("role_counts", "SELECT"));
    assert!(may("role_holders", "SELECT"));
    assert!(!may("role_counts", "UPDATE"));
    assert!(!may("role_holders", "INSERT"));
    // The reader's own write to the assignments is counted, by the owner's trigger.
    c.batch_execute(&format!(
        "SET ROLE {reader}; \
         INSERT INTO assignments (user_id, role, scope, kind, start_at, created_by, created_at) \
         VALUES (2, 'ops', '/y', 'eligible', 0, 'admin', 0); RESET ROLE"
    ))
    .unwrap();
    assert_eq!(db.role_holders(&["ops"], 200).unwrap()["ops"], (2, 0));
    drop(db);
    c.batch_execute(&format!("DROP OWNED BY {reader}; DROP ROLE {reader}"))
        .unwrap();
}

/// An end moved after now on an eligibility whose earlier end the sweep recorded (a host
/// whose clock is behind the sweep's still sees it current): its new end is recorded in its
/// time, and `role list` counts it again meanwhile. Disabling and enabling its holder takes
/// them out of the counts kept and puts them back.
#[test]
fn an_end_moved_later_is_recorded_again_and_counted() {
    let f = fresh();
    let db = &f.db;
    let (bob, eligible) = world(db);
    assert_eq!(
        db.role_holders(&["db-admin"], 500).unwrap()["db-admin"],
        (1, 0)
    );
    let tx = db.write().unwrap();
    tx.expiry_recorded(&[eligible]).unwrap();
    audit::append(&tx, t(1), ev("assignment.expire")).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        db.role_holders(&["db-admin"], 999).unwrap()["db-admin"],
        (0, 0)
    );
    let tx = db.write().unwrap();
    tx.set_assignment_end(eligible, Some(5000), 999).unwrap();
    audit::append(&tx, t(2), ev("assignment.change")).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        db.role_holders(&["db-admin"], 2000).unwrap()["db-admin"],
        (1, 0)
    );
    assert!(db.ended_unrecorded(2000, 100).unwrap().is_empty());
    assert_eq!(db.ended_unrecorded(5000, 100).unwrap().len(), 1);
    for (disabled, shown) in [(true, 0), (false, 1)] {
        let tx = db.write().unwrap();
        tx.set_disabled(bob, disabled).unwrap();
        audit::append(&tx, t(3), ev("user.disable")).unwrap();
        tx.commit().unwrap();
        assert_eq!(
            db.role_holders(&["db-admin"], 2000).unwrap()["db-admin"],
            (shown, 0)
        );
        let kept: i64 = db
            .query_row(
                "SELECT users FROM role_counts WHERE role = 'db-admin'",
                pim::params![],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(kept, shown);
    }
}

/// A statement the server cannot type at its first use is prepared again with the types of
/// its values, outside a transaction; inside one, the failed prepare has aborted it and the
/// error is the server's own (it was "current transaction is aborted", which hid it).
#[test]
fn a_statement_the_server_cannot_type_says_why_inside_a_transaction() {
    let f = fresh();
    let db = &f.db;
    let sql = "SELECT count(*) FROM users WHERE ?1 IS NULL OR id = ?1";
    let (bob, _) = world(db);
    let tx = db.write().unwrap();
    let inside = tx.query_row(sql, pim::params![bob], |r| r.get::<_, i64>(0));
    drop(tx);
    let outside: i64 = db.query_row(sql, pim::params![bob], |r| r.get(0)).unwrap();
    assert_eq!(outside, 1);
    if support::on_postgres() {
        let err = inside.unwrap_err().to_string();
        assert!(
            !err.contains("aborted") && err.contains("could not determine data type"),
            "{err}"
        );
    } else {
        assert_eq!(inside.unwrap(), 1);
    }
}

#[test]
fn assignments_holdings_and_reminders() {
    let f = fresh();
    let db = &f.db;
    let (bob, eligible) = world(db);
    let tx = db.write().unwrap();
    let active = tx
        .insert_assignment(&NewAssignment {
            user_id: bob,
            role: "global-admin",
            scope: "/",
            kind: Kind::Active,
            start_at: 0,
            end_at: None,
            justification: None,
            ticket: Some("CHG-1"),
            created_by: "root",
            created_at: 0,
        })
        .unwrap();
    audit::append(&tx, t(0), ev("assignment.add")).unwrap();
    tx.commit().unwrap();

    let a = db.assignment(eligible, 10).unwrap().unwrap();
    assert_eq!(
        (a.kind, a.state.as_str(), a.end_at),
        (Kind::Eligible, "in effect", Some(1000))
    );
    assert_eq!(
        db.current_assignment(bob, "db-admin", "/prod", Kind::Eligible, 10)
            .unwrap()
            .map(|a| a.id),
        Some(eligible)
    );
    assert!(db
        .current_assignment(bob, "db-admin", "/prod", Kind::Active, 10)
        .unwrap()
        .is_none());
    assert!(db
        .current_assignment_named("bob", "db-admin", "/prod", Kind::Eligible, 2000)
        .unwrap()
        .is_none());
    assert_eq!(
        db.list_assignments(Some("bob"), None, None, false, 10)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        db.list_assignments(None, Some("db-admin"), Some(Kind::Eligible), false, 10)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        db.list_assignments(None, None, None, false, 2000)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        db.list_assignments(None, None, None, true, 2000)
            .unwrap()
            .len(),
        2
    );
    let held = db.holdings(bob, 10).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].role.as_str(), held[0].until, held[0].assignment),
        ("global-admin", None, Some(active))
    );
    assert_eq!(
        db.protected_holders("global-admin", bob, Some(active), 10)
            .unwrap(),
        (true, 0)
    );
    assert_eq!(db.role_in_use("db-admin", 10).unwrap(), 1);
    let holders = db
        .role_holders(&["db-admin", "global-admin", "ops"], 10)
        .unwrap();
    assert!(!holders.contains_key("ops"));
    assert_eq!(holders["db-admin"], (1, 0));
    assert_eq!(holders["global-admin"], (0, 1));
    assert_eq!(db.live_assignments(10).unwrap().len(), 2);
    assert_eq!(
        db.live_assignments_of_role("db-admin", 10).unwrap()[0].id,
        eligible
    );
    assert_eq!(
        db.eligibilities(bob, "db-admin", 10).unwrap(),
        vec![(eligible, "/prod".to_string(), Some(1000))]
    );

    // Reminders, each once; the end recorded once.
    let soon = db.ending_unreminded(900, 1100, "1d", 100).unwrap();
    assert_eq!(soon.iter().map(|c| c.id).collect::<Vec<_>>(), [eligible]);
    let tx = db.write().unwrap();
    tx.insert_reminder(eligible, "1d").unwrap();
    assert!(tx
        .ending_unreminded(900, 1100, "1d", 100)
        .unwrap()
        .is_empty());
    assert_eq!(tx.ended_unrecorded(1000, 100).unwrap().len(), 1);
    tx.expiry_recorded(&[eligible]).unwrap();
    assert!(tx.ended_unrecorded(1000, 100).unwrap().is_empty());
    tx.set_assignment_end(eligible, Some(500), 1000).unwrap();
    tx.remove_assignment(active, 20, "admin").unwrap();
    audit::append(&tx, t(1), ev("assignment.remove")).unwrap();
    tx.commit().unwrap();
    let fate = db.assignment_fate(active).unwrap().unwrap();
    assert_eq!((fate.removed_at, fate.user_id), (Some(20), bob));
    assert_eq!(db.assignment(active, 30).unwrap().unwrap().state, "removed");
    assert_eq!(
        db.assignment(eligible, 30).unwrap().unwrap().end_at,
        Some(500)
    );
}

#[test]
fn requests_move_only_along_the_contracts_transitions() {
    let f = fresh();
    let db = &f.db;
    let (bob, eligible) = world(db);
    let new = |status, decide_by| NewRequest {
        user_id: bob,
        role: "db-admin",
        scope: "/prod",
        eligibility_id: Some(eligible),
        status,
        created_at: 10,
        start_at: 10,
        end_at: 100,
        justification: Some("INC-1"),
        ticket: None,
        duration_secs: 90,
        decide_by,
        extends: None,
    };
    let tx = db.write().unwrap();
    let pending = tx.insert_request(&new(Status::Pending, Some(50))).unwrap();
    let active = tx.insert_request(&new(Status::Active, None)).unwrap();
    audit::append(&tx, t(0), ev("activation.request")).unwrap();
    tx.commit().unwrap();

    assert!(db
        .has_waiting_request(bob, "db-admin", "/prod", 20)
        .unwrap());
    assert_eq!(db.request_eligibility(active).unwrap(), Some(eligible));
    assert_eq!(db.request_eligibility_end(active).unwrap(), Some(1000));
    let ids = |of, which, now| {
        db.requests(of, which, now)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(Of::Everyone, Which::Any, 20), [pending, active]);
    assert_eq!(ids(Of::User(bob), Which::Running, 20), [active]);
    assert_eq!(
        ids(Of::Eligibility(eligible), Which::Open, 20),
        [pending, active]
    );
    assert_eq!(ids(Of::Everyone, Which::Pending, 20), [pending]);
    assert_eq!(ids(Of::Everyone, Which::Pending, 60), Vec::<i64>::new());
    assert_eq!(ids(Of::Id(active), Which::Started, 20), [active]);
    // Time moves statuses on as they are read.
    assert_eq!(
        db.request_by_id(pending, 60).unwrap().unwrap().status,
        Status::TimedOut
    );
    assert_eq!(
        db.request_by_id(active, 200).unwrap().unwrap().status,
        Status::Expired
    );

    let tx = db.write().unwrap();
    tx.insert_decision(pending, "carol", Verdict::Approve, Some("ok"), 30)
        .unwrap();
    assert!(tx.has_decided(pending, "carol").unwrap());
    assert!(!tx.has_decided(pending, "dave").unwrap());
    let decided = tx.decisions(pending).unwrap();
    assert_eq!(decided.len(), 1);
    assert_eq!(
        (decided[0].approver.as_str(), decided[0].decision),
        ("carol", Verdict::Approve)
    );
    tx.start_request(pending, Status::Active, 30, 120).unwrap();
    tx.set_request_end(pending, 110).unwrap();
    tx.close_request(active, Status::Deactivated, 40, "bob", Some("done"))
        .unwrap();
    // A final request never changes, whatever is asked.
    for to in Status::ALL {
        let e = tx
            .close_request(active, to, 41, "mallory", None)
            .unwrap_err();
        assert_eq!(e.exit_code(), 5, "{to}");
    }
    assert!(tx.set_request_end(active, 1).is_err());
    assert_eq!(tx.extension_applied(active, 42).unwrap_err().exit_code(), 5);
    audit::append(&tx, t(1), ev("activation.approve")).unwrap();
    tx.commit().unwrap();
    let closed = db.request_by_id(active, 50).unwrap().unwrap();
    assert_eq!(
        (
            closed.status,
            closed.closed_by.as_deref(),
            closed.close_reason.as_deref()
        ),
        (Status::Deactivated, Some("bob"), Some("done"))
    );
    let started = db.request_by_id(pending, 50).unwrap().unwrap();
    assert_eq!((started.status, started.end_at), (Status::Active, 110));
    assert_eq!(
        db.requests_due(200, 100)
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect::<Vec<_>>(),
        [pending]
    );
    let tx = db.write().unwrap();
    tx.request_expired(pending).unwrap();
    audit::append(&tx, t(2), ev("activation.expire")).unwrap();
    tx.commit().unwrap();
    assert!(db.requests_due(200, 100).unwrap().is_empty());

    // Sweep's other moves: a scheduled start, a timeout, an applied extension.
    let tx = db.write().unwrap();
    let scheduled = tx.insert_request(&new(Status::Scheduled, None)).unwrap();
    let stale = tx.insert_request(&new(Status::Pending, Some(15))).unwrap();
    let extension = tx
        .insert_request(&NewRequest {
            extends: Some(scheduled),
            ..new(Status::Pending, Some(500))
        })
        .unwrap();
    assert!(tx.has_pending_extension(scheduled, 20).unwrap());
    assert!(!tx.has_pending_extension(stale, 20).unwrap());
    tx.request_started(scheduled).unwrap();
    assert_eq!(
        tx.requests_timed_out(20, 100)
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect::<Vec<_>>(),
        [stale]
    );
    tx.request_timed_out(stale).unwrap();
    tx.extension_applied(extension, 20).unwrap();
    audit::append(&tx, t(3), ev("activation.start")).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        db.request_by_id(stale, 20).unwrap().unwrap().stored,
        Status::TimedOut
    );
    assert_eq!(
        db.request_by_id(extension, 20).unwrap().unwrap().stored,
        Status::Expired
    );
}

#[test]
fn reviews_and_their_items() {
    let f = fresh();
    let db = &f.db;
    let (bob, eligible) = world(db);
    let tx = db.write().unwrap();
    let reviewers = vec!["carol".to_string()];
    let id = tx
        .insert_review(&NewReview {
            name: "q1",
            role: "db-admin",
            scope: "/",
            self_review: false,
            reviewers: &reviewers,
            default: "recommendation",
            every: Some("quarterly"),
            duration_secs: 100,
            created_by: "admin",
            created_at: 10,
        })
        .unwrap();
    // Seventy items: more than one multi-row INSERT holds.
    let mut items = Vec::new();
    for i in 0..70 {
        let assignment = if i == 0 {
            eligible
        } else {
            tx.insert_assignment(&NewAssignment {
                user_id: bob,
                role: "db-admin",
                scope: &format!("/t{i}"),
                kind: Kind::Eligible,
                start_at: 0,
                end_at: Some(1000),
                justification: None,
                ticket: None,
                created_by: "admin",
                created_at: 0,
            })
            .unwrap()
        };
        items.push(NewItem {
            assignment,
            user: "bob".into(),
            scope: if i == 0 {
                "/prod".into()
            } else {
                format!("/t{i}")
            },
            kind: Kind::Eligible,
            recommendation: "remove".into(),
            reason: "never activated".into(),
        });
    }
    tx.insert_review_items(id, "db-admin", &items).unwrap();
    assert_eq!(
        tx.decide_review_items(id, "bob", "keep", "carol", "needed", 20)
            .unwrap(),
        70
    );
    assert_eq!(
        tx.decide_review_items(id, "nobody", "keep", "carol", "x", 20)
            .unwrap(),
        0
    );
    audit::append(&tx, t(0), ev("review.create")).unwrap();
    tx.commit().unwrap();
    let r = db.review(id, 50).unwrap().unwrap();
    assert_eq!(
        (r.state.as_str(), r.total, r.decided, r.reviewers.clone()),
        ("open", 70, 70, reviewers.clone())
    );
    assert_eq!(r.items[0].decision.as_deref(), Some("keep"));
    assert_eq!(
        (r.items[0].scope.as_str(), r.items[0].reason.as_str()),
        ("/prod", "never activated")
    );
    // The list's counts, in all and of one user's own items.
    let listed = |user: &str| {
        let list = db.review_summaries(user, 50).unwrap();
        assert_eq!(list.len(), 1);
        let (r, own) = &list[0];
        (
            r.id,
            r.total,
            r.decided,
            own.total,
            own.decided,
            r.items.len(),
        )
    };
    assert_eq!(listed("bob"), (id, 70, 70, 70, 70, 0));
    assert_eq!(listed("carol"), (id, 70, 70, 0, 0, 0));
    assert_eq!(db.review(id, 200).unwrap().unwrap().state, "due");
    assert_eq!(db.reviews_due(200).unwrap(), [id]);
    assert_eq!(db.review_ids().unwrap(), [id]);
    assert_eq!(db.reviews_recurring().unwrap()[0].every, "quarterly");
    let pending = db.review_items_pending(id).unwrap();
    assert_eq!(
        (pending[0].assignment, pending[0].kind),
        (eligible, Kind::Eligible)
    );
    let tx = db.write().unwrap();
    tx.review_item_applied(pending[0].item, "keep", "kept")
        .unwrap();
    tx.review_completed(id, 200, "cron").unwrap();
    tx.review_next_started(id).unwrap();
    audit::append(&tx, t(1), ev("review.complete")).unwrap();
    tx.commit().unwrap();
    assert_eq!(db.review(id, 300).unwrap().unwrap().state, "completed");
    assert!(db.reviews_due(300).unwrap().is_empty());
    assert!(db.reviews_recurring().unwrap().is_empty());
    assert!(db.review(id + 1, 0).unwrap().is_none());
    // What a review's recommendations need of its holders: bob, enabled, never activated;
    // then activated at 100 and 250 (a pending request and one starting later do not count);
    // nobody once the eligibilities have ended.
    let facts = |at| db.review_facts("db-admin", at).unwrap();
    assert_eq!(facts(300).len(), 1);
    assert_eq!(
        (facts(300)[&bob].disabled, facts(300)[&bob].last_activation),
        (false, None)
    );
    let tx = db.write().unwrap();
    for (status, start) in [
        (Status::Expired, 100),
        (Status::Active, 250),
        (Status::Pending, 280),
        (Status::Scheduled, 400),
    ] {
        tx.insert_request(&NewRequest {
            user_id: bob,
            role: "db-admin",
            scope: "/prod",
            eligibility_id: Some(eligible),
            status,
            created_at: 90,
            start_at: start,
            end_at: start + 100,
            justification: Some("INC-1"),
            ticket: None,
            duration_secs: 100,
            decide_by: None,
            extends: None,
        })
        .unwrap();
    }
    audit::append(&tx, t(2), ev("activation.request")).unwrap();
    tx.commit().unwrap();
    assert_eq!(facts(200)[&bob].last_activation, Some(100));
    assert_eq!(facts(300)[&bob].last_activation, Some(250));
    assert_eq!(facts(500)[&bob].last_activation, Some(250));
    assert!(facts(1000).is_empty());
}

#[test]
fn the_outbox() {
    let f = fresh();
    let db = &f.db;
    assert_eq!(db.outbox_end().unwrap(), 0);
    let tx = db.write().unwrap();
    let to = vec!["bob".to_string()];
    let ids: Vec<i64> = (0..5)
        .map(|i| {
            tx.insert_outgoing("activation.start", "webhook", &to, "{}", i)
                .unwrap()
        })
        .collect();
    tx.trim_outbox(ids[0], 2).unwrap();
    assert_eq!(tx.outbox_end().unwrap(), ids[2]);
    // A claim takes a row only while it is due, once.
    let first = tx.claim_outgoing(ids[0], 5, 1000).unwrap().expect("due");
    assert_eq!(first.attempts, 0);
    assert!(tx.claim_outgoing(ids[0], 10, 1010).unwrap().is_none());
    let sent = tx.claim_outgoing(ids[1], 7, 60).unwrap().expect("due");
    assert!(tx.outgoing_sent(&sent, 7).unwrap());
    assert!(tx.claim_outgoing(ids[1], 2000, 3000).unwrap().is_none());
    let down = tx.claim_outgoing(ids[2], 8, 68).unwrap().expect("due");
    assert!(tx.outgoing_retry(&down, "down", 500).unwrap());
    tx.commit().unwrap();
    assert!(db.outbox_due(10).unwrap().is_empty());
    assert_eq!(
        db.outbox_due(600)
            .unwrap()
            .iter()
            .map(|o| o.id)
            .collect::<Vec<_>>(),
        [ids[2]]
    );
    let tx = db.write().unwrap();
    // A claim that ran out and was taken by another process records nothing: the row is
    // the later claim's (its tries read by that claim, not from an earlier list).
    let stale = tx.claim_outgoing(ids[2], 600, 660).unwrap().expect("due");
    assert_eq!(stale.attempts, 1);
    let later = tx
        .claim_outgoing(ids[2], 660, 720)
        .unwrap()
        .expect("ran out");
    assert_eq!(later.attempts, 1);
    assert!(!tx.outgoing_sent(&stale, 661).unwrap());
    assert!(!tx.outgoing_retry(&stale, "late", 700).unwrap());
    assert!(!tx.outgoing_failed(&stale, "late").unwrap());
    assert_eq!(db.outbox(false).unwrap()[2].status, "pending");
    assert!(tx.outgoing_failed(&later, "gone").unwrap());
    tx.commit().unwrap();
    let all = db.outbox(false).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[1].status, "sent");
    assert_eq!(all[0].recipients, to);
    assert_eq!((all[1].attempts, all[2].attempts), (1, 2));
    let failed = db.outbox(true).unwrap();
    assert_eq!(
        (failed.len(), failed[0].last_error.as_deref()),
        (1, Some("gone"))
    );
}

#[test]
fn the_audit_log_appends_reads_and_verifies() {
    let f = fresh();
    let db = &f.db;
    assert_eq!(db.audit_head().unwrap(), None);
    let tx = db.write().unwrap();
    for i in 0..10 {
        let e = Event::new(
            if i % 2 == 0 { "bob" } else { "carol" },
            "activation.request",
        )
        .principal("bob")
        .justification(Some("INC-\u{202e}1"))
        .detail("i", i);
        assert_eq!(audit::append(&tx, t(i), e).unwrap(), i + 1);
    }
    tx.commit().unwrap();
    assert_eq!(db.audit_count().unwrap(), 10);
    assert_eq!(db.audit_head().unwrap().unwrap().0, 10);
    let bob = Filter {
        actor: Some("bob".into()),
        ..Default::default()
    };
    let newest = db.newest_events(&bob, 2).unwrap();
    assert_eq!(newest.iter().map(|e| e.seq).collect::<Vec<_>>(), [7, 9]);
    let after = db.events_after(&Filter::default(), 8, 100).unwrap();
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [9, 10]);
    let mut seen = 0;
    db.each_event(|e| {
        seen += 1;
        assert!(e.is_ok());
        true
    })
    .unwrap();
    assert_eq!(seen, 10);
    let v = audit::verify(db).unwrap();
    assert!(v.ok && v.events == 10, "{v:?}");
    // A prefix is compared as it is, the same on both backends: case counts, and a caller's
    // `%` or `_` is no wildcard.
    let prefix = |p: &str| {
        db.events_after(
            &Filter {
                action: Some(format!("{p}.*")),
                ..Default::default()
            },
            0,
            100,
        )
        .unwrap()
        .len()
    };
    assert_eq!(prefix("activation"), 10);
    assert_eq!(prefix("ACTIVATION"), 0);
    assert_eq!(prefix("%"), 0);
    assert_eq!(prefix("activ_tion"), 0);
    assert_eq!(
        db.newest_events(&Filter::default(), usize::MAX)
            .unwrap()
            .len(),
        10
    );
    assert_eq!(after[1].justification.as_deref(), Some("INC-\u{202e}1"));
}

#[test]
fn a_write_that_changes_state_without_an_event_is_refused_in_test_builds() {
    let f = fresh();
    let db = &f.db;
    let tx = db.write().unwrap();
    tx.insert_user("ghost", None, None, 0).unwrap();
    let e = tx.commit().unwrap_err();
    assert!(e.to_string().contains("without an audit event"), "{e}");
    assert!(db.find_user("ghost").unwrap().is_none(), "nothing was kept");
    // Bookkeeping (rate-limit windows) needs no event.
    let tx = db.write().unwrap();
    tx.set_limit_window("os:x", 1, 0, None).unwrap();
    tx.commit().unwrap();
}

/// The seam's contract: a write transaction is serialised against every other. A second
/// writer waits for the first to commit, then sees what it wrote and extends the chain.
#[test]
fn write_transactions_are_serialised() {
    let f = fresh();
    let (held, waited) = std::sync::mpsc::channel();
    let first = reopen(&f);
    let second = reopen(&f);
    let a = std::thread::spawn(move || {
        let tx = first.write().unwrap();
        audit::append(&tx, t(0), ev("first")).unwrap();
        held.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(400));
        let committing = std::time::Instant::now();
        tx.commit().unwrap();
        committing
    });
    waited.recv().unwrap();
    let tx = second.write().unwrap();
    // When it got in, against when the first began to commit (not a time it waited, which a
    // loaded machine that runs this thread late would shorten).
    let got_in = std::time::Instant::now();
    let seq = audit::append(&tx, t(1), ev("second")).unwrap();
    tx.commit().unwrap();
    let committing = a.join().unwrap();
    assert!(
        got_in >= committing,
        "the second writer got in {:?} before the first committed",
        committing - got_in
    );
    assert_eq!(seq, 2, "it saw the first writer's event");
    assert!(audit::verify(&f.db).unwrap().ok);
}

/// On PostgreSQL writers are let in in the order they asked: one that commits and at once
/// asks again (a sweep's next short transaction) comes after a writer already waiting,
/// which gets in within one of its transactions, not after all of them. (SQLite has no
/// queue: there the sweep pauses between its transactions, measured by the benchmark.)
#[test]
fn a_waiting_writer_gets_in_before_one_that_asks_again() {
    if !support::on_postgres() {
        return;
    }
    const ROUNDS: u64 = 40;
    const HOLD: u64 = 15;
    let f = fresh();
    let first = reopen(&f);
    let second = reopen(&f);
    let base = f.db.audit_count().unwrap();
    let committed = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let counted = committed.clone();
    let (started, go) = std::sync::mpsc::channel();
    let sweep = std::thread::spawn(move || {
        for i in 0..ROUNDS {
            let tx = first.write().unwrap();
            audit::append(&tx, t(i as i64), ev("sweep")).unwrap();
            if i == 0 {
                started.send(()).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(HOLD));
            tx.commit().unwrap();
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    go.recv().unwrap();
    // The sweep's transactions committed when this writer asks (on a loaded machine this
    // thread may be scheduled late, after several of them; counted in memory, not by a
    // round trip that would itself let more commit): it waits behind the one open, then
    // gets in before the sweep's next, give or take the race between counting and asking.
    let before = committed.load(std::sync::atomic::Ordering::SeqCst);
    let began = std::time::Instant::now();
    let tx = second.write().unwrap();
    let waited = began.elapsed();
    let seq = audit::append(&tx, t(100), ev("other")).unwrap();
    tx.commit().unwrap();
    sweep.join().unwrap();
    let ahead = seq - base - 1;
    assert!(
        ahead <= before + 4,
        "it got in behind {ahead} of the sweep's {ROUNDS} transactions, {before} committed when it asked (waited {waited:?})"
    );
    assert!(
        waited.as_millis() < u128::from(HOLD * ROUNDS / 2),
        "the waiting writer waited {waited:?}, behind {ahead} of {ROUNDS} transactions"
    );
    assert!(audit::verify(&f.db).unwrap().ok);
}

/// On PostgreSQL a pim stopped inside a write transaction (anyone may stop their own) cannot
/// hold the others up: the server ends its session after `SESSION_IDLE`, and the next writer
/// gets the head row's lock.
#[test]
fn a_writer_stopped_inside_its_transaction_loses_the_lock() {
    if !support::on_postgres() {
        return; // SQLite's answer is root's sweep (tests/it/setgid.rs)
    }
    let f = fresh();
    let stuck = reopen(&f);
    let next = reopen(&f);
    let timeout: String = next
        .query_row("SHOW lock_timeout", pim::params![], |r| r.get(0))
        .unwrap();
    assert_eq!(timeout, "1min");
    let tx = stuck.write().unwrap();
    audit::append(&tx, t(0), ev("stuck")).unwrap();
    // ... and then nothing: as if the process were stopped.
    let began = std::time::Instant::now();
    let w = next.write().unwrap();
    let waited = began.elapsed();
    audit::append(&w, t(1), ev("next")).unwrap();
    w.commit().unwrap();
    assert!(
        waited >= std::time::Duration::from_secs(25) && waited < std::time::Duration::from_secs(60),
        "{waited:?}"
    );
    assert!(tx.commit().is_err(), "the stopped session was ended");
    assert!(audit::verify(&f.db).unwrap().ok);
    assert_eq!(f.db.audit_count().unwrap(), 1);
}
