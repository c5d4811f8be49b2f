//! A small builder over the real `pim` executable in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
}

/// The element of the JSON list `list` whose `field` is `value` (a role of `role list
/// --json`, a check of `doctor --json`), or a panic showing the list.
pub fn item(list: &serde_json::Value, field: &str, value: &str) -> serde_json::Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|i| i[field] == value)
        .unwrap_or_else(|| panic!("no {field} {value} in {list}"))
        .clone()
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Assert the exit code, showing the output when it is wrong.
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pim")
}

/// A code from oathtool, independent of our TOTP code; `offset` in seconds from now.
pub fn oathtool(secret: &str, offset: i64) -> String {
    oathtool_n(secret, &format!("now {offset:+} seconds"))
}

fn oathtool_n(secret: &str, when: &str) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", secret, "-N", when])
        .output()
        .expect("oathtool is needed by the tests (apt-get install oathtool)");
    assert!(
        out.status.success(),
        "oathtool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// oathtool's code for `secret` at the Unix time `at` (for two codes of one step, taken
/// from one reading of the clock).
pub fn oathtool_at(secret: &str, at: i64) -> String {
    oathtool_n(secret, &format!("@{at}"))
}

/// The Unix time now, as oathtool reads it.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A six-digit code that is none of `secret`'s codes from two steps before `at` to two
/// after: wrong whatever step the binary reads its clock in. (A fixed "000000" is a valid
/// code about once in 330,000 tries.)
pub fn wrong_code_at(secret: &str, at: i64) -> String {
    let near: Vec<String> = (-2..=2).map(|k| oathtool_at(secret, at + 30 * k)).collect();
    (0..)
        .map(|n: u32| format!("{:06}", (n * 7919) % 1_000_000))
        .find(|c| !near.contains(c))
        .unwrap()
}

/// A code wrong now (see `wrong_code_at`).
pub fn wrong_code(secret: &str) -> String {
    wrong_code_at(secret, unix_now())
}

/// The code of the step before this one, for confirming an enrolment without spending the
/// current step (which the next activation uses). It is accepted only while the clock stays
/// in this step, so a step about to end is waited out first: without that, a slow run that
/// crosses the boundary would see a code two steps old.
pub fn previous_code(secret: &str) -> String {
    let into_step = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 30_000;
    if into_step > 27_000 {
        std::thread::sleep(std::time::Duration::from_millis(30_100 - into_step as u64));
    }
    oathtool(secret, -30)
}

/// A directory of the test's own, 0700 whatever the umask: pim refuses a database in a
/// directory that others (or the group, under a umask of 002) may write in.
pub fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap()
}

impl Env {
    /// A fresh database of the backend under test: a file in the test's directory, or a new
    /// database on the PostgreSQL server.
    pub fn new() -> Env {
        let dir = tempdir();
        let db = if on_postgres() {
            PathBuf::from(postgres::fresh_database())
        } else {
            dir.path().join("pim.db")
        };
        Env { dir, db }
    }

    /// A database file in the test's directory, whichever backend is under test (for tests
    /// of the file itself).
    pub fn sqlite() -> Env {
        let dir = tempdir();
        let db = dir.path().join("pim.db");
        Env { dir, db }
    }

    /// A new database on the PostgreSQL server of the tests, whichever backend is under test.
    pub fn postgres() -> Env {
        let dir = tempdir();
        let db = PathBuf::from(postgres::fresh_database());
        Env { dir, db }
    }

