//! The terminal experience (issue 11), driven in tmux as a person would: check first, then
//! ask; pick a role from a list; a wrong code asked again; tables that fit the screen.

use crate::support::{oathtool, Env, Policy, Terminal};

/// bob is eligible for db-admin at /prod only; the database's admin secret and bob's.
fn bob_at_prod(policy: &Policy) -> (Env, String) {
    let env = Env::new();
    env.init_with(policy);
    let bob = env.user("bob");
    env.as_(
        "admin",
        &[
            "assign", "bob", "db-admin", "--scope", "/prod", "-j", "on-call",
        ],
    )
    .expect(0);
    (env, bob)
}

fn db_admin(settings: &[&str]) -> Policy {
    let mut all = vec!["max_activation = \"2h\""];
    all.extend_from_slice(settings);
    Policy::new().role("db-admin", "Database Administrator", &all)
}

/// A code that is not the current one (nor, but for a one-in-a-million chance, a neighbour).
fn wrong(code: &str) -> String {
    format!(
        "{:06}",
        (code.parse::<u32>().unwrap() + 500_000) % 1_000_000
    )
}

#[test]
fn activate_with_no_role_picks_one_then_asks_again_after_a_wrong_code() {
    let (env, bob) = bob_at_prod(&db_admin(&[]));
    let t = Terminal::start(&env, &["--as", "bob", "activate"], 120);
    let s = t.wait_for("Roles to activate");
    assert!(
        s.contains("db-admin at /prod (Database Administrator): up to 2h"),
        "{s}"
    );
    assert!(s.contains("asks for a justification, a TOTP code"), "{s}");
    t.keys(&["Space", "Enter"]);
    t.wait_for("Justification for db-admin");
    t.line("INC-7 replica lag");
    t.wait_for("TOTP code for bob");
    let code = oathtool(&bob, 0);
    t.secret(&wrong(&code));
    t.wait_for("Try again.");
    t.secret(&code);
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    assert!(s.contains("MFA failed: the code is wrong"), "{s}");
    assert!(s.contains("db-admin is active at /prod"), "{s}");
    assert!(!s.contains(&code), "the code was echoed:\n{s}");
    env.run(&["check", "bob", "db-admin", "--scope", "/prod"])
        .expect(0);
    // The justification typed once served the second try.
    let r = env.as_("bob", &["request", "list", "--json"]).expect(0);
    assert_eq!(r.json()[0]["justification"], "INC-7 replica lag");
}

#[test]
fn without_a_terminal_no_role_is_a_usage_error_listing_the_eligible_roles() {
    let (env, _) = bob_at_prod(&db_admin(&[]));
    let r = env.as_("bob", &["activate", "-j", "x"]).expect(2);
    assert!(
        r.stderr
            .contains("Name the role to activate; you are eligible for: db-admin at /prod."),
        "{}",
        r.stderr
    );
}

/// Not eligible where asked: said before anything is typed, naming where bob is eligible,
/// and on record like any refused activation.
#[test]
fn a_refusal_that_needs_no_code_comes_before_any_prompt() {
    let (env, _) = bob_at_prod(&db_admin(&[]));
    let t = Terminal::start(
        &env,
        &["--as", "bob", "activate", "db-admin", "--scope", "/dev"],
        120,
    );
    let (exit, s) = t.finish();
    assert_eq!(exit, 3, "{s}");
    assert!(
        s.contains("You are not eligible for db-admin at /dev. You are eligible for it at /prod: pass --scope /prod."),
        "{s}"
    );
    assert!(!s.contains("Justification"), "asked before checking:\n{s}");
    assert!(!s.contains("TOTP code"), "asked before checking:\n{s}");
    let events = env
        .as_(
            "admin",
            &["audit", "list", "--action", "activation.request", "--json"],
        )
        .expect(0)
        .json();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["result"].as_str().unwrap_or("").contains("not eligible")),
        "{events}"
    );
    // Too long a duration, likewise.
    let t = Terminal::start(
        &env,
        &["--as", "bob", "activate", "db-admin", "--duration", "9h"],
        120,
    );
    let (exit, s) = t.finish();
    assert_eq!(exit, 3, "{s}");
    assert!(s.contains("at most 2h"), "{s}");
    assert!(!s.contains("Justification"), "{s}");
}

/// The only scope bob is eligible at is the default; the refusal of another names it.
#[test]
fn the_scope_defaults_to_the_only_eligible_one() {
    let (env, bob) = bob_at_prod(&db_admin(&[]));
    let r = env
        .as_(
            "bob",
            &[
                "activate",
                "db-admin",
                "-j",
                "x",
                "--code",
                &oathtool(&bob, 0),
                "--json",
            ],
        )
        .expect(0);
    assert_eq!(r.json()["scope"], "/prod");
    // Eligible at two scopes (neither the root): the choice is asked for.
    env.as_(
        "admin",
        &["assign", "bob", "db-admin", "--scope", "/dev", "-j", "x"],
    )
    .expect(0);
    env.as_("bob", &["deactivate", "db-admin"]).expect(0);
    let r = env
        .as_(
            "bob",
            &["activate", "db-admin", "-j", "x", "--code", "123456"],
        )
        .expect(2);
    assert!(
        r.stderr
            .contains("You are eligible for db-admin at /dev, /prod; choose one with --scope."),
        "{}",
        r.stderr
    );
}

