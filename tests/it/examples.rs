//! The files in examples/ work as shipped: the PAM helper (driven through pamtester where the
//! tests run as root), the assignment files, the quick-start script's pieces.

use crate::support;

use support::{have, oathtool, Env};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Removes the PAM service file when the test ends, pass or fail.
struct PamService(std::path::PathBuf);

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn pam_exec_lets_the_stack_through_only_while_the_role_is_held() {
    if unsafe { libc::getuid() } != 0 || !have("pamtester") {
        eprintln!("skipped: needs root and pamtester (apt-get install pamtester), as in CI");
        return;
    }
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "dba"])
        .expect(0);
    // The PAM environment, which pam_exec passes on and pam_env may let a user fill, names
    // another database, where bob holds the role: the helper takes its settings from its
    // arguments only.
    let theirs = Env::new();
    theirs.init();
    theirs.as_("admin", &["user", "add", "bob"]).expect(0);
    theirs
        .as_(
            "admin",
            &[
                "assign",
                "bob",
                "db-admin",
                "--active",
                "--duration",
                "1d",
                "-j",
                "x",
            ],
        )
        .expect(0);
    theirs.run(&["check", "bob", "db-admin"]).expect(0);
    let envfile = env.path("pam-env");
    std::fs::write(
        &envfile,
        format!(
            "PIM_DB={}\nPIM_BIN={}\nPIM_SUDO_ROLE=db-admin\nPIM_USER=bob\n",
            theirs.db.display(),
            support::bin()
        ),
    )
    .unwrap();
    let service = format!("pim-test-{}", std::process::id());
    let file = PamService(std::path::PathBuf::from(format!("/etc/pam.d/{service}")));
    std::fs::write(
        &file.0,
        format!(
            "auth required pam_env.so readenv=1 envfile={}\n\
             auth required pam_exec.so quiet {REPO}/examples/pam/pim-sudo-check --bin {} --db {} --role db-admin\n\
             account required pam_permit.so\n",
            envfile.display(),
            support::bin(),
            env.db.display()
        ),
    )
    .unwrap();
    let pamtester = |user: &str| {
        std::process::Command::new("pamtester")
            // (pam_env sets its variables at setcred; they stay for the authentication)
            .args([service.as_str(), user, "setcred", "authenticate"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let before = pamtester("bob");
    assert!(
        !before.status.success(),
        "let through without the role: {before:?}"
    );
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "-j",
            "INC-8",
            "--code",
            &oathtool(&bob, 0),
        ],
    )
    .expect(0);
    let during = pamtester("bob");
    assert!(
        during.status.success(),
        "refused while held: {}",
        String::from_utf8_lossy(&during.stderr)
    );
    assert!(
        !pamtester("carol").status.success(),
        "someone else got through"
    );
    env.as_("bob", &["deactivate", "db-admin"]).expect(0);
    assert!(
        !pamtester("bob").status.success(),
        "let through after deactivation"
    );
}

#[test]
fn the_example_assignment_files_apply_and_import() {
    let env = Env::new();
    env.init();
    for user in ["bob", "carol"] {
        env.as_("admin", &["user", "add", user]).expect(0);
    }
    env.as_("admin", &["user", "add", "deploy-bot", "--service"])
        .expect(0);
    // The example's fixed `until` date is moved to 200 days from now, so the test keeps
    // passing as the calendar moves on.
    let text = std::fs::read_to_string(format!("{REPO}/examples/assignments.toml")).unwrap();
    let until = (chrono::Utc::now() + chrono::Duration::days(200))
        .format("%Y-%m-%d")
        .to_string();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("until = ") {
                format!("until = \"{until}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(env.path("assignments.toml"), text).unwrap();
    let plan = env
        .as_(
            "admin",
            &[
                "assignment",
                "apply",
                "assignments.toml",
                "--dry-run",
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(plan["add"].as_array().unwrap().len(), 3, "{plan}");
    let csv = std::fs::read_to_string(format!("{REPO}/examples/assignments.csv"))
        .unwrap()
        .replace("2027-06-30", &until);
    std::fs::write(env.path("assignments.csv"), csv).unwrap();
    let summary = env
        .as_(
            "admin",
            &[
                "assignment",
                "import",
                "assignments.csv",
                "--dry-run",
                "--json",
            ],
        )
        .expect(0)
        .json();
    assert_eq!(summary["added"], 3);
}

#[test]
fn the_repository_policy_validates() {
    let env = Env::new();
    env.run(&["policy", "validate", &format!("{REPO}/policies.toml")])
        .expect(0);
}

/// The README's first command: pim's main job on the default database of a fresh account.
#[test]
fn the_quickstart_runs_on_a_fresh_account() {
    let home = crate::support::tempdir();
    let out = std::process::Command::new("bash")
        .arg(format!("{REPO}/examples/quickstart.sh"))
        .env("PIM_BIN", support::bin())
        .env("HOME", home.path())
        .env_remove("PIM_DB")
        .env_remove("PIM_USER")
        .env_remove("PIM_TOKEN")
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("is active at /prod"), "{stdout}");
    assert!(stdout.contains("The audit chain holds"), "{stdout}");
    assert!(home.path().join(".local/share/pim/pim.db").exists());
}
