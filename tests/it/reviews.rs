//! Access reviews through the binary: recommendations, who decides, completion with the
//! default, protection of the last holder, sweep and recurrence, and the CSV export.

use crate::support;

use support::{oathtool, Env};

/// bob, carol and dave, eligible for db-admin at /prod for 31 days (so that disuse counts).
fn setup() -> Env {
    let env = Env::new();
    env.at("-31d", &["init", "--admin", "admin"]).expect(0);
    for name in ["bob", "carol", "dave"] {
        env.at("-31d", &["--as", "admin", "user", "add", name])
            .expect(0);
        env.at(
            "-31d",
            &[
                "--as", "admin", "assign", name, "db-admin", "--scope", "/prod", "-j", "team",
            ],
        )
        .expect(0);
    }
    env
}

/// An assignment younger than 30 days is "keep: new", not "unused for 30 days" (issue 11).
#[test]
fn a_new_assignment_is_recommended_to_keep() {
    let env = setup();
    env.at("-3d", &["--as", "admin", "user", "add", "erin"])
        .expect(0);
    env.at(
        "-3d",
        &[
            "--as", "admin", "assign", "erin", "db-admin", "--scope", "/prod", "-j", "team",
        ],
    )
    .expect(0);
    let r = env
        .as_(
            "admin",
            &[
                "review",
                "create",
                "--role",
                "db-admin",
                "--reviewer",
                "admin",
                "--json",
            ],
        )
        .expect(0)
        .json();
    let item = |u: &str| {
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["user"] == u)
            .unwrap()
            .clone()
    };
    assert_eq!(item("erin")["recommendation"], "keep", "{r}");
    assert!(
        item("erin")["reason"]
            .as_str()
            .unwrap()
            .starts_with("new: assigned 3 day(s) ago"),
        "{r}"
    );
    assert_eq!(item("carol")["recommendation"], "remove", "{r}");
}

