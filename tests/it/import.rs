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

/// A row names an assignment by user, role, scope and type. When that assignment is there,
/// the row changes nothing only if it asks for what is there (a duration counts from the
/// assignment's start, so the same file days later still matches); a row asking for another
/// start or end is a conflict (exit 5), not an "unchanged". An assignment named twice in
/// one file is bad input (exit 2), whatever the store holds.
#[test]
fn a_row_asking_for_another_end_than_the_current_assignment_is_a_conflict() {
    let env = setup();
    let write = |name: &str, rows: &str| {
        std::fs::write(env.path(name), format!("{HEADER}{rows}")).unwrap();
    };
    let import = |offset: &str, name: &str| {
        env.at(
            offset,
            &["--as", "admin", "assignment", "import", name, "--json"],
        )
    };
    let ends = || {
        env.as_("admin", &["assignment", "list", "--json"])
            .expect(0)
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{} {} {}", a["user"], a["role"], a["end"]))
            .collect::<Vec<_>>()
    };
    write(
        "a.csv",
        "bob,db-admin,/prod,eligible,,30d,on call,\n\
         carol,global-admin,/,eligible,,permanent,break glass,\n",
    );
    let first = import("+0", "a.csv").expect(0).json();
    assert_eq!(first["added"], 2);
    let before = ends();
    // Two days on, the same file still matches: 30d counts from the assignment's start.
    let again = import("+2d", "a.csv").expect(0).json();
    assert_eq!(
        (again["added"].as_i64(), again["unchanged"].as_i64()),
        (Some(0), Some(2))
    );

    // Shortening a month to a day, ending a permanent one, or moving the start: exit 5,
    // each with its line, and nothing changes.
    write(
        "short.csv",
        "bob,db-admin,/prod,eligible,,1d,on call,\n\
         carol,global-admin,/,eligible,,10d,break glass,\n",
    );
    let r = import("+0", "short.csv").expect(5);
    write(
        "start.csv",
        "bob,db-admin,/prod,eligible,2099-01-01,30d,on call,\n",
    );
    let moved = import("+0", "start.csv").expect(5);
    for (r, line, what) in [
        (&r, 2, "; the row ends it 1d after its start"),
        (&r, 3, "it is permanent; the row ends it 10d"),
        (&moved, 2, "; the row starts it 2099-01-01"),
    ] {
        let text = r
            .stderr
            .lines()
            .find(|l| l.starts_with(&format!("line {line}:")))
            .unwrap_or_else(|| panic!("line {line} missing:\n{}", r.stderr));
        assert!(
            text.contains(what) && text.contains("Remove it first"),
            "{text}"
        );
    }
    assert!(r.stderr.contains("nothing was changed"), "{}", r.stderr);
    // An end given as the instant it is matches; another instant does not.
    let bob_end = env
        .as_("admin", &["assignment", "list", "--user", "bob", "--json"])
        .expect(0)
        .json()[0]["end"]
        .as_str()
        .unwrap()
        .to_string();
    write(
        "exact.csv",
        &format!("bob,db-admin,/prod,eligible,,{bob_end},on call,\n"),
    );
    assert_eq!(import("+0", "exact.csv").expect(0).json()["unchanged"], 1);
    write(
        "other.csv",
        "bob,db-admin,/prod,eligible,,2026-01-01T00:00:00Z,on call,\n",
    );
    import("+0", "other.csv").expect(5);
    // A conflict beside bad input: exit 2 (the file needs fixing first), both listed.
    write(
        "mixed.csv",
        "bob,db-admin,/prod,eligible,,1d,on call,\nghost,db-admin,/,eligible,,,x,\n",
    );
    let r = import("+0", "mixed.csv").expect(2);
    assert!(
        r.stderr.contains("line 2:") && r.stderr.contains("line 3:"),
        "{}",
        r.stderr
    );
    assert_eq!(ends(), before, "no conflicting row changed anything");

    // The same assignment twice in one file, alike or not, new or there: exit 2.
    for rows in [
        "bob,security-reader,/,eligible,,10d,x,\nbob,security-reader,/,eligible,,20d,x,\n",
        "bob,security-reader,/,eligible,,10d,x,\nbob,security-reader,/,eligible,,10d,x,\n",
        "bob,db-admin,/prod,eligible,,30d,on call,\nbob,db-admin,/prod,eligible,,30d,on call,\n",
    ] {
        write("twice.csv", rows);
        let r = import("+0", "twice.csv").expect(2);
        assert!(
            r.stderr.contains("line 3:") && r.stderr.contains("on line 2 too"),
            "{}",
            r.stderr
        );
    }
    // A third time names the first line too, not the second.
    write(
        "thrice.csv",
        "bob,security-reader,/,eligible,,10d,x,\nbob,security-reader,/,eligible,,10d,x,\nbob,security-reader,/,eligible,,10d,x,\n",
    );
    let r = import("+0", "thrice.csv").expect(2);
    assert!(
        r.stderr.contains("line 4:") && !r.stderr.contains("on line 3 too"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.matches("on line 2 too").count(), 2, "{}", r.stderr);
    assert_eq!(ends(), before);
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE role = 'security-reader'"),
        0
    );
}

/// Whether a row is good input does not depend on the store: a row matching an assignment
/// there is held to the same limits as a new one. And a problem quotes a huge cell only in
/// part.
#[test]
fn a_row_matching_an_assignment_is_checked_like_any_other() {
    let env = setup();
    std::fs::write(
        env.path("a.csv"),
        format!("{HEADER}bob,db-admin,/prod,eligible,,30d,on call,T-1\n"),
    )
    .unwrap();
    env.as_("admin", &["assignment", "import", "a.csv"])
        .expect(0);
    let long = "j".repeat(5000);
    for (justification, ticket, says) in [
        (long.as_str(), "T-1", "characters long"),
        ("on call", "\"T\u{1b}[2J\"", "one line"),
    ] {
        std::fs::write(
            env.path("b.csv"),
            format!("{HEADER}bob,db-admin,/prod,eligible,,30d,{justification},{ticket}\n"),
        )
        .unwrap();
        let r = env
            .as_("admin", &["assignment", "import", "b.csv"])
            .expect(2);
        assert!(
            r.stderr.contains("line 2:") && r.stderr.contains(says),
            "{}",
            r.stderr
        );
    }
    let huge = format!("1{}d", "0".repeat(100_000));
    std::fs::write(
        env.path("c.csv"),
        format!("{HEADER}carol,db-admin,/,eligible,,{huge},x,\n"),
    )
    .unwrap();
    let r = env
        .as_("admin", &["assignment", "import", "c.csv"])
        .expect(2);
    assert!(r.stderr.len() < 2_000, "{} bytes of error", r.stderr.len());
    assert!(
        r.stderr.contains("line 2:") && r.stderr.contains("(cut: "),
        "{}",
        r.stderr
    );
}
