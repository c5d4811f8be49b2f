//! The approval workflow driven through the binary: quorum, who may decide, time, cancel,
//! extend, revoke, and two approvers racing.

use crate::support;

use support::{oathtool, Env, Policy};

fn policy() -> Policy {
    let carol_and_dave = "approvers = [\"carol\", \"dave\"]";
    Policy::new()
        .role(
            "global-admin",
            "Global Administrator",
            &[
                "permissions = [\"*\"]",
                "protected = true",
                "max_eligible = \"permanent\"",
                "max_active = \"permanent\"",
                "require_approval = true",
                carol_and_dave,
            ],
        )
        .role(
            "prod-root",
            "Production Root",
            &[
                "max_activation = \"2h\"",
                "require_approval = true",
                carol_and_dave,
                "min_approvals = 2",
                "approval_timeout = \"1h\"",
            ],
        )
        .role(
            "db-admin",
            "Database Administrator",
            &["max_activation = \"4h\"", "require_approval = true"],
        )
        .role(
            "approver",
            "Approver",
            &[
                "permissions = [\"approve\"]",
                "require_approval = false",
                "max_active = \"permanent\"",
            ],
        )
        .role("plain", "Plain", &["max_activation = \"4h\""])
        .role(
            "two-of-three",
            "Two of Three",
            &[
                "require_approval = true",
                "approvers = [\"carol\", \"dave\", \"erin\"]",
                "min_approvals = 2",
            ],
        )
        .role(
            "ticketed",
            "Ticketed",
            &["max_activation = \"4h\"", "require_ticket = true"],
        )
        .role(
            "two-holders",
            "Two Holders",
            &["require_approval = true", "min_approvals = 2"],
        )
}

struct World {
    env: Env,
    bob: String,
    carol: String,
    dave: String,
}

fn world() -> World {
    let env = Env::new();
    env.init_with(&policy());
    let bob = env.user("bob");
    let carol = env.user("carol");
    let dave = env.user("dave");
    for role in ["prod-root", "db-admin", "plain"] {
        env.as_(
            "admin",
            &["assign", "bob", role, "--scope", "/prod", "-j", "on call"],
        )
        .expect(0);
    }
    World {
        env,
        bob,
        carol,
        dave,
    }
}

fn request(w: &World, role: &str, extra: &[&str]) -> i64 {
    let mut args = vec!["--scope", "/prod", "-j", "INC-1", "--json"];
    args.extend_from_slice(extra);
    let r = w.env.activate("bob", &w.bob, role, &args).expect(0).json();
    assert_eq!(r["status"], "pending", "{r}");
    r["id"].as_i64().unwrap()
}

/// Give `who` a permanent active role with the `approve` permission over `scope`.
fn make_approver(w: &World, who: &str, scope: &str) {
    let args = [
        "assign",
        who,
        "approver",
        "--active",
        "--scope",
        scope,
        "--permanent",
        "-j",
        "lead",
    ];
    w.env.as_("admin", &args).expect(0);
}

/// `audit verify --state`, exiting `code`.
fn verify_state(w: &World, code: i32) -> support::Run {
    w.env
        .as_("admin", &["audit", "verify", "--state"])
        .expect(code)
}

/// `user`'s eligibility for db-admin at /prod made to end at `until`, by `assignment apply`.
fn db_admin_until(w: &World, user: &str, until: &str) {
    std::fs::write(
        w.env.path("until.toml"),
        format!("[[eligible]]\nuser = \"{user}\"\nrole = \"db-admin\"\nscope = \"/prod\"\nuntil = \"{until}\"\n"),
    )
    .unwrap();
    w.env
        .as_("admin", &["assignment", "apply", "until.toml"])
        .expect(0);
}

fn decide(w: &World, who: &str, secret: &str, verb: &str, id: i64, offset: i64) -> support::Run {
    let code = oathtool(secret, offset);
    w.env.as_(
        who,
        &[
            verb,
            &id.to_string(),
            "-j",
            "looked at it",
            "--code",
            &code,
            "--json",
        ],
    )
}

