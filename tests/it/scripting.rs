//! Scripts and CI: nothing prompts without a terminal, every --json output parses (lists are
//! arrays), completions and man pages.

use crate::support;

use std::time::{Duration, Instant};
use support::{oathtool, Env};

#[test]
fn every_json_output_parses_and_lists_are_arrays() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "team"])
        .expect(0);
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "-j",
            "INC-1",
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
        ],
    )
    .expect(0);
    let lists: &[&[&str]] = &[
        &["user", "list"],
        &["role", "list"],
        &["assignment", "list"],
        &["request", "list", "--all"],
        &["audit", "list"],
        &["review", "list"],
        &["alerts"],
        &["notification", "list"],
    ];
    for args in lists {
        let mut all = vec!["--as", "admin", "--json"];
        all.extend_from_slice(args);
        let j = env.run(&all).expect(0).json();
        assert!(j.is_array(), "{args:?} gave {j}");
    }
    let objects: &[&[&str]] = &[
        &["user", "show", "bob"],
        &["role", "show", "db-admin"],
        &["status", "bob"],
        &["check", "bob", "db-admin"],
        &["request", "show", "1"],
        &["review", "show", "1"],
        &["policy", "export"],
        &["audit", "verify"],
        &["sweep"],
    ];
    for args in objects {
        let mut all = vec!["--as", "admin", "--json"];
        all.extend_from_slice(args);
        let j = env.run(&all).expect(0).json();
        assert!(j.is_object(), "{args:?} gave {j}");
    }
}

#[test]
fn without_a_terminal_nothing_prompts_or_hangs() {
    let env = Env::new();
    env.init();
    env.user("bob");
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "team"])
        .expect(0);
    // stdin is /dev/null in these runs; a prompt would fail or hang instead of exit 3.
    let started = Instant::now();
    let r = env.as_("bob", &["activate", "db-admin"]).expect(3);
    assert!(r.stderr.contains("justification"), "{}", r.stderr);
    env.as_("bob", &["activate", "db-admin", "-j", "x"])
        .expect(3);
    env.as_("admin", &["assign", "bob", "user-admin"]).expect(3);
    // A pipe that stays open is not a terminal either.
    let mut child = env
        .command(&["--as", "bob", "activate", "db-admin", "-j", "x"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "pim waited for input"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(3));
}

/// `source <(COMPLETE=bash pim)`: candidates from the database, as the caller may see them;
/// and COMPLETE set around a real command changes nothing.
#[test]
fn dynamic_completions_offer_roles_users_scopes_and_requests() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.as_(
        "admin",
        &["assign", "bob", "db-admin", "--scope", "/prod", "-j", "x"],
    )
    .expect(0);
    let complete = |who: &str, index: &str, words: &[&str]| {
        let mut c = env.command(&[]);
        c.env("COMPLETE", "bash")
            .env("_CLAP_IFS", "\n")
            .env("_CLAP_COMPLETE_INDEX", index)
            .env("PIM_USER", who)
            .arg("--")
            .args(words);
        let r: support::Run = c.output().unwrap().into();
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.stdout.lines().map(str::to_string).collect::<Vec<_>>()
    };
    let roles = complete("bob", "2", &["pim", "activate", ""]);
    assert!(roles.contains(&"db-admin".to_string()), "{roles:?}");
    assert!(roles.contains(&"global-admin".to_string()), "{roles:?}");
    let scopes = complete("bob", "4", &["pim", "activate", "db-admin", "--scope", ""]);
    assert!(scopes.contains(&"/prod".to_string()), "{scopes:?}");
    // An administrator is offered every user; bob only himself.
    let users = complete("admin", "2", &["pim", "status", ""]);
    assert!(users.contains(&"bob".to_string()) && users.contains(&"admin".to_string()));
    let users = complete("bob", "2", &["pim", "status", ""]);
    assert!(
        users.contains(&"bob".to_string()) && !users.contains(&"admin".to_string()),
        "{users:?}"
    );
    let id = env
        .activate("bob", &bob, "db-admin", &["-j", "x", "--json"])
        .expect(0)
        .json()["id"]
        .to_string();
    let ids = complete("bob", "3", &["pim", "request", "show", ""]);
    assert!(ids.contains(&id), "{ids:?}");
    // A gate is still a gate with COMPLETE set.
    let mut c = env.command(&["check", "bob", "global-admin"]);
    c.env("COMPLETE", "bash");
    let r: support::Run = c.output().unwrap().into();
    assert_eq!(r.code, 1, "{}", r.stdout);
    let r = env.run(&["completions", "--help"]).expect(0);
    assert!(
        r.stdout.contains("source <(COMPLETE=bash pim)"),
        "{}",
        r.stdout
    );
}

#[test]
fn completions_and_man_pages() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish"] {
        let r = env.run(&["completions", shell]).expect(0);
        assert!(
            r.stdout.contains("activate") && r.stdout.contains("assignment"),
            "{shell}"
        );
    }
    env.run(&["completions", "tcsh"]).expect(2);
    env.run(&["man", "--output", "man"]).expect(0);
    let page = std::fs::read_to_string(env.path("man/pim-assignment-import.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("dry\\-run"), "{page}");
    assert!(env.path("man/pim.1").exists());
    assert!(env.path("man/pim-review-decide.1").exists());
    // Every command's page (not the groups') has EXAMPLES; every page has EXIT STATUS.
    let groups = [
        "pim-user",
        "pim-mfa",
        "pim-role",
        "pim-policy",
        "pim-assignment",
        "pim-request",
        "pim-audit",
        "pim-review",
        "pim-notification",
        "pim-store",
    ];
    let mut pages = 0;
    for entry in std::fs::read_dir(env.path("man")).unwrap() {
        let path = entry.unwrap().path();
        let page = std::fs::read_to_string(&path).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        assert!(page.contains(".SH \"EXIT STATUS\""), "{name}");
        assert!(page.contains("refused: not permitted"), "{name}");
        if !groups.contains(&name.as_str()) {
            assert!(page.contains(".SH EXAMPLES"), "{name} has no examples");
        }
        pages += 1;
    }
    assert!(pages > 60, "{pages}");
    let page = std::fs::read_to_string(env.path("man/pim-activate.1")).unwrap();
    assert!(page.contains("pim activate db\\-admin \\-j"), "{page}");
}
