//! pim driven as a user drives it: the real binary in a temporary directory.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use support::{have, oathtool, oathtool_at, unix_now, wrong_code, Env};

// ---------------------------------------------------------------- init and the database

#[test]
fn init_creates_a_private_database_and_a_break_glass_admin() {
    let env = Env::new();
    let r = env
        .run(&[
            "init",
            "--admin",
            "admin",
            "--email",
            "admin@example.com",
            "--json",
        ])
        .expect(0);
    let j = r.json();
    let uri = j["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/pim:admin?secret="), "{uri}");
    assert_eq!(
        j["secret"].as_str().unwrap().len(),
        32,
        "160 bits in base32"
    );
    if !support::on_postgres() {
        let mode = std::fs::metadata(&env.db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let held = env
        .run(&["check", "admin", "global-admin", "--json"])
        .expect(0)
        .json();
    assert_eq!(held["held"], true);
    assert_eq!(held["until"], serde_json::Value::Null);
    // A second init is a conflict and leaves the database alone.
    env.run(&["init", "--admin", "other"]).expect(5);
    env.as_("admin", &["user", "show", "admin"]).expect(0);
    // Human output draws a QR code.
    let env2 = Env::new();
    let human = env2.run(&["init", "--admin", "root2"]).expect(0);
    assert!(
        human.stdout.contains("▀") || human.stdout.contains("█"),
        "{}",
        human.stdout
    );
}

#[test]
fn a_missing_or_foreign_database_is_an_environment_error() {
    let env = Env::new();
    let r = env.as_("admin", &["user", "list"]).expect(1);
    assert!(r.stderr.contains("pim init"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    if support::on_postgres() {
        // Nothing was created: the database is still not a pim database.
        env.as_("admin", &["user", "list"]).expect(1);
        return;
    }
    std::fs::write(&env.db, vec![0x42u8; 4096]).unwrap();
    // (its owner's alone, whatever the umask: else that is what pim says)
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&env.db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = env.as_("admin", &["user", "list"]).expect(1);
    assert!(r.stderr.contains("not a pim database"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"));
}

#[test]
fn init_with_an_invalid_policy_creates_nothing() {
    let env = Env::new();
    std::fs::write(
        env.path("bad.toml"),
        "[roles.a]\nname = \"A\"\nmax_activation = \"25h\"\n",
    )
    .unwrap();
    let r = env
        .run(&["init", "--admin", "admin", "--policies", "bad.toml"])
        .expect(2);
    assert!(r.stderr.contains("line 3"), "{}", r.stderr);
    assert!(!env.db.exists());
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    env.init();
    env.run(&["no-such-command"]).expect(2);
    env.as_(
        "admin",
        &[
            "assign",
            "admin",
            "db-admin",
            "--duration",
            "soon",
            "-j",
            "x",
        ],
    )
    .expect(2);
    env.as_(
        "admin",
        &["assign", "admin", "db-admin", "--scope", "prod", "-j", "x"],
    )
    .expect(2);
    env.as_(
        "admin",
        &[
            "assign", "admin", "db-admin", "--until", "tomorrow", "-j", "x",
        ],
    )
    .expect(2);
    env.run(&["--help"]).expect(0);
}

// ---------------------------------------------------------------- identity

#[test]
fn the_actor_is_the_real_user_and_unknown_actors_are_refused() {
    let env = Env::new();
    env.init();
    // The OS account running the tests is not a pim user.
    let r = env.run(&["user", "add", "eve"]).expect(3);
    assert!(r.stderr.contains("not a pim user"), "{}", r.stderr);
    // $USER means nothing.
    let r: support::Run = env
        .command(&["user", "add", "eve"])
        .env("USER", "admin")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 3);
    // PIM_USER is --as.
    let r: support::Run = env
        .command(&["user", "add", "eve"])
        .env("PIM_USER", "admin")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn as_is_refused_for_callers_who_cannot_write_the_database() {
    // Needs a second account: run where the tests run as root (as CI does).
    if unsafe { libc::getuid() } != 0 || !have("setpriv") {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    // The owner rule is the file's: a caller who names a server connects with their own
    // credentials, and could write it directly.
    let env = Env::sqlite();
    env.init();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = env.path("pim-bin");
    std::fs::copy(support::bin(), &copy).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .args(["--as", "admin", "user", "add", "mallory"])
        .env("PIM_DB", &env.db)
        .env_remove("PIM_USER")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("--as"), "{stderr}");
    env.as_("admin", &["user", "show", "mallory"]).expect(4);
}

// ---------------------------------------------------------------- policy and roles

#[test]
fn policy_validate_apply_and_export() {
    let env = Env::new();
    env.init();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies.toml")).unwrap();
    std::fs::write(env.path("p.toml"), &example).unwrap();
    env.run(&["policy", "validate", "p.toml"]).expect(0);
    // Validation works without a database, for CI on a pull request.
    let bare = Env::new();
    std::fs::write(bare.path("p.toml"), &example).unwrap();
    bare.run(&["policy", "validate", "p.toml"]).expect(0);

    let changed = example.replace(
        "[roles.db-admin]\nname = \"Database Administrator\"",
        "[roles.db-admin]\nname = \"Database Administrator\"\nrequire_ticket = true",
    ) + "\n[roles.auditor]\nname = \"Auditor\"\npermissions = [\"audit\"]\n";
    std::fs::write(env.path("new.toml"), &changed).unwrap();
    let dry = env
        .as_("admin", &["policy", "apply", "new.toml", "--dry-run"])
        .expect(0);
    assert!(dry.stdout.contains("+ role auditor"), "{}", dry.stdout);
    assert!(dry.stdout.contains("~ role db-admin"), "{}", dry.stdout);
    assert!(
        dry.stdout.contains("require_ticket: false -> true"),
        "{}",
        dry.stdout
    );
    env.as_("admin", &["role", "show", "auditor"]).expect(4);
    let before = env.count("SELECT count(*) FROM audit_events WHERE action = 'policy.apply'");
    let applied = env
        .as_("admin", &["policy", "apply", "new.toml", "--json"])
        .expect(0)
        .json();
    assert_eq!(applied["applied"], true);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'policy.apply'"),
        before + 1
    );
    let role = env
        .as_("admin", &["role", "show", "Auditor", "--json"])
        .expect(0)
        .json();
    assert_eq!(role["key"], "auditor");
    assert_eq!(
        env.as_("admin", &["policy", "export"])
            .expect(0)
            .stdout
            .trim(),
        changed.trim()
    );
    // Editing the file changes nothing until it is applied.
    std::fs::write(env.path("new.toml"), "garbage").unwrap();
    env.as_("admin", &["role", "show", "auditor"]).expect(0);
    // Only holders of `policy` may apply.
    env.user("bob");
    env.as_("bob", &["policy", "apply", "p.toml"]).expect(3);
}

#[test]
fn invalid_policies_name_the_line_and_reason() {
    let env = Env::new();
    let cases = [
        (
            "[roles.a]\nname = \"A\"\nmax_activation = \"25h\"\n",
            "line 3",
            "out of range",
        ),
        (
            "[roles.a]\nname = \"A\"\ncolour = \"red\"\n",
            "line 3",
            "colour",
        ),
        (
            "[roles.a]\nname = \"A\"\n\nmax_eligible = \"forever\"\n",
            "line 4",
            "not a duration",
        ),
        (
            "[defaults]\nrequire_mfa = true\n[roles.a]\ndescription = \"no name\"\n",
            "line 3",
            "display name",
        ),
        ("[roles.a\nname = \"A\"\n", "line 1", ""),
    ];
    for (text, line, reason) in cases {
        std::fs::write(env.path("bad.toml"), text).unwrap();
        let r = env.run(&["policy", "validate", "bad.toml"]).expect(2);
        assert!(
            r.stderr.contains(line) && r.stderr.contains(reason),
            "{text}: {}",
            r.stderr
        );
    }
    env.run(&["policy", "validate", "missing.toml"]).expect(1);
}

#[test]
fn role_list_counts_holders() {
    let env = Env::new();
    env.init();
    env.user("bob");
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "dba"])
        .expect(0);
    let roles = env
        .as_("admin", &["role", "list", "--json"])
        .expect(0)
        .json();
    let db = roles
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "db-admin")
        .unwrap();
    assert_eq!(db["eligible"], 1);
    assert_eq!(db["settings"]["max_activation"], "4h");
    let human = env.as_("admin", &["role", "list"]).expect(0);
    assert!(human.stdout.contains("Database Administrator"));
}

// ---------------------------------------------------------------- users and MFA

#[test]
fn users_are_added_listed_disabled_and_enabled() {
    let env = Env::new();
    env.init();
    env.as_(
        "admin",
        &[
            "user",
            "add",
            "bob",
            "--email",
            "bob@example.com",
            "--display-name",
            "Bob B",
        ],
    )
    .expect(0);
    env.as_("admin", &["user", "add", "bob"]).expect(5);
    env.as_("bob", &["user", "add", "eve"]).expect(3);
    // An address mail cannot be sent to (it failed every message it was among).
    for bad in ["e(@x.y", "e\u{1b}]0;x\u{7}@x.y"] {
        let r = env
            .as_("admin", &["user", "add", "erin", "--email", bad])
            .expect(2);
        assert!(
            r.stderr.contains("is not an e-mail address"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains('\u{1b}'), "{}", r.stderr);
    }
    let list = env
        .as_("admin", &["user", "list", "--json"])
        .expect(0)
        .json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["email"], "bob@example.com");
    env.as_("admin", &["user", "show", "ghost"]).expect(4);
    env.as_("admin", &["user", "disable", "bob"]).expect(0);
    assert_eq!(
        env.as_("admin", &["user", "show", "bob", "--json"])
            .expect(0)
            .json()["disabled"],
        true
    );
    // A disabled user can do nothing, not even read their own status.
    env.as_("bob", &["status"]).expect(3);
    env.as_("bob", &["mfa", "enroll"]).expect(3);
    env.as_("admin", &["user", "enable", "bob"]).expect(0);
    // The break-glass admin is the last holder of protected roles.
    env.as_("admin", &["user", "disable", "admin"]).expect(3);
}

#[test]
fn our_codes_match_oathtool_and_each_is_accepted_once() {
    let env = Env::new();
    let secret = env.init();
    // Our code for the current step equals oathtool's (via a re-enrol that accepts it).
    let code = oathtool(&secret, 0);
    let r = env
        .as_("admin", &["mfa", "enroll", "--code", &code, "--json"])
        .expect(0);
    let new_secret = r.json()["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    assert_eq!(r.json()["pending"], true);
    // Confirmed with its first code (oathtool's), it replaces the old one.
    env.as_(
        "admin",
        &["mfa", "confirm", "--code", &oathtool(&new_secret, 0)],
    )
    .expect(0);
    // The old authenticator no longer works; a wrong code is audited.
    let r = env
        .as_(
            "admin",
            &["mfa", "enroll", "--code", &oathtool(&secret, 30)],
        )
        .expect(3);
    assert!(r.stderr.contains("MFA failed"), "{}", r.stderr);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'mfa.fail'"),
        1
    );
    // One step of skew either side is accepted; a code is accepted at most once. (Both
    // codes of the next step from one reading of the clock: a replay taken later could fall
    // in a step not yet used.)
    let now = unix_now();
    let next = oathtool_at(&new_secret, now + 30);
    let r = env
        .as_("admin", &["mfa", "enroll", "--code", &next, "--json"])
        .expect(0);
    let third = r.json()["secret"].as_str().unwrap().to_string();
    env.as_("admin", &["mfa", "confirm", "--code", &oathtool(&third, 0)])
        .expect(0);
    // Each step at most once, even across a new secret: the third's code of the step just
    // used is a replay.
    let replay = env
        .as_(
            "admin",
            &["mfa", "enroll", "--code", &oathtool_at(&third, now + 30)],
        )
        .expect(3);
    assert!(replay.stderr.contains("already used"), "{}", replay.stderr);
}

#[test]
fn two_processes_cannot_both_use_one_code() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    for role in ["db-admin", "user-admin"] {
        env.as_("admin", &["assign", "bob", role, "-j", "team"])
            .expect(0);
    }
    let code = oathtool(&bob, 0);
    let children: Vec<_> = ["db-admin", "user-admin"]
        .iter()
        .map(|role| {
            env.command(&[
                "--as", "bob", "activate", role, "-j", "INC-7", "--code", &code,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let codes: Vec<i32> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().status.code().unwrap())
        .collect();
    let mut sorted = codes.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 3], "{codes:?}");
    assert!(env.run(&["audit", "verify"]).code == 0);
}

#[test]
fn mfa_reset_needs_users_permission() {
    let env = Env::new();
    env.init();
    env.user("bob");
    env.as_("bob", &["mfa", "reset", "bob"]).expect(3);
    env.as_("admin", &["mfa", "reset", "bob"]).expect(0);
    assert_eq!(
        env.as_("admin", &["user", "show", "bob", "--json"])
            .expect(0)
            .json()["mfa_enrolled"],
        false
    );
    // Now bob enrols himself without a code.
    let j = env
        .as_("bob", &["mfa", "enroll", "--json"])
        .expect(0)
        .json();
    assert!(j["otpauth_uri"].as_str().unwrap().contains("pim:bob"));
    env.as_("admin", &["mfa", "reset", "ghost"]).expect(4);
}

// ---------------------------------------------------------------- assignments

#[test]
fn assign_list_and_unassign() {
    let env = Env::new();
    env.init();
    env.user("bob");
    let a = env
        .as_(
            "admin",
            &[
                "assign",
                "bob",
                "Database Administrator",
                "--scope",
                "/prod",
                "--duration",
                "90d",
                "-j",
                "on-call",
                "--ticket",
                "CHG-1",
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(a["type"], "eligible");
    assert_eq!(a["role"], "db-admin");
    env.as_(
        "admin",
        &[
            "assign", "bob", "db-admin", "--scope", "/prod", "-j", "again",
        ],
    )
    .expect(5);
    env.as_(
        "admin",
        &["assign", "bob", "db-admin", "--duration", "400d", "-j", "x"],
    )
    .expect(3);
    env.as_(
        "admin",
        &["assign", "bob", "db-admin", "--permanent", "-j", "x"],
    )
    .expect(3);
    env.as_("admin", &["assign", "bob", "db-admin", "--no-input"])
        .expect(3);
    env.as_("admin", &["assign", "ghost", "db-admin", "-j", "x"])
        .expect(4);
    env.as_("admin", &["assign", "bob", "nope", "-j", "x"])
        .expect(4);
    env.as_("bob", &["assign", "bob", "user-admin", "-j", "x"])
        .expect(3);
    env.as_(
        "admin",
        &[
            "assign",
            "bob",
            "security-reader",
            "--permanent",
            "--active",
            "--start",
            "2099-01-01",
            "-j",
            "x",
        ],
    )
    .expect(3);
    env.as_(
        "admin",
        &[
            "assign",
            "bob",
            "security-reader",
            "--permanent",
            "--start",
            "2099-01-01",
            "-j",
            "later",
        ],
    )
    .expect(0);

    let list = env
        .as_("admin", &["assignment", "list", "--user", "bob", "--json"])
        .expect(0)
        .json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for item in list {
        for key in ["user", "role", "scope", "type", "start", "end"] {
            assert!(item.get(key).is_some(), "{key} missing in {item}");
        }
    }
    let reader = list
        .iter()
        .find(|a| a["role"] == "security-reader")
        .unwrap();
    assert_eq!(reader["end"], serde_json::Value::Null);
    assert_eq!(reader["start"], "2099-01-01T00:00:00Z");
    let covering = env
        .as_(
            "admin",
            &[
                "assignment",
                "list",
                "--scope",
                "/prod/db",
                "--eligible",
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(covering.as_array().unwrap().len(), 2);
    let other = env
        .as_(
            "admin",
            &[
                "assignment",
                "list",
                "--scope",
                "/production",
                "--role",
                "db-admin",
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(other.as_array().unwrap().len(), 0);

    env.as_("admin", &["unassign", "bob", "db-admin"]).expect(4);
    env.as_(
        "admin",
        &["unassign", "bob", "db-admin", "--scope", "/prod"],
    )
    .expect(0);
    assert_eq!(
        env.as_(
            "admin",
            &[
                "assignment",
                "list",
                "--user",
                "bob",
                "--role",
                "db-admin",
                "--json"
            ]
        )
        .expect(0)
        .json()
        .as_array()
        .unwrap()
        .len(),
        0
    );
    assert_eq!(
        env.as_(
            "admin",
            &[
                "assignment",
                "list",
                "--user",
                "bob",
                "--role",
                "db-admin",
                "--all",
                "--json"
            ]
        )
        .expect(0)
        .json()[0]["state"],
        "removed"
    );
    // The break-glass admin cannot be stripped of the last protected assignment.
    let r = env
        .as_("admin", &["unassign", "admin", "global-admin", "--active"])
        .expect(3);
    assert!(r.stderr.contains("last holder"), "{}", r.stderr);
}

// ---------------------------------------------------------------- activation

fn with_eligible_bob() -> (Env, String) {
    let env = Env::new();
    env.init();
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

#[test]
fn activate_check_status_and_deactivate() {
    let (env, bob) = with_eligible_bob();
    env.run(&["check", "bob", "db-admin", "--scope", "/prod/db"])
        .expect(1);
    let r = env
        .as_(
            "bob",
            &[
                "activate",
                "db-admin",
                "--scope",
                "/prod",
                "-j",
                "INC-42 disk full",
                "--duration",
                "1h",
                "--code",
                &oathtool(&bob, 0),
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(r["status"], "active");
    let id = r["id"].as_i64().unwrap();
    let held = env
        .run(&[
            "check",
            "bob",
            "Database Administrator",
            "--scope",
            "/prod/db",
            "--json",
        ])
        .expect(0)
        .json();
    assert_eq!(held["held"], true);
    assert!(held["until"].as_str().unwrap().ends_with('Z'));
    let quiet = env
        .run(&["check", "bob", "db-admin", "--scope", "/production", "-q"])
        .expect(1);
    assert!(quiet.stdout.is_empty());
    env.run(&["check", "ghost", "db-admin"]).expect(4);
    env.run(&["check", "bob", "nope"]).expect(4);
    // Already active.
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "--scope",
            "/prod",
            "-j",
            "again",
            "--code",
            &oathtool(&bob, 30),
        ],
    )
    .expect(5);
    let status = env.as_("bob", &["status", "--json"]).expect(0).json();
    assert_eq!(status["active"][0]["role"], "db-admin");
    assert_eq!(status["eligible"][0]["scope"], "/prod");
    let shown = env
        .as_("bob", &["request", "show", &id.to_string(), "--json"])
        .expect(0)
        .json();
    for key in ["id", "user", "role", "scope", "status", "start", "end"] {
        assert!(shown.get(key).is_some(), "{key}");
    }
    let listed = env
        .as_("bob", &["request", "list", "--json"])
        .expect(0)
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    env.as_("admin", &["request", "show", "999"]).expect(4);
    env.as_("bob", &["deactivate", "db-admin"]).expect(0);
    env.run(&["check", "bob", "db-admin", "--scope", "/prod"])
        .expect(1);
    env.as_("bob", &["deactivate", "db-admin"]).expect(4);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'activation.deactivate'"),
        1
    );
}

#[test]
fn activation_refusals_name_what_is_missing_and_are_audited() {
    let (env, bob) = with_eligible_bob();
    let wrong = wrong_code(&bob);
    env.as_("admin", &["assign", "bob", "k8s-operator", "-j", "ops"])
        .expect(0);
    let refusals = || env.count("SELECT count(*) FROM audit_events WHERE result != 'ok'");
    let before = refusals();
    let prod = ["--scope", "/prod"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["db-admin", prod[0], prod[1], "--code", "123456"],
            "justification",
        ),
        (vec!["db-admin", prod[0], prod[1], "-j", "x"], "TOTP code"),
        (
            vec!["k8s-operator", "-j", "INC-1 x", "--code", "123456"],
            "ticket",
        ),
        (
            vec!["k8s-operator", "-j", "please", "--ticket", "T1"],
            "pattern",
        ),
        (
            vec!["db-admin", "--scope", "/staging", "-j", "x"],
            "not eligible",
        ),
        (
            vec!["db-admin", prod[0], prod[1], "-j", "x", "--duration", "5h"],
            "at most 4h",
        ),
        (
            vec!["db-admin", prod[0], prod[1], "-j", "x", "--code", &wrong],
            "MFA failed",
        ),
    ];
    for (args, said) in &cases {
        let mut all = vec!["activate"];
        all.extend_from_slice(args);
        let r = env.as_("bob", &all).expect(3);
        assert!(r.stderr.contains(said), "{args:?}: {}", r.stderr);
        // One sentence or two on one line, never a panic.
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    }
    env.as_("bob", &["activate", "nope", "-j", "x"]).expect(4);
    env.as_("bob", &["activate", "db-admin", "--duration", "1x"])
        .expect(2);
    assert_eq!(refusals(), before + cases.len() as i64);
    assert_eq!(env.count("SELECT count(*) FROM requests"), 0);
}

#[test]
fn wrong_codes_lock_the_authenticator() {
    let (env, bob) = with_eligible_bob();
    let wrong = wrong_code(&bob);
    let said: Vec<String> = (0..5)
        .map(|_| {
            env.as_(
                "bob",
                &[
                    "activate", "db-admin", "--scope", "/prod", "-j", "x", "--code", &wrong,
                ],
            )
            .expect(3)
            .stderr
        })
        .collect();
    // The last tries before the lock are counted down, and the lock is said.
    assert!(!said[1].contains("more wrong code"), "{}", said[1]);
    assert!(
        said[2].contains("2 more wrong codes in a row and the authenticator is locked."),
        "{}",
        said[2]
    );
    assert!(
        said[3].contains("1 more wrong code in a row and the authenticator is locked."),
        "{}",
        said[3]
    );
    assert!(
        said[4].contains("That makes 5 wrong codes in a row: the authenticator is now locked for"),
        "{}",
        said[4]
    );
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
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'mfa.lock'"),
        1
    );
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
fn scheduled_activation_and_removal_of_eligibility() {
    let (env, bob) = with_eligible_bob();
    let start = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
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
                "--start",
                &start,
                "--code",
                &oathtool(&bob, 0),
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(r["status"], "scheduled");
    env.run(&["check", "bob", "db-admin", "--scope", "/prod"])
        .expect(1);
    let status = env.as_("bob", &["status", "--json"]).expect(0).json();
    assert_eq!(status["requests"][0]["status"], "scheduled");
    env.as_(
        "admin",
        &["unassign", "bob", "db-admin", "--scope", "/prod"],
    )
    .expect(0);
    let shown = env
        .as_(
            "admin",
            &["request", "show", &r["id"].to_string(), "--json"],
        )
        .expect(0)
        .json();
    assert_eq!(shown["status"], "revoked");
}

#[test]
fn expiry_under_faketime_needs_no_sweep_and_sweep_records_it_once() {
    let (env, bob) = with_eligible_bob();
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "--scope",
            "/prod",
            "-j",
            "x",
            "--duration",
            "30m",
            "--code",
            &oathtool(&bob, 0),
        ],
    )
    .expect(0);
    env.run(&["check", "bob", "db-admin", "--scope", "/prod"])
        .expect(0);
    let later = |args: &[&str]| env.at("+31m", args);
    later(&["check", "bob", "db-admin", "--scope", "/prod"]).expect(1);
    let status = later(&["--as", "bob", "status", "--json"]).expect(0).json();
    assert_eq!(status["active"].as_array().unwrap().len(), 0);
    assert_eq!(
        later(&["--as", "admin", "request", "show", "1", "--json"])
            .expect(0)
            .json()["status"],
        "expired"
    );
    let first = later(&["sweep", "--json"]).expect(0).json();
    assert_eq!(first["expired_activations"], serde_json::json!([1]));
    let second = later(&["sweep", "--json"]).expect(0).json();
    assert_eq!(second["expired_activations"], serde_json::json!([]));
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'activation.expire'"),
        1
    );
    env.run(&["audit", "verify"]).expect(0);
}

// ---------------------------------------------------------------- audit

#[test]
fn csv_export_reads_back_with_header_order_and_safe_cells() {
    let (env, bob) = with_eligible_bob();
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "--scope",
            "/prod",
            "-j",
            "=HYPERLINK(\"http://x\")",
            "--code",
            &oathtool(&bob, 0),
        ],
    )
    .expect(0);
    env.as_("bob", &["audit", "export"]).expect(3);
    let r = env
        .as_("admin", &["audit", "export", "--output", "audit.csv"])
        .expect(0);
    assert!(r.stdout.is_empty());
    let mode = std::fs::metadata(env.path("audit.csv"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let mut reader = csv::Reader::from_path(env.path("audit.csv")).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(
        header.join(","),
        "seq,time,actor,action,principal,role,scope,request,justification,ticket,expires,result,details,prev_hash,hash"
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(seqs, (1..=rows.len() as i64).collect::<Vec<_>>());
    for pair in rows.windows(2) {
        assert_eq!(pair[1][13], pair[0][14], "prev_hash chains");
    }
    let request = rows.iter().find(|r| &r[3] == "activation.request").unwrap();
    assert_eq!(&request[8], "'=HYPERLINK(\"http://x\")");
    assert!(request[1].ends_with('Z') && request[10].ends_with('Z'));
    assert!(serde_json::from_str::<serde_json::Value>(&request[12])
        .unwrap()
        .is_object());
    // The same to stdout, and JSONL with the same field names.
    let stdout = env.as_("admin", &["audit", "export"]).expect(0).stdout;
    assert_eq!(
        stdout,
        std::fs::read_to_string(env.path("audit.csv")).unwrap()
    );
    let jsonl = env
        .as_(
            "admin",
            &[
                "audit",
                "export",
                "--format",
                "jsonl",
                "--action",
                "activation.*",
            ],
        )
        .expect(0)
        .stdout;
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["justification"], "=HYPERLINK(\"http://x\")");
    for key in header {
        assert!(lines[0].get(&key).is_some(), "{key}");
    }
    let by_user = env
        .as_(
            "admin",
            &[
                "audit", "export", "--user", "bob", "--actor", "bob", "--role", "db-admin",
            ],
        )
        .expect(0)
        .stdout;
    assert_eq!(by_user.lines().count(), 3);
    let none = env
        .as_("admin", &["audit", "export", "--since", "2099-01-01"])
        .expect(0)
        .stdout;
    assert_eq!(none.lines().count(), 1);
}

#[test]
fn audit_list_shows_your_own_events_without_the_audit_permission() {
    let (env, _) = with_eligible_bob();
    let mine = env
        .as_("bob", &["audit", "list", "--json"])
        .expect(0)
        .json();
    for e in mine.as_array().unwrap() {
        assert!(e["actor"] == "bob" || e["principal"] == "bob", "{e}");
    }
    assert!(!mine.as_array().unwrap().is_empty());
    let all = env
        .as_("admin", &["audit", "list", "--json", "--limit", "3"])
        .expect(0)
        .json();
    assert_eq!(all.as_array().unwrap().len(), 3);
}

#[test]
fn verify_finds_a_single_changed_byte() {
    let (env, _) = with_eligible_bob();
    let ok = env.run(&["audit", "verify"]).expect(0);
    assert!(ok.stdout.contains("head"), "{}", ok.stdout);
    env.drop_audit_triggers();
    env.sql("UPDATE audit_events SET justification = 'on-cal1' WHERE seq = 9");
    let bad = env.run(&["audit", "verify"]).expect(1);
    assert!(bad.stderr.contains("event 9"), "{}", bad.stderr);
    let j = env.run(&["audit", "verify", "--json"]).expect(1).json();
    assert_eq!(j["bad_seq"], 9);
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let (env, _) = with_eligible_bob();
    let mut child = env
        .command(&["--as", "admin", "audit", "export"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- prompts on a terminal

#[test]
fn activate_prompts_on_a_terminal() {
    if !have("tmux") {
        panic!("tmux is needed by the tests (apt-get install tmux)");
    }
    let (env, bob) = with_eligible_bob();
    let session = format!("pim-test-{}", std::process::id());
    let script = env.path("run.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nPIM_DB='{}' HOME='{}' XDG_CONFIG_HOME='{}/.config' '{}' --as bob activate db-admin --scope /prod; echo \"exit=$?\"; sleep 30\n",
            env.db.display(),
            env.dir.path().display(),
            env.dir.path().display(),
            support::bin()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .output()
            .unwrap()
    };
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "30",
        script.to_str().unwrap(),
    ]);
    let screen = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned()
    };
    let wait_for = |text: &str| {
        for _ in 0..100 {
            if screen().contains(text) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("never saw {text:?} on the screen:\n{}", screen());
    };
    wait_for("Justification for db-admin");
    tmux(&["send-keys", "-t", &session, "INC-9 replica lag", "Enter"]);
    wait_for("TOTP code for bob");
    let code = oathtool(&bob, 0);
    // (A moment for the hidden prompt to turn echo off: see `Terminal::secret`.)
    std::thread::sleep(std::time::Duration::from_millis(300));
    tmux(&["send-keys", "-t", &session, &code, "Enter"]);
    wait_for("exit=");
    let seen = screen();
    tmux(&["kill-session", "-t", &session]);
    assert!(seen.contains("exit=0"), "{seen}");
    assert!(seen.contains("is active at /prod"), "{seen}");
    assert!(!seen.contains(&code), "the code was echoed:\n{seen}");
    env.run(&["check", "bob", "db-admin", "--scope", "/prod"])
        .expect(0);
}

#[test]
fn an_auditor_can_recompute_the_chain_without_pim() {
    let (env, bob) = with_eligible_bob();
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "--scope",
            "/prod",
            "-j",
            "naïve\t\"quoted\" ✓ INC-1\nsecond line",
            "--code",
            &oathtool(&bob, 0),
        ],
    )
    .expect(0);
    let export = env
        .as_(
            "admin",
            &[
                "audit",
                "export",
                "--format",
                "jsonl",
                "--output",
                "audit.jsonl",
            ],
        )
        .expect(0);
    assert!(export.stdout.is_empty());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/verify_export.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(env.path("audit.jsonl"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = env.run(&["audit", "verify", "--json"]).expect(0).json()["head"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(said.contains(&head), "{said} vs {head}");
    // Against the head of the live log: the export as written passes; cut at either end, or
    // an event changed with every hash after it computed again (which still chains), fails.
    let run = |file: &str, head: &str| {
        std::process::Command::new("python3")
            .arg(script)
            .arg(env.path(file))
            .args(["--head", head])
            .output()
            .unwrap()
    };
    assert!(run("audit.jsonl", &head).status.success());
    let lines: Vec<String> = std::fs::read_to_string(env.path("audit.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(lines.len() > 3, "{}", lines.len());
    std::fs::write(env.path("tail.jsonl"), lines[1..].join("\n") + "\n").unwrap();
    std::fs::write(
        env.path("head.jsonl"),
        lines[..lines.len() - 1].join("\n") + "\n",
    )
    .unwrap();
    // Rewritten from the second event on, each hash computed again.
    let mut prev = String::new();
    let mut rewritten = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let mut e: serde_json::Value = serde_json::from_str(line).unwrap();
        if i > 0 {
            if i == 1 {
                e["justification"] = "nothing to see".into();
            }
            e["prev_hash"] = prev.clone().into();
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let fields: Vec<String> = [
                "seq",
                "time",
                "actor",
                "action",
                "principal",
                "role",
                "scope",
                "request",
                "justification",
                "ticket",
                "expires",
                "result",
                "details",
            ]
            .iter()
            .map(|k| text(&e[*k]))
            .collect();
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(prev.as_bytes());
            h.update(serde_json::to_vec(&fields).unwrap());
            e["hash"] = hex::encode(h.finalize()).into();
        }
        prev = e["hash"].as_str().unwrap().to_string();
        rewritten.push(e.to_string());
    }
    std::fs::write(env.path("rewritten.jsonl"), rewritten.join("\n") + "\n").unwrap();
    // (it chains: only the head tells)
    let alone = std::process::Command::new("python3")
        .arg(script)
        .arg(env.path("rewritten.jsonl"))
        .output()
        .unwrap();
    assert!(alone.status.success(), "{alone:?}");
    assert!(String::from_utf8_lossy(&alone.stderr).contains("not proven"));
    // A line that says more than was hashed: an actor given twice (readers differ on which
    // they show), a key of its own, a key twice inside the details.
    let last = lines.len() - 1;
    let detailed = lines
        .iter()
        .position(|l| l.contains("\"details\":{\""))
        .unwrap();
    for (file, at, from, to) in [
        (
            "twice.jsonl",
            last,
            "\"actor\":",
            "\"actor\":\"mallory\",\"actor\":",
        ),
        (
            "extra.jsonl",
            last,
            "\"actor\":",
            "\"note\":\"approved by the CISO\",\"actor\":",
        ),
        (
            "nested.jsonl",
            detailed,
            "\"details\":{\"",
            "\"details\":{\"x\":1,\"x\":2,\"",
        ),
    ] {
        let mut changed = lines.clone();
        assert!(changed[at].contains(from), "{}", changed[at]);
        changed[at] = changed[at].replacen(from, to, 1);
        std::fs::write(env.path(file), changed.join("\n") + "\n").unwrap();
    }
    for file in ["twice.jsonl", "extra.jsonl", "nested.jsonl"] {
        let out = run(file, &head);
        assert_eq!(out.status.code(), Some(1), "{file} passed: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unreadable export"),
            "{file}: {out:?}"
        );
    }
    for file in ["tail.jsonl", "head.jsonl", "rewritten.jsonl"] {
        let out = run(file, &head);
        assert!(
            !out.status.success(),
            "{file} passed against the head: {out:?}"
        );
    }
}

/// The auditor's CSV export is verified as it is: the script reads it back with one leading
/// `'` dropped from each cell (the export's spreadsheet-safe form), so a value that starts
/// like a formula, or with `'` itself, or holds CR LF and quotes, hashes as it was written;
/// a changed cell, a cut tail, a cell too many and a header that is not pim's fail.
#[test]
fn an_auditor_can_verify_the_csv_export_without_pim() {
    let (env, bob) = with_eligible_bob();
    for (scope, why) in [
        ("/a", "=HYPERLINK(\"http://x\")\r\n,\"q\""),
        ("/b", "'=1+1"),
        ("/c", " @SUM(A1)"),
        // (not defused: a ' after a blank is no formula)
        ("/d", " 'quoted"),
        ("/e", "\u{fe66}1+1"),
    ] {
        env.as_(
            "admin",
            &["assign", "bob", "deployer", "--scope", scope, "-j", why],
        )
        .expect(0);
    }
    env.activate(
        "bob",
        &bob,
        "db-admin",
        &["--scope", "/prod", "--justification=-1 INC"],
    )
    .expect(0);
    env.as_("admin", &["audit", "export", "--output", "audit.csv"])
        .expect(0);
    let csv = std::fs::read_to_string(env.path("audit.csv")).unwrap();
    // (what makes the test: the cells the export changed)
    for cell in [
        "\"'=HYPERLINK",
        "''=1+1",
        "' @SUM(A1)",
        "'-1 INC",
        "'\u{fe66}1+1",
    ] {
        assert!(csv.contains(cell), "{cell} not in\n{csv}");
    }
    let head = env.run(&["audit", "verify", "--json"]).expect(0).json()["head"]
        .as_str()
        .unwrap()
        .to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/verify_export.py");
    let run = |file: &str| {
        std::process::Command::new("python3")
            .arg(script)
            .arg(env.path(file))
            .args(["--head", &head])
            .output()
            .unwrap()
    };
    let out = run("audit.csv");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&format!("head {head}")), "{said}");
    let lines: Vec<&str> = csv.split_inclusive('\n').collect();
    let tampered = [
        ("changed.csv", csv.replacen("''=1+1", "''=1+2", 1)),
        // the defusing ' taken off a formula: the values hash the same, the file is unsafe
        (
            "stripped.csv",
            csv.replacen("\"'=HYPERLINK", "\"=HYPERLINK", 1),
        ),
        ("stripped2.csv", csv.replacen(",'-1 INC,", ",-1 INC,", 1)),
        (
            "stripped3.csv",
            csv.replacen("'\u{fe66}1+1", "\u{fe66}1+1", 1),
        ),
        ("cut.csv", lines[..lines.len() - 1].concat()),
        (
            "wider.csv",
            lines[..lines.len() - 1].concat() + &lines[lines.len() - 1].replace('\n', ",x\n"),
        ),
        ("header.csv", csv.replacen("seq,", "n,", 1)),
    ];
    for (file, text) in tampered {
        assert_ne!(text, csv, "{file}");
        std::fs::write(env.path(file), text).unwrap();
        let out = run(file);
        assert_eq!(out.status.code(), Some(1), "{file} passed: {out:?}");
    }
}

/// An export's chain has no key: whoever hands one over may write anything that chains. The
/// script takes event numbers of digits only, one more each time, and never prints a
/// terminal's control bytes from one (it printed a hostile seq as it was).
#[test]
fn the_script_takes_event_numbers_of_digits_in_order_only() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/verify_export.py");
    let dir = tempfile::tempdir().unwrap();
    let chain = |seqs: &[&str]| -> String {
        use sha2::Digest;
        let mut prev = "0".repeat(64);
        let mut out = String::new();
        for seq in seqs {
            let fields = [
                *seq,
                "2026-12-05T12:00:00Z",
                "root",
                "user.add",
                "bob",
                "",
                "",
                "",
                "",
                "",
                "",
                "ok",
                "{}",
            ];
            let mut h = sha2::Sha256::new();
            h.update(prev.as_bytes());
            h.update(serde_json::to_vec(&fields).unwrap());
            let hash = hex::encode(h.finalize());
            let mut event = serde_json::Map::new();
            for (k, v) in pim::audit::COLUMNS.iter().zip(fields) {
                event.insert(k.to_string(), v.into());
            }
            event.insert("prev_hash".into(), prev.clone().into());
            event.insert("hash".into(), hash.clone().into());
            out.push_str(&serde_json::Value::Object(event).to_string());
            out.push('\n');
            prev = hash;
        }
        out
    };
    let run = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::process::Command::new("python3")
            .arg(script)
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = run("ok.jsonl", chain(&["1", "2", "3"]));
    assert!(out.status.success(), "{out:?}");
    for (name, seqs) in [
        ("title.jsonl", ["\u{1b}]2;PWNED\u{7}\u{1b}[31m1", "2", "3"]),
        ("gap.jsonl", ["1", "3", "4"]),
        ("again.jsonl", ["1", "2", "2"]),
        ("arabic.jsonl", ["\u{661}", "2", "3"]),
    ] {
        let out = run(name, chain(&seqs));
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        assert!(
            !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b),
            "{name}: {out:?}"
        );
    }
}

/// The independent script looks past exactly the characters the export looks past before a
/// formula's first character: a cell the export defuses is one the script expects defused.
#[test]
fn the_script_and_the_export_see_the_same_invisible_characters() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/verify_export.py");
    let program = format!(
        "import importlib.util as u\n\
         s = u.spec_from_file_location('v', {script:?}); v = u.module_from_spec(s); s.loader.exec_module(v)\n\
         print(' '.join(str(o) for o in range(0x110000) if not 0xD800 <= o < 0xE000 and v.invisible(chr(o))))\n"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &program])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let python: Vec<u32> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|o| o.parse().unwrap())
        .collect();
    let rust: Vec<u32> = (0..0x110000)
        .filter_map(char::from_u32)
        .filter(|&c| c.is_whitespace() || pim::text::unsafe_char(c))
        .map(u32::from)
        .collect();
    let only = |a: &[u32], b: &[u32]| -> Vec<String> {
        let b: std::collections::HashSet<_> = b.iter().collect();
        a.iter()
            .filter(|o| !b.contains(o))
            .map(|o| format!("U+{o:04X}"))
            .collect()
    };
    assert_eq!(
        only(&rust, &python),
        Vec::<String>::new(),
        "skipped by the export alone"
    );
    assert_eq!(
        only(&python, &rust),
        Vec::<String>::new(),
        "skipped by the script alone"
    );
}

