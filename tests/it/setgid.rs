//! The set-group-id install of the README, for real: a binary `root:pimtest 2755`, a
//! directory `2770`, the database created by root, and accounts that attack it. Runs when the
//! tests run as root (as CI does), creating the group and accounts it needs; otherwise each
//! test says why it skipped.

use crate::support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use support::Run;

const GROUP: &str = "pimtest";
const ALICE: &str = "pimt-alice";
const BOB: &str = "pimt-bob";
const MALLORY: &str = "pimt-mallory";

/// Create the group and the accounts once; false (with the reason printed) when this
/// machine cannot run the install.
fn ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        if crate::support::on_postgres() {
            return Err(
                "the set-group-id install of a database file is SQLite's; it runs in the SQLite pass".into(),
            );
        }
        if unsafe { libc::getuid() } != 0 {
            return Err(
                "needs root to install pim set-group-id (CI runs the tests as root)".into(),
            );
        }
        if std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1'))
        }) {
            return Err(
                "this process runs with no_new_privs, so set-group-id cannot take effect".into(),
            );
        }
        if base().is_none() {
            return Err(
                "no world-traversable directory here allows set-group-id programs (all nosuid)"
                    .into(),
            );
        }
        for tool in ["setpriv", "groupadd", "useradd"] {
            if !support::have(tool) {
                return Err(format!("needs {tool}"));
            }
        }
        let _ = Command::new("groupadd")
            .args(["-f", "--system", GROUP])
            .status();
        for name in [ALICE, BOB, MALLORY] {
            let exists = Command::new("id")
                .arg(name)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !exists {
                let ok = Command::new("useradd")
                    .args([
                        "--no-create-home",
                        "--user-group",
                        "--shell",
                        "/bin/sh",
                        name,
                    ])
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    return Err(format!("cannot create the account {name}"));
                }
            }
        }
        Ok(())
    });
    match ready {
        Ok(()) => true,
        Err(why) => {
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// A directory for installs where set-group-id programs take effect (not mounted nosuid).
fn base() -> Option<&'static str> {
    ["/tmp", "/var/tmp"].into_iter().find(|dir| {
        let path = std::ffi::CString::new(*dir).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: statvfs writes only into `st`.
        unsafe { libc::statvfs(path.as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_NOSUID == 0 }
    })
}

fn id_of(name: &str, flag: &str) -> u32 {
    let out = Command::new("id").args([flag, name]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn group_id() -> u32 {
    let out = Command::new("getent")
        .args(["group", GROUP])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split(':')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap()
}

/// One install: the binary, the database directory, a home per account.
struct Install {
    dir: tempfile::TempDir,
    bin: PathBuf,
    lib: PathBuf,
    db: PathBuf,
    instance: String,
    /// alice's TOTP secret (she is the break-glass administrator).
    alice: String,
}

impl Drop for Install {
    fn drop(&mut self) {
        if !self.instance.is_empty() {
            let _ = std::fs::remove_file(format!("/etc/pim/keys/{}.key", self.instance));
        }
    }
}

impl Install {
    /// The README's procedure: install the binary root:GROUP 2755 and the directory 2770,
    /// then `pim init` as root.
    fn new() -> Install {
        let dir = tempfile::Builder::new()
            .prefix("pim-install-")
            .tempdir_in(base().expect("checked by ready()"))
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("pim");
        let status = Command::new("install")
            .args(["-o", "root", "-g", GROUP, "-m", "2755", support::bin()])
            .arg(&bin)
            .status()
            .unwrap();
        assert!(status.success());
        let lib = dir.path().join("lib");
        let status = Command::new("install")
            .args(["-d", "-o", "root", "-g", GROUP, "-m", "2770"])
            .arg(&lib)
            .status()
            .unwrap();
        assert!(status.success());
        for name in [ALICE, BOB, MALLORY] {
            let home = dir.path().join("home").join(name);
            std::fs::create_dir_all(&home).unwrap();
            std::os::unix::fs::chown(&home, Some(id_of(name, "-u")), Some(id_of(name, "-g")))
                .unwrap();
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(
            dir.path().join("home"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let db = lib.join("pim.db");
        let out = Command::new(&bin)
            .args(["init", "--admin", ALICE, "--json"])
            .env("PIM_DB", &db)
            .env("HOME", dir.path())
            .env_remove("XDG_CONFIG_HOME")
            .output()
            .unwrap();
        let r: Run = out.into();
        let alice = r.expect(0).json()["secret"].as_str().unwrap().to_string();
        // Her authenticator takes effect with its first code.
        let confirmed: Run = Command::new(&bin)
            .args(["--as", ALICE, "mfa", "confirm", "--code"])
            .arg(crate::support::previous_code(&alice))
            .env("PIM_DB", &db)
            .env("HOME", dir.path())
            .env_remove("XDG_CONFIG_HOME")
            .output()
            .unwrap()
            .into();
        confirmed.expect(0);
        // The earlier README's last step; a no-op now that init makes it so (kept, so that
        // these tests run against an older pim too and fail where it had the holes).
        let mode = std::fs::metadata(&db).unwrap().mode() & 0o777;
        std::os::unix::fs::chown(&db, None, Some(group_id())).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(mode | 0o060)).unwrap();
        // (Read leniently, so that these tests also run against an older pim.)
        let instance: String = peek(&db)
            .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
                r.get(0)
            })
            .unwrap_or_default();
        Install {
            dir,
            bin,
            lib,
            db,
            instance,
            alice,
        }
    }

    fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join("home").join(name)
    }

    /// Run the installed pim as the account `name`, with a clean environment.
    fn as_account(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.program_as(name, &self.bin, args, env)
    }

    fn program_as(&self, name: &str, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", name, "--regid", name, "--init-groups", "--"])
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.home(name))
            .env("PIM_DB", &self.db)
            .current_dir(self.home(name))
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap().into()
    }

    /// Run a pim that is not set-group-id as root, on root's own database file `db`.
    fn root_own(&self, db: &Path, args: &[&str]) -> Run {
        Command::new(support::bin())
            .arg("--db")
            .arg(db)
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("PIM_USER")
            .env_remove("PIM_TOKEN")
            .env_remove("XDG_CONFIG_HOME")
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    }

    /// Run pim as root (`--as` allowed).
    fn root(&self, args: &[&str]) -> Run {
        Command::new(&self.bin)
            .args(args)
            .env("PIM_DB", &self.db)
            .env("HOME", self.dir.path())
            .env_remove("PIM_USER")
            .env_remove("PIM_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    }

    /// alice's import of 200,000 rows, caught while it holds the database's write lock
    /// (setpriv execs pim in place, so the child's pid is pim's).
    fn import_holding_the_write_lock(&self) -> std::process::Child {
        self.root(&["--as", ALICE, "user", "add", BOB]).expect(0);
        let rows: String = (0..200_000)
            .map(|n| format!("{BOB},db-admin,/s{n},eligible,,,x,\n"))
            .collect();
        let file = self.home(ALICE).join("big.csv");
        std::fs::write(
            &file,
            format!("user,role,scope,type,start,end,justification,ticket\n{rows}"),
        )
        .unwrap();
        let mut import = Command::new("setpriv")
            .args(["--reuid", ALICE, "--regid", ALICE, "--init-groups", "--"])
            .arg(&self.bin)
            .args(["assignment", "import", file.to_str().unwrap()])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.home(ALICE))
            .env("PIM_DB", &self.db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let held = format!(" WRITE {} ", import.id());
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
            if locks
                .lines()
                .any(|l| l.contains(&held) && !l.contains("->"))
            {
                return import;
            }
        }
        let _ = import.kill();
        let _ = import.wait();
        panic!("the import never took the write lock");
    }

    /// The database's bytes, to show an attack changed nothing.
    fn snapshot(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal"] {
            let mut p = self.db.clone().into_os_string();
            p.push(suffix);
            all.extend(std::fs::read(p).unwrap_or_default());
        }
        all
    }

    fn count(&self, sql: &str) -> i64 {
        peek(&self.db).query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// A database of mallory's own, made with her own (not set-group-id) copy of pim, whose
    /// policy (given as `extra`) she controls.
    fn mallory_db(&self, extra: &str) -> PathBuf {
        let home = self.home(MALLORY);
        let own_bin = home.join("pim-own");
        std::fs::copy(support::bin(), &own_bin).unwrap();
        std::os::unix::fs::chown(
            &own_bin,
            Some(id_of(MALLORY, "-u")),
            Some(id_of(MALLORY, "-g")),
        )
        .unwrap();
        std::fs::set_permissions(&own_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let policy = home.join("policy.toml");
        std::fs::write(&policy, policy_with(extra)).unwrap();
        let own = home.join("own.db");
        let own_s = own.display().to_string();
        let policy_s = policy.display().to_string();
        self.program_as(
            MALLORY,
            &own_bin,
            &[
                "--db",
                &own_s,
                "init",
                "--admin",
                MALLORY,
                "--policies",
                &policy_s,
            ],
            &[],
        )
        .expect(0);
        own
    }

    /// mallory's own database (and the file its command appends to): the command writes
    /// the account that runs it, and zed's eligibility ends within a day, so the next sweep
    /// queues a reminder. Her own pim has run the command once, as her.
    fn mallory_reminding(&self) -> (PathBuf, PathBuf) {
        let ran = self.home(MALLORY).join("ran");
        let own = self.mallory_db(&format!(
            "[notifications.command]\nargv = [\"sh\", \"-c\", \"id -un >> {}\"]\n",
            ran.display()
        ));
        let own_s = own.display().to_string();
        let mallory = |args: &[&str]| {
            let mut all = vec!["--db", own_s.as_str()];
            all.extend_from_slice(args);
            self.as_account(MALLORY, &all, &[])
        };
        mallory(&["user", "add", "zed"]).expect(0);
        mallory(&["assign", "zed", "db-admin", "-j", "x", "--duration", "12h"]).expect(0);
        assert_eq!(std::fs::read_to_string(&ran).unwrap().trim(), MALLORY);
        (own, ran)
    }
}

/// The repository's policies with `extra` (TOML) after them.
fn policy_with(extra: &str) -> String {
    format!(
        "{}\n{extra}\n",
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies.toml")).unwrap()
    )
}

/// A connection for the test to look into a database without ending its WAL: closing the
/// last connection must not delete the -wal and -shm files the install keeps.
fn peek(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .unwrap();
    conn
}

fn gid_line(text: &str) -> Vec<u32> {
    text.lines()
        .find(|l| l.starts_with("Gid:"))
        .unwrap_or_else(|| panic!("no Gid line in {text}"))
        .split_whitespace()
        .skip(1)
        .map(|g| g.parse().unwrap())
        .collect()
}

#[test]
fn the_install_is_what_the_readme_says() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let pim = group_id();
    for (suffix, mode) in [("", 0o660), ("-wal", 0o660), ("-shm", 0o660)] {
        let mut p = i.db.clone().into_os_string();
        p.push(suffix);
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, pim, mode),
            "{p:?}"
        );
    }
    let key = std::fs::metadata(format!("/etc/pim/keys/{}.key", i.instance)).unwrap();
    assert_eq!((key.uid(), key.gid(), key.mode() & 0o777), (0, pim, 0o640));
    i.as_account(ALICE, &["status"], &[]).expect(0);
    // Not a pim user: nothing but `check`.
    i.as_account(MALLORY, &["status"], &[]).expect(3);
    i.as_account(MALLORY, &["user", "list"], &[]).expect(3);
    i.as_account(MALLORY, &["check", ALICE, "global-admin"], &[])
        .expect(0);
    // A code from oathtool works through the install (the secret is sealed, its key read
    // with the group).
    i.root(&["--as", ALICE, "user", "add", BOB]).expect(0);
    // bob enrols under his own account (nobody else sees his secret) and confirms it.
    let bob = i
        .as_account(BOB, &["mfa", "enroll", "--json"], &[])
        .expect(0)
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    i.as_account(
        BOB,
        &["mfa", "confirm", "--code", &support::previous_code(&bob)],
        &[],
    )
    .expect(0);
    i.root(&["--as", ALICE, "assign", BOB, "db-admin", "-j", "dba"])
        .expect(0);
    i.as_account(
        BOB,
        &[
            "activate",
            "db-admin",
            "-j",
            "INC-1",
            "--code",
            &support::oathtool(&bob, 0),
        ],
        &[],
    )
    .expect(0);
    i.as_account(MALLORY, &["check", BOB, "db-admin"], &[])
        .expect(0);
    i.as_account(BOB, &["deactivate", "db-admin"], &[])
        .expect(0);
    // exec activates, runs its child without the group, and gives the role back through
    // the connection it opened before the group was given up.
    let r = i.as_account(
        BOB,
        &[
            "exec",
            "db-admin",
            "-j",
            "INC-2",
            "--code",
            &support::oathtool(&bob, 30),
            "--",
            "sh",
            "-c",
            &format!("test ! -r {}", i.db.display()),
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("could not"), "{}", r.stderr);
    i.as_account(MALLORY, &["check", BOB, "db-admin"], &[])
        .expect(1);
    i.root(&["audit", "verify"]).expect(0);
    // Nobody but the group can read the key or the database directly.
    let r = i.program_as(
        MALLORY,
        Path::new("/bin/cat"),
        &[&format!("/etc/pim/keys/{}.key", i.instance)],
        &[],
    );
    assert_ne!(r.code, 0);
    let _ = &i.alice;
}

// -------------------------------------------------------------- 1: the group never leaks

#[test]
fn children_never_inherit_the_group_nor_pim_secrets() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let pim = group_id();
    // Mallory is the administrator of a database of her own, whose policy runs a command.
    let out = i.home(MALLORY).join("notify.txt");
    let own = i.mallory_db(&format!(
        "[notifications.command]\nargv = [\"sh\", \"-c\", \"grep Gid /proc/self/status > {}; echo x >> {} || echo denied >> {}\"]\n",
        out.display(),
        i.db.display(),
        out.display()
    ));
    let own_s = own.display().to_string();
    // `exec` through the installed pim: the child writes what it is.
    let child = i.home(MALLORY).join("child.txt");
    let script = format!(
        "grep Gid /proc/self/status > {c}; env >> {c}; (echo x >> {db}) 2>/dev/null || echo denied >> {c}",
        c = child.display(),
        db = i.db.display()
    );
    i.as_account(
        MALLORY,
        &[
            "--db",
            &own_s,
            "exec",
            "global-admin",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[("PIM_TOKEN", "")],
    )
    .expect(0);
    let seen = std::fs::read_to_string(&child).unwrap();
    let gids = gid_line(&seen);
    assert!(!gids.contains(&pim), "exec child kept the group: {seen}");
    assert!(seen.contains("denied"), "{seen}");
    // A notification command of her policy: the same.
    i.as_account(MALLORY, &["--db", &own_s, "user", "add", "x"], &[])
        .expect(0);
    i.as_account(
        MALLORY,
        &["--db", &own_s, "assign", "x", "db-admin", "-j", "y"],
        &[],
    )
    .expect(0);
    let seen = std::fs::read_to_string(&out).unwrap();
    assert!(
        !gid_line(&seen).contains(&pim),
        "notification child kept the group: {seen}"
    );
    assert!(seen.contains("denied"), "{seen}");
    // A legitimate service's `exec` child on the real database: no group, no token, no
    // descriptor of the database.
    let token = i
        .root(&["--as", ALICE, "user", "add", "ci", "--service", "--json"])
        .expect(0)
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    i.root(&[
        "--as",
        ALICE,
        "assign",
        "ci",
        "deployer",
        "--active",
        "--permanent",
        "-j",
        "ci",
    ])
    .expect(0);
    let child = i.home(ALICE).join("child.txt");
    let script = format!(
        "(grep Gid /proc/self/status; env; for f in /proc/self/fd/*; do readlink $f; done; true) > {}",
        child.display()
    );
    i.as_account(
        ALICE,
        &["exec", "deployer", "--", "sh", "-c", &script],
        &[("PIM_TOKEN", &token)],
    )
    .expect(0);
    let seen = std::fs::read_to_string(&child).unwrap();
    assert!(!gid_line(&seen).contains(&pim), "{seen}");
    assert!(
        !seen.contains(&token) && !seen.contains("PIM_TOKEN"),
        "{seen}"
    );
    // No descriptor of the database (its path would be a line of the fd listing).
    let db = i.db.display().to_string();
    assert!(!seen.lines().any(|l| l.starts_with(&db)), "{seen}");
    i.root(&["audit", "verify"]).expect(0);
    assert_eq!(i.count("SELECT count(*) FROM users WHERE name = 'x'"), 0);
}

// -------------------------------------------------------------- 2: output paths

#[test]
fn output_paths_are_opened_with_the_callers_rights_only() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let before = i.snapshot();
    // man --output: a planted link to the database, and the protected directory itself.
    let man = i.home(MALLORY).join("man");
    std::fs::create_dir(&man).unwrap();
    std::os::unix::fs::symlink(&i.db, man.join("pim.1")).unwrap();
    std::os::unix::fs::lchown(man.join("pim.1"), Some(id_of(MALLORY, "-u")), None).unwrap();
    std::os::unix::fs::chown(&man, Some(id_of(MALLORY, "-u")), None).unwrap();
    let r = i
        .as_account(
            MALLORY,
            &["man", "--output", &man.display().to_string()],
            &[],
        )
        .expect(1);
    assert!(r.stderr.contains("link"), "{}", r.stderr);
    let lib = i.lib.display().to_string();
    i.as_account(MALLORY, &["man", "--output", &lib], &[])
        .expect(1);
    assert!(!i.lib.join("pim.1").exists());
    assert!(before == i.snapshot(), "the database changed");
    // audit export and review export aimed at the database, directly and through a link.
    i.as_account(
        ALICE,
        &[
            "review",
            "create",
            "--role",
            "db-admin",
            "--reviewer",
            ALICE,
        ],
        &[],
    )
    .expect(0);
    let db = i.db.display().to_string();
    let link = i.home(ALICE).join("audit.csv");
    std::os::unix::fs::symlink(&i.db, &link).unwrap();
    let link_s = link.display().to_string();
    for args in [
        &["audit", "export", "--output", &db][..],
        &["audit", "export", "--output", &link_s],
        &["review", "export", "1", "--output", &db],
        &["review", "export", "1", "--output", &link_s],
    ] {
        let r = i.as_account(ALICE, args, &[]);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
    }
    // The chain holds, and nothing but pim wrote the database.
    i.root(&["audit", "verify"]).expect(0);
    // A file of someone else's, in a directory everyone may write: never written into.
    let shared = i.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = shared.join("audit.csv");
    std::fs::write(&planted, "").unwrap();
    std::os::unix::fs::chown(&planted, Some(id_of(MALLORY, "-u")), None).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = i.as_account(
        ALICE,
        &[
            "audit",
            "export",
            "--output",
            &planted.display().to_string(),
        ],
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    // (pim's own check, or the kernel's fs.protected_regular where it is on)
    assert!(
        r.stderr.contains("another account") || r.stderr.contains("Permission denied"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::metadata(&planted).unwrap().len(), 0);
    // A file of her own: created with her rights, 0600.
    let mine = i.home(ALICE).join("mine.csv");
    i.as_account(
        ALICE,
        &["audit", "export", "--output", &mine.display().to_string()],
        &[],
    )
    .expect(0);
    let m = std::fs::metadata(&mine).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (id_of(ALICE, "-u"), 0o600));
}

// -------------------------------------------------------------- 3: --as and swapped links

#[test]
fn as_is_roots_alone_and_swapped_links_land_nothing() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let own = i.mallory_db("");
    let link = i.home(MALLORY).join("link.db");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, link, own, real) = (stop.clone(), link.clone(), own.clone(), i.db.clone());
        std::thread::spawn(move || {
            let tmp = link.with_extension("tmp");
            let mut flip = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::remove_file(&tmp);
                let _ = std::os::unix::fs::symlink(if flip { &real } else { &own }, &tmp);
                let _ = std::fs::rename(&tmp, &link);
                flip = !flip;
            }
        })
    };
    let link_s = link.display().to_string();
    let mut codes = std::collections::BTreeMap::new();
    for n in 0..200 {
        let r = i.as_account(
            MALLORY,
            &[
                "--db",
                &link_s,
                "--as",
                ALICE,
                "user",
                "add",
                &format!("x{n}"),
            ],
            &[],
        );
        *codes.entry(r.code).or_insert(0) += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert_eq!(codes, [(3, 200)].into_iter().collect(), "exit codes");
    assert_eq!(
        i.count("SELECT count(*) FROM users WHERE name LIKE 'x%'"),
        0
    );
    let own_count: i64 = peek(&own)
        .query_row("SELECT count(*) FROM users WHERE name LIKE 'x%'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(own_count, 0);
    // Root may act as anyone.
    i.root(&["--as", ALICE, "user", "add", "y"]).expect(0);
}

// -------------------------------------------------------------- 4: nobody locks everyone out

#[test]
fn no_account_can_create_files_beside_the_database_or_lock_others_out() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let wal = format!("{}-wal", i.db.display());
    let other = i.lib.join("mine.db").display().to_string();
    for target in [wal.as_str(), other.as_str()] {
        let r = i.as_account(MALLORY, &["init", "--admin", "m"], &[("PIM_DB", target)]);
        assert_eq!(r.code, 3, "{target}: {}", r.stderr);
        assert!(r.stderr.contains("root"), "{}", r.stderr);
    }
    assert!(!i.lib.join("mine.db").exists());
    let m = std::fs::metadata(&wal).unwrap();
    assert_eq!(m.uid(), 0);
    i.as_account(ALICE, &["status"], &[]).expect(0);
    i.as_account(MALLORY, &["check", ALICE, "global-admin"], &[])
        .expect(0);
    // A companion file that is not root's (as an old attack would have left) is refused
    // with a sentence, never used.
    std::os::unix::fs::chown(&wal, Some(id_of(MALLORY, "-u")), None).unwrap();
    let r = i.as_account(ALICE, &["status"], &[]).expect(1);
    assert!(
        r.stderr.contains("not owned like the database"),
        "{}",
        r.stderr
    );
    std::os::unix::fs::chown(&wal, Some(0), None).unwrap();
    // A missing one is root's to recreate.
    std::fs::remove_file(&wal).unwrap();
    let r = i.as_account(ALICE, &["status"], &[]).expect(1);
    assert!(r.stderr.contains("only root"), "{}", r.stderr);
    i.root(&["audit", "verify"]).expect(0);
    let m = std::fs::metadata(&wal).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (0, group_id(), 0o660));
    i.as_account(ALICE, &["status"], &[]).expect(0);
}

