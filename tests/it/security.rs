//! The holes an attacker found (issue 8), each shown closed on the binary: escapes reaching
//! another person's terminal, forged token failures, reads without a reason, secrets at
//! rest, endless guessing, and the correctness holes found on the way. The set-group-id
//! install is driven for real in `tests/setgid.rs`.

use crate::support;

use support::{oathtool, unix_now, wrong_code_at, Env, Policy};

const ESCAPES: &str = "INC-1 \x1b[2J\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07\r\u{202e}gpj.exe\u{200b}\u{9b}31m";
/// What a one-line field (name, ticket) may carry: no control characters, but invisible and
/// reordering ones.
/// What one-line fields may hold and a terminal must still not show as it is: characters
/// that show nothing (zero width). Those that turn text around are refused there (below).
const HIDDEN: &str = "Eve \u{200b}gpj.exe\u{2060}\u{feff}x";

/// Nothing in `text` that a terminal would act on or hide.
fn assert_terminal_safe(what: &str, text: &str) {
    for bad in ['\x1b', '\r', '\u{202e}', '\u{200b}', '\u{9b}', '\x07'] {
        assert!(!text.contains(bad), "{what} printed {bad:?} raw:\n{text:?}");
    }
}

fn with_bob() -> (Env, String) {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.as_(
        "admin",
        &["assign", "bob", "db-admin", "--scope", "/prod", "-j", "dba"],
    )
    .expect(0);
    (env, bob)
}

// ------------------------------------------------------------------ 6: terminal escapes

#[test]
fn text_users_wrote_reaches_terminals_escaped_and_json_exactly() {
    let (env, bob) = with_bob();
    env.as_(
        "admin",
        &[
            "user",
            "add",
            "eve",
            "--display-name",
            HIDDEN,
            "--email",
            "eve@example.com",
        ],
    )
    .expect(0);
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "--scope",
            "/prod",
            "-j",
            ESCAPES,
            "--ticket",
            HIDDEN,
            "--code",
            &oathtool(&bob, 0),
        ],
    )
    .expect(0);
    env.as_(
        "admin",
        &[
            "review",
            "create",
            "--role",
            "db-admin",
            "--reviewer",
            "admin",
            "--name",
            HIDDEN,
        ],
    )
    .expect(0);
    for args in [
        &["request", "list", "--all"][..],
        &["request", "show", "1"],
        &["audit", "list"],
        &["user", "list"],
        &["user", "show", "eve"],
        &["review", "show", "1"],
        &["review", "list"],
        &["status", "bob"],
        &["assignment", "list"],
    ] {
        let r = env.as_("admin", args).expect(0);
        assert_terminal_safe(&args.join(" "), &r.stdout);
        assert_terminal_safe(&args.join(" "), &r.stderr);
    }
    // Shown escaped, so a reader sees that something was hidden there.
    let shown = env.as_("admin", &["request", "show", "1"]).expect(0).stdout;
    assert!(
        shown.contains("\\x1b[2J") || shown.contains("\\u202e"),
        "{shown}"
    );
    // JSON keeps the exact data (as JSON escapes), and parses.
    let j = env
        .as_("admin", &["request", "show", "1", "--json"])
        .expect(0);
    assert_terminal_safe("request show --json", &j.stdout);
    assert_eq!(j.json()["justification"], ESCAPES);
    let list = env.as_("admin", &["user", "list", "--json"]).expect(0);
    assert_terminal_safe("user list --json", &list.stdout);
    assert!(list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["display_name"] == HIDDEN));
    // One-line fields refuse control characters outright: a newline in a name would forge a
    // line of someone else's screen.
    for bad in [
        "Eve\nReview 9 approved",
        "Eve\x1b[2J",
        "Eve\rX",
        "Eve \u{202e}gpj.exe",
        "Eve\u{2066}x",
        "Eve\u{2028}Review 9 approved",
    ] {
        env.as_("admin", &["user", "add", "evil", "--display-name", bad])
            .expect(2);
        env.as_(
            "admin",
            &[
                "review",
                "create",
                "--role",
                "db-admin",
                "--reviewer",
                "admin",
                "--name",
                bad,
            ],
        )
        .expect(2);
    }
    // The export keeps the exact bytes for auditors.
    env.as_(
        "admin",
        &[
            "audit", "export", "--format", "jsonl", "--output", "a.jsonl",
        ],
    )
    .expect(0);
    let text = std::fs::read_to_string(env.path("a.jsonl")).unwrap();
    assert_terminal_safe("audit export --format jsonl", &text);
    assert!(text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .any(|e| e["justification"] == ESCAPES));
}

// ------------------------------------------------------------------ 15: length limits

