//! `pim assignment apply`: plan, apply, idempotence, changes, prune and its limits.

use crate::support;

use support::Env;

const DESIRED: &str = r#"
[[eligible]]
user = "bob"
role = "db-admin"
scope = "/prod"
duration = "90d"
justification = "on-call rotation"

[[eligible]]
user = "carol"
role = "Kubernetes Operator"
scope = "/prod/k8s"
until = "UNTIL"
justification = "platform"

[[active]]
user = "deploy-bot"
role = "deployer"
permanent = true
justification = "ci"
"#;

/// A date `days` from now, as an apply file writes it.
fn date_in(days: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(days))
        .format("%Y-%m-%d")
        .to_string()
}

fn desired() -> String {
    DESIRED.replace("UNTIL", &date_in(200))
}

fn setup() -> Env {
    let env = Env::new();
    env.init();
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    env.as_("admin", &["user", "add", "carol"]).expect(0);
    env.as_("admin", &["user", "add", "deploy-bot", "--service"])
        .expect(0);
    std::fs::write(env.path("desired.toml"), desired()).unwrap();
    env
}

#[test]
fn plan_apply_and_a_second_apply_that_changes_nothing() {
    let env = setup();
    let dry = env
        .as_(
            "admin",
            &["assignment", "apply", "desired.toml", "--dry-run", "--json"],
        )
        .expect(0)
        .json();
    assert_eq!(dry["add"].as_array().unwrap().len(), 3);
    assert_eq!(dry["applied"], false);
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE user_id != 1"),
        0
    );
    let human = env
        .as_(
            "admin",
            &["assignment", "apply", "desired.toml", "--dry-run"],
        )
        .expect(0)
        .stdout;
    assert!(
        human.contains("+ eligible bob db-admin at /prod"),
        "{human}"
    );
    let first = env
        .as_("admin", &["assignment", "apply", "desired.toml", "--json"])
        .expect(0)
        .json();
    assert_eq!(first["add"].as_array().unwrap().len(), 3);
    for key in ["add", "change", "remove"] {
        assert!(first[key].is_array(), "{key}");
    }
    let second = env
        .as_("admin", &["assignment", "apply", "desired.toml", "--json"])
        .expect(0)
        .json();
    assert_eq!(second["add"], serde_json::json!([]));
    assert_eq!(second["change"], serde_json::json!([]));
    assert_eq!(second["remove"], serde_json::json!([]));
    // Days later the relative duration still does not count as a change.
    let later = env
        .at(
            "+3d",
            &[
                "--as",
                "admin",
                "assignment",
                "apply",
                "desired.toml",
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(later["change"], serde_json::json!([]));
    env.run(&["check", "deploy-bot", "deployer"]).expect(0);
}

#[test]
fn a_changed_until_is_a_change_and_prune_removes_what_is_not_named() {
    let env = setup();
    env.as_("admin", &["assignment", "apply", "desired.toml"])
        .expect(0);
    env.as_(
        "admin",
        &["assign", "bob", "security-reader", "-j", "extra"],
    )
    .expect(0);
    let later = date_in(300);
    let changed = desired().replace(&date_in(200), &later);
    std::fs::write(env.path("changed.toml"), changed).unwrap();
    // Without --prune nothing is removed.
    let plain = env
        .as_(
            "admin",
            &["assignment", "apply", "changed.toml", "--dry-run", "--json"],
        )
        .expect(0)
        .json();
    assert_eq!(plain["change"].as_array().unwrap().len(), 1);
    assert_eq!(plain["remove"], serde_json::json!([]));
    let pruned = env
        .as_(
            "admin",
            &["assignment", "apply", "changed.toml", "--prune", "--json"],
        )
        .expect(0)
        .json();
    assert_eq!(pruned["change"][0]["to"], format!("{later}T00:00:00Z"));
    let removed: Vec<&str> = pruned["remove"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].as_str().unwrap())
        .collect();
    assert_eq!(removed, vec!["security-reader"]);
    // The break-glass administrator is not in the file, and stays.
    assert!(pruned["kept"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k.as_str().unwrap().contains("global-admin")));
    env.run(&["check", "admin", "global-admin"]).expect(0);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'assignment.change'"),
        1
    );
    // What apply changed and pruned is what the log says.
    env.as_("admin", &["audit", "verify", "--state"]).expect(0);
}