// -------------------------------------------------------------- 5: two accounts at once

#[test]
fn two_accounts_starting_at_once_never_fail() {
    if !ready() {
        return;
    }
    let i = Install::new();
    i.root(&["--as", ALICE, "user", "add", BOB]).expect(0);
    let mut failures = Vec::new();
    for _ in 0..40 {
        let spawn = |name: &str| {
            Command::new("setpriv")
                .args(["--reuid", name, "--regid", name, "--init-groups", "--"])
                .args([
                    "sh",
                    "-c",
                    "umask 022; exec \"$0\" status",
                    i.bin.to_str().unwrap(),
                ])
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", i.home(name))
                .env("PIM_DB", &i.db)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(ALICE), spawn(BOB));
        for child in [a, b] {
            let out = child.wait_with_output().unwrap();
            if !out.status.success() {
                failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
            }
        }
        // Root's commands come and go too; the companions stay as they are.
        if failures.is_empty() {
            i.root(&["sweep", "-q"]).expect(0);
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        failures.first()
    );
    for suffix in ["-wal", "-shm"] {
        let m = std::fs::metadata(format!("{}{suffix}", i.db.display())).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (0, group_id(), 0o660),
            "{suffix}"
        );
    }
}

// -------------------------------------------------------------- a stopped pim holding the lock