#[test]
fn free_text_has_limits_everywhere_it_enters() {
    let (env, bob) = with_bob();
    let long = "x".repeat(1001);
    // Flags.
    let r = env
        .as_(
            "bob",
            &[
                "activate",
                "db-admin",
                "--scope",
                "/prod",
                "-j",
                &long,
                "--code",
                &oathtool(&bob, 0),
            ],
        )
        .expect(2);
    assert!(r.stderr.contains("limit is 1000"), "{}", r.stderr);
    env.as_("admin", &["assign", "bob", "user-admin", "-j", &long])
        .expect(2);
    env.as_(
        "admin",
        &["user", "add", "zed", "--display-name", &"d".repeat(129)],
    )
    .expect(2);
    env.as_("admin", &["user", "add", &"n".repeat(65)])
        .expect(2);
    env.as_(
        "admin",
        &[
            "assign",
            "bob",
            "user-admin",
            "-j",
            "x",
            "--ticket",
            &"t".repeat(129),
        ],
    )
    .expect(2);
    // An import row and an apply entry.
    std::fs::write(
        env.path("long.csv"),
        format!("user,role,scope,type,start,end,justification,ticket\nbob,user-admin,/,eligible,,,{long},\n"),
    )
    .unwrap();
    let r = env
        .as_("admin", &["assignment", "import", "long.csv"])
        .expect(2);
    assert!(
        r.stderr.contains("line 2") && r.stderr.contains("limit"),
        "{}",
        r.stderr
    );
    std::fs::write(
        env.path("long.toml"),
        format!(
            "[[eligible]]\nuser = \"bob\"\nrole = \"user-admin\"\njustification = \"{long}\"\n"
        ),
    )
    .unwrap();
    env.as_("admin", &["assignment", "apply", "long.toml"])
        .expect(2);
    // The policy: a description, and the whole file.
    let policy = env.as_("admin", &["policy", "export"]).expect(0).stdout;
    let described = policy.replacen(
        "description = \"Superuser on the production databases.\"",
        &format!("description = \"{}\"", "y".repeat(2001)),
        1,
    );
    assert_ne!(described, policy);
    std::fs::write(env.path("p1.toml"), described).unwrap();
    let r = env.run(&["policy", "validate", "p1.toml"]).expect(2);
    assert!(
        r.stderr.contains("description") && r.stderr.contains("limit"),
        "{}",
        r.stderr
    );
    std::fs::write(
        env.path("p2.toml"),
        format!("{policy}\n# {}\n", "z".repeat(300 * 1024)),
    )
    .unwrap();
    let r = env.as_("admin", &["policy", "apply", "p2.toml"]).expect(2);
    assert!(r.stderr.contains("KiB"), "{}", r.stderr);
    // Nothing of it was written.
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE role = 'user-admin'"),
        0
    );
    assert_eq!(env.count("SELECT count(*) FROM requests"), 0);
    assert_eq!(
        env.count("SELECT count(*) FROM users WHERE name = 'zed'"),
        0
    );
}

// ------------------------------------------------------------------ 7: token failures

#[test]
fn failed_tokens_are_recorded_under_the_account_that_tried_and_rate_limited() {
    let env = Env::new();
    env.init();
    env.user("alice");
    let me = String::from_utf8(
        std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let forged = |claim: &str| -> support::Run {
        env.command(&["sweep"])
            .env("PIM_TOKEN", format!("pim_{claim}_0000"))
            .output()
            .unwrap()
            .into()
    };
    for _ in 0..5 {
        forged("alice\x1b[2J").expect(3);
    }
    // Every failure is the OS account's, the claimed name kept (escaped by JSON) in details.
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM audit_events WHERE action = 'token.fail' AND actor = '{me}'"
        )),
        5
    );
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE (actor = 'alice' OR principal = 'alice') AND action = 'token.fail'"),
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'token.fail' AND details LIKE '%\\u001b%'"),
        5
    );
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'account.lock'"),
        1
    );
    // Locked out: refused at once, and the log does not grow.
    let before = env.count("SELECT count(*) FROM audit_events");
    for _ in 0..20 {
        let r = forged("alice").expect(3);
        assert!(r.stderr.contains("Too many"), "{}", r.stderr);
    }
    assert_eq!(env.count("SELECT count(*) FROM audit_events"), before);
    // ... until the window passes.
    let later: support::Run = env
        .at_command("+16m", &["sweep"])
        .env("PIM_TOKEN", "pim_alice_0000")
        .output()
        .unwrap()
        .into();
    assert_eq!(later.code, 3);
    assert!(!later.stderr.contains("Too many"), "{}", later.stderr);
    // And the alert names the account.
    let alerts = env.as_("admin", &["alerts", "--json"]).expect(0).json();
    let failures = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "authentication-failures")
        .expect("an authentication-failures alert");
    assert!(
        failures["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == me.as_str()),
        "{failures}"
    );
}

#[test]
fn a_user_flooding_the_log_with_refusals_is_throttled() {
    let (env, bob) = with_bob();
    let long = "A".repeat(1000);
    for _ in 0..40 {
        // Not eligible for user-admin: refused each time.
        env.as_(
            "bob",
            &[
                "activate",
                "user-admin",
                "-j",
                &long,
                "--code",
                &oathtool(&bob, 0),
            ],
        )
        .expect(3);
    }
    let refused =
        "SELECT count(*) FROM audit_events WHERE action = 'activation.request' AND result != 'ok'";
    assert_eq!(env.count(refused), 30);
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'refusal.throttle' AND actor = 'bob'"
        ),
        1
    );
    // Bulk refusals count once per command, at most 100 recorded rows each.
    let rows: String = (0..300)
        .map(|i| format!("admin,db-admin,/s{i},eligible,,,x,\n"))
        .collect();
    std::fs::write(
        env.path("many.csv"),
        format!("user,role,scope,type,start,end,justification,ticket\n{rows}"),
    )
    .unwrap();
    // carol may assign at /team only: every row is refused, 100 of them recorded.
    env.user("carol");
    env.as_(
        "admin",
        &[
            "assign",
            "carol",
            "privileged-role-admin",
            "--active",
            "--scope",
            "/team",
            "--duration",
            "1d",
            "-j",
            "team lead",
        ],
    )
    .expect(0);
    env.as_("carol", &["assignment", "import", "many.csv"])
        .expect(3);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE actor = 'carol' AND result != 'ok'"),
        100
    );
    // Without `assign` anywhere: one refusal, and no row gone through.
    env.user("dave");
    env.as_("dave", &["assignment", "import", "many.csv"])
        .expect(3);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE actor = 'dave' AND result != 'ok'"),
        1
    );
    // What bob may do still works.
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "--scope",
            "/prod",
            "-j",
            "INC-5",
            "--code",
            &oathtool(&bob, 30),
        ],
    )
    .expect(0);
    let alerts = env.as_("admin", &["alerts", "--json"]).expect(0).json();
    assert!(alerts
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["id"] == "authentication-failures"
            && a["users"].as_array().unwrap().iter().any(|u| u == "bob")));
}