#[test]
fn our_totp_arithmetic_matches_oathtool_at_any_time() {
    for _ in 0..5 {
        let secret = pim::mfa::new_secret();
        let b32 = pim::mfa::to_base32(&secret);
        for t in [
            59_i64,
            1_111_111_109,
            1_800_000_000,
            2_000_000_029,
            chrono::Utc::now().timestamp(),
        ] {
            let out = std::process::Command::new("oathtool")
                .args(["--totp", "-b", &b32, "-N", &format!("@{t}")])
                .output()
                .expect("oathtool is needed by the tests (apt-get install oathtool)");
            let theirs = String::from_utf8(out.stdout).unwrap().trim().to_string();
            assert_eq!(pim::mfa::code_at(&secret, t), theirs, "secret {b32} at {t}");
            assert_eq!(pim::mfa::matching_step(&secret, &theirs, t), Some(t / 30));
        }
    }
}

#[test]
fn a_database_from_a_newer_pim_is_refused() {
    let env = Env::new();
    env.init();
    if support::on_postgres() {
        env.sql("UPDATE pim_schema SET version = 99");
    } else {
        env.sql("PRAGMA user_version = 99");
    }
    let r = env.as_("admin", &["user", "list"]).expect(1);
    assert!(r.stderr.contains("newer pim"), "{}", r.stderr);
}