    /// The database's URL, on PostgreSQL.
    pub fn url(&self) -> &str {
        self.db.to_str().unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args);
        self.environment(&mut c);
        c
    }

    /// The environment every pim of this test runs in: its database, and a home of its own
    /// (where the key of the TOTP secrets lives).
    pub fn environment(&self, c: &mut Command) {
        c.current_dir(self.dir.path())
            .env_remove("PIM_USER")
            .env_remove("PIM_TOKEN")
            .env("PIM_DB", &self.db)
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join(".config"))
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .stdin(Stdio::null());
        // A server's notification and witness commands run only for the account that
        // delivers them: the tests are that account.
        if self.db.to_string_lossy().starts_with("postgres") {
            c.env("PIM_RUN_COMMANDS", pim::store::pg::describe(self.url()));
        }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.command(args).output().unwrap().into()
    }

    /// Run as the pim user `who` (through --as).
    pub fn as_(&self, who: &str, args: &[&str]) -> Run {
        let mut all = vec!["--as", who];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// A database with `admin` as break-glass administrator; returns admin's TOTP secret.
    pub fn init(&self) -> String {
        let r = self.run(&["init", "--admin", "admin", "--json"]).expect(0);
        let secret = r.json()["secret"].as_str().unwrap().to_string();
        self.confirm("admin", &secret);
        secret
    }

    /// Confirm `who`'s pending enrolment with a code from it (the previous step's, so that
    /// the current one stays free for what the test does next).
    pub fn confirm(&self, who: &str, secret: &str) {
        let r = self.as_(who, &["mfa", "confirm", "--code", &previous_code(secret)]);
        // A run slowed down past the step's end (a loaded 2-core CI machine took more than
        // the 3 s `previous_code` leaves) sent a code two steps old: once more, with the
        // step before the new one (a refused code is not spent).
        if r.code == 3
            && r.stderr
                .contains("not the new authenticator's current code")
        {
            self.as_(who, &["mfa", "confirm", "--code", &previous_code(secret)])
                .expect(0);
        } else {
            r.expect(0);
        }
    }

    /// A database initialised with `policy`, `admin` its break-glass administrator; returns
    /// admin's TOTP secret.
    pub fn init_with(&self, policy: &Policy) -> String {
        std::fs::write(self.path("policy.toml"), policy.to_toml()).unwrap();
        let r = self
            .run(&[
                "init",
                "--admin",
                "admin",
                "--policies",
                "policy.toml",
                "--json",
            ])
            .expect(0);
        let secret = r.json()["secret"].as_str().unwrap().to_string();
        self.confirm("admin", &secret);
        secret
    }

    /// `who` activates `role` with a fresh code from oathtool (and `extra` arguments, such
    /// as `--scope`, `-j` or `--json`).
    pub fn activate(&self, who: &str, secret: &str, role: &str, extra: &[&str]) -> Run {
        let code = oathtool(secret, 0);
        let mut args = vec!["--as", who, "activate", role, "--code", &code];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Add a user with an authenticator; returns its secret.
    pub fn user(&self, name: &str) -> String {
        self.as_("admin", &["user", "add", name]).expect(0);
        self.enrol(name)
    }

    /// `who` enrols their own authenticator and confirms it; returns its secret.
    pub fn enrol(&self, who: &str) -> String {
        let r = self.as_(who, &["mfa", "enroll", "--json"]).expect(0);
        let secret = r.json()["secret"].as_str().unwrap().to_string();
        self.confirm(who, &secret);
        secret
    }

    /// Run pim with the clock moved by `offset` (faketime syntax: `+31m`, `+20d`, `+90s`).
    pub fn at(&self, offset: &str, args: &[&str]) -> Run {
        self.at_command(offset, args)
            .output()
            .expect("pim runs")
            .into()
    }

    /// The command `at` runs, to add to its environment.
    pub fn at_command(&self, offset: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args);
        self.environment(&mut c);
        c.env("LD_PRELOAD", libfaketime()).env("FAKETIME", offset);
        c
    }

    /// Change the database behind pim's back (as an attacker with write access would).
    pub fn sql(&self, sql: &str) {
        if on_postgres() {
            postgres::client(self.url()).batch_execute(sql).unwrap();
        } else {
            let conn = rusqlite::Connection::open(&self.db).unwrap();
            conn.execute_batch(sql).unwrap();
        }
    }

    /// Let changes to the audit log through (as the database's owner could), so that a test
    /// can show that `verify` finds them. On PostgreSQL the fields are no longer made from
    /// the bytes hashed either (each may be set on its own), so `verify` reads them.
    pub fn drop_audit_triggers(&self) {
        if on_postgres() {
            // The thirteen fields: the export's columns but the two hashes.
            let plain = pim::audit::COLUMNS[..13]
                .iter()
                .map(|f| format!("ALTER COLUMN {f} DROP EXPRESSION"))
                .collect::<Vec<_>>()
                .join(", ");
            self.sql(&format!(
                "ALTER TABLE audit_events DISABLE TRIGGER USER; ALTER TABLE merkle_nodes DISABLE TRIGGER USER; \
                 ALTER TABLE audit_events {plain}"
            ));
        } else {
            self.sql(
                "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete; \
                 DROP TRIGGER merkle_nodes_no_update; DROP TRIGGER merkle_nodes_no_delete",
            );
        }
    }

    /// One integer from the database.
    pub fn count(&self, sql: &str) -> i64 {
        if on_postgres() {
            let row = postgres::client(self.url()).query_one(sql, &[]).unwrap();
            if let Ok(v) = row.try_get::<_, i64>(0) {
                v
            } else if let Ok(v) = row.try_get::<_, i32>(0) {
                v.into()
            } else {
                i64::from(row.get::<_, bool>(0))
            }
        } else {
            let conn = rusqlite::Connection::open(&self.db).unwrap();
            conn.query_row(sql, [], |r| r.get(0)).unwrap()
        }
    }
}

