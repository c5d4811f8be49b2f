//! `pim alerts`: each rule, its thresholds from `[alerts]`, and `--fail-on` for CI gates.

use crate::support;

use support::{oathtool, Env, Policy};

fn policy() -> Policy {
    Policy::new()
        .section(
            "alerts",
            &[
                "max_protected_holders = 1",
                "min_break_glass = 2",
                "unused_after = \"1d\"",
                "frequent_activations = 1",
                "frequent_window = \"1d\"",
            ],
        )
        .role(
            "helpdesk",
            "Helpdesk",
            &["permissions = [\"users\"]", "require_mfa = false"],
        )
        .role(
            "plain",
            "Plain",
            &[
                "require_justification = false",
                "max_active = \"permanent\"",
            ],
        )
}

fn ids(env: &Env, extra: &[&str]) -> Vec<(String, String)> {
    let mut args = vec!["--as", "admin", "alerts", "--json"];
    args.extend_from_slice(extra);
    let j = env.run(&args).expect(0).json();
    j.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            for key in ["id", "severity", "roles", "users", "message", "remedy"] {
                assert!(a.get(key).is_some(), "{key} missing in {a}");
            }
            (
                a["id"].as_str().unwrap().to_string(),
                a["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn has(list: &[(String, String)], id: &str, severity: &str) -> bool {
    list.iter().any(|(i, s)| i == id && s == severity)
}

#[test]
fn each_rule_fires_on_its_condition() {
    let env = Env::new();
    env.init_with(&policy());
    let first = ids(&env, &[]);
    assert!(has(&first, "too-few-break-glass", "critical"), "{first:?}");
    assert!(has(&first, "role-without-mfa", "warning"), "{first:?}");
    assert!(!first.iter().any(|(i, _)| i == "too-many-protected-holders"));
    env.as_("admin", &["alerts", "--fail-on", "critical", "-q"])
        .expect(1);

    // A second permanent holder fixes break-glass, and is one more than max_protected_holders.
    env.user("carol");
    env.as_(
        "admin",
        &[
            "assign",
            "carol",
            "global-admin",
            "--active",
            "--permanent",
            "-j",
            "break glass",
        ],
    )
    .expect(0);
    let now = ids(&env, &[]);
    assert!(
        !now.iter().any(|(i, _)| i == "too-few-break-glass"),
        "{now:?}"
    );
    assert!(
        has(&now, "too-many-protected-holders", "warning"),
        "{now:?}"
    );

    // Standing access: a permanent active assignment of a role that is not protected.
    env.user("dave");
    env.as_(
        "admin",
        &[
            "assign",
            "dave",
            "plain",
            "--active",
            "--permanent",
            "-j",
            "x",
        ],
    )
    .expect(0);
    assert!(has(&ids(&env, &[]), "standing-access", "warning"));

    // Eligible for a role that needs MFA, with no authenticator.
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    env.as_("admin", &["assign", "bob", "plain", "-j", "x"])
        .expect(0);
    let j = env.as_("admin", &["alerts", "--json"]).expect(0).json();
    let mfa = j
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "mfa-not-enrolled")
        .unwrap()
        .clone();
    assert_eq!(mfa["users"], serde_json::json!(["bob"]));

    // Frequent activation: eve activates plain twice in a day (threshold 1).
    let eve = env.user("eve");
    env.as_("admin", &["assign", "eve", "plain", "-j", "x"])
        .expect(0);
    env.as_(
        "eve",
        &[
            "activate",
            "plain",
            "--duration",
            "30m",
            "--code",
            &oathtool(&eve, 0),
        ],
    )
    .expect(0);
    env.as_("eve", &["deactivate", "plain"]).expect(0);
    assert!(!ids(&env, &[])
        .iter()
        .any(|(i, _)| i == "frequent-activation"));
    env.as_(
        "eve",
        &[
            "activate",
            "plain",
            "--duration",
            "30m",
            "--code",
            &oathtool(&eve, 30),
        ],
    )
    .expect(0);
    let j = env.as_("admin", &["alerts", "--json"]).expect(0).json();
    let freq = j
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "frequent-activation")
        .unwrap()
        .clone();
    assert_eq!(freq["users"], serde_json::json!(["eve"]));

    // Unused eligibility: two days later, bob never activated plain (eve did, a day ago).
    let later = env
        .at("+2d", &["--as", "admin", "alerts", "--json"])
        .expect(0)
        .json();
    let unused = later
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "unused-eligibility")
        .unwrap()
        .clone();
    assert_eq!(unused["severity"], "info");
    assert!(unused["users"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("bob")));

    // --fail-on: warnings fail a warning gate; info does not fail anything.
    env.as_("admin", &["alerts", "--fail-on", "warning", "-q"])
        .expect(1);
    let human = env.as_("admin", &["alerts"]).expect(0);
    assert!(
        human.stdout.contains("frequent-activation"),
        "{}",
        human.stdout
    );
}

#[test]
fn a_clean_setup_passes_the_gate() {
    let env = Env::new();
    env.init_with(&Policy::new());
    env.user("carol");
    env.as_(
        "admin",
        &[
            "assign",
            "carol",
            "global-admin",
            "--active",
            "--permanent",
            "-j",
            "break glass",
        ],
    )
    .expect(0);
    assert_eq!(ids(&env, &[]), vec![]);
    env.as_("admin", &["alerts", "--fail-on", "info"]).expect(0);
    let human = env.as_("admin", &["alerts"]).expect(0);
    assert!(human.stdout.contains("No alerts"));
}

#[test]
fn bad_alert_thresholds_are_policy_errors() {
    let env = Env::new();
    std::fs::write(env.path("bad.toml"), "[alerts]\nmin_break_glass = 0\n").unwrap();
    let r = env.run(&["policy", "validate", "bad.toml"]).expect(2);
    assert!(
        r.stderr.contains("line 2") && r.stderr.contains("min_break_glass"),
        "{}",
        r.stderr
    );
    std::fs::write(env.path("bad.toml"), "[alerts]\nunused_after = \"soon\"\n").unwrap();
    env.run(&["policy", "validate", "bad.toml"]).expect(2);
    std::fs::write(env.path("bad.toml"), "[alerts]\nnoise = 1\n").unwrap();
    env.run(&["policy", "validate", "bad.toml"]).expect(2);
}
