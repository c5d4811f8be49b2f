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

/// `setup`, and bob eligible for deployer (no MFA) too.
fn with_deployer() -> Env {
    let (env, _) = setup();
    env.as_("admin", &["assign", "bob", "deployer", "-j", "releases"])
        .expect(0);
    env
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
    // On record with the command's name and exit code (not its arguments).
    assert_eq!(
        env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'activation.deactivate' \
             AND details LIKE '%\"command\":\"sh\"%' AND details LIKE '%\"exit\":7%' \
             AND details NOT LIKE '%env.txt%'"
        ),
        1
    );
    env.as_("admin", &["audit", "verify", "--state"]).expect(0);
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

/// Wait (up to 20 s) until `path` exists.
fn wait_for_file(path: &std::path::Path) {
    let start = std::time::Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed().as_secs() < 20,
            "{} never came",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A signal to exec while its command runs goes to the command, and exec then gives the role
/// back (an interrupted exec left the role active to its end).
#[test]
fn a_signal_to_exec_ends_the_command_and_gives_the_role_back() {
    let (env, _) = setup();
    // (a role without a code: three activations within one TOTP step)
    env.as_("admin", &["assign", "bob", "deployer", "-j", "releases"])
        .expect(0);
    let started = env.path("started");
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let _ = std::fs::remove_file(&started);
        let script = format!("touch {}; exec sleep 60", started.display());
        let child = env
            .command(&["--as", "bob", "exec", "deployer", "--", "sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_file(&started);
        env.run(&["check", "bob", "deployer"]).expect(0);
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(128 + signal), "{out:?}");
        env.run(&["check", "bob", "deployer"]).expect(1);
    }
    assert_eq!(
        env.count(
            "SELECT count(*) FROM requests WHERE status = 'deactivated' \
             AND close_reason LIKE '%pim exec%'"
        ),
        3
    );
}

/// exec gives back the activation it made, not another of the role made while its command
/// ran (its own was revoked, and bob activated the role again in another terminal).
#[test]
fn exec_gives_back_only_the_activation_it_made() {
    let (env, bob) = setup();
    let (started, go) = (env.path("started"), env.path("go"));
    let script = format!(
        "touch {}; while [ ! -f {} ]; do sleep 0.05; done",
        started.display(),
        go.display()
    );
    let child = env
        .command(&[
            "--as",
            "bob",
            "exec",
            "db-admin",
            "-j",
            "INC-6",
            "--code",
            &oathtool(&bob, 0),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&started);
    env.as_("admin", &["revoke", "1", "-j", "rotate"]).expect(0);
    env.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "-j",
            "INC-7",
            "--code",
            &oathtool(&bob, 30),
        ],
    )
    .expect(0);
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    env.run(&["check", "bob", "db-admin"]).expect(0);
}