#[test]
fn a_stopped_pim_holding_the_write_lock_is_named_and_root_ends_it() {
    if !ready() {
        return;
    }
    let i = Install::new();
    // alice's import holds the write lock while it goes through its rows, and she stops it
    // there (her own process: she may).
    let mut import = i.import_holding_the_write_lock();
    let pid = import.id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // Reads go on (a break-glass check still answers) ...
    i.as_account(MALLORY, &["check", ALICE, "global-admin"], &[])
        .expect(0);
    // ... writes wait, then say who holds the database.
    let r = i
        .as_account(BOB, &["deactivate", "db-admin"], &[])
        .expect(1);
    assert!(
        r.stderr.contains(&format!("process {pid} of {ALICE}"))
            && r.stderr.contains("which is stopped"),
        "{}",
        r.stderr
    );
    // Root's sweep ends the stopped pim, records it, and goes on.
    i.root(&["sweep"]).expect(0);
    let status = import.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(
        i.count(&format!(
            "SELECT count(*) FROM audit_events WHERE action = 'lock.break' AND principal = '{ALICE}'"
        )),
        1
    );
    i.as_account(ALICE, &["user", "add", "zed"], &[]).expect(0);
    // Nothing of the stopped import was kept.
    assert_eq!(
        i.count("SELECT count(*) FROM assignments WHERE scope LIKE '/s%'"),
        0
    );
    i.root(&["audit", "verify"]).expect(0);
}