/// The pattern is shown before the justification is typed; one that does not fit is asked
/// again, with the reason, and nothing typed is lost.
#[test]
fn a_justification_pattern_is_said_first_and_a_misfit_is_asked_again() {
    let (env, bob) = bob_at_prod(&db_admin(&["justification_pattern = \"^CHG-[0-9]+\""]));
    let t = Terminal::start(&env, &["--as", "bob", "activate", "db-admin"], 120);
    let s = t.wait_for("Justification for db-admin");
    assert!(
        s.contains("asks for a justification matching `^CHG-[0-9]+`"),
        "{s}"
    );
    t.line("   ");
    t.wait_for("It cannot be empty.");
    t.line("fixing things");
    t.wait_for("db-admin needs a justification matching `^CHG-[0-9]+`.");
    t.line("CHG-42 fixing things");
    t.wait_for("TOTP code for bob");
    t.secret(&oathtool(&bob, 0));
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
}

/// bob's pending request for a role that needs approval by admin; its id.
fn pending_request() -> (Env, String, String) {
    let policy = db_admin(&["require_approval = true", "approvers = [\"admin\"]"]);
    let (env, bob) = bob_at_prod(&policy);
    let id = env
        .activate("bob", &bob, "db-admin", &["-j", "INC-1", "--json"])
        .expect(0)
        .json()["id"]
        .to_string();
    (env, bob, id)
}

/// Approving your own request, or one you are not an approver of, is refused before the
/// code is asked for; a denial's reason is asked for on a terminal, not a clap error.
#[test]
fn decisions_check_first_and_ask_for_a_denials_reason() {
    let (env, _, id) = pending_request();
    let t = Terminal::start(&env, &["--as", "bob", "approve", &id], 120);
    let (exit, s) = t.finish();
    assert_eq!(exit, 3, "{s}");
    assert!(s.contains("You cannot decide your own request"), "{s}");
    assert!(!s.contains("TOTP code"), "asked before checking:\n{s}");

    // Without a terminal, a denial without -j is a usage error (exit 2), nothing decided.
    env.as_("admin", &["deny", &id]).expect(2);
    let t = Terminal::start(&env, &["--as", "admin", "deny", &id], 120);
    let s = t.wait_for("Reason for denying request");
    assert!(s.contains("Denying request"), "{s}");
    assert!(s.contains("db-admin for bob at /prod"), "{s}");
    t.line("not during the freeze");
    t.wait_for("TOTP code for admin");
    // Walked away at the code prompt: nothing is decided.
    drop(t);
    let r = env
        .as_("bob", &["request", "show", &id, "--json"])
        .expect(0);
    assert_eq!(r.json()["status"], "pending");
}

/// What a requester wrote is shown to the approver on one line: a line break of theirs
/// starts no line that reads as pim's own before the approver's code is asked for.
#[test]
fn a_requesters_line_breaks_start_no_line_on_the_approvers_screen() {
    let policy = db_admin(&["require_approval = true", "approvers = [\"admin\"]"]);
    let (env, bob) = bob_at_prod(&policy);
    let forged =
        "routine\npim: Note: request 1 already has carol's approval; your code only confirms it.";
    let id = env
        .activate("bob", &bob, "db-admin", &["-j", forged, "--json"])
        .expect(0)
        .json()["id"]
        .to_string();
    let t = Terminal::start(&env, &["--as", "admin", "approve", &id], 120);
    let s = t.wait_for("TOTP code for admin");
    assert!(
        !s.lines()
            .any(|l| l.trim_start().starts_with("pim: Note: request 1")),
        "{s}"
    );
    assert!(s.contains("(\"routine\\npim: Note: request 1"), "{s}");
}

/// `review decide` without -j: asked for on a terminal, exit 2 without one; `review
/// complete` shows what it will remove and asks first (no: nothing changes).
#[test]
fn review_decide_asks_for_a_reason_and_complete_confirms() {
    let env = Env::new();
    env.at("-40d", &["init", "--admin", "admin"]).expect(0);
    env.at("-40d", &["--as", "admin", "user", "add", "carol"])
        .expect(0);
    env.at(
        "-40d",
        &["--as", "admin", "assign", "carol", "db-admin", "-j", "team"],
    )
    .expect(0);
    let id = env
        .as_(
            "admin",
            &[
                "review",
                "create",
                "--role",
                "db-admin",
                "--reviewer",
                "admin",
                "--default",
                "recommendation",
                "--json",
            ],
        )
        .expect(0)
        .json()["id"]
        .to_string();
    env.as_("admin", &["review", "decide", &id, "carol", "keep"])
        .expect(2);
    let t = Terminal::start(&env, &["--as", "admin", "review", "complete", &id], 120);
    let s = t.wait_for("Remove these 1 assignment(s) and complete review");
    assert!(s.contains("carol"), "{s}");
    assert!(s.contains("undecided; default recommendation"), "{s}");
    t.keys(&["n", "Enter"]);
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    assert!(s.contains("Nothing changed; the review stays open."), "{s}");
    env.run(&["check", "carol", "db-admin"]).expect(1);
    let show = env
        .as_("admin", &["review", "show", &id, "--json"])
        .expect(0)
        .json();
    assert_eq!(show["state"], "open", "{show}");
    // Someone who may not see the review is not asked anything: exit 4, on record as it is
    // without a terminal, with nothing of the review but its number.
    for args in [
        vec!["review", "complete", id.as_str()],
        vec!["review", "decide", id.as_str(), "carol", "keep"],
    ] {
        let mut all = vec!["--as", "carol"];
        all.extend(args);
        let t = Terminal::start(&env, &all, 120);
        let (exit, s) = t.finish();
        assert_eq!(exit, 4, "{s}");
        assert!(s.contains("no review") && !s.contains("Reason"), "{s}");
    }
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_events WHERE actor = 'carol' AND result != 'ok' \
             AND action IN ('review.complete', 'review.decide') AND role IS NULL"
        ),
        2
    );

    let t = Terminal::start(
        &env,
        &["--as", "admin", "review", "decide", &id, "carol", "keep"],
        120,
    );
    t.wait_for("Reason to keep carol's assignment");
    t.line("still on call");
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    // Kept: nothing to remove, nothing asked.
    let t = Terminal::start(&env, &["--as", "admin", "review", "complete", &id], 120);
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    assert!(s.contains("removes nothing"), "{s}");
    let show = env
        .as_("admin", &["review", "show", &id, "--json"])
        .expect(0)
        .json();
    assert_eq!(show["state"], "completed", "{show}");
}