#[test]
fn bulk_changes_cost_by_size_reveal_nothing_outside_your_scope_and_notify_in_moderation() {
    let env = Env::new();
    // A webhook nobody answers: each delivery fails at once.
    env.init_with(&Policy::repository().section(
        "notifications.webhook",
        &["url = \"http://127.0.0.1:9/pim\""],
    ));
    env.user("bob");
    env.user("mallory");
    env.as_(
        "admin",
        &["assign", "bob", "db-admin", "--scope", "/prod", "-j", "dba"],
    )
    .expect(0);
    env.as_(
        "admin",
        &[
            "assign",
            "mallory",
            "privileged-role-admin",
            "--active",
            "--scope",
            "/m",
            "--duration",
            "1d",
            "-j",
            "lab",
        ],
    )
    .expect(0);
    // An existing assignment outside mallory's scope is refused, not "unchanged".
    std::fs::write(
        env.path("probe.csv"),
        "user,role,scope,type,start,end,justification,ticket\nbob,db-admin,/prod,eligible,,,x,\n",
    )
    .unwrap();
    let r = env
        .as_(
            "mallory",
            &["assignment", "import", "probe.csv", "--dry-run"],
        )
        .expect(3);
    assert!(
        r.stderr.contains("'assign' permission over /prod"),
        "{}",
        r.stderr
    );
    // 2,500 rows within her scope: at most 1,000 notifications (the log has every row).
    let rows: String = (0..2500)
        .map(|i| format!("bob,db-admin,/m/s{i},eligible,,,x,\n"))
        .collect();
    std::fs::write(
        env.path("big.csv"),
        format!("user,role,scope,type,start,end,justification,ticket\n{rows}"),
    )
    .unwrap();
    let queued = env.count("SELECT count(*) FROM outbox");
    env.as_("mallory", &["assignment", "import", "big.csv", "--dry-run"])
        .expect(0);
    env.as_("mallory", &["assignment", "import", "big.csv"])
        .expect(0);
    assert_eq!(env.count("SELECT count(*) FROM outbox") - queued, 1000);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'assignment.add' AND actor = 'mallory' AND result = 'ok'"),
        2500
    );
}

// ------------------------------------------------------------------ 8: reads need a reason

#[test]
fn reads_need_a_reason() {
    let (env, bob) = with_bob();
    env.user("carol");
    env.as_(
        "admin",
        &[
            "assign", "carol", "db-admin", "--scope", "/staging", "-j", "dba",
        ],
    )
    .expect(0);
    env.as_(
        "admin",
        &[
            "review",
            "create",
            "--role",
            "db-admin",
            "--reviewer",
            "admin",
        ],
    )
    .expect(0);
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "--scope",
            "/prod",
            "-j",
            "INC-1",
            "--code",
            &oathtool(&bob, 0),
        ],
    )
    .expect(0);
    // The OS account running the tests is not a pim user: nothing but `check`.
    for args in [
        &["user", "list"][..],
        &["user", "show", "admin"],
        &["assignment", "list"],
        &["request", "list", "--all"],
        &["request", "show", "1"],
        &["review", "list"],
        &["review", "show", "1"],
        &["review", "export", "1"],
        &["status", "bob"],
        &["status"],
        &["audit", "list"],
        &["alerts"],
        &["notification", "list"],
        &["role", "list"],
        &["policy", "export"],
    ] {
        let r = env.run(args);
        assert_eq!(r.code, 3, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.is_empty(), "{args:?} printed {}", r.stdout);
    }
    env.run(&["check", "bob", "db-admin", "--scope", "/prod"])
        .expect(0);
    // A user sees their own, not other people's.
    let mine = env
        .as_("bob", &["assignment", "list", "--json"])
        .expect(0)
        .json();
    assert!(mine.as_array().unwrap().iter().all(|a| a["user"] == "bob"));
    assert!(!mine.as_array().unwrap().is_empty());
    env.as_("bob", &["assignment", "list", "--user", "carol"])
        .expect(3);
    env.as_("bob", &["status", "carol"]).expect(3);
    env.as_("bob", &["user", "show", "carol"]).expect(3);
    // Someone else's review or request is as if it were not there (exit 4), so ids cannot be
    // walked to learn who asked for what.
    env.as_("bob", &["review", "show", "1"]).expect(4);
    env.as_("bob", &["review", "export", "1"]).expect(4);
    let users = env.as_("bob", &["user", "list", "--json"]).expect(0).json();
    assert_eq!(users.as_array().unwrap().len(), 1);
    let all = env
        .as_("bob", &["request", "list", "--all", "--json"])
        .expect(0)
        .json();
    assert!(all.as_array().unwrap().iter().all(|r| r["user"] == "bob"));
    let hidden = env.as_("carol", &["request", "show", "1"]).expect(4);
    let missing = env.as_("carol", &["request", "show", "99"]).expect(4);
    assert_eq!(
        hidden.stderr.replace(" 1 ", " N "),
        missing.stderr.replace(" 99 ", " N ")
    );
    // The reviewer reads the review; the administrator reads everyone.
    env.as_("admin", &["review", "export", "1"]).expect(0);
    let everyone = env
        .as_("admin", &["assignment", "list", "--json"])
        .expect(0)
        .json();
    assert!(everyone
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["user"] == "carol"));
}