/// Notification and witness commands run as whoever runs pim, so only for the account that
/// wrote them: root running pim on a database another account owns (a sweep, asked for
/// help) runs none of them, nor appends to its witness file; the owner's own sweep does.
#[test]
fn root_runs_no_command_of_a_database_another_account_owns() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let home = i.home(MALLORY);
    let (ran, witnessed, checkpoints) = (
        home.join("ran"),
        home.join("witnessed"),
        home.join("checkpoints"),
    );
    let own = i.mallory_db(&format!(
        "[notifications.command]\nargv = [\"sh\", \"-c\", \"id -un >> {}\"]\n\n[witness]\nfile = \"{}\"\ncommand = [\"sh\", \"-c\", \"id -un >> {}\"]\n",
        ran.display(),
        checkpoints.display(),
        witnessed.display()
    ));
    let own_s = own.display().to_string();
    let mallory = |args: &[&str]| {
        let mut all = vec!["--db", own_s.as_str()];
        all.extend_from_slice(args);
        i.as_account(MALLORY, &all, &[])
    };
    mallory(&["user", "add", "zed"]).expect(0);
    // Ends within a day: the next sweep queues a reminder.
    mallory(&["assign", "zed", "db-admin", "-j", "x", "--duration", "12h"]).expect(0);
    assert_eq!(
        std::fs::read_to_string(&ran).unwrap().trim(),
        MALLORY,
        "her own pim runs her command, as her"
    );
    let r = i.root(&["--db", &own_s, "sweep"]).expect(0);
    assert!(
        r.stderr.contains("belongs to another account"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("1 reminder(s)"), "{}", r.stdout);
    assert!(
        !std::fs::read_to_string(&ran).unwrap().contains("root"),
        "root ran mallory's notification command"
    );
    assert!(!witnessed.exists(), "root ran mallory's witness command");
    assert!(!checkpoints.exists(), "root wrote mallory's witness file");
    let pending = || -> i64 {
        peek(&own)
            .query_row(
                "SELECT count(*) FROM outbox WHERE channel = 'command' AND status = 'pending'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(pending(), 1, "the reminder's command waits for its owner");
    // Her own sweep runs them, as her.
    let r = mallory(&["sweep"]).expect(0);
    assert!(
        !r.stderr.contains("belongs to another account"),
        "{}",
        r.stderr
    );
    assert_eq!(pending(), 0);
    let lines = std::fs::read_to_string(&ran).unwrap();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        [MALLORY, MALLORY],
        "{lines}"
    );
    assert_eq!(std::fs::read_to_string(&witnessed).unwrap().trim(), MALLORY);
    assert!(std::fs::read_to_string(&checkpoints)
        .unwrap()
        .contains("— "));
}

/// Lets accounts mount FUSE file systems that others may enter (`/dev/fuse` open to all and
/// `user_allow_other`, as many hosts have it) for as long as it lives; puts both back after.
struct UserFuse {
    conf: Option<String>,
    dev_mode: u32,
}

impl UserFuse {
    fn allow() -> UserFuse {
        for tool in ["bindfs", "fusermount3"] {
            assert!(
                support::have(tool),
                "needs {tool} (.ci/run installs bindfs and fuse3)"
            );
        }
        let conf = std::fs::read_to_string("/etc/fuse.conf").ok();
        let mut allowed = conf.clone().unwrap_or_default();
        if !allowed.lines().any(|l| l.trim() == "user_allow_other") {
            allowed.push_str("\nuser_allow_other\n");
        }
        std::fs::write("/etc/fuse.conf", allowed).unwrap();
        let dev_mode = std::fs::metadata("/dev/fuse")
            .expect("no /dev/fuse on this machine")
            .mode()
            & 0o7777;
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
        UserFuse { conf, dev_mode }
    }
}

impl Drop for UserFuse {
    fn drop(&mut self) {
        let _ =
            std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.dev_mode));
        match &self.conf {
            Some(text) => {
                let _ = std::fs::write("/etc/fuse.conf", text);
            }
            None => {
                let _ = std::fs::remove_file("/etc/fuse.conf");
            }
        }
    }
}

/// A mount, unmounted when dropped (before the directory under it is removed).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// FUSE shows whatever owners and modes its mounter chooses: mallory mounts her home over
/// itself with bindfs, showing every file as root's with mode 0600 and every directory as
/// root's 0700, and asks root to sweep the database in it. Root's sweep must not take it for
/// its own and run her commands as root.
#[test]
fn root_runs_no_command_of_a_database_on_a_file_system_another_account_mounted() {
    if !ready() {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: this machine has no /dev/fuse");
        return;
    }
    let i = Install::new();
    let home = i.home(MALLORY);
    let (own, ran) = i.mallory_reminding();
    let own_s = own.display().to_string();
    let _fuse = UserFuse::allow();
    let home_s = home.display().to_string();
    let r = i.program_as(
        MALLORY,
        Path::new("/usr/bin/bindfs"),
        &[
            "-u",
            "root",
            "-g",
            "root",
            "-p",
            "og-rwx",
            "-o",
            "allow_other",
            &home_s,
            &home_s,
        ],
        &[],
    );
    assert_eq!(r.code, 0, "bindfs: {}", r.stderr);
    let _mounted = Mounted(home.clone());
    let shown = std::fs::metadata(&own).unwrap();
    assert_eq!(
        (shown.uid(), shown.mode() & 0o777),
        (0, 0o600),
        "the mount shows her database as root's"
    );
    let r = i.root(&["--db", &own_s, "sweep"]).expect(0);
    assert!(r.stdout.contains("1 reminder(s)"), "{}", r.stdout);
    let lines = std::fs::read_to_string(&ran).unwrap();
    assert!(
        !lines.contains("root"),
        "root ran mallory's notification command: {lines:?}"
    );
    assert!(
        r.stderr
            .contains("a file system that another account mounted"),
        "{}",
        r.stderr
    );
    let pending: i64 = peek(&own)
        .query_row(
            "SELECT count(*) FROM outbox WHERE channel = 'command' AND status = 'pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pending, 1, "the reminder's command waits for its owner");
    // The same, shown as the install's: root's and the pim group's, 0660, in directories of
    // the group. The set-group-id pim takes such a file for the installed database, whose
    // commands root runs: it refuses it instead.
    drop(_mounted);
    let r = i.program_as(
        MALLORY,
        Path::new("/usr/bin/bindfs"),
        &[
            "-u",
            "root",
            "-g",
            GROUP,
            "-p",
            "0660,a+D",
            "-o",
            "allow_other",
            &home_s,
            &home_s,
        ],
        &[],
    );
    assert_eq!(r.code, 0, "bindfs: {}", r.stderr);
    let _mounted = Mounted(home.clone());
    let shown = std::fs::metadata(&own).unwrap();
    assert_eq!(
        (shown.uid(), shown.gid(), shown.mode() & 0o777),
        (0, group_id(), 0o660),
        "the mount shows her database as the install's"
    );
    let r = i.root(&["--db", &own_s, "sweep"]).expect(1);
    assert!(
        r.stderr.contains("is not safe to open")
            && r.stderr
                .contains("a file system that another account mounted"),
        "{}",
        r.stderr
    );
    let lines = std::fs::read_to_string(&ran).unwrap();
    assert!(
        !lines.contains("root"),
        "root ran mallory's notification command: {lines:?}"
    );
    // Shown as hers and the pim group's, 0660: a mount of her own, but the install's
    // database is root's alone, so this is a file of hers that others may write, refused
    // like any other.
    drop(_mounted);
    let r = i.program_as(
        MALLORY,
        Path::new("/usr/bin/bindfs"),
        &[
            "-g",
            GROUP,
            "-p",
            "0660,a+D,gd-w",
            "-o",
            "allow_other",
            &home_s,
            &home_s,
        ],
        &[],
    );
    assert_eq!(r.code, 0, "bindfs: {}", r.stderr);
    let _mounted = Mounted(home.clone());
    let shown = std::fs::metadata(&own).unwrap();
    assert_eq!(
        (shown.uid(), shown.gid(), shown.mode() & 0o777),
        (id_of(MALLORY, "-u"), group_id(), 0o660),
        "the mount shows her database as hers and the group's"
    );
    let r = i.root(&["--db", &own_s, "sweep"]).expect(1);
    assert!(
        r.stderr.contains("Refusing to open the database")
            && r.stderr.contains("other accounts may write it"),
        "{}",
        r.stderr
    );
    let lines = std::fs::read_to_string(&ran).unwrap();
    assert!(
        !lines.contains("root"),
        "root ran mallory's notification command: {lines:?}"
    );
}

/// An fstab line for as long as it lives.
struct FstabLine(String);

impl FstabLine {
    fn add(line: &str) -> FstabLine {
        let before = std::fs::read_to_string("/etc/fstab").unwrap_or_default();
        std::fs::write("/etc/fstab", format!("{before}\n{line}\n")).unwrap();
        FstabLine(before)
    }
}

impl Drop for FstabLine {
    fn drop(&mut self) {
        let _ = std::fs::write("/etc/fstab", &self.0);
    }
}

/// A disk an account mounts through a helper (here an fstab `user` entry) shows the owners
/// written on it: root's sweep of a root-owned 0600 database there must not run its
/// commands as root.
#[test]
fn root_runs_no_command_of_a_database_on_a_disk_another_account_mounted() {
    if ready() {
        sweep_a_disk_mallory_mounted(|_, disk| {
            format!("tmpfs {disk} tmpfs user,noauto,mode=0755 0 0")
        });
    }
}

/// The same with a btrfs image: its files show a device number of their own, which
/// `/proc/self/mountinfo` never lists (mounts are told apart by their ids).
#[test]
fn root_runs_no_command_of_a_database_on_a_btrfs_image_another_account_mounted() {
    if !ready() {
        return;
    }
    assert!(
        support::have("mkfs.btrfs"),
        "needs mkfs.btrfs (.ci/run installs btrfs-progs)"
    );
    sweep_a_disk_mallory_mounted(|i, disk| {
        let image = i.dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(128 << 20)
            .unwrap();
        let r = Command::new("mkfs.btrfs")
            .arg("-q")
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            r.status.success(),
            "mkfs.btrfs: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        std::os::unix::fs::chown(&image, Some(id_of(MALLORY, "-u")), None).unwrap();
        format!("{} {disk} btrfs loop,user,noauto 0 0", image.display())
    });
}

/// Mallory mounts, through the fstab line `line` makes, a disk at which root's database
/// copies land: root's sweep of one there (as root's own, then as the install's) runs none
/// of her commands.
fn sweep_a_disk_mallory_mounted(line: impl Fn(&Install, &str) -> String) {
    let i = Install::new();
    let (own, ran) = i.mallory_reminding();
    let disk = i.dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o755)).unwrap();
    let disk_s = disk.display().to_string();
    let _fstab = FstabLine::add(&line(&i, &disk_s));
    let r = i.program_as(MALLORY, Path::new("/usr/bin/mount"), &[&disk_s], &[]);
    assert_eq!(r.code, 0, "mount: {}", r.stderr);
    let _mounted = Mounted(disk.clone());
    assert!(
        std::fs::read_to_string("/run/mount/utab")
            .unwrap_or_default()
            .contains(&format!("user={MALLORY}")),
        "libmount recorded no user mount"
    );
    // What her disk would hold: her database, written as root's.
    let there = disk.join("own.db");
    std::fs::copy(&own, &there).unwrap();
    std::fs::set_permissions(&there, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = i
        .root(&["--db", there.to_str().unwrap(), "sweep"])
        .expect(0);
    assert!(r.stdout.contains("1 reminder(s)"), "{}", r.stdout);
    let lines = std::fs::read_to_string(&ran).unwrap();
    assert!(
        !lines.contains("root"),
        "root ran mallory's notification command: {lines:?}"
    );
    assert!(r.stderr.contains("through a mount helper"), "{}", r.stderr);
    // Written there as the install's (root's and the pim group's, 0660): the set-group-id
    // pim would take it for the installed database, whose commands root runs. Refused.
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", there.display()));
        if file.exists() {
            std::os::unix::fs::chown(&file, Some(0), Some(group_id())).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o660)).unwrap();
        }
    }
    let r = i
        .root(&["--db", there.to_str().unwrap(), "sweep"])
        .expect(1);
    assert!(
        r.stderr.contains("is not safe to open") && r.stderr.contains("through a mount helper"),
        "{}",
        r.stderr
    );
    let lines = std::fs::read_to_string(&ran).unwrap();
    assert!(
        !lines.contains("root"),
        "root ran mallory's notification command: {lines:?}"
    );
}