#[test]
fn the_assign_permission_reaches_only_as_far_as_its_scope() {
    let env = Env::new();
    env.init();
    env.user("bob");
    env.user("carol");
    env.as_(
        "admin",
        &[
            "assign",
            "carol",
            "privileged-role-admin",
            "--active",
            "--scope",
            "/prod",
            "--duration",
            "1d",
            "-j",
            "prod lead",
        ],
    )
    .expect(0);
    env.as_(
        "carol",
        &[
            "assign", "bob", "db-admin", "--scope", "/prod/db", "-j", "dba",
        ],
    )
    .expect(0);
    let r = env
        .as_(
            "carol",
            &["assign", "bob", "db-admin", "--scope", "/", "-j", "dba"],
        )
        .expect(3);
    assert!(
        r.stderr.contains("'assign' permission over /"),
        "{}",
        r.stderr
    );
    env.as_(
        "carol",
        &[
            "assign",
            "bob",
            "db-admin",
            "--scope",
            "/production",
            "-j",
            "dba",
        ],
    )
    .expect(3);
    env.as_(
        "carol",
        &["unassign", "bob", "db-admin", "--scope", "/prod/db"],
    )
    .expect(0);
    // Without `users`, carol cannot add people.
    env.as_("carol", &["user", "add", "dave"]).expect(3);
}