#[test]
fn a_quarterly_review_keeps_removes_and_applies_the_default() {
    let env = setup();
    // bob used the role recently; carol and dave never did.
    let bob = env.enrol("bob");
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
    let r = env
        .as_(
            "admin",
            &[
                "review",
                "create",
                "--role",
                "db-admin",
                "--reviewer",
                "admin",
                "--every",
                "quarterly",
                "--name",
                "Q4 DBAs",
                "--json",
            ],
        )
        .expect(0)
        .json();
    let id = r["id"].to_string();
    let items = r["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for key in [
        "user",
        "role",
        "scope",
        "type",
        "recommendation",
        "decision",
        "reviewer",
        "justification",
    ] {
        assert!(items[0].get(key).is_some(), "{key}");
    }
    let rec =
        |user: &str| items.iter().find(|i| i["user"] == user).unwrap()["recommendation"].clone();
    assert_eq!(rec("bob"), "keep");
    assert_eq!(rec("carol"), "remove");
    assert_eq!(rec("dave"), "remove");

    // Only the named reviewer decides. Someone who may not see the review learns nothing of
    // it from trying (not that it is there, nor its reviewers): exit 4, as for no review.
    let nosy = env
        .as_(
            "carol",
            &["review", "decide", &id, "carol", "keep", "-j", "I need it"],
        )
        .expect(4);
    let none = env
        .as_(
            "carol",
            &[
                "review",
                "decide",
                "999",
                "carol",
                "keep",
                "-j",
                "I need it",
            ],
        )
        .expect(4);
    assert_eq!(
        nosy.stderr.replace(&id, "N"),
        none.stderr.replace("999", "N")
    );
    assert!(!nosy.stderr.contains("admin"), "{}", nosy.stderr);
    // Nor from trying to complete it: not its role, nor whether it is still open.
    let no_review = env.as_("carol", &["review", "complete", "999"]).expect(4);
    let early = env.as_("carol", &["review", "complete", &id]).expect(4);
    assert_eq!(
        early.stderr.replace(&id, "N"),
        no_review.stderr.replace("999", "N")
    );
    env.as_(
        "admin",
        &["review", "decide", &id, "bob", "keep", "-j", "on call"],
    )
    .expect(0);
    env.as_(
        "admin",
        &[
            "review",
            "decide",
            &id,
            "carol",
            "keep",
            "-j",
            "first thought",
        ],
    )
    .expect(0);
    // A decision can change until completion.
    let changed = env
        .as_(
            "admin",
            &[
                "review",
                "decide",
                &id,
                "carol",
                "remove",
                "-j",
                "left the team",
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(changed["decided"], 2);
    env.as_(
        "admin",
        &["review", "decide", &id, "ghost", "keep", "-j", "x"],
    )
    .expect(4);
    let list = env
        .as_("admin", &["review", "list", "--json"])
        .expect(0)
        .json();
    assert_eq!(list[0]["decided"], 2);
    assert_eq!(list[0]["total"], 3);

    let done = env
        .as_("admin", &["review", "complete", &id, "--json"])
        .expect(0)
        .json();
    assert_eq!(done["state"], "completed");
    // Completed before its end: it says when it was completed, not when it would have ended.
    let completed = done["completed"].as_str().unwrap();
    assert!(completed < done["end"].as_str().unwrap(), "{done}");
    let shown = env.as_("admin", &["review", "show", &id]).expect(0).stdout;
    let first = shown.lines().next().unwrap();
    assert!(
        first.contains("completed (2 of 3 decided), at ") && !first.contains("(in "),
        "{first}"
    );
    let result = |user: &str| {
        done["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["user"] == user)
            .unwrap()
            .clone()
    };
    assert_eq!(result("bob")["result"], "kept");
    assert_eq!(result("carol")["result"], "removed");
    assert_eq!(result("dave")["applied"], "remove");
    assert_eq!(result("dave")["result"], "removed");
    env.as_("admin", &["review", "complete", &id]).expect(5);
    let late = env.as_("carol", &["review", "complete", &id]).expect(4);
    assert_eq!(late.stderr, early.stderr);
    env.as_(
        "admin",
        &["review", "decide", &id, "bob", "remove", "-j", "late"],
    )
    .expect(5);
    let left = env
        .as_(
            "admin",
            &[
                "assignment",
                "list",
                "--role",
                "db-admin",
                "--eligible",
                "--json",
            ],
        )
        .expect(0)
        .json();
    let users: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, vec!["bob"]);
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'review.decide' AND result = 'ok'"
        ),
        3
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'review.decide' AND result != 'ok'"
        ),
        2,
        "the refused decisions are on record"
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'review.complete' AND result = 'ok'"
        ),
        1
    );
    // carol's three attempts are on record, with the number she gave and nothing else of it.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'review.complete' AND result != 'ok' AND role IS NULL AND scope IS NULL"
        ),
        3
    );

    // The export reads back with the csv crate.
    env.as_(
        "admin",
        &["review", "export", &id, "--output", "review.csv"],
    )
    .expect(0);
    let mut reader = csv::Reader::from_path(env.path("review.csv")).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(header.join(","), "review,user,role,scope,type,recommendation,decision,reviewer,justification,decided_at,applied,result");
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    let carol = rows.iter().find(|r| &r[1] == "carol").unwrap();
    assert_eq!(&carol[6], "remove");
    assert_eq!(&carol[8], "left the team");
    assert_eq!(&carol[11], "removed");
    // What the review removed is what the log says.
    env.as_("admin", &["audit", "verify", "--state"]).expect(0);
}