/// What SQLite reads must lie on the mount the checks looked at. Root's own database, whose
/// commands root's pim runs, stops running them once its `-wal` is another mount (a bind
/// mount of the file onto itself: the shape of a mount swapped in while pim opens it, which
/// the path checks alone would not see). The installed database, read so, is refused.
#[test]
fn a_database_read_through_another_mount_than_its_path_names_runs_no_command() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let own = i.dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o700)).unwrap();
    let ran = own.join("ran");
    let policy = own.join("policy.toml");
    std::fs::write(
        &policy,
        policy_with(&format!(
            "[notifications.command]\nargv = [\"sh\", \"-c\", \"id -un >> {}\"]",
            ran.display()
        )),
    )
    .unwrap();
    let db = own.join("root.db");
    // A pim that is not set-group-id: the database is root's own file, not the install's.
    let pim = |args: &[&str]| i.root_own(&db, args);
    pim(&[
        "init",
        "--admin",
        "rootadmin",
        "--policies",
        policy.to_str().unwrap(),
    ])
    .expect(0);
    for user in ["zed", "yan"] {
        pim(&["--as", "rootadmin", "user", "add", user]).expect(0);
    }
    pim(&[
        "--as",
        "rootadmin",
        "assign",
        "zed",
        "db-admin",
        "-j",
        "x",
        "--duration",
        "12h",
    ])
    .expect(0);
    assert_eq!(std::fs::read_to_string(&ran).unwrap().trim(), "root");
    let bind_onto_itself = |file: &Path| {
        assert!(
            file.exists(),
            "no {} kept beside the database",
            file.display()
        );
        let r = Command::new("mount")
            .arg("--bind")
            .arg(file)
            .arg(file)
            .output()
            .unwrap();
        assert!(
            r.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        Mounted(file.to_path_buf())
    };
    // An assignment to `user`, and a sweep: neither runs the command, and the sweep says why.
    let withheld = |user: &str, what: &str| {
        pim(&[
            "--as",
            "rootadmin",
            "assign",
            user,
            "db-admin",
            "-j",
            "x",
            "--duration",
            "12h",
        ])
        .expect(0);
        let r = pim(&["sweep"]).expect(0);
        assert_eq!(
            std::fs::read_to_string(&ran).unwrap().trim(),
            "root",
            "the command ran for {what}"
        );
        assert!(
            r.stderr.contains("another mount than its path names"),
            "{}",
            r.stderr
        );
    };
    let mounted = bind_onto_itself(&own.join("root.db-wal"));
    withheld("yan", "a database read through another mount");
    // A database whose header says it is not in WAL mode: SQLite still reads a `-wal` that
    // is there (at the first read, before pim switches the database to WAL), so that one
    // is checked all the same.
    drop(mounted);
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        let mode: String = c
            .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
    }
    let wal = own.join("root.db-wal");
    if !wal.exists() {
        std::fs::write(&wal, "").unwrap();
    }
    let _mounted = bind_onto_itself(&wal);
    pim(&["--as", "rootadmin", "user", "add", "xu"]).expect(0);
    withheld(
        "xu",
        "a database not in WAL mode whose -wal was read through another mount",
    );
    // The installed database read so is refused: root's pim runs its commands.
    let mut wal = i.db.clone().into_os_string();
    wal.push("-wal");
    let _installed = bind_onto_itself(Path::new(&wal));
    let r = i.root(&["sweep"]).expect(1);
    assert!(
        r.stderr.contains("is not safe to open")
            && r.stderr.contains("another mount than its path names"),
        "{}",
        r.stderr
    );
}

/// The owner check is not fooled through a `-wal`: root's own database sits in a directory
/// mallory can write, and she puts her own database's pages beside it as `root.db-wal`
/// (SQLite reads them as root's database). Root's sweep must not run her commands.
#[test]
fn root_runs_no_command_of_a_database_whose_wal_another_account_planted() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let shared = i.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let db = shared.join("root.db");
    // root's own database, through a pim that is not set-group-id, with a policy of no command.
    let root_pim = |args: &[&str]| i.root_own(&db, args);
    // Not made there while mallory may write there...
    let r = root_pim(&["init", "--admin", "rootadmin"]).expect(1);
    assert!(
        r.stderr.contains("Refusing to open the database"),
        "{}",
        r.stderr
    );
    assert!(!db.exists());
    // ...but made while it is root's, and the directory opened to everyone later.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    root_pim(&["init", "--admin", "rootadmin"]).expect(0);
    root_pim(&["sweep"]).expect(0);
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (own, ran) = i.mallory_reminding();
    // Her forgery: all of her database's pages as WAL frames (a VACUUM in WAL mode, copied
    // while the connection that wrote them is open), put in place of root's -wal and -shm.
    let forge = format!(
        "import shutil, sqlite3, os\n\
         shutil.copy('{own}', '{home}/x.db')\n\
         c = sqlite3.connect('{home}/x.db')\n\
         c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0')\n\
         c.execute('VACUUM')\n\
         shutil.copy('{home}/x.db-wal', '{db}-wal.new'); os.chmod('{db}-wal.new', 0o666)\n\
         os.rename('{db}-wal.new', '{db}-wal')\n\
         os.path.exists('{db}-shm') and os.remove('{db}-shm')\n",
        own = own.display(),
        home = i.home(MALLORY).display(),
        db = db.display()
    );
    i.program_as(MALLORY, Path::new("/usr/bin/python3"), &["-c", &forge], &[])
        .expect(0);
    // Root's pim opens nothing there: her pages never become root's database, and none of
    // her commands run.
    let users_in_roots_file = || -> String {
        rusqlite::Connection::open_with_flags(
            format!("file:{}?immutable=1", db.display()),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap()
        .query_row("SELECT group_concat(name) FROM users", [], |r| r.get(0))
        .unwrap()
    };
    for args in [&["sweep"][..], &["--as", "rootadmin", "status"]] {
        let r = root_pim(args).expect(1);
        assert!(
            r.stderr.contains("Refusing to open the database"),
            "{}",
            r.stderr
        );
    }
    // Fixed as the first refusal says: the directory is root's alone again. Her -wal is
    // still there: refused for that, until root deals with it.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = root_pim(&["sweep"]).expect(1);
    assert!(
        r.stderr.contains("-wal is not the database owner's alone"),
        "{}",
        r.stderr
    );
    assert!(
        !users_in_roots_file().contains("zed"),
        "her pages became root's database"
    );
    assert!(
        !std::fs::read_to_string(&ran).unwrap().contains("root"),
        "root ran mallory's notification command"
    );
}