#[test]
fn touching_someone_elses_request_reveals_nothing() {
    let (env, bob) = with_bob();
    env.user("mallory");
    env.as_("admin", &["assign", "bob", "global-admin", "-j", "bg"])
        .expect(0);
    env.as_(
        "bob",
        &[
            "activate",
            "global-admin",
            "-j",
            "INC-7",
            "--code",
            &oathtool(&bob, 0),
        ],
    )
    .expect(0);
    let nothing = env
        .as_("mallory", &["request", "show", "99"])
        .expect(4)
        .stderr;
    for args in [
        &["request", "show", "1"][..],
        &["cancel", "1"],
        &["approve", "1", "--code", "123456"],
        &["deny", "1", "-j", "no", "--code", "123456"],
        &["revoke", "1", "-j", "no"],
    ] {
        let r = env.as_("mallory", args).expect(4);
        assert_eq!(r.stderr.replace(" 1 ", " 99 "), nothing, "{args:?}");
    }
}

#[test]
fn approvers_see_the_requests_they_may_decide() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.user("carol");
    env.user("dave");
    env.as_(
        "admin",
        &["assign", "bob", "global-admin", "-j", "break glass"],
    )
    .expect(0);
    env.as_(
        "bob",
        &[
            "activate",
            "global-admin",
            "-j",
            "INC-2",
            "--code",
            &oathtool(&bob, 0),
        ],
    )
    .expect(0);
    // carol is a named approver of global-admin; dave is not.
    let shown = env
        .as_("carol", &["request", "show", "1", "--json"])
        .expect(0)
        .json();
    assert_eq!(shown["status"], "pending");
    let pending = env
        .as_("carol", &["request", "list", "--pending", "--json"])
        .expect(0)
        .json();
    assert_eq!(pending.as_array().unwrap().len(), 1);
    env.as_("dave", &["request", "show", "1"]).expect(0);
    env.user("erin");
    env.as_("erin", &["request", "show", "1"]).expect(4);
}

// ------------------------------------------------------------------ 9: secrets at rest

#[test]
fn totp_secrets_are_sealed_and_a_copy_of_the_database_reveals_none() {
    // A copy of the file: the SQLite backend's own concern (a server's backups hold the
    // same sealed values, see the conformance suite).
    let env = Env::sqlite();
    let admin = env.init();
    let bob = env.user("bob");
    let stored: Vec<String> = {
        let conn = rusqlite::Connection::open(&env.db).unwrap();
        let mut stmt = conn
            .prepare("SELECT totp_secret FROM users WHERE totp_secret IS NOT NULL")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(stored.len(), 2);
    for s in &stored {
        assert!(s.starts_with("enc1:"), "{s}");
        assert!(!s.contains(&admin) && !s.contains(&bob), "{s}");
    }
    // The whole file holds neither secret, in any form pim writes.
    let bytes = std::fs::read(&env.db).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(&admin) && !text.contains(&bob));
    // The key is a file outside the database, readable by its owner only.
    let keys: Vec<_> = std::fs::read_dir(env.path(".config/pim/keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&keys[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A copy of the database elsewhere (without the key) gives no code away.
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "dba"])
        .expect(0);
    let copy = Env::sqlite();
    std::fs::copy(&env.db, &copy.db).unwrap();
    let r = copy
        .as_(
            "bob",
            &[
                "activate",
                "db-admin",
                "-j",
                "x",
                "--code",
                &oathtool(&bob, 0),
            ],
        )
        .expect(1);
    assert!(r.stderr.contains("key"), "{}", r.stderr);
    // With the key, the code works.
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "-j",
            "x",
            "--code",
            &oathtool(&bob, 0),
        ],
    )
    .expect(0);
}

#[test]
fn a_database_from_before_sealing_is_sealed_once_by_its_owner() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "dba"])
        .expect(0);
    // What a database of the previous release looks like: plain base32 secrets, no key.
    env.sql(&format!(
        "UPDATE users SET totp_secret = '{bob}' WHERE name = 'bob'; \
         UPDATE users SET totp_secret = NULL WHERE name = 'admin'; \
         UPDATE meta SET value = 'plain' WHERE key = 'secrets';"
    ));
    std::fs::remove_dir_all(env.path(".config/pim/keys")).unwrap();
    // The owner's next command makes the key and seals every secret, on record.
    env.as_("admin", &["role", "list"]).expect(0);
    assert_eq!(
        env.count("SELECT count(*) FROM users WHERE totp_secret LIKE 'enc1:%'"),
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'mfa.seal'"),
        1
    );
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "-j",
            "x",
            "--code",
            &oathtool(&bob, 0),
        ],
    )
    .expect(0);
    env.as_("admin", &["role", "list"]).expect(0);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'mfa.seal'"),
        1
    );
    env.run(&["audit", "verify"]).expect(0);
}

// ------------------------------------------------------------------ 10: guessing ends