/// `pim whoami` says who pim takes you to be, and what to do when that is nobody.
#[test]
fn whoami_names_the_account_the_principal_and_what_is_held() {
    let (env, bob) = bob_at_prod(&db_admin(&[]));
    // The OS account running the tests is not a pim user: said, with the way out.
    let r = env.run(&["whoami"]).expect(0);
    assert!(r.stdout.contains("OS account:"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("is not a pim user. Act as one with --as NAME"),
        "{}",
        r.stdout
    );
    // And every other command says the same thing, pointing at whoami.
    let r = env.run(&["status"]).expect(3);
    assert!(r.stderr.contains("See `pim whoami`."), "{}", r.stderr);

    env.activate("bob", &bob, "db-admin", &["-j", "x"])
        .expect(0);
    let r = env.as_("bob", &["whoami"]).expect(0);
    assert!(
        r.stdout
            .contains("Principal:   bob (from --as or PIM_USER)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("MFA:         enrolled"), "{}", r.stdout);
    assert!(
        r.stdout.contains("db-admin at /prod, until"),
        "{}",
        r.stdout
    );
    let j = env.as_("bob", &["whoami", "--json"]).expect(0).json();
    assert_eq!(j["principal"], "bob");
    assert_eq!(j["active"][0]["role"], "db-admin");
    assert_eq!(j["user"]["mfa_enrolled"], true);
}

/// The finding of `pim doctor --json` for `check`.
fn finding(found: &serde_json::Value, check: &str) -> serde_json::Value {
    found
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} finding in {found}"))
        .clone()
}

/// `pim doctor` on a database file pim refuses to open: every reason, each with its fix (a
/// command refuses on the first, in one line), and following the fixes opens it again.
#[test]
fn doctor_lists_everything_that_keeps_a_database_from_opening() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::sqlite();
    env.init_with(&db_admin(&[]));
    let dir = env.db.parent().unwrap().to_path_buf();
    let journal = std::path::PathBuf::from(format!("{}-journal", env.db.display()));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&env.db, std::fs::Permissions::from_mode(0o664)).unwrap();
    std::fs::write(&journal, b"").unwrap();
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o666)).unwrap();
    // A -wal that is a link to another file: its fix must touch the link alone.
    let wal = std::path::PathBuf::from(format!("{}-wal", env.db.display()));
    let _ = std::fs::remove_file(&wal);
    let victim = dir.join("victim");
    std::fs::write(&victim, b"").unwrap();
    std::os::unix::fs::symlink(&victim, &wal).unwrap();
    let r = env.as_("admin", &["status"]).expect(1);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("Refusing to open the database"),
        "{}",
        r.stderr
    );
    let found = env.as_("admin", &["doctor", "--json"]).expect(1).json();
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found
        .iter()
        .all(|f| f["check"] == "database" && f["state"] == "problem"));
    let fixes: Vec<&str> = found.iter().map(|f| f["fix"].as_str().unwrap()).collect();
    for (fix, path) in [
        ("chmod go-w", &dir),
        ("chmod go-w", &env.db),
        ("mv --", &journal),
        ("mv --", &wal),
    ] {
        let wanted = format!("{fix} {}", path.display());
        assert!(
            fixes.iter().any(|f| f.contains(&wanted)),
            "no `{wanted}` in {fixes:?}"
        );
    }
    // The table says the same, each fix under "To fix:".
    let r = env.as_("admin", &["doctor"]).expect(1);
    assert!(r.stdout.contains("To fix:\n  database: "), "{}", r.stdout);
    // Done as told, the database opens again.
    for (path, mode) in [(&dir, 0o755), (&env.db, 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    assert!(
        !fixes
            .iter()
            .any(|f| f.contains("chown") || f.contains("chmod 0600")),
        "a fix that follows a link: {fixes:?}"
    );
    for companion in [&journal, &wal] {
        let aside = std::path::PathBuf::from(format!("{}.suspect", companion.display()));
        std::fs::rename(companion, &aside).unwrap();
    }
    let found = env.as_("admin", &["doctor", "--json"]).json();
    assert_eq!(finding(&found, "database")["state"], "ok", "{found}");
    env.as_("admin", &["status"]).expect(0);
}

/// `pim doctor`: an open database file, a sweep that does not run and an unreachable
/// webhook are problems (exit 1), each with the command that fixes it.
#[test]
fn doctor_finds_problems_and_says_how_to_fix_them() {
    // The discard port, with nothing listening (see notifications.rs).
    let closed = 9;
    let policy = db_admin(&[]).section(
        "notifications.webhook",
        &[&format!("url = \"http://127.0.0.1:{closed}/hook\"")],
    );
    let env = Env::sqlite();
    env.init_with(&policy);
    let bob = env.user("bob");
    env.as_(
        "admin",
        &["assign", "bob", "db-admin", "--scope", "/prod", "-j", "x"],
    )
    .expect(0);
    env.activate("bob", &bob, "db-admin", &["-j", "x"])
        .expect(0);
    let r = env.as_("admin", &["doctor", "--json"]).expect(1);
    let found = r.json();
    let state = |check: &str| finding(&found, check);
    assert_eq!(state("webhook")["state"], "problem", "{found}");
    assert_eq!(state("schema")["state"], "ok", "{found}");
    assert_eq!(state("permissions")["state"], "ok", "{found}");

    // The database readable by all, and the activation ended three hours ago unrecorded.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&env.db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = env.at("+3h", &["--as", "admin", "doctor"]).expect(1);
    assert!(
        r.stdout.contains("others can read or change"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains(&format!("permissions: chmod 0600 {}", env.db.display())),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("the sweep does not run"), "{}", r.stdout);
    assert!(r.stdout.contains("sweep: pim sweep, then:"), "{}", r.stdout);
    // Fixed as told: those two are gone.
    std::fs::set_permissions(&env.db, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.at("+3h", &["--as", "admin", "sweep"]).expect(0);
    let found = env
        .at("+3h", &["--as", "admin", "doctor", "--json"])
        .expect(1)
        .json();
    for f in found.as_array().unwrap() {
        if f["check"] == "permissions" || f["check"] == "sweep" {
            assert_ne!(f["state"], "problem", "{f}");
        }
    }
    // The sweep's last run is known to the database, wherever it ran; an hour later
    // without one it is a warning again.
    let sweep = |found: &serde_json::Value| finding(found, "sweep");
    let f = sweep(&found);
    assert_eq!(f["state"], "ok", "{f}");
    assert!(f["detail"].as_str().unwrap().contains("last run"), "{f}");
    let later = env
        .at("+4h", &["--as", "admin", "doctor", "--json"])
        .expect(1)
        .json();
    let f = sweep(&later);
    assert_eq!(f["state"], "warning", "{f}");
    assert!(f["detail"].as_str().unwrap().contains("last run"), "{f}");
    assert!(
        !later
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["check"] == "clock"),
        "{later}"
    );
    // Seen from a clock three hours behind the one that swept: a clock is wrong.
    let behind = env.as_("admin", &["doctor", "--json"]).json();
    let f = finding(&behind, "clock");
    assert_eq!(f["state"], "warning", "{f}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .contains("ahead of this host's clock"),
        "{f}"
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("timedatectl"),
        "{f}"
    );
    // ...and a sweep "in 3h" is no sweep that runs.
    assert_eq!(sweep(&behind)["state"], "warning", "{behind}");
    // Whatever is written there (the runtime role of a server may write `meta`), doctor
    // says so rather than panicking.
    rusqlite::Connection::open(&env.db)
        .unwrap()
        .execute(
            "UPDATE meta SET value = '9223372036854775807' WHERE key = 'sweep:last'",
            [],
        )
        .unwrap();
    let r = env.as_("admin", &["doctor", "--json"]);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let odd = r.json();
    assert!(
        odd.as_array().unwrap().iter().any(|f| f["check"] == "clock"
            && f["detail"]
                .as_str()
                .unwrap()
                .contains("a time no clock reads")),
        "{odd}"
    );
    // Without a database: one problem, and how to make one.
    let r = env
        .run(&["--db", env.path("none.db").to_str().unwrap(), "doctor"])
        .expect(1);
    assert!(r.stdout.contains("pim init --admin NAME"), "{}", r.stdout);
}

/// Display width of a line (what a terminal takes for it), escape sequences left out.
fn columns(line: &str) -> usize {
    let mut n = 0;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        n += 1;
    }
    n
}

/// A story with requests in every shape: active, deactivated, denied; long justifications.
fn busy() -> Env {
    let policy = db_admin(&[]).role(
        "auditor",
        "Auditor",
        &["require_approval = true", "approvers = [\"admin\"]"],
    );
    let (env, bob) = bob_at_prod(&policy);
    env.as_("admin", &["assign", "bob", "auditor", "-j", "x"])
        .expect(0);
    let long = "INC-4242 the primary replica in eu-west fell behind by forty minutes and the on-call runbook says to fail over by hand";
    env.activate("bob", &bob, "db-admin", &["-j", long])
        .expect(0);
    env.as_("bob", &["deactivate", "db-admin"]).expect(0);
    let id = env
        .at(
            "+31s",
            &[
                "--as",
                "bob",
                "activate",
                "auditor",
                "-j",
                "quarterly audit",
                "--code",
                &oathtool(&bob, 30),
                "--json",
            ],
        )
        .expect(0)
        .json()["id"]
        .to_string();
    env.as_("admin", &["deny", &id, "-j", "not now", "--code", "x"])
        .expect(3);
    env
}

/// At 60 columns nothing wraps: free text is cut with an ellipsis, or a row becomes a
/// block; at 200 the table is whole. A pipe gets everything. Times carry their zone.
#[test]
fn tables_fit_the_terminal() {
    let env = busy();
    for args in [
        &["--as", "admin", "audit", "list"][..],
        &["--as", "bob", "request", "list"][..],
        &["--as", "bob", "status"][..],
        &["--as", "admin", "assignment", "list"][..],
        &["--as", "admin", "role", "list"][..],
    ] {
        let t = Terminal::start(&env, args, 60);
        let (exit, _) = t.finish();
        assert_eq!(exit, 0, "{args:?}:\n{}", t.raw());
        let raw = t.raw();
        for line in raw.lines() {
            assert!(
                columns(line) <= 60,
                "{args:?}: a line of {} columns:\n{raw}",
                columns(line)
            );
        }
    }
    let t = Terminal::start(&env, &["--as", "bob", "request", "list"], 200);
    t.finish();
    let wide = t.raw();
    assert!(wide.contains("INC-4242 the primary replica"), "{wide}");
    let t = Terminal::start(&env, &["--as", "bob", "request", "list"], 120);
    t.finish();
    let mid = t.raw();
    assert!(mid.contains('…'), "a long justification is cut:\n{mid}");
    assert!(mid.contains("UTC ("), "times carry their zone:\n{mid}");
    // A pipe gets the whole of it.
    let r = env.as_("bob", &["request", "list"]).expect(0);
    assert!(r.stdout.contains("fail over by hand"), "{}", r.stdout);
    assert!(!r.stdout.contains('\x1b'), "{}", r.stdout);
}

/// Ended requests show when they ended; those that never started say so.
#[test]
fn ended_requests_show_their_real_end() {
    let env = busy();
    let t = Terminal::start(&env, &["--as", "bob", "request", "list"], 200);
    t.finish();
    let s = t.raw();
    let line = |status: &str| {
        s.lines()
            .find(|l| l.contains(status))
            .unwrap_or_else(|| panic!("no {status}:\n{s}"))
            .to_string()
    };
    // Deactivated a moment after it started (its planned end was 2h on).
    assert!(!line("deactivated").contains("(in 1h"), "{s}");
    assert!(
        line("deactivated").contains("ago)") || line("deactivated").contains("(now)"),
        "{s}"
    );
    assert!(line("pending").contains("auditor"), "{s}");
}

/// Status words are coloured on a terminal, not with NO_COLOR, never in a pipe or JSON.
#[test]
fn colour_on_a_terminal_only() {
    let env = busy();
    let t = Terminal::start(&env, &["--as", "bob", "request", "list"], 200);
    t.finish();
    assert!(t.raw().contains("\x1b[33mpending"), "{}", t.raw());
    let t = Terminal::start_with(
        &env,
        &["NO_COLOR=1"],
        &["--as", "bob", "request", "list"],
        200,
    );
    t.finish();
    assert!(!t.raw().contains("\x1b[33m"), "{}", t.raw());
    let t = Terminal::start(&env, &["--as", "bob", "request", "list", "--json"], 200);
    t.finish();
    assert!(!t.raw().contains("\x1b[3"), "{}", t.raw());
}

/// `status --short` is one line for a shell prompt; any command run on a terminal notes an
/// activation of yours that ends within ten minutes.
#[test]
fn status_short_and_a_note_before_an_activation_ends() {
    let (env, bob) = bob_at_prod(&db_admin(&[]));
    let r = env.as_("bob", &["status", "--short"]).expect(0);
    assert_eq!(r.stdout, "", "nothing active, nothing printed");
    env.activate("bob", &bob, "db-admin", &["-j", "x"])
        .expect(0);
    let r = env
        .at("+30m", &["--as", "bob", "status", "--short"])
        .expect(0);
    assert!(
        ["db-admin@/prod 1h 30m\n", "db-admin@/prod 1h 29m\n"].contains(&r.stdout.as_str()),
        "{:?}",
        r.stdout
    );
    let j = env
        .at("+30m", &["--as", "bob", "status", "--short", "--json"])
        .expect(0)
        .json();
    assert!(j["short"]
        .as_str()
        .unwrap()
        .starts_with("db-admin@/prod 1h"));
    // Five minutes before the end, on a terminal: noted on stderr.
    let t = Terminal::start_at(&env, "+115m", &["--as", "bob", "role", "list"], 120);
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    assert!(
        ["5m", "4m"].iter().any(|left| s.contains(&format!(
            "Note: your db-admin at /prod ends in {left}; `pim extend db-admin` keeps it longer."
        ))),
        "{s}"
    );
    // Not in a pipe, and not an hour before.
    let r = env.at("+115m", &["--as", "bob", "role", "list"]).expect(0);
    assert!(!r.stderr.contains("ends in"), "{}", r.stderr);
    let t = Terminal::start_at(&env, "+60m", &["--as", "bob", "role", "list"], 120);
    let (_, s) = t.finish();
    assert!(!s.contains("ends in"), "{s}");
}

/// `extend` checks first (nothing running: said before any prompt), then asks, and shows
/// the activation extended.
#[test]
fn extend_checks_first_then_asks() {
    let (env, bob) = bob_at_prod(&db_admin(&[]));
    let t = Terminal::start(&env, &["--as", "bob", "extend", "db-admin"], 120);
    let (exit, s) = t.finish();
    assert_eq!(exit, 4, "{s}");
    assert!(
        s.contains("You have no running activation of db-admin"),
        "{s}"
    );
    assert!(!s.contains("Justification"), "{s}");
    env.activate("bob", &bob, "db-admin", &["-j", "x"])
        .expect(0);
    let t = Terminal::start_at(&env, "+1h", &["--as", "bob", "extend", "db-admin"], 120);
    t.wait_for("Justification for extending db-admin");
    t.line("INC-9 still failing over");
    t.wait_for("TOTP code for bob");
    t.secret(&oathtool(&bob, 3600));
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    assert!(s.contains("extended; it is active until"), "{s}");
    // The list shows the extension applied to the activation, not an "expired" request.
    let r = env.at("+1h", &["--as", "bob", "request", "list"]).expect(0);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("INC-9"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("applied") && line.contains("extends request 1"),
        "{}",
        r.stdout
    );
    assert!(!line.contains("expired"), "{}", r.stdout);
}

/// Enrolment on a terminal: the QR code, then the first code from the new authenticator
/// (a wrong one asked again) before it takes effect. An administrator enrolling bob sees no
/// secret: bob completes a one-time enrolment under his own account.
#[test]
fn enrolment_is_confirmed_by_its_first_code_and_nobody_sees_anothers_secret() {
    let env = Env::new();
    env.init();
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    let t = Terminal::start(&env, &["--as", "bob", "mfa", "enroll"], 120);
    let s = t.wait_for("First code from the new authenticator");
    assert!(
        s.contains("Scan this into an authenticator app for bob"),
        "{s}"
    );
    let secret = s
        .split("enter the secret ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    // The secret comes after the QR code, with the prompt: on screen at 24 rows.
    assert!(
        s.contains(&format!("(or enter the secret {secret} by hand)")),
        "{s}"
    );
    // Not in force yet.
    let shown = env
        .as_("admin", &["user", "show", "bob", "--json"])
        .expect(0)
        .json();
    assert_eq!(shown["mfa_enrolled"], false, "{shown}");
    let code = oathtool(&secret, 0);
    t.secret(&wrong(&code));
    t.wait_for("Try again.");
    t.secret(&code);
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    assert!(
        s.contains("Confirmed: the new authenticator is in force."),
        "{s}"
    );
    assert!(
        !s.contains(&format!("\n{code}")),
        "the code was echoed:\n{s}"
    );
    let shown = env
        .as_("admin", &["user", "show", "bob", "--json"])
        .expect(0)
        .json();
    assert_eq!(shown["mfa_enrolled"], true, "{shown}");

    // Lost phone: the administrator issues a one-time enrolment and sees no secret.
    let r = env.as_("admin", &["mfa", "enroll", "bob"]).expect(0);
    assert!(
        r.stdout
            .contains("bob may now enrol a new authenticator under their own account"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("otpauth://"), "{}", r.stdout);
    let j = env
        .as_("admin", &["mfa", "enroll", "bob", "--json"])
        .expect(0)
        .json();
    assert!(
        j.get("secret").is_none() && j.get("otpauth_uri").is_none(),
        "{j}"
    );
    // bob replaces his authenticator without the old one, once.
    let fresh = env
        .as_("bob", &["mfa", "enroll", "--json"])
        .expect(0)
        .json();
    let new = fresh["secret"].as_str().unwrap().to_string();
    env.as_("bob", &["mfa", "confirm", "--code", &oathtool(&new, 30)])
        .expect(0);
    env.as_("bob", &["mfa", "enroll"]).expect(3);
}

/// A policy's `justification_hint` says the pattern in words, with an example: in the list
/// of what a role asks for, when a justification does not fit (asked again on a terminal,
/// refused with it without one); a hint that is not one plain line is a policy error.
#[test]
fn a_justification_hint_says_the_pattern_in_words() {
    let hint = "a change number first, e.g. CHG-1234 replica lag";
    let (env, bob) = bob_at_prod(&db_admin(&[
        "justification_pattern = \"^CHG-[0-9]+\"",
        &format!("justification_hint = \"{hint}\""),
    ]));
    let t = Terminal::start(&env, &["--as", "bob", "activate", "db-admin"], 160);
    let s = t.wait_for("Justification for db-admin");
    assert!(
        s.contains(&format!("asks for a justification: {hint} (`^CHG-[0-9]+`)")),
        "{s}"
    );
    t.line("replica lag");
    t.wait_for(&format!(
        "db-admin needs a justification matching `^CHG-[0-9]+`: {hint}."
    ));
    t.line("CHG-42 replica lag");
    t.wait_for("TOTP code for bob");
    t.secret(&oathtool(&bob, 0));
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    env.as_("bob", &["deactivate", "db-admin"]).expect(0);

    // Without a terminal: refused (exit 3) with the hint, nothing started.
    let r = env
        .as_(
            "bob",
            &[
                "activate",
                "db-admin",
                "-j",
                "lag",
                "--code",
                &oathtool(&bob, 0),
            ],
        )
        .expect(3);
    assert!(r.stderr.contains("^CHG-[0-9]+"), "{}", r.stderr);
    assert!(r.stderr.contains(hint), "{}", r.stderr);
    env.run(&["check", "bob", "db-admin", "--scope", "/prod"])
        .expect(1);

    // The hint is one line of text a terminal shows as it is.
    let bad = db_admin(&[
        "justification_pattern = \"^CHG-[0-9]+\"",
        "justification_hint = \"CHG-1\\u001b[2Jcleared\"",
    ]);
    std::fs::write(env.path("bad.toml"), bad.to_toml()).unwrap();
    let r = env.run(&["policy", "validate", "bad.toml"]).expect(2);
    assert!(
        r.stderr
            .contains("justification_hint must be one line without control characters"),
        "{}",
        r.stderr
    );
}

/// A scope a typo away from the right one: deactivate and extend name where the role is
/// held; assign asks "did you mean" on a terminal and notes it without one.
#[test]
fn a_scope_typo_is_met_with_did_you_mean() {
    let (env, bob) = bob_at_prod(&db_admin(&[]));
    env.activate("bob", &bob, "db-admin", &["-j", "INC-1"])
        .expect(0);
    for verb in [
        &["deactivate", "db-admin", "--scope", "/prd"][..],
        &[
            "extend", "db-admin", "--scope", "/prd", "-j", "more", "--code", "123456",
        ],
    ] {
        let r = env.as_("bob", verb).expect(4);
        assert!(
            r.stderr
                .contains("You have it at /prod: pass --scope /prod."),
            "{verb:?}: {}",
            r.stderr
        );
    }
    env.run(&["check", "bob", "db-admin", "--scope", "/prod"])
        .expect(0);

    // assign without a terminal: a note, and the scope as given (it may be new on purpose).
    env.user("carol");
    let r = env
        .as_(
            "admin",
            &["assign", "carol", "db-admin", "--scope", "/prd", "-j", "x"],
        )
        .expect(0);
    assert!(
        r.stderr
            .contains("Nothing is assigned at /prd yet; did you mean /prod?"),
        "{}",
        r.stderr
    );
    // On a terminal the question is asked; yes assigns at /prod. The answer is taken with
    // Enter, like every other: the Enter does not answer the next prompt (the
    // justification) with nothing.
    env.user("dave");
    let t = Terminal::start(
        &env,
        &[
            "--as", "admin", "assign", "dave", "db-admin", "--scope", "/prodd",
        ],
        160,
    );
    let s = t.wait_for("Assign at /prod instead?");
    assert!(
        s.contains("Nothing is assigned at /prodd yet; did you mean /prod?"),
        "{s}"
    );
    t.keys(&["y"]);
    // `y` alone used to answer at once, and the Enter a person types after it then answered
    // the justification's prompt with nothing.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let s = t.screen();
    assert!(!s.contains("Justification"), "answered without Enter:\n{s}");
    t.keys(&["Enter"]);
    t.wait_for("Justification");
    t.line("moving dave over");
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    assert!(!s.contains("cannot be empty"), "{s}");
    let r = env
        .as_("admin", &["assignment", "list", "--user", "dave", "--json"])
        .expect(0);
    assert_eq!(r.json()[0]["scope"], "/prod", "{}", r.stdout);
}

/// `exec` takes its scope as `activate` does (bob's only eligible one, or where he holds the
/// role) and, on a terminal, refuses what needs nothing typed before it asks anything.
#[test]
fn exec_takes_the_scope_activate_would_and_checks_first() {
    let (env, bob) = bob_at_prod(&db_admin(&[]));
    let seen = env.path("scope.txt");
    let script = format!("echo $PIM_SCOPE >> {}", seen.display());
    env.as_(
        "bob",
        &[
            "exec",
            "db-admin",
            "-j",
            "x",
            "--code",
            &oathtool(&bob, 0),
            "--",
            "sh",
            "-c",
            &script,
        ],
    )
    .expect(0);
    // Held at /prod (by an activation): used there, nothing asked.
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "-j",
            "x",
            "--code",
            &oathtool(&bob, 30),
        ],
    )
    .expect(0);
    let t = Terminal::start(
        &env,
        &["--as", "bob", "exec", "db-admin", "--", "sh", "-c", &script],
        120,
    );
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    assert!(
        !s.contains("Justification") && !s.contains("TOTP code"),
        "{s}"
    );
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "/prod\n/prod\n");
    env.as_("bob", &["deactivate", "db-admin"]).expect(0);
    // A scope bob is not eligible at: refused before any prompt.
    let t = Terminal::start(
        &env,
        &[
            "--as", "bob", "exec", "db-admin", "--scope", "/dev", "--", "true",
        ],
        120,
    );
    let (exit, s) = t.finish();
    assert_eq!(exit, 3, "{s}");
    assert!(
        s.contains("You are not eligible for db-admin at /dev. You are eligible for it at /prod: pass --scope /prod."),
        "{s}"
    );
    assert!(
        !s.contains("Justification") && !s.contains("TOTP code"),
        "asked before checking:\n{s}"
    );
    // Eligible, on a terminal: what the role asks for is said, then asked (later: the two
    // codes above are used).
    let t = Terminal::start_at(
        &env,
        "+90s",
        &["--as", "bob", "exec", "db-admin", "--", "sh", "-c", &script],
        120,
    );
    t.wait_for("Justification for db-admin");
    let s = t.screen();
    assert!(s.contains("Activating db-admin at /prod"), "{s}");
    t.line("INC-5");
    t.wait_for("TOTP code for bob");
    t.secret(&oathtool(&bob, 90));
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "/prod\n/prod\n/prod\n"
    );
}

