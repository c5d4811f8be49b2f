//! Service principals: tokens shown once, stored hashed, rotated, refused when wrong, audited.

use crate::support;

use support::Env;

fn with_token(env: &Env, token: &str, args: &[&str]) -> support::Run {
    env.command(args)
        .env("PIM_TOKEN", token)
        .output()
        .unwrap()
        .into()
}

#[test]
fn a_service_authenticates_with_its_token_and_acts_under_its_name() {
    let env = Env::new();
    env.init();
    env.user("bob");
    let j = env
        .as_(
            "admin",
            &["user", "add", "deploy-bot", "--service", "--json"],
        )
        .expect(0)
        .json();
    let token = j["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("pim_deploy-bot_"), "{token}");
    // Only a hash is stored.
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM users WHERE token_hash LIKE '%{}%'",
            &token[15..]
        )),
        0
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM users WHERE name = 'deploy-bot' AND length(token_hash) = 64"
        ),
        1
    );
    // Services hold direct active assignments and never activate.
    env.as_("admin", &["assign", "deploy-bot", "deployer", "-j", "ci"])
        .expect(3);
    env.as_(
        "admin",
        &[
            "assign",
            "deploy-bot",
            "deployer",
            "--active",
            "--permanent",
            "-j",
            "ci",
        ],
    )
    .expect(0);
    env.run(&["check", "deploy-bot", "deployer"]).expect(0);
    let r = with_token(&env, &token, &["activate", "db-admin", "-j", "x"]).expect(3);
    assert!(r.stderr.contains("service"), "{}", r.stderr);
    // With a role that grants `assign`, the pipeline assigns eligibility, audited as itself.
    env.as_(
        "admin",
        &[
            "assign",
            "deploy-bot",
            "privileged-role-admin",
            "--active",
            "--duration",
            "1d",
            "-j",
            "ci",
        ],
    )
    .expect(0);
    with_token(
        &env,
        &token,
        &["assign", "bob", "db-admin", "-j", "from CI", "--json"],
    )
    .expect(0);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE actor = 'deploy-bot' AND action = 'assignment.add' AND result = 'ok'"),
        1
    );
    // A token and --as together are a usage error.
    with_token(&env, &token, &["--as", "admin", "status"]).expect(2);
}

#[test]
fn wrong_rotated_and_disabled_tokens_are_refused_and_audited() {
    let env = Env::new();
    env.init();
    let old = env
        .as_("admin", &["user", "add", "ci", "--service", "--json"])
        .expect(0)
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    with_token(&env, &old, &["assignment", "list"]).expect(0);
    let r = with_token(&env, "pim_ci_0000", &["assignment", "list"]).expect(3);
    assert!(
        r.stderr.contains("not a valid service token"),
        "{}",
        r.stderr
    );
    with_token(&env, "garbage", &["assignment", "list"]).expect(3);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'token.fail'"),
        2
    );
    // Rotation voids the old token.
    env.as_("admin", &["user", "token", "ci"]).expect(2);
    let new = env
        .as_("admin", &["user", "token", "ci", "--rotate", "--json"])
        .expect(0)
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new, old);
    with_token(&env, &old, &["assignment", "list"]).expect(3);
    with_token(&env, &new, &["assignment", "list"]).expect(0);
    env.as_("admin", &["user", "token", "admin", "--rotate"])
        .expect(2);
    // Rotating needs the `users` permission.
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    env.as_("bob", &["user", "token", "ci", "--rotate"])
        .expect(3);
    // A disabled service can do nothing.
    env.as_("admin", &["user", "disable", "ci"]).expect(0);
    with_token(&env, &new, &["assignment", "list"]).expect(3);
    // Services never enrol TOTP.
    env.as_("admin", &["mfa", "enroll", "ci"]).expect(3);
}