#[test]
fn locks_grow_and_a_hundred_wrong_codes_lock_until_reset() {
    let (env, bob) = with_bob();
    // `seconds` from now, on pim's clock (faketime) and for the code alike.
    let wrong = |seconds: i64| {
        let code = wrong_code_at(&bob, unix_now() + seconds);
        env.at(
            &format!("+{seconds}s"),
            &[
                "--as", "bob", "activate", "db-admin", "--scope", "/prod", "-j", "x", "--code",
                &code,
            ],
        )
        .expect(3)
    };
    let locked_for = || {
        env.count("SELECT mfa_locked_until - (SELECT max(time) FROM audit_events WHERE action = 'mfa.lock') FROM users WHERE name = 'bob'")
    };
    for _ in 0..5 {
        wrong(0);
    }
    assert_eq!(locked_for(), 15 * 60);
    // While locked, a right code is refused too.
    let r = env
        .as_(
            "bob",
            &[
                "activate",
                "db-admin",
                "--scope",
                "/prod",
                "-j",
                "x",
                "--code",
                &oathtool(&bob, 0),
            ],
        )
        .expect(3);
    assert!(r.stderr.contains("locked"), "{}", r.stderr);
    // The next run of five, after the lock: twice as long.
    for _ in 0..5 {
        wrong(16 * 60);
    }
    assert_eq!(locked_for(), 30 * 60);
    // Drive the count to 100 consecutive failures (as if over days).
    env.sql("UPDATE users SET mfa_failures = 99, mfa_locked_until = NULL WHERE name = 'bob'");
    let r = wrong(0);
    assert!(r.stderr.contains("until an administrator"), "{}", r.stderr);
    // Months later it is still locked, whatever the code.
    let later = env
        .at(
            "+300d",
            &[
                "--as",
                "bob",
                "activate",
                "db-admin",
                "--scope",
                "/prod",
                "-j",
                "x",
                "--code",
                &oathtool(&bob, 300 * 86400),
            ],
        )
        .expect(3);
    assert!(later.stderr.contains("pim mfa reset"), "{}", later.stderr);
    let alerts = env.as_("admin", &["alerts", "--json"]).expect(0).json();
    let a = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "authentication-failures")
        .expect("an authentication-failures alert");
    assert_eq!(a["severity"], "critical");
    assert!(a["users"].as_array().unwrap().iter().any(|u| u == "bob"));
    // Only a reset (and a new enrolment) ends it.
    env.as_("admin", &["mfa", "reset", "bob"]).expect(0);
    let secret = env.enrol("bob");
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "--scope",
            "/prod",
            "-j",
            "x",
            "--code",
            &oathtool(&secret, 0),
        ],
    )
    .expect(0);
}

#[test]
fn re_enrolling_yourself_gives_no_fresh_codes() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    let new = env
        .as_(
            "bob",
            &["mfa", "enroll", "--code", &oathtool(&bob, 0), "--json"],
        )
        .expect(0)
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let confirmed = oathtool(&new, 0);
    env.as_("bob", &["mfa", "confirm", "--code", &confirmed])
        .expect(0);
    // A code of the new secret from a step already used is a replay: at most one
    // re-enrolment (and one code) per 30 seconds, whatever the secret. (The confirming
    // code itself: one taken later from the step before could be two steps old by the
    // time pim reads its clock.)
    let r = env
        .as_("bob", &["mfa", "enroll", "--code", &confirmed, "--json"])
        .expect(3);
    assert!(r.stderr.contains("already used"), "{}", r.stderr);
}

// ------------------------------------------------------------------ 11: eligibility ends earlier

#[test]
fn an_activation_never_outlasts_an_eligibility_moved_earlier_by_apply() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    let soon = chrono::Utc::now() + chrono::Duration::hours(2);
    let later = chrono::Utc::now() + chrono::Duration::days(30);
    let file = |until: chrono::DateTime<chrono::Utc>| {
        format!(
            "[[eligible]]\nuser = \"bob\"\nrole = \"db-admin\"\nuntil = \"{}\"\njustification = \"dba\"\n",
            until.format("%Y-%m-%dT%H:%M:%SZ")
        )
    };
    std::fs::write(env.path("d.toml"), file(later)).unwrap();
    env.as_("admin", &["assignment", "apply", "d.toml"])
        .expect(0);
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "-j",
            "INC-3",
            "--duration",
            "4h",
            "--code",
            &oathtool(&bob, 0),
        ],
    )
    .expect(0);
    // The eligibility now ends in 2h: the 4h activation ends with it.
    std::fs::write(env.path("d.toml"), file(soon)).unwrap();
    env.as_("admin", &["assignment", "apply", "d.toml"])
        .expect(0);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'activation.shorten'"),
        1
    );
    env.run(&["check", "bob", "db-admin"]).expect(0);
    env.at("+150m", &["check", "bob", "db-admin"]).expect(1);
    // Even a row that says otherwise (changed behind pim's back) does not hold past it.
    env.sql("UPDATE requests SET end_at = end_at + 86400");
    env.at("+150m", &["check", "bob", "db-admin"]).expect(1);
}

// ------------------------------------------------------------------ 12: nobody assigns themselves

#[test]
fn nobody_assigns_themselves_a_role() {
    let env = Env::new();
    env.init();
    env.user("carol");
    // carol holds `assign` (privileged-role-admin) directly.
    env.as_(
        "admin",
        &[
            "assign",
            "carol",
            "privileged-role-admin",
            "--active",
            "--permanent",
            "-j",
            "role admin",
        ],
    )
    .expect(0);
    let r = env
        .as_(
            "carol",
            &[
                "assign",
                "carol",
                "global-admin",
                "--active",
                "--permanent",
                "-j",
                "mine",
            ],
        )
        .expect(3);
    assert!(r.stderr.contains("yourself"), "{}", r.stderr);
    env.as_("carol", &["assign", "carol", "db-admin", "-j", "mine"])
        .expect(3);
    std::fs::write(
        env.path("self.csv"),
        "user,role,scope,type,start,end,justification,ticket\ncarol,global-admin,/,active,,permanent,mine,\n",
    )
    .unwrap();
    env.as_("carol", &["assignment", "import", "self.csv"])
        .expect(3);
    std::fs::write(
        env.path("self.toml"),
        "[[active]]\nuser = \"carol\"\nrole = \"global-admin\"\npermanent = true\njustification = \"mine\"\n",
    )
    .unwrap();
    env.as_("carol", &["assignment", "apply", "self.toml"])
        .expect(3);
    env.run(&["check", "carol", "global-admin"]).expect(1);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'assignment.add' AND actor = 'carol' AND principal = 'carol' AND result != 'ok'"),
        4
    );
}

// ------------------------------------------------------------------ 13: refusals are on record