/// `mfa confirm` on a terminal says there is nothing to confirm before it asks for a code,
/// and `--code` says when it confirmed.
#[test]
fn mfa_confirm_checks_first_and_says_it_confirmed() {
    let env = Env::new();
    env.init();
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    let t = Terminal::start(&env, &["--as", "bob", "mfa", "confirm"], 120);
    let (exit, s) = t.finish();
    assert_eq!(exit, 4, "{s}");
    assert!(s.contains("You have no enrolment waiting"), "{s}");
    assert!(!s.contains("First code"), "asked before checking:\n{s}");
    let secret = env
        .as_("bob", &["mfa", "enroll", "--json"])
        .expect(0)
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let code = oathtool(&secret, 0);
    let t = Terminal::start(
        &env,
        &["--as", "bob", "mfa", "confirm", "--code", &code],
        120,
    );
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    assert!(
        s.contains("bob's new authenticator is confirmed and in force."),
        "{s}"
    );
}

/// At 60 columns an answer longer than the row wraps as it is typed; once answered it is
/// shown once (dialoguer left the first row of it above its own report: the first half of
/// the justification twice).
#[test]
fn a_long_answer_on_a_narrow_terminal_is_shown_once() {
    let (env, bob) = bob_at_prod(&db_admin(&[]));
    let t = Terminal::start(&env, &["--as", "bob", "activate", "db-admin"], 60);
    t.wait_for("Justification for db-admin");
    let long = "INC-4711 replica lag on db-prod-2 after the failover, checking the slots";
    t.line(long);
    t.wait_for("TOTP code for bob");
    let s = t.screen();
    assert_eq!(
        s.matches("Justification for db-admin: INC-4711").count(),
        1,
        "{s}"
    );
    // pim's own note is broken at spaces, not mid-word by the terminal ("up to" / " 2h").
    let words = s.lines().map(str::trim_end).collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("Activating db-admin at /prod (Database Administrator): up to 2h; asks for a justification, a TOTP code; eligible until 20"),
        "{s}"
    );
    assert!(s.lines().all(|l| l.chars().count() <= 60), "{s}");
    t.secret(&oathtool(&bob, 0));
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    // The whole answer is there, wrapped by the terminal.
    let joined: String = s.lines().collect();
    assert!(
        joined.contains(&format!("Justification for db-admin: {long}")),
        "{s}"
    );
}