/// The tests' policy: the protected break-glass role every database has (or the repository's
/// own `policies.toml`), plus the roles and sections a test adds.
#[derive(Debug, Clone)]
pub struct Policy {
    base: String,
    sections: Vec<(String, Vec<String>)>,
}

impl Policy {
    pub fn new() -> Policy {
        Policy {
            base: String::new(),
            sections: Vec::new(),
        }
        .role(
            "global-admin",
            "Global Administrator",
            &[
                "permissions = [\"*\"]",
                "protected = true",
                "max_eligible = \"permanent\"",
                "max_active = \"permanent\"",
            ],
        )
    }

    /// The repository's `policies.toml`.
    pub fn repository() -> Policy {
        Policy {
            base: std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies.toml"))
                .unwrap(),
            sections: Vec::new(),
        }
    }

    /// A role `[roles.KEY]` named `name`, with `settings` (TOML lines).
    pub fn role(self, key: &str, name: &str, settings: &[&str]) -> Policy {
        let mut lines = vec![format!("name = \"{name}\"")];
        lines.extend(settings.iter().map(|l| l.to_string()));
        self.with(&format!("roles.{key}"), lines)
    }

    /// Any other section (`alerts`, `defaults`, `notifications.webhook`...).
    pub fn section(self, name: &str, settings: &[&str]) -> Policy {
        self.with(name, settings.iter().map(|l| l.to_string()).collect())
    }

    fn with(mut self, name: &str, lines: Vec<String>) -> Policy {
        self.sections.retain(|(n, _)| n != name);
        self.sections.push((name.to_string(), lines));
        self
    }

    pub fn to_toml(&self) -> String {
        let mut out = self.base.clone();
        for (name, lines) in &self.sections {
            out.push_str(&format!("\n[{name}]\n{}\n", lines.join("\n")));
        }
        out
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// libfaketime, which the tests preload themselves (`FAKETIME=+31m`) rather than through the
/// `faketime` wrapper: the wrapper names a semaphore after its own pid and leaves it behind when
/// it is killed, and a later wrapper given the same pid then fails with "sem_open: File exists"
/// (a CI run failed so, once pids had wrapped).
pub fn libfaketime() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let mut dirs = vec![
            std::path::PathBuf::from("/usr/lib"),
            std::path::PathBuf::from("/usr/local/lib"),
        ];
        if let Ok(entries) = std::fs::read_dir("/usr/lib") {
            dirs.extend(entries.flatten().map(|e| e.path()));
        }
        dirs.iter()
            .map(|d| d.join("faketime/libfaketime.so.1"))
            .find(|p| p.is_file())
            .expect("libfaketime is needed by the tests (apt-get install faketime)")
            .to_string_lossy()
            .into_owned()
    })
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub use postgres::on_postgres;

/// The PostgreSQL server of the tests (shared with the library's own tests).
#[path = "../../src/store/test_server.rs"]
pub mod postgres;

/// pim running in a tmux pane of `width` columns, driven as a person would: keys sent,
/// the screen read back. The session is killed when this is dropped.
pub struct Terminal {
    session: String,
}