/// A role name with a typo gets the closest role of the policy (key or display name), not
/// just "there is none" (issue 11); `check`, open to callers who are not pim users, names no
/// role.
#[test]
fn a_mistyped_role_gets_a_did_you_mean() {
    let (env, _) = with_eligible_bob();
    let r = env
        .as_(
            "bob",
            &["activate", "db-admn", "-j", "x", "--code", "000000"],
        )
        .expect(4);
    assert!(r.stderr.contains("Did you mean db-admin?"), "{}", r.stderr);
    let r = env
        .as_(
            "admin",
            &["assign", "bob", "Database Administrater", "-j", "x"],
        )
        .expect(4);
    assert!(r.stderr.contains("Did you mean db-admin?"), "{}", r.stderr);
    let r = env
        .as_("admin", &["assign", "bob", "zzzzzzzz", "-j", "x"])
        .expect(4);
    assert!(!r.stderr.contains("Did you mean"), "{}", r.stderr);
    let r = env.run(&["check", "bob", "db-admn"]).expect(4);
    assert!(!r.stderr.contains("Did you mean"), "{}", r.stderr);
}

/// A mistyped user name gets the closest one, for those who may see users; a name far from
/// any gets none.
#[test]
fn a_mistyped_user_gets_a_did_you_mean() {
    let (env, _) = with_eligible_bob();
    let r = env
        .as_("admin", &["assign", "bbo", "db-admin", "-j", "x"])
        .expect(4);
    assert!(
        r.stderr
            .contains("There is no user named 'bbo'. Did you mean bob? See `pim user list`."),
        "{}",
        r.stderr
    );
    let r = env.as_("admin", &["status", "zzzzzz"]).expect(4);
    assert!(!r.stderr.contains("Did you mean"), "{}", r.stderr);
}