/// Rows are counted as the terminal wraps them: a wide character that does not fit in the
/// last column starts the next row (counted by width, the answer's first row stayed above
/// its report), and a variation selector adds no column (counted by width, a row of pim's
/// note above was erased).
#[test]
fn answers_with_wide_characters_are_shown_once_and_erase_nothing() {
    let (env, _bob) = bob_at_prod(&db_admin(&[]));
    for answer in [
        format!("x{}{}", "変".repeat(16), "y".repeat(59)),
        // (28 columns of prompt: 60 columns to the terminal, 61 by width)
        format!("{}\u{2764}\u{fe0f}", "x".repeat(31)),
    ] {
        let t = Terminal::start(&env, &["--as", "bob", "activate", "db-admin"], 60);
        t.wait_for("Justification for db-admin");
        let before = t.screen();
        t.line(&answer);
        t.wait_for("TOTP code for bob");
        let s = t.screen();
        let head: String = answer.chars().take(6).collect();
        assert_eq!(
            s.matches(&format!("Justification for db-admin: {head}"))
                .count(),
            1,
            "{s}"
        );
        let note: Vec<&str> = before
            .lines()
            .take_while(|l| !l.starts_with("Justification"))
            .collect();
        assert!(!note.is_empty(), "{before}");
        assert!(
            s.starts_with(&note.join("\n")),
            "the note changed:\n{before}\n---\n{s}"
        );
    }
}