impl Terminal {
    /// Run `pim ARGS` (then print `exit=N`) in the environment of `env`.
    pub fn start(env: &Env, args: &[&str], width: u16) -> Terminal {
        Terminal::start_with(env, &[], args, width)
    }

    /// `start`, with more environment variables (`NAME=value`).
    pub fn start_with(env: &Env, vars: &[&str], args: &[&str], width: u16) -> Terminal {
        Terminal::launch(env, vars, "", args, width)
    }

    /// `start` with the clock moved by `offset` (faketime syntax: `+115m`).
    pub fn start_at(env: &Env, offset: &str, args: &[&str], width: u16) -> Terminal {
        let prefix = format!("LD_PRELOAD='{}' FAKETIME='{offset}' ", libfaketime());
        Terminal::launch(env, &[], &prefix, args, width)
    }

    fn launch(env: &Env, vars: &[&str], prefix: &str, args: &[&str], width: u16) -> Terminal {
        assert!(
            have("tmux"),
            "tmux is needed by the tests (apt-get install tmux)"
        );
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let session = format!("pim-test-{}-{n}", std::process::id());
        let quoted: Vec<String> = args
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let script = env.path(&format!("terminal-{n}.sh"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nunset PIM_USER PIM_TOKEN NO_COLOR COLUMNS\nexport TERM=xterm-256color PIM_DB='{}' HOME='{}' XDG_CONFIG_HOME='{}/.config' {}\ncd '{}'\n{}'{}' {}; echo \"exit=$?\"; sleep 60\n",
                env.db.display(),
                env.dir.path().display(),
                env.dir.path().display(),
                vars.iter()
                    .map(|v| format!("'{}'", v.replace('\'', "'\\''")))
                    .collect::<Vec<_>>()
                    .join(" "),
                env.dir.path().display(),
                prefix,
                bin(),
                quoted.join(" ")
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t = Terminal { session };
        let width = width.to_string();
        let out = t.tmux(&[
            "new-session",
            "-d",
            "-s",
            &t.session.clone(),
            "-x",
            &width,
            "-y",
            "40",
            script.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "tmux failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    /// tmux on this terminal's own server (`-L`, named as its session): on the one default
    /// server, a test whose session was the last one ended the server while another test's
    /// `new-session` was connecting to it ("server exited unexpectedly", seen in CI).
    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.session])
            .args(args)
            .output()
            .unwrap()
    }

    /// What the pane shows now.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .tmux(&["capture-pane", "-p", "-t", &self.session])
                .stdout,
        )
        .into_owned()
    }

    /// The pane with its colours (escape sequences) and wrapped lines joined: what the
    /// program wrote, line by line.
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(
            &self
                .tmux(&[
                    "capture-pane",
                    "-p",
                    "-e",
                    "-J",
                    "-S",
                    "-",
                    "-t",
                    &self.session,
                ])
                .stdout,
        )
        .into_owned()
    }

    /// Wait (up to 10 s) until the pane shows `text`; the screen then.
    pub fn wait_for(&self, text: &str) -> String {
        for _ in 0..100 {
            let s = self.screen();
            if s.contains(text) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("never saw {text:?} on the screen:\n{}", self.screen());
    }

    /// Type `text` (literally), then press Enter.
    pub fn line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", &self.session, "-l", text]);
        self.keys(&["Enter"]);
    }

    /// Answer a hidden prompt (a TOTP code): as `line`, a moment after the prompt shows. The
    /// prompt turns echo off with TCSAFLUSH, which drops whatever was typed before it did;
    /// typed at once, a code can land in that gap on a loaded machine and pim waits forever.
    pub fn secret(&self, text: &str) {
        std::thread::sleep(std::time::Duration::from_millis(300));
        self.line(text);
    }

    /// Press keys by tmux's names (`Space`, `Down`, `Enter`, `y`).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Wait for the command to end; its exit code and the screen.
    pub fn finish(&self) -> (i32, String) {
        let s = self.wait_for("exit=");
        let code = s
            .split("exit=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|c| c.parse().ok())
            .unwrap_or(-1);
        (code, s)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}