#[test]
fn a_quorum_of_two_distinct_approvers_starts_the_activation() {
    let w = world();
    let id = request(&w, "prod-root", &["--duration", "1h"]);
    w.env
        .run(&["check", "bob", "prod-root", "--scope", "/prod"])
        .expect(1);
    // Never your own.
    let own = decide(&w, "bob", &w.bob, "approve", id, 30).expect(3);
    assert!(own.stderr.contains("own request"), "{}", own.stderr);
    // Not an approver.
    let admin_secret = w.env.as_("admin", &["mfa", "enroll", "dave2"]).code; // unknown user: 4
    assert_eq!(admin_secret, 4);
    w.env
        .as_("admin", &["approve", &id.to_string(), "--code", "123456"])
        .expect(3);
    // Carol approves: one of two.
    let one = decide(&w, "carol", &w.carol, "approve", id, 0)
        .expect(0)
        .json();
    assert_eq!(one["status"], "pending");
    decide(&w, "carol", &w.carol, "approve", id, 30).expect(5);
    w.env
        .run(&["check", "bob", "prod-root", "--scope", "/prod"])
        .expect(1);
    // The caller's decidable list: dave sees it, carol no longer.
    let dave_list = w
        .env
        .as_("dave", &["request", "list", "--pending", "--json"])
        .expect(0)
        .json();
    assert_eq!(dave_list.as_array().unwrap().len(), 1);
    let carol_list = w
        .env
        .as_("carol", &["request", "list", "--pending", "--json"])
        .expect(0)
        .json();
    assert_eq!(carol_list.as_array().unwrap().len(), 0);
    let two = decide(&w, "dave", &w.dave, "approve", id, 0)
        .expect(0)
        .json();
    assert_eq!(two["status"], "active");
    w.env
        .run(&["check", "bob", "prod-root", "--scope", "/prod"])
        .expect(0);
    let shown = w
        .env
        .as_("admin", &["request", "show", &id.to_string(), "--json"])
        .expect(0)
        .json();
    let decisions = shown["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0]["approver"], "carol");
    assert_eq!(decisions[1]["justification"], "looked at it");
    // Deciding a request in a final state is a conflict.
    decide(&w, "dave", &w.dave, "deny", id, 30).expect(5);
    assert_eq!(w.env.count("SELECT count(*) FROM audit_events WHERE action = 'activation.approve' AND result = 'ok'"), 2);
    assert_eq!(w.env.count("SELECT count(*) FROM audit_events WHERE action = 'activation.approve' AND result != 'ok'"), 2);
}

#[test]
fn the_first_deny_ends_it_and_needs_a_reason() {
    let w = world();
    let id = request(&w, "prod-root", &[]);
    w.env
        .as_(
            "carol",
            &["deny", &id.to_string(), "--code", &oathtool(&w.carol, 0)],
        )
        .expect(2);
    let r = decide(&w, "carol", &w.carol, "deny", id, 0)
        .expect(0)
        .json();
    assert_eq!(r["status"], "denied");
    decide(&w, "dave", &w.dave, "approve", id, 0).expect(5);
    w.env
        .run(&["check", "bob", "prod-root", "--scope", "/prod"])
        .expect(1);
}

#[test]
fn an_approver_without_an_authenticator_is_told_to_enrol() {
    let w = world();
    let id = request(&w, "prod-root", &[]);
    w.env.as_("admin", &["mfa", "reset", "carol"]).expect(0);
    let r = w.env.as_("carol", &["approve", &id.to_string()]).expect(3);
    assert!(r.stderr.contains("mfa enroll"), "{}", r.stderr);
}

#[test]
fn holders_of_approve_decide_where_a_role_names_no_approvers() {
    let w = world();
    let id = request(&w, "db-admin", &[]);
    // Carol is not an approver until she holds a role with `approve` over /prod (until
    // then, bob's request is not hers to see: exit 4, and the attempt is on record).
    decide(&w, "carol", &w.carol, "approve", id, 0).expect(4);
    make_approver(&w, "carol", "/prod");
    let r = decide(&w, "carol", &w.carol, "approve", id, 30)
        .expect(0)
        .json();
    assert_eq!(r["status"], "active");
}

#[test]
fn the_window_starts_at_approval() {
    let w = world();
    let id = request(&w, "db-admin", &["--duration", "1h"]);
    make_approver(&w, "carol", "/");
    // Approve 20 minutes later (under faketime): the hour runs from then.
    let code = oathtool(&w.carol, 20 * 60);
    let out = w.env.at(
        "+20m",
        &[
            "--as",
            "carol",
            "approve",
            &id.to_string(),
            "--code",
            &code,
            "--json",
        ],
    );
    let r = out.expect(0).json();
    let start = chrono::DateTime::parse_from_rfc3339(r["start"].as_str().unwrap()).unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(r["end"].as_str().unwrap()).unwrap();
    assert_eq!((end - start).num_minutes(), 60);
    assert!(
        (start.timestamp() - chrono::Utc::now().timestamp() - 20 * 60).abs() < 10,
        "{start}"
    );
}

#[test]
fn pending_requests_time_out_when_read_and_sweep_records_it() {
    let w = world();
    let id = request(&w, "prod-root", &[]);
    let later = |args: &[&str]| w.env.at("+61m", args);
    let r = later(&[
        "--as",
        "admin",
        "request",
        "show",
        &id.to_string(),
        "--json",
    ])
    .expect(0)
    .json();
    assert_eq!(r["status"], "timed_out");
    later(&[
        "--as",
        "carol",
        "approve",
        &id.to_string(),
        "--code",
        &oathtool(&w.carol, 61 * 60),
    ])
    .expect(5);
    let s = later(&["sweep", "--json"]).expect(0).json();
    assert_eq!(s["timed_out"], serde_json::json!([id]));
    let s = later(&["sweep", "--json"]).expect(0).json();
    assert_eq!(s["timed_out"], serde_json::json!([]));
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM audit_events WHERE action = 'activation.timeout'"),
        1
    );
}