/// At 60 columns the picker's line keeps what decides the pick (how long, whose approval)
/// instead of cutting it off with an ellipsis; the details follow for the role picked.
#[test]
fn the_picker_at_sixty_columns_says_whose_approval_a_role_needs() {
    let (env, _bob) = bob_at_prod(&db_admin(&[
        "require_approval = true",
        "approvers = [\"carol\", \"dave\"]",
    ]));
    let t = Terminal::start(&env, &["--as", "bob", "activate"], 60);
    let s = t.wait_for("Roles to activate");
    assert!(
        s.contains("db-admin at /prod: 2h max, approval by carol or dave"),
        "{s}"
    );
    assert!(!s.contains('…'), "{s}");
    t.keys(&["Space", "Enter"]);
    let s = t.wait_for("Justification for db-admin");
    let words = s.lines().map(str::trim_end).collect::<Vec<_>>().join(" ");
    assert!(words.contains("then approval by carol or dave"), "{s}");
}

/// What a command says it did is broken at spaces on a narrow terminal, not mid-word by the
/// terminal; a hash wider than the screen is not broken by pim at all (copied whole); and
/// the same sentence in a pipe is one line.
#[test]
fn what_a_command_did_is_broken_at_spaces_on_a_narrow_terminal() {
    let (env, bob) = bob_at_prod(&db_admin(&[]));
    let code = oathtool(&bob, 0);
    let t = Terminal::start(
        &env,
        &[
            "--as", "bob", "activate", "db-admin", "-j", "INC-9", "--code", &code,
        ],
        40,
    );
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    let lines: Vec<&str> = s.lines().map(str::trim_end).collect();
    let words = lines.join(" ");
    assert!(
        words.contains("Request 1: db-admin is active at /prod until"),
        "{s}"
    );
    assert!(words.contains("(in 2h)."), "{s}");
    assert!(lines.iter().all(|l| columns(l) <= 40), "{s}");
    let t = Terminal::start(&env, &["audit", "verify"], 40);
    let (exit, s) = t.finish();
    assert_eq!(exit, 0, "{s}");
    let head = env.run(&["audit", "verify", "--json"]).expect(0).json()["head"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(head.len(), 64);
    // The terminal wraps the 64 digits itself; `raw` joins the lines the terminal wrapped.
    let raw = t.raw();
    assert!(raw.lines().any(|l| l.contains(&head)), "{raw}");
    let r = env.run(&["audit", "verify"]).expect(0);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
}

/// What a command says it did says each thing once: a denial is "denied by you." (not
/// "denied by you; it is denied."), an approval still says what the request is now, and a
/// permanent assignment has "no end" (not "until permanent").
#[test]
fn outcome_lines_say_each_thing_once() {
    let env = Env::new();
    let admin = env.init_with(&db_admin(&[
        "require_approval = true",
        "approvers = [\"admin\"]",
    ]));
    let bob = env.user("bob");
    let r = env
        .as_(
            "admin",
            &[
                "assign",
                "bob",
                "global-admin",
                "--active",
                "--permanent",
                "-j",
                "x",
            ],
        )
        .expect(0);
    assert!(r.stdout.contains("(now) with no end."), "{}", r.stdout);
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "x"])
        .expect(0);
    let id = env
        .activate("bob", &bob, "db-admin", &["-j", "INC-1", "--json"])
        .expect(0)
        .json()["id"]
        .to_string();
    let r = env
        .as_(
            "admin",
            &["deny", &id, "-j", "freeze", "--code", &oathtool(&admin, 0)],
        )
        .expect(0);
    assert!(
        r.stdout
            .trim_end()
            .ends_with("(db-admin for bob at /): denied by you."),
        "{}",
        r.stdout
    );
}

/// `assign` on a terminal checks what needs nothing typed (here a duration over the role's
/// max_eligible) before it asks for the justification; the refusal is on record.
#[test]
fn assign_checks_first_then_asks() {
    let env = Env::new();
    env.init();
    env.user("bob");
    let t = Terminal::start(
        &env,
        &[
            "--as",
            "admin",
            "assign",
            "bob",
            "db-admin",
            "--duration",
            "400d",
        ],
        120,
    );
    let (exit, s) = t.finish();
    assert_eq!(exit, 3, "{s}");
    assert!(s.contains("last at most 365d (max_eligible)"), "{s}");
    assert!(!s.contains("Justification"), "asked before checking:\n{s}");
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'assignment.add' AND result != 'ok'"
        ),
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM assignments WHERE user_id = (SELECT id FROM users WHERE name = 'bob')"), 0);
}