#[test]
fn bad_files_name_their_lines_and_change_nothing() {
    let env = setup();
    let bad = "[[eligible]]\nuser = \"ghost\"\nrole = \"db-admin\"\n\n[[eligible]]\nuser = \"bob\"\nrole = \"db-admin\"\nduration = \"90d\"\nuntil = \"2099-01-01\"\n";
    std::fs::write(env.path("bad.toml"), bad).unwrap();
    let r = env
        .as_("admin", &["assignment", "apply", "bad.toml"])
        .expect(2);
    assert!(r.stderr.contains("line 5"), "{}", r.stderr);
    let only_ghost = "[[eligible]]\nuser = \"ghost\"\nrole = \"db-admin\"\njustification = \"x\"\n";
    std::fs::write(env.path("ghost.toml"), only_ghost).unwrap();
    let r = env
        .as_("admin", &["assignment", "apply", "ghost.toml"])
        .expect(2);
    assert!(
        r.stderr.contains("line 1") && r.stderr.contains("ghost"),
        "{}",
        r.stderr
    );
    std::fs::write(env.path("typo.toml"), "[[eligble]]\nuser = \"bob\"\n").unwrap();
    env.as_("admin", &["assignment", "apply", "typo.toml"])
        .expect(2);
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE user_id != 1"),
        0
    );
    // Without `assign`, nothing is applied: refused (exit 3), and each refusal is recorded.
    let before = env.count("SELECT count(*) FROM audit_events WHERE result != 'ok'");
    env.as_("bob", &["assignment", "apply", "desired.toml"])
        .expect(3);
    assert!(env.count("SELECT count(*) FROM audit_events WHERE result != 'ok'") > before);
    assert_eq!(
        env.count("SELECT count(*) FROM assignments WHERE user_id != 1"),
        0
    );
}

#[test]
fn a_scoped_administrator_applies_and_prunes_only_within_their_scope() {
    let env = setup();
    env.as_(
        "admin",
        &[
            "assign",
            "carol",
            "privileged-role-admin",
            "--active",
            "--permanent",
            "--scope",
            "/prod",
            "-j",
            "prod roles",
        ],
    )
    .expect(0);
    let until = date_in(40);
    // Outside carol's scope: bob's db-admin at /, to a day she could guess.
    env.as_(
        "admin",
        &["assign", "bob", "db-admin", "--until", &until, "-j", "ops"],
    )
    .expect(0);
    // Inside it: bob's security-reader at /prod/x.
    env.as_(
        "admin",
        &[
            "assign",
            "bob",
            "security-reader",
            "--scope",
            "/prod/x",
            "-j",
            "x",
        ],
    )
    .expect(0);
    // Naming the assignment outside her scope is refused whatever she guesses of it: an empty
    // plan for the right end, or "in the past" for a past one, would tell her it exists.
    for (name, end) in [("guess.toml", until.clone()), ("past.toml", date_in(-2))] {
        std::fs::write(
            env.path(name),
            format!("[[eligible]]\nuser = \"bob\"\nrole = \"db-admin\"\nuntil = \"{end}\"\n"),
        )
        .unwrap();
        let r = env
            .as_("carol", &["assignment", "apply", name, "--dry-run"])
            .expect(3);
        assert!(
            r.stderr.contains("'assign' permission over /") && !r.stderr.contains("past"),
            "{}",
            r.stderr
        );
    }
    // Both attempts are on record, marked as dry runs, and as adds: the action her refusal is
    // recorded under (which `audit list` shows her) does not say whether bob holds the role.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_events WHERE actor = 'carol' AND result != 'ok' \
             AND action = 'assignment.add' AND principal = 'bob' AND role = 'db-admin' \
             AND details LIKE '%\"dry_run\":true%'"
        ),
        2
    );
    // A prune removes what she may assign and is not in her file, and nothing else: not
    // bob's db-admin at /, not the deployer, not the break-glass administrator, not her own.
    std::fs::write(
        env.path("prod.toml"),
        "[[eligible]]\nuser = \"bob\"\nrole = \"deployer\"\nscope = \"/prod/app\"\njustification = \"releases\"\n",
    )
    .unwrap();
    let plan = env
        .as_(
            "carol",
            &["assignment", "apply", "prod.toml", "--prune", "--json"],
        )
        .expect(0)
        .json();
    let removed: Vec<String> = plan["remove"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{} {} {}", r["user"], r["role"], r["scope"]))
        .collect();
    assert_eq!(
        removed,
        vec![r#""bob" "security-reader" "/prod/x""#.to_string()]
    );
    let kept: Vec<&str> = plan["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0].contains("carol privileged-role-admin at /prod") && kept[0].contains("your own"),
        "{kept:?}"
    );
    let bobs = env
        .as_("admin", &["assignment", "list", "--user", "bob", "--json"])
        .expect(0)
        .json();
    let roles: Vec<&str> = bobs
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["role"].as_str().unwrap())
        .collect();
    assert!(
        roles.contains(&"db-admin") && roles.contains(&"deployer"),
        "{roles:?}"
    );
    assert!(!roles.contains(&"security-reader"), "{roles:?}");
    env.run(&[
        "check",
        "carol",
        "privileged-role-admin",
        "--scope",
        "/prod",
    ])
    .expect(0);
    // Nothing outside her scope was refused in her name either.
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'assignment.remove' AND result != 'ok'"),
        0
    );
}