/// A directory of the installed database that the pim group may write is refused when it
/// carries an ACL: a named entry (`user:mallory:rwx`) shows in the mode only as the mask.
#[test]
fn the_installed_database_is_refused_in_a_directory_with_an_acl() {
    if !ready() {
        return;
    }
    let i = Install::new();
    i.as_account(ALICE, &["status"], &[]).expect(0);
    // system.posix_acl_access, version 2: user::rwx, user:mallory:rwx, group::rwx,
    // mask::rwx, other::---.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 7u16, u32::MAX),
        (0x02, 7, id_of(MALLORY, "-u")),
        (0x04, 7, u32::MAX),
        (0x10, 7, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    let path = std::ffi::CString::new(i.lib.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated strings, and a buffer of the length given.
    let set = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    if set != 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
        eprintln!("skipped: this filesystem has no ACLs");
        return;
    }
    let mode = std::fs::metadata(&i.lib).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o2770, "the named entry is not in the mode");
    let r = i.as_account(ALICE, &["status"], &[]).expect(1);
    assert!(
        r.stderr.contains("can be changed by other accounts"),
        "{}",
        r.stderr
    );
    i.root(&["status"]).expect(1);
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::removexattr(path.as_ptr(), c"system.posix_acl_access".as_ptr()) },
        0
    );
    i.as_account(ALICE, &["status"], &[]).expect(0);
}

/// The installed database's own directory may not be one that others write, even sticky
/// (`/tmp`): a hot `-journal` planted beside it would be played back into it with the
/// group's rights when the next pim opens it.
#[test]
fn the_installed_database_is_refused_in_a_directory_others_may_create_in() {
    if !ready() {
        return;
    }
    let i = Install::new();
    for mode in [0o1777, 0o2777] {
        std::fs::set_permissions(&i.lib, std::fs::Permissions::from_mode(mode)).unwrap();
        let r = i.as_account(ALICE, &["status"], &[]).expect(1);
        assert!(
            r.stderr.contains("can be changed by other accounts"),
            "{mode:o}: {}",
            r.stderr
        );
        i.root(&["status"]).expect(1);
    }
    std::fs::set_permissions(&i.lib, std::fs::Permissions::from_mode(0o2770)).unwrap();
    i.as_account(ALICE, &["status"], &[]).expect(0);
}

#[test]
fn command_notifications_of_the_installed_database_wait_for_roots_sweep() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let inbox = i.dir.path().join("inbox");
    let policy = format!(
        "{}\n[notifications.command]\nargv = [\"sh\", \"-c\", \"id -un >> {}\"]\n",
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies.toml")).unwrap(),
        inbox.display()
    );
    let file = i.dir.path().join("policy.toml");
    std::fs::write(&file, policy).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Commands run as root: holding the `policy` permission is not enough to choose one.
    let r = i
        .as_account(ALICE, &["policy", "apply", file.to_str().unwrap()], &[])
        .expect(3);
    assert!(r.stderr.contains("Only root"), "{}", r.stderr);
    assert_eq!(
        i.count(
            "SELECT count(*) FROM audit_events WHERE action = 'policy.apply' AND result != 'ok'"
        ),
        1
    );
    i.root(&["--as", ALICE, "policy", "apply", file.to_str().unwrap()])
        .expect(0);
    i.root(&["--as", ALICE, "user", "add", BOB]).expect(0);
    // A command run by alice's pim would run as alice and could be watched by her: it waits.
    i.as_account(ALICE, &["assign", BOB, "db-admin", "-j", "x"], &[])
        .expect(0);
    assert!(!inbox.exists());
    assert_eq!(
        i.count("SELECT count(*) FROM outbox WHERE channel = 'command' AND status = 'pending' AND attempts = 0"),
        1
    );
    // Nor does alice's sweep: in the installed pim only root's sweep delivers for everyone.
    i.as_account(ALICE, &["sweep"], &[]).expect(0);
    assert!(!inbox.exists());
    // Root's sweep runs it, as root.
    i.root(&["sweep"]).expect(0);
    assert_eq!(std::fs::read_to_string(&inbox).unwrap().trim(), "root");
}

#[test]
fn deliveries_that_cannot_start_a_thread_are_failed_tries_on_record() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let policy = format!(
        "{}\n[notifications.webhook]\nurl = \"http://localhost:{port}/pim\"\n\n[notifications.smtp]\nhost = \"localhost\"\nport = {port}\nfrom = \"pim@example.com\"\nstarttls = false\n",
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies.toml")).unwrap(),
    );
    let file = i.dir.path().join("policy.toml");
    std::fs::write(&file, policy).unwrap();
    i.root(&["--as", ALICE, "policy", "apply", file.to_str().unwrap()])
        .expect(0);
    i.root(&[
        "--as",
        ALICE,
        "user",
        "add",
        BOB,
        "--email",
        "bob@example.com",
    ])
    .expect(0);
    // No new process or thread for alice: resolving `localhost` cannot start its thread.
    let r = i.program_as(
        ALICE,
        Path::new("/usr/bin/prlimit"),
        &[
            "--nproc=0:0",
            i.bin.to_str().unwrap(),
            "assign",
            BOB,
            "db-admin",
            "-j",
            "x",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("panicked at"), "{}", r.stderr);
    assert!(r.stderr.contains("could not be delivered"), "{}", r.stderr);
    // Counted as a failed try (retried, and recorded when given up), not silently leased.
    assert_eq!(
        i.count("SELECT count(*) FROM outbox WHERE channel = 'webhook' AND attempts = 1 AND status = 'pending'"),
        1
    );
    // The e-mail's lookup too: an error on record, not a panic of the runtime.
    assert_eq!(
        i.count("SELECT count(*) FROM outbox WHERE channel = 'smtp' AND attempts = 1 AND status = 'pending' AND last_error LIKE 'cannot look up localhost%'"),
        1
    );
    drop(listener);
}

#[test]
fn a_caller_cannot_make_pim_remove_the_companion_files() {
    if !ready() {
        return;
    }
    let i = Install::new();
    // Too few descriptors: pim fails while it holds the group, and must leave them be.
    for n in 4..12 {
        let nofile = format!("--nofile={n}:{n}");
        let _ = i.program_as(
            MALLORY,
            Path::new("/usr/bin/prlimit"),
            &[
                &nofile,
                i.bin.to_str().unwrap(),
                "check",
                ALICE,
                "global-admin",
            ],
            &[],
        );
        for suffix in ["-wal", "-shm"] {
            let m = std::fs::metadata(format!("{}{suffix}", i.db.display()))
                .unwrap_or_else(|_| panic!("{suffix} is gone after a run with {n} descriptors"));
            assert_eq!((m.uid(), m.gid()), (0, group_id()), "{suffix}");
        }
    }
    i.as_account(ALICE, &["status"], &[]).expect(0);
}

/// Stop a caller's pim at random moments of its start until it holds a lock of the
/// database's files (the WAL index's set-up is the narrowest window); then readers and
/// writers are refused with the holder named, and root's next command ends it.
#[test]
fn a_pim_stopped_while_it_opens_the_database_is_ended_by_root() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let shm = std::fs::metadata(format!("{}-shm", i.db.display()))
        .unwrap()
        .ino();
    let db = std::fs::metadata(&i.db).unwrap().ino();
    let mut caught = None;
    for attempt in 0..400u64 {
        let mut child = Command::new("setpriv")
            .args([
                "--reuid",
                MALLORY,
                "--regid",
                MALLORY,
                "--init-groups",
                "--",
            ])
            .arg(&i.bin)
            .args(["check", ALICE, "global-admin"])
            .env_clear()
            .env("PIM_DB", &i.db)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Stopped just after it opens the WAL index (seen in /proc, however fast or loaded
        // the machine), a few microseconds later on each attempt: a fixed delay after the
        // spawn missed the window whenever the machine ran slower than the delays assumed.
        let shm_open = || {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|fds| {
                    fds.flatten().any(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|t| t.to_string_lossy().ends_with("-shm"))
                    })
                })
                .unwrap_or(false)
        };
        let spawned = std::time::Instant::now();
        while !shm_open()
            && spawned.elapsed() < std::time::Duration::from_secs(2)
            && child.try_wait().is_ok_and(|ended| ended.is_none())
        {}
        let after = std::time::Duration::from_micros((attempt * 7) % 80);
        let seen = std::time::Instant::now();
        while seen.elapsed() < after {}
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        let holds = locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 5
                && f[1] != "->"
                && f[3] == "WRITE"
                && f[4] == pid.to_string()
                && (f[5].ends_with(&format!(":{shm}")) || f[5].ends_with(&format!(":{db}")))
        });
        if holds {
            caught = Some(child);
            break;
        }
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = child.wait();
    }
    let Some(mut stopped) = caught else {
        panic!("never caught a pim inside a lock in 400 tries: nothing was checked");
    };
    // Root's next command ends it (here `audit verify`), when the stopped pim keeps it out,
    // and records who it was. Caught holding only what keeps writers out (the WAL's write
    // lock), it lets a reader open the database: root's sweep, which ends stopped holders
    // before it writes, ends it then (waiting on it unconditionally hung the suite once).
    i.root(&["audit", "verify"]).expect(0);
    use std::os::unix::process::ExitStatusExt;
    let ended = |stopped: &mut std::process::Child| {
        (0..50).find_map(|_| {
            let status = stopped.try_wait().unwrap();
            if status.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            status
        })
    };
    let status = match ended(&mut stopped) {
        Some(status) => status,
        None => {
            i.root(&["sweep"]).expect(0);
            ended(&mut stopped).unwrap_or_else(|| {
                let _ = stopped.kill();
                panic!("root's sweep did not end a stopped pim holding the database")
            })
        }
    };
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(
        i.count(&format!(
            "SELECT count(*) FROM audit_events WHERE action = 'lock.break' AND principal = '{MALLORY}'"
        )),
        1
    );
    i.as_account(ALICE, &["status"], &[]).expect(0);
}

