//! `pim assignment import`: checked whole, one transaction, idempotent, lines in errors.

use crate::support;

use support::Env;

const HEADER: &str = "user,role,scope,type,start,end,justification,ticket\n";

fn setup() -> Env {
    let env = Env::new();
    env.init();
    for u in ["bob", "carol"] {
        env.as_("admin", &["user", "add", u]).expect(0);
    }
    env.as_("admin", &["user", "add", "deploy-bot", "--service"])
        .expect(0);
    env
}

#[test]
fn a_good_file_imports_once_and_again_changes_nothing() {
    let env = setup();
    let text = format!(
        "{HEADER}bob,db-admin,/prod,eligible,,,on call,CHG-1\n\
         carol,Database Administrator,,eligible,,90d,dba,\n\
         deploy-bot,deployer,/prod,active,,permanent,ci,\n\
         bob,security-reader,/,eligible,2099-01-01,permanent,audits,\n"
    );
    std::fs::write(env.path("a.csv"), text).unwrap();
    let dry = env
        .as_(
            "admin",
            &["assignment", "import", "a.csv", "--dry-run", "--json"],
        )
        .expect(0)
        .json();
    assert_eq!(dry["added"], 4);
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE user_id != 1"),
        0,
        "dry run writes nothing"
    );
    let first = env
        .as_("admin", &["assignment", "import", "a.csv", "--json"])
        .expect(0)
        .json();
    assert_eq!(
        (first["added"].as_i64(), first["unchanged"].as_i64()),
        (Some(4), Some(0))
    );
    let again = env
        .as_("admin", &["assignment", "import", "a.csv", "--json"])
        .expect(0)
        .json();
    assert_eq!(
        (again["added"].as_i64(), again["unchanged"].as_i64()),
        (Some(0), Some(4))
    );
    let carol = env
        .as_(
            "admin",
            &["assignment", "list", "--user", "carol", "--json"],
        )
        .expect(0)
        .json();
    assert_eq!(carol[0]["scope"], "/");
    env.run(&["check", "deploy-bot", "deployer", "--scope", "/prod/x"])
        .expect(0);
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'assignment.add' AND actor = 'admin'"
        ),
        4
    );
    env.as_("admin", &["audit", "verify", "--state"]).expect(0);
}