#[test]
fn self_reviews_let_each_user_decide_only_for_themselves() {
    let env = setup();
    let r = env
        .as_(
            "admin",
            &[
                "review",
                "create",
                "--role",
                "db-admin",
                "--self",
                "--default",
                "keep",
                "--json",
            ],
        )
        .expect(0)
        .json();
    let id = r["id"].to_string();
    env.as_(
        "bob",
        &[
            "review",
            "decide",
            &id,
            "bob",
            "remove",
            "-j",
            "do not need it",
        ],
    )
    .expect(0);
    env.as_(
        "bob",
        &["review", "decide", &id, "carol", "remove", "-j", "nosy"],
    )
    .expect(3);
    env.as_(
        "admin",
        &["review", "decide", &id, "carol", "remove", "-j", "admin"],
    )
    .expect(3);
    // Only the creator or a holder of `review` completes it.
    env.as_("bob", &["review", "complete", &id]).expect(3);
    let done = env
        .as_("admin", &["review", "complete", &id, "--json"])
        .expect(0)
        .json();
    let removed: Vec<&str> = done["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["result"] == "removed")
        .map(|i| i["user"].as_str().unwrap())
        .collect();
    assert_eq!(removed, vec!["bob"]);
}

#[test]
fn creating_a_review_needs_the_review_permission_and_valid_reviewers() {
    let env = setup();
    env.as_("bob", &["review", "create", "--role", "db-admin", "--self"])
        .expect(3);
    env.as_("admin", &["review", "create", "--role", "nope", "--self"])
        .expect(4);
    env.as_(
        "admin",
        &[
            "review",
            "create",
            "--role",
            "db-admin",
            "--reviewer",
            "ghost",
        ],
    )
    .expect(4);
    env.as_("admin", &["review", "create", "--role", "db-admin"])
        .expect(2);
    env.as_(
        "admin",
        &[
            "review", "create", "--role", "db-admin", "--self", "--every", "hourly",
        ],
    )
    .expect(2);
    // A recurring review runs for less than its period: two of one series at once would
    // decide the same assignments twice.
    let before = env.count("SELECT count(*) FROM reviews");
    for duration in ["7d", "30d"] {
        let r = env
            .as_(
                "admin",
                &[
                    "review",
                    "create",
                    "--role",
                    "db-admin",
                    "--self",
                    "--every",
                    "weekly",
                    "--duration",
                    duration,
                ],
            )
            .expect(2);
        assert!(r.stderr.contains("shorter --duration"), "{}", r.stderr);
    }
    assert_eq!(env.count("SELECT count(*) FROM reviews"), before);
    env.as_(
        "admin",
        &[
            "review",
            "create",
            "--role",
            "db-admin",
            "--self",
            "--every",
            "weekly",
            "--duration",
            "6d",
        ],
    )
    .expect(0);
    env.as_("admin", &["review", "show", "99"]).expect(4);
}

#[test]
fn the_last_protected_holder_is_kept_and_says_why() {
    let env = setup();
    let r = env
        .as_(
            "admin",
            &[
                "review",
                "create",
                "--role",
                "global-admin",
                "--reviewer",
                "carol",
                "--default",
                "remove",
                "--json",
            ],
        )
        .expect(0)
        .json();
    let id = r["id"].to_string();
    let done = env
        .as_("admin", &["review", "complete", &id, "--json"])
        .expect(0)
        .json();
    let item = &done["items"][0];
    assert_eq!(item["applied"], "remove");
    assert!(
        item["result"].as_str().unwrap().contains("last holder"),
        "{item}"
    );
    env.run(&["check", "admin", "global-admin"]).expect(0);
}

#[test]
fn a_disabled_user_is_recommended_for_removal() {
    let env = setup();
    env.as_("admin", &["user", "disable", "dave"]).expect(0);
    let r = env
        .as_(
            "admin",
            &[
                "review",
                "create",
                "--role",
                "db-admin",
                "--reviewer",
                "admin",
                "--json",
            ],
        )
        .expect(0)
        .json();
    let dave = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["user"] == "dave")
        .unwrap()
        .clone();
    assert_eq!(dave["recommendation"], "remove");
    assert_eq!(dave["reason"], "the user is disabled");
}

