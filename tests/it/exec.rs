//! Several roles with one code, and `pim exec`.

use crate::support;

use support::{oathtool, Env};

fn setup() -> (Env, String) {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    for role in ["db-admin", "user-admin"] {
        env.as_("admin", &["assign", "bob", role, "-j", "team"])
            .expect(0);
    }
    (env, bob)
}

#[test]
fn several_roles_take_one_justification_and_one_code_all_or_nothing() {
    let (env, bob) = setup();
    // One role bob is not eligible for: nothing is activated, the refusal is recorded.
    let r = env
        .as_(
            "bob",
            &[
                "activate",
                "db-admin",
                "security-reader",
                "-j",
                "INC-1",
                "--code",
                &oathtool(&bob, 0),
            ],
        )
        .expect(3);
    assert!(r.stderr.contains("not eligible"), "{}", r.stderr);
    assert_eq!(env.count("SELECT count(*) FROM requests"), 0);
    assert!(env.count("SELECT count(*) FROM audit_events WHERE action = 'activation.request' AND result != 'ok'") >= 1);
    let both = env
        .as_(
            "bob",
            &[
                "activate",
                "db-admin",
                "User Administrator",
                "-j",
                "INC-2",
                "--duration",
                "1h",
                "--code",
                &oathtool(&bob, 30),
                "--json",
            ],
        )
        .expect(0)
        .json();
    let list = both.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|r| r["status"] == "active"));
    env.run(&["check", "bob", "db-admin"]).expect(0);
    env.run(&["check", "bob", "user-admin"]).expect(0);
    assert_eq!(
        env.count("SELECT count(*) FROM users WHERE name = 'bob' AND mfa_failures = 0"),
        1
    );
}

#[test]
fn exec_runs_the_command_with_the_role_and_gives_it_back() {
    let (env, bob) = setup();
    let out = env.path("env.txt");
    let script = format!("env | grep ^PIM_ | sort > {}; exit 7", out.display());
    let r = env
        .as_(
            "bob",
            &[
                "exec",
                "db-admin",
                "--scope",
                "/",
                "-j",
                "INC-3",
                "--code",
                &oathtool(&bob, 0),
                "--",
                "sh",
                "-c",
                &script,
            ],
        )
        .expect(7);
    let seen = std::fs::read_to_string(&out).unwrap();
    assert!(seen.contains("PIM_ROLE=db-admin"), "{seen}");
    assert!(seen.contains("PIM_SCOPE=/"), "{seen}");
    assert!(seen.contains("PIM_USER=bob"), "{seen}");
    assert!(seen.contains("PIM_REQUEST=1"), "{seen}");
    assert!(seen.contains("PIM_UNTIL=20"), "{seen}");
    assert!(r.stderr.is_empty() || !r.stderr.contains("panicked"));
    // exec activated it, so exec gave it back.
    env.run(&["check", "bob", "db-admin"]).expect(1);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'activation.deactivate'"),
        1
    );
    // A role already held is used and left held.
    env.as_(
        "bob",
        &[
            "activate",
            "user-admin",
            "-j",
            "INC-4",
            "--code",
            &oathtool(&bob, 30),
        ],
    )
    .expect(0);
    env.as_("bob", &["exec", "user-admin", "--", "true"])
        .expect(0);
    env.run(&["check", "bob", "user-admin"]).expect(0);
}

#[test]
fn exec_does_not_wait_for_approval_unless_asked() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.as_("admin", &["assign", "bob", "global-admin", "-j", "deputy"])
        .expect(0);
    let r = env
        .as_(
            "bob",
            &[
                "exec",
                "global-admin",
                "-j",
                "x",
                "--code",
                &oathtool(&bob, 0),
                "--",
                "true",
            ],
        )
        .expect(3);
    assert!(r.stderr.contains("--wait"), "{}", r.stderr);
    env.as_("bob", &["exec", "db-admin", "-j", "x", "--", "true"])
        .expect(3);
    env.as_("bob", &["exec", "nope", "--", "true"]).expect(4);
    env.as_("bob", &["exec", "db-admin"]).expect(2);
}
