//! Many processes at once, on whichever backend is under test: every write is serialised,
//! none surfaces an error, and the audit chain neither loses nor forks an event.

use crate::support::{self, oathtool, Env, Policy};
use std::process::{Child, Stdio};
use std::time::Instant;

fn backend() -> &'static str {
    if support::on_postgres() {
        "PostgreSQL"
    } else {
        "SQLite"
    }
}

fn policy(approvers: &[String]) -> Policy {
    let list = approvers
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let approvers = format!("approvers = [{list}]");
    Policy::new()
        .role("ops", "Operations", &["max_activation = \"1h\""])
        .role(
            "db-admin",
            "Database Administrator",
            &[
                "max_activation = \"1h\"",
                "require_approval = true",
                &approvers,
            ],
        )
}

/// A database with `users` (each with an authenticator; their secrets) eligible for `role`.
fn world(env: &Env, approvers: &[String], users: &[String], role: &str) -> Vec<String> {
    env.init_with(&policy(approvers));
    let mut secrets = Vec::new();
    for u in approvers.iter().chain(users) {
        secrets.push(env.user(u));
    }
    let rows: String = users
        .iter()
        .map(|u| format!("{u},{role},/,eligible,,,on call,\n"))
        .collect();
    std::fs::write(
        env.path("eligible.csv"),
        format!("user,role,scope,type,start,end,justification,ticket\n{rows}"),
    )
    .unwrap();
    env.as_("admin", &["assignment", "import", "eligible.csv"])
        .expect(0);
    secrets
}

fn spawn(env: &Env, args: &[&str]) -> Child {
    env.command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(kids: Vec<Child>) -> Vec<support::Run> {
    kids.into_iter()
        .map(|k| k.wait_with_output().unwrap().into())
        .collect()
}

#[test]
fn fifty_processes_activating_at_once_all_succeed_and_the_chain_holds() {
    let env = Env::new();
    let users: Vec<String> = (0..50).map(|i| format!("u{i:02}")).collect();
    let secrets = world(&env, &[], &users, "ops");
    let before = env.count("SELECT count(*) FROM audit_events");
    let codes: Vec<String> = secrets.iter().map(|s| oathtool(s, 0)).collect();
    let started = Instant::now();
    let kids: Vec<Child> = users
        .iter()
        .zip(&codes)
        .map(|(u, code)| {
            spawn(
                &env,
                &["--as", u, "activate", "ops", "-j", "INC-50", "--code", code],
            )
        })
        .collect();
    let runs = finish(kids);
    let took = started.elapsed();
    for (u, r) in users.iter().zip(&runs) {
        assert_eq!(r.code, 0, "{u}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.is_empty(), "{u}: {}", r.stderr);
    }
    eprintln!(
        "{}: 50 processes activating at once: {} ms in all",
        backend(),
        took.as_millis()
    );
    // One request and one start per activation: nothing lost, nothing twice.
    let after = env.count("SELECT count(*) FROM audit_events");
    let requested =
        env.count("SELECT count(*) FROM audit_events WHERE action = 'activation.request'");
    assert_eq!(requested, 50);
    assert_eq!(after - before, 50 * 2, "events added");
    assert_eq!(
        env.count("SELECT count(DISTINCT seq) FROM audit_events"),
        after
    );
    assert_eq!(env.count("SELECT max(seq) FROM audit_events"), after);
    let v = env.run(&["audit", "verify", "--json"]).expect(0).json();
    assert_eq!(v["events"], after);
    for u in &users {
        env.run(&["check", u, "ops"]).expect(0);
    }
}

#[test]
fn twenty_racing_approve_deny_pairs_each_give_one_outcome() {
    let env = Env::new();
    let approvers: Vec<String> = (0..40).map(|i| format!("a{i:02}")).collect();
    let users: Vec<String> = (0..20).map(|i| format!("r{i:02}")).collect();
    let secrets = world(&env, &approvers, &users, "db-admin");
    let (approver_secrets, user_secrets) = secrets.split_at(approvers.len());
    let ids: Vec<i64> = users
        .iter()
        .zip(user_secrets)
        .map(|(u, s)| {
            let r = env
                .as_(
                    u,
                    &[
                        "activate",
                        "db-admin",
                        "-j",
                        "INC-20",
                        "--code",
                        &oathtool(s, 0),
                        "--json",
                    ],
                )
                .expect(0)
                .json();
            assert_eq!(r["status"], "pending", "{r}");
            r["id"].as_i64().unwrap()
        })
        .collect();
    let before = env.count("SELECT count(*) FROM audit_events");
    // For each request one approver approves and another denies, all 40 at once.
    let mut plan = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        for (k, verb) in ["approve", "deny"].into_iter().enumerate() {
            let a = 2 * i + k;
            plan.push((
                *id,
                approvers[a].clone(),
                verb,
                oathtool(&approver_secrets[a], 0),
            ));
        }
    }
    let started = Instant::now();
    let kids: Vec<Child> = plan
        .iter()
        .map(|(id, who, verb, code)| {
            spawn(
                &env,
                &[
                    "--as",
                    who,
                    verb,
                    &id.to_string(),
                    "-j",
                    "race",
                    "--code",
                    code,
                ],
            )
        })
        .collect();
    let runs = finish(kids);
    let took = started.elapsed();
    eprintln!(
        "{}: 20 approve/deny pairs racing: {} ms in all",
        backend(),
        took.as_millis()
    );
    for (pair, id) in runs.chunks(2).zip(&ids) {
        let mut codes: Vec<i32> = pair.iter().map(|r| r.code).collect();
        codes.sort();
        assert_eq!(
            codes,
            vec![0, 5],
            "request {id}: {:?}",
            pair.iter().map(|r| &r.stderr).collect::<Vec<_>>()
        );
        for r in pair {
            // The loser is told the request was decided; never a database error.
            assert!(!r.stderr.contains("database"), "{}", r.stderr);
            assert!(!r.stderr.contains("locked"), "{}", r.stderr);
        }
        assert_eq!(
            env.count(&format!(
                "SELECT count(*) FROM decisions WHERE request_id = {id}"
            )),
            1
        );
        assert_eq!(
            env.count(&format!(
                "SELECT count(*) FROM audit_events WHERE request = {id} AND action IN ('activation.approve', 'activation.deny')"
            )),
            1
        );
    }
    let after = env.count("SELECT count(*) FROM audit_events");
    assert!(after > before);
    assert_eq!(env.count("SELECT max(seq) FROM audit_events"), after);
    env.run(&["audit", "verify", "--state"]).expect(0);
}