/// The command does not get the database's password: a PostgreSQL URL in PIM_DB reaches it
/// without one (it reaches the server through pim, as its caller does).
#[test]
fn exec_passes_no_database_password_to_the_command() {
    let (env, bob) = setup();
    let out = env.path("env.txt");
    let script = format!("env | grep ^PIM_DB= > {}", out.display());
    let db = env.db.to_string_lossy().to_string();
    let r: support::Run = env
        .command(&[
            "--db",
            &db,
            "--as",
            "bob",
            "exec",
            "db-admin",
            "-j",
            "INC-8",
            "--code",
            &oathtool(&bob, 0),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env(
            "PIM_DB",
            "postgres://pim_app:S3cret@db.internal:5432/pim?password=S3cret&sslmode=require",
        )
        .output()
        .unwrap()
        .into();
    r.expect(0);
    let seen = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        seen.trim(),
        "PIM_DB=postgres://pim_app@db.internal:5432/pim?sslmode=require"
    );
}

/// Of two execs relying on one activation, the first to end leaves it to the other, and the
/// last gives it back.
#[test]
fn the_last_of_two_execs_gives_the_role_back() {
    let env = with_deployer();
    let exec = |name: &str| {
        let script = format!(
            "touch {0}.started; while [ ! -f {0}.go ]; do sleep 0.05; done",
            env.path(name).display()
        );
        let child = env
            .command(&["--as", "bob", "exec", "deployer", "--", "sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_file(&env.path(&format!("{name}.started")));
        child
    };
    let end = |name: &str, child: std::process::Child| {
        std::fs::write(env.path(&format!("{name}.go")), "").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    };
    // a made the activation; b found it held.
    let a = exec("a");
    let b = exec("b");
    assert_eq!(env.count("SELECT count(*) FROM requests"), 1);
    end("a", a);
    env.run(&["check", "bob", "deployer"]).expect(0);
    end("b", b);
    env.run(&["check", "bob", "deployer"]).expect(1);
    // And the other way round: the one that made it ends last.
    let c = exec("c");
    let d = exec("d");
    end("d", d);
    env.run(&["check", "bob", "deployer"]).expect(0);
    end("c", c);
    env.run(&["check", "bob", "deployer"]).expect(1);
    assert_eq!(
        env.count("SELECT count(*) FROM requests WHERE status = 'deactivated'"),
        2
    );
    // Nothing is left of the leases.
    assert!(lease_files(&env).is_empty(), "{:?}", lease_files(&env));
}

/// A signal exec was started ignoring (`nohup`) stays ignored, for its command too.
#[test]
fn exec_keeps_a_signal_it_was_told_to_ignore() {
    let env = with_deployer();
    let started = env.path("started");
    let script = format!("touch {}; sleep 1; echo done", started.display());
    // As `nohup` starts it: SIGHUP ignored.
    let mut nohup = std::process::Command::new("sh");
    env.environment(&mut nohup);
    let child = nohup
        .args(["-c", "trap '' HUP; exec \"$0\" \"$@\"", support::bin()])
        .args(["--as", "bob", "exec", "deployer", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&started);
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    env.run(&["check", "bob", "deployer"]).expect(1);
}

/// Execs started at the same moment all run their command: one activates, the others rely
/// on it (one that lost the race to activate used to fail, "already active"), and the last
/// gives the role back.
#[test]
fn execs_started_together_all_run() {
    let env = with_deployer();
    for round in 0..3 {
        let children: Vec<_> = (0..3)
            .map(|_| {
                env.command(&["--as", "bob", "exec", "deployer", "--", "sleep", "0.3"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(0), "round {round}: {out:?}");
        }
        env.run(&["check", "bob", "deployer"]).expect(1);
    }
}

/// An activation exec cannot give back (the database is busy past its wait) is said so,
/// exit 1, and keeps its lease file: the next exec that finds it gives it back.
#[test]
fn an_activation_exec_could_not_give_back_is_given_back_by_the_next() {
    let (env, _) = setup();
    if env.db.to_string_lossy().starts_with("postgres") {
        return; // (held busy through SQLite's own lock)
    }
    env.as_("admin", &["assign", "bob", "deployer", "-j", "releases"])
        .expect(0);
    let (started, go) = (env.path("started"), env.path("go"));
    let script = format!(
        "touch {}; while [ ! -f {} ]; do sleep 0.05; done",
        started.display(),
        go.display()
    );
    let child = env
        .command(&["--as", "bob", "exec", "deployer", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&started);
    let busy = rusqlite::Connection::open(&env.db).unwrap();
    busy.execute_batch("BEGIN EXCLUSIVE").unwrap();
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    busy.execute_batch("ROLLBACK").unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Could not give deployer back"), "{said}");
    env.run(&["check", "bob", "deployer"]).expect(0);
    let leases = || lease_files(&env).len();
    assert_eq!(leases(), 1);
    env.as_("bob", &["exec", "deployer", "--", "true"])
        .expect(0);
    env.run(&["check", "bob", "deployer"]).expect(1);
    assert_eq!(leases(), 0);
}

/// When the terminal goes away (ssh dropped, a window closed) and exec is its session leader,
/// the kernel sends the hangup to exec alone: exec passes it on, and gives the role back when
/// the command ends (the command ran on with the role, before).
#[test]
fn a_hangup_of_execs_own_terminal_reaches_the_command() {
    let env = with_deployer();
    let started = env.path("started");
    let program = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
deadline = time.time() + 20
while not os.path.exists(os.environ["STARTED"]) and time.time() < deadline:
    if select.select([fd], [], [], 0.05)[0]:
        try:
            os.read(fd, 4096)
        except OSError:
            break
os.close(fd)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"#;
    let script = format!("touch {}; exec sleep 60", started.display());
    let mut python = std::process::Command::new("python3");
    env.environment(&mut python);
    let out = python
        .env("STARTED", &started)
        .args(["-c", program, support::bin()])
        .args(["--as", "bob", "exec", "deployer", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (128 + libc::SIGHUP).to_string(),
        "{out:?}"
    );
    env.run(&["check", "bob", "deployer"]).expect(1);
}

/// An exec killed outright (SIGKILL) leaves its activation and its lease file. The next exec
/// relying on the activation is told its request (`PIM_REQUEST`) and gives it back; a lease
/// file whose activation has ended meanwhile (by hand, or its time) is removed by the next
/// exec to end, and one still in force is kept for the exec that relies on it.
#[test]
fn a_killed_execs_lease_goes_once_its_activation_has_ended() {
    let (env, bob) = setup();
    env.as_("admin", &["assign", "bob", "deployer", "-j", "releases"])
        .expect(0);
    let leases = || lease_files(&env).len();
    let killed = |round: &str| {
        killed_exec(&env, round);
        env.run(&["check", "bob", "deployer"]).expect(0);
        assert_eq!(leases(), 1);
    };
    let other_exec = |offset: i64| {
        env.as_(
            "bob",
            &[
                "exec",
                "user-admin",
                "-j",
                "INC-8",
                "--code",
                &oathtool(&bob, offset),
                "--",
                "true",
            ],
        )
        .expect(0);
    };
    // Request 1, killed; still in force: its lease stays.
    killed("a");
    other_exec(0);
    assert_eq!(leases(), 1);
    // Ended by hand: the next exec to end removes its lease.
    env.as_("bob", &["deactivate", "deployer"]).expect(0);
    assert_eq!(leases(), 1);
    other_exec(30);
    assert_eq!(leases(), 0);
    // Request 4, killed: the next exec of the role relies on it, is told so, and gives it back.
    killed("b");
    let out = env
        .as_(
            "bob",
            &[
                "exec",
                "deployer",
                "--",
                "sh",
                "-c",
                "echo request=$PIM_REQUEST",
            ],
        )
        .expect(0);
    assert_eq!(out.stdout.trim(), "request=4", "{}", out.stderr);
    env.run(&["check", "bob", "deployer"]).expect(1);
    assert_eq!(leases(), 0);
}

/// An exec of deployer by bob, killed with its command (SIGKILL) once the command runs.
fn killed_exec(env: &Env, round: &str) {
    let (started, pid) = (
        env.path(&format!("{round}.started")),
        env.path(&format!("{round}.pid")),
    );
    let script = format!(
        "echo $$ > {}; touch {}; exec sleep 60",
        pid.display(),
        started.display()
    );
    let mut child = env
        .command(&["--as", "bob", "exec", "deployer", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&started);
    let command: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill has no memory effects.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
        libc::kill(command, libc::SIGKILL);
    }
    child.wait().unwrap();
}

/// The lease files in the leases' directory (the gate, which stays, is not one).
fn lease_files(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.path("pim"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".lock"))
        .collect()
}

/// The key the database's lease files are named by, from its gate (an exec has run).
fn lease_key(env: &Env) -> String {
    std::fs::read_dir(env.path("pim"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find_map(|n| {
            n.strip_prefix("exec-")
                .and_then(|n| n.strip_suffix(".gate"))
                .map(str::to_string)
        })
        .expect("the gate of the leases")
}

/// The names the lease file of activation `id` may have when it is made within the next few
/// seconds (it is named after the second its request is made).
fn lease_paths(env: &Env, key: &str, id: i64) -> Vec<std::path::PathBuf> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (now..now + 5)
        .map(|t| env.path(&format!("pim/exec-{key}-{id}-{t}.lock")))
        .collect()
}

/// pim under strace, with `inject` (strace's fault injection) on the system calls that
/// touch any of `paths`: a race's window held open for as long as a test needs.
fn traced(
    env: &Env,
    paths: &[std::path::PathBuf],
    inject: &str,
    args: &[&str],
) -> std::process::Command {
    let mut c = std::process::Command::new("strace");
    c.args(["-f", "-o", "/dev/null"]);
    for path in paths {
        c.arg("-P").arg(path);
    }
    c.args(["-e", inject, support::bin()])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    env.environment(&mut c);
    c
}

/// An exec whose command runs until told to end (at most a minute: a test that failed
/// leaves nothing running for long).
fn started_exec(env: &Env, mut c: std::process::Command, name: &str) -> std::process::Child {
    let script = format!(
        "touch {0}.started; i=0; while [ ! -f {0}.go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done",
        env.path(name).display()
    );
    c.args(["--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c.spawn().unwrap()
}

fn ended_exec(env: &Env, name: &str, child: std::process::Child) {
    std::fs::write(env.path(&format!("{name}.go")), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// An exec that finds the role held by an activation another exec has just made, before
/// that exec has made its lease, waits for the lease and relies on it: it used to run with
/// no lease, and lost the role when the first exec ended (found by a reviewer with strace).
#[test]
fn an_exec_finding_an_activation_before_its_lease_exists_still_relies_on_it() {
    let env = with_deployer();
    env.as_("bob", &["exec", "deployer", "--", "true"])
        .expect(0);
    let key = lease_key(&env);
    let next = env.count("SELECT max(id) FROM requests") + 1;
    // a's lease file is made two seconds after its activation.
    let lease = lease_paths(&env, &key, next);
    let a = started_exec(
        &env,
        traced(
            &env,
            &lease,
            "inject=openat:delay_enter=2000000",
            &["--as", "bob", "exec", "deployer"],
        ),
        "a",
    );
    let active = format!("SELECT count(*) FROM requests WHERE id = {next} AND status = 'active'");
    let began = std::time::Instant::now();
    while env.count(&active) == 0 {
        assert!(began.elapsed().as_secs() < 20, "a never activated");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // b, in that window: it finds the role held.
    let b = started_exec(&env, env.command(&["--as", "bob", "exec", "deployer"]), "b");
    wait_for_file(&env.path("b.started"));
    wait_for_file(&env.path("a.started"));
    assert_eq!(env.count("SELECT count(*) FROM requests"), next);
    ended_exec(&env, "a", a);
    env.run(&["check", "bob", "deployer"]).expect(0);
    ended_exec(&env, "b", b);
    env.run(&["check", "bob", "deployer"]).expect(1);
    assert!(lease_files(&env).is_empty(), "{:?}", lease_files(&env));
}

/// Another exec's cleaning of stale leases never holds the lease of an activation in force,
/// so it cannot make the last exec relying on one take it for held by another and keep the
/// role (found by a reviewer with strace: the exec exited 0, the role still active).
#[test]
fn cleaning_stale_leases_never_keeps_the_last_exec_from_giving_back() {
    let (env, _) = setup();
    env.user("carol");
    for who in ["bob", "carol"] {
        env.as_("admin", &["assign", who, "deployer", "-j", "releases"])
            .expect(0);
    }
    env.as_("bob", &["exec", "deployer", "--", "true"])
        .expect(0);
    let key = lease_key(&env);
    let next = env.count("SELECT max(id) FROM requests") + 1;
    let lease = lease_paths(&env, &key, next);
    // bob's exec: between letting go of its lease and trying to hold it alone (its third
    // flock of the file), two seconds.
    let bob = started_exec(
        &env,
        traced(
            &env,
            &lease,
            "inject=flock:delay_enter=2000000:when=3",
            &["--as", "bob", "exec", "deployer"],
        ),
        "bob",
    );
    wait_for_file(&env.path("bob.started"));
    // carol's exec, under way meanwhile: any lock its cleaning takes on bob's lease is
    // held four seconds.
    let carol = started_exec(
        &env,
        traced(
            &env,
            &lease,
            "inject=flock:delay_exit=4000000",
            &["--as", "carol", "exec", "deployer"],
        ),
        "carol",
    );
    wait_for_file(&env.path("carol.started"));
    std::fs::write(env.path("bob.go"), "").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // carol's cleaning runs inside bob's window.
    ended_exec(&env, "carol", carol);
    ended_exec(&env, "bob", bob);
    let given_back =
        format!("SELECT count(*) FROM requests WHERE id = {next} AND status = 'deactivated'");
    assert_eq!(env.count(&given_back), 1);
    env.run(&["check", "bob", "deployer"]).expect(1);
}

/// A FIFO in place of a lease file neither holds exec up nor is taken for a lease.
#[test]
fn a_fifo_named_as_a_lease_does_not_hold_exec_up() {
    let env = with_deployer();
    env.as_("bob", &["exec", "deployer", "--", "true"])
        .expect(0);
    let key = lease_key(&env);
    // Named as the lease of the activation that ended, and as leases were named before.
    let made = env.count("SELECT created_at FROM requests WHERE id = 1");
    for name in [
        format!("exec-{key}-1-{made}.lock"),
        format!("exec-{key}-1.lock"),
    ] {
        let fifo =
            std::ffi::CString::new(env.path(&format!("pim/{name}")).to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    }
    let mut child = env
        .command(&["--as", "bob", "exec", "deployer", "--", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let began = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if began.elapsed().as_secs() > 20 {
            let _ = child.kill();
            panic!("exec is held up by a FIFO");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    env.run(&["check", "bob", "deployer"]).expect(1);
    assert_eq!(lease_files(&env).len(), 2);
}

/// A database restored from a copy gives its request numbers again: the lease file a killed
/// exec left is never taken for the lease of another activation that got its number (exec
/// gave back an activation made by `pim activate`, found by a reviewer).
#[test]
fn a_lease_is_never_taken_for_another_activation_of_its_number() {
    if support::on_postgres() {
        // The copy is restored by hand, as a SQLite file.
        return;
    }
    let env = with_deployer();
    let copy = env.path("copy.db");
    rusqlite::Connection::open(&env.db)
        .unwrap()
        .execute(&format!("VACUUM INTO '{}'", copy.display()), [])
        .unwrap();
    let next = env.count("SELECT count(*) FROM requests") + 1;
    // An exec killed (it and its command): its lease file stays.
    killed_exec(&env, "a");
    assert_eq!(lease_files(&env).len(), 1);
    // The copy restored; a second later bob activates by hand, and gets the same number.
    for companion in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{companion}", env.db.display()));
    }
    std::fs::copy(&copy, &env.db).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.as_("bob", &["activate", "deployer", "-j", "INC-9 by hand"])
        .expect(0);
    assert_eq!(env.count("SELECT max(id) FROM requests"), next);
    // An exec relies on it, and does not give it back: it is not an exec's.
    env.as_("bob", &["exec", "deployer", "--", "true"])
        .expect(0);
    env.run(&["check", "bob", "deployer"]).expect(0);
}

/// An exec waiting for the gate to activate (another exec holds it: stopped, say) still ends
/// on Ctrl-C, with nothing activated: it held signals back while it waited, and activated
/// once the gate was free (found by a reviewer).
#[test]
fn an_exec_waiting_to_activate_still_ends_on_ctrl_c() {
    let env = with_deployer();
    env.as_("bob", &["exec", "deployer", "--", "true"])
        .expect(0);
    let gate = env.path(&format!("pim/exec-{}.gate", lease_key(&env)));
    let before = env.count("SELECT count(*) FROM requests");
    // The exec opens the gate a second time (to hold it alone, after looking) three seconds
    // late; meanwhile another process holds it alone.
    let mut exec = traced(
        &env,
        std::slice::from_ref(&gate),
        "inject=openat:delay_enter=3000000:when=2",
        &["--as", "bob", "exec", "deployer", "--", "true"],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let mut holder = std::process::Command::new("flock")
        .arg("-x")
        .arg(&gate)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", exec.id())).unwrap();
    let pim: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pim, libc::SIGINT) };
    let began = std::time::Instant::now();
    let ended = loop {
        if exec.try_wait().unwrap().is_some() {
            break true;
        }
        if began.elapsed().as_secs() > 10 {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = holder.kill();
    let _ = holder.wait();
    if !ended {
        let _ = exec.kill();
    }
    let _ = exec.wait();
    assert!(
        ended,
        "exec did not end on SIGINT while it waited for the gate"
    );
    assert_eq!(env.count("SELECT count(*) FROM requests"), before);
}

/// A gate that cannot be held (something else in its place) is said, once, and exec runs on
/// as before it had one (it turned the gate off without a word).
#[test]
fn a_gate_that_cannot_be_held_is_said() {
    let env = with_deployer();
    env.as_("bob", &["exec", "deployer", "--", "true"])
        .expect(0);
    let gate = env.path(&format!("pim/exec-{}.gate", lease_key(&env)));
    std::fs::remove_file(&gate).unwrap();
    std::fs::create_dir(&gate).unwrap();
    let out = env
        .as_("bob", &["exec", "deployer", "--", "true"])
        .expect(0);
    assert_eq!(
        out.stderr.matches("cannot hold").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("remove it"), "{}", out.stderr);
    env.run(&["check", "bob", "deployer"]).expect(1);
}