/// A holder frozen by a cgroup freezer shows as sleeping, not stopped; root ends it too.
#[test]
fn a_pim_frozen_by_a_cgroup_is_ended_by_root() {
    if !ready() {
        return;
    }
    // A freezer of cgroup v2 (or v1) that root can make a group in.
    let v2 = Path::new("/sys/fs/cgroup/unified");
    let v1 = Path::new("/sys/fs/cgroup/freezer");
    let group = if v2.join("cgroup.procs").exists() {
        v2.join(format!("pimtest-{}", std::process::id()))
    } else if v1.join("cgroup.procs").exists() {
        v1.join(format!("pimtest-{}", std::process::id()))
    } else {
        eprintln!("skipped: no cgroup freezer here");
        return;
    };
    if std::fs::create_dir(&group).is_err() {
        eprintln!("skipped: cannot make a cgroup at {}", group.display());
        return;
    }
    let i = Install::new();
    let mut import = i.import_holding_the_write_lock();
    let pid = import.id() as i32;
    std::fs::write(group.join("cgroup.procs"), pid.to_string()).unwrap();
    if group.join("cgroup.freeze").exists() {
        std::fs::write(group.join("cgroup.freeze"), "1").unwrap();
    } else {
        std::fs::write(group.join("freezer.state"), "FROZEN").unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(!state.contains("State:\tT"), "frozen, not stopped: {state}");
    // Root's sweep ends it at once and records it.
    i.root(&["sweep"]).expect(0);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(import.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(
        i.count(&format!(
            "SELECT count(*) FROM audit_events WHERE action = 'lock.break' AND principal = '{ALICE}'"
        )),
        1
    );
    let _ = std::fs::remove_dir(&group);
}

/// Only exclusive locks keep others out: a stopped pim that is merely connected (holding the
/// shared locks every connection holds) is left alone; a holder of the write lock that is
/// not stopped but never lets go is ended by root's sweep after a minute, and recorded.
#[test]
fn roots_sweep_ends_only_holders_that_keep_everyone_out() {
    if !ready() {
        return;
    }
    let i = Install::new();
    // alice's `exec` runs a long command holding her connection (shared locks only); she
    // presses Ctrl-Z: pim stops, blocking no one.
    let mut exec = Command::new("setpriv")
        .args(["--reuid", ALICE, "--regid", ALICE, "--init-groups", "--"])
        .arg(&i.bin)
        .args(["exec", "global-admin", "--", "sleep", "120"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PIM_DB", &i.db)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Stopped once its command runs (the activation committed): a fixed wait could stop it
    // inside its write, which root's sweep then rightly ends.
    let exec_pid = exec.id() as i32;
    let children = format!("/proc/{exec_pid}/task/{exec_pid}/children");
    let spawned = std::time::Instant::now();
    while std::fs::read_to_string(&children)
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        assert!(
            spawned.elapsed() < std::time::Duration::from_secs(30),
            "alice's exec never started its command"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    unsafe { libc::kill(exec_pid, libc::SIGSTOP) };
    i.root(&["sweep"]).expect(0);
    assert_eq!(
        exec.try_wait().unwrap(),
        None,
        "a stopped pim that blocks no one was ended"
    );
    // A member of the group (who can open the files) holds SQLite's write lock and never
    // lets go, without being stopped.
    let member = "pimt-member";
    let exists = Command::new("id")
        .arg(member)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        assert!(Command::new("useradd")
            .args(["--no-create-home", "--user-group", "-G", GROUP, member])
            .status()
            .unwrap()
            .success());
    }
    let shm = format!("{}-shm", i.db.display());
    let mut holder = Command::new("setpriv")
        .args(["--reuid", member, "--regid", member, "--init-groups", "--"])
        .args([
            "/usr/bin/python3",
            "-c",
            "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR); fcntl.lockf(fd, fcntl.LOCK_EX, 1, 120, 0); print('held', flush=True); time.sleep(600)",
            &shm,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");
    // Writes are refused meanwhile, naming the holder.
    let r = i.as_account(ALICE, &["user", "add", "zed"], &[]).expect(1);
    assert!(r.stderr.contains(member), "{}", r.stderr);
    // Root's sweep keeps trying, and after a minute ends it.
    let started = std::time::Instant::now();
    i.root(&["sweep"]).expect(0);
    assert!(started.elapsed() >= std::time::Duration::from_secs(55));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(holder.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(
        i.count(&format!(
            "SELECT count(*) FROM audit_events WHERE action = 'lock.break' AND principal = '{member}'"
        )),
        1
    );
    unsafe { libc::kill(exec_pid, libc::SIGKILL) };
    let _ = exec.wait();
    i.as_account(ALICE, &["user", "add", "zed"], &[]).expect(0);
}

/// Removes the installed server's configuration file (and the key `init` made) when the
/// test ends, whatever happened.
struct ServerConfig {
    instance: std::cell::RefCell<String>,
}

impl Drop for ServerConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file("/etc/pim/store.toml");
        let instance = self.instance.borrow();
        if !instance.is_empty() {
            let _ = std::fs::remove_file(format!("/etc/pim/keys/{instance}.key"));
        }
    }
}

/// The installed pim on a PostgreSQL server: the URL (and its password) comes from root's
/// configuration file only, read with the group; every account reaches the server through
/// pim, none can read the file; `--as` stays root's; no password is ever shown.
#[test]
fn the_installed_pim_on_a_server_takes_its_url_from_roots_file_only() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let url = crate::support::postgres::fresh_database();
    let secret_url = url.replacen("pim@", "pim:s3cret-pw@", 1);
    std::fs::create_dir_all("/etc/pim").unwrap();
    let config = ServerConfig {
        instance: Default::default(),
    };
    std::fs::write("/etc/pim/store.toml", format!("url = \"{secret_url}\"\n")).unwrap();
    std::os::unix::fs::chown("/etc/pim/store.toml", Some(0), Some(group_id())).unwrap();
    std::fs::set_permissions(
        "/etc/pim/store.toml",
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    // Without PIM_DB: the installed store.
    let run = |account: Option<&str>, args: &[&str]| -> Run {
        let mut c = match account {
            Some(name) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", name, "--regid", name, "--init-groups", "--"])
                    .arg(&i.bin)
                    .env("HOME", i.home(name));
                c
            }
            None => {
                let mut c = Command::new(&i.bin);
                c.env("HOME", i.dir.path());
                c
            }
        };
        c.args(args)
            .env_remove("PIM_DB")
            .env_remove("PIM_USER")
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    };
    let init = run(None, &["init", "--admin", ALICE, "--json"]).expect(0);
    *config.instance.borrow_mut() = crate::support::postgres::client(&url)
        .query_one("SELECT value FROM meta WHERE key = 'instance'", &[])
        .unwrap()
        .get(0);
    let alice = init.json()["secret"].as_str().unwrap().to_string();
    let mut shown = vec![init];
    run(
        Some(ALICE),
        &[
            "mfa",
            "confirm",
            "--code",
            &crate::support::previous_code(&alice),
        ],
    )
    .expect(0);
    // alice works on the server through the installed pim.
    shown.push(run(Some(ALICE), &["user", "add", BOB]).expect(0));
    shown.push(run(Some(ALICE), &["audit", "verify", "--json"]).expect(0));
    shown.push(run(Some(ALICE), &["--verbose", "status"]).expect(0));
    let code = crate::support::oathtool(&alice, 0);
    shown.push(run(Some(ALICE), &["mfa", "reset", BOB, "--code", &code]));
    // mallory reaches it only as herself: not a pim user, no --as.
    let r = run(Some(MALLORY), &["user", "list"]).expect(3);
    assert!(r.stderr.contains("not a pim user"), "{}", r.stderr);
    shown.push(r);
    let r = run(Some(MALLORY), &["--as", ALICE, "user", "add", "mallory"]).expect(3);
    assert!(r.stderr.contains("--as"), "{}", r.stderr);
    shown.push(r);
    // Nor may she change the server's roles, or copy into it, with root's URL.
    let r = run(Some(MALLORY), &["store", "grant", "public"]).expect(3);
    assert!(r.stderr.contains("for root"), "{}", r.stderr);
    shown.push(r);
    let r = run(
        Some(MALLORY),
        &["store", "copy", "--from", "x.db", "--to", &url],
    )
    .expect(3);
    shown.push(r);
    // She cannot read the file that holds the password.
    let cat = i.program_as(
        MALLORY,
        Path::new("/bin/cat"),
        &["/etc/pim/store.toml"],
        &[],
    );
    assert_ne!(cat.code, 0);
    assert!(!cat.stdout.contains("s3cret-pw"));
    // Root acts as anyone; the server holds what happened.
    run(None, &["--as", ALICE, "user", "show", BOB]).expect(0);
    let users: i64 = crate::support::postgres::client(&url)
        .query_one("SELECT count(*) FROM users", &[])
        .unwrap()
        .get(0);
    assert_eq!(users, 2);
    // A configuration file others could change is refused, not used.
    std::fs::set_permissions(
        "/etc/pim/store.toml",
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let r = run(Some(ALICE), &["status"]).expect(1);
    assert!(r.stderr.contains("owned by root"), "{}", r.stderr);
    shown.push(r);
    for r in &shown {
        assert!(
            !r.stdout.contains("s3cret-pw") && !r.stderr.contains("s3cret-pw"),
            "{}{}",
            r.stdout,
            r.stderr
        );
    }
}

/// A witness file or command of the installed database is written or run by root's sweep:
/// only root may choose one; alice's sweep publishes nothing.
#[test]
fn witnesses_of_the_installed_database_are_roots_to_choose() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let witness = i.dir.path().join("witness.log");
    for section in [
        format!("[witness]\nfile = \"{}\"\n", witness.display()),
        "[witness]\ncommand = [\"sh\", \"-c\", \"id\"]\n".to_string(),
    ] {
        let policy = format!(
            "{}\n{section}",
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies.toml")).unwrap()
        );
        let file = i.dir.path().join("policy.toml");
        std::fs::write(&file, policy).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = i
            .as_account(ALICE, &["policy", "apply", file.to_str().unwrap()], &[])
            .expect(3);
        assert!(r.stderr.contains("Only root"), "{}", r.stderr);
    }
    let policy = format!(
        "{}\n[witness]\nfile = \"{}\"\n",
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies.toml")).unwrap(),
        witness.display()
    );
    let file = i.dir.path().join("policy.toml");
    std::fs::write(&file, policy).unwrap();
    i.root(&["--as", ALICE, "policy", "apply", file.to_str().unwrap()])
        .expect(0);
    i.as_account(ALICE, &["sweep"], &[]).expect(0);
    assert!(!witness.exists(), "alice's sweep published");
    i.root(&["sweep"]).expect(0);
    let kept = std::fs::read_to_string(&witness).unwrap();
    assert!(kept.contains('\u{2014}'), "{kept}");
    assert_eq!(std::fs::metadata(&witness).unwrap().uid(), 0);
}

/// Root's pim breaks the locks of the files it found locked, never of what the path names
/// afterwards: mallory holds her own database's lock, and while root's sweep waits on it she
/// points the path at alice's file, whose lock a stopped process of alice's holds. Root's
/// sweep must leave alice's process alone.
#[test]
fn root_breaks_no_lock_of_a_file_the_path_was_pointed_at_meanwhile() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let (own, _) = i.mallory_reminding();
    let spawn_as = |name: &str, script: &str| {
        Command::new("setpriv")
            .args(["--reuid", name, "--regid", name, "--init-groups", "--"])
            .args(["/usr/bin/python3", "-c", script])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir(i.home(name))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first_line = |child: &mut std::process::Child| {
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        line
    };
    // Mallory's database in rollback mode, locked against every reader.
    let mut mallory = spawn_as(
        MALLORY,
        &format!(
            "import sqlite3, time\n\
             c = sqlite3.connect('{}', isolation_level=None)\n\
             c.execute('PRAGMA journal_mode=DELETE')\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(1000)\n",
            own.display()
        ),
    );
    assert_eq!(first_line(&mut mallory).trim(), "locked");
    // Alice's own file, its first byte locked by a process of hers that is stopped.
    let lock = i.home(ALICE).join("lock");
    let mut alice = spawn_as(
        ALICE,
        &format!(
            "import fcntl, time\n\
             f = open('{}', 'w')\n\
             fcntl.lockf(f, fcntl.LOCK_EX, 1, 0)\n\
             print('locked', flush=True)\n\
             time.sleep(1000)\n",
            lock.display()
        ),
    );
    assert_eq!(first_line(&mut alice).trim(), "locked");
    let alice_pid = alice.id() as i32;
    unsafe { libc::kill(alice_pid, libc::SIGSTOP) };
    // Root's sweep, waiting on mallory's lock.
    let sweep = Command::new(&i.bin)
        .args(["--db", own.to_str().unwrap(), "sweep"])
        .env("HOME", i.dir.path())
        .env_remove("PIM_USER")
        .env_remove("PIM_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let fds = format!("/proc/{}/fd", sweep.id());
    let opened = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(25));
        std::fs::read_dir(&fds).is_ok_and(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .any(|l| l == own)
        })
    });
    assert!(opened, "root's sweep never opened mallory's database");
    // Meanwhile the path becomes a link to alice's file.
    let link = own.with_extension("link");
    std::os::unix::fs::symlink(&lock, &link).unwrap();
    std::fs::rename(&link, &own).unwrap();
    let out = sweep.wait_with_output().unwrap();
    let alive = std::fs::read_to_string(format!("/proc/{alice_pid}/stat"))
        .is_ok_and(|s| !s.contains(") Z "));
    unsafe { libc::kill(alice_pid, libc::SIGCONT) };
    let _ = alice.kill();
    let _ = alice.wait();
    let _ = mallory.kill();
    let _ = mallory.wait();
    assert!(
        alive,
        "root's sweep ended alice's process: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its next try opened what the path names now, with root's own rights, and refused it.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("given up its group"), "{stderr}");
}

/// A database's key is found by the instance id the database names, and anyone can copy
/// that id into a file of their own: mallory puts root's into hers, filled as she likes.
/// Root's pim must not sign her log with root's key (a checkpoint of her log would make
/// root's real one look forked, a receipt of hers would verify under root's key), nor use
/// that key on her file at all.
#[test]
fn root_signs_no_database_of_another_account_that_names_its_instance() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let own = i.dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o700)).unwrap();
    let db = own.join("root.db");
    i.root_own(&db, &["init", "--admin", "rootadmin"]).expect(0);
    let key = i.root_own(&db, &["audit", "key"]).expect(0).stdout;
    let instance: String = peek(&db)
        .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
            r.get(0)
        })
        .unwrap();
    // Root's own file signs as it should.
    let good = own.join("good.cp");
    i.root_own(
        &db,
        &["audit", "checkpoint", "--output", good.to_str().unwrap()],
    )
    .expect(0);
    // Mallory's file, with root's instance id in it.
    let theirs = i.mallory_db("");
    peek(&theirs)
        .execute(
            "UPDATE meta SET value = ?1 WHERE key = 'instance'",
            [&instance],
        )
        .unwrap();
    let forged = own.join("forged.cp");
    let theirs_s = theirs.to_str().unwrap();
    for run in [
        i.root_own(
            &theirs,
            &["audit", "checkpoint", "--output", forged.to_str().unwrap()],
        ),
        i.root(&[
            "--db",
            theirs_s,
            "audit",
            "checkpoint",
            "--output",
            forged.to_str().unwrap(),
        ]),
        i.root_own(&theirs, &["audit", "key"]),
    ] {
        let r = run.expect(3);
        assert!(
            r.stderr.contains("not yours") && r.stderr.contains(MALLORY),
            "{}",
            r.stderr
        );
    }
    assert!(!forged.exists(), "root's key signed mallory's log");
    // And root's own log still verifies against its own checkpoint.
    i.root_own(
        &db,
        &["audit", "verify", "--checkpoint", good.to_str().unwrap()],
    )
    .expect(0);
    assert!(key.contains('+'), "{key}");
}