#[test]
fn strangers_and_disabled_users_leave_a_refused_event() {
    let (env, _) = with_bob();
    let refused =
        "SELECT count(*) FROM audit_events WHERE action = 'activation.request' AND result != 'ok'";
    // The OS account running the tests is no pim user.
    env.run(&["activate", "db-admin", "-j", "x", "--code", "123456"])
        .expect(3);
    assert_eq!(env.count(refused), 1);
    env.as_("admin", &["user", "disable", "bob"]).expect(0);
    env.as_(
        "bob",
        &[
            "activate", "db-admin", "--scope", "/prod", "-j", "x", "--code", "123456",
        ],
    )
    .expect(3);
    assert_eq!(env.count(refused), 2);
    env.run(&["audit", "verify"]).expect(0);
}

// ------------------------------------------------------------------ 14: no panics on huge times

#[test]
fn huge_durations_and_far_instants_are_usage_errors_everywhere() {
    let (env, bob) = with_bob();
    let r = env
        .as_(
            "admin",
            &[
                "assign",
                "bob",
                "user-admin",
                "-j",
                "x",
                "--duration",
                "200000000y",
            ],
        )
        .expect(2);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    env.as_(
        "admin",
        &[
            "assign",
            "bob",
            "user-admin",
            "-j",
            "x",
            "--until",
            "99999-01-01",
        ],
    )
    .expect(2);
    std::fs::write(
        env.path("huge.csv"),
        "user,role,scope,type,start,end,justification,ticket\nbob,user-admin,/,eligible,,200000000y,x,\n",
    )
    .unwrap();
    env.as_("admin", &["assignment", "import", "huge.csv"])
        .expect(2);
    std::fs::write(
        env.path("huge.toml"),
        "[[eligible]]\nuser = \"bob\"\nrole = \"user-admin\"\nduration = \"200000000y\"\njustification = \"x\"\n",
    )
    .unwrap();
    env.as_("admin", &["assignment", "apply", "huge.toml"])
        .expect(2);
    let r = env
        .as_(
            "bob",
            &[
                "activate",
                "db-admin",
                "--scope",
                "/prod",
                "-j",
                "x",
                "--wait",
                "200000000y",
                "--code",
                &oathtool(&bob, 0),
            ],
        )
        .expect(2);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE role = 'user-admin'"),
        0
    );
    assert_eq!(env.count("SELECT count(*) FROM requests"), 0);
}

// ------------------------------------------------------------------ 16: delivery after any command

#[test]
fn what_import_apply_and_exec_queue_is_delivered_when_they_end() {
    let env = Env::new();
    let inbox = env.path("inbox.jsonl");
    env.init_with(&Policy::repository().section(
        "notifications.command",
        &[&format!(
            "argv = [\"sh\", \"-c\", \"cat >> {}; echo >> {}\"]",
            inbox.display(),
            inbox.display()
        )],
    ));
    let bob = env.user("bob");
    let events = || -> Vec<String> {
        std::fs::read_to_string(&inbox)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    std::fs::write(
        env.path("a.csv"),
        "user,role,scope,type,start,end,justification,ticket\nbob,db-admin,/,eligible,,,dba,\n",
    )
    .unwrap();
    env.as_("admin", &["assignment", "import", "a.csv"])
        .expect(0);
    assert_eq!(events(), vec!["assignment.add"]);
    std::fs::write(
        env.path("d.toml"),
        "[[eligible]]\nuser = \"bob\"\nrole = \"user-admin\"\njustification = \"x\"\n",
    )
    .unwrap();
    env.as_("admin", &["assignment", "apply", "d.toml"])
        .expect(0);
    assert_eq!(events().len(), 2);
    // exec: the role's `notify` list hears of the start (here: nobody), and the child runs.
    env.as_(
        "bob",
        &[
            "exec",
            "db-admin",
            "-j",
            "INC-4",
            "--code",
            &oathtool(&bob, 0),
            "--",
            "true",
        ],
    )
    .expect(0);
    // Nothing waits for a sweep.
    assert_eq!(
        env.count("SELECT count(*) FROM outbox WHERE status = 'pending'"),
        0
    );
}

#[test]
fn notifications_ignore_the_callers_proxy_and_path_and_a_command_delivers_only_its_own() {
    use std::io::{BufRead, BufReader, Read, Write};
    // A webhook receiver on loopback, and a "proxy" that nobody may use.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
        }
    });
    let env = Env::new();
    let inbox = env.path("inbox");
    let gate = env.path("gate");
    env.init_with(
        &Policy::repository()
            .section(
                "notifications.webhook",
                &[&format!("url = \"http://127.0.0.1:{port}/pim\"")],
            )
            .section(
                "notifications.command",
                &[&format!(
                    "argv = [\"sh\", \"-c\", \"test -e {} && cat >> {} && echo >> {}\"]",
                    gate.display(),
                    inbox.display(),
                    inbox.display()
                )],
            ),
    );
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    // A caller's PATH with a `cat` of their own, and a proxy that would see everything.
    let fake = env.path("fakebin");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(
        fake.join("cat"),
        "#!/bin/sh\necho stolen > /tmp/pim-test-stolen-$$\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(fake.join("cat"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let hostile = |args: &[&str]| -> support::Run {
        env.command(args)
            .env("PIM_USER", "admin")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("http_proxy", "http://127.0.0.1:9")
            .env("PATH", format!("{}:/usr/bin:/bin", fake.display()))
            .output()
            .unwrap()
            .into()
    };
    // The command channel's gate is shut: its first notice waits for a retry.
    hostile(&["assign", "bob", "db-admin", "-j", "x"]).expect(0);
    let body = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the webhook was reached, not the proxy");
    assert!(body.contains("assignment.add"), "{body}");
    assert_eq!(
        env.count("SELECT count(*) FROM outbox WHERE channel = 'command' AND status = 'pending'"),
        1
    );
    // The next command delivers what it queued, not the notice waiting for its retry.
    std::fs::write(&gate, "").unwrap();
    hostile(&["assign", "bob", "user-admin", "-j", "x"]).expect(0);
    let delivered = std::fs::read_to_string(&inbox).unwrap();
    assert_eq!(
        delivered.lines().filter(|l| !l.is_empty()).count(),
        1,
        "{delivered}"
    );
    assert!(delivered.contains("User Administrator"), "{delivered}");
    assert_eq!(
        env.count("SELECT count(*) FROM outbox WHERE channel = 'command' AND status = 'pending'"),
        1
    );
    // The sweep delivers it when its retry is due.
    env.at("+2m", &["--as", "admin", "sweep"]).expect(0);
    let delivered = std::fs::read_to_string(&inbox).unwrap();
    assert_eq!(
        delivered.lines().filter(|l| !l.is_empty()).count(),
        2,
        "{delivered}"
    );
    // The caller's `cat` never ran.
    let stolen = std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("pim-test-stolen-")
        });
    assert!(!stolen);
}