#[test]
fn wait_returns_when_decided() {
    let w = world();
    let code = oathtool(&w.bob, 0);
    let mut waiting = w
        .env
        .command(&[
            "--as",
            "bob",
            "activate",
            "prod-root",
            "--scope",
            "/prod",
            "-j",
            "INC-2",
            "--code",
            &code,
            "--wait",
            "30s",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the request to exist, then deny it.
    let mut id = 0;
    for _ in 0..50 {
        id = w.env.count("SELECT coalesce(max(id), 0) FROM requests");
        if id > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(id > 0);
    decide(&w, "carol", &w.carol, "deny", id, 0).expect(0);
    let out = waiting.wait().unwrap();
    assert_eq!(out.code(), Some(3));
}

#[test]
fn cancel_extend_and_revoke() {
    let w = world();
    let id = request(&w, "prod-root", &[]);
    // Not hers: as if it were not there.
    w.env.as_("carol", &["cancel", &id.to_string()]).expect(4);
    let r = w
        .env
        .as_("bob", &["cancel", &id.to_string(), "--json"])
        .expect(0)
        .json();
    assert_eq!(r["status"], "canceled");
    w.env.as_("bob", &["cancel", &id.to_string()]).expect(5);

    // Extend a plain activation (no approval): the end moves to now + D.
    let a = w
        .env
        .as_(
            "bob",
            &[
                "activate",
                "plain",
                "--scope",
                "/prod",
                "-j",
                "x",
                "--duration",
                "1h",
                "--code",
                &oathtool(&w.bob, 30),
                "--json",
            ],
        )
        .expect(0)
        .json();
    let plain_id = a["id"].as_i64().unwrap();
    w.env
        .as_(
            "bob",
            &[
                "extend",
                "plain",
                "--duration",
                "5h",
                "-j",
                "more",
                "--code",
                &oathtool(&w.bob, 60),
            ],
        )
        .expect(3);
    // A fresh code: one step later than the last one bob used, 30 s from now.
    let code = oathtool(&w.bob, 60);
    let ext = w
        .env
        .at(
            "+30s",
            &[
                "--as",
                "bob",
                "extend",
                "plain",
                "--duration",
                "3h",
                "-j",
                "more",
                "--code",
                &code,
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(ext["extends"], plain_id);
    let shown = w
        .env
        .as_(
            "admin",
            &["request", "show", &plain_id.to_string(), "--json"],
        )
        .expect(0)
        .json();
    let end = chrono::DateTime::parse_from_rfc3339(shown["end"].as_str().unwrap()).unwrap();
    assert!((end.timestamp() - chrono::Utc::now().timestamp() - 3 * 3600 - 30).abs() < 10);
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM audit_events WHERE action = 'activation.extend'"),
        1
    );

    // Revoke needs `assign` over the scope (without any reason to see bob's request, carol
    // learns nothing of it: exit 4, on record) and a reason.
    w.env
        .as_("carol", &["revoke", &plain_id.to_string(), "-j", "no"])
        .expect(4);
    assert!(
        w.env.count("SELECT count(*) FROM audit_events WHERE action = 'activation.revoke' AND actor = 'carol' AND result != 'ok'")
            == 1
    );
    let r = w
        .env
        .as_(
            "admin",
            &[
                "revoke",
                &plain_id.to_string(),
                "-j",
                "incident closed",
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(r["status"], "revoked");
    w.env
        .run(&["check", "bob", "plain", "--scope", "/prod"])
        .expect(1);
    w.env
        .as_("admin", &["revoke", &plain_id.to_string(), "-j", "again"])
        .expect(5);
    w.env.as_("admin", &["revoke", "999", "-j", "x"]).expect(4);
}

#[test]
fn an_extension_of_an_approval_role_waits_while_the_activation_runs_on() {
    let w = world();
    let id = request(&w, "prod-root", &["--duration", "1h"]);
    decide(&w, "carol", &w.carol, "approve", id, 0).expect(0);
    decide(&w, "dave", &w.dave, "approve", id, 0).expect(0);
    let ext = w
        .env
        .as_(
            "bob",
            &[
                "extend",
                "prod-root",
                "--duration",
                "2h",
                "-j",
                "longer",
                "--code",
                &oathtool(&w.bob, 30),
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(ext["status"], "pending");
    w.env
        .run(&["check", "bob", "prod-root", "--scope", "/prod"])
        .expect(0);
    let ext_id = ext["id"].as_i64().unwrap();
    decide(&w, "carol", &w.carol, "approve", ext_id, 30).expect(0);
    decide(&w, "dave", &w.dave, "approve", ext_id, 30).expect(0);
    let shown = w
        .env
        .as_("admin", &["request", "show", &id.to_string(), "--json"])
        .expect(0)
        .json();
    let end = chrono::DateTime::parse_from_rfc3339(shown["end"].as_str().unwrap()).unwrap();
    assert!((end.timestamp() - chrono::Utc::now().timestamp() - 2 * 3600).abs() < 10);
}

#[test]
fn two_approvers_racing_give_one_outcome() {
    for round in 0..8 {
        let w = world();
        // db-admin: one approval from a holder of `approve`.
        make_approver(&w, "carol", "/");
        make_approver(&w, "dave", "/");
        let id = request(&w, "db-admin", &[]);
        let verbs = if round % 2 == 0 {
            ["approve", "deny"]
        } else {
            ["approve", "approve"]
        };
        let kids: Vec<_> = [("carol", &w.carol, verbs[0]), ("dave", &w.dave, verbs[1])]
            .into_iter()
            .map(|(who, secret, verb)| {
                w.env
                    .command(&[
                        "--as",
                        who,
                        verb,
                        &id.to_string(),
                        "-j",
                        "race",
                        "--code",
                        &oathtool(secret, 0),
                    ])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut codes: Vec<i32> = kids
            .into_iter()
            .map(|k| k.wait_with_output().unwrap().status.code().unwrap())
            .collect();
        codes.sort();
        assert_eq!(codes, vec![0, 5], "round {round}");
        let decided = w.env.count(&format!(
            "SELECT count(*) FROM decisions WHERE request_id = {id}"
        ));
        assert_eq!(decided, 1);
        let events = w.env.count(&format!(
            "SELECT count(*) FROM audit_events WHERE request = {id} AND action IN ('activation.approve', 'activation.deny')"
        ));
        assert_eq!(events, 1);
        w.env.run(&["audit", "verify", "--state"]).expect(0);
    }
}

#[test]
fn an_extension_never_revives_an_ended_activation() {
    let w = world();
    let id = request(&w, "prod-root", &["--duration", "30m"]);
    decide(&w, "carol", &w.carol, "approve", id, 0).expect(0);
    decide(&w, "dave", &w.dave, "approve", id, 0).expect(0);
    let ext = w
        .env
        .as_(
            "bob",
            &[
                "extend",
                "prod-root",
                "--duration",
                "2h",
                "-j",
                "longer",
                "--code",
                &oathtool(&w.bob, 30),
                "--json",
            ],
        )
        .expect(0)
        .json();
    let ext_id = ext["id"].as_i64().unwrap().to_string();
    // 40 minutes later the activation has ended; approving the extension now is a conflict.
    let carol = oathtool(&w.carol, 40 * 60);
    w.env
        .at(
            "+40m",
            &["--as", "carol", "approve", &ext_id, "--code", &carol],
        )
        .expect(5);
    w.env
        .at("+40m", &["check", "bob", "prod-root", "--scope", "/prod"])
        .expect(1);
}

/// After `pim extend`, people are told what they have now: the activation, extended and
/// running (not the extension request, which closed when it was applied).
#[test]
fn an_applied_extension_shows_the_activation_extended() {
    let w = world();
    let a = w
        .env
        .activate(
            "bob",
            &w.bob,
            "plain",
            &[
                "--scope",
                "/prod",
                "-j",
                "INC-1",
                "--duration",
                "1h",
                "--json",
            ],
        )
        .expect(0)
        .json();
    let id = a["id"].as_i64().unwrap();
    let shown = w
        .env
        .at(
            "+30s",
            &[
                "--as",
                "bob",
                "extend",
                "plain",
                "--duration",
                "3h",
                "-j",
                "more",
                "--code",
                &oathtool(&w.bob, 30),
            ],
        )
        .expect(0);
    assert!(
        shown.stdout.contains(&format!("Request {id} "))
            && shown.stdout.contains("extended; it is active until"),
        "{}",
        shown.stdout
    );
}

/// A quorum is made of approvals that still stand when it is counted: an approver disabled
/// (found compromised, say), or whose `approve` ended, since approving leaves one approval
/// fewer, and one more approver does not start the request on the strength of theirs.
#[test]
fn an_approval_counts_only_while_its_approver_may_still_decide() {
    let world_with = |role: &str| {
        let w = world();
        let erin = w.env.user("erin");
        w.env
            .as_(
                "admin",
                &["assign", "bob", role, "--scope", "/prod", "-j", "x"],
            )
            .expect(0);
        (w, erin)
    };
    // A named approver, disabled after approving.
    let (w, erin) = world_with("two-of-three");
    let id = request(&w, "two-of-three", &[]);
    decide(&w, "carol", &w.carol, "approve", id, 0).expect(0);
    w.env.as_("admin", &["user", "disable", "carol"]).expect(0);
    let second = decide(&w, "dave", &w.dave, "approve", id, 0)
        .expect(0)
        .json();
    assert_eq!(second["status"], "pending", "{second}");
    w.env
        .run(&["check", "bob", "two-of-three", "--scope", "/prod"])
        .expect(1);
    let third = decide(&w, "erin", &erin, "approve", id, 0).expect(0).json();
    assert_eq!(third["status"], "active", "{third}");
    w.env
        .run(&["check", "bob", "two-of-three", "--scope", "/prod"])
        .expect(0);
    // On record: carol's approval is shown, and dave's decision counted one.
    assert_eq!(third["decisions"].as_array().unwrap().len(), 3);
    assert_eq!(
        w.env.count(&format!(
            "SELECT count(*) FROM audit_events WHERE action = 'activation.approve' AND request = {id} \
             AND actor = 'dave' AND result = 'ok' AND details LIKE '%\"approvals\":1%'"
        )),
        1
    );
    // A holder of `approve` whose role was taken away after approving.
    let (w, erin) = world_with("two-holders");
    let erin_id = request(&w, "two-holders", &[]);
    make_approver(&w, "erin", "/");
    make_approver(&w, "dave", "/");
    decide(&w, "erin", &erin, "approve", erin_id, 0).expect(0);
    w.env
        .as_("admin", &["unassign", "erin", "approver", "--active"])
        .expect(0);
    let after = decide(&w, "dave", &w.dave, "approve", erin_id, 0)
        .expect(0)
        .json();
    assert_eq!(after["status"], "pending", "{after}");
    w.env
        .run(&["check", "bob", "two-holders", "--scope", "/prod"])
        .expect(1);
}

/// An extension follows the activation rules, a ticket where the role asks for one
/// included: none is refused (on record), and the one given is kept with the extension.
#[test]
fn an_extension_of_a_role_that_requires_a_ticket_needs_one() {
    let w = world();
    w.env
        .as_(
            "admin",
            &["assign", "bob", "ticketed", "--scope", "/prod", "-j", "x"],
        )
        .expect(0);
    let args = ["--scope", "/prod", "-j", "INC-1", "--duration", "30m"];
    let r = w.env.activate("bob", &w.bob, "ticketed", &args).expect(3);
    assert!(r.stderr.contains("requires a ticket"), "{}", r.stderr);
    let mut with_ticket = args.to_vec();
    with_ticket.extend(["--ticket", "CHG-7"]);
    w.env
        .activate("bob", &w.bob, "ticketed", &with_ticket)
        .expect(0);
    let extend = |extra: &[&str]| {
        let code = oathtool(&w.bob, 30);
        let mut a = vec![
            "extend",
            "ticketed",
            "--duration",
            "1h",
            "-j",
            "INC-1 more",
            "--code",
            &code,
        ];
        a.extend_from_slice(extra);
        w.env.as_("bob", &a)
    };
    let refused = extend(&[]).expect(3);
    assert!(
        refused.stderr.contains("ticketed requires a ticket"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        w.env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'activation.request' \
             AND result != 'ok' AND details LIKE '%extends%'"
        ),
        1
    );
    extend(&["--ticket", " CHG-8 "]).expect(0);
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM requests WHERE extends IS NOT NULL AND ticket = 'CHG-8'"),
        1
    );
    assert_eq!(
        w.env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'activation.request' \
             AND result = 'ok' AND ticket = 'CHG-8' AND details LIKE '%extends%'"
        ),
        1
    );
    // A ticket of more than one line is refused, like an activation's.
    let r = extend(&["--ticket", "CHG-9\nCHG-10"]).expect(2);
    assert!(r.stderr.contains("ticket"), "{}", r.stderr);
}

/// A policy apply cancels the requests that wait (pending, or scheduled and not yet
/// started) and that the new rules of their role no longer allow: a scheduled activation
/// made when the role needed no approval, a pending one asking for longer than the role's
/// new maximum. One the new rules still allow waits on. A dry run names them and cancels
/// nothing.
#[test]
fn a_policy_apply_cancels_the_waiting_requests_its_rules_no_longer_allow() {
    let w = world();
    w.env
        .as_(
            "admin",
            &["assign", "bob", "ticketed", "--scope", "/prod", "-j", "x"],
        )
        .expect(0);
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let schedule = |role: &str, offset: i64, extra: &[&str]| {
        let code = oathtool(&w.bob, offset);
        let mut a = vec![
            "--as", "bob", "activate", role, "--scope", "/prod", "-j", "INC-1", "--start", &later,
            "--code", &code, "--json",
        ];
        a.extend_from_slice(extra);
        let r = w.env.at(&format!("+{offset}s"), &a).expect(0).json();
        assert_eq!(r["status"], "scheduled", "{r}");
        r["id"].as_i64().unwrap()
    };
    let plain = schedule("plain", 0, &["--duration", "1h"]);
    let ticketed = schedule("ticketed", 30, &["--duration", "30m", "--ticket", "CHG-1"]);
    let code = oathtool(&w.bob, 60);
    let pending = w
        .env
        .at(
            "+60s",
            &[
                "--as",
                "bob",
                "activate",
                "prod-root",
                "--scope",
                "/prod",
                "-j",
                "INC-2",
                "--duration",
                "2h",
                "--code",
                &code,
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(pending["status"], "pending", "{pending}");
    let pending = pending["id"].as_i64().unwrap();
    decide(&w, "carol", &w.carol, "approve", pending, 0).expect(0);

    let stricter = policy()
        .to_toml()
        .replace(
            "[roles.plain]\n",
            "[roles.plain]\nrequire_approval = true\napprovers = [\"carol\"]\n",
        )
        .replace(
            "max_activation = \"2h\"\nrequire_approval = true",
            "max_activation = \"1h\"\nrequire_approval = true",
        )
        .replace(
            "max_activation = \"4h\"\nrequire_ticket = true",
            "max_activation = \"1h\"\nrequire_ticket = true",
        );
    assert_eq!(
        stricter.matches("max_activation = \"1h\"").count(),
        2,
        "{stricter}"
    );
    assert!(stricter.contains("[roles.plain]\nrequire_approval = true"));
    std::fs::write(w.env.path("stricter.toml"), &stricter).unwrap();
    let dry = w
        .env
        .as_("admin", &["policy", "apply", "stricter.toml", "--dry-run"])
        .expect(0);
    assert!(
        dry.stdout.contains(&format!(
            "Would cancel request {plain} (bob for plain at /prod)"
        )),
        "{}",
        dry.stdout
    );
    assert_eq!(
        w.env
            .count("SELECT count(*) FROM requests WHERE status = 'canceled'"),
        0
    );
    let applied = w
        .env
        .as_("admin", &["policy", "apply", "stricter.toml", "--json"])
        .expect(0)
        .json();
    let canceled: Vec<(i64, String)> = applied["canceled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_i64().unwrap(),
                c["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(canceled.len(), 2, "{applied}");
    assert_eq!(canceled[0].0, plain);
    assert!(canceled[0].1.contains("not approved"), "{canceled:?}");
    assert_eq!(canceled[1].0, pending);
    assert!(
        canceled[1]
            .1
            .contains("asks for 2h, longer than prod-root may now be active (1h)"),
        "{canceled:?}"
    );
    for id in [plain, pending] {
        let r = w
            .env
            .as_("bob", &["request", "show", &id.to_string(), "--json"])
            .expect(0)
            .json();
        assert_eq!(r["status"], "canceled", "{r}");
        assert!(
            r["close_reason"]
                .as_str()
                .unwrap()
                .starts_with("canceled by a policy change"),
            "{r}"
        );
    }
    let kept = w
        .env
        .as_("bob", &["request", "show", &ticketed.to_string(), "--json"])
        .expect(0)
        .json();
    assert_eq!(kept["status"], "scheduled", "{kept}");
    assert_eq!(
        w.env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'activation.cancel' AND actor = 'admin'"
        ),
        2
    );
    // An hour on, the scheduled activation that needed no approval has not started.
    w.env
        .at("+61m", &["check", "bob", "plain", "--scope", "/prod"])
        .expect(1);
    w.env
        .at("+61m", &["check", "bob", "ticketed", "--scope", "/prod"])
        .expect(0);
    // A decision on the canceled request is a conflict; the log and the state still agree.
    decide(&w, "dave", &w.dave, "approve", pending, 0).expect(5);
    verify_state(&w, 0);
}

/// An approval never starts a request for longer than its role allows at that moment,
/// whatever the request asked for when an older rule was in force (here the stored policy
/// is changed behind pim's back, as one from before the rule above would have it).
#[test]
fn an_approval_starts_a_request_for_no_longer_than_the_role_now_allows() {
    let w = world();
    let id = request(&w, "prod-root", &["--duration", "2h"]);
    let source = policy().to_toml();
    let shorter = source.replace(
        "max_activation = \"2h\"\nrequire_approval = true",
        "max_activation = \"1h\"\nrequire_approval = true",
    );
    assert_ne!(shorter, source);
    w.env.sql(&format!(
        "UPDATE meta SET value = '{}' WHERE key = 'policy'",
        shorter.replace('\'', "''")
    ));
    decide(&w, "carol", &w.carol, "approve", id, 0).expect(0);
    let r = decide(&w, "dave", &w.dave, "approve", id, 0)
        .expect(0)
        .json();
    assert_eq!(r["status"], "active", "{r}");
    let start = chrono::DateTime::parse_from_rfc3339(r["start"].as_str().unwrap()).unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(r["end"].as_str().unwrap()).unwrap();
    assert_eq!(end - start, chrono::Duration::hours(1), "{r}");
}

/// A policy change that leaves a role's approval rules alone cancels none of its scheduled
/// requests for their approvals: one approved by a just-in-time approver whose `approve`
/// has ended since waits on. A change of the approval rules counts them again, as the new
/// rules would (an approver no longer named, or a larger quorum).
#[test]
fn an_unrelated_policy_change_keeps_a_scheduled_request_its_approver_approved() {
    let w = world();
    make_approver(&w, "carol", "/");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let r = w
        .env
        .activate(
            "bob",
            &w.bob,
            "db-admin",
            &[
                "--scope", "/prod", "-j", "INC-1", "--start", &later, "--json",
            ],
        )
        .expect(0)
        .json();
    let id = r["id"].as_i64().unwrap();
    let r = decide(&w, "carol", &w.carol, "approve", id, 0)
        .expect(0)
        .json();
    assert_eq!(r["status"], "scheduled", "{r}");
    w.env
        .as_("admin", &["unassign", "carol", "approver", "--active"])
        .expect(0);
    let source = policy().to_toml();
    let apply = |name: &str, text: String| {
        assert_ne!(text, source, "{name}");
        std::fs::write(w.env.path(name), text).unwrap();
        w.env
            .as_("admin", &["policy", "apply", name, "--json"])
            .expect(0)
            .json()
    };
    let described = apply(
        "described.toml",
        source.replace(
            "[roles.db-admin]\n",
            "[roles.db-admin]\ndescription = \"Databases\"\n",
        ),
    );
    assert_eq!(described["canceled"], serde_json::json!([]), "{described}");
    let show = || {
        w.env
            .as_("bob", &["request", "show", &id.to_string(), "--json"])
            .expect(0)
            .json()["status"]
            .clone()
    };
    assert_eq!(show(), "scheduled");
    let quorum = apply(
        "quorum.toml",
        source.replace(
            "[roles.db-admin]\n",
            "[roles.db-admin]\ndescription = \"Databases\"\nmin_approvals = 2\n",
        ),
    );
    assert_eq!(quorum["canceled"][0]["id"], id, "{quorum}");
    assert_eq!(show(), "canceled");
}

/// Where a role names no approvers, an approval was given by a holder of `approve`, checked
/// then: a change of the approval rules that the request still meets (a quorum of two made
/// one) keeps it, though both approvers' `approve` has ended since.
#[test]
fn a_quorum_made_smaller_keeps_a_request_its_ended_approvers_approved() {
    let w = world();
    let erin = w.env.user("erin");
    w.env
        .as_(
            "admin",
            &[
                "assign",
                "bob",
                "two-holders",
                "--scope",
                "/prod",
                "-j",
                "x",
            ],
        )
        .expect(0);
    make_approver(&w, "erin", "/");
    make_approver(&w, "dave", "/");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let id = w
        .env
        .activate(
            "bob",
            &w.bob,
            "two-holders",
            &[
                "--scope", "/prod", "-j", "INC-1", "--start", &later, "--json",
            ],
        )
        .expect(0)
        .json()["id"]
        .as_i64()
        .unwrap();
    decide(&w, "erin", &erin, "approve", id, 0).expect(0);
    let r = decide(&w, "dave", &w.dave, "approve", id, 0)
        .expect(0)
        .json();
    assert_eq!(r["status"], "scheduled", "{r}");
    for who in ["erin", "dave"] {
        w.env
            .as_("admin", &["unassign", who, "approver", "--active"])
            .expect(0);
    }
    let source = policy().to_toml();
    let smaller = source.replace(
        "[roles.two-holders]\nname = \"Two Holders\"\nrequire_approval = true\nmin_approvals = 2",
        "[roles.two-holders]\nname = \"Two Holders\"\nrequire_approval = true\nmin_approvals = 1",
    );
    assert_ne!(smaller, source, "{source}");
    std::fs::write(w.env.path("smaller.toml"), smaller).unwrap();
    let applied = w
        .env
        .as_("admin", &["policy", "apply", "smaller.toml", "--json"])
        .expect(0)
        .json();
    assert_eq!(applied["canceled"], serde_json::json!([]), "{applied}");
}

/// Disabling an approver cancels the activations that have not started yet and whose quorum
/// needed their approval (the approvals that stand no longer make it); one that already
/// started on that approval runs on.
#[test]
fn disabling_an_approver_cancels_the_scheduled_activations_that_needed_them() {
    let w = world();
    w.env
        .as_(
            "admin",
            &[
                "assign",
                "bob",
                "two-of-three",
                "--scope",
                "/prod",
                "-j",
                "on call",
            ],
        )
        .expect(0);
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let scheduled = request(&w, "prod-root", &["--start", &later]);
    // (bob's code of the next step: the step of the first request is used)
    let running = w
        .env
        .as_(
            "bob",
            &[
                "activate",
                "two-of-three",
                "--scope",
                "/prod",
                "-j",
                "INC-1",
                "--code",
                &oathtool(&w.bob, 30),
                "--json",
            ],
        )
        .expect(0)
        .json()["id"]
        .as_i64()
        .unwrap();
    for (who, secret) in [("carol", &w.carol), ("dave", &w.dave)] {
        // (each approver's second code is of the next step: a step is accepted once)
        for (k, id) in [scheduled, running].into_iter().enumerate() {
            decide(&w, who, secret, "approve", id, 30 * k as i64).expect(0);
        }
    }
    let show = |id: i64| {
        w.env
            .as_("bob", &["request", "show", &id.to_string(), "--json"])
            .expect(0)
            .json()
    };
    assert_eq!(show(scheduled)["status"], "scheduled");
    assert_eq!(show(running)["status"], "active");
    w.env.as_("admin", &["user", "disable", "carol"]).expect(0);
    let canceled = show(scheduled);
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    assert!(
        canceled
            .to_string()
            .contains("carol's, who is disabled now"),
        "{canceled}"
    );
    assert_eq!(show(running)["status"], "active");
    assert_eq!(
        w.env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'activation.cancel' \
             AND actor = 'admin' AND details LIKE '%disabled now%'"
        ),
        1
    );
    verify_state(&w, 0);
}

/// A request waiting for approval, or scheduled by its approval, has no event of its window
/// but the request's own: `audit verify --state` compares its row with what was asked (a
/// window moved by hand to give a role for ten years passed it), and the sweep that starts it
/// runs it no longer than its role allows, nor without a finding.
#[test]
fn a_scheduled_window_moved_by_hand_is_found_and_not_run_for_years() {
    let w = world();
    make_approver(&w, "carol", "/");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let id = request(&w, "db-admin", &["--start", &later, "--duration", "1h"]);
    verify_state(&w, 0);
    let earlier = format!("UPDATE requests SET start_at = start_at - 3 * 86400 WHERE id = {id}");
    w.env.sql(&earlier);
    let said = verify_state(&w, 1).stderr;
    assert!(
        said.contains(&format!(
            "request {id} (bob db-admin at /prod) is pending for"
        )),
        "{said}"
    );
    w.env.sql(&format!(
        "UPDATE requests SET start_at = start_at + 3 * 86400 WHERE id = {id}"
    ));
    verify_state(&w, 0);
    let r = decide(&w, "carol", &w.carol, "approve", id, 0)
        .expect(0)
        .json();
    assert_eq!(r["status"], "scheduled", "{r}");
    verify_state(&w, 0);
    w.env.sql(&earlier);
    w.env.sql(&format!(
        "UPDATE requests SET end_at = 2082758400 WHERE id = {id}"
    ));
    let said = verify_state(&w, 1).stderr;
    assert!(
        said.contains(&format!(
            "request {id} (bob db-admin at /prod) is scheduled for"
        )) && said.contains("2036-01-01T00:00:00Z"),
        "{said}"
    );
    // Started by the sweep: for db-admin's 4 hours at most, not to 2036, and the log's own
    // replay names the start that came before the start asked for.
    w.env.as_("admin", &["sweep"]).expect(0);
    let until = w
        .env
        .count(&format!("SELECT end_at FROM requests WHERE id = {id}"));
    let now = chrono::Utc::now().timestamp();
    assert!(until <= now + 4 * 3600 + 5, "{until} {now}");
    let said = verify_state(&w, 1).stderr;
    assert!(
        said.contains(&format!("request {id} (bob db-admin at /prod) started")),
        "{said}"
    );
}

/// No false finding on an honest store: a request whose end was its eligibility's, approved
/// after the eligibility was made longer, runs for the time it asked for, and `--state`
/// holds (the length asked for is not in the log then).
#[test]
fn an_activation_capped_by_an_eligibility_made_longer_since_passes_verify_state() {
    let w = world();
    make_approver(&w, "carol", "/");
    w.env
        .as_(
            "admin",
            &[
                "assign",
                "dave",
                "db-admin",
                "--scope",
                "/prod",
                "--duration",
                "1h",
                "-j",
                "x",
            ],
        )
        .expect(0);
    let r = w
        .env
        .activate(
            "dave",
            &w.dave,
            "db-admin",
            &[
                "--scope",
                "/prod",
                "-j",
                "INC-1",
                "--duration",
                "4h",
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(r["status"], "pending", "{r}");
    let id = r["id"].as_i64().unwrap();
    let until = (chrono::Utc::now() + chrono::Duration::days(40))
        .format("%Y-%m-%d")
        .to_string();
    db_admin_until(&w, "dave", &until);
    let r = decide(&w, "carol", &w.carol, "approve", id, 0)
        .expect(0)
        .json();
    assert_eq!(r["status"], "active", "{r}");
    let ends = w.env.count(&format!(
        "SELECT end_at - start_at FROM requests WHERE id = {id}"
    ));
    assert!(ends > 3 * 3600, "{ends}");
    verify_state(&w, 0);
}

/// A request short of its quorum set to scheduled by hand is named by `--state` (any one
/// approval used to pass it), and once the sweep has started it, so is its start.
#[test]
fn a_request_short_of_its_quorum_set_to_scheduled_by_hand_is_found() {
    let w = world();
    let id = request(&w, "prod-root", &["--duration", "1h"]);
    let r = decide(&w, "carol", &w.carol, "approve", id, 0)
        .expect(0)
        .json();
    assert_eq!(r["status"], "pending", "{r}");
    verify_state(&w, 0);
    w.env.sql(&format!(
        "UPDATE requests SET status = 'scheduled' WHERE id = {id}"
    ));
    let said = verify_state(&w, 1).stderr;
    assert!(
        said.contains("is scheduled but its events say pending"),
        "{said}"
    );
    w.env.as_("admin", &["sweep"]).expect(0);
    let said = verify_state(&w, 1).stderr;
    assert!(
        said.contains(&format!(
            "request {id} (bob prod-root at /prod) started without the approvals it needed"
        )),
        "{said}"
    );
}

/// An extension runs from its approval for the time it asked, whatever its row's start says
/// (a start moved twenty days on made it end twenty days later), and one pointed by hand at
/// another activation is refused when approved and named by `--state`.
#[test]
fn an_extension_moved_or_retargeted_by_hand_gives_nothing_more() {
    let w = world();
    make_approver(&w, "carol", "/");
    w.env
        .as_(
            "admin",
            &[
                "assign", "dave", "plain", "--scope", "/prod", "-j", "on call",
            ],
        )
        .expect(0);
    let activate = |who: &str, secret: &str, role: &str, offset: i64| {
        let code = oathtool(secret, offset);
        let args = [
            "--as",
            who,
            "activate",
            role,
            "--scope",
            "/prod",
            "-j",
            "INC-1",
            "--duration",
            "1h",
            "--code",
            &code,
            "--json",
        ];
        w.env.run(&args).expect(0).json()["id"].as_i64().unwrap()
    };
    let extend = |offset: i64| {
        let code = oathtool(&w.bob, offset);
        let args = [
            "--as",
            "bob",
            "extend",
            "db-admin",
            "--scope",
            "/prod",
            "-j",
            "INC-1 more",
            "--duration",
            "2h",
            "--code",
            &code,
            "--json",
        ];
        w.env.run(&args).expect(0).json()["id"].as_i64().unwrap()
    };
    let first = activate("bob", &w.bob, "db-admin", 0);
    decide(&w, "carol", &w.carol, "approve", first, 0).expect(0);
    let plain = activate("dave", &w.dave, "plain", 0);
    let ext = extend(30);
    verify_state(&w, 0);
    // Pointed at dave's activation: named, and refused when approved.
    w.env.sql(&format!(
        "UPDATE requests SET extends = {plain} WHERE id = {ext}"
    ));
    let said = verify_state(&w, 1).stderr;
    assert!(
        said.contains(&format!(
            "request {ext} (bob db-admin at /prod) extends request {plain} but its events say {first}"
        )),
        "{said}"
    );
    let r = decide(&w, "carol", &w.carol, "approve", ext, 30).expect(5);
    assert!(
        r.stderr.contains("not an activation of the same role"),
        "{}",
        r.stderr
    );
    // Back, with its start moved twenty days on: it runs from its approval for its hour.
    w.env.sql(&format!(
        "UPDATE requests SET extends = {first}, start_at = start_at + 20 * 86400 WHERE id = {ext}"
    ));
    let r = decide(&w, "carol", &w.carol, "approve", ext, 30)
        .expect(0)
        .json();
    assert_eq!(r["close_reason"], "extension applied", "{r}");
    let ends = w
        .env
        .count(&format!("SELECT end_at FROM requests WHERE id = {first}"));
    let now = chrono::Utc::now().timestamp();
    assert!(ends <= now + 2 * 3600 + 5, "{ends} {now}");
    verify_state(&w, 0);
}

/// No false finding on an honest store: an activation scheduled without approval, extended
/// once its start has passed but before a sweep recorded its start, then started by the
/// sweep, runs to the end the extension gave it.
#[test]
fn a_scheduled_activation_extended_before_the_sweep_started_it_passes_verify_state() {
    let w = world();
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let code = oathtool(&w.bob, 0);
    w.env
        .run(&[
            "--as",
            "bob",
            "activate",
            "plain",
            "--scope",
            "/prod",
            "-j",
            "INC-1",
            "--start",
            &later,
            "--duration",
            "30m",
            "--code",
            &code,
        ])
        .expect(0);
    let code = oathtool(&w.bob, 70 * 60);
    w.env
        .at(
            "+70m",
            &[
                "--as",
                "bob",
                "extend",
                "plain",
                "--scope",
                "/prod",
                "-j",
                "INC-1 more",
                "--duration",
                "2h",
                "--code",
                &code,
            ],
        )
        .expect(0);
    w.env.at("+75m", &["--as", "admin", "sweep"]).expect(0);
    w.env
        .at("+76m", &["--as", "admin", "audit", "verify", "--state"])
        .expect(0);
}

/// The approvals that count are the approvers the log holds: decision rows put in by hand
/// made a quorum of one real approval (and were taken out again), and `--state` believed the
/// count the approval's event carried.
#[test]
fn approvals_put_in_by_hand_do_not_make_a_quorum_for_verify_state() {
    let w = world();
    let id = request(&w, "prod-root", &["--duration", "1h"]);
    let forged = format!(
        "INSERT INTO decisions (request_id, approver, decision, justification, at) \
         VALUES ({id}, 'dave', 'approve', 'ok', 0)"
    );
    w.env.sql(&forged);
    let r = decide(&w, "carol", &w.carol, "approve", id, 0)
        .expect(0)
        .json();
    assert_eq!(r["status"], "active", "{r}");
    w.env.sql(&format!(
        "DELETE FROM decisions WHERE request_id = {id} AND approver = 'dave'"
    ));
    let said = verify_state(&w, 1).stderr;
    assert!(
        said.contains(&format!(
            "request {id} (bob prod-root at /prod) was approved by carol as approval 2, but the log holds 1"
        )) && said.contains("started without the approvals it needed"),
        "{said}"
    );
    // And a decision the log holds, taken out of the table (`request show` no longer shows it).
    w.env
        .sql(&format!("DELETE FROM decisions WHERE request_id = {id}"));
    let said = verify_state(&w, 1).stderr;
    assert!(
        said.contains(&format!(
            "the decision approve by carol on request {id} of the log is missing from the state"
        )),
        "{said}"
    );
}

/// An activation that rests on no eligibility (its row's link cut by hand, so that removing
/// the eligibility no longer ended it) is not held, and `--state` names the row.
#[test]
fn an_activation_cut_loose_from_its_eligibility_is_not_held() {
    let w = world();
    let code = oathtool(&w.bob, 0);
    let r = w
        .env
        .run(&[
            "--as", "bob", "activate", "plain", "--scope", "/prod", "-j", "INC-1", "--code", &code,
            "--json",
        ])
        .expect(0)
        .json();
    let id = r["id"].as_i64().unwrap();
    w.env
        .run(&["check", "bob", "plain", "--scope", "/prod"])
        .expect(0);
    w.env.sql(&format!(
        "UPDATE requests SET eligibility_id = NULL WHERE id = {id}"
    ));
    w.env
        .run(&["check", "bob", "plain", "--scope", "/prod"])
        .expect(1);
    let said = verify_state(&w, 1).stderr;
    assert!(
        said.contains(&format!(
            "request {id} (bob plain at /prod) rests on eligibility none but its events say"
        )),
        "{said}"
    );
}

/// A request capped by its eligibility is held to the length it asked for before the cap (its
/// event says it now): approved and scheduled after the eligibility was made longer, its row
/// set to run thirty days passed `--state`.
#[test]
fn a_capped_request_is_held_to_the_length_it_asked_for() {
    let w = world();
    make_approver(&w, "carol", "/");
    w.env
        .as_(
            "admin",
            &[
                "assign",
                "dave",
                "db-admin",
                "--scope",
                "/prod",
                "--duration",
                "40m",
                "-j",
                "x",
            ],
        )
        .expect(0);
    let later = (chrono::Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
    let r = w
        .env
        .activate(
            "dave",
            &w.dave,
            "db-admin",
            &[
                "--scope",
                "/prod",
                "-j",
                "INC-1",
                "--start",
                &later,
                "--duration",
                "2h",
                "--json",
            ],
        )
        .expect(0)
        .json();
    let id = r["id"].as_i64().unwrap();
    let until = (chrono::Utc::now() + chrono::Duration::days(10))
        .format("%Y-%m-%d")
        .to_string();
    db_admin_until(&w, "dave", &until);
    let r = decide(&w, "carol", &w.carol, "approve", id, 0)
        .expect(0)
        .json();
    assert_eq!(r["status"], "scheduled", "{r}");
    verify_state(&w, 0);
    w.env.sql(&format!(
        "UPDATE requests SET end_at = start_at + 30 * 86400, duration_secs = 30 * 86400 WHERE id = {id}"
    ));
    let said = verify_state(&w, 1).stderr;
    assert!(
        said.contains(&format!(
            "request {id} (dave db-admin at /prod) is scheduled for"
        )),
        "{said}"
    );
}

/// No false finding on an honest store: a request approved for a later start, its end capped
/// by an eligibility shortened before the approval, that no sweep saw start (the next one
/// found it over) is held to the window it asked for, not to the end it asked.
#[test]
fn an_approved_window_that_ended_before_any_sweep_passes_verify_state() {
    let w = world();
    make_approver(&w, "carol", "/");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let id = request(&w, "db-admin", &["--start", &later, "--duration", "2h"]);
    let until = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    db_admin_until(&w, "bob", &until);
    let r = decide(&w, "carol", &w.carol, "approve", id, 0)
        .expect(0)
        .json();
    assert_eq!(r["status"], "scheduled", "{r}");
    w.env.at("+4h", &["--as", "admin", "sweep"]).expect(0);
    assert_eq!(
        w.env.count(&format!(
            "SELECT count(*) FROM requests WHERE id = {id} AND status = 'expired'"
        )),
        1
    );
    w.env
        .at("+4h", &["--as", "admin", "audit", "verify", "--state"])
        .expect(0);
}

/// A request short of its quorum set to scheduled by hand, left to end before any sweep saw
/// it start (it was held all the while), is named once the sweep has ended it.
#[test]
fn a_request_short_of_its_quorum_that_ran_unseen_is_found() {
    let w = world();
    let id = request(&w, "prod-root", &["--duration", "1h"]);
    decide(&w, "carol", &w.carol, "approve", id, 0).expect(0);
    w.env.sql(&format!(
        "UPDATE requests SET status = 'scheduled' WHERE id = {id}"
    ));
    w.env
        .run(&["check", "bob", "prod-root", "--scope", "/prod"])
        .expect(0);
    w.env.at("+2h", &["--as", "admin", "sweep"]).expect(0);
    let said = w
        .env
        .at("+2h", &["--as", "admin", "audit", "verify", "--state"])
        .expect(1)
        .stderr;
    assert!(
        said.contains(&format!(
            "request {id} (bob prod-root at /prod) ran without the approvals it needed"
        )),
        "{said}"
    );
}