#[test]
fn every_bad_row_is_reported_with_its_line_and_nothing_changes() {
    let env = setup();
    let text = format!(
        "{HEADER}bob,db-admin,/prod,eligible,,,on call,\n\
         ghost,db-admin,/prod,eligible,,,x,\n\
         bob,no-such-role,/,eligible,,,x,\n\
         bob,db-admin,prod,eligible,,,x,\n\
         bob,db-admin,/,sometimes,,,x,\n\
         bob,db-admin,/x,eligible,,never,x,\n\
         carol,db-admin,/,eligible,,,,\n\
         deploy-bot,deployer,/,eligible,,,ci,\n"
    );
    std::fs::write(env.path("bad.csv"), text).unwrap();
    // Lines 8 and 9 are refusals (no justification; a service is never eligible): exit 3,
    // and each is on record, as `pim assign` would record it. The bad input is listed too.
    let refused =
        "SELECT count(*) FROM audit_events WHERE action = 'assignment.add' AND result != 'ok'";
    let r = env
        .as_("admin", &["assignment", "import", "bad.csv"])
        .expect(3);
    assert_eq!(env.count(refused), 2);
    for line in 3..=9 {
        assert!(
            r.stderr.contains(&format!("line {line}:")),
            "line {line} missing:\n{}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains("line 2:"), "{}", r.stderr);
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE user_id != 1"),
        0
    );
    // A wrong header is line 1.
    std::fs::write(env.path("h.csv"), "user,role\nbob,db-admin\n").unwrap();
    let r = env
        .as_("admin", &["assignment", "import", "h.csv"])
        .expect(2);
    assert!(r.stderr.contains("line 1"), "{}", r.stderr);
    // Bad input alone: exit 2, and nothing is recorded.
    std::fs::write(
        env.path("typo.csv"),
        format!("{HEADER}bob,db-admin,/,sometimes,,,x,\n"),
    )
    .unwrap();
    env.as_("admin", &["assignment", "import", "typo.csv"])
        .expect(2);
    assert_eq!(env.count(refused), 2);
    // Without `assign` anywhere, nothing is imported: refused at once and recorded.
    std::fs::write(
        env.path("ok.csv"),
        format!("{HEADER}carol,db-admin,/,eligible,,,x,\n"),
    )
    .unwrap();
    let r = env
        .as_("bob", &["assignment", "import", "ok.csv"])
        .expect(3);
    assert!(r.stderr.contains("'assign' permission"), "{}", r.stderr);
    assert_eq!(env.count(refused), 3);
    env.as_("admin", &["assignment", "import", "missing.csv"])
        .expect(1);
}

/// An import that waits for the write lock behind a `policy apply` is checked against the
/// policy that apply left, not the one in force when it started (here: the apply, played by
/// a transaction of the test's own that holds the lock the way pim's writers take it, cuts
/// `db-admin`'s longest active assignment to a day while the import of a 30-day one waits).
#[test]
fn an_import_waiting_behind_a_policy_change_is_checked_against_the_new_policy() {
    let env = setup();
    std::fs::write(
        env.path("a.csv"),
        format!("{HEADER}bob,db-admin,/race,active,,30d,onboarding,\n"),
    )
    .unwrap();
    let source: String = if support::postgres::on_postgres() {
        let mut c = support::postgres::client(env.url());
        c.query_one("SELECT value FROM meta WHERE key = 'policy'", &[])
            .unwrap()
            .get(0)
    } else {
        rusqlite::Connection::open(&env.db)
            .unwrap()
            .query_row("SELECT value FROM meta WHERE key = 'policy'", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let tight = source.replace(
        "[roles.db-admin]\n",
        "[roles.db-admin]\nmax_active = \"1d\"\n",
    );
    assert_ne!(tight, source);
    let import = || {
        env.command(&["--as", "admin", "assignment", "import", "a.csv"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Holds the lock while the import starts and waits, then changes the policy and commits.
    let waited = if support::postgres::on_postgres() {
        let mut c = support::postgres::client(env.url());
        let mut tx = c.transaction().unwrap();
        tx.query_one("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE", &[])
            .unwrap();
        let child = import();
        std::thread::sleep(std::time::Duration::from_millis(700));
        tx.execute("UPDATE meta SET value = $1 WHERE key = 'policy'", &[&tight])
            .unwrap();
        tx.commit().unwrap();
        child
    } else {
        let mut c = rusqlite::Connection::open(&env.db).unwrap();
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        let child = import();
        std::thread::sleep(std::time::Duration::from_millis(700));
        tx.execute("UPDATE meta SET value = ?1 WHERE key = 'policy'", [&tight])
            .unwrap();
        tx.commit().unwrap();
        child
    };
    let r: support::Run = waited.wait_with_output().unwrap().into();
    let r = r.expect(3);
    assert!(r.stderr.contains("max_active"), "{}", r.stderr);
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE scope = '/race'"),
        0
    );
}

/// Each problem of a file is one line: a line break in a cell it quotes starts no line that
/// reads as pim's own.
#[test]
fn a_line_break_in_a_cell_starts_no_line_of_the_problems() {
    let env = setup();
    std::fs::write(
        env.path("a.csv"),
        format!(
            "{HEADER}\"nobody\npim: Imported 0 row(s): nothing to do.\",db-admin,/,eligible,,,x,\n"
        ),
    )
    .unwrap();
    let r = env
        .as_("admin", &["assignment", "import", "a.csv"])
        .expect(2);
    assert!(
        !r.stderr.lines().any(|l| l.starts_with("pim: Imported")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("nobody\\npim: Imported"), "{}", r.stderr);
}

/// An assignment's ticket is one line, as an activation's is: from `assign` and from a file.
#[test]
fn an_assignments_ticket_is_one_line() {
    let env = setup();
    for ticket in ["T-1\u{1b}[31m", "T-1\nforged line", "T\u{2028}K"] {
        let r = env
            .as_(
                "admin",
                &["assign", "bob", "db-admin", "-j", "x", "--ticket", ticket],
            )
            .expect(2);
        assert!(r.stderr.contains("one line"), "{}", r.stderr);
    }
    std::fs::write(
        env.path("a.csv"),
        format!("{HEADER}bob,db-admin,/,eligible,,,x,\"T\u{0}K\"\n"),
    )
    .unwrap();
    env.as_("admin", &["assignment", "import", "a.csv"])
        .expect(2);
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE role = 'db-admin'"),
        0
    );
}