// ------------------------------------------------------------------ 1: children (without the install)

#[test]
fn exec_children_get_no_pim_secret_and_no_database_descriptor() {
    let env = Env::new();
    env.init();
    env.as_("admin", &["user", "add", "ci-bot", "--service"])
        .expect(0);
    let token = env
        .as_("admin", &["user", "token", "ci-bot", "--rotate", "--json"])
        .expect(0)
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    env.as_(
        "admin",
        &[
            "assign",
            "ci-bot",
            "deployer",
            "--active",
            "--permanent",
            "-j",
            "ci",
        ],
    )
    .expect(0);
    let out = env.path("child.txt");
    let script = format!(
        "(env; for fd in /proc/self/fd/*; do readlink $fd; done; true) > {}",
        out.display()
    );
    let r: support::Run = env
        .command(&["exec", "deployer", "--", "sh", "-c", &script])
        .env("PIM_TOKEN", &token)
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let seen = std::fs::read_to_string(&out).unwrap();
    assert!(!seen.contains("PIM_TOKEN"), "{seen}");
    assert!(!seen.contains(&token), "{seen}");
    assert!(seen.contains("PIM_ROLE=deployer"), "{seen}");
    let db = env.db.display().to_string();
    assert!(!seen.lines().any(|l| l.starts_with(&db)), "{seen}");
}

// ------------------------------------------------------------------ 2: outputs (without the install)

#[test]
fn outputs_never_replace_the_database_nor_follow_links() {
    // The database file and its -wal: SQLite's.
    let env = Env::sqlite();
    env.init();
    let before = std::fs::read(&env.db).unwrap();
    let db = env.db.display().to_string();
    let mut wal = env.db.clone().into_os_string();
    wal.push("-wal");
    let wal = wal.into_string().unwrap();
    env.as_(
        "admin",
        &[
            "review",
            "create",
            "--role",
            "db-admin",
            "--reviewer",
            "admin",
        ],
    )
    .expect(0);
    // And the companions SQLite would read beside it, there or not: a rollback journal it
    // plays back, or -WAL where a case-folding file system takes it for the -wal.
    let journal = format!("{db}-journal");
    let upper = format!("{db}-WAL");
    for target in [db.as_str(), wal.as_str(), journal.as_str(), upper.as_str()] {
        let r = env
            .as_("admin", &["audit", "export", "--output", target])
            .expect(1);
        assert!(r.stderr.contains("database"), "{}", r.stderr);
        env.as_("admin", &["review", "export", "1", "--output", target])
            .expect(1);
    }
    for made in [&journal, &upper] {
        assert!(!std::path::Path::new(made).exists(), "{made} was created");
    }
    std::os::unix::fs::symlink(&env.db, env.path("link.csv")).unwrap();
    let r = env
        .as_("admin", &["audit", "export", "--output", "link.csv"])
        .expect(1);
    assert!(r.stderr.contains("symbolic link"), "{}", r.stderr);
    // A file with a second name (which another account may have made, to read it back by).
    std::fs::write(env.path("mine.csv"), "").unwrap();
    std::fs::hard_link(env.path("mine.csv"), env.path("other-name.csv")).unwrap();
    let r = env
        .as_("admin", &["audit", "export", "--output", "mine.csv"])
        .expect(1);
    assert!(r.stderr.contains("more than one name"), "{}", r.stderr);
    assert_eq!(std::fs::read(env.path("other-name.csv")).unwrap().len(), 0);
    std::fs::create_dir(env.path("man")).unwrap();
    std::os::unix::fs::symlink(&env.db, env.path("man/pim.1")).unwrap();
    env.run(&["man", "--output", "man"]).expect(1);
    assert!(std::fs::read(&env.db).unwrap().len() >= before.len());
    env.run(&["audit", "verify"]).expect(0);
}

// ------------------------------------------------------------------ the one place