/// Root's `--output` writes no file of another account's: mallory leaves a 0666 file of
/// hers where root's export will go, to read the audit log from it afterwards.
#[test]
fn root_writes_no_output_into_a_file_another_account_planted() {
    if !ready() {
        return;
    }
    let i = Install::new();
    let drop = i.dir.path().join("drop");
    std::fs::create_dir(&drop).unwrap();
    std::fs::set_permissions(&drop, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = drop.join("audit.csv");
    std::fs::write(&planted, "").unwrap();
    std::os::unix::fs::chown(
        &planted,
        Some(id_of(MALLORY, "-u")),
        Some(id_of(MALLORY, "-g")),
    )
    .unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
    let target = planted.to_str().unwrap();
    for args in [
        ["--as", ALICE, "audit", "export", "--output", target],
        ["--as", ALICE, "audit", "checkpoint", "--output", target],
    ] {
        let r = i.root(&args).expect(1);
        assert!(
            r.stderr.contains("belongs to another account"),
            "{}",
            r.stderr
        );
    }
    assert_eq!(
        std::fs::read(&planted).unwrap().len(),
        0,
        "root wrote into mallory's file"
    );
    // A file of root's own there is written, 0600 when new.
    let fresh = drop.join("root.csv");
    i.root(&[
        "--as",
        ALICE,
        "audit",
        "export",
        "--output",
        fresh.to_str().unwrap(),
    ])
    .expect(0);
    assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o600);
}
