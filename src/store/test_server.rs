//! The PostgreSQL server of the tests: the one `PIM_TEST_POSTGRES` names (a URL whose role
//! may create databases), or a throwaway cluster started here with the system's `initdb`
//! and `pg_ctl` (as an unprivileged account when run as root) and removed when the tests end.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Whether this run tests the PostgreSQL backend (`PIM_TEST_BACKEND=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("PIM_TEST_BACKEND").as_deref() == Ok("postgres")
}

/// Run this test binary again on PostgreSQL (all but the test named `me`) against the
/// server of `admin_url`, and fail unless that pass ran at least `min` tests and all
/// passed: so that `cargo test` never silently leaves PostgreSQL out.
pub fn postgres_pass(me: &str, min: usize) {
    if on_postgres() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .env("PIM_TEST_BACKEND", "postgres")
        .env("PIM_TEST_POSTGRES", admin_url())
        .args(["--skip", me])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("test result:"))
        .unwrap_or("no summary")
        .to_string();
    eprintln!("PostgreSQL pass: {summary}");
    assert!(
        out.status.success(),
        "the PostgreSQL pass failed:\n{stdout}\n{stderr}"
    );
    let passed: usize = summary
        .split_once(" passed")
        .and_then(|(head, _)| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= min,
        "the PostgreSQL pass ran only {passed} tests: {summary}"
    );
}

static SERVER: OnceLock<String> = OnceLock::new();
/// The clusters this process started (data directory's parent, the account running it).
static CLUSTERS: std::sync::Mutex<Vec<(PathBuf, Option<String>)>> =
    std::sync::Mutex::new(Vec::new());

/// A URL of the server with rights to create databases.
pub fn admin_url() -> &'static str {
    SERVER.get_or_init(|| match std::env::var("PIM_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => url,
        _ => start_cluster(),
    })
}

pub fn client(url: &str) -> ::postgres::Client {
    ::postgres::Client::connect(url, ::postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"))
}

/// `url` with another database name.
pub fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let authority = rest.split(['/', '?']).next().unwrap();
    let query = rest.find('?').map(|i| &rest[i..]).unwrap_or("");
    format!("{scheme}://{authority}/{name}{query}")
}

/// A new, empty database; its URL.
pub fn fresh_database() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "pim_t{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let admin = admin_url();
    client(admin)
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    with_database(admin, &name)
}

fn account() -> Option<String> {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    for name in ["postgres", "nobody"] {
        if Command::new("id")
            .arg(name)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(name.to_string());
        }
    }
    panic!("running as root, and there is no unprivileged account to run PostgreSQL as");
}

/// A PostgreSQL program: on the PATH, or where Debian's packages put it.
fn pg_bin(name: &str) -> String {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if on_path {
        return name.to_string();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| Some(d.ok()?.path().join("bin").join(name)))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| name.to_string())
}

fn run(account: &Option<String>, program: &str, args: &[&str]) {
    let out = output(account, program, args);
    assert!(
        out.status.success(),
        "{program} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL program's run, as `account` when there is one.
fn output(account: &Option<String>, program: &str, args: &[&str]) -> std::process::Output {
    let program = &pg_bin(program);
    let mut c = match account {
        Some(a) => {
            let mut c = Command::new("runuser");
            c.args(["-u", a, "--", program]);
            c
        }
        None => Command::new(program),
    };
    c.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed by the PostgreSQL tests: {e}"))
}

extern "C" fn stop_clusters() {
    let clusters = CLUSTERS.lock().map(|c| c.clone()).unwrap_or_default();
    for (dir, account) in clusters {
        let data = dir.join("data");
        let mut c = match &account {
            Some(a) => {
                let mut c = Command::new("runuser");
                c.args(["-u", a, "--", &pg_bin("pg_ctl")]);
                c
            }
            None => Command::new(pg_bin("pg_ctl")),
        };
        let _ = c
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn start_cluster() -> String {
    let (url, _) = start_cluster_with(None);
    url
}

/// A cluster of the tests' own that accepts TLS connections only (host name `localhost` and
/// 127.0.0.1), with a certificate authority of its own: the cluster's admin URL, and the
/// authority's certificate (PEM). (Used by the integration tests, which share this file.)
#[allow(dead_code)]
pub fn start_tls_cluster() -> (String, PathBuf) {
    let (url, dir) = start_cluster_with(Some(()));
    (url, dir.join("ca.crt"))
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl is needed by the TLS test: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_cluster_with(tls: Option<()>) -> (String, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("pim-pg-")
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    let account = account();
    let uid = account.as_ref().map(|a| {
        let out = Command::new("id").args(["-u", a]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .unwrap()
    });
    if uid.is_some() {
        std::os::unix::fs::chown(&dir, uid, None).unwrap();
    }
    let data_dir = dir.join("data");
    let data = data_dir.to_str().unwrap();
    run(
        &account,
        "initdb",
        &[
            "-D",
            data,
            "-A",
            "trust",
            "-U",
            "pim",
            "-E",
            "UTF8",
            "--no-sync",
        ],
    );
    let mut options = format!(
        "-k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
        dir.display()
    );
    if tls.is_some() {
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=pim-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        );
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.crt",
            ],
        );
        use std::os::unix::fs::PermissionsExt;
        for f in ["server.key", "server.crt"] {
            std::os::unix::fs::chown(dir.join(f), uid, None).unwrap();
        }
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(
            data_dir.join("pg_hba.conf"),
            "hostnossl all all 127.0.0.1/32 reject\nhostssl all all 127.0.0.1/32 trust\nlocal all all trust\n",
        )
        .unwrap();
        options.push_str(&format!(
            " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
            dir.display()
        ));
    }
    let log = dir.join("log");
    {
        let mut clusters = CLUSTERS.lock().unwrap();
        if clusters.is_empty() {
            // SAFETY: registers a plain function to run when the process exits.
            unsafe { libc::atexit(stop_clusters) };
        }
        clusters.push((dir.clone(), account.clone()));
    }
    // A port free a moment ago may be taken by the time the server binds it (another
    // test's listener): then another port, a few times.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = format!("-p {port} {options}");
        let started = output(
            &account,
            "pg_ctl",
            &[
                "-D",
                data,
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        if started.status.success() {
            return (format!("postgres://pim@127.0.0.1:{port}/postgres"), dir);
        }
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            attempt < 5 && said.contains("could not bind"),
            "pg_ctl failed: {}{}{said}",
            String::from_utf8_lossy(&started.stdout),
            String::from_utf8_lossy(&started.stderr)
        );
    }
}