/// Every child process and every file a caller names goes through `src/privilege.rs`,
/// which gives the installed group up first. This fails when code anywhere else in `src`
/// spawns a process or opens, creates or writes a file by itself (database and key files
/// are `store` and `vault`'s, whose paths are checked there).
#[test]
fn only_the_privilege_module_spawns_children_or_opens_caller_paths() {
    let forbidden = [
        "Command::new",
        "process::Command",
        "OpenOptions",
        "File::create",
        "File::open",
        "fs::write",
        "fs::read",
        "fs::copy",
        "fs::rename",
        "fs::remove",
        "create_dir",
        "from_path",
        "symlink(",
        "hard_link",
        "libc::open",
        "libc::execv",
        "libc::fork",
        "libc::system",
        "set_permissions",
        "chown",
    ];
    // The SQLite file's own opening, the installed server's root-owned configuration file
    // (a fixed path), and the key files; and the tests' own PostgreSQL server (compiled into
    // test builds only).
    let allowed = [
        "privilege.rs",
        "store/mod.rs",
        "store/pg.rs",
        "vault.rs",
        "store/test_server.rs",
    ];
    let mut found = Vec::new();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path
                .strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/src/"))
                .unwrap()
                .to_string_lossy()
                .to_string();
            if allowed.contains(&name.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Tests inside a module may use the file system as they like.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (n, line) in code.lines().enumerate() {
                for f in forbidden {
                    let through = line.contains("privilege::");
                    if line.contains(f) && !through && !line.trim_start().starts_with("//") {
                        found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "spawn children and open caller paths through src/privilege.rs:\n{}",
        found.join("\n")
    );
}

/// Every event the core writes goes through the write path's recorder, which also queues
/// its notifications: no operation appends to the log, or queues a notice, on its own.
#[test]
fn every_event_goes_through_the_recorder() {
    let mut found = Vec::new();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for dir in ["ops", "cli"] {
        for entry in std::fs::read_dir(src.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name == "record.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (n, line) in code.lines().enumerate() {
                let direct = line.contains("audit::append")
                    || (line.contains("enqueue(") && !line.trim_start().starts_with("//"))
                    || line.contains("notices::started")
                    || line.contains("notices::decided")
                    || line.contains("notices::revoked");
                if direct && name != "notices.rs" {
                    found.push(format!("src/{dir}/{name}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "append events and queue notices through Recorder::record:\n{}",
        found.join("\n")
    );
}

/// The commands pim suggests to fix a database's place are safe to paste: a directory named
/// to run something (`q'$(touch ...)'z`) is one quoted word of them, and a shell given the
/// suggestion runs nothing of its name.
#[test]
fn a_suggested_fix_runs_nothing_a_directory_name_holds() {
    let env = Env::sqlite();
    env.init();
    let marker = env.path("PWNED");
    let dir = env.path("q'$(touch PWNED)'z");
    std::fs::create_dir(&dir).unwrap();
    let db = dir.join("pim.db");
    std::fs::rename(&env.db, &db).unwrap();
    std::fs::set_permissions(
        &dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o777),
    )
    .unwrap();
    let r: support::Run = env
        .command(&["--db", db.to_str().unwrap(), "status"])
        .output()
        .unwrap()
        .into();
    let r = r.expect(1);
    let at = r.stderr.find("chmod go-w ").expect(&r.stderr) + "chmod go-w ".len();
    let word = &r.stderr[at..r.stderr[at..]
        .find(".\n")
        .map_or(r.stderr.len(), |e| at + e)];
    let quoted = format!("'{}'", dir.display().to_string().replace('\'', "'\\''"));
    assert_eq!(word, quoted, "{}", r.stderr);
    let shell = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s' {word}"))
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&shell.stdout),
        dir.to_str().unwrap()
    );
    assert!(!marker.exists(), "the suggestion ran what the name holds");
    // A device is no database, and nothing is suggested to change it.
    let r: support::Run = env
        .command(&["--db", "/dev/null", "status"])
        .output()
        .unwrap()
        .into();
    let r = r.expect(1);
    assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    assert!(!r.stderr.contains("chmod"), "{}", r.stderr);
}

#[test]
fn a_relative_config_home_is_not_where_the_key_goes() {
    // XDG_CONFIG_HOME=rel would name a different key in every working directory: ignored,
    // as the XDG base directory specification says, for $HOME/.config.
    let env = Env::new();
    let r: support::Run = env
        .command(&["init", "--admin", "admin", "--json"])
        .env("XDG_CONFIG_HOME", "rel")
        .output()
        .unwrap()
        .into();
    r.expect(0);
    assert!(!env.path("rel").exists());
    assert_eq!(
        std::fs::read_dir(env.path(".config/pim/keys"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn without_a_configuration_directory_no_personal_key_is_made() {
    // Neither XDG_CONFIG_HOME nor HOME absolute: the key would otherwise go where the
    // installed keys are (and a root that is not the installed pim could make it there).
    let env = Env::new();
    let r: support::Run = env
        .command(&["init", "--admin", "admin", "--json"])
        .env("XDG_CONFIG_HOME", "rel")
        .env("HOME", "home")
        .output()
        .unwrap()
        .into();
    let r = r.expect(1);
    assert!(r.stderr.contains("Set HOME"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(!env.path("rel").exists() && !env.path("home").exists());
}

/// What clap says itself is held to the rules of every other message: --help shows no value
/// of PIM_DB (a server's URL may hold a password), and an argument it cannot take is quoted
/// with its controls and bidi characters escaped.
#[test]
fn the_argument_parser_shows_no_password_and_no_raw_control() {
    let env = Env::new();
    let help: support::Run = env
        .command(&["--help"])
        .env("PIM_DB", "postgres://pim_app:S3cretPW@db.internal/pim")
        .output()
        .unwrap()
        .into();
    let help = help.expect(0);
    assert!(help.stdout.contains("[env: PIM_DB]"), "{}", help.stdout);
    assert!(!help.stdout.contains("S3cretPW"), "{}", help.stdout);
    for bad in [
        &["request", "show", "5\u{1b}]0;PWN\u{7}"][..],
        &["bogus\u{202e}x"][..],
    ] {
        let r = env.run(bad).expect(2);
        assert!(
            !r.stderr.contains('\u{1b}')
                && !r.stderr.contains('\u{7}')
                && !r.stderr.contains('\u{202e}'),
            "{:?}",
            r.stderr
        );
    }
}