#[test]
fn sweep_completes_due_reviews_and_starts_the_next_of_a_recurring_one() {
    let env = setup();
    let r = env
        .as_(
            "admin",
            &[
                "review",
                "create",
                "--role",
                "db-admin",
                "--reviewer",
                "admin",
                "--every",
                "quarterly",
                "--default",
                "keep",
                "--json",
            ],
        )
        .expect(0)
        .json();
    let id = r["id"].as_i64().unwrap();
    let s = env.at("+10d", &["sweep", "--json"]).expect(0).json();
    assert_eq!(s["reviews_completed"], serde_json::json!([]));
    let s = env.at("+15d", &["sweep", "--json"]).expect(0).json();
    assert_eq!(s["reviews_completed"], serde_json::json!([id]));
    let s = env.at("+16d", &["sweep", "--json"]).expect(0).json();
    assert_eq!(s["reviews_completed"], serde_json::json!([]));
    let s = env.at("+92d", &["sweep", "--json"]).expect(0).json();
    assert_eq!(s["reviews_started"].as_array().unwrap().len(), 1);
    let s = env.at("+93d", &["sweep", "--json"]).expect(0).json();
    assert_eq!(s["reviews_started"], serde_json::json!([]));
    let list = env
        .as_("admin", &["review", "list", "--json"])
        .expect(0)
        .json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["total"], 3);
    env.run(&["audit", "verify", "--state"]).expect(0);
}

#[test]
fn a_removal_ends_the_activation_resting_on_it_and_the_export_is_spreadsheet_safe() {
    let env = setup();
    let carol = env.enrol("carol");
    env.as_(
        "carol",
        &[
            "activate",
            "db-admin",
            "--scope",
            "/prod",
            "-j",
            "INC-3",
            "--code",
            &oathtool(&carol, 0),
        ],
    )
    .expect(0);
    env.run(&["check", "carol", "db-admin", "--scope", "/prod"])
        .expect(0);
    let r = env
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
                "keep",
                "--json",
            ],
        )
        .expect(0)
        .json();
    let id = r["id"].to_string();
    env.as_(
        "admin",
        &[
            "review",
            "decide",
            &id,
            "carol",
            "remove",
            "-j",
            "=HYPERLINK(\"http://x\")",
        ],
    )
    .expect(0);
    env.as_("admin", &["review", "complete", &id]).expect(0);
    env.run(&["check", "carol", "db-admin", "--scope", "/prod"])
        .expect(1);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'activation.revoke'"),
        1
    );
    let csv_text = env
        .as_("admin", &["review", "export", &id])
        .expect(0)
        .stdout;
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let carol_row = reader
        .records()
        .map(Result::unwrap)
        .find(|r| &r[1] == "carol")
        .unwrap();
    assert_eq!(&carol_row[8], "'=HYPERLINK(\"http://x\")");
}

/// A reviewer who is under review too does not keep their own access (another reviewer
/// decides, or the default does), and once the review's time is up it takes no more
/// decisions: what was left gets its default when it completes.
#[test]
fn a_reviewer_decides_nothing_of_their_own_nor_after_the_review_closed() {
    let env = setup();
    let id = env
        .as_(
            "admin",
            &[
                "review",
                "create",
                "--role",
                "db-admin",
                "--scope",
                "/prod",
                "--reviewer",
                "carol",
                "--reviewer",
                "dave",
                "--default",
                "remove",
                "--duration",
                "1d",
                "--json",
            ],
        )
        .expect(0)
        .json()["id"]
        .to_string();
    let r = env
        .as_(
            "carol",
            &[
                "review",
                "decide",
                &id,
                "carol",
                "keep",
                "-j",
                "I still need it",
            ],
        )
        .expect(3);
    assert!(r.stderr.contains("your own access"), "{}", r.stderr);
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'review.decide' AND result != 'ok'"
        ),
        1
    );
    env.as_(
        "dave",
        &[
            "review",
            "decide",
            &id,
            "carol",
            "keep",
            "-j",
            "she is on call",
        ],
    )
    .expect(0);
    // A day and more on: closed, not yet completed.
    let late = env
        .at(
            "+25h",
            &[
                "--as", "carol", "review", "decide", &id, "dave", "keep", "-j", "late",
            ],
        )
        .expect(5);
    assert!(
        late.stderr.contains("takes no more decisions"),
        "{}",
        late.stderr
    );
    let done = env
        .at(
            "+25h",
            &["--as", "admin", "review", "complete", &id, "--json"],
        )
        .expect(0)
        .json();
    let result = |user: &str| {
        done["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["user"] == user)
            .unwrap()["result"]
            .clone()
    };
    assert_eq!(result("carol"), "kept");
    assert_eq!(result("dave"), "removed");
}
